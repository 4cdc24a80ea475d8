"""`crucible sim SCENARIO [--seed N] [--out DIR] [--policy NAME]`: run a scenario through the
discrete-event simulator over the real placement and market cores, print a summary table and
write the report (JSON, PNG plots, HTML).

`crucible sim compare SCENARIO --policy A --policy B --seeds N`: run several policies over
several seeds of a placement or market scenario and write one side-by-side report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from crucible.cli._output import console, print_json, table

__all__ = ["register"]


class _RunByDefault(TyperGroup):
    """`crucible sim SCENARIO` runs one scenario (the `run` command); `crucible sim compare
    ...` compares. Anything that is not a subcommand's name goes to `run`."""

    default_command = "run"

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


def _plots_or_say_why(plots: bool) -> bool:
    """Plots stay on unless matplotlib is missing; then say so once and go on without."""
    from crucible.sim.report import plots_missing

    why = plots_missing() if plots else None
    if why:
        console.print(why, markup=False, highlight=False)
    return plots and why is None


def _folder(out: Path) -> Path:
    """The report folder, made now: a path that cannot be one is said before the run."""
    from crucible.sim.scenario import ScenarioError

    if out.exists() and not out.is_dir():
        raise ScenarioError(f"--out {out}: is a file; give a folder for the report")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ScenarioError(f"--out {out}: cannot make this folder ({exc.strerror})") from None
    return out


def _without_list(part: Any) -> Any:
    """A kind's summary for the terminal: impossible tasks counted, not listed."""
    imp = part["impossible"]
    return part | {"impossible": {k: v for k, v in imp.items() if k != "listed"}}


