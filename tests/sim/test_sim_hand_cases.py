"""Small replays worked out by hand: where a run ends, what a task whose patience ran out
counts as, and scenario numbers that are not finite. Real files in ``tmp_path``, the real
engine over the real placement core."""

from __future__ import annotations

from pathlib import Path

import pytest

from crucible.sim.engine import SimResult, run
from crucible.sim.scenario import ScenarioError, load_scenario, parse_scenario

NODES = "id,gpus,gpu_model,cpu_milli,memory_mib,count\nn,2,A100,8000,16384,2\n"
HEADER = "id,submit_s,duration_s,nodes,gpus,gpu_milli,cpu_milli,memory_mib,models,patience_s\n"
# On 2 nodes of 2 GPUs: t1 and t2 start at 0 and fill the fleet; t3 waits and gives up at
# 40 s; t4 waits until t1 ends at 100 s and runs until 200 s. All 4 GPUs are busy 0-200 s.
TASKS = (
    "t1,0,100,1,2,1000,0,0,,\n"
    "t2,0,200,1,2,1000,0,0,,\n"
    "t3,10,50,1,1,1000,0,0,,30\n"
    "t4,20,100,1,2,1000,0,0,,1000\n"
)


def replay(tmp_path: Path, tasks: str, top: str) -> SimResult:
    (tmp_path / "nodes.csv").write_text(NODES)
    (tmp_path / "tasks.csv").write_text(HEADER + tasks)
    return run(load_scenario(_write(tmp_path, top)))


