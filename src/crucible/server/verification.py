"""Host verification (pure): an agent's self-test figures against the GPU catalog.

A host is verified when every one of its GPUs was measured through the real CUDA path and
each figure falls within the tolerance of its catalog model's spec sheet, its memory is the
model's, and the CPU check found the cores and memory bandwidth it declares:

- matmul throughput (dense FP16 TFLOPS) and memory bandwidth (GB/s): at least
  :data:`MIN_FRACTION` of the spec (a short test on a busy or PCIe card reaches less than the
  sheet; a card far below it is degraded, throttled or not what it claims) and at most
  :data:`MAX_FRACTION` (more than the sheet means the figures or the model are wrong);
- memory (NVML): at least :data:`MIN_MEMORY_FRACTION` of the catalog's (NVML reports a bit
  less than the marketed size);
- CPU: the cores measured in parallel reach :data:`MIN_CORE_FRACTION` of the cores declared
  (and no more than the test can measure: one worker per declared core), and memory copies
  reach :data:`MIN_CPU_BANDWIDTH_GBS` (and no more than :data:`MAX_CPU_BANDWIDTH_GBS`).

Declared fake GPUs are never verified. Nothing here does I/O: the server calls
:func:`verify` at registration and whenever an agent sends fresh results.
"""

from __future__ import annotations

from crucible.protocol.gpus import GPU_CATALOG
from crucible.protocol.hosts import HostVerification, Inventory, SelfTestResult

__all__ = [
    "MAX_CPU_BANDWIDTH_GBS",
    "MAX_FRACTION",
    "MIN_CORE_FRACTION",
    "MIN_CPU_BANDWIDTH_GBS",
    "MIN_FRACTION",
    "MIN_MEMORY_FRACTION",
    "verify",
]

MIN_FRACTION = 0.4
MAX_FRACTION = 1.5
MIN_MEMORY_FRACTION = 0.9
MIN_CORE_FRACTION = 0.5
MIN_CPU_BANDWIDTH_GBS = 0.5
MAX_CPU_BANDWIDTH_GBS = 5_000


def _gpu_problem(
    result: SelfTestResult | None, model: str, memory_mib: int, index: int
) -> tuple[str | None, str]:
    """(why GPU ``index`` fails, or None; what was measured, in words)."""
    name = f"GPU {index} ({model})"
    spec = GPU_CATALOG.get(model)
    if spec is None or not spec.matmul_tflops or not spec.mem_bandwidth_gbs:
        return f"{name}: not in the GPU catalog, nothing to compare with", ""
    if result is None:
        return f"{name}: no self-test result", ""
    if result.error:
        return f"{name}: the self-test failed: {result.error[:300]}", ""
    if result.model != model:
        return f"{name}: the self-test measured a {result.model}", ""
    if memory_mib < MIN_MEMORY_FRACTION * spec.memory_gib * 1024:
        return (
            f"{name}: {memory_mib / 1024:.0f} GiB of memory, the catalog's {model} has "
            f"{spec.memory_gib} GB",
            "",
        )
    words = []
    for key, expected, unit in (
        ("matmul_tflops", spec.matmul_tflops, "TFLOPS"),
        ("mem_bandwidth_gbs", spec.mem_bandwidth_gbs, "GB/s"),
    ):
        got = result.figures.get(key)
        if got is None:
            return f"{name}: the self-test sent no {key}", ""
        share = got / expected
        words.append(f"{got:.0f} {unit} ({share:.0%} of {expected:g})")
        if not MIN_FRACTION <= share <= MAX_FRACTION:
            return (
                f"{name}: {got:.0f} {unit} measured, {share:.0%} of the {model}'s {expected:g} "
                f"(accepted: {MIN_FRACTION:.0%} to {MAX_FRACTION:.0%})",
                "",
            )
    return None, f"{name}: " + ", ".join(words)


def _cpu_problem(result: SelfTestResult | None, declared: float) -> tuple[str | None, str]:
    if result is None:
        return "CPU: no self-test result", ""
    if result.error:
        return f"CPU: the self-test failed: {result.error[:300]}", ""
    cores = result.figures.get("cores")
    bandwidth = result.figures.get("mem_bandwidth_gbs")
    if cores is None or bandwidth is None:
        return "CPU: the self-test sent no cores or mem_bandwidth_gbs", ""
    if cores < MIN_CORE_FRACTION * declared:
        return (
            f"CPU: {cores:.1f} cores measured in parallel of {declared:g} declared (accepted: "
            f"{MIN_CORE_FRACTION:.0%}; is the machine oversubscribed?)",
            "",
        )
    if cores > max(1, round(declared)) + 0.01:
        # The self-test runs one worker per declared core: it cannot measure more.
        return (
            f"CPU: {cores:g} cores measured of {declared:g} declared: more than the test "
            "can measure; the self-test's figures are not believable",
            "",
        )
    if bandwidth < MIN_CPU_BANDWIDTH_GBS:
        return f"CPU: memory copies at {bandwidth:.2f} GB/s", ""
    if bandwidth > MAX_CPU_BANDWIDTH_GBS:
        return (
            f"CPU: memory copies at {bandwidth:,.0f} GB/s, more than any machine's memory "
            f"(accepted: up to {MAX_CPU_BANDWIDTH_GBS:,} GB/s); the figures are not believable",
            "",
        )
    return None, f"CPU: {cores:.1f} of {declared:g} cores, {bandwidth:.1f} GB/s"


def verify(inventory: Inventory, results: list[SelfTestResult], now_ms: int) -> HostVerification:
    """The verdict on a host's self-test ``results`` for its ``inventory``."""
    if any(g.fake for g in inventory.gpus) or any(r.fake for r in results):
        return HostVerification(
            verified=False,
            reason="declared fake GPUs are never verified",
            checked_ms=now_ms,
            results=results,
        )
    if not results:
        return HostVerification(
            verified=False,
            reason="no self-test results (an agent older than the self-test?)",
            checked_ms=now_ms,
            results=results,
        )
    by_index = {r.device_index: r for r in results if r.kind == "gpu"}
    problems: list[str] = []
    measured: list[str] = []
    for g in inventory.gpus:
        problem, words = _gpu_problem(by_index.get(g.index), g.model, g.memory_mib, g.index)
        problems += [problem] if problem else []
        measured += [words] if words else []
    cpu = next((r for r in results if r.kind == "cpu"), None)
    problem, words = _cpu_problem(cpu, inventory.cpu_cores)
    problems += [problem] if problem else []
    measured += [words] if words else []
    if problems:
        return HostVerification(
            verified=False, reason=_clip("; ".join(problems)), checked_ms=now_ms, results=results
        )
    return HostVerification(
        verified=True,
        reason=_clip("matches the catalog: " + "; ".join(measured)),
        checked_ms=now_ms,
        results=results,
    )


def _clip(reason: str, limit: int = 4000) -> str:
    return reason if len(reason) <= limit else reason[: limit - 1] + "…"
