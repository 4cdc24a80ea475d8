"""Volumes: read throughput and commit latency, side by side with the local disk.

One exchange (server and a sandboxed ``bwrap`` agent) on loopback, one run:

* **write**: a file of ``--mib`` MiB uploaded and committed from the client
  (``batch_upload``), against writing the same bytes to the local disk (fsync'd);
* **read, cold**: the same file read back through the exchange (``vol.read_file``, chunk by
  chunk), and a container that mounts the volume starting for the first time on the host
  (its mount directory is filled from the blob store: the call's wall time, and the read of
  the file inside once it is there);
* **read, warm**: a second function's container in the same sandbox (the files are there
  already: nothing is fetched), then the in-container read of the file;
* **local disk**: the same file read from this machine's disk (after dropping it from the
  page cache where that is allowed, else warm);
* **commit latency**: one small file, and 1,000 small files, in one commit each.

Prints a table and writes ``benchmarks/results/bench_volumes.json``::

    .venv/bin/python benchmarks/bench_volumes.py            # 64 MiB
    .venv/bin/python benchmarks/bench_volumes.py --mib 256
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

import _bench_volumes_app as vapp  # noqa: E402
from _exchange import Exchange, machine_info, print_table  # noqa: E402

import crucible  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def _mbps(nbytes: float, seconds: float) -> float:
    return nbytes / (1 << 20) / seconds if seconds > 0 else float("inf")


def _drop_cache(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        return True
    except (OSError, AttributeError):
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_volumes.json")
    args = ap.parse_args()
    size = args.mib << 20
    work = Path(tempfile.mkdtemp(prefix="crucible-bench-vol-"))
    blob = work / "blob.bin"
    payload = os.urandom(size)
    t0 = time.perf_counter()
    with open(blob, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    local_write_s = time.perf_counter() - t0
    dropped = _drop_cache(blob)
    t0 = time.perf_counter()
    with open(blob, "rb") as f:
        while f.read(1 << 20):
            pass
    local_read_s = time.perf_counter() - t0

    rows: list[tuple[str, str, str]] = []
    out: dict[str, Any] = {"mib": args.mib, "local_page_cache_dropped": dropped}
    with Exchange(env={"CRUCIBLE_RUNTIME": "bwrap", "CRUCIBLE_SCALEDOWN_WINDOW_S": "30"}) as ex:
        client = ex.client()
        vol = crucible.Volume.from_name("bench-data", create_if_missing=True, client=client)
        t0 = time.perf_counter()
        with vol.batch_upload() as up:
            up.put_file(blob, "blob.bin")
        upload_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        n = sum(len(c) for c in vol.read_file("blob.bin"))
        client_read_s = time.perf_counter() - t0
        assert n == size
        runtime = ((ex.host("bench-host") or {}).get("isolation") or {}).get("runtime", "?")
        cold: dict[str, float] = {}
        warm: dict[str, float] = {}
        if runtime == "bwrap":
            with vapp.app.run(client=client):
                t0 = time.perf_counter()
                cold = vapp.read_first.remote()
                cold["call_s"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                warm = vapp.read_second.remote()
                warm["call_s"] = time.perf_counter() - t0
        # Commit latency: 1 file, then 1,000 files.
        small = work / "small"
        small.mkdir()
        for i in range(1000):
            (small / f"f{i:04d}.txt").write_text(f"file {i}\n")
        t0 = time.perf_counter()
        with vol.batch_upload() as up:
            up.put_file(small / "f0000.txt", "one/f0000.txt")
        commit_1_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        with vol.batch_upload() as up:
            up.put_directory(small, "many")
        commit_1000_s = time.perf_counter() - t0
        client.close()

    out.update(
        {
            "runtime": runtime,
            "local_write_mbps": _mbps(size, local_write_s),
            "local_read_mbps": _mbps(size, local_read_s),
            "volume_upload_commit_mbps": _mbps(size, upload_s),
            "volume_client_read_mbps": _mbps(size, client_read_s),
            "cold_mount_call_s": cold.get("call_s"),
            "cold_in_container_read_mbps": _mbps(size, cold["read_s"]) if cold else None,
            "warm_mount_call_s": warm.get("call_s"),
            "warm_in_container_read_mbps": _mbps(size, warm["read_s"]) if warm else None,
            "commit_1_file_ms": commit_1_s * 1000,
            "commit_1000_files_ms": commit_1000_s * 1000,
            "machine": machine_info(),
        }
    )
    rows += [
        ("write", "local disk (fsync)", f"{out['local_write_mbps']:.0f} MiB/s"),
        ("write", "volume: upload + commit", f"{out['volume_upload_commit_mbps']:.0f} MiB/s"),
        (
            "read",
            "local disk" + ("" if dropped else " (page cache)"),
            f"{out['local_read_mbps']:.0f} MiB/s",
        ),
        ("read", "volume via the exchange (client)", f"{out['volume_client_read_mbps']:.0f} MiB/s"),
    ]
    if cold:
        rows += [
            (
                "read, cold",
                "first container: call incl. mount fill",
                f"{cold['call_s'] * 1000:.0f} ms",
            ),
            (
                "read, cold",
                "in the container, once mounted",
                f"{out['cold_in_container_read_mbps']:.0f} MiB/s",
            ),
            (
                "read, warm",
                "second container, same sandbox: call",
                f"{warm['call_s'] * 1000:.0f} ms",
            ),
            ("read, warm", "in the container", f"{out['warm_in_container_read_mbps']:.0f} MiB/s"),
        ]
    rows += [
        ("commit", "1 file", f"{out['commit_1_file_ms']:.0f} ms"),
        ("commit", "1,000 files", f"{out['commit_1000_files_ms']:.0f} ms"),
    ]
    print_table(f"Volumes, a {args.mib} MiB file (runtime {runtime})", ["", "what", "figure"], rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    for p in sorted(work.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    work.rmdir()


if __name__ == "__main__":
    main()
