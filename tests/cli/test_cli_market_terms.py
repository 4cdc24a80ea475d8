"""The CLI takes every market term the API takes: `market quote`, `reserve`, `pod create` and
`cluster create` choose hosts by region, reliability, carbon and verification as functions
do (the quote's carbon cap and `--verified`, and the pod's region, reliability and carbon cap,
could only be set through the HTTP API)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli_testlib import cli
from harness import Exchange, wait_for

H100 = [
    {"index": i, "model": "H100", "memory_mib": 81920, "uuid": f"GPU-{i}", "fake": True}
    for i in range(2)
]


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Exchange, str]]:
    with _two_h100(tmp_path_factory.mktemp("market-terms")) as made:
        yield made


@contextmanager
def _two_h100(root: Path) -> Iterator[tuple[Exchange, str]]:
    """A server (no agent) with one host of 2 H100 at 50 gCO2/kWh, in region eu-north;
    yields the exchange and its owner's token (who may rent it: no isolation is needed)."""
    # The host is registered by hand and never syncs: it stays alive for the module.
    ex = Exchange(root, f"sqlite:///{root / 'store.db'}", CRUCIBLE_HOST_TIMEOUT_S="600")
    ex.start_server()
    try:
        owner = ex.owner_token()
        with httpx.Client(base_url=ex.url, timeout=30) as http:
            made = http.post(
                "/v1/hosts/register",
                headers={"Authorization": f"Bearer {ex.host_token}"},
                json={
                    "name": "green-ish",
                    "region": "eu-north",
                    "inventory": {
                        "cpu_cores": 8,
                        "memory_mib": 16384,
                        "disk_mib": 1 << 20,
                        "gpus": H100,
                    },
                },
            )
            assert made.status_code == 200, made.text
            host_id = made.json()["id"]
            auth = {"Authorization": f"Bearer {owner}"}
            offers = {
                "device_type": "H100",
                "on_demand_micros": 2_000_000,
                "interruptible_min_micros": 800_000,
                "reserved_micros": 1_500_000,
            }
            r = http.put(f"/v1/hosts/{host_id}/offers", headers=auth, json=offers)
            assert r.status_code == 200, r.text
            r = http.patch(
                f"/v1/hosts/{host_id}/profile", headers=auth, json={"carbon_g_per_kwh": 50}
            )
            assert r.status_code == 200, r.text
        yield ex, owner
    finally:
        ex.close()


def quote(ex: Exchange, token: str, *args: str) -> dict[str, Any]:
    out = cli(ex, token, "market", "quote", "H100", "--json", *args)
    assert out.returncode == 0, out.stdout + out.stderr
    return dict(json.loads(out.stdout))


def test_a_quote_takes_a_carbon_cap_and_verified(market: tuple[Exchange, str]) -> None:
    ex, owner = market
    assert quote(ex, owner)["available"]
    assert quote(ex, owner, "--max-carbon", "100", "--region", "eu-north")["available"]
    capped = quote(ex, owner, "--max-carbon", "10")
    assert not capped["available"] and "carbon" in capped["message"], capped
    unverified = quote(ex, owner, "--verified")
    assert not unverified["available"] and "verif" in unverified["message"], unverified
    assert not quote(ex, owner, "--min-reliability", "1", "--region", "us-east")["available"]

    # A value out of range is refused by the CLI, naming the option typed (not the SDK's
    # argument, max_carbon_g_per_kwh).
    for args in (
        ("market", "quote", "H100", "--max-carbon", "-1"),
        ("market", "quote", "H100", "--min-reliability", "2"),
        ("pod", "create", "bad", "--max-carbon", "9999"),
        (
            "cluster",
            "create",
            "--name",
            "c",
            "--gpu",
            "H100",
            "--nodes",
            "2",
            "--min-reliability",
            "-1",
        ),
        ("reserve", "H100", "--hours", "1", "--min-reliability", "nan"),
    ):
        out = cli(ex, owner, *args)
        text = " ".join(out.stderr.split())
        assert out.returncode == 1 and f"{args[-2]} must be" in text, out.stdout + out.stderr
        assert "max_carbon_g_per_kwh" not in text and "min_reliability" not in text, text


