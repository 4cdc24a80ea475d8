"""Trace replays a user can trust: the generic trace format and its adapters (openb, Alibaba
PAI 2020), impossible tasks reported with their reason, gangs kept whole, fragmentation
sampled during the run, and the waits of tasks that gave up. Real files in ``tmp_path``,
the real engine over the real placement core."""

from __future__ import annotations

from pathlib import Path

import pytest

from crucible.sim import engine
from crucible.sim.engine import SimResult, run
from crucible.sim.scenario import ScenarioError, load_scenario
from crucible.sim.trace_format import read_nodes, read_tasks, write_tasks
from crucible.sim.trace_pai import read_pai_nodes, read_pai_tasks

NODES = """id,gpus,gpu_model,cpu_milli,memory_mib,count
a100,8,A100,64000,524288,2
t4,4,T4,32000,131072,1
cpu,0,,96000,262144,1
"""

TASK_HEADER = "id,submit_s,duration_s,nodes,gpus,gpu_milli,cpu_milli,memory_mib,models,patience_s\n"


def scenario(tmp_path: Path, tasks: str, nodes: str = NODES, extra: str = "") -> Path:
    (tmp_path / "nodes.csv").write_text(nodes)
    (tmp_path / "tasks.csv").write_text(TASK_HEADER + tasks)
    path = tmp_path / "s.toml"
    path.write_text(
        f"""
name = "trace test"
kind = "placement"
sample_minutes = 10
{extra}

[[fleet]]
name = "lab"
source = "nodes"
path = "nodes.csv"

[workload]
source = "trace"
path = "tasks.csv"
patience_hours = 1
"""
    )
    return path


def replay(path: Path, policy: str = "best-fit") -> SimResult:
    return run(load_scenario(path), policy=policy)


def test_impossible_tasks_are_reported_with_their_reason_not_counted_as_gave_up(
    tmp_path: Path,
) -> None:
    tasks = (
        "fine,0,600,1,2,1000,4000,8192,A100,\n"
        "h100,10,600,1,1,1000,1000,1024,H100,\n"  # no node has an H100
        "sixteen,20,600,1,16,1000,1000,1024,,\n"  # the largest node has 8 GPUs
        "t4x8,25,600,1,8,1000,1000,1024,T4,\n"  # T4 nodes have 4
        "cores,30,600,1,1,1000,128000,1024,,\n"  # 64 cores at most on a GPU node
        "ram,40,600,1,1,1000,1000,2000000,,\n"  # 512 GiB at most
        "cpu-ram,45,600,1,0,1000,97000,1024,,\n"  # CPU-only: 96 cores at most
        "both,50,600,1,4,1000,64000,200000,,\n"  # T4 has the RAM? no; A100 has both: fits
        "mixed,55,600,1,4,1000,40000,500000,,\n"  # A100: RAM yes, T4: cores no -> fits A100
        "nope,56,600,1,4,1000,60000,600000,,\n"  # no node has 600,000 MiB
        "gang3,60,600,3,8,1000,1000,1024,A100,\n"  # only two A100 nodes
    )
    r = replay(scenario(tmp_path, tasks))
    p = r.summary["placement"]
    imp = p["impossible"]
    assert imp["by_reason"] == {
        "unknown_gpu_model": 1,
        "too_many_gpus": 2,
        "too_much_cpu": 2,
        "too_much_memory": 2,
        "gang_too_large": 1,
    }
    assert imp["count"] == 8
    assert {x["task"]: x["reason"] for x in imp["listed"]}["gang3"] == "gang_too_large"
    assert all(imp["reasons"][k] for k in imp["by_reason"])  # each reason explained
    assert p["gave_up"] == 0 and p["still_waiting"] == 0
    assert p["started"] == 3 and p["finished"] == 3
    # impossible tasks never wait: they are not in the waits
    assert r.summary["waits"]["all"]["count"] == 3


def test_no_single_node_has_everything_at_once(tmp_path: Path) -> None:
    nodes = (
        "id,gpus,gpu_model,cpu_milli,memory_mib\n"
        "big-cpu,8,A100,128000,1024\nbig-ram,8,A100,1000,1000000\n"
    )
    r = replay(scenario(tmp_path, "x,0,60,1,1,1000,64000,65536,,\n", nodes))
    assert r.summary["placement"]["impossible"]["by_reason"] == {"no_node_fits_all": 1}


