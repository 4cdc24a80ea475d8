"""Indexed placement core: place and release tasks on a fleet without scanning it.

Pure and deterministic: no I/O, no clock, no randomness. The simulator and the server drive it.

Model. A node has CPU (milli-cores), memory (MiB) and zero or more GPUs of one model; each GPU
has a free share in milli-GPUs (0..1000, 1000 = wholly free). A :class:`Request` asks for CPU,
memory and either

* nothing GPU (``num_gpu == 0``),
* a *share of one GPU* (``num_gpu == 1`` and ``0 < gpu_milli < 1000``): that many milli-GPUs
  on a single GPU, which may already be shared by other tasks, or
* ``num_gpu`` *whole* GPUs on one node (``gpu_milli`` is then 1000 or 0 and ignored),

restricted to the GPU models in ``models`` (alternatives: any of them; empty: any model) and
to the regions in ``regions`` (empty: any). A node also carries what the market says about it:
its region, its on-demand price per GPU-hour (micro-dollars) and its carbon intensity.

Contracts of :class:`Cluster`:

* :meth:`Cluster.place` returns a :class:`Placement` or ``None`` (nothing fits); it never
  oversubscribes CPU, memory, a GPU's share, or whole GPUs, and ``None`` is returned only if
  no node in the fleet fits the request (the indexes are exact, not a sample).
* :meth:`Cluster.release` of a placement returned by this cluster restores the capacity it
  took exactly; releasing more than was taken raises :class:`ValueError`.
* :meth:`Cluster.place_gang` places one request on each of ``count`` distinct nodes, all or
  nothing: it returns ``count`` placements, or ``None`` with the state unchanged, and
  ``None`` only if fewer than ``count`` nodes fit the request.

Indexes. For each node group (GPU model, region, price, carbon intensity; the model is ``""``
for GPU-less nodes) nodes sit in buckets keyed by
(free whole GPUs, capacity level), and nodes with a partly used GPU also in buckets keyed by
(largest partial free share // 10, capacity level), where the capacity level combines free
CPU (``// CPU_LEVEL_MILLI``) and free memory (its bit length, a log scale) as
``cpu_level * MEM_LEVELS + mem_level``. A decision visits only buckets whose keys
can fit the request, in the order the policy asks (tightest or loosest first; a policy that
ranks groups, such as ``cost-first``, visits groups in its order, each group's buckets in
turn), and scores at most ``max_candidates`` feasible nodes. With ``indexed=False`` the
cluster instead scans every node and scores every feasible one (the naive baseline for
benchmarks and tests).

Policies (see :data:`POLICIES`, :func:`make_policy`): ``best-fit`` packs (fewest free whole
GPUs left, then least GPU share, then least CPU); ``spread`` balances (most free whole GPUs
left, then most CPU); ``fgd`` is fragmentation-aware in the spirit of FGD (Weng et al., USENIX
ATC 2023): it picks the node whose placement least increases the node's expected GPU
fragmentation for a workload distribution of task classes; ``cost-first`` takes the cheapest
node (market price per GPU-hour, then carbon, then best-fit); ``carbon-first`` the lowest
carbon intensity (then price, then best-fit). Hosts that declare no carbon rank last.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

__all__ = [
    "CPU_LEVEL_MILLI",
    "FULL",
    "MAX_NODE_CPU_MILLI",
    "MAX_NODE_MEMORY_MIB",
    "MEM_LEVELS",
    "POLICIES",
    "UNDECLARED_CARBON",
    "BestFit",
    "CarbonFirst",
    "Cluster",
    "CostFirst",
    "FragmentationAware",
    "NodeGroup",
    "NodeSpec",
    "Placement",
    "PlacementPolicy",
    "Request",
    "Spread",
    "make_policy",
    "node_fragmentation",
]

FULL = 1000
"""Milli-share of one whole GPU."""
CPU_LEVEL_MILLI = 1000
"""Width of a free-CPU bucket in milli-cores."""
MEM_LEVELS = 32
"""Memory levels: ``free_mib.bit_length()`` (free memory must stay below 2**31 MiB)."""
MAX_NODE_MEMORY_MIB = (1 << (MEM_LEVELS - 1)) - 1
"""The most memory a node may have (2 PiB): what the memory levels hold."""
MAX_NODE_CPU_MILLI = 65_536 * CPU_LEVEL_MILLI
"""The most CPU a node may have (65,536 cores): the CPU levels are bits of a mask per
memory level, so a node of millions of cores would take gigabytes."""
_SHARE_LEVEL = 10
UNDECLARED_CARBON = 1_000_000
"""Carbon key of a node that declares none: after every declared one (gCO2/kWh tops out near
1,000), as in the market's ranking."""


