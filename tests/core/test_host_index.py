"""The live scheduler places through the indexed engine the simulator drives.

``HostIndex`` maps the scheduler's hosts (fractional cores, GPUs of several models) onto
``Cluster`` nodes; these tests pin that mapping and that ``plan`` really goes through it.
"""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crucible.core import placement
from crucible.core.host_index import HostIndex
from crucible.core.placement import FULL, Cluster, NodeSpec, Request
from crucible.core.scheduling import FunctionDemand, GpuChoice, HostCapacity, Policy, plan

MODELS = ("H100", "A100-80GB")


def host(
    id: str,
    cpu: float = 16.0,
    memory_mib: int = 65_536,
    gpus: tuple[tuple[int, str], ...] = (),
    **used: object,
) -> HostCapacity:
    return HostCapacity(id=id, cpu=cpu, memory_mib=memory_mib, gpus=gpus, **used)  # type: ignore[arg-type]


def demand(id: str, cpu: float = 1.0, gpus: tuple[GpuChoice, ...] = ()) -> FunctionDemand:
    return FunctionDemand(
        id=id,
        cpu=cpu,
        memory_mib=1024,
        gpus=gpus,
        queued=1,
        running=0,
        oldest_queued_ms=0,
        oldest_running_started_ms=None,
        avg_exec_ms=None,
        containers=(),
        max_containers=1,
        scaledown_window_ms=60_000,
    )


def test_plan_places_cpu_and_gpu_containers_through_the_engine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[Request] = []
    real = Cluster.place

    def spy(self: Cluster, req: Request, exclude: object = ()) -> object:
        calls.append(req)
        return real(self, req, exclude)  # type: ignore[arg-type]

    monkeypatch.setattr(placement.Cluster, "place", spy)
    # CPU work goes to the host without GPUs though it has more cores left (best-fit's first
    # key is free GPUs left, as in the simulator), GPU work to the host with the GPU.
    hosts = [host("ho-a", gpus=((0, "H100"),)), host("ho-b", cpu=32.0)]
    p = plan(0, [demand("fn-cpu"), demand("fn-gpu", gpus=(GpuChoice("H100", 1),))], hosts, Policy())
    assert {(s.function_id, s.host_id) for s in p.start} == {
        ("fn-cpu", "ho-b"),
        ("fn-gpu", "ho-a"),
    }
    assert [(r.cpu_milli, r.num_gpu, r.models) for r in calls] == [
        (1000, 0, frozenset()),
        (1000, 1, frozenset({"H100"})),
    ]


def test_mixed_model_hosts_give_the_right_device_indices() -> None:
    mixed = host("ho-1", gpus=((3, "A100-80GB"), (5, "H100"), (7, "H100"), (9, "A100-80GB")))
    index = HostIndex([mixed])
    placed = index.place(1.0, 1024, "H100", 2)
    assert placed is not None and placed[1] == (5, 7)
    assert index.place(1.0, 1024, "H100", 1) is None  # both H100s are taken now
    placed = index.place(1.0, 1024, "A100-80GB", 1)
    assert placed is not None and placed[1] == (3,)
    assert (mixed.used_cpu, mixed.used_memory_mib, mixed.used_gpus) == (2.0, 2048, {3, 5, 7})


def test_a_change_made_elsewhere_is_seen_after_refresh() -> None:
    h = host("ho-1", cpu=4.0, gpus=((0, "H100"),))
    index = HostIndex([h])
    assert index.place(1.0, 1024) is not None  # builds the CPU-only view
    assert index.place(0.5, 1024, "H100", 1) is not None  # and the H100 view
    h.used_cpu += 2.5  # e.g. the market placed a container here
    index.refresh("ho-1")
    assert index.place(0.5, 1024) is None  # 4 - 1 - 0.5 - 2.5 = 0 cores left
    index.refresh("ho-unknown")  # ignored


def test_fractional_cores_never_oversubscribe_and_exact_fits_fit() -> None:
    h = host("ho-1", cpu=1.0, used_cpu=0.7)
    index = HostIndex([h])
    assert index.place(0.30000001, 16) is None  # rounds up: more than is free
    assert index.place(0.3, 16) is not None  # 0.7 + 0.3 is all of it
    assert index.place(0.001, 16) is None


def test_a_host_with_more_memory_than_the_index_holds_still_takes_work() -> None:
    huge = host("ho-huge", memory_mib=2**40, used_memory_mib=2**39)  # the wire's bound
    placed = HostIndex([huge]).place(1.0, 1 << 20)
    assert placed is not None and huge.used_memory_mib == 2**39 + (1 << 20)


def test_a_host_with_more_cores_than_the_index_holds_fails_no_placement() -> None:
    """A host in the store with more cores than the engine indexes (registered before the
    wire's bound matched the engine's) takes work, and the other hosts' work is placed: it
    made every scheduler tick fail ("node CPU beyond the index's range")."""
    huge = host("ho-huge", cpu=100_000.0, used_cpu=99_000.0)
    small = host("ho-small")
    index = HostIndex([huge, small])
    placed = index.place(2.0, 1024, exclude={"ho-small"})
    assert placed is not None and placed[0].id == "ho-huge"
    placed = index.place(2.0, 1024, exclude={"ho-huge"})
    assert placed is not None and placed[0].id == "ho-small"


