"""The GPU catalog and the grammar of GPU and memory requests.

A request names a catalog model and a count: ``"H100"``, ``"A100-80GB:2"``, ``"h100:8"``.
A list of requests is a fallback order. NVML device names (``"NVIDIA H100 80GB HBM3"``)
are mapped onto catalog models with :func:`model_from_nvml_name`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from crucible.errors import InvalidGpuError, InvalidResourcesError

__all__ = [
    "CPU_CORE_WATTS",
    "GPU_CATALOG",
    "GpuModel",
    "GpuRequest",
    "model_from_nvml_name",
    "parse_fake_gpus",
    "parse_gpu_request",
    "parse_gpu_spec",
    "parse_memory_mib",
]


@dataclass(frozen=True)
class GpuModel:
    name: str
    memory_gib: int
    # A reference on-demand price, $/GPU-hour, used by metering v0 and as a default ask.
    reference_price_usd: float
    # Substrings of NVML names that identify this model (checked longest catalog name first).
    nvml_aliases: tuple[str, ...] = ()
    # Board power from public spec sheets (W): the maximum (TDP/TBP) and a typical idle draw.
    # Used to estimate energy where a host cannot measure it (see agent/energy.py).
    tdp_watts: int = 300
    idle_watts: int = 50

    # Spec-sheet figures the host self-test is compared with (server/verification.py): dense
    # FP16/BF16 tensor-core TFLOPS (no sparsity; with FP32 accumulation where the sheet
    # tells them apart) and memory bandwidth in GB/s, of the fastest form factor (SXM).
    matmul_tflops: float = 0.0
    mem_bandwidth_gbs: float = 0.0

    def watts_at(self, utilisation: float) -> float:
        """Estimated board power at a utilisation in [0, 1]: idle plus the busy fraction of
        the range up to TDP (a linear model; real boards rarely sit at TDP)."""
        u = min(max(utilisation, 0.0), 1.0)
        return self.idle_watts + u * (self.tdp_watts - self.idle_watts)


# Estimated draw of one busy CPU core (W): a server CPU's TDP over its cores (e.g. a 280 W,
# 32-core EPYC 7543, or a 205 W, 24-core Xeon 6342, both ~8.5-9 W/core), rounded up for
# memory and uncore. Used only where RAPL cannot be read.
CPU_CORE_WATTS = 10.0


GPU_CATALOG: dict[str, GpuModel] = {
    m.name: m
    for m in (
        GpuModel(
            "B200",
            192,
            5.99,
            ("B200",),
            tdp_watts=1000,
            idle_watts=140,
            matmul_tflops=2250,
            mem_bandwidth_gbs=8000,
        ),
        GpuModel(
            "H200",
            141,
            3.59,
            ("H200",),
            tdp_watts=700,
            idle_watts=90,
            matmul_tflops=989,
            mem_bandwidth_gbs=4800,
        ),
        GpuModel(
            "H100",
            80,
            1.89,
            ("H100",),
            tdp_watts=700,
            idle_watts=80,
            matmul_tflops=989,
            mem_bandwidth_gbs=3350,
        ),
        GpuModel(
            "A100-80GB",
            80,
            1.29,
            ("A100-SXM4-80GB", "A100 80GB", "A100-PCIE-80GB"),
            tdp_watts=400,
            idle_watts=55,
            matmul_tflops=312,
            mem_bandwidth_gbs=2039,
        ),
        GpuModel(
            "A100-40GB",
            40,
            0.99,
            ("A100-SXM4-40GB", "A100-PCIE-40GB", "A100"),
            tdp_watts=400,
            idle_watts=50,
            matmul_tflops=312,
            mem_bandwidth_gbs=1555,
        ),
        GpuModel(
            "L40S",
            48,
            0.99,
            ("L40S",),
            tdp_watts=350,
            idle_watts=35,
            matmul_tflops=362,
            mem_bandwidth_gbs=864,
        ),
        GpuModel(
            "L4",
            24,
            0.44,
            ("L4",),
            tdp_watts=72,
            idle_watts=16,
            matmul_tflops=121,
            mem_bandwidth_gbs=300,
        ),
        GpuModel(
            "A10G",
            24,
            0.6,
            ("A10G",),
            tdp_watts=300,
            idle_watts=30,
            matmul_tflops=70,
            mem_bandwidth_gbs=600,
        ),
        GpuModel(
            "A10",
            24,
            0.55,
            ("A10",),
            tdp_watts=150,
            idle_watts=25,
            matmul_tflops=125,
            mem_bandwidth_gbs=600,
        ),
        GpuModel(
            "RTX4090",
            24,
            0.34,
            ("RTX 4090",),
            tdp_watts=450,
            idle_watts=25,
            matmul_tflops=165,
            mem_bandwidth_gbs=1008,
        ),
        GpuModel(
            "RTX3090",
            24,
            0.22,
            ("RTX 3090",),
            tdp_watts=350,
            idle_watts=25,
            matmul_tflops=71,
            mem_bandwidth_gbs=936,
        ),
        GpuModel(
            "V100",
            16,
            0.4,
            ("V100",),
            tdp_watts=300,
            idle_watts=40,
            matmul_tflops=125,
            mem_bandwidth_gbs=900,
        ),
        GpuModel(
            "T4",
            16,
            0.17,
            ("T4",),
            tdp_watts=70,
            idle_watts=10,
            matmul_tflops=65,
            mem_bandwidth_gbs=320,
        ),
    )
}

_CANONICAL = {name.lower().replace("-", ""): name for name in GPU_CATALOG}
# Friendly spellings builders use.
_CANONICAL.update({"a100": "A100-40GB", "a10080g": "A100-80GB", "a10040g": "A100-40GB"})


@dataclass(frozen=True)
class GpuRequest:
    model: str
    count: int

    def __str__(self) -> str:
        return self.model if self.count == 1 else f"{self.model}:{self.count}"


_MEMORY_SUFFIX = re.compile(r"^(.+)[-_ ](\d+)\s*gb?$")


def _canonical_model(raw: str) -> str:
    key = raw.strip().lower().replace("-", "").replace("_", "").replace(" ", "")
    model = _CANONICAL.get(key)
    if model is None:
        # "H100-80GB" names H100 when 80 GB is the catalog's memory for it.
        match = _MEMORY_SUFFIX.match(raw.strip().lower())
        if match:
            base = _CANONICAL.get(match.group(1).replace("-", "").replace("_", ""))
            if base is not None:
                if GPU_CATALOG[base].memory_gib != int(match.group(2)):
                    raise InvalidGpuError(
                        f"unknown GPU model {raw.strip()!r}: the catalog's {base} has "
                        f"{GPU_CATALOG[base].memory_gib} GB, not {match.group(2)} GB"
                    )
                model = base
    if model is None:
        known = ", ".join(sorted(GPU_CATALOG))
        raise InvalidGpuError(f"unknown GPU model {raw.strip()!r}; known models: {known}")
    return model


def parse_gpu_request(text: str) -> GpuRequest:
    """``"A100-80GB:2"`` (or ``"2xA100-80GB"``, as the CLI writes it) →
    GpuRequest("A100-80GB", 2)."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidGpuError(
            f"a GPU request must be a string like 'H100' or 'H100:2', got {text!r}"
        )
    given = text
    times = re.fullmatch(r"\s*([0-9]+)\s*[xX]\s*(.+)", text)
    if times and ":" not in text:
        text = f"{times.group(2)}:{times.group(1)}"
    name, colon, count_text = text.partition(":")
    count = 1
    if colon:
        if not re.fullmatch(r"[0-9]+", count_text.strip()) or int(count_text) < 1:
            raise InvalidGpuError(
                f"GPU count in {given!r} must be a positive integer, as in 'H100:2' or '2xH100'"
            )
        count = int(count_text)
    if count > 64:
        raise InvalidGpuError(f"{given!r} asks for {count} GPUs on one node; the most is 64")
    return GpuRequest(_canonical_model(name), count)


