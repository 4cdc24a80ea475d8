"""The host self-test: short measurements the server compares with the GPU catalog to mark a
host verified (server/verification.py). Run at registration and every
``CRUCIBLE_SELF_TEST_INTERVAL_S``.

- **GPUs**: each real device is measured in its own short-lived process
  (:mod:`crucible.agent.gpu_probe`, run as a script with ``CUDA_VISIBLE_DEVICES`` set to
  it): an FP16 matmul's throughput and a device-to-device copy's memory bandwidth, through
  ``torch.cuda`` when torch is importable, else ``libcudart``/``libcublas`` via ctypes.
  Model and memory are the inventory's, read from NVML. Nothing is downloaded.
- **Declared fake GPUs** produce results marked ``fake`` (never verified).
- **CPUs**: a busy loop on every core at once, against one core alone (how many cores
  really run in parallel), and memory copies (bandwidth).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from crucible.protocol.hosts import DeviceInfo, Inventory, SelfTestResult

__all__ = ["cpu_self_test", "gpu_self_test", "run_self_test"]

PROBE = Path(__file__).with_name("gpu_probe.py")
GPU_TIMEOUT_S = 120.0
# Each spinner waits for a common start, so every spin window overlaps however long the
# interpreters take to start.
_SPIN = """
import sys, time
start, end = float(sys.argv[1]), float(sys.argv[2])
while time.time() < start:
    pass
n = 0
while time.time() < end:
    for _ in range(1000):
        n += 1
print(n)
"""
_COPY_BYTES = 64 << 20
_COPY_ITERS = 6


def _spin(workers: int, spin_s: float, lead_s: float) -> list[int]:
    start = time.time() + lead_s
    argv = [sys.executable, "-I", "-S", "-c", _SPIN, repr(start), repr(start + spin_s)]
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        for _ in range(workers)
    ]
    counts = []
    for p in procs:
        out, _ = p.communicate(timeout=lead_s + spin_s + 60)
        counts.append(int(out.strip() or 0))
    return counts


def _copy_bandwidth_gbs() -> float:
    src = bytearray(os.urandom(1 << 20)) * (_COPY_BYTES >> 20)
    dst = bytearray(_COPY_BYTES)
    view = memoryview(dst)
    view[:] = src  # touch every page first
    t0 = time.perf_counter()
    for _ in range(_COPY_ITERS):
        view[:] = src
    elapsed = time.perf_counter() - t0
    return 2 * _COPY_BYTES * _COPY_ITERS / elapsed / 1e9  # bytes read + written


def cpu_self_test(cores: float, spin_s: float = 0.1) -> SelfTestResult:
    """How many of ``cores`` run in parallel (a busy loop on each at once, against one
    alone), and the memory copy bandwidth."""
    t0 = time.monotonic()
    try:
        workers = max(1, round(cores))
        [single] = _spin(1, spin_s, 0.1)
        together = _spin(workers, spin_s, 0.1 + 0.01 * workers)
        effective = sum(together) / single if single else 0.0
        figures = {
            "cores": round(min(effective, float(workers)), 2),
            "declared_cores": float(cores),
            "mem_bandwidth_gbs": round(_copy_bandwidth_gbs(), 2),
        }
        error = None
    except Exception as exc:  # the test reports, it never takes the agent down
        figures, error = {}, f"{type(exc).__name__}: {exc}"
    return SelfTestResult(
        kind="cpu",
        model="cpu",
        figures=figures,
        measured_ms=int((time.monotonic() - t0) * 1000),
        error=error,
    )


def gpu_self_test(device: DeviceInfo, timeout_s: float = GPU_TIMEOUT_S) -> SelfTestResult:
    """Measure one GPU in a probe process that sees only it."""
    t0 = time.monotonic()
    if device.fake:
        return SelfTestResult(
            kind="gpu", device_index=device.index, model=device.model, fake=True, measured_ms=0
        )
    env = dict(os.environ, CUDA_DEVICE_ORDER="PCI_BUS_ID", CUDA_VISIBLE_DEVICES=device.uuid)
    figures: dict[str, float] = {"memory_gib": round(device.memory_mib / 1024, 2)}
    error: str | None = None
    try:
        out = subprocess.run(
            [sys.executable, str(PROBE)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            stdin=subprocess.DEVNULL,
        )
        lines = out.stdout.strip().splitlines()
        data = json.loads(lines[-1]) if lines else {"error": out.stderr.strip()[-500:]}
        if "error" in data:
            error = str(data["error"])
        else:
            figures["matmul_tflops"] = round(float(data["matmul_tflops"]), 1)
            figures["mem_bandwidth_gbs"] = round(float(data["mem_bandwidth_gbs"]), 1)
    except subprocess.TimeoutExpired:
        error = f"the GPU probe took over {timeout_s:g} s"
    except (OSError, ValueError, KeyError) as exc:
        error = f"the GPU probe failed: {type(exc).__name__}: {exc}"
    return SelfTestResult(
        kind="gpu",
        device_index=device.index,
        model=device.model,
        figures=figures,
        measured_ms=int((time.monotonic() - t0) * 1000),
        error=error[:2000] if error else None,
    )


def run_self_test(inventory: Inventory) -> list[SelfTestResult]:
    """The whole self-test: every GPU at once (each probe process has its own device; an
    8-GPU host takes about as long as one GPU), then the CPUs (alone, so the probes do not
    take cores from the busy loops)."""
    with ThreadPoolExecutor(max_workers=max(1, len(inventory.gpus))) as pool:
        results = list(pool.map(gpu_self_test, inventory.gpus))
    results.append(cpu_self_test(inventory.cpu_cores))
    return results