def register(app: typer.Typer) -> None:
    sim_app = typer.Typer(
        cls=_RunByDefault,
        help="Simulate a fleet and its workload on a virtual clock (`crucible sim SCENARIO`, "
        "the same as `crucible sim run SCENARIO`: see `crucible sim run --help` for --seed, "
        "--policy, --out, --no-plots and --json), or compare policies side by side "
        "(`crucible sim compare SCENARIO`).",
    )
    app.add_typer(sim_app, name="sim")

    @sim_app.command("compare")
    def sim_compare(
        scenario: Path = typer.Argument(..., help="a scenario file (.toml); see examples/sim/"),
        policy: list[str] = typer.Option(
            ...,
            "--policy",
            help="a policy; repeat to compare (the first is the baseline). Placement: "
            "best-fit, spread, fgd, cost-first, carbon-first; market: cost-first, "
            "carbon-first, green-interruptible, green-capped-interruptible, carbon-capped, "
            "reserve-price",
        ),
        seeds: int = typer.Option(3, help="how many seeds per policy (1..100)"),
        gpus: int | None = typer.Option(
            None, help="rescale the fleet to this many GPUs (default: the scenario's)"
        ),
        out: Path | None = typer.Option(
            None, help="report folder (default: sim-out/<scenario file name>-compare)"
        ),
        plots: bool = typer.Option(True, help="write PNG plots"),
        json_out: bool = typer.Option(False, "--json", help="print the comparison as JSON"),
    ) -> None:
        """Run several policies over several seeds; one side-by-side report (table, JSON,
        HTML with plots): placement figures ranked per figure, or market goals judged."""
        from crucible.sim.compare import compare
        from crucible.sim.compare_placement_report import (
            impossible_lines,
            placement_rows,
            ranking_rows,
        )
        from crucible.sim.compare_report import (
            goal_lines,
            headline_rows,
            versus_rows,
            work_rows,
            write_compare_report,
        )
        from crucible.sim.scenario import ScenarioError, load_scenario

        if seeds < 1 or seeds > 100:
            raise ScenarioError(f"--seeds must be 1..100, not {seeds}")
        s = load_scenario(scenario)
        folder = _folder(out or Path("sim-out") / f"{scenario.stem}-compare")
        plots = _plots_or_say_why(plots)
        t0 = time.perf_counter()
        result: dict[str, Any] = compare(s, policy, [s.seed + i for i in range(seeds)], gpus=gpus)
        timing = {"wall_s": round(time.perf_counter() - t0, 1), "runs": len(policy) * seeds}
        written = write_compare_report(result, timing, folder, plots=plots)
        if json_out:
            print_json({k: v for k, v in result.items() if k != "runs"} | {"timing": timing})
            return
        if result["kind"] == "placement":
            for line in impossible_lines(result):
                console.print(line, markup=False, highlight=False)
            table(
                f"Placement: {s.name} ({result['gpus']:,} GPUs, {len(result['seeds'])} seeds)",
                *placement_rows(result),
            )
            table("Ranking on this workload", *ranking_rows(result))
            console.print(f"waits: {result['waits_censoring']}", markup=False, highlight=False)
            console.print(f"{timing['runs']} runs in {timing['wall_s']} s")
            console.print("wrote " + ", ".join(str(p) for p in written.values()))
            return
        cols, rows = headline_rows(result)
        table(f"Prices: {s.name} ({result['gpus']:,} GPUs, paid/list = price / list)", cols, rows)
        table("Work and carbon", *work_rows(result))
        vcols, vrows = versus_rows(result)
        if vrows:
            table(f"Against {result['baseline']} (relative change)", vcols, vrows)
        for p, f in result["policies"].items():
            why = ", ".join(f"{k} {v:g}" for k, v in f["gave_up_by_reason_per_run"].items())
            console.print(
                f"{p}: {f['jobs_gave_up_per_run']:g} jobs gave up per run ({why or 'none'})",
                markup=False,
                highlight=False,
            )
        for line in goal_lines(result):
            console.print(line, markup=False, highlight=False)
        console.print(f"{timing['runs']} runs in {timing['wall_s']} s")
        console.print("wrote " + ", ".join(str(p) for p in written.values()))

    @sim_app.command("run")
    def sim(
        scenario: Path = typer.Argument(..., help="scenario file (.toml); see examples/sim/"),
        seed: int | None = typer.Option(None, help="random seed (default: the scenario's)"),
        out: Path | None = typer.Option(
            None, help="report folder (default: sim-out/<scenario file name>)"
        ),
        policy: str | None = typer.Option(
            None,
            help="placement policy (best-fit, spread, fgd, cost-first, carbon-first); market "
            "scenarios take cost-first or carbon-first",
        ),
        plots: bool = typer.Option(True, help="write PNG plots (needs matplotlib)"),
        json_out: bool = typer.Option(False, "--json", help="print the summary as JSON"),
    ) -> None:
        """Simulate a fleet and its workload (placement or market) on a virtual clock."""
        from crucible.sim.engine import run
        from crucible.sim.report import flatten, notes, write_report
        from crucible.sim.scenario import ScenarioError, load_scenario

        if seed is not None and not 0 <= seed < 2**63:  # as a scenario's seed is checked
            raise ScenarioError(f"--seed must be a whole number from 0 to 2**63-1, not {seed}")
        s = load_scenario(scenario)
        folder = _folder(out or Path("sim-out") / scenario.stem)
        plots = _plots_or_say_why(plots)
        t0 = time.perf_counter()
        result = run(s, seed=seed, policy=policy)
        wall = time.perf_counter() - t0
        sim_s = result.summary["simulated_hours"] * 3600
        timing = {
            "wall_s": round(wall, 3),
            "simulated_s_per_wall_s": round(sim_s / wall) if wall > 0 else None,
            "events_per_wall_s": round(result.summary["events"] / wall) if wall > 0 else None,
        }
        written = write_report(result, timing, folder, plots=plots)
        if json_out:
            print_json({"summary": result.summary, "timing": timing})
        else:
            kind = result.summary["kind"]
            imp = result.summary[kind]["impossible"]
            if imp["count"]:
                why = ", ".join(f"{k} {v}" for k, v in imp["by_reason"].items())
                console.print(
                    f"{imp['count']:,} tasks could never run on this fleet ({why}); they are "
                    f"listed in summary.json ({kind}.impossible), not counted as gave up",
                    markup=False,
                    highlight=False,
                )
            for line in notes(result.summary):
                console.print(line, markup=False, highlight=False)
            shown = result.summary | {kind: _without_list(result.summary[kind])}
            rows = flatten(shown) + flatten(timing, "timing.")
            table(f"crucible sim: {s.name}", ["metric", "value"], rows, ids=["metric"])
            console.print("wrote " + ", ".join(str(p) for p in written.values()))
