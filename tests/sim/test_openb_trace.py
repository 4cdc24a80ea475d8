"""Loading the real openb trace (skipped where the data set is absent)."""

from __future__ import annotations

from collections import Counter

import pytest

from crucible.core.placement import Cluster, FragmentationAware, NodeSpec
from crucible.sim.trace import (
    gpu_count,
    load_nodes,
    load_pods,
    replicate,
    workload_classes,
)

from harness import OPENB_TRACE

pytestmark = pytest.mark.skipif(
    not (OPENB_TRACE / "openb_node_list_all_node.csv").exists(),
    reason="openb trace not present",
)


def test_node_lists() -> None:
    nodes = load_nodes(OPENB_TRACE)
    assert len(nodes) == 1523
    gpu_nodes = [n for n in nodes if n.gpu_count]
    assert len(gpu_nodes) == 1213 and gpu_count(nodes) == 6212
    only = load_nodes(OPENB_TRACE, gpu_only=True)
    assert len(only) == 1213 and gpu_count(only) == 6212

    def shape(n: NodeSpec) -> tuple[int, int, int, str]:
        return (n.cpu_milli, n.memory_mib, n.gpu_count, n.gpu_model)

    assert Counter(map(shape, only)) == Counter(map(shape, gpu_nodes))
    models = Counter(n.gpu_model for n in gpu_nodes)
    assert set(models) == {"A10", "G2", "G3", "P100", "T4", "V100M16", "V100M32"}
    assert models["G2"] == 549 and models["T4"] == 404
    assert all(n.gpu_model == "" for n in nodes if not n.gpu_count)


def test_default_pods() -> None:
    pods = load_pods(OPENB_TRACE)
    assert len(pods) == 8152
    kinds = Counter(
        "cpu" if p.request.num_gpu == 0 else "share" if p.request.shared else "whole" for p in pods
    )
    assert kinds == {"cpu": 1088, "share": 3078, "whole": 3986}
    assert max(p.request.num_gpu for p in pods) == 8
    assert [p.creation_time for p in pods] == sorted(p.creation_time for p in pods)


def test_gpuspec_constraints_parsed() -> None:
    pods = load_pods(OPENB_TRACE, name="gpuspec33")
    constrained = [p for p in pods if p.request.models]
    assert constrained, "gpuspec33 has type-constrained tasks"
    known = {"A10", "G2", "G3", "P100", "T4", "V100M16", "V100M32"}
    assert all(p.request.models <= known for p in constrained)
    assert frozenset({"V100M16", "V100M32"}) in {p.request.models for p in constrained}


@pytest.mark.parametrize("target", [100_000, 250_000])
def test_replicate(target: int) -> None:
    nodes = load_nodes(OPENB_TRACE)
    fleet = replicate(nodes, target)
    assert target <= gpu_count(fleet) < target + 8
    assert len({n.id for n in fleet}) == len(fleet)
    assert fleet[: len(nodes)] == nodes


def test_replay_default_trace_places_most_tasks() -> None:
    nodes = load_nodes(OPENB_TRACE)
    c = Cluster.from_nodes(nodes, "best-fit")
    placed = sum(1 for p in load_pods(OPENB_TRACE) if c.place(p.request) is not None)
    # arrivals only (no departures): the cluster fills; most tasks still fit
    assert placed > 0.5 * 8152
    assert 0 < c.gpu_allocated_milli() <= 6212 * 1000


def test_workload_classes_drive_fgd() -> None:
    pods = load_pods(OPENB_TRACE)
    w = workload_classes([p.request for p in pods], max_classes=12)
    assert 1 <= len(w) <= 12
    assert abs(sum(p for _, p in w) - 1) < 1e-9
    assert all(r.num_gpu > 0 for r, _ in w)
    assert [p for _, p in w] == sorted((p for _, p in w), reverse=True)
    c = Cluster.from_nodes(load_nodes(OPENB_TRACE), FragmentationAware(workload=w))
    placed = sum(1 for p in pods[:2000] if c.place(p.request) is not None)
    assert placed > 1500
