"""The agent's energy meter with fake readings at the edges: a fake NVML, a fake powercap
directory (RAPL) and a fake procfs. The real NVML path is the one that runs on GPU hosts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from crucible.agent.energy import EnergyMeter, NvmlPower
from crucible.protocol.containers import ContainerReport


@dataclass
class Clock:
    s: float = 100.0

    def __call__(self) -> float:
        return self.s


@dataclass
class FakeNvml:
    """Per device: an energy counter (mJ) or, where None, power readings (mW)."""

    counters: dict[int, int | None] = field(default_factory=dict)
    power: dict[int, int | None] = field(default_factory=dict)
    util: dict[int, float] = field(default_factory=dict)

    def total_energy_mj(self, index: int) -> int | None:
        return self.counters.get(index)

    def power_mw(self, index: int) -> int | None:
        return self.power.get(index)

    def utilisation(self, index: int) -> float | None:
        return self.util.get(index)


def _proc(root: Path, busy: int, pid_ticks: dict[int, int]) -> None:
    """A fake /proc: the host's busy ticks (user) and each process's utime."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "stat").write_text(f"cpu  {busy} 0 0 1000 0 0 0 0 0 0\ncpu0 1 0 0 0\n")
    for pid, ticks in pid_ticks.items():
        (root / str(pid)).mkdir(exist_ok=True)
        # comm with a space and a parenthesis, as real names may have
        fields = ["S"] + ["0"] * 10 + [str(ticks), "0", "0", "0"] + ["0"] * 30
        (root / str(pid) / "stat").write_text(f"{pid} (python (w) x) " + " ".join(fields))


def _rapl(root: Path, energy_uj: int, wrap_uj: int = 262_143_328_850) -> None:
    pkg = root / "intel-rapl:0"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "energy_uj").write_text(str(energy_uj))
    (pkg / "max_energy_range_uj").write_text(str(wrap_uj))
    sub = root / "intel-rapl:0:0"  # a subzone (core): never counted twice
    sub.mkdir(exist_ok=True)
    (sub / "energy_uj").write_text("999999999")
    (sub / "max_energy_range_uj").write_text(str(wrap_uj))


def _report(cid: str, state: str = "running", pid: int | None = 7) -> ContainerReport:
    return ContainerReport(container_id=cid, state=state, pid=pid)


def test_gpu_energy_from_the_nvml_counter_and_cpu_from_rapl_by_cpu_share(
    tmp_path: Path,
) -> None:
    clock = Clock()
    nvml = FakeNvml(counters={0: 1_000_000, 1: 5_000_000})
    proc, cap = tmp_path / "proc", tmp_path / "powercap"
    _proc(proc, busy=0, pid_ticks={7: 0})
    _rapl(cap, 10_000_000)
    meter = EnergyMeter(
        gpu_models={0: "H100", 1: "H100"}, nvml=nvml, powercap=cap, proc=proc, clock=clock
    )
    assert meter.has_rapl
    meter.track("ct-a", [0], cpu=2.0)
    [first] = meter.annotate([_report("ct-a")])
    assert first.energy_mwh == 0

    # 10 s later: GPU 0 drew 3.6 kJ (1 Wh, 360 W); GPU 1 (not the container's) 7.2 kJ.
    # The CPU packages drew 72 J (20 mWh) while the container used half the busy time.
    clock.s += 10
    nvml.counters = {0: 1_000_000 + 3_600_000, 1: 5_000_000 + 7_200_000}
    _rapl(cap, 10_000_000 + 72_000_000)
    _proc(proc, busy=200, pid_ticks={7: 100})
    [rep] = meter.annotate([_report("ct-a")])
    assert rep.energy_mwh == 1_000 + 10
    assert rep.energy_estimated is False
    assert meter.dropped == 0


def test_rapl_wrap_around_is_counted_not_dropped(tmp_path: Path) -> None:
    clock = Clock()
    proc, cap = tmp_path / "proc", tmp_path / "powercap"
    _proc(proc, busy=0, pid_ticks={7: 0})
    _rapl(cap, 999_000_000, wrap_uj=1_000_000_000)
    meter = EnergyMeter(gpu_models={}, nvml=None, powercap=cap, proc=proc, clock=clock)
    meter.track("ct-a", [], cpu=1.0)
    meter.annotate([_report("ct-a")])
    clock.s += 10
    # Wrapped: 1 J to the top, then 35 J more = 36 J = 10 mWh; the container did all the work.
    _rapl(cap, 35_000_000, wrap_uj=1_000_000_000)
    _proc(proc, busy=100, pid_ticks={7: 100})
    [rep] = meter.annotate([_report("ct-a")])
    assert rep.energy_mwh == 10
    assert meter.dropped == 0


