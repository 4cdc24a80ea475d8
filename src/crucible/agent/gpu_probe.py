"""The GPU half of the host self-test, run as a script in its own process (so a CUDA context,
its memory and any crash stay out of the agent): ``python gpu_probe.py`` with
``CUDA_VISIBLE_DEVICES`` set to the one device to measure. It prints one JSON object:
``{"matmul_tflops": ..., "mem_bandwidth_gbs": ..., "backend": ...}`` or ``{"error": ...}``.

Measured through the real CUDA path: ``torch.cuda`` when torch is importable, else
``libcudart`` and ``libcublas`` through ctypes (found on the library path or in the NVIDIA
pip wheels already installed). It never downloads anything. This file imports nothing of
crucible, so it starts fast and runs under any Python that has one of the two backends.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib
import json
import os
import sys
import time
from typing import Any

N = 8192  # matmul size: 1.1 TFLOP per product, ~1-10 ms on data-center GPUs
MATMUL_ITERS = 20
COPY_BYTES = 1 << 30  # 1 GiB each way
COPY_ITERS = 10


def _torch() -> dict[str, Any]:
    torch: Any = importlib.import_module("torch")  # optional: absent on most hosts

    if not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA device")
    dev = torch.device("cuda:0")
    a = torch.randn(N, N, device=dev, dtype=torch.float16)
    b = torch.randn(N, N, device=dev, dtype=torch.float16)
    for _ in range(3):
        torch.matmul(a, b)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(MATMUL_ITERS):
        torch.matmul(a, b)
    torch.cuda.synchronize()
    matmul_s = time.perf_counter() - t0
    del a, b
    x = torch.empty(COPY_BYTES // 2, device=dev, dtype=torch.float16)
    y = torch.empty_like(x)
    y.copy_(x)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(COPY_ITERS):
        y.copy_(x)
    torch.cuda.synchronize()
    copy_s = time.perf_counter() - t0
    return {
        "matmul_tflops": 2 * N**3 * MATMUL_ITERS / matmul_s / 1e12,
        # A device-to-device copy reads and writes every byte.
        "mem_bandwidth_gbs": 2 * COPY_BYTES * COPY_ITERS / copy_s / 1e9,
        "backend": "torch",
    }


def _load(names: list[str], wheel: str) -> ctypes.CDLL:
    """A CUDA library by its sonames (the dynamic loader's search path), else from an
    installed NVIDIA pip wheel (``nvidia/<wheel>/lib`` on ``sys.path``)."""
    stem = names[0]  # e.g. libcudart.so
    candidates = list(names)
    found = ctypes.util.find_library(stem.removeprefix("lib").removesuffix(".so"))
    if found:
        candidates.insert(0, found)
    for entry in sys.path:
        lib_dir = os.path.join(entry or ".", "nvidia", wheel, "lib")
        if os.path.isdir(lib_dir):
            candidates += [
                os.path.join(lib_dir, f) for f in sorted(os.listdir(lib_dir)) if f.startswith(stem)
            ]
    for name in candidates:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise ImportError(f"no {stem} on this machine (looked for {', '.join(names)})")


def _check(what: str, code: int) -> None:
    if code != 0:
        raise RuntimeError(f"{what} failed with code {code}")


def _cublas() -> dict[str, Any]:
    cudart = _load(["libcudart.so", "libcudart.so.12", "libcudart.so.11.0"], "cuda_runtime")
    cublas = _load(["libcublas.so", "libcublas.so.12", "libcublas.so.11"], "cublas")
    _check("cudaSetDevice", cudart.cudaSetDevice(0))
    ptrs = []

    def alloc(size: int) -> ctypes.c_void_p:
        p = ctypes.c_void_p()
        _check("cudaMalloc", cudart.cudaMalloc(ctypes.byref(p), ctypes.c_size_t(size)))
        _check("cudaMemset", cudart.cudaMemset(p, 0, ctypes.c_size_t(size)))
        ptrs.append(p)
        return p

    try:
        a, b, c = (alloc(N * N * 2) for _ in range(3))
        handle = ctypes.c_void_p()
        _check("cublasCreate", cublas.cublasCreate_v2(ctypes.byref(handle)))
        alpha, beta = ctypes.c_float(1.0), ctypes.c_float(0.0)
        cuda_r_16f, compute_32f, default_tensor_op = 2, 68, 99

        def gemm() -> None:
            _check(
                "cublasGemmEx",
                cublas.cublasGemmEx(
                    handle, 0, 0, N, N, N, ctypes.byref(alpha),
                    a, cuda_r_16f, N, b, cuda_r_16f, N, ctypes.byref(beta),
                    c, cuda_r_16f, N, compute_32f, default_tensor_op,
                ),
            )  # fmt: skip

        for _ in range(3):
            gemm()
        _check("cudaDeviceSynchronize", cudart.cudaDeviceSynchronize())
        t0 = time.perf_counter()
        for _ in range(MATMUL_ITERS):
            gemm()
        _check("cudaDeviceSynchronize", cudart.cudaDeviceSynchronize())
        matmul_s = time.perf_counter() - t0
        cublas.cublasDestroy_v2(handle)
        src, dst = alloc(COPY_BYTES), alloc(COPY_BYTES)
        device_to_device = 3
        size = ctypes.c_size_t(COPY_BYTES)
        _check("cudaMemcpy", cudart.cudaMemcpy(dst, src, size, device_to_device))
        _check("cudaDeviceSynchronize", cudart.cudaDeviceSynchronize())
        t0 = time.perf_counter()
        for _ in range(COPY_ITERS):
            _check("cudaMemcpy", cudart.cudaMemcpy(dst, src, size, device_to_device))
        _check("cudaDeviceSynchronize", cudart.cudaDeviceSynchronize())
        copy_s = time.perf_counter() - t0
    finally:
        for p in ptrs:
            cudart.cudaFree(p)
    return {
        "matmul_tflops": 2 * N**3 * MATMUL_ITERS / matmul_s / 1e12,
        "mem_bandwidth_gbs": 2 * COPY_BYTES * COPY_ITERS / copy_s / 1e9,
        "backend": "cublas",
    }


def measure() -> dict[str, Any]:
    """The figures of the one visible device, by the first backend that works."""
    errors = []
    for backend in (_torch, _cublas):
        try:
            return backend()
        except ImportError as exc:
            errors.append(f"{backend.__name__[1:]}: {exc}")
        except Exception as exc:  # a backend that is present but fails: try the next
            errors.append(f"{backend.__name__[1:]}: {type(exc).__name__}: {exc}")
    return {"error": "no CUDA path worked (" + "; ".join(errors) + ")"}


if __name__ == "__main__":
    sys.stdout.write(json.dumps(measure()) + "\n")