def test_excluded_hosts_are_skipped_and_ties_go_to_the_lower_id() -> None:
    index = HostIndex([host("ho-b"), host("ho-a"), host("ho-c")])
    placed = index.place(1.0, 1024, exclude={"ho-a"})
    assert placed is not None and placed[0].id == "ho-b"
    with pytest.raises(ValueError, match="unique"):
        HostIndex([host("ho-a"), host("ho-a")])


def test_set_free_rekeys_the_node_and_rejects_out_of_range_values() -> None:
    c = Cluster.from_nodes([NodeSpec("n0", 4000, 8192, 2, "A"), NodeSpec("n1", 8000, 8192)])
    c.set_free(0, 1000, 1024, [0, FULL])
    assert c.place(Request(2000, 512, 1, FULL, frozenset({"A"}))) is None
    p = c.place(Request(1000, 512, 1, FULL, frozenset({"A"})))
    assert p is not None and p.node == 0 and p.gpus == ((1, FULL),)
    for bad in ((5000, 1024, [0, 0]), (-1, 0, [0, 0]), (0, 0, [0]), (0, 0, [0, FULL + 1])):
        with pytest.raises(ValueError, match="out of range"):
            c.set_free(0, *bad)  # type: ignore[arg-type]


hosts_st = st.lists(
    st.builds(
        lambda n, cpu_q, used_q, models, used: HostCapacity(
            id=f"ho-{n}",
            cpu=cpu_q / 4,
            memory_mib=65_536,
            gpus=tuple(enumerate(models)),
            used_cpu=min(used_q, cpu_q) / 4,
            used_gpus={i for i in used if i < len(models)},
        ),
        st.integers(0, 10**6),
        st.integers(1, 64),
        st.integers(0, 64),
        st.lists(st.sampled_from(MODELS), max_size=8),
        st.sets(st.integers(0, 7)),
    ),
    max_size=10,
    unique_by=lambda h: h.id,
)


@settings(max_examples=200, deadline=None, database=None)
@given(
    hosts_st,
    st.integers(1, 32).map(lambda q: q / 4),
    st.none() | st.tuples(st.sampled_from(MODELS), st.integers(1, 4)),
)
def test_the_choice_is_the_tightest_fit(
    hosts: list[HostCapacity], cpu: float, gpu: tuple[str, int] | None
) -> None:
    """On small fleets (fewer feasible hosts than the engine scores) the choice is exact:
    the fitting host with the fewest free GPUs of the model left, then the least CPU left,
    then the lowest id."""
    before = copy.deepcopy(hosts)
    model, count = gpu or (None, 0)

    def free_of(h: HostCapacity) -> list[int]:
        """Free GPUs of the model (of any model for CPU-only work: best-fit keeps hosts
        with free GPUs for GPU work)."""
        return [i for i, m in h.gpus if (m == model or not model) and i not in h.used_gpus]

    fitting = [h for h in before if h.cpu - h.used_cpu >= cpu and len(free_of(h)) >= count]
    placed = HostIndex(hosts).place(cpu, 1024, model, count)
    if not fitting:
        assert placed is None
        return
    best = min(fitting, key=lambda h: (len(free_of(h)) - count, h.cpu - h.used_cpu, h.id))
    assert placed is not None
    chosen, devices = placed
    assert chosen.id == best.id
    assert devices == tuple(free_of(best)[:count])
    assert chosen.used_cpu == best.used_cpu + cpu


@settings(max_examples=150, deadline=None, database=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 32), st.sampled_from(("", *MODELS)), st.integers(1, 8)),
        min_size=1,
        max_size=8,
    ),
    st.lists(
        st.tuples(st.integers(1, 16), st.none() | st.sampled_from(MODELS), st.integers(1, 4)),
        max_size=10,
    ),
)
def test_plan_chooses_as_the_simulator_engine_does(
    fleet: list[tuple[int, str, int]], work: list[tuple[int, str | None, int]]
) -> None:
    """The live scheduler's plan and the simulator's use of the engine (NodeSpec per host,
    one Request per container, best-fit) place the same containers on the same hosts."""
    hosts = [
        host(f"ho-{i}", cpu=float(c), gpus=tuple((j, m) for j in range(n)) if m else ())
        for i, (c, m, n) in enumerate(fleet)
    ]
    sim = Cluster.from_nodes(
        [
            NodeSpec(h.id, int(h.cpu) * 1000, h.memory_mib, len(h.gpus), m)
            for h, (_, m, _) in zip(hosts, fleet, strict=True)
        ],
        "best-fit",
    )
    demands = [
        demand(f"fn-{k}", float(c), (GpuChoice(m, n),) if m else ())
        for k, (c, m, n) in enumerate(work)
    ]
    expected = []
    for d in demands:
        count = d.gpus[0].count if d.gpus else 0
        models = frozenset({d.gpus[0].model}) if d.gpus else frozenset()
        p = sim.place(Request(int(d.cpu) * 1000, d.memory_mib, count, FULL if count else 0, models))
        if p is not None:
            expected.append((d.id, sim.nodes[p.node].id))
    got = [(s.function_id, s.host_id) for s in plan(0, demands, hosts, Policy()).start]
    assert got == expected