def parse_gpu_spec(spec: str | list[str] | tuple[str, ...] | None) -> list[GpuRequest]:
    """A function's ``gpu=`` argument as a fallback-ordered list (empty: no GPU)."""
    if spec is None:
        return []
    if isinstance(spec, str):
        return [parse_gpu_request(spec)]
    if isinstance(spec, list | tuple):
        if not spec:
            raise InvalidGpuError("gpu=[] is empty; leave gpu out for a CPU-only function")
        return [parse_gpu_request(s) for s in spec]
    raise InvalidGpuError(f"gpu= must be a string or a list of strings, got {type(spec).__name__}")


def model_from_nvml_name(name: str) -> str | None:
    """The catalog model for an NVML device name, or None when the model is not catalogued."""
    upper = name.upper()
    # Longest aliases first so "A100-SXM4-80GB" wins over "A100" and "L40S" over "L4".
    candidates = sorted(
        ((alias, m.name) for m in GPU_CATALOG.values() for alias in m.nvml_aliases),
        key=lambda pair: -len(pair[0]),
    )
    for alias, model in candidates:
        if re.search(rf"(?<![A-Z0-9]){re.escape(alias.upper())}(?![A-Z0-9])", upper):
            return model
    return None


def parse_fake_gpus(text: str) -> list[str]:
    """``"4xH100,2xL4"`` → ["H100"] * 4 + ["L4"] * 2 (models, one entry per device)."""
    models: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        count_text, sep, name = part.partition("x")
        if not sep or not re.fullmatch(r"[0-9]+", count_text):
            count_text, name = "1", part
        count = int(count_text)
        if count < 1 or count > 64:
            raise InvalidGpuError(f"fake GPU group {part!r}: count must be 1..64")
        models.extend([_canonical_model(name)] * count)
    if not models:
        raise InvalidGpuError(f"--fake-gpus {text!r} declares no device; use e.g. '4xH100-80GB'")
    return models