class NodeGroup(NamedTuple):
    """Nodes the indexes keep together: same GPU model, region, price and carbon intensity."""

    model: str
    region: str
    price_micros: int
    carbon: int


@dataclass(frozen=True)
class NodeSpec:
    """A node's capacity: ``gpu_count`` GPUs of ``gpu_model`` (``""`` when it has none), and
    its market profile: ``region``, ``price_micros`` (on-demand, per GPU-hour; 0 when unpriced)
    and ``carbon_g_per_kwh`` (``None``: not declared)."""

    id: str
    cpu_milli: int
    memory_mib: int
    gpu_count: int = 0
    gpu_model: str = ""
    region: str = ""
    price_micros: int = 0
    carbon_g_per_kwh: int | None = None

    def __post_init__(self) -> None:
        if self.cpu_milli < 0 or self.memory_mib < 0 or self.gpu_count < 0:
            raise ValueError(f"node {self.id}: negative capacity")
        if self.gpu_count and not self.gpu_model:
            raise ValueError(f"node {self.id}: GPUs without a model")
        if self.price_micros < 0 or (self.carbon_g_per_kwh or 0) < 0:
            raise ValueError(f"node {self.id}: negative price or carbon intensity")

    @property
    def group(self) -> NodeGroup:
        carbon = UNDECLARED_CARBON if self.carbon_g_per_kwh is None else self.carbon_g_per_kwh
        return NodeGroup(self.gpu_model, self.region, self.price_micros, carbon)


@dataclass(frozen=True)
class Request:
    """What one task needs. See the module docstring for the GPU forms."""

    cpu_milli: int
    memory_mib: int
    num_gpu: int = 0
    gpu_milli: int = 0
    models: frozenset[str] = frozenset()
    regions: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.cpu_milli < 0 or self.memory_mib < 0 or self.num_gpu < 0:
            raise ValueError("negative request")
        if not 0 <= self.gpu_milli <= FULL:
            raise ValueError("gpu_milli must be within 0..1000")
        if self.num_gpu == 1 and self.gpu_milli == 0:
            raise ValueError("a one-GPU request needs gpu_milli > 0")

    @property
    def shared(self) -> bool:
        """True when the request is a share of one GPU."""
        return self.num_gpu == 1 and self.gpu_milli < FULL

    @property
    def whole_gpus(self) -> int:
        """Whole GPUs needed (0 for CPU-only and shared requests)."""
        return 0 if self.shared else self.num_gpu

    @property
    def gpu_demand_milli(self) -> int:
        """Total GPU milli-shares the request takes."""
        return self.gpu_milli if self.shared else self.num_gpu * FULL


@dataclass(frozen=True)
class Placement:
    """Where a request went: node index, CPU and memory taken, and (GPU index, milli) taken."""

    node: int
    cpu_milli: int
    memory_mib: int
    gpus: tuple[tuple[int, int], ...]


class PlacementPolicy(Protocol):
    """How a policy steers the search and ranks feasible nodes (lower score wins)."""

    @property
    def name(self) -> str:
        """The registry name."""
        ...

    @property
    def tightest_first(self) -> bool:
        """Visit buckets tightest first (packing) rather than loosest first (spreading)."""
        ...

    def group_rank(self, group: NodeGroup) -> tuple[float, ...] | None:
        """Visit node groups in this order (lowest first), or ``None``: buckets first."""
        ...

    def score(
        self, cluster: Cluster, node: int, req: Request, gpus: tuple[tuple[int, int], ...]
    ) -> tuple[float, ...]: ...