def test_a_pod_and_a_cluster_take_the_market_terms(market: tuple[Exchange, str]) -> None:
    ex, owner = market
    out = cli(ex, owner, "pod", "create", "clean", "--gpu", "H100", "--max-carbon", "10")
    assert out.returncode == 0, out.stdout + out.stderr
    # No host in that region: the command says so and fails, leaving no pod behind.
    out = cli(ex, owner, "pod", "create", "far", "--gpu", "H100", "--region", "us-east")
    assert out.returncode == 1 and "no host in region=us-east" in out.stderr, out.stderr
    assert "was not created" in out.stderr, out.stderr
    out = cli(ex, owner, "pod", "create", "any", "--gpu", "H100", "--max-carbon", "60")
    assert out.returncode == 0, out.stdout + out.stderr

    def pod(name: str) -> dict[str, Any]:
        shown = cli(ex, owner, "pod", "show", name, "--json")
        assert shown.returncode == 0, shown.stdout + shown.stderr
        return dict(json.loads(shown.stdout))

    # The pod whose cap the host meets is placed; the others wait, saying why.
    wait_for(lambda: pod("any")["host_id"] is not None, 30)
    clean = pod("clean")
    assert clean["state"] == "pending" and clean["host_id"] is None
    assert "carbon" in (clean["reason"] or ""), clean
    assert cli(ex, owner, "pod", "show", "far").returncode == 1

    out = cli(ex, owner, "pod", "create", "bad", "--prefer", "greener")
    assert out.returncode == 1 and "prefer" in out.stderr and "greenest" in out.stderr
    out = cli(
        ex,
        owner,
        *("cluster", "create", "--name", "ring", "--nodes", "2", "--gpu", "H100"),
        *("--max-carbon", "10", "--verified"),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    for name in ("clean", "any", "ring-0", "ring-1"):
        cli(ex, owner, "pod", "delete", "--force", name)


def test_hosts_show_the_carbon_intensity_in_force(market: tuple[Exchange, str]) -> None:
    """docs/market.md says `crucible hosts` shows the intensity in force and its source; it
    showed neither (only `--json` had them)."""
    ex, owner = market
    out = cli(ex, owner, "hosts")
    assert out.returncode == 0, out.stderr
    assert "gCO2/kWh" in out.stdout and "50 (declared)" in out.stdout, out.stdout


def test_a_quote_inside_a_reservation_says_so_and_what_it_costs_without(tmp_path: Path) -> None:
    """`market quote --tier interruptible` answered "1xH100 reserved: $1.5/GPU-hour ...;
    $0.000000/hour in all" for a request the renter's own reservation covers, and its
    refusal spoke of a max_price nobody gave."""
    with _two_h100(tmp_path) as market:
        _quote_inside_a_reservation(*market)


def _quote_inside_a_reservation(ex: Exchange, owner: str) -> None:
    out = cli(ex, owner, "reserve", "1xH100", "--hours", "1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert ": 1xH100 on" in out.stdout and "1x1x" not in out.stdout, out.stdout
    out = cli(ex, owner, "market", "quote", "1xH100", "--tier", "interruptible")
    assert out.returncode == 0, out.stdout + out.stderr
    text = " ".join(out.stdout.split())
    assert text.startswith("1xH100 interruptible: covered by your reservation rs-"), text
    assert "UTC), paid when reserved: $0.000000/hour more" in text, text
    assert "without it: interruptible: $0.800000/GPU-hour on ho-" in text, text
    q = quote(ex, owner, "--tier", "interruptible")
    assert q["reservations"] and q["tier"] == "reserved", q
    assert q["without_reservations"]["tier"] == "interruptible", q

    # Two on one host: the reserved GPU cannot be outbid, and no --max-price was given.
    out = cli(ex, owner, "market", "quote", "2xH100", "--tier", "interruptible")
    text = " ".join(out.stdout.split())
    assert "not available (no_capacity)" in text and "No bid would win now" in text, text
    assert "max_price" not in text, text