def test_waits_count_tasks_that_gave_up_until_they_gave_up(tmp_path: Path) -> None:
    nodes = "id,gpus,gpu_model,cpu_milli,memory_mib\nonly,1,A100,8000,65536\n"
    tasks = (
        "long,0,36000,1,1,1000,1000,1024,,\n"  # holds the only GPU for 10 hours
        "short,0,60,1,1,1000,1000,1024,,\n"  # waits its 1 hour of patience, gives up
        "patient,0,60,1,1,1000,1000,1024,,7200\n"  # 2 hours, then gives up too
    )
    r = replay(scenario(tmp_path, tasks, nodes))
    p, w = r.summary["placement"], r.summary["waits"]
    assert p["gave_up"] == 2 and p["started"] == 1
    # the old figure: only the task that started, which did not wait
    assert r.summary["queueing_delay"]["mean_s"] == 0
    assert w["gave_up"]["count"] == 2 and w["gave_up"]["mean_s"] == pytest.approx(5400)
    assert w["all"]["count"] == 3 and w["all"]["mean_s"] == pytest.approx(3600)
    assert w["censored_share"] == pytest.approx(2 / 3, abs=1e-3)
    assert "gave up" in w["censoring"]
    assert max(v for v in r.series["wait_with_gave_up_s"] if v is not None) >= 3600


def test_tasks_still_waiting_at_the_end_count_until_the_end(tmp_path: Path) -> None:
    nodes = "id,gpus,gpu_model,cpu_milli,memory_mib\nonly,1,A100,8000,65536\n"
    tasks = "long,0,36000,1,1,1000,1000,1024,,\nlater,600,60,1,1,1000,1000,1024,,99999\n"
    r = replay(scenario(tmp_path, tasks, nodes, extra="duration_hours = 2"))
    w = r.summary["waits"]
    assert w["still_waiting_at_end"]["count"] == 1
    assert w["still_waiting_at_end"]["mean_s"] == pytest.approx(7200 - 600)


def test_a_gang_waits_until_all_its_nodes_are_free_then_starts_whole(tmp_path: Path) -> None:
    tasks = (
        "blocker,0,3600,1,1,1000,1000,1024,A100,\n"
        "gang,10,600,2,8,1000,1000,1024,A100,\n"  # needs both A100 nodes whole
    )
    r = replay(scenario(tmp_path, tasks))
    p = r.summary["placement"]
    assert p["gangs_started"] == 1 and p["started"] == 2 and p["finished"] == 2
    # it started when the blocker left (all or nothing: never one member early)
    assert r.summary["waits"]["started"]["p99_s"] == pytest.approx(3590)
    assert p["peak_gpu_allocation"] == pytest.approx(16 / 20)


def test_fragmentation_is_sampled_during_the_run_not_only_at_the_end(tmp_path: Path) -> None:
    nodes = "id,gpus,gpu_model,cpu_milli,memory_mib,count\nn,8,A100,64000,524288,2\n"
    # mostly 4-GPU tasks (FGD's task classes come from the trace), and one node holding
    # five 1-GPU tasks for a while: its 3 free GPUs cannot take a 4-GPU task
    rows = [f"one{i},0,7200,1,1,1000,1000,1024,,\n" for i in range(5)]
    rows += [f"four{i},{7300 + i * 10},600,1,4,1000,1000,1024,,\n" for i in range(12)]
    r = replay(scenario(tmp_path, "".join(rows), nodes), policy="best-fit")
    p = r.summary["placement"]
    assert p["fragmented_gpus_at_end"] == 0  # everything drained
    # FGD weighs each class: 3 GPUs x the 4-GPU class's share (12 of 17 GPU tasks)
    assert p["fragmented_gpus_max"] == pytest.approx(3 * 12 / 17, abs=0.1)
    assert p["fragmented_gpus_mean"] > 0
    frag = [v for v in r.series["fragmented_gpus"] if v is not None]
    alloc = [v for v in r.series["gpu_allocation"] if v is not None]
    assert len(frag) == len(r.series["t_hours"]) and max(frag) > 2
    assert alloc[0] == pytest.approx(5 / 16) and max(alloc) == 1 and alloc[-1] == 0


