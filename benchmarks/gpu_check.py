"""Crucible's real GPU paths on a machine with an NVIDIA GPU, in one run: what the agent's
inventory reads through NVML, the host self-test against the catalog (the server's pure
verdict), and an exchange (``crucible server`` + ``crucible agent`` subprocesses on loopback,
the ``process`` runtime) running a function that asks for the GPU and one that asks for none.

It checks, and exits 1 naming each failed check:

- NVML lists at least one GPU and its name maps onto the catalog model ``--model``;
- the self-test's matmul and bandwidth figures verify the host (server/verification.py);
- the host registers with that model, and ``@app.function(gpu=MODEL)`` runs there, sees one
  device (CUDA_VISIBLE_DEVICES is the assigned index), gets that model from
  ``torch.cuda.get_device_name`` and multiplies correctly;
- a function that asked for no GPU sees none (CUDA_VISIBLE_DEVICES is empty).

Writes ``benchmarks/results/gpu_check_<model>.json`` (``--out`` elsewhere)::

    .venv/bin/python benchmarks/gpu_check.py --model H200

On a machine without a GPU the inventory check fails first and says so.
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
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(BENCH))

from _exchange import Exchange, machine_info, write_results  # noqa: E402

from crucible.agent.inventory import detect_inventory  # noqa: E402
from crucible.agent.selftest import run_self_test  # noqa: E402
from crucible.protocol.gpus import GPU_CATALOG, model_from_nvml_name  # noqa: E402


def nvml_names() -> list[str]:
    """NVML's raw device names (what the catalog's aliases must match)."""
    import pynvml

    pynvml.nvmlInit()
    try:
        names = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
            names.append(name.decode() if isinstance(name, bytes) else name)
        return names
    finally:
        pynvml.nvmlShutdown()


def check_inventory(model: str, report: dict[str, Any], failures: list[str]) -> Any:
    names = nvml_names()
    inventory = detect_inventory(
        fake_gpus=None,
        allow_fake=False,
        disk_path=Path(tempfile.gettempdir()),
        host_name="gpu-check",
    )
    report["inventory"] = {
        "nvml_names": names,
        "catalog_models": [model_from_nvml_name(n) for n in names],
        "cpu_cores": inventory.cpu_cores,
        "memory_mib": inventory.memory_mib,
        "gpus": [d.model_dump() for d in inventory.gpus],
    }
    print(json.dumps(report["inventory"], indent=2))
    if not inventory.gpus:
        failures.append("inventory: NVML reported no GPU")
    elif any(d.model != model for d in inventory.gpus):
        failures.append(
            f"inventory: devices {[d.model for d in inventory.gpus]} are not catalog model "
            f"{model!r} (NVML names {names})"
        )
    return inventory


def check_self_test(inventory: Any, report: dict[str, Any], failures: list[str]) -> None:
    from crucible.server.verification import verify

    t0 = time.monotonic()
    results = run_self_test(inventory)
    verdict = verify(inventory, results, int(time.time() * 1000))
    report["self_test"] = {
        "seconds": round(time.monotonic() - t0, 1),
        "results": [r.model_dump() for r in results],
        "verified": verdict.verified,
        "reason": verdict.reason,
        "catalog": {
            m.name: {
                "matmul_tflops": m.matmul_tflops,
                "mem_bandwidth_gbs": m.mem_bandwidth_gbs,
                "memory_gib": m.memory_gib,
            }
            for m in {GPU_CATALOG[d.model] for d in inventory.gpus if d.model in GPU_CATALOG}
        },
    }
    print(json.dumps(report["self_test"], indent=2))
    if not verdict.verified:
        failures.append(f"self-test: host not verified: {verdict.reason}")


def check_exchange(
    model: str, report: dict[str, Any], failures: list[str], fake_gpus: str | None = None
) -> None:
    import _gpu_app

    env = {"CRUCIBLE_RUNTIME": "process"}
    with Exchange(env=env, fake_gpus=fake_gpus) as ex:
        client = ex.client()
        try:
            hosts = client.transport.get("/v1/hosts")
            report["hosts"] = hosts
            print(json.dumps(hosts, indent=2, default=str)[:4000])
            t0 = time.monotonic()
            with _gpu_app.app.run(client=client):
                on_gpu = _gpu_app.on_gpu.remote()
                report["first_gpu_call_s"] = round(time.monotonic() - t0, 2)
                without = _gpu_app.without_gpu.remote()
        finally:
            client.close()
    report["on_gpu"], report["without_gpu"] = on_gpu, without
    print(json.dumps({"on_gpu": on_gpu, "without_gpu": without}, indent=2))
    registered = [g.get("model") for h in hosts for g in (h.get("inventory") or {}).get("gpus", [])]
    if model not in registered:
        failures.append(f"exchange: the host registered GPUs {registered}, not {model!r}")
    if not on_gpu.get("cuda_available") or on_gpu.get("device_count") != 1:
        failures.append(f"gpu function: CUDA saw {on_gpu.get('device_count')} devices, not 1")
    elif model not in str(on_gpu.get("device_name", "")):
        failures.append(f"gpu function: got {on_gpu.get('device_name')!r}, not a {model}")
    if on_gpu.get("CUDA_VISIBLE_DEVICES") in (None, ""):
        failures.append("gpu function: CUDA_VISIBLE_DEVICES was not set to the assigned device")
    if on_gpu.get("cuda_available") and on_gpu.get("matmul_max_rel_err", 1.0) > 0.05:
        failures.append(f"gpu function: matmul error {on_gpu.get('matmul_max_rel_err')}")
    if without.get("CUDA_VISIBLE_DEVICES") != "" or without.get("device_count") != 0:
        failures.append(
            f"cpu function: CUDA_VISIBLE_DEVICES={without.get('CUDA_VISIBLE_DEVICES')!r}, "
            f"{without.get('device_count')} devices visible (want '' and 0)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="H200", help="the catalog model the GPU must be")
    ap.add_argument("--out", default="", help="write the JSON here instead of benchmarks/results")
    ap.add_argument("--skip-exchange", action="store_true", help="inventory and self-test only")
    ap.add_argument(
        "--fake-gpus",
        default=None,
        help="the exchange's agent declares these (e.g. 1xH200): a dry run of the plumbing on a "
        "machine without a GPU (the GPU checks then fail, as they should)",
    )
    args = ap.parse_args()
    os.environ["CRUCIBLE_GPU_CHECK_MODEL"] = args.model
    report: dict[str, Any] = {"benchmark": "gpu_check", "model": args.model}
    failures: list[str] = []
    steps = [("inventory", lambda: check_inventory(args.model, report, failures))]
    inventory = None
    for name, step in steps:
        try:
            inventory = step()
        except Exception as exc:  # a check that breaks is a failed check, reported
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
    if inventory is not None and inventory.gpus:
        try:
            check_self_test(inventory, report, failures)
        except Exception as exc:
            failures.append(f"self-test: {type(exc).__name__}: {exc}")
    if not args.skip_exchange:
        try:
            check_exchange(args.model, report, failures, args.fake_gpus)
        except Exception as exc:
            failures.append(f"exchange: {type(exc).__name__}: {exc}")
    report["failures"] = failures
    report["machine"] = machine_info()
    if args.out:
        path = Path(args.out)
        path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    else:
        path = write_results(f"gpu_check_{args.model.lower()}", report)
    print(f"\nwrote {path}")
    for f in failures:
        print(f"FAILED {f}")
    print("OK" if not failures else f"{len(failures)} check(s) failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