_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?)?\s*$", re.IGNORECASE)
_UNIT_MIB = {
    "": 1.0,
    "k": 1 / 1024,
    "ki": 1 / 1024,
    "kb": 1000 / 1024 / 1024,
    "kib": 1 / 1024,
    "m": 1.0,
    "mi": 1.0,
    "mb": 1000**2 / 1024**2,
    "mib": 1.0,
    "g": 1024.0,
    "gi": 1024.0,
    "gb": 1000**3 / 1024**2,
    "gib": 1024.0,
    "t": 1024.0**2,
    "ti": 1024.0**2,
    "tb": 1000**4 / 1024**2,
    "tib": 1024.0**2,
}


# What one container may ask (protocol/common.Resources.memory_mib's bound).
MAX_MEMORY_MIB = 16 * 1024 * 1024


def parse_memory_mib(value: int | str | None, default: int = 512) -> int:
    """``"512MiB"``, ``"2GiB"``, ``"1.5G"`` or an int of MiB → MiB."""
    if value is None:
        return default
    if isinstance(value, bool):
        raise InvalidResourcesError(f"memory= must be MiB or a string like '2GiB', got {value!r}")
    if isinstance(value, int):
        mib = value
    else:
        match = _MEMORY.match(str(value))
        if not match:
            raise InvalidResourcesError(
                f"memory={value!r} is not a size; write e.g. 512 (MiB), '512MiB' or '2GiB'"
            )
        number, unit = match.groups()
        mib = int(float(number) * _UNIT_MIB[(unit or "").lower()])
    if mib < 16:
        raise InvalidResourcesError(f"memory={value!r} is below the 16 MiB minimum")
    if mib > MAX_MEMORY_MIB:
        raise InvalidResourcesError(
            f"memory={value!r} is over the 16 TiB maximum (16,777,216 MiB) a container may ask"
        )
    return mib