def _write(tmp_path: Path, top: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(
        f"""name = "hand"
kind = "placement"
{top}

[[fleet]]
name = "lab"
source = "nodes"
path = "nodes.csv"

[workload]
source = "trace"
path = "tasks.csv"
"""
    )
    return path


@pytest.mark.parametrize("minutes", [1, 60, 1e6])
def test_a_replay_without_duration_ends_at_its_last_event(tmp_path: Path, minutes: float) -> None:
    r = replay(tmp_path, TASKS, f"sample_minutes = {minutes}")
    s = r.summary
    assert s["simulated_hours"] == round(200 / 3600, 3)
    assert s["gpu_utilisation_mean"] == 1.0  # every GPU busy for the whole run
    assert r.series["t_hours"][-1] == pytest.approx(200 / 3600)
    assert all(u == 1.0 for u in r.series["utilisation"])  # the last window is partial
    assert s["placement"]["started"] == 3 and s["placement"]["gave_up"] == 1


def test_the_windows_before_the_end_stay_on_the_grid(tmp_path: Path) -> None:
    r = replay(tmp_path, TASKS, "sample_minutes = 1")
    assert [round(t * 3600) for t in r.series["t_hours"] if t is not None] == [60, 120, 180, 200]


def test_a_deadline_after_the_last_sample_is_a_give_up_not_a_wait(tmp_path: Path) -> None:
    # both nodes held until 100,000 s; t3 arrives at 3,700 s with 600 s of patience: it
    # gives up at 4,300 s, after the last full window (3,600 s) and before the end (5,400 s)
    tasks = "a,0,100000,1,2,1000,0,0,,\nb,0,100000,1,2,1000,0,0,,\nt3,3700,50,1,1,1000,0,0,,600\n"
    r = replay(tmp_path, tasks, "duration_hours = 1.5")
    p, w = r.summary["placement"], r.summary["waits"]
    assert p["gave_up"] == 1 and p["still_waiting"] == 0
    assert w["gave_up"]["count"] == 1 and w["gave_up"]["mean_s"] == 600
    assert w["still_waiting_at_end"]["count"] == 0


PLACEMENT = """name = "x"
kind = "placement"
duration_hours = 2
sample_minutes = 5

[[fleet]]
name = "lab"
gpus = 8
mix = { A100 = 1 }
prices = { A100 = 1.0 }

[workload]
[[workload.classes]]
name = "c"
load = 0.5
"""

MARKET = """name = "m"
kind = "market"
duration_hours = 2
platform_fee = 0.1
grace_seconds = 30

[[fleet]]
name = "cloud"
gpus = 16
mix = { H100 = 1 }
prices = { H100 = 1.89 }
interruptible_min = 0.5

[workload]
[[workload.classes]]
name = "train"
load = 0.5
gpus = [8]
models = ["H100"]
duration_hours = 1
"""


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
@pytest.mark.parametrize(
    ("text", "old", "key"),
    [
        (PLACEMENT, "sample_minutes = 5", "sample_minutes"),
        (PLACEMENT, "duration_hours = 2", "duration_hours"),
        (PLACEMENT, "load = 0.5", "workload.classes[0].load"),
        (MARKET, "platform_fee = 0.1", "platform_fee"),
        (MARKET, "grace_seconds = 30", "grace_seconds"),
        (MARKET, "duration_hours = 1", "workload.classes[0].duration_hours"),
        (MARKET, "interruptible_min = 0.5", "fleet[0].interruptible_min"),
        (MARKET, "prices = { H100 = 1.89 }", "fleet[0].prices.H100"),
        (MARKET, "mix = { H100 = 1 }", "fleet[0].mix.H100"),
    ],
)
def test_numbers_that_are_not_finite_are_refused_by_key(
    text: str, old: str, key: str, bad: str
) -> None:
    name = old.split(" = ")[0]
    new = f"{name} = {{ H100 = {bad} }}" if "{" in old else f"{name} = {bad}"
    assert old in text
    with pytest.raises(ScenarioError) as exc:
        parse_scenario(text.replace(old, new), "s.toml")
    msg = str(exc.value)
    assert msg.startswith(f"s.toml: {key}: must be a finite number")
    assert msg.endswith(f"not {float(bad)}") or msg.endswith(f"not {float(bad)!r}")


def test_workload_patience_that_is_not_finite_is_refused(tmp_path: Path) -> None:
    text = (
        'name = "t"\nkind = "placement"\n[[fleet]]\nname = "lab"\nsource = "nodes"\n'
        'path = "nodes.csv"\n[workload]\nsource = "trace"\npath = "t.csv"\n'
        "patience_hours = nan\n"
    )
    with pytest.raises(ScenarioError, match=r"workload\.patience_hours: must be a finite number"):
        parse_scenario(text, "s.toml")


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("sample_minutes = 5", "sample_minutes = 1e20", "sample_minutes: must be within"),
        ("sample_minutes = 5", "sample_minutes = 0", "sample_minutes: must be within 0.001.."),
    ],
)
def test_sample_minutes_is_bounded(old: str, new: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        parse_scenario(PLACEMENT.replace(old, new), "s.toml")


def test_grace_seconds_is_bounded() -> None:
    with pytest.raises(ScenarioError, match="grace_seconds: must be within"):
        parse_scenario(MARKET.replace("grace_seconds = 30", "grace_seconds = 1e30"), "s.toml")


def test_every_queueing_panel_spans_the_run_and_gaps_stay_gaps() -> None:
    from crucible.sim.report import draw_series, load_pyplot

    plt = load_pyplot()
    t: list[float | None] = [0.5, 1.0, 1.5, 2.0, 12.0]
    sparse: list[float | None] = [0.0, None, None, 50.0, None]  # first panel: 2 early points
    queued: list[float | None] = [1.0, 3.0, 5.0, 9.0, 17.0]
    fig = draw_series(plt, t, [(sparse, "started", False), (queued, "waiting", False)], "q")
    try:
        for ax in fig.axes:
            assert ax.get_xlim() == (0, 12.0)  # the whole run, not the first panel's points
        (line,) = fig.axes[0].get_lines()
        ys = list(line.get_ydata())
        # the windows without a value are breaks (NaN), not points on a line from 0 to 50
        assert ys[0] == 0 and ys[3] == 50 and all(y != y for y in (ys[1], ys[2], ys[4]))
        assert line.get_marker() == "."  # the points either side of a gap show
        assert fig.axes[1].get_lines()[0].get_marker() in (None, "None", "")
    finally:
        plt.close(fig)


def test_a_window_mean_is_drawn_flat_over_its_window() -> None:
    from crucible.sim.report import draw_series, load_pyplot

    plt = load_pyplot()
    # the windows (0, 1], (1, 2], (2, 4]; the second has no value
    fig = draw_series(plt, [1.0, 2.0, 4.0], [([0.5, None, 0.25], "wait", True)], "w")
    try:
        (line,) = fig.axes[0].get_lines()
        assert list(line.get_xdata()) == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0]
        ys = list(line.get_ydata())
        assert ys[:2] == [0.5, 0.5] and ys[4:] == [0.25, 0.25] and all(y != y for y in ys[2:4])
    finally:
        plt.close(fig)


