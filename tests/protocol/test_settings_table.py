"""The one settings table: defaults, environment variables, documentation, parsing."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from crucible.settings import SETTINGS_TABLE, Settings, load_settings

FIELD_TYPES = {"str": "text", "int": "7", "float": "2.5", "bool": "true"}


def test_every_option_has_a_default_an_env_var_and_a_doc() -> None:
    assert len(SETTINGS_TABLE) >= 20
    envs = []
    for f in SETTINGS_TABLE:
        env, doc = f.metadata.get("env"), f.metadata.get("doc")
        assert env == f"CRUCIBLE_{f.name.upper()}", f.name
        assert isinstance(doc, str) and len(doc) > 15 and doc.strip() == doc, f.name
        assert f.default is not dataclasses.MISSING, f.name
        assert f.type in FIELD_TYPES, (f.name, f.type)
        envs.append(env)
    assert len(set(envs)) == len(envs)


def test_defaults_without_environment(tmp_path: Path) -> None:
    s = load_settings(environ={})
    assert s == Settings()
    assert s.port == 8745 and s.allow_fake_gpus is False and s.max_request_bytes == 16 << 20
    assert s.home_path == Path("~/.crucible").expanduser()
    assert s.effective_database_url == f"sqlite:///{s.home_path / 'crucible.db'}"
    assert s.blob_path == s.home_path / "blobs" and s.agent_path == s.home_path / "agent"
    other = load_settings(environ={}, home=str(tmp_path), blob_dir=str(tmp_path / "b"))
    assert other.blob_path == tmp_path / "b"
    assert other.effective_database_url == f"sqlite:///{tmp_path / 'crucible.db'}"


# Fractions (fees, price ratios) must stay within 0..1.
FRACTIONS = {"platform_fee", "default_interruptible_fraction", "default_reserved_fraction"}


def test_every_option_is_read_from_its_env_var() -> None:
    environ = {
        f.metadata["env"]: "0.25" if f.name in FRACTIONS else FIELD_TYPES[str(f.type)]
        for f in SETTINGS_TABLE
    }
    environ["CRUCIBLE_LEADER_RENEW_S"] = "1.25"  # the lease (2.5) must be two renewals long
    environ["CRUCIBLE_SECRET"] = "text" * 4  # at least 16 characters
    s = load_settings(environ=environ)
    for f in SETTINGS_TABLE:
        expected = {"str": "text", "int": 7, "float": 2.5, "bool": True}[str(f.type)]
        if f.name in FRACTIONS:
            expected = 0.25
        if f.name == "leader_renew_s":
            expected = 1.25
        if f.name == "secret":
            expected = "text" * 4
        got = getattr(s, f.name)
        assert got == expected and type(got) is type(expected), f.name


def test_parsing() -> None:
    s = load_settings(
        environ={
            "CRUCIBLE_PORT": " 9000 ",
            "CRUCIBLE_SCHEDULER_INTERVAL_S": "1e-1",
            "CRUCIBLE_MAX_CONTAINERS": "3",
            "CRUCIBLE_ALLOW_FAKE_GPUS": "YES",
            "CRUCIBLE_TOKEN": "  cru_x  ",
            "NOT_OURS": "ignored",
        }
    )
    assert s.port == 9000 and s.scheduler_interval_s == 0.1 and s.max_containers == 3
    assert s.allow_fake_gpus is True and s.token == "  cru_x  "
    for text, value in [
        ("1", True),
        ("true", True),
        ("On", True),
        ("0", False),
        ("false", False),
        ("no", False),
        ("off", False),
        ("", False),
    ]:
        assert load_settings(environ={"CRUCIBLE_ALLOW_FAKE_GPUS": text}).allow_fake_gpus is value


def test_overrides_beat_the_environment_and_none_means_unset() -> None:
    env = {"CRUCIBLE_PORT": "9000", "CRUCIBLE_BIND_HOST": "0.0.0.0"}
    s = load_settings(environ=env, port=9100, bind_host=None)
    assert s.port == 9100 and s.bind_host == "0.0.0.0"
    with pytest.raises(TypeError):
        load_settings(environ={}, no_such_option=1)


def test_reads_os_environ_only_when_called(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRUCIBLE_PORT", "9123")
    assert load_settings().port == 9123
    assert load_settings(environ={}).port == 8745
    monkeypatch.setenv("CRUCIBLE_PORT", "9124")
    assert load_settings().port == 9124
    assert "CRUCIBLE_PORT" in os.environ  # nothing consumed or cached it


@pytest.mark.parametrize(
    ("env", "value", "says"),
    [
        ("CRUCIBLE_PORT", "eighty", "expected an integer"),
        ("CRUCIBLE_PORT", "80.5", "expected an integer"),
        ("CRUCIBLE_MAX_REQUEST_BYTES", "16MiB", "expected an integer"),
        ("CRUCIBLE_SCHEDULER_INTERVAL_S", "fast", "expected a number"),
        ("CRUCIBLE_HOST_TIMEOUT_S", "", "expected a number"),
        ("CRUCIBLE_ALLOW_FAKE_GPUS", "maybe", "expected true or false"),
        ("CRUCIBLE_ALLOW_FAKE_GPUS", "2", "expected true or false"),
    ],
)
def test_bad_values_name_the_variable(env: str, value: str, says: str) -> None:
    with pytest.raises(ValueError) as info:
        load_settings(environ={env: value})
    assert str(info.value).startswith(f"{env}={value!r}: {says}")


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("CRUCIBLE_PORT", "70000"),
        ("CRUCIBLE_MAX_REQUEST_BYTES", "-1"),
        ("CRUCIBLE_MAX_CONTAINERS", "0"),
        ("CRUCIBLE_HOST_TIMEOUT_S", "-5"),
        ("CRUCIBLE_SCHEDULER_INTERVAL_S", "nan"),
        ("CRUCIBLE_METER_INTERVAL_S", "inf"),
        ("CRUCIBLE_LEADER_LEASE_S", "0"),
        ("CRUCIBLE_LEADER_RENEW_S", "0"),
    ],
)
def test_out_of_range_values_name_the_variable(env: str, value: str) -> None:
    with pytest.raises(ValueError, match=env):
        load_settings(environ={env: value})


def test_settings_are_immutable_and_replaceable() -> None:
    s = load_settings(environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 1  # type: ignore[misc]
    assert s.replace(port=1).port == 1 and s.port == 8745


def test_the_leader_lease_is_at_least_two_renewals() -> None:
    """A lease that lapses between two renewals would hand leadership back and forth."""
    with pytest.raises(ValueError, match="CRUCIBLE_LEADER_LEASE_S=1 must be at least twice"):
        load_settings(environ={"CRUCIBLE_LEADER_LEASE_S": "1", "CRUCIBLE_LEADER_RENEW_S": "1"})
    assert load_settings(environ={"CRUCIBLE_LEADER_LEASE_S": "2"}).leader_renew_s == 1.0


@pytest.mark.parametrize(
    ("env", "value", "words"),
    [
        # Finite, and past what a clock in milliseconds or a store integer holds: the server
        # failed at start, or every scheduler tick failed while /healthz said ok.
        ("CRUCIBLE_LEADER_LEASE_S", "1e308", "must be at most 1e+09"),
        ("CRUCIBLE_HOST_TIMEOUT_S", "1e15", "must be at most 1e+09"),
        ("CRUCIBLE_RETENTION_CALLS_DAYS", "1e308", "must be at most 1e+06"),
        ("CRUCIBLE_BLOB_GC_GRACE_HOURS", "1e12", "must be at most 1e+07"),
        ("CRUCIBLE_RETENTION_BATCH_ROWS", "99999999999999999999999", "must be at most"),
        ("CRUCIBLE_SECRET", "x", "must be at least 16"),
    ],
)
def test_values_no_server_can_run_with_are_refused(env: str, value: str, words: str) -> None:
    from crucible.errors import SettingError

    with pytest.raises(SettingError, match=re.escape(words)):
        load_settings(environ={env: value})


def test_an_empty_home_is_the_default_not_the_current_directory() -> None:
    """`CRUCIBLE_HOME=` put the store and the secrets key wherever the user stood."""
    assert load_settings(environ={"CRUCIBLE_HOME": ""}).home == "~/.crucible"
    assert load_settings(environ={"CRUCIBLE_HOME": "  "}).home == "~/.crucible"
    assert load_settings(environ={"CRUCIBLE_HOME": "/srv/x"}).home == "/srv/x"