@dataclass
class _Index:
    """Buckets of node ids for one GPU model or node group: ``full[k][level]`` and
    ``part[q][level]``.

    ``full_mask[k]`` / ``part_mask[q]`` have bit ``level`` set iff that bucket is non-empty,
    and ``rows`` / ``prows`` bit ``k`` / ``q`` iff that row has any bucket, so a search skips
    empty buckets, rows and whole indexes without visiting them.
    """

    full: list[dict[int, dict[int, None]]]
    part: list[dict[int, dict[int, None]]]
    full_mask: list[int]
    part_mask: list[int]
    rows: int = 0
    prows: int = 0

    def may_fit(self, req: Request) -> bool:
        """False when no node here can fit ``req`` by GPU count or share (a quick skip)."""
        if req.shared:
            return bool(self.rows >> 1 or self.prows >> (req.gpu_milli // _SHARE_LEVEL))
        return bool(self.rows >> req.whole_gpus)


def _new_grid(rows: int) -> list[dict[int, dict[int, None]]]:
    """Rows of buckets; a row holds only its non-empty buckets, by level."""
    return [{} for _ in range(rows)]


@dataclass
class Cluster:
    """Mutable fleet state with indexes. Build with :meth:`from_nodes`."""

    nodes: list[NodeSpec]
    policy: PlacementPolicy
    indexed: bool = True
    max_candidates: int = 16
    free_cpu: list[int] = field(default_factory=list)
    free_mem: list[int] = field(default_factory=list)
    gpu_free: list[list[int]] = field(default_factory=list)
    _idx: dict[NodeGroup, _Index] = field(default_factory=dict)
    _midx: dict[str, _Index] = field(default_factory=dict)
    _groups: list[NodeGroup] = field(default_factory=list)
    _node_idx: list[tuple[_Index, _Index]] = field(default_factory=list)
    _plans: dict[tuple[frozenset[str] | None, frozenset[str]], tuple[bool, list[_Index]]] = field(
        default_factory=dict
    )
    _full_key: list[tuple[int, int]] = field(default_factory=list)
    _part_key: list[tuple[int, int] | None] = field(default_factory=list)
    _levels: int = 1
    _max_gpus: int = 0

    @classmethod
    def from_nodes(
        cls,
        nodes: Sequence[NodeSpec],
        policy: PlacementPolicy | str = "best-fit",
        *,
        indexed: bool = True,
        max_candidates: int = 16,
    ) -> Cluster:
        """A cluster with every node wholly free. ``policy`` is an object or a registry name."""
        pol = make_policy(policy) if isinstance(policy, str) else policy
        if max_candidates < 1:
            raise ValueError("max_candidates must be >= 1")
        c = cls(list(nodes), pol, indexed, max_candidates)
        cpu_levels = max((n.cpu_milli for n in c.nodes), default=0) // CPU_LEVEL_MILLI + 1
        if max((n.memory_mib for n in c.nodes), default=0) > MAX_NODE_MEMORY_MIB:
            raise ValueError("node memory beyond the index's range")
        if cpu_levels > MAX_NODE_CPU_MILLI // CPU_LEVEL_MILLI + 1:
            raise ValueError("node CPU beyond the index's range")
        c._levels = cpu_levels * MEM_LEVELS
        c._max_gpus = max((n.gpu_count for n in c.nodes), default=0)
        for i, n in enumerate(c.nodes):
            c.free_cpu.append(n.cpu_milli)
            c.free_mem.append(n.memory_mib)
            c.gpu_free.append([FULL] * n.gpu_count)
            c._groups.append(n.group)
            if n.group not in c._idx:
                c._idx[n.group] = c._new_index()
            if n.gpu_model not in c._midx:
                c._midx[n.gpu_model] = c._new_index()
            c._node_idx.append((c._idx[n.group], c._midx[n.gpu_model]))
            c._full_key.append((-1, -1))
            c._part_key.append(None)
            c._reindex(i)
        return c

    def _new_index(self) -> _Index:
        return _Index(
            _new_grid(self._max_gpus + 1),
            _new_grid(FULL // _SHARE_LEVEL),
            [0] * (self._max_gpus + 1),
            [0] * (FULL // _SHARE_LEVEL),
        )

    # ----------------------------------------------------------------- queries

    @property
    def models(self) -> list[str]:
        """GPU models present (``""`` stands for GPU-less nodes)."""
        return sorted({g.model for g in self._idx})

    def free_whole(self, node: int) -> int:
        """Wholly free GPUs on ``node``."""
        return sum(1 for f in self.gpu_free[node] if f == FULL)

    def gpu_allocated_milli(self) -> int:
        """GPU milli-shares in use across the fleet."""
        return sum(FULL * len(g) - sum(g) for g in self.gpu_free)

    def fits(self, node: int, req: Request) -> tuple[tuple[int, int], ...] | None:
        """The GPUs ``req`` would take on ``node`` (empty tuple for CPU-only), or ``None``."""
        spec = self.nodes[node]
        if self.free_cpu[node] < req.cpu_milli or self.free_mem[node] < req.memory_mib:
            return None
        if req.regions and spec.region not in req.regions:
            return None
        if req.num_gpu == 0:
            return ()
        if req.models and spec.gpu_model not in req.models:
            return None
        g = self.gpu_free[node]
        if req.shared:
            best = -1
            for j, f in enumerate(g):
                if f >= req.gpu_milli and (
                    best < 0 or (f < g[best] if self.policy.tightest_first else f > g[best])
                ):
                    best = j
            return None if best < 0 else ((best, req.gpu_milli),)
        take = [j for j, f in enumerate(g) if f == FULL][: req.num_gpu]
        if len(take) < req.num_gpu:
            return None
        return tuple((j, FULL) for j in take)

    # ----------------------------------------------------------------- place / release

    def place(self, req: Request, exclude: Collection[int] = ()) -> Placement | None:
        """Place ``req`` by the policy on a node not in ``exclude``, or return ``None`` if no
        such node fits (state unchanged)."""
        best: tuple[tuple[float, ...], int, tuple[tuple[int, int], ...]] | None = None
        seen = 0
        nodes: Iterator[int] = (
            self._candidates(req) if self.indexed else iter(range(len(self.nodes)))
        )
        for i in nodes:
            if exclude and i in exclude:
                continue
            gpus = self.fits(i, req)
            if gpus is None:
                continue
            s = self.policy.score(self, i, req, gpus)
            if best is None or (s, i) < (best[0], best[1]):
                best = (s, i, gpus)
            seen += 1
            if self.indexed and seen >= self.max_candidates:
                break
        if best is None:
            return None
        _, i, gpus = best
        return self._take(i, req, gpus)

    def place_on(self, node: int, req: Request) -> Placement | None:
        """Place ``req`` on ``node`` if it fits there (the policy is not asked), else return
        ``None`` (state unchanged): for work that belongs on one node, as a pod on the host
        that holds its disk."""
        gpus = self.fits(node, req)
        return None if gpus is None else self._take(node, req, gpus)

    def _take(self, i: int, req: Request, gpus: tuple[tuple[int, int], ...]) -> Placement:
        self.free_cpu[i] -= req.cpu_milli
        self.free_mem[i] -= req.memory_mib
        for j, m in gpus:
            self.gpu_free[i][j] -= m
        self._reindex(i)
        return Placement(i, req.cpu_milli, req.memory_mib, gpus)

    def place_gang(self, req: Request, count: int) -> tuple[Placement, ...] | None:
        """Place ``req`` on ``count`` distinct nodes, all or nothing (``None``: state unchanged).

        Exact: members are alike and each needs its own node, and a placement on one node does
        not change whether another fits, so the gang fits iff ``count`` nodes fit ``req``;
        placing members one by one (each by the policy) finds them whenever they exist.
        """
        if count < 1:
            raise ValueError("a gang has at least one member")
        if count > 1 and self.count_fitting(req, count) < count:
            # Refused without placing and releasing members one by one (a refused gang of
            # 512 cost 512 placements and as many releases, each time it was tried).
            return None
        done: list[Placement] = []
        used: set[int] = set()
        for _ in range(count):
            p = self.place(req, used)
            if p is None:
                for q in reversed(done):
                    self.release(q)
                return None
            done.append(p)
            used.add(p.node)
        return tuple(done)

    def count_fitting(self, req: Request, at_most: int) -> int:
        """How many distinct nodes fit ``req`` now, counted up to ``at_most`` (one pass over
        the candidates, no change): a gang of ``count`` members fits iff this reaches
        ``count``."""
        nodes: Iterator[int] = (
            self._candidates(req) if self.indexed else iter(range(len(self.nodes)))
        )
        seen: set[int] = set()
        for i in nodes:
            if i not in seen and self.fits(i, req) is not None:
                seen.add(i)
                if len(seen) >= at_most:
                    break
        return len(seen)

    def release(self, p: Placement) -> None:
        """Give back what ``p`` took. Raises ``ValueError`` (state unchanged) on over-release."""
        spec = self.nodes[p.node]
        if (
            self.free_cpu[p.node] + p.cpu_milli > spec.cpu_milli
            or self.free_mem[p.node] + p.memory_mib > spec.memory_mib
            or any(self.gpu_free[p.node][j] + m > FULL for j, m in p.gpus)
        ):
            raise ValueError(f"release exceeds capacity on node {spec.id}")
        self.free_cpu[p.node] += p.cpu_milli
        self.free_mem[p.node] += p.memory_mib
        for j, m in p.gpus:
            self.gpu_free[p.node][j] += m
        self._reindex(p.node)

    def set_free(self, node: int, cpu_milli: int, memory_mib: int, gpu_free: Sequence[int]) -> None:
        """Set what is free on ``node`` and re-key it in the indexes: for a driver whose nodes
        also change outside this cluster (the live scheduler's hosts, where the market places
        GPU leases too). Raises ``ValueError`` (state unchanged) when a value is negative, above
        the node's capacity, or ``gpu_free`` does not have one share per GPU."""
        spec = self.nodes[node]
        if (
            not 0 <= cpu_milli <= spec.cpu_milli
            or not 0 <= memory_mib <= spec.memory_mib
            or len(gpu_free) != spec.gpu_count
            or any(not 0 <= f <= FULL for f in gpu_free)
        ):
            raise ValueError(f"free capacity out of range on node {spec.id}")
        self.free_cpu[node] = cpu_milli
        self.free_mem[node] = memory_mib
        self.gpu_free[node] = list(gpu_free)
        self._reindex(node)

    # ----------------------------------------------------------------- indexes

    def _reindex(self, i: int) -> None:
        """Move node ``i`` to the buckets its state now keys, in its group's index and its
        model's (the same keys in both: they depend on the node's state only)."""
        level = (self.free_cpu[i] // CPU_LEVEL_MILLI) * MEM_LEVELS + self.free_mem[i].bit_length()
        fk = (self.free_whole(i), level)
        old = self._full_key[i]
        partial = [f for f in self.gpu_free[i] if 0 < f < FULL]
        pk = (max(partial) // _SHARE_LEVEL, level) if partial else None
        oldp = self._part_key[i]
        for idx in self._node_idx[i]:
            if old != fk:
                if old[0] >= 0:
                    b = idx.full[old[0]][old[1]]
                    del b[i]
                    if not b:
                        del idx.full[old[0]][old[1]]
                        idx.full_mask[old[0]] &= ~(1 << old[1])
                        if not idx.full_mask[old[0]]:
                            idx.rows &= ~(1 << old[0])
                idx.full[fk[0]].setdefault(fk[1], {})[i] = None
                idx.full_mask[fk[0]] |= 1 << fk[1]
                idx.rows |= 1 << fk[0]
            if oldp != pk:
                if oldp is not None:
                    b = idx.part[oldp[0]][oldp[1]]
                    del b[i]
                    if not b:
                        del idx.part[oldp[0]][oldp[1]]
                        idx.part_mask[oldp[0]] &= ~(1 << oldp[1])
                        if not idx.part_mask[oldp[0]]:
                            idx.prows &= ~(1 << oldp[0])
                if pk is not None:
                    idx.part[pk[0]].setdefault(pk[1], {})[i] = None
                    idx.part_mask[pk[0]] |= 1 << pk[1]
                    idx.prows |= 1 << pk[0]
        self._full_key[i] = fk
        self._part_key[i] = pk

    def _plan(self, req: Request) -> tuple[bool, list[_Index]]:
        """Which indexes a request searches, in order, and whether group by group.

        A policy that ranks groups, or a request limited to regions, searches the group
        indexes that can hold it (in the policy's group order); any other request searches
        the per-model indexes, so the number of groups (sites x prices) does not slow it.
        Plans depend only on the request's models and regions and are cached.
        """
        key = (req.models if req.num_gpu else None, req.regions)
        plan = self._plans.get(key)
        if plan is not None:
            return plan

        def wanted(model: str) -> bool:
            return req.num_gpu == 0 or bool(model and (not req.models or model in req.models))

        groups = sorted(
            g for g in self._idx if wanted(g.model) and (not req.regions or g.region in req.regions)
        )
        ranks = {g: self.policy.group_rank(g) for g in groups}
        by_group = len(groups) > 1 and all(r is not None for r in ranks.values())
        if by_group:
            groups.sort(key=lambda g: (ranks[g] or (), g))
        if by_group or req.regions:
            plan = (by_group, [self._idx[g] for g in groups])
        else:
            plan = (False, [self._midx[m] for m in sorted(self._midx) if wanted(m)])
        if len(self._plans) > 4096:
            self._plans.clear()
        self._plans[key] = plan
        return plan

    def _candidates(self, req: Request) -> Iterator[int]:
        """Node ids whose bucket keys can fit ``req``, in the policy's order (may repeat)."""
        tight = self.policy.tightest_first
        lo_level = (req.cpu_milli // CPU_LEVEL_MILLI) * MEM_LEVELS
        # a node with less free memory than 2**(b-1) <= memory_mib (b its bit length) cannot fit
        lo_mem = req.memory_mib.bit_length()
        by_group, idxs = self._plan(req)
        need = 1 if req.shared else req.whole_gpus
        ks = range(need, self._max_gpus + 1)
        if not tight:
            ks = ks[::-1]

        def levels(mask: int) -> Iterator[int]:
            m = mask >> lo_level
            if tight:
                while m:
                    low = m & -m
                    lv = low.bit_length() - 1 + lo_level
                    if lv % MEM_LEVELS >= lo_mem:
                        yield lv
                    m ^= low
            else:
                while m:
                    top = m.bit_length() - 1
                    if (top + lo_level) % MEM_LEVELS >= lo_mem:
                        yield top + lo_level
                    m ^= 1 << top

        def rows(mask: int, lo: int) -> Iterator[int]:
            """Set bits of ``mask`` from ``lo`` up, in the policy's order."""
            m = mask >> lo
            while m:
                if tight:
                    low = m & -m
                    yield low.bit_length() - 1 + lo
                    m ^= low
                else:
                    top = m.bit_length() - 1
                    yield top + lo
                    m ^= 1 << top

        def full(idxs: list[_Index]) -> Iterator[int]:
            if len(idxs) == 1:  # one group: only its non-empty rows
                idx = idxs[0]
                for k in rows(idx.rows, need):
                    row = idx.full[k]
                    for lv in levels(idx.full_mask[k]):
                        yield from row[lv]
                return
            for k in ks:
                for idx in idxs:
                    if not (idx.rows >> k) & 1:
                        continue
                    row = idx.full[k]
                    for lv in levels(idx.full_mask[k]):
                        yield from row[lv]

        def part(idxs: list[_Index]) -> Iterator[int]:
            q0 = req.gpu_milli // _SHARE_LEVEL
            if len(idxs) == 1:
                idx = idxs[0]
                for q in rows(idx.prows, q0):
                    row = idx.part[q]
                    for lv in levels(idx.part_mask[q]):
                        yield from row[lv]
                return
            qs = range(q0, FULL // _SHARE_LEVEL)
            for q in qs if tight else qs[::-1]:
                for idx in idxs:
                    if not (idx.prows >> q) & 1:
                        continue
                    row = idx.part[q]
                    for lv in levels(idx.part_mask[q]):
                        yield from row[lv]

        def search(idxs: list[_Index]) -> Iterator[int]:
            if not req.shared:
                yield from full(idxs)
            elif tight:
                yield from part(idxs)
                yield from full(idxs)
            else:
                yield from full(idxs)
                yield from part(idxs)

        if by_group:  # the policy's group order first, then buckets within a group
            for idx in idxs:
                if idx.may_fit(req):
                    yield from search([idx])
        else:
            yield from search(idxs)


# --------------------------------------------------------------------- policies


def _whole_left(free: Sequence[int], gpus: tuple[tuple[int, int], ...]) -> int:
    """Whole GPUs a node would have left after taking ``gpus`` (index, share) from ``free``."""
    return sum(1 for f in free if f == FULL) - sum(1 for j, _ in gpus if free[j] == FULL)


@dataclass(frozen=True)
class BestFit:
    """Pack: fewest free whole GPUs left, then least free GPU share, then least free CPU."""

    name: str = "best-fit"
    tightest_first: bool = True

    def group_rank(self, group: NodeGroup) -> tuple[float, ...] | None:
        return None

    def score(
        self, cluster: Cluster, node: int, req: Request, gpus: tuple[tuple[int, int], ...]
    ) -> tuple[float, ...]:
        g = cluster.gpu_free[node]
        whole = _whole_left(g, gpus)
        share = sum(g) - sum(m for _, m in gpus)
        return (float(whole), float(share), float(cluster.free_cpu[node] - req.cpu_milli))


# The tie-break the other policies end with (one instance, not one per scored node).
_BEST_FIT = BestFit()


@dataclass(frozen=True)
class Spread:
    """Balance: most free whole GPUs left, then most free CPU."""

    name: str = "spread"
    tightest_first: bool = False

    def group_rank(self, group: NodeGroup) -> tuple[float, ...] | None:
        return None

    def score(
        self, cluster: Cluster, node: int, req: Request, gpus: tuple[tuple[int, int], ...]
    ) -> tuple[float, ...]:
        g = cluster.gpu_free[node]
        whole = _whole_left(g, gpus)
        return (-float(whole), -float(cluster.free_cpu[node] - req.cpu_milli))


def node_fragmentation(
    cpu_free: int,
    mem_free: int,
    gpu_free: Sequence[int],
    model: str,
    workload: Sequence[tuple[Request, float]],
) -> float:
    """Expected GPU fragmentation (milli-GPUs) of one node for a workload distribution.

    FGD's measure: for each task class (weight ``p``), the free GPU share that class cannot
    use on this node counts as fragment: all of it if the class cannot run on the node at
    all (CPU, memory, model or GPU count), else, for a shared class, the free share on GPUs
    with less free than the class needs. Returns the weighted sum.
    """
    total = sum(gpu_free)
    if total == 0:
        return 0.0
    whole = sum(1 for f in gpu_free if f == FULL)
    frag = 0.0
    for req, p in workload:
        if req.num_gpu == 0:
            continue  # CPU-only tasks use no GPU: FGD leaves them out of the measure
        if (
            req.cpu_milli > cpu_free
            or req.memory_mib > mem_free
            or (req.models and model not in req.models)
        ):
            frag += p * total
        elif req.shared:
            frag += p * sum(f for f in gpu_free if f < req.gpu_milli)
        elif req.num_gpu > whole:
            frag += p * total
        else:
            frag += p * sum(f for f in gpu_free if f < FULL)
    return frag


@dataclass(frozen=True)
class FragmentationAware:
    """FGD-style: least increase of expected fragmentation; ties go to best-fit order.

    ``workload`` is the task-class distribution ``[(request, weight), ...]`` (weights need not
    sum to 1); with none a small default mix of whole and shared GPU tasks is used. Node
    fragmentation values are memoised by node state (bounded; a pure function of its key).
    """

    workload: tuple[tuple[Request, float], ...] = ()
    name: str = "fgd"
    tightest_first: bool = True
    _memo: dict[tuple[int, int, tuple[int, ...], str], float] = field(
        default_factory=dict, compare=False, hash=False, repr=False
    )
    _memo_max: int = field(default=200_000, compare=False, repr=False)

    def _frag(self, cpu: int, mem: int, gpu_free: Sequence[int], model: str) -> float:
        key = (cpu, mem, tuple(gpu_free), model)
        v = self._memo.get(key)
        if v is None:
            if len(self._memo) >= self._memo_max:
                self._memo.clear()
            v = self._memo[key] = node_fragmentation(cpu, mem, gpu_free, model, self.classes())
        return v

    def classes(self) -> tuple[tuple[Request, float], ...]:
        return self.workload or _DEFAULT_WORKLOAD

    def group_rank(self, group: NodeGroup) -> tuple[float, ...] | None:
        return None

    def score(
        self, cluster: Cluster, node: int, req: Request, gpus: tuple[tuple[int, int], ...]
    ) -> tuple[float, ...]:
        g = cluster.gpu_free[node]
        after = list(g)
        for j, m in gpus:
            after[j] -= m
        model = cluster.nodes[node].gpu_model
        cpu, mem = cluster.free_cpu[node], cluster.free_mem[node]
        before_f = self._frag(cpu, mem, g, model)
        after_f = self._frag(cpu - req.cpu_milli, mem - req.memory_mib, after, model)
        return (after_f - before_f, *_BEST_FIT.score(cluster, node, req, gpus))


@dataclass(frozen=True)
class CostFirst:
    """Cheapest first: the node's price per GPU-hour (the market's on-demand ask), then carbon
    intensity, then best-fit. Groups are visited cheapest first, so the price is exact."""

    name: str = "cost-first"
    tightest_first: bool = True

    def group_rank(self, group: NodeGroup) -> tuple[float, ...] | None:
        return (float(group.price_micros), float(group.carbon))

    def score(
        self, cluster: Cluster, node: int, req: Request, gpus: tuple[tuple[int, int], ...]
    ) -> tuple[float, ...]:
        g = cluster._groups[node]
        return (float(g.price_micros), float(g.carbon), *_BEST_FIT.score(cluster, node, req, gpus))


@dataclass(frozen=True)
class CarbonFirst:
    """Greenest first: the node's carbon intensity (undeclared last), then price, then
    best-fit. Groups are visited greenest first, so the carbon intensity is exact."""

    name: str = "carbon-first"
    tightest_first: bool = True

    def group_rank(self, group: NodeGroup) -> tuple[float, ...] | None:
        return (float(group.carbon), float(group.price_micros))

    def score(
        self, cluster: Cluster, node: int, req: Request, gpus: tuple[tuple[int, int], ...]
    ) -> tuple[float, ...]:
        g = cluster._groups[node]
        return (float(g.carbon), float(g.price_micros), *_BEST_FIT.score(cluster, node, req, gpus))


_DEFAULT_WORKLOAD: tuple[tuple[Request, float], ...] = (
    (Request(4000, 16384, 1, 250), 0.15),
    (Request(6000, 24576, 1, 500), 0.25),
    (Request(8000, 32768, 1, FULL), 0.45),
    (Request(16000, 65536, 2, FULL), 0.05),
    (Request(32000, 131072, 4, FULL), 0.05),
    (Request(64000, 262144, 8, FULL), 0.05),
)

POLICIES: Mapping[str, Callable[..., PlacementPolicy]] = {
    "best-fit": BestFit,
    "spread": Spread,
    "fgd": FragmentationAware,
    "cost-first": CostFirst,
    "carbon-first": CarbonFirst,
}
"""Policy factories by name; ``fgd`` takes ``workload=``."""


def make_policy(name: str, **kwargs: object) -> PlacementPolicy:
    """The policy registered as ``name`` (``KeyError`` with the known names otherwise)."""
    try:
        factory = POLICIES[name]
    except KeyError:
        raise KeyError(f"unknown placement policy {name!r}; known: {sorted(POLICIES)}") from None
    return factory(**kwargs)
