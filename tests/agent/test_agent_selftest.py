"""The agent's self-test: the CPU check for real, the GPU probe through its real process and
backend selection with only CUDA faked at the edge (a stand-in ``torch`` module on the
probe's path, timed like an H100), fake GPUs marked fake; and the figures the server then
verifies."""

from __future__ import annotations

from pathlib import Path

import pytest

from crucible.agent import gpu_probe
from crucible.agent.selftest import cpu_self_test, gpu_self_test, run_self_test
from crucible.protocol.hosts import DeviceInfo, Inventory
from crucible.server.verification import verify

# A stand-in for torch's CUDA path: each FP16 8192^3 matmul takes as long as on a card doing
# 700 TFLOPS, each 1 GiB device copy as long as at 2,800 GB/s.
FAKE_TORCH = """
import time
float16 = "float16"
class _T:
    def __init__(self, n): self.n = n
    def copy_(self, other): time.sleep(2 * 2 * self.n / 2800e9)
class cuda:
    @staticmethod
    def is_available(): return True
    @staticmethod
    def synchronize(): pass
def device(name): return name
def randn(*shape, device=None, dtype=None): return _T(shape[0] * shape[1])
def matmul(a, b): time.sleep(2 * 8192**3 / 700e12)
def empty(n, device=None, dtype=None): return _T(n)
def empty_like(x): return _T(x.n)
"""

H100 = DeviceInfo(index=0, model="H100", memory_mib=81559, uuid="GPU-1234")


@pytest.fixture
def fake_cuda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text(FAKE_TORCH)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))


def test_the_gpu_probe_measures_through_the_cuda_backend(fake_cuda: None) -> None:
    result = gpu_self_test(H100)
    assert result.error is None and not result.fake
    assert (result.kind, result.device_index, result.model) == ("gpu", 0, "H100")
    # Timing under load only adds time: the figures are at most what the stand-in allows.
    assert 100 < result.figures["matmul_tflops"] <= 710
    assert 300 < result.figures["mem_bandwidth_gbs"] <= 2900
    assert result.figures["memory_gib"] == pytest.approx(79.65, abs=0.01)


def test_without_any_cuda_path_the_result_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_probe, "_load", _no_library)
    data = gpu_probe.measure()
    assert "torch" in data["error"] and "libcudart" in data["error"]
    result = gpu_self_test(H100.model_copy(update={"uuid": "GPU-none"}), timeout_s=60)
    assert result.error is not None and "no CUDA path worked" in result.error
    assert not verify(_inventory([H100]), [result], 0).verified


def _no_library(names: list[str], wheel: str) -> object:
    raise ImportError(f"no {names[0]} on this machine")


def _inventory(gpus: list[DeviceInfo]) -> Inventory:
    return Inventory(cpu_cores=1, memory_mib=4096, disk_mib=0, gpus=gpus)


def test_fake_gpus_are_marked_fake_and_cpus_are_measured() -> None:
    fake = H100.model_copy(update={"fake": True, "uuid": "GPU-fake-h-0"})
    results = run_self_test(_inventory([fake]))
    assert [(r.kind, r.fake) for r in results] == [("gpu", True), ("cpu", False)]
    cpu = results[1]
    assert cpu.error is None
    assert 0 < cpu.figures["cores"] <= 1 and cpu.figures["declared_cores"] == 1
    assert cpu.figures["mem_bandwidth_gbs"] > 0
    assert cpu_self_test(2).figures["cores"] <= 2  # never more than the cores it spun
    v = verify(_inventory([fake]), results, 0)
    assert not v.verified and "fake" in v.reason