def test_generic_tasks_round_trip_and_bad_files_name_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        TASK_HEADER + "a,5,60,2,8,1000,1000,2048,A100|H100,30\nb,1,0.5,1,1,250,500,512,,\n"
    )
    tasks = read_tasks(path)
    assert [t.id for t in tasks] == ["b", "a"]  # arrival order
    a = tasks[1]
    assert a.nodes == 2 and a.request.num_gpu == 8 and a.request.models == {"A100", "H100"}
    assert a.patience_ms == 30_000 and tasks[0].request.shared
    again = read_tasks(write_tasks(tasks, tmp_path / "u.csv"))
    assert again == tasks
    bad = tmp_path / "bad.csv"
    bad.write_text(TASK_HEADER + "x,0,sixty,1,1,1000,0,0,,\n")
    with pytest.raises(ScenarioError, match=r"bad.csv: line 2: duration_s must be a number"):
        read_tasks(bad)
    bad.write_text("id,submit_s,duration_s,gpu\nx,0,1,1\n")
    with pytest.raises(ScenarioError, match=r"column 'gpu' is not part of the format"):
        read_tasks(bad)
    bad.write_text(TASK_HEADER + "x,0,60,1,2,500,0,0,,\n")
    with pytest.raises(ScenarioError, match=r"line 2: a GPU share .* needs gpus = 1"):
        read_tasks(bad)


def test_a_missing_trace_file_is_a_clear_error(tmp_path: Path) -> None:
    path = scenario(tmp_path, "")
    (tmp_path / "tasks.csv").unlink()
    with pytest.raises(ScenarioError, match=r"tasks.csv: no such trace file"):
        replay(path)


def test_parquet_tasks_read_like_csv(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "id": ["p"],
            "submit_s": [3.0],
            "duration_s": [60.0],
            "nodes": [2],
            "gpus": [4],
            "models": ["A100"],
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    (t,) = read_tasks(tmp_path / "t.parquet")
    assert t.nodes == 2 and t.request.num_gpu == 4 and t.submit_ms == 3000
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ScenarioError, match=r"bad.parquet: not a readable Parquet file"):
        read_tasks(tmp_path / "bad.parquet")


# Alibaba PAI 2020, as published: no header row; plan_cpu in % of a core, plan_mem in GB,
# plan_gpu in % of a GPU, per instance; inst_num instances per task.
PAI_TASKS = """\
j1,worker,1.0,Terminated,1000.0,1600.0,600.0,29.296875,50.0,T4
j2,tensorflow,1.0,Terminated,1100.0,4700.0,1200.0,64.0,800.0,V100
j3,worker,4.0,Terminated,1200.0,2000.0,400.0,16.0,100.0,V100
j3,ps,1.0,Terminated,1200.0,2000.0,800.0,32.0,0.0,
j4,worker,1.0,Running,1300.0,,600.0,8.0,100.0,T4
j5,worker,1.0,Failed,1400.0,1400.0,600.0,8.0,100.0,T4
j6,worker,1.0,Terminated,1500.0,1900.0,600.0,8.0,100.0,P100
"""
PAI_JOBS = "j2,i2,u,Terminated,900.0,4700.0\n"
PAI_MACHINES = """\
m1,T4,96,512,2
m2,V100,96,512,8
m3,V100,96,512,8
m4,V100,96,512,8
m5,V100,96,512,8
m6,CPU,96,512,0
"""


def test_pai_2020_layout_is_read_with_gangs_shares_and_skipped_rows(tmp_path: Path) -> None:
    (tmp_path / "pai_task_table.csv").write_text(PAI_TASKS)
    (tmp_path / "pai_job_table.csv").write_text(PAI_JOBS)
    (tmp_path / "pai_machine_spec.csv").write_text(PAI_MACHINES)
    tasks, skipped = read_pai_tasks(tmp_path / "pai_task_table.csv")
    assert skipped == {"no start or end time": 1, "ends before it starts": 1}
    by = {t.id: t for t in tasks}
    assert by["j2/tensorflow"].submit_ms == 0  # its job was submitted at 900 s: the origin
    assert by["j2/tensorflow"].duration_ms == 3_600_000
    assert by["j2/tensorflow"].request.num_gpu == 8 and not by["j2/tensorflow"].request.shared
    share = by["j1/worker"].request
    assert share.shared and share.gpu_milli == 500 and share.cpu_milli == 6000
    assert share.memory_mib == 30000 and share.models == {"T4"}
    assert by["j3/worker"].nodes == 4 and by["j3/ps"].request.num_gpu == 0
    nodes = read_pai_nodes(tmp_path / "pai_machine_spec.csv")
    assert [n.gpu_count for n in nodes] == [2, 8, 8, 8, 8, 0]
    assert nodes[1].gpu_model == "V100" and nodes[0].memory_mib == 512 * 1024


