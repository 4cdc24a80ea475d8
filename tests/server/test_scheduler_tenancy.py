"""Tenancy in the scheduler core: code of an account other than a host's owner runs only on
hosts that isolate fully; verified=True runs only on verified hosts; when no host may ever
run a function for those reasons, it is unschedulable with a reason that says so."""

from __future__ import annotations

import dataclasses

from crucible.core.scheduling import (
    FunctionDemand,
    GpuChoice,
    HostCapacity,
    Policy,
    may_run,
    plan,
)

NOW = 10_000_000
POLICY = Policy(unschedulable_grace_ms=1_000)


def demand(
    account: str, *, verified: bool = False, gpus: tuple[GpuChoice, ...] = ()
) -> FunctionDemand:
    return FunctionDemand(
        id=f"fn-{account}",
        cpu=1.0,
        memory_mib=512,
        gpus=gpus,
        queued=1,
        running=0,
        oldest_queued_ms=NOW - 5_000,  # past the grace
        oldest_running_started_ms=None,
        avg_exec_ms=None,
        containers=(),
        max_containers=10,
        scaledown_window_ms=60_000,
        account_id=account,
        verified=verified,
    )


def host(
    id: str, owner: str, *, isolated: bool, verified: bool = False, cpu: float = 8.0
) -> HostCapacity:
    return HostCapacity(
        id=id,
        cpu=cpu,
        memory_mib=16_384,
        gpus=((0, "H100"),),
        owner=owner,
        isolated=isolated,
        verified=verified,
    )


def test_may_run_is_owner_or_full_isolation_and_verified_when_asked() -> None:
    proc = host("h", "acct-a", isolated=False)
    assert may_run(proc, demand("acct-a"))
    assert not may_run(proc, demand("acct-b"))
    box = host("h", "acct-a", isolated=True)
    assert may_run(box, demand("acct-b"))
    assert not may_run(box, demand("acct-b", verified=True))
    assert may_run(dataclasses.replace(box, verified=True), demand("acct-b", verified=True))


def test_a_strangers_function_is_unschedulable_on_process_hosts_with_a_clear_reason() -> None:
    hosts = [host("proc-a", "acct-a", isolated=False)]
    p = plan(NOW, [demand("acct-b")], hosts, POLICY)
    assert p.start == []
    [u] = p.unschedulable
    assert u.function_id == "fn-acct-b"
    assert "no fully isolated host can run this function" in u.message
    assert "owner's code" in u.message
    # The owner's own function runs there.
    p = plan(NOW, [demand("acct-a")], [host("proc-a", "acct-a", isolated=False)], POLICY)
    assert [(s.function_id, s.host_id) for s in p.start] == [("fn-acct-a", "proc-a")]


def test_strangers_skip_a_free_process_host_for_an_isolated_one() -> None:
    hosts = [
        host("proc-a", "acct-a", isolated=False, cpu=1.0),  # the tightest fit
        host("box-c", "acct-c", isolated=True),
    ]
    p = plan(NOW, [demand("acct-b")], hosts, POLICY)
    assert [s.host_id for s in p.start] == ["box-c"]


def test_a_busy_isolated_host_means_waiting_not_failing() -> None:
    busy = host("box-c", "acct-c", isolated=True)
    busy.used_cpu = busy.cpu
    hosts = [host("proc-a", "acct-a", isolated=False), busy]
    p = plan(NOW, [demand("acct-b")], hosts, POLICY)
    assert p.start == [] and p.unschedulable == []


def test_verified_functions_wait_for_verified_hosts_and_say_so() -> None:
    hosts = [host("box-c", "acct-c", isolated=True)]
    p = plan(NOW, [demand("acct-b", verified=True)], hosts, POLICY)
    [u] = p.unschedulable
    assert "no verified host can run this function" in u.message
    hosts = [
        host("box-c", "acct-c", isolated=True),
        host("box-v", "acct-v", isolated=True, verified=True),
    ]
    p = plan(NOW, [demand("acct-b", verified=True)], hosts, POLICY)
    assert [s.host_id for s in p.start] == ["box-v"]


def test_gpu_functions_follow_the_same_rule_in_the_default_placer() -> None:
    ask = (GpuChoice("H100", 1),)
    p = plan(NOW, [demand("acct-b", gpus=ask)], [host("proc-a", "acct-a", isolated=False)], POLICY)
    assert p.start == [] and "fully isolated" in p.unschedulable[0].message


def test_code_asking_for_network_needs_a_host_that_filters_egress_unless_it_owns_it() -> None:
    asks = dataclasses.replace(demand("acct-b"), network=True)
    open_box = host("h", "acct-a", isolated=True)
    no_egress = dataclasses.replace(open_box, egress=False)
    assert may_run(open_box, asks)
    assert not may_run(no_egress, asks)
    assert may_run(no_egress, demand("acct-b"))  # no network asked: full isolation suffices
    assert may_run(no_egress, dataclasses.replace(demand("acct-a"), network=True))  # its owner
    # Placed only where egress is filtered; where none is, the call says why.
    p = plan(NOW, [asks], [no_egress, dataclasses.replace(open_box, id="h2")], POLICY)
    assert [s.host_id for s in p.start] == ["h2"]
    p = plan(NOW, [asks], [no_egress], POLICY)
    assert not p.start
    [u] = p.unschedulable
    assert "no host that filters network egress" in u.message


def test_cpu_work_keeps_to_its_region_and_off_draining_hosts() -> None:
    """The market holds GPU work to a region and off draining hosts; CPU-only work is held
    to the same in the core (it used to land anywhere)."""
    eu = dataclasses.replace(host("eu-box", "acct-c", isolated=True, cpu=2.0), region="eu")
    us = dataclasses.replace(host("us-box", "acct-c", isolated=True, cpu=64.0), region="us")
    in_eu = dataclasses.replace(demand("acct-b"), region="eu")
    assert may_run(eu, in_eu) and not may_run(us, in_eu)
    p = plan(NOW, [in_eu], [eu, us], POLICY)
    assert [s.host_id for s in p.start] == ["eu-box"]  # not the roomier us-box
    # Anywhere else only: refused with the regions that have room, once the grace is past.
    in_asia = dataclasses.replace(demand("acct-b"), region="asia")
    p = plan(NOW, [in_asia], [eu, us], POLICY)
    [u] = p.unschedulable
    assert u.message.startswith("no host in region=asia can run this function")
    assert "the hosts big enough are in eu, us" in u.message
    # A draining host takes no new container: the work goes elsewhere, or waits.
    draining = dataclasses.replace(eu, draining=True)
    p = plan(NOW, [demand("acct-b")], [draining, us], POLICY)
    assert [s.host_id for s in p.start] == ["us-box"]
    p = plan(NOW, [in_eu], [draining, us], POLICY)
    assert p.start == [] and p.unschedulable == []
    assert "1 host(s) that could are draining" in p.waiting["fn-acct-b"]