@pytest.mark.parametrize("policy", ["best-fit", "fgd"])
def test_impossible_tasks_are_not_demand_nor_fgd_task_classes(tmp_path: Path, policy: str) -> None:
    # four 1-GPU H100 tasks no node can run, then two 2-GPU tasks that fill the 4 A100s
    tasks = "".join(f"h{i},0,10,1,1,1000,0,0,H100,\n" for i in range(4))
    tasks += "t1,1,100,1,2,1000,0,0,,\nt2,1,200,1,2,1000,0,0,,\n"
    (tmp_path / "nodes.csv").write_text(NODES)
    (tmp_path / "tasks.csv").write_text(HEADER + tasks)
    r = run(load_scenario(_write(tmp_path, "sample_minutes = 1")), policy=policy)
    p = r.summary["placement"]
    assert p["impossible"]["by_reason"] == {"unknown_gpu_model": 4}
    assert p["arrived"] == 6  # they arrived (and are reported), but asked for nothing
    assert p["arrived_gpu_demand_over_capacity"] == 1.0  # t1 + t2: 4 GPUs of 4
    # demand reaches the fleet's GPUs when t2 arrives, and t2 is placed beside t1 at once
    assert p["gpu_allocation_when_arrived_equals_capacity"] == 1.0
    # the only class that could run is 2-GPU work, which every free pair of a node can take
    assert p["fragmented_gpus_at_end"] == 0 and p["fragmented_gpus_max"] == 0
    assert p["fragmentation_of_free_at_end"] == 0


def test_an_impossible_task_does_not_fragment_the_fleet(tmp_path: Path) -> None:
    # the tiny case plus a 3-GPU task (too_many_gpus on 2-GPU nodes): alone it would make
    # every free GPU of the empty fleet "fragmented" for its class
    r = replay(tmp_path, TASKS + "t5,0,10,1,3,1000,0,0,,\n", "sample_minutes = 1")
    p = r.summary["placement"]
    assert p["impossible"]["by_reason"] == {"too_many_gpus": 1}
    assert p["fragmented_gpus_at_end"] == 0 and p["arrived_gpu_demand_over_capacity"] == 1.75


def test_the_compare_waits_legend_covers_no_bar() -> None:
    from crucible.sim.compare_placement_report import waits_figure
    from crucible.sim.report import load_pyplot

    plt = load_pyplot()
    names = ["best-fit", "spread", "fgd", "cost-first", "carbon-first"]
    c = {
        "policies": {
            p: {
                "wait_all_mean_s": {"mean": 3600.0 * (1 + i)},
                "wait_started_mean_s": {"mean": 1800.0 * (1 + i)},
                "gave_up_share": {"mean": 0.05 * (1 + i)},  # the last bars are the longest
            }
            for i, p in enumerate(names)
        }
    }
    fig = waits_figure(plt, c, "t")
    try:
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        shown = [*fig.legends, *(a.legend_ for a in fig.axes if a.legend_ is not None)]
        legends = [lg.get_window_extent(r) for lg in shown]
        bars = [b.get_window_extent(r) for a in fig.axes for b in a.patches]
        assert len(bars) == 3 * len(names) and legends
        assert not any(lg.overlaps(b) for lg in legends for b in bars)
    finally:
        plt.close(fig)


OPENB_PODS = (
    "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,"
    "creation_time,deletion_time,scheduled_time\n"
)


@pytest.mark.parametrize(("gpus", "ok"), [("2", True), ("2.0", True), ("1.7", False)])
def test_openb_gpu_counts_are_whole_or_refused(tmp_path: Path, gpus: str, ok: bool) -> None:
    from crucible.sim.trace import read_openb_nodes, read_openb_pods

    pods = tmp_path / "pods.csv"
    pods.write_text(OPENB_PODS + f"p,1000,1024,{gpus},1000,,LS,Running,0,60,0\n")
    nodes = tmp_path / "nodes.csv"
    nodes.write_text(f"sn,cpu_milli,memory_mib,gpu,model\nn,8000,16384,{gpus},A100\n")
    if ok:
        assert read_openb_pods(pods)[0].request.num_gpu == 2
        assert read_openb_nodes(nodes)[0].gpu_count == 2
        return
    with pytest.raises(ScenarioError, match=r"pods\.csv: line 2: num_gpu must be a whole"):
        read_openb_pods(pods)
    with pytest.raises(ScenarioError, match=r"nodes\.csv: line 2: gpu must be a whole"):
        read_openb_nodes(nodes)