PAI_SCENARIO = """
name = "pai"
kind = "placement"

[[fleet]]
name = "pai"
source = "nodes"
format = "pai"
path = "pai_machine_spec.csv"

[workload]
source = "trace"
format = "pai"
path = "pai_task_table.csv"
"""


def pai_scenario(d: Path, tasks: str = PAI_TASKS, extra: str = "") -> Path:
    (d / "pai_task_table.csv").write_text(tasks)
    (d / "pai_machine_spec.csv").write_text(PAI_MACHINES)
    (d / "pai.toml").write_text(PAI_SCENARIO + extra)
    return d / "pai.toml"


def test_a_pai_trace_replays_on_its_machines(tmp_path: Path) -> None:
    r = run(load_scenario(pai_scenario(tmp_path, extra='instances = "gang"\n')))
    p = r.summary["placement"]
    assert p["trace_rows_skipped"] == {"no start or end time": 1, "ends before it starts": 1}
    assert p["impossible"]["by_reason"] == {"unknown_gpu_model": 1}  # P100: no such machine
    assert p["gangs_started"] == 1  # j3's four workers, on four V100 machines at once
    assert p["started"] == 4 and p["gave_up"] == 0


# j7's 20 workers (1 V100 each) and its 2 CPU-only parameter servers: more workers than
# the 4 V100 machines, which hold 32 V100s.
PAI_MANY = PAI_TASKS + (
    "j7,worker,20.0,Terminated,1600.0,2600.0,400.0,16.0,100.0,V100\n"
    "j7,ps,2.0,Terminated,1600.0,2600.0,800.0,32.0,,\n"
)


def test_pai_instances_are_independent_tasks_by_default(tmp_path: Path) -> None:
    r = run(load_scenario(pai_scenario(tmp_path, PAI_MANY)))
    p = r.summary["placement"]
    assert p["impossible"]["by_reason"] == {"unknown_gpu_model": 1}  # P100 only
    # j1, j2, j3's 4 workers and its ps, j7's 20 workers and 2 ps: one task per instance
    assert p["arrived"] == 1 + 1 + 4 + 1 + 20 + 2 + 1
    assert p["started"] == 29 and p["gangs_started"] == 0 and p["gave_up"] == 0


def test_pai_instances_as_a_gang_need_as_many_machines(tmp_path: Path) -> None:
    r = run(load_scenario(pai_scenario(tmp_path, PAI_MANY, 'instances = "gang"\n')))
    p = r.summary["placement"]
    assert p["impossible"]["by_reason"] == {"unknown_gpu_model": 1, "gang_too_large": 1}
    assert p["arrived"] == 7 and p["started"] == 5 and p["gangs_started"] == 2


def test_trace_tasks_after_the_end_and_cpu_tasks_naming_models_are_counted(
    tmp_path: Path,
) -> None:
    from crucible.sim.report import notes

    tasks = (
        "a,0,600,1,1,1000,0,0,,\n"
        "cpu,10,600,1,0,1000,1000,1024,H100,\n"  # CPU-only, yet names a model no node has
        "late,7200,600,1,1,1000,0,0,,\n"  # after the run's end (1 h)
        "later,9000,600,1,1,1000,0,0,,\n"
    )
    r = replay(scenario(tmp_path, tasks, extra="duration_hours = 1"))
    p = r.summary["placement"]
    assert p["arrived"] == 2 and p["started"] == 2  # the CPU task runs: models are for GPUs
    assert p["arrived_after_end"] == 2 and p["cpu_tasks_naming_models"] == 1
    lines = notes(r.summary)
    assert lines[0].startswith("2 trace tasks arrive after the run's end (1 h")
    assert lines[1].startswith("1 CPU-only tasks (gpus 0) name GPU models")
    r = replay(scenario(tmp_path, tasks))  # no duration_hours: the trace runs to its end
    assert r.summary["placement"]["arrived_after_end"] == 0 and len(notes(r.summary)) == 1
    # PAI instances: counted one by one when independent (j6's 1 and j7's 22 after 360 s)
    path = pai_scenario(tmp_path, PAI_MANY)
    path.write_text(
        path.read_text().replace('kind = "placement"', 'kind = "placement"\nduration_hours = 0.1')
    )
    assert run(load_scenario(path)).summary["placement"]["arrived_after_end"] == 23


