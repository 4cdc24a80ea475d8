"""OCI images: a cold pull (MB/s from a registry on loopback) against a warm cache start.

A real registry (Debian's ``docker-registry``) on loopback holds a Python image assembled from
this machine's system ``python3.X`` (its standard library and shared libraries, ~50 MB), pushed
twice: with uncompressed layers and with gzip layers. For each, through the agent's OCI
cache (:class:`crucible.agent.oci.OciImages`):

* **cold pull**: an empty cache: manifest, config and every layer downloaded, each verified
  by sha256, unpacked, the rootfs assembled and committed; MB downloaded, seconds, MB/s;
* **shared base**: a second image on the same base layers plus one small layer (only that
  layer is fetched);
* **warm, by tag**: the image already cached, prepared again by tag (one manifest request to
  the registry), p50/p99 over ``--repeat`` runs;
* **warm, by digest**: pinned by digest: no request at all, p50/p99.

:func:`measure_pulls` is the reusable part (``bench_pods.py`` can call it with its own
image). Prints a table and writes ``benchmarks/results/bench_images.json``::

    .venv/bin/python benchmarks/bench_images.py
    .venv/bin/python benchmarks/bench_images.py --repeat 200
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))

from _exchange import machine_info, print_table  # noqa: E402

from crucible.agent.oci import OciImages, RegistryConfig  # noqa: E402
from oci_testlib import (  # noqa: E402
    Entry,
    Registry,
    layer,
    push_image,
    python_rootfs_layers,
    run_registry,
)

RESULTS = REPO / "benchmarks" / "results"
_MIB = 1 << 20


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure_pulls(
    reg: Registry, ref: str, shared_ref: str | None, cache_dir: Path, repeat: int
) -> dict[str, Any]:
    """Cold pull of ``ref`` into an empty ``cache_dir``, then ``shared_ref`` (same base
    layers), then ``repeat`` warm prepares by tag and by digest."""
    images = OciImages(cache_dir, registries=RegistryConfig(insecure=frozenset({reg.host})))
    t0 = time.perf_counter()
    img = images.prepare(ref)
    cold_s = time.perf_counter() - t0
    cold_bytes = images.bytes_downloaded
    out: dict[str, Any] = {
        "ref": ref,
        "cold_s": cold_s,
        "cold_mib": cold_bytes / _MIB,
        "cold_mib_per_s": cold_bytes / _MIB / cold_s,
        "unpacked_mib": img.size_bytes / _MIB,
    }
    if shared_ref is not None:
        before = images.bytes_downloaded
        t0 = time.perf_counter()
        images.prepare(shared_ref)
        out["shared_s"] = time.perf_counter() - t0
        out["shared_mib"] = (images.bytes_downloaded - before) / _MIB
    for name, target in (("tag", ref), ("digest", f"{ref.rsplit(':', 1)[0]}@{img.digest}")):
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            images.prepare(target)
            times.append((time.perf_counter() - t0) * 1000)
        out[f"warm_{name}_p50_ms"] = statistics.median(times)
        out[f"warm_{name}_p99_ms"] = _pct(times, 0.99)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_images.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-images-") as tmp:
        root = Path(tmp)
        with run_registry(root / "registry") as reg:
            site = sysconfig.get_paths()["platlib"]
            raw = python_rootfs_layers([site])
            gz = [layer_gz(data) for data in raw]
            extra = layer([Entry("app/main.py", b"print('hi')\n")])
            push_image(reg, "bench/python", "raw", raw)
            push_image(reg, "bench/python-app", "raw", [*raw, extra])
            push_image(reg, "bench/python", "gzip", gz)
            push_image(reg, "bench/python-app", "gzip", [*gz, extra])
            runs = {
                kind: measure_pulls(
                    reg,
                    f"{reg.host}/bench/python:{kind}",
                    f"{reg.host}/bench/python-app:{kind}",
                    root / f"cache-{kind}",
                    args.repeat,
                )
                for kind in ("raw", "gzip")
            }
    rows = []
    for kind, r in runs.items():
        rows.append(
            [
                f"{kind} layers",
                f"{r['cold_mib']:.1f}",
                f"{r['unpacked_mib']:.1f}",
                f"{r['cold_s']:.2f}",
                f"{r['cold_mib_per_s']:.1f}",
                f"{r['shared_mib'] * 1024:.1f} / {r['shared_s'] * 1000:.0f}",
                f"{r['warm_tag_p50_ms']:.2f} / {r['warm_tag_p99_ms']:.2f}",
                f"{r['warm_digest_p50_ms']:.3f} / {r['warm_digest_p99_ms']:.3f}",
            ]
        )
    print_table(
        "OCI image: cold pull from a loopback registry vs a warm cache start",
        [
            "image",
            "MiB pulled",
            "MiB unpacked",
            "cold s",
            "cold MiB/s",
            "shared base: KiB / ms",
            "warm by tag p50/p99 ms",
            "warm by digest p50/p99 ms",
        ],
        rows,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"machine": machine_info(), "repeat": args.repeat, "runs": runs}, indent=2)
        + "\n"
    )
    print(f"\nwrote {args.out}")


def layer_gz(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data, compresslevel=6, mtime=0)


if __name__ == "__main__":
    main()