@pytest.mark.parametrize(("inst", "nodes"), [("4.0", 4), ("1000000", 1_000_000), ("1e300", 0)])
def test_pai_instances_are_bounded_like_generic_nodes(
    tmp_path: Path, inst: str, nodes: int
) -> None:
    from crucible.sim.trace_pai import read_pai_tasks

    path = tmp_path / "pai_task_table.csv"
    path.write_text(f"j1,worker,{inst},Terminated,1000.0,1600.0,600.0,8.0,100.0,T4\n")
    if nodes:
        tasks, _ = read_pai_tasks(path)
        assert tasks[0].nodes == nodes
        return
    with pytest.raises(ScenarioError, match=r"line 1: inst_num must be at most 1,000,000"):
        read_pai_tasks(path)


def test_duplicate_task_and_node_ids_are_refused_naming_both_lines(tmp_path: Path) -> None:
    from crucible.sim.trace_format import read_nodes, read_tasks

    tasks = tmp_path / "t.csv"
    tasks.write_text(HEADER + TASKS + "t2,5,10,1,1,1000,0,0,,\n")
    with pytest.raises(ScenarioError, match=r"t\.csv: line 6: task id 't2' is also on line 3"):
        read_tasks(tasks)
    # No id: refused, as the format says (it was named line-N, which a real id could be).
    tasks.write_text(HEADER + ",0,10,1,1,1000,0,0,,\nline-2,0,10,1,1,1000,0,0,,\n")
    with pytest.raises(ScenarioError, match=r"t\.csv: line 2: id is required"):
        read_tasks(tasks)
    nodes = tmp_path / "n.csv"
    nodes.write_text(NODES + "n-1,2,A100,8000,16384,1\n")  # n x2 is already n-0 and n-1
    with pytest.raises(ScenarioError, match=r"n\.csv: line 3: node id 'n-1' is also on line 2"):
        read_nodes(nodes)
    nodes.write_text(NODES + "m,2,A100,8000,16384,1\n")
    assert [x.id for x in read_nodes(nodes)] == ["n-0", "n-1", "m"]


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ("a,8,A100,64000,1000000000000000,1", "memory_mib must be at most 2,147,483,647"),
        ("a,8,A100,1000000000000000,1024,1", "cpu_milli must be at most 65,536,000"),
    ],
)
def test_node_sizes_the_index_cannot_hold_are_refused(
    tmp_path: Path, node: str, message: str
) -> None:
    """They passed the file's checks, then ended in a traceback (or a MemoryError) where the
    placement index was built."""
    (tmp_path / "nodes.csv").write_text(NODES.splitlines()[0] + "\n" + node + "\n")
    (tmp_path / "tasks.csv").write_text(HEADER + TASKS)
    with pytest.raises(ScenarioError, match=rf"nodes\.csv: line 2: {message}"):
        run(load_scenario(_write(tmp_path, "")))


@pytest.mark.parametrize(
    ("key", "value"), [("cpu_per_host", 65_537), ("memory_gib_per_host", 2**21)]
)
def test_generated_host_sizes_are_bounded(key: str, value: int) -> None:
    text = PLACEMENT.replace("mix = { A100 = 1 }", f"mix = {{ A100 = 1 }}\n{key} = {value}")
    with pytest.raises(ScenarioError, match=rf"{key}: must be within 1\.\."):
        parse_scenario(text, "s.toml")


def test_a_parquet_list_of_models_is_read_as_alternatives(tmp_path: Path) -> None:
    """A list column (the natural Parquet type of ``models``) became the model "['T4']", and
    every task was reported impossible."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from crucible.sim.trace_format import read_tasks

    path = tmp_path / "t.parquet"
    table = {
        "id": ["a", "b"],
        "submit_s": [0.0, 5.0],
        "duration_s": [60.0, 60.0],
        "gpus": [1, 1],
        "models": [["T4"], ["H100", "A100"]],
    }
    pq.write_table(pa.table(table), path)
    got = {t.id: sorted(t.request.models) for t in read_tasks(path)}
    assert got == {"a": ["T4"], "b": ["A100", "H100"]}