def test_pai_instances_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"instances: must be one of \['independent', 'gang'\]"):
        load_scenario(pai_scenario(tmp_path, extra='instances = "apart"\n'))
    generic = PAI_SCENARIO.replace('format = "pai"\npath = "pai_task_table.csv"', 'path = "t.csv"')
    (tmp_path / "g.toml").write_text(generic + 'instances = "gang"\n')
    with pytest.raises(ScenarioError, match=r"instances: is for format = 'pai'"):
        load_scenario(tmp_path / "g.toml")


def test_openb_layout_through_the_generic_path(tmp_path: Path) -> None:
    (tmp_path / "pods.csv").write_text(
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,"
        "deletion_time,scheduled_time\n"
        "p0,4000,8192,1,500,V100M16|V100M32,LS,Running,0,100,0\n"
        "p1,4000,8192,2,1000,,LS,Running,10,50,10\n"
        "p2,4000,8192,1,1000,,LS,Pending,20,,\n"
    )
    (tmp_path / "nodes.csv").write_text(
        "sn,cpu_milli,memory_mib,gpu,model\nn0,32000,262144,8,V100M16\n"
    )
    (tmp_path / "o.toml").write_text(
        """
name = "openb file"
kind = "placement"
[[fleet]]
name = "o"
source = "nodes"
format = "openb"
path = "nodes.csv"
[workload]
source = "trace"
format = "openb"
path = "pods.csv"
"""
    )
    r = run(load_scenario(tmp_path / "o.toml"))
    p = r.summary["placement"]
    assert p["trace_rows_skipped"] == {"no deletion time": 1}
    assert p["started"] == 2 and p["finished"] == 2


def test_scenario_keys_for_traces_are_checked(tmp_path: Path) -> None:
    path = scenario(tmp_path, "")
    text = path.read_text()
    path.write_text(text.replace('path = "tasks.csv"', 'path = "tasks.csv"\nformat = "philly"'))
    with pytest.raises(ScenarioError, match=r"workload.format: must be one of"):
        load_scenario(path)
    path.write_text(text.replace('source = "nodes"\n', ""))
    with pytest.raises(ScenarioError, match=r"fleet\[0\].path: is for source = 'nodes'"):
        load_scenario(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (TASK_HEADER + "x,0,inf,1,1,1000,0,0,,\n", "duration_s must be a finite number"),
        (TASK_HEADER + "x,-5,60,1,1,1000,0,0,,\n", "submit_s must be a finite number >= 0"),
        (TASK_HEADER + "x,0,60,1,1,0,0,0,,\n", "gpu_milli must be within 1..1000"),
        (TASK_HEADER + "x,0,60,0,1,1000,0,0,,\n", "nodes must be >= 1"),
        ("name,when\nx,0\n", "no column 'id'"),
        (TASK_HEADER + "x,0,1e308,1,1,1000,0,0,,\n", "duration_s must be at most 10,000,000,000"),
        (TASK_HEADER + "x,1e20,60,1,1,1000,0,0,,\n", "submit_s must be at most"),
        (TASK_HEADER + "x,0,60,1,1.5,1000,0,0,,\n", "line 2: gpus must be a whole number"),
        (TASK_HEADER + "x,0,60,1,1,1000,0,0\n", r"line 2: 8 values, but the header names 10"),
        (TASK_HEADER + "x,0,60,1,1,1000,0,0,,,7\n", r"line 2: 11 values, but the header"),
        ("id,submit_s,duration_s,gpus,gpus\nx,0,60,1,2\n", "line 1: column 'gpus' is named twice"),
        (b"id,submit_s,duration_s\n\xff\xfe,0,1\n", "not a UTF-8 CSV file"),
    ],
)
def test_hostile_task_files_get_a_clear_error(
    tmp_path: Path, content: str | bytes, message: str
) -> None:
    path = tmp_path / "t.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(ScenarioError, match=message):
        read_tasks(path)


