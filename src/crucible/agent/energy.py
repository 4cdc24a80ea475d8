"""Energy per container: measured where the host allows it, estimated (and marked so) where not.

The agent samples at every sync (each heartbeat, and at each exit) and reports each
container's energy since it started, in milliwatt-hours, with its report
(:class:`ContainerReport.energy_mwh`).

**GPUs** (whole devices, assigned to one container at a time), through NVML per device:

- the driver's energy counter (``nvmlDeviceGetTotalEnergyConsumption``, millijoules since the
  driver loaded; Volta and later): the container's energy is the counter's increase;
- else power readings (``nvmlDeviceGetPowerUsage``, milliwatts) integrated over time
  (trapezoids between samples);
- else (no NVML: fake GPUs, or a device that reports neither) an **estimate** from the
  catalog's power figures: ``idle + utilisation x (TDP - idle)``, with NVML's utilisation
  where it has one and full utilisation otherwise (an upper bound).

**CPUs**: RAPL package counters (``/sys/class/powercap/intel-rapl:N/energy_uj``, which wrap at
``max_energy_range_uj``), apportioned to the container by its share of the host's busy CPU
time (``/proc/<pid>/stat`` user+system time of the worker and its waited-for children, over
the busy time in ``/proc/stat``). Without RAPL (most VMs and every non-Intel/AMD host) the
container's CPU seconds x :data:`CPU_CORE_WATTS` is an **estimate**.

**Bad readings** are dropped and counted (:attr:`EnergyMeter.dropped`, sent in the host's sync
and shown in its status): a negative power or energy step, or one that implies more than
:data:`ABSURD_FACTOR` x the device's maximum power. The interval they covered is filled with
the device's last good power (or the estimate), so a bad reading neither inflates nor erases
a bill.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from crucible.protocol.containers import ContainerReport
from crucible.protocol.gpus import CPU_CORE_WATTS, GPU_CATALOG, GpuModel

__all__ = [
    "ABSURD_FACTOR",
    "EnergyMeter",
    "NvmlPower",
    "PowerSource",
    "open_nvml",
]

log = logging.getLogger("crucible.agent.energy")

# A reading implying more than this many times a device's maximum power is not physical.
ABSURD_FACTOR = 2.0
# Largest plausible draw of one CPU package (W): RAPL steps above it are dropped.
MAX_PACKAGE_WATTS = 1000.0
# A GPU model missing from the catalog is estimated with these figures (W).
_UNKNOWN_GPU = GpuModel("unknown", 0, 0.0, (), 400, 50)
_MJ_PER_MWH = 3600.0  # 1 mWh = 3.6 J
_RAPL_PACKAGE = re.compile(r"^intel-rapl:\d+$")


class PowerSource(Protocol):
    """The NVML edge, one device index at a time. Each method answers None when the device
    does not support it (or the read failed)."""

    def total_energy_mj(self, index: int) -> int | None: ...

    def power_mw(self, index: int) -> int | None: ...

    def utilisation(self, index: int) -> float | None: ...


class NvmlPower:
    """:class:`PowerSource` over the ``pynvml`` module (or an object with its functions)."""

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        self._handles: dict[int, Any] = {}

    def _handle(self, index: int) -> Any:
        h = self._handles.get(index)
        if h is None:
            h = self._handles[index] = self._nvml.nvmlDeviceGetHandleByIndex(index)
        return h

    def total_energy_mj(self, index: int) -> int | None:
        try:
            return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle(index)))
        except Exception:  # NVMLError_NotSupported on pre-Volta boards, or a broken device
            return None

    def power_mw(self, index: int) -> int | None:
        try:
            return int(self._nvml.nvmlDeviceGetPowerUsage(self._handle(index)))
        except Exception:
            return None

    def utilisation(self, index: int) -> float | None:
        try:
            return float(self._nvml.nvmlDeviceGetUtilizationRates(self._handle(index)).gpu) / 100
        except Exception:
            return None


def open_nvml() -> NvmlPower | None:
    """The real NVML, initialised, or None where there is no driver or library."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # no library, no driver: energy is estimated
        log.debug("NVML unavailable for energy (%s)", exc)
        return None
    return NvmlPower(pynvml)


@dataclass
class _Device:
    model: GpuModel
    energy_mj: float = 0.0  # accumulated since the meter started
    counter_mj: int | None = None  # last good NVML counter reading
    power_mw: float | None = None  # last good power reading
    estimated: bool = False  # some of energy_mj is an estimate


