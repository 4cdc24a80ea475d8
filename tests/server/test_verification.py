"""Host verification as a pure function: self-test figures against the GPU catalog, with
its tolerance, for GPUs and CPUs; fake GPUs are never verified."""

from __future__ import annotations

from crucible.protocol.gpus import GPU_CATALOG
from crucible.protocol.hosts import DeviceInfo, Inventory, SelfTestResult
from crucible.server.verification import MAX_FRACTION, MIN_FRACTION, verify

NOW = 1_700_000_000_000


def inventory(*models: str, fake: bool = False, cores: float = 8) -> Inventory:
    return Inventory(
        cpu_cores=cores,
        memory_mib=65536,
        disk_mib=0,
        gpus=[
            DeviceInfo(
                index=i,
                model=m,
                memory_mib=GPU_CATALOG[m].memory_gib * 1024 - 500,  # NVML shows a bit less
                uuid=f"GPU-{i}",
                fake=fake,
            )
            for i, m in enumerate(models)
        ],
    )


def gpu(index: int, model: str, share: float = 0.7, **kw: object) -> SelfTestResult:
    spec = GPU_CATALOG[model]
    figures = {
        "matmul_tflops": spec.matmul_tflops * share,
        "mem_bandwidth_gbs": spec.mem_bandwidth_gbs * share,
    }
    return SelfTestResult(
        kind="gpu", device_index=index, model=model, figures=figures, measured_ms=900, **kw
    )


def cpu(cores: float = 7.5, bandwidth: float = 12.0) -> SelfTestResult:
    return SelfTestResult(
        kind="cpu",
        model="cpu",
        figures={"cores": cores, "mem_bandwidth_gbs": bandwidth},
        measured_ms=300,
    )


def test_every_catalog_model_has_spec_figures() -> None:
    for model in GPU_CATALOG.values():
        assert model.matmul_tflops > 0 and model.mem_bandwidth_gbs > 0, model.name


def test_figures_within_the_tolerance_verify_and_are_quoted() -> None:
    v = verify(inventory("H100", "H100"), [gpu(0, "H100"), gpu(1, "H100", 0.9), cpu()], NOW)
    assert v.verified and v.checked_ms == NOW
    assert "GPU 0 (H100): 692 TFLOPS (70% of 989)" in v.reason
    assert "CPU: 7.5 of 8 cores" in v.reason
    assert len(v.results) == 3  # the figures are kept with the verdict


def test_a_slow_or_impossible_gpu_is_not_verified_and_the_reason_names_it() -> None:
    v = verify(inventory("H100"), [gpu(0, "H100", MIN_FRACTION - 0.05), cpu()], NOW)
    assert not v.verified
    assert v.reason.startswith("GPU 0 (H100): ") and "35%" in v.reason and "TFLOPS" in v.reason
    v = verify(inventory("A100-80GB"), [gpu(0, "A100-80GB", MAX_FRACTION + 0.5), cpu()], NOW)
    assert not v.verified and "200%" in v.reason


def test_bandwidth_alone_can_fail_a_gpu() -> None:
    result = gpu(0, "L4")
    result.figures["mem_bandwidth_gbs"] = 30.0  # 10 % of 300 GB/s
    v = verify(inventory("L4"), [result, cpu()], NOW)
    assert not v.verified and "30 GB/s" in v.reason and "10%" in v.reason


def test_errors_missing_results_and_wrong_memory_are_not_verified() -> None:
    failed = gpu(0, "T4", error="CUDA driver version is insufficient")
    v = verify(inventory("T4"), [failed, cpu()], NOW)
    assert not v.verified and "the self-test failed: CUDA driver" in v.reason
    v = verify(inventory("T4", "T4"), [gpu(0, "T4"), cpu()], NOW)
    assert not v.verified and "GPU 1 (T4): no self-test result" in v.reason
    small = inventory("H200")
    small.gpus[0].memory_mib = 80 * 1024  # an H100's memory sold as an H200
    v = verify(small, [gpu(0, "H200"), cpu()], NOW)
    assert not v.verified and "80 GiB" in v.reason and "141 GB" in v.reason
    v = verify(inventory(), [], NOW)
    assert not v.verified and "no self-test results" in v.reason


def test_cpu_hosts_need_their_cores_in_parallel_and_memory_bandwidth() -> None:
    assert verify(inventory(cores=8), [cpu(cores=6.0)], NOW).verified
    v = verify(inventory(cores=8), [cpu(cores=3.0)], NOW)
    assert not v.verified and "3.0 cores measured in parallel of 8 declared" in v.reason
    v = verify(inventory(cores=8), [cpu(bandwidth=0.1)], NOW)
    assert not v.verified and "0.10 GB/s" in v.reason
    # More than the test can measure (one worker per declared core), or than any memory
    # copies: absurd figures do not verify a host (1e300 cores verified one, and every
    # tenant saw its 309 digits; the wire now bounds figures at 1e9).
    v = verify(inventory(cores=4), [cpu(cores=1e9)], NOW)
    assert not v.verified and "more than the test can measure" in v.reason, v.reason
    assert verify(inventory(cores=3.5), [cpu(cores=4.0)], NOW).verified  # 4 workers ran
    v = verify(inventory(cores=8), [cpu(bandwidth=1e9)], NOW)
    assert not v.verified and "more than any machine's memory" in v.reason, v.reason


def test_fake_gpus_are_never_verified() -> None:
    fake = SelfTestResult(kind="gpu", device_index=0, model="H100", fake=True, measured_ms=0)
    v = verify(inventory("H100", fake=True), [fake, cpu()], NOW)
    assert not v.verified and v.reason == "declared fake GPUs are never verified"
    # Even when the figures claim otherwise.
    v = verify(inventory("H100", fake=True), [gpu(0, "H100"), cpu()], NOW)
    assert not v.verified