def test_hostile_pai_files_get_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "pai_task_table.csv"
    path.write_text("j,w,1,Terminated,0,10\n")
    with pytest.raises(ScenarioError, match=r"line 1: 6 columns; the PAI 2020 layout has 10"):
        read_pai_tasks(path)
    path.write_text("j,w,inf,Terminated,0,10,100,1,100,T4\n")
    with pytest.raises(ScenarioError, match=r"inst_num must be finite"):
        read_pai_tasks(path)
    path.write_text("j,w,1,Terminated,0,1e300,100,1,100,T4\n")
    with pytest.raises(ScenarioError, match=r"line 1: its run \(end_time - start_time\) is"):
        read_pai_tasks(path)
    path.write_text("j,w,1,Running,0,,100,1,100,T4\n")
    with pytest.raises(ScenarioError, match=r"no task with a start and an end time"):
        read_pai_tasks(path)
    with pytest.raises(ScenarioError, match=r"no such file"):
        read_pai_nodes(tmp_path / "pai_machine_spec.csv")


def test_a_trace_that_spans_decades_is_sampled_in_bounded_windows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A task at a Unix timestamp after one at 0: the quiet stretch between them is one
    # window, not a sample every 10 minutes of 54 years (which never finished).
    r = replay(scenario(tmp_path, "a,0,600,1,1,1000,0,0,,\nb,1700000000,600,1,1,1000,0,0,,\n"))
    assert r.summary["placement"]["finished"] == 2
    t = r.series["t_hours"]
    assert len(t) < 20 and t == sorted(t)
    assert max(u for u in r.series["utilisation"] if u is not None) > 0
    # A task that runs a century (5.3 million 10-minute windows): when the series reach
    # MAX_SAMPLES points (1,000 here; 20,000 as built), the windows merge two by two and
    # double from there, so the series never hold more (it was 730,990 points, 93 MB of
    # summary.json, for a 317-year task).
    monkeypatch.setattr(engine, "MAX_SAMPLES", 1_000)
    r = replay(scenario(tmp_path, "a,0,3153600000,1,1,1000,0,0,,\n"))
    assert r.summary["placement"]["finished"] == 1
    t = r.series["t_hours"]
    assert 500 <= len(t) <= 1_000 and t == sorted(t) and t[-1] == 3153600000 / 3600
    assert all(len(v) == len(t) for v in r.series.values())
    assert r.series["utilisation"][-2] == pytest.approx(1 / 20)  # 1 of the lab's 20 GPUs
    assert r.summary["gpu_utilisation_mean"] == pytest.approx(1 / 20)


def test_merged_windows_keep_their_means() -> None:
    from crucible.sim.metrics import Recorder

    rec = Recorder(10.0, ("gpu_allocation",))
    rec.add_busy(0, 5.0)  # 5 of 10 GPUs for an hour, then 10 for three hours
    rec.started(1_000, 0)  # waits 1 s and 7 s in the first window, 4 s in the second
    rec.started(7_000, 0)
    rec.sample(3_600_000, 2, {"gpu_allocation": 0.5})
    rec.add_busy(3_600_000, 5.0)
    rec.started(3_604_000, 3_600_000)
    rec.sample(4 * 3_600_000, 0, {"gpu_allocation": 1.0})
    rec.sample(5 * 3_600_000, 1, {"gpu_allocation": 0.9})
    rec.compact()
    s = rec.series
    assert s["t_hours"] == [4.0, 5.0]  # the last (odd) window stays as it was
    assert s["utilisation"] == [pytest.approx((0.5 * 1 + 1.0 * 3) / 4), 1.0]
    assert s["queue_delay_s"] == [4.0, None]  # (1 + 7 + 4) / 3 tasks
    assert s["queued"] == [0.0, 1.0] and s["gpu_allocation"] == [1.0, 0.9]  # sampled: later
    assert s["price_on_demand"] == [None, None]