@dataclass
class _Container:
    gpus: list[int]
    cpu: float
    gpu_start_mj: dict[int, float]
    cpu_mj: float = 0.0
    cpu_ticks: int | None = None  # last reading of its process's CPU time
    estimated: bool = False
    final_mwh: int | None = None  # frozen once it exited


class EnergyMeter:
    """Per-container energy. ``gpu_models`` maps device index → catalog model name;
    ``nvml`` is the NVML edge (None: estimate GPU power); ``powercap`` and ``proc`` are the
    sysfs and procfs roots (tests point them at fake directories); ``clock`` is monotonic
    seconds. Thread-safe."""

    def __init__(
        self,
        *,
        gpu_models: dict[int, str],
        nvml: PowerSource | None,
        powercap: Path | None = Path("/sys/class/powercap"),
        proc: Path = Path("/proc"),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._nvml = nvml
        self._devices = {
            i: _Device(GPU_CATALOG.get(name, _UNKNOWN_GPU)) for i, name in gpu_models.items()
        }
        self._powercap = powercap
        self._proc = proc
        self._clock = clock
        self._hz = _clock_ticks()
        self._lock = threading.Lock()
        self._containers: dict[str, _Container] = {}
        self._last_s = clock()
        self._rapl: dict[str, int] = {}  # package dir -> last energy_uj
        self._busy_ticks: int | None = None
        self.dropped = 0
        self._advance()  # baselines: NVML counters, RAPL counters, the host's busy time

    @property
    def has_rapl(self) -> bool:
        """Whether CPU energy is measured (RAPL packages were found), not estimated."""
        return bool(self._rapl)

    def track(self, container_id: str, gpu_indices: list[int], cpu: float) -> None:
        """Start metering a container (idempotent) from now."""
        with self._lock:
            if container_id in self._containers:
                return
            self._advance()
            starts = {i: self._devices[i].energy_mj for i in gpu_indices if i in self._devices}
            self._containers[container_id] = _Container(list(gpu_indices), cpu, starts)

    def forget(self, container_id: str) -> None:
        with self._lock:
            self._containers.pop(container_id, None)

    def annotate(
        self, reports: list[ContainerReport], *, host_pids: bool = True
    ) -> list[ContainerReport]:
        """Sample now and return the reports with each tracked container's energy so far
        (an exited container's figure is frozen at its first exited report). ``host_pids``:
        the reports' pids are the host's (not a sandbox's own PID namespace), so a
        container's CPU time can be read from the host's /proc."""
        with self._lock:
            rapl_j, busy = self._advance()
            out: list[ContainerReport] = []
            for rep in reports:
                c = self._containers.get(rep.container_id)
                if c is None:
                    out.append(rep)
                    continue
                if c.final_mwh is None:
                    # An exited process's pid may already belong to another process.
                    pid = rep.pid if rep.state != "exited" and host_pids else None
                    self._add_cpu(c, pid, rapl_j, busy)
                    mwh = int(self._total_mj(c) // _MJ_PER_MWH)
                    if rep.state == "exited":
                        c.final_mwh = mwh
                else:
                    mwh = c.final_mwh
                estimated = c.estimated or any(
                    self._devices[i].estimated for i in c.gpus if i in self._devices
                )
                out.append(
                    rep.model_copy(update={"energy_mwh": mwh, "energy_estimated": estimated})
                )
            return out

    # -- sampling ---------------------------------------------------------------------------
    def _advance(self) -> tuple[float | None, int | None]:
        """Move every device's energy up to now; returns the host's CPU package energy since
        the last sample (J; None without RAPL) and its busy CPU ticks since then."""
        now = self._clock()
        dt = max(0.0, now - self._last_s)
        self._last_s = now
        for index, dev in self._devices.items():
            self._advance_gpu(index, dev, dt)
        rapl_j = self._sample_rapl(dt)
        busy_now = self._host_busy_ticks()
        busy = None
        if busy_now is not None and self._busy_ticks is not None:
            busy = max(0, busy_now - self._busy_ticks)
        self._busy_ticks = busy_now
        return rapl_j, busy

    def _advance_gpu(self, index: int, dev: _Device, dt: float) -> None:
        max_mw = dev.model.tdp_watts * 1000 * ABSURD_FACTOR
        if self._nvml is not None:
            counter = self._nvml.total_energy_mj(index)
            if counter is not None:
                if dev.counter_mj is None:
                    dev.counter_mj = counter  # first reading: a baseline
                    return
                step = counter - dev.counter_mj
                if step < 0 or (dt > 0 and step / dt > max_mw) or (dt == 0 and step > 0):
                    self._drop(f"GPU {index} energy counter step {step} mJ in {dt:.3f} s")
                    dev.counter_mj = counter
                    self._hold(dev, dt)
                    return
                dev.counter_mj = counter
                dev.energy_mj += step
                if dt > 0:
                    dev.power_mw = step / dt
                return
            power = self._nvml.power_mw(index)
            if power is not None:
                if power < 0 or power > max_mw:
                    self._drop(f"GPU {index} power reading {power} mW")
                    self._hold(dev, dt)
                    return
                previous = dev.power_mw if dev.power_mw is not None else power
                dev.energy_mj += (previous + power) / 2 * dt
                dev.power_mw = float(power)
                return
        util = self._nvml.utilisation(index) if self._nvml is not None else None
        dev.energy_mj += dev.model.watts_at(1.0 if util is None else util) * 1000 * dt
        dev.estimated = True

    def _hold(self, dev: _Device, dt: float) -> None:
        """Fill an interval whose reading was dropped with the last good power, or the
        catalog's estimate when there was none."""
        if dev.power_mw is not None:
            dev.energy_mj += dev.power_mw * dt
        else:
            dev.energy_mj += dev.model.watts_at(1.0) * 1000 * dt
            dev.estimated = True

    def _drop(self, what: str) -> None:
        self.dropped += 1
        log.warning("dropped an absurd energy reading: %s", what)

    def _sample_rapl(self, dt: float) -> float | None:
        """CPU package energy since the last sample, in joules (0 at the first; None: the
        host has no readable RAPL package)."""
        total_uj = 0
        for pkg in self._rapl_packages():
            try:
                now_uj = int((pkg / "energy_uj").read_text())
                wrap = int((pkg / "max_energy_range_uj").read_text())
            except (OSError, ValueError):
                continue
            key = str(pkg)
            before = self._rapl.get(key)
            self._rapl[key] = now_uj
            if before is None:
                continue
            if now_uj < 0 or wrap <= 0:
                self._drop(f"RAPL {pkg.name}: energy {now_uj} uJ, range {wrap} uJ")
                continue
            step = now_uj - before if now_uj >= before else wrap - before + now_uj
            if dt > 0 and step / 1e6 / dt > MAX_PACKAGE_WATTS:
                self._drop(f"RAPL {pkg.name}: {step} uJ in {dt:.3f} s")
                continue
            total_uj += step
        return total_uj / 1e6 if self._rapl else None

    def _rapl_packages(self) -> list[Path]:
        if self._powercap is None:
            return []
        try:
            return sorted(p for p in self._powercap.iterdir() if _RAPL_PACKAGE.match(p.name))
        except OSError:
            return []

    def _host_busy_ticks(self) -> int | None:
        try:
            first = (self._proc / "stat").read_text().split("\n", 1)[0].split()
        except OSError:
            return None
        if not first or first[0] != "cpu":
            return None
        vals = [int(v) for v in first[1:]]
        # user nice system idle iowait irq softirq steal ...: everything but idle and iowait
        return sum(vals) - sum(vals[3:5])

    def _process_ticks(self, pid: int | None) -> int | None:
        if pid is None:
            return None
        try:
            text = (self._proc / str(pid) / "stat").read_text()
        except OSError:
            return None
        # The command name may hold spaces and parentheses: fields start after the last ")".
        fields = text.rsplit(")", 1)[-1].split()
        try:
            return sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
        except (ValueError, IndexError):
            return None

    def _add_cpu(
        self, c: _Container, pid: int | None, rapl_j: float | None, busy: int | None
    ) -> None:
        ticks = self._process_ticks(pid)
        if ticks is None:
            return  # exited, or not readable: nothing more to add
        # The process started after track(): all its CPU time so far is the container's.
        step = ticks if c.cpu_ticks is None else max(0, ticks - c.cpu_ticks)
        c.cpu_ticks = ticks
        if not step:
            return
        if rapl_j is not None and busy:
            c.cpu_mj += rapl_j * 1000 * min(1.0, step / busy)
        else:
            c.cpu_mj += step / self._hz * CPU_CORE_WATTS * 1000
            c.estimated = True

    def _total_mj(self, c: _Container) -> float:
        gpu = sum(self._devices[i].energy_mj - start for i, start in c.gpu_start_mj.items())
        return max(0.0, gpu) + c.cpu_mj


def _clock_ticks() -> int:
    try:
        return int(os.sysconf("SC_CLK_TCK"))
    except (ValueError, OSError, AttributeError):
        return 100
