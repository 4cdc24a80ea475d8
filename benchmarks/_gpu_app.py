"""The functions gpu_check.py runs through a real exchange on a GPU host: one asks for a GPU
(the model gpu_check.py names, default ``H200``) and reports what CUDA sees there and how fast
a matrix product runs; one asks for none and reports that CUDA sees nothing. Containers import
this module, so it imports nothing at module level but crucible and the standard library."""

from __future__ import annotations

import os
import time
from typing import Any

import crucible

app = crucible.App("gpu-check")

GPU = os.environ.get("CRUCIBLE_GPU_CHECK_MODEL", "H200")


def _visibility() -> dict[str, Any]:
    return {
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "NVIDIA_VISIBLE_DEVICES": os.environ.get("NVIDIA_VISIBLE_DEVICES"),
        "CUDA_DEVICE_ORDER": os.environ.get("CUDA_DEVICE_ORDER"),
    }


@app.function(gpu=GPU, timeout=300)
def on_gpu(n: int = 8192) -> dict[str, Any]:
    """The device this container got, and an ``n``x``n``x``n`` bf16 matmul's throughput on it
    (ten timed products after three warm-ups, CUDA events)."""
    import torch

    out: dict[str, Any] = _visibility()
    out["cuda_available"] = torch.cuda.is_available()
    out["device_count"] = torch.cuda.device_count()
    if not out["cuda_available"]:
        return out
    out["device_name"] = torch.cuda.get_device_name(0)
    out["device_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        c = a @ b
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        c = a @ b
    end.record()
    torch.cuda.synchronize()
    ms = start.elapsed_time(end) / 10
    out["matmul_n"] = n
    out["matmul_ms"] = round(ms, 3)
    out["matmul_tflops"] = round(2 * n**3 / (ms / 1000) / 1e12, 1)
    # the product is right, not just fast: one row against a float32 reference
    ref = a[:1].float() @ b.float()
    out["matmul_max_rel_err"] = float((c[:1].float() - ref).abs().max() / ref.abs().max())
    out["t"] = time.time()
    return out


@app.function(timeout=120)
def without_gpu() -> dict[str, Any]:
    """A container that asked for no GPU: CUDA must see none."""
    import torch

    out: dict[str, Any] = _visibility()
    out["cuda_available"] = torch.cuda.is_available()
    out["device_count"] = torch.cuda.device_count()
    return out