def test_a_fleet_that_would_not_fit_in_memory_is_refused_before_it_is_built(
    tmp_path: Path,
) -> None:
    # A node of a billion GPUs (a typo) raised MemoryError after minutes of allocating.
    one = scenario(tmp_path, "a,0,60,1,1,1000,0,0,,\n", nodes="id,gpus,gpu_model\nn,1e9,A100\n")
    with pytest.raises(ScenarioError, match=r"node 'n' has 1,000,000,000 GPUs; a node holds"):
        replay(one)
    many = scenario(
        tmp_path, "a,0,60,1,1,1000,0,0,,\n", nodes="id,gpus,gpu_model,count\nn,1000,A100,5000\n"
    )
    with pytest.raises(ScenarioError, match=r"the fleet has 5,000,000 GPUs; the simulator holds"):
        replay(many)


def test_openb_files_with_bad_values_name_file_and_line(tmp_path: Path) -> None:
    from crucible.sim.trace import read_openb_nodes, read_openb_pods

    pods = tmp_path / "pods.csv"
    header = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time\n"
    pods.write_text(header + "p0,4000,8192,1,500,,LS,Running,0\np1,4000,8192,x,1000,,LS,,0\n")
    with pytest.raises(ScenarioError, match=r"pods.csv: line 3: could not convert string"):
        read_openb_pods(pods)
    pods.write_text(header + "p0,4000,8192,1,500,,LS,Running,inf\n")
    with pytest.raises(ScenarioError, match=r"line 2: 'inf' is not a number within"):
        read_openb_pods(pods)
    nodes = tmp_path / "nodes.csv"
    nodes.write_text("sn,cpu_milli,memory_mib,model\nn0,32000,262144,V100M16\n")
    with pytest.raises(ScenarioError, match=r"nodes.csv: line 2: no column 'gpu'"):
        read_openb_nodes(nodes)


def test_a_node_file_that_would_not_fit_in_memory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "n.csv"
    path.write_text("id,gpus,gpu_model,count\nn,8,A100,100000000\n")
    with pytest.raises(ScenarioError, match=r"more than 1,000,000 nodes"):
        read_nodes(path)


