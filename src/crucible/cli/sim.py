"""`crucible sim SCENARIO [--seed N] [--out DIR] [--policy NAME]`: run a scenario through the
discrete-event simulator over the real placement and market cores, print a summary table and
write the report (JSON, PNG plots, HTML)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from crucible.cli._output import console, print_json, table

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    @app.command()
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
        from crucible.sim.report import flatten, write_report
        from crucible.sim.scenario import load_scenario

        s = load_scenario(scenario)
        t0 = time.perf_counter()
        result = run(s, seed=seed, policy=policy)
        wall = time.perf_counter() - t0
        sim_s = result.summary["simulated_hours"] * 3600
        timing = {
            "wall_s": round(wall, 3),
            "simulated_s_per_wall_s": round(sim_s / wall) if wall > 0 else None,
            "events_per_wall_s": round(result.summary["events"] / wall) if wall > 0 else None,
        }
        folder = out or Path("sim-out") / scenario.stem
        written = write_report(result, timing, folder, plots=plots)
        if json_out:
            print_json({"summary": result.summary, "timing": timing})
        else:
            rows = flatten(result.summary) + flatten(timing, "timing.")
            table(f"crucible sim: {s.name}", ["metric", "value"], rows)
            console.print("wrote " + ", ".join(str(p) for p in written.values()))
