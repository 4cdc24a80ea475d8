"""Whether the exchange can listen where it is told: a port something holds is "taken"; a
host that is not an address of this machine is named as such (it was reported as "port
taken", with advice to change the port)."""

from __future__ import annotations

import socket

import pytest

from crucible.cli._ports import port_free
from crucible.errors import SettingError
from crucible.testing import free_port


def test_a_held_port_is_taken_and_a_free_one_is_free() -> None:
    port = free_port()
    assert port_free("127.0.0.1", port)
    with socket.socket() as held:
        held.bind(("127.0.0.1", port))
        held.listen()
        assert not port_free("127.0.0.1", port)


@pytest.mark.parametrize(
    ("host", "words"),
    [
        ("not.a.host", "cannot listen on 'not.a.host'"),
        ("192.0.2.77", "not an address of this machine"),
    ],
)
def test_a_host_this_machine_cannot_listen_on_is_named(host: str, words: str) -> None:
    with pytest.raises(SettingError, match=words) as caught:
        port_free(host, free_port())
    assert "taken" not in str(caught.value) and "CRUCIBLE_BIND_HOST" in str(caught.value)


@pytest.mark.parametrize("port", [99999, -1, 65536])
def test_a_number_that_is_no_port_is_named(port: int) -> None:
    """`crucible up --port 99999` was an OverflowError traceback."""
    with pytest.raises(SettingError, match=f"port {port} is not a port"):
        port_free("127.0.0.1", port)