def test_the_cli_reports_a_bad_trace_without_a_traceback(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    path = scenario(tmp_path, "x,0,sixty,1,1,1000,0,0,,\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRUCIBLE_")}
    env["CRUCIBLE_HOME"] = str(tmp_path / "home")
    out = subprocess.run(
        [sys.executable, "-m", "crucible.cli.main", "sim", str(path), "--no-plots"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 1
    err = "".join(out.stderr.split())  # the terminal wraps long lines
    assert "tasks.csv:line2:duration_smustbeanumber,not'sixty'" in err
    assert "Traceback" not in out.stderr
    # A seed the scenario file would refuse is refused on the command line too (it ran).
    out = subprocess.run(
        [sys.executable, "-m", "crucible.cli.main", "sim", str(path), "--seed", "-1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 1 and "--seed must be a whole number" in out.stderr, out.stderr


def test_market_jobs_no_host_could_serve_are_impossible_not_gave_up() -> None:
    from crucible.sim.scenario import parse_scenario

    s = parse_scenario(
        """
name = "m"
kind = "market"
duration_hours = 72
[[fleet]]
name = "c"
gpus = 32
mix = { H100 = 1 }
prices = { H100 = 2.0 }
[workload]
[[workload.classes]]
name = "fine"
load = 0.3
gpus = [4]
models = ["H100"]
[[workload.classes]]
name = "sixteen"
load = 0.2
gpus = [16]
models = ["H100"]
[[workload.classes]]
name = "huge-gang"
load = 0.2
gpus = [8]
nodes = [5]
models = ["H100"]
"""
    )
    m = run(s).summary["market"]
    imp = m["impossible"]
    assert set(imp["by_reason"]) == {"too_many_gpus", "gang_too_large"}
    assert imp["count"] == m["jobs"]["impossible"] > 0
    assert {x["class"] for x in imp["listed"]} == {"sixteen", "huge-gang"}
    assert m["jobs"]["gave_up"] == 0 or all(
        not k.endswith("never_granted") for k in m["gave_up_by_reason"]
    )


def _multigpu_scenario(tmp_path: Path, replay_kind: str) -> Path:
    """openb's multi-GPU pod lists have no creation or deletion times."""
    (tmp_path / "openb_node_list_all_node.csv").write_text(
        "sn,cpu_milli,memory_mib,gpu,model\n"
        + "".join(f"n{i},96000,786432,8,V100M32\n" for i in range(4))
    )
    (tmp_path / "openb_pod_list_multigpu50.csv").write_text(
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli\n"
        + "".join(f"p{i},8000,30000,{1 + i % 4},1000\n" for i in range(40))
    )
    path = tmp_path / f"{replay_kind}.toml"
    path.write_text(
        f"""
name = "multi-GPU pods"
kind = "placement"

[[fleet]]
name = "ali"
source = "openb"
trace_dir = "{tmp_path}"

[workload]
source = "openb"
pods = "multigpu50"
replay = "{replay_kind}"
trace_dir = "{tmp_path}"
"""
    )
    return path


def test_a_pod_list_without_times_replays_as_an_inflation(tmp_path: Path) -> None:
    """The multi-GPU pod lists (FGD's multi-GPU experiments) failed to load at all: "no column
    'creation_time'", though an inflation replay never reads the times."""
    result = replay(_multigpu_scenario(tmp_path, "inflate"))
    assert result.summary["placement"]["peak_gpu_allocation"] > 0.5, result.summary
    with pytest.raises(ScenarioError, match=r'records no creation or deletion times.*"inflate"'):
        replay(_multigpu_scenario(tmp_path, "recorded"))


def test_a_trace_in_unix_time_runs_from_its_first_arrival(tmp_path: Path) -> None:
    """Times "at most 10,000,000,000 s (a Unix timestamp fits)": such a trace reported 0%
    utilisation over 472,223 simulated hours of empty lead-in; it matches the same trace
    written from 0 now, and says where its clock started."""
    nodes = "id,gpus,gpu_model,cpu_milli,memory_mib\nonly,2,A100,8000,65536\n"
    rows = "a,{t0},3600,1,1,1000,1000,1024,,\nb,{t1},1800,1,2,1000,1000,1024,,\n"
    (tmp_path / "zero").mkdir()
    (tmp_path / "unix").mkdir()
    zero = replay(scenario(tmp_path / "zero", rows.format(t0=0, t1=600), nodes))
    epoch = 1_700_000_000
    unix = replay(scenario(tmp_path / "unix", rows.format(t0=epoch, t1=epoch + 600), nodes))
    assert unix.summary["simulated_hours"] == zero.summary["simulated_hours"] < 2
    assert unix.summary["gpu_utilisation_mean"] == zero.summary["gpu_utilisation_mean"] > 0.2
    assert unix.summary["placement"]["trace_start_s"] == epoch
    assert zero.summary["placement"]["trace_start_s"] == 0


def test_a_node_file_without_cpu_or_memory_does_not_limit_them(tmp_path: Path) -> None:
    """A GPU-only node list (id, gpus, gpu_model: what one usually has) made nodes of 0 cores
    and 0 MiB, so every task that asked for CPU was impossible (sim probe F6)."""
    path = scenario(
        tmp_path, "a,0,60,1,1,1000,4000,8192,A100,\n", nodes="id,gpus,gpu_model\nn,8,A100\n"
    )
    r = replay(path)
    assert r.summary["placement"]["impossible"]["count"] == 0
    assert r.summary["placement"]["finished"] == 1
    # Given, a column still limits: a node of 2 cores cannot run a task asking for 4.
    (tmp_path / "nodes.csv").write_text("id,gpus,gpu_model,cpu_milli\nn,8,A100,2000\n")
    assert replay(path).summary["placement"]["impossible"]["count"] == 1


def test_column_names_differing_only_in_case_are_named(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("ID,submit_s,duration_s\na,0,60\n")
    with pytest.raises(ScenarioError, match=r"no column 'id' \(the file has 'ID': names are lower"):
        read_tasks(path)
    path.write_text("id,Submit_S,submit_s,duration_s\na,0,0,60\n")
    with pytest.raises(
        ScenarioError, match=r"'Submit_S' is not part of the format \(write 'submit_s'"
    ):
        read_tasks(path)


def test_parquet_errors_name_rows_not_lines(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"id": ["a", "b"], "submit_s": [0.0, 1.0], "duration_s": [60.0, -1.0]})
    pq.write_table(table, tmp_path / "t.parquet")
    with pytest.raises(ScenarioError, match=r"t\.parquet: row 2: duration_s must be"):
        read_tasks(tmp_path / "t.parquet")
