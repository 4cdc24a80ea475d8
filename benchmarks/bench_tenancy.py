"""A neighbour's latency on a quiet host vs the same host under each attack, side by side in
one run; the cold start of the sandbox (the default runtime) vs ``process``; and the cold
start with network egress (an allowlist: slirp4netns and a filter) vs without.

One exchange, one agent on the ``bwrap`` runtime WITHOUT cgroups (``CRUCIBLE_SANDBOX_CGROUPS=0``,
what a rented VM without delegation has: per-sandbox uids and rlimits only). Two accounts: an
attacker runs one hostile function at a time (fork bomb that leaves its children, memory bomb,
CPU hog on every core, disk filler, log flood); meanwhile the neighbour's warm ``.remote()``
is timed (p50/p99) and so is its cold start (a fresh app each sample: a new container forked
from its zygote). Then a second exchange on the ``process`` runtime gives the same cold start
without a sandbox. Prints tables and writes ``benchmarks/results/bench_tenancy.json``::

    .venv/bin/python benchmarks/bench_tenancy.py            # 30 warm, 5 cold samples per row
    .venv/bin/python benchmarks/bench_tenancy.py --quick    # 10 and 3
    .venv/bin/python benchmarks/bench_tenancy.py --network-only   # just the egress rows

The egress rows need what filtered egress needs (root, slirp4netns, nftables); elsewhere the
function with an allowlist is refused and the row says so.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _tenancy_app as t
from _exchange import Exchange, machine_info, print_table, summarize_ms, write_results

import crucible
from crucible.sdk._client import Client

ATTACK_S = 30.0  # each timed attack runs at least this long (the fork bomb: until its app ends)
SANDBOX_ENV = {
    "CRUCIBLE_RUNTIME": "bwrap",
    "CRUCIBLE_SANDBOX_CGROUPS": "0",
    "CRUCIBLE_SANDBOX_MAX_PROCESSES": "128",
    "CRUCIBLE_SANDBOX_DISK_MIB": "128",
    "CRUCIBLE_ZYGOTE_IDLE_S": "600",
}


def warm_ms(n: int) -> dict[str, float]:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        assert t.ping.remote(i) == i
        times.append(time.perf_counter() - t0)
    return summarize_ms(times)


def cold_ms(client: Client, n: int, *, network: bool = False) -> dict[str, float]:
    app, fn = (t.neighbour_cold_net, t.first_net) if network else (t.neighbour_cold, t.first)
    times = []
    for i in range(n):
        with app.run(client=client):
            t0 = time.perf_counter()
            assert fn.remote(i) == i
            times.append(time.perf_counter() - t0)
    return summarize_ms(times)


def measure(client: Client, warm_n: int, cold_n: int) -> dict[str, Any]:
    return {"warm": warm_ms(warm_n), "cold": cold_ms(client, cold_n)}


def bench_attacks(warm_n: int, cold_n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with Exchange(env=SANDBOX_ENV) as ex:
        neighbour = ex.client()
        attacker = ex.client()
        with t.neighbour.run(client=neighbour):
            warm_ms(5)
            cold_ms(neighbour, 1)  # the neighbour's zygote is started: cold = a fork
            out["quiet"] = measure(neighbour, warm_n, cold_n)
            print(f"quiet: {out['quiet']}", flush=True)
            for name in t.ATTACKS:
                with t.attacker.run(client=attacker):
                    call = t.attack(name, ATTACK_S)
                    time.sleep(1.0)  # let it get going
                    row = measure(neighbour, warm_n, cold_n)
                    with contextlib.suppress(crucible.Error, OSError):
                        row["attack_result"] = repr(call.get(timeout=0.1))[:200]
                out[name] = row
                print(f"{name}: {row}", flush=True)
    return out


def bench_runtimes(cold_n: int) -> dict[str, Any]:
    out = {}
    for runtime in ("bwrap", "process"):
        with Exchange(env={**SANDBOX_ENV, "CRUCIBLE_RUNTIME": runtime}) as ex:
            client = ex.client()
            cold_ms(client, 1)  # bwrap: the account's zygote starts here, once
            out[runtime] = cold_ms(client, cold_n)
    return out


def bench_network(cold_n: int) -> dict[str, Any]:
    """Cold start without and with filtered egress: the first (a new sandbox: for egress,
    the filter and slirp4netns come up before its zygote), then forks of its zygote."""
    out: dict[str, Any] = {}
    with Exchange(env=SANDBOX_ENV) as ex:
        client = ex.client()
        for label, network in (("no network", False), ("allowlist (filtered egress)", True)):
            try:
                first = cold_ms(client, 1, network=network)
                out[label] = {"first": first, "forks": cold_ms(client, cold_n, network=network)}
            except crucible.Error as exc:
                out[label] = {"error": str(exc)[:300]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--network-only", action="store_true")
    args = parser.parse_args()
    warm_n, cold_n = (10, 3) if args.quick else (30, 5)
    results: dict[str, Any] = {
        "machine": machine_info(),
        "warm_samples": warm_n,
        "cold_samples": cold_n,
        "settings": SANDBOX_ENV,
    }
    results["network"] = bench_network(cold_n)
    net_rows = []
    for label, row in results["network"].items():
        if "error" in row:
            net_rows.append([label, "-", "-", "-", row["error"][:60]])
        else:
            f = row["forks"]
            net_rows.append([label, row["first"]["p50_ms"], f["n"], f["p50_ms"], f["p99_ms"]])
    print_table(
        "Cold start with and without network egress (ms; bwrap)",
        ["network", "new sandbox", "n forks", "fork p50", "fork p99"],
        net_rows,
    )
    if args.network_only:
        print(f"\nwrote {write_results('bench_tenancy_network', results)}")
        return
    results["attacks"] = bench_attacks(warm_n, cold_n)
    results["runtimes"] = bench_runtimes(cold_n)
    rows = []
    for name, row in results["attacks"].items():
        w, c = row["warm"], row["cold"]
        rows.append([name, w["p50_ms"], w["p99_ms"], c["p50_ms"], c["max_ms"]])
    print_table(
        "Neighbour under attack (ms; bwrap, no cgroups)",
        ["host state", "warm p50", "warm p99", "cold p50", "cold max"],
        rows,
    )
    rt = results["runtimes"]
    print_table(
        "Cold start, .remote() → result (ms)",
        ["runtime", "n", "p50", "p99"],
        [[k, v["n"], v["p50_ms"], v["p99_ms"]] for k, v in rt.items()],
    )
    print(f"\nwrote {write_results('bench_tenancy', results)}")


if __name__ == "__main__":
    main()
