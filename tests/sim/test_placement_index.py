"""The indexed placement core: invariants (Hypothesis) and policy behaviour."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crucible.core.placement import (
    FULL,
    POLICIES,
    Cluster,
    FragmentationAware,
    NodeSpec,
    Placement,
    Request,
    make_policy,
    node_fragmentation,
)

MODELS = ["A", "B", "C"]

nodes_st = st.lists(
    st.builds(
        lambda i, cpu, mem, g, m: NodeSpec(f"n{i}", cpu, mem, g, m if g else ""),
        st.integers(0, 10**6),
        st.sampled_from([0, 2000, 8000, 16000, 32000, 96000]),
        st.sampled_from([0, 4096, 65536, 262144]),
        st.integers(0, 8),
        st.sampled_from(MODELS),
    ),
    min_size=1,
    max_size=12,
)


@st.composite
def requests_st(draw: st.DrawFn) -> Request:
    kind = draw(st.sampled_from(["cpu", "share", "whole"]))
    cpu = draw(st.sampled_from([0, 500, 4000, 6000, 12000, 40000]))
    mem = draw(st.sampled_from([0, 1024, 16384, 100000]))
    models = frozenset(draw(st.lists(st.sampled_from(MODELS), max_size=2)))
    if kind == "cpu":
        return Request(cpu, mem)
    if kind == "share":
        return Request(cpu, mem, 1, draw(st.integers(1, 999)), models)
    return Request(cpu, mem, draw(st.integers(1, 8)), FULL, models)


ops_st = st.lists(st.tuples(st.booleans(), requests_st(), st.integers(0, 10**6)), max_size=60)


def check_invariants(c: Cluster, live: list[Placement]) -> None:
    for i, n in enumerate(c.nodes):
        mine = [p for p in live if p.node == i]
        assert c.free_cpu[i] == n.cpu_milli - sum(p.cpu_milli for p in mine) >= 0
        assert c.free_mem[i] == n.memory_mib - sum(p.memory_mib for p in mine) >= 0
        for j in range(n.gpu_count):
            used = sum(m for p in mine for jj, m in p.gpus if jj == j)
            assert c.gpu_free[i][j] == FULL - used >= 0
            # a whole GPU is never also shared
            holders = [p for p in mine for jj, m in p.gpus if jj == j and m == FULL]
            assert not holders or used == FULL


@pytest.mark.parametrize("indexed", [True, False])
@pytest.mark.parametrize("policy", sorted(POLICIES))
@settings(max_examples=40, deadline=None)
@given(nodes=nodes_st, ops=ops_st)
def test_never_oversubscribes_and_release_restores(
    policy: str, indexed: bool, nodes: list[NodeSpec], ops: list[tuple[bool, Request, int]]
) -> None:
    c = Cluster.from_nodes(nodes, policy, indexed=indexed, max_candidates=3)
    live: list[Placement] = []
    for is_place, req, pick in ops:
        if is_place or not live:
            p = c.place(req)
            if p is None:
                # exact indexes: nothing in the fleet fits
                assert all(c.fits(i, req) is None for i in range(len(nodes)))
                continue
            n = nodes[p.node]
            assert p.cpu_milli == req.cpu_milli and p.memory_mib == req.memory_mib
            assert sum(m for _, m in p.gpus) == req.gpu_demand_milli
            assert len({j for j, _ in p.gpus}) == len(p.gpus) == req.num_gpu
            if req.models and req.num_gpu:
                assert n.gpu_model in req.models
            live.append(p)
        else:
            c.release(live.pop(pick % len(live)))
        check_invariants(c, live)
    for p in live:
        c.release(p)
    fresh = Cluster.from_nodes(nodes, policy, indexed=indexed)
    assert c.free_cpu == fresh.free_cpu
    assert c.free_mem == fresh.free_mem
    assert c.gpu_free == fresh.gpu_free
    assert c._full_key == fresh._full_key and c._part_key == fresh._part_key


def test_over_release_raises_and_leaves_state() -> None:
    c = Cluster.from_nodes([NodeSpec("a", 8000, 1024, 2, "A")])
    p = c.place(Request(1000, 10, 1, 300))
    assert p is not None
    c.release(p)
    with pytest.raises(ValueError):
        c.release(p)
    assert c.gpu_free == [[FULL, FULL]] and c.free_cpu == [8000]


def test_registry() -> None:
    assert {"best-fit", "spread", "fgd"} <= set(POLICIES)
    assert make_policy("spread").name == "spread"
    with pytest.raises(KeyError, match="known"):
        make_policy("nope")


def test_best_fit_packs_shares_and_spread_spreads() -> None:
    nodes = [NodeSpec(f"n{i}", 32000, 65536, 4, "A") for i in range(3)]
    bf = Cluster.from_nodes(nodes, "best-fit")
    a = bf.place(Request(1000, 1, 1, 400))
    b = bf.place(Request(1000, 1, 1, 400))
    assert a is not None and b is not None
    assert (a.node, a.gpus[0][0]) == (b.node, b.gpus[0][0])  # same GPU
    sp = Cluster.from_nodes(nodes, "spread")
    got = {p.node for p in (sp.place(Request(1000, 1, 1, FULL)) for _ in range(3)) if p}
    assert got == {0, 1, 2}


def test_model_constraint_and_whole_gpus() -> None:
    nodes = [NodeSpec("a", 64000, 65536, 8, "A"), NodeSpec("b", 64000, 65536, 2, "B")]
    c = Cluster.from_nodes(nodes)
    p = c.place(Request(1000, 1, 2, FULL, frozenset({"B"})))
    assert p is not None and p.node == 1
    assert c.place(Request(1000, 1, 1, FULL, frozenset({"B"}))) is None
    assert c.place(Request(1000, 1, 8, FULL, frozenset({"A", "B"}))) is not None
    assert c.place(Request(1000, 1, 1, 10)) is None  # every GPU now whole-allocated


def test_cpu_only_prefers_gpu_less_nodes_under_best_fit() -> None:
    nodes = [NodeSpec("g", 96000, 65536, 8, "A"), NodeSpec("c", 96000, 65536)]
    c = Cluster.from_nodes(nodes, "best-fit")
    p = c.place(Request(4000, 1))
    assert p is not None and p.node == 1


def test_fragmentation_measure_and_fgd_choice() -> None:
    w = ((Request(0, 0, 1, 500), 1.0),)
    # two GPUs with 300 free each are useless to a 500-milli class: all 600 is fragment
    assert node_fragmentation(1000, 1000, [300, 300], "A", w) == 600
    assert node_fragmentation(1000, 1000, [FULL, 300], "A", w) == 300
    # x has a GPU with 600 free, y a wholly free GPU; a 500-milli task fits both.
    nodes = [NodeSpec("x", 8000, 4096, 1, "A"), NodeSpec("y", 8000, 4096, 1, "A")]
    for cls_milli, expect in ((500, "y"), (600, "x")):
        # class 500: x would keep 100 (+100 fragment), y keeps 500 usable (+0): y.
        # class 600: x +100 fragment, y would keep 500 < 600 (+500): x.
        c = Cluster.from_nodes(
            nodes, FragmentationAware(workload=((Request(0, 0, 1, cls_milli), 1.0),))
        )
        first = c.place(Request(0, 0, 1, 400))
        assert first is not None and first.node == 0
        second = c.place(Request(0, 0, 1, 500))
        assert second is not None and nodes[second.node].id == expect


@pytest.mark.parametrize("policy", sorted(POLICIES))
@settings(max_examples=30, deadline=None)
@given(nodes=nodes_st, ops=ops_st)
def test_indexed_without_candidate_cap_matches_full_scan(
    policy: str, nodes: list[NodeSpec], ops: list[tuple[bool, Request, int]]
) -> None:
    """The indexes find every feasible node: uncapped, the decision equals the full scan's."""
    a = Cluster.from_nodes(nodes, policy, max_candidates=10**9)
    b = Cluster.from_nodes(nodes, policy, indexed=False)
    live: list[Placement] = []
    for is_place, req, pick in ops:
        if is_place or not live:
            pa, pb = a.place(req), b.place(req)
            assert pa == pb
            if pa is not None:
                live.append(pa)
        else:
            p = live.pop(pick % len(live))
            a.release(p)
            b.release(p)