def test_power_readings_are_integrated_and_absurd_ones_dropped_and_counted(
    tmp_path: Path,
) -> None:
    clock = Clock()
    nvml = FakeNvml(power={0: 300_000})  # no counter: power readings only
    proc = tmp_path / "proc"
    _proc(proc, busy=0, pid_ticks={})
    meter = EnergyMeter(
        gpu_models={0: "A100-80GB"}, nvml=nvml, powercap=None, proc=proc, clock=clock
    )
    meter.track("ct-a", [0], cpu=0.0)
    clock.s += 36
    nvml.power = {0: 300_000}
    [rep] = meter.annotate([_report("ct-a", pid=None)])
    assert rep.energy_mwh == 3_000  # 300 W x 36 s = 10.8 kJ = 3 Wh
    # A negative reading and one far above the board's 400 W: dropped, counted, and the
    # interval filled with the last good power (300 W) instead.
    for bad in (-5, 5_000_000):
        clock.s += 36
        nvml.power = {0: bad}
        [rep] = meter.annotate([_report("ct-a", pid=None)])
    assert meter.dropped == 2
    assert rep.energy_mwh == 9_000


def test_a_counter_going_backwards_is_dropped(tmp_path: Path) -> None:
    clock = Clock()
    nvml = FakeNvml(counters={0: 10_000_000})
    meter = EnergyMeter(
        gpu_models={0: "H100"}, nvml=nvml, powercap=None, proc=tmp_path, clock=clock
    )
    meter.track("ct-a", [0], cpu=0.0)
    clock.s += 10
    nvml.counters = {0: 13_600_000}  # +3.6 kJ = 1 Wh
    meter.annotate([_report("ct-a", pid=None)])
    clock.s += 10
    nvml.counters = {0: 1_000}  # backwards: dropped, the 10 s held at the last 360 W
    [rep] = meter.annotate([_report("ct-a", pid=None)])
    assert meter.dropped == 1
    assert rep.energy_mwh == 2_000


def test_without_nvml_or_rapl_it_estimates_from_the_catalog_and_says_so(
    tmp_path: Path,
) -> None:
    clock = Clock()
    proc = tmp_path / "proc"
    _proc(proc, busy=0, pid_ticks={7: 0})
    meter = EnergyMeter(gpu_models={0: "T4"}, nvml=None, powercap=None, proc=proc, clock=clock)
    assert not meter.has_rapl
    meter.track("ct-a", [0], cpu=1.0)
    clock.s += 36
    _proc(proc, busy=3600, pid_ticks={7: 3600})  # 36 CPU seconds at 100 ticks/s
    [rep] = meter.annotate([_report("ct-a")])
    # T4 at its 70 W TDP for 36 s = 700 mWh; 36 CPU-seconds at 10 W = 100 mWh.
    assert rep.energy_mwh == 800
    assert rep.energy_estimated is True


def test_an_exited_containers_energy_is_frozen_until_forgotten(tmp_path: Path) -> None:
    clock = Clock()
    meter = EnergyMeter(gpu_models={0: "L4"}, nvml=None, powercap=None, proc=tmp_path, clock=clock)
    meter.track("ct-a", [0], cpu=0.0)
    clock.s += 50
    [done] = meter.annotate([_report("ct-a", "exited", pid=None)])
    clock.s += 50
    [again] = meter.annotate([_report("ct-a", "exited", pid=None)])
    assert done.energy_mwh == again.energy_mwh == 1_000  # 72 W x 50 s
    meter.forget("ct-a")
    [gone] = meter.annotate([_report("ct-a", "exited", pid=None)])
    assert gone.energy_mwh is None


class _PynvmlLike:
    """The functions of the pynvml module that NvmlPower calls; one raises like a board
    without an energy counter."""

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return 250_000

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> object:
        return type("U", (), {"gpu": 40})()


def test_nvml_power_adapter_maps_unsupported_to_none() -> None:
    nvml = NvmlPower(_PynvmlLike())
    assert nvml.total_energy_mj(0) is None
    assert nvml.power_mw(0) == 250_000
    assert nvml.utilisation(0) == 0.4
