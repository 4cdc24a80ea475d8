"""Functions bench_volumes.py runs in sandboxed containers: read a mounted volume's file."""

from __future__ import annotations

import time
from pathlib import Path

import crucible

app = crucible.App("bench-volumes")
data = crucible.Volume.from_name("bench-data")


def _read(path: str) -> dict[str, float]:
    t0 = time.perf_counter()
    n = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            n += len(block)
    return {"bytes": float(n), "read_s": time.perf_counter() - t0}


@app.function(volumes={"/data": data}, cpu=0.5)
def read_first() -> dict[str, float]:
    return _read("/data/blob.bin")


@app.function(volumes={"/data": data}, cpu=0.5)
def read_second() -> dict[str, float]:
    return _read("/data/blob.bin")


@app.function(volumes={"/data": data}, cpu=0.5)
def listing() -> int:
    return sum(1 for _ in Path("/data").rglob("*"))
