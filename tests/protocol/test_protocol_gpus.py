"""The GPU catalog and the grammar of GPU, fake-GPU and memory requests."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from crucible.errors import InvalidGpuError, InvalidRequestError, InvalidResourcesError
from crucible.protocol.gpus import (
    GPU_CATALOG,
    GpuRequest,
    model_from_nvml_name,
    parse_fake_gpus,
    parse_gpu_request,
    parse_gpu_spec,
    parse_memory_mib,
)


@pytest.mark.parametrize(
    ("text", "model", "count"),
    [
        ("H100", "H100", 1),
        ("h100", "H100", 1),
        (" H100 ", "H100", 1),
        ("h100:8", "H100", 8),
        ("H100:64", "H100", 64),
        ("H100: 2", "H100", 2),
        ("A100-80GB:2", "A100-80GB", 2),
        ("a100-80gb", "A100-80GB", 1),
        ("A100", "A100-40GB", 1),  # the friendly spelling names the 40 GB part
        ("A100-40GB", "A100-40GB", 1),
        ("a100-80g", "A100-80GB", 1),
        ("H100-80GB", "H100", 1),  # a model spelled with its catalogued memory
        ("h100 80gb:4", "H100", 4),
        ("L40S", "L40S", 1),
        ("l4:2", "L4", 2),
        ("RTX4090", "RTX4090", 1),
        ("rtx-4090", "RTX4090", 1),
        ("A10G", "A10G", 1),
        ("A10", "A10", 1),
    ],
)
def test_parse_gpu_request(text: str, model: str, count: int) -> None:
    req = parse_gpu_request(text)
    assert req == GpuRequest(model, count)
    assert req.model in GPU_CATALOG
    # str() is the canonical spelling, and it parses back to the same request.
    assert parse_gpu_request(str(req)) == req
    assert str(req) == (model if count == 1 else f"{model}:{count}")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "a GPU request must be a string like 'H100'"),
        ("   ", "a GPU request must be a string like 'H100'"),
        ("H100:0", "must be a positive integer"),
        ("H100:-1", "must be a positive integer"),
        ("H100:two", "must be a positive integer"),
        ("H100:1.5", "must be a positive integer"),
        ("H100:65", "the most is 64"),
        ("H1000", "unknown GPU model 'H1000'; known models: A10, A100-40GB"),
        ("H100-40GB", "unknown GPU model 'H100-40GB'"),  # wrong memory for the model
        ("TPUv5:4", "unknown GPU model 'TPUv5'"),
        (":2", "unknown GPU model ''"),
    ],
)
def test_parse_gpu_request_refuses_with_a_helpful_message(text: str, says: str) -> None:
    with pytest.raises(InvalidGpuError) as info:
        parse_gpu_request(text)
    assert says in str(info.value)
    assert isinstance(info.value, InvalidRequestError) and info.value.http_status == 400


def test_unknown_model_message_lists_the_whole_catalog() -> None:
    with pytest.raises(InvalidGpuError) as info:
        parse_gpu_request("B300")
    assert all(name in str(info.value) for name in GPU_CATALOG)


@pytest.mark.parametrize(
    "parse",
    [lambda: parse_gpu_request("H100:²"), lambda: parse_fake_gpus("²xH100")],
    ids=["gpu_request", "fake_gpus"],
)
def test_unicode_digit_counts_are_invalid_gpu(parse: Callable[[], object]) -> None:
    with pytest.raises(InvalidGpuError):
        parse()


def test_a_colon_without_a_count_is_refused() -> None:
    with pytest.raises(InvalidGpuError, match="positive integer"):
        parse_gpu_request("H100:")


def test_parse_gpu_spec() -> None:
    assert parse_gpu_spec(None) == []
    assert parse_gpu_spec("H100:2") == [GpuRequest("H100", 2)]
    assert parse_gpu_spec(["H100:8", "A100-80GB:8", "L4"]) == [
        GpuRequest("H100", 8),
        GpuRequest("A100-80GB", 8),
        GpuRequest("L4", 1),
    ]
    assert parse_gpu_spec(("L4", "T4")) == [GpuRequest("L4", 1), GpuRequest("T4", 1)]
    with pytest.raises(InvalidGpuError, match="empty; leave gpu out"):
        parse_gpu_spec([])
    with pytest.raises(InvalidGpuError, match="string or a list of strings, got int"):
        parse_gpu_spec(2)  # type: ignore[arg-type]
    with pytest.raises(InvalidGpuError, match="got 2"):
        parse_gpu_spec(["H100", 2])  # type: ignore[list-item]
    with pytest.raises(InvalidGpuError, match="unknown GPU model 'X'"):
        parse_gpu_spec(["H100", "X"])  # one bad fallback refuses the whole spec


@pytest.mark.parametrize(
    ("text", "models"),
    [
        ("4xH100", ["H100"] * 4),
        ("4xH100-80GB", ["H100"] * 4),
        ("2xL4,1xT4", ["L4", "L4", "T4"]),
        (" 2xL4 , T4 ,", ["L4", "L4", "T4"]),
        ("H100", ["H100"]),
        ("RTX4090", ["RTX4090"]),  # the x inside a model name is not a count separator
        ("2xRTX4090", ["RTX4090", "RTX4090"]),
        ("64xT4", ["T4"] * 64),
    ],
)
def test_parse_fake_gpus(text: str, models: list[str]) -> None:
    assert parse_fake_gpus(text) == models


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "declares no device; use e.g. '4xH100-80GB'"),
        (" , ", "declares no device"),
        ("0xH100", "count must be 1..64"),
        ("65xH100", "count must be 1..64"),
        ("4xH1000", "unknown GPU model 'H1000'"),
        ("4x", "unknown GPU model ''"),
    ],
)
def test_parse_fake_gpus_refuses(text: str, says: str) -> None:
    with pytest.raises(InvalidGpuError) as info:
        parse_fake_gpus(text)
    assert says in str(info.value)


@pytest.mark.parametrize(
    ("nvml", "model"),
    [
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA H100 PCIe", "H100"),
        ("nvidia h100 pcie", "H100"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA B200", "B200"),
        ("NVIDIA A100-SXM4-80GB", "A100-80GB"),
        ("NVIDIA A100 80GB PCIe", "A100-80GB"),
        ("NVIDIA A100-PCIE-40GB", "A100-40GB"),
        ("NVIDIA A100-SXM4-40GB", "A100-40GB"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA A10G", "A10G"),
        ("NVIDIA A10", "A10"),
        ("NVIDIA GeForce RTX 4090", "RTX4090"),
        ("NVIDIA GeForce RTX 3090", "RTX3090"),
        ("Tesla V100-SXM2-16GB", "V100"),
        ("Tesla T4", "T4"),
        # Not catalogued: near misses must not be mistaken for a catalogued model.
        ("NVIDIA L40", None),
        ("NVIDIA A40", None),
        ("NVIDIA GH200 480GB", None),
        ("NVIDIA H800", None),
        ("NVIDIA RTX A6000", None),
        ("NVIDIA GeForce GTX 1080", None),
        ("", None),
    ],
)
def test_model_from_nvml_name(nvml: str, model: str | None) -> None:
    assert model_from_nvml_name(nvml) == model


def test_catalog_is_consistent() -> None:
    for name, m in GPU_CATALOG.items():
        assert m.name == name and m.memory_gib > 0 and m.reference_price_usd > 0
        assert parse_gpu_request(name) == GpuRequest(name, 1)
        for alias in m.nvml_aliases:
            assert model_from_nvml_name(f"NVIDIA {alias}") == name, alias


@pytest.mark.parametrize(
    ("value", "mib"),
    [
        (None, 512),
        (512, 512),
        (16, 16),
        ("16", 16),
        ("512MiB", 512),
        ("512mi", 512),
        ("512M", 512),
        ("2GiB", 2048),
        ("2 gib", 2048),
        ("2G", 2048),
        ("1.5G", 1536),
        ("0.5GiB", 512),
        ("1GB", 953),  # decimal gigabyte: 10^9 bytes
        ("1000MB", 953),
        ("1TiB", 1024 * 1024),
        ("16384KiB", 16),
    ],
)
def test_parse_memory_mib(value: int | str | None, mib: int) -> None:
    assert parse_memory_mib(value) == mib


def test_parse_memory_default() -> None:
    assert parse_memory_mib(None, default=2048) == 2048


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("abc", "is not a size; write e.g. 512 (MiB), '512MiB' or '2GiB'"),
        ("-5", "is not a size"),
        ("2 GiB of RAM", "is not a size"),
        ("1e3", "is not a size"),
        ("", "is not a size"),
        ("15", "below the 16 MiB minimum"),
        (15, "below the 16 MiB minimum"),
        (-1, "below the 16 MiB minimum"),
        ("1kb", "below the 16 MiB minimum"),
        (True, "memory= must be MiB or a string like '2GiB'"),
        # in the units written, not as an internal memory_mib bound
        ("100000GiB", "memory='100000GiB' is over the 16 TiB maximum"),
        (2**40, "over the 16 TiB maximum"),
    ],
)
def test_parse_memory_refuses(value: int | str, says: str) -> None:
    with pytest.raises(InvalidResourcesError) as info:
        parse_memory_mib(value)
    assert says in str(info.value)
    assert info.value.code == "invalid_resources" and info.value.http_status == 400
