"""Pods end to end: a real server and agent (fake GPUs declared), the pod's command run by
the pod supervisor in a container of the agent's runtime. Lifecycle, logs, billing per ms,
the disk across stop/start, preemption of an interruptible pod by a higher bid, tenant
isolation, and the CLI's escaping of what others chose."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

import crucible
from crucible.server.billing.entries import check_ledger
from crucible.server.store.tables import containers, ledger_entries, meter_intervals

from harness import Exchange, wait_for


@pytest.fixture
def pods_exchange(tmp_path: Path) -> Iterator[Exchange]:
    ex = Exchange(
        tmp_path,
        f"sqlite:///{tmp_path / 'store.db'}",
        CRUCIBLE_PREEMPTION_GRACE_S="2",
        CRUCIBLE_DEFAULT_INTERRUPTIBLE_FRACTION="0.2",
    )
    ex.start_server()
    try:
        ex.start_agent("gpu-a", fake_gpus="1xH100")
        yield ex
    finally:
        ex.close()


def _lines(pod: crucible.Pod) -> list[str]:
    return [x.line for x in pod.logs()]


def test_pod_lifecycle_disk_logs_and_billing(pods_exchange: Exchange) -> None:
    ex = pods_exchange
    client = ex.client(ex.owner_token("researcher"))
    command = 'echo run >> runs.txt; echo "runs=$(wc -l < runs.txt) rank=$MY_VAR"; exec sleep 600'
    pod = crucible.Pod.create(
        "train",
        gpu="H100:1",
        disk="1GiB",
        command=command,
        env={"MY_VAR": "seven"},
        ports=["8888/http"],
        client=client,
    )
    assert pod.state == "pending"
    info = pod.wait("running", timeout_s=60)
    assert info.gpu == "H100:1" and info.host_id and info.container_id
    assert info.ports == ["8888/http"] and info.env_keys == ["MY_VAR"]
    wait_for(lambda: "runs=1 rank=seven" in _lines(pod), 30, "the first run's line")
    # Billed per ms while it runs: metered intervals accrue cost.
    wait_for(lambda: pod.info().cost_micros > 0, 30, "metered cost")
    first_container = info.container_id

    stopped = pod.stop()
    assert stopped.state in ("stopping", "stopped")
    final = pod.wait("stopped", "failed", "preempted", timeout_s=30)
    assert final.state == "stopped" and final.reason == "stopped by you"
    cost_after_stop = pod.info().cost_micros
    # The disk survives stop/start on the same host: the second run sees the first's file.
    pod.start()
    again = pod.wait("running", timeout_s=60)
    assert again.container_id != first_container and again.host_id == info.host_id
    wait_for(lambda: "runs=2 rank=seven" in _lines(pod), 30, "the second run's line")
    # Each line once (the supervisor's pump and a tap of its own descriptors shipped it twice).
    assert _lines(pod).count("runs=1 rank=seven") == 1, _lines(pod)
    # docs/pods.md's sequence, stop() then start() at once: start() waits out the stop (it
    # was refused as "still stopping").
    pod.stop()
    assert pod.start().state in ("pending", "running")
    from_name = crucible.Pod.from_name("train", client=client)
    assert from_name.id == pod.id
    pod.delete()
    with pytest.raises(crucible.NotFoundError):
        crucible.Pod.from_name("train", client=client)
    # `start` on a deleted pod: a clear conflict naming what to do.
    with pytest.raises(crucible.ConflictError, match="was deleted"):
        client.post("/v1/pods/train/start")

    engine = create_engine(ex.database_url)
    with engine.connect() as conn:
        wait_for(
            lambda: all(
                r.state == "stopped"
                for r in conn.execute(
                    select(containers.c.state).where(
                        containers.c.id.in_([first_container, again.container_id])
                    )
                )
            ),
            30,
            "both containers stopped",
        )
        rows = conn.execute(
            select(containers).where(containers.c.id.in_([first_container, again.container_id]))
        ).all()
        for r in rows:
            assert r.gpu_model == "H100" and r.metered_until_ms == r.stopped_ms
        first = next(r for r in rows if r.id == first_container)
        assert first.metered_cost_micros <= cost_after_stop
        # The first run's intervals cover exactly its running time, to the millisecond.
        spans = conn.execute(
            select(meter_intervals.c.start_ms, meter_intervals.c.end_ms).where(
                meter_intervals.c.container_id == first_container
            )
        ).all()
        assert min(s.start_ms for s in spans) == first.started_ms
        assert max(s.end_ms for s in spans) == first.stopped_ms
        charged = conn.execute(
            select(ledger_entries.c.cost_micros).where(
                ledger_entries.c.meter == first_container, ledger_entries.c.kind == "charge"
            )
        ).all()
        assert sum(c.cost_micros for c in charged) == first.metered_cost_micros > 0
        assert check_ledger(conn) == []
    client.close()


def test_interruptible_pod_is_preempted_by_a_higher_bid(pods_exchange: Exchange) -> None:
    ex = pods_exchange
    low = ex.client(ex.owner_token("bargain"))
    high = ex.client(ex.owner_token("deadline"))
    cheap = crucible.Pod.create(
        "cheap",
        gpu="H100",
        tier="interruptible",
        bid=0.50,
        max_price=2.00,
        command="trap 'echo got SIGTERM; exit 0' TERM; echo up; while :; do sleep 0.1; done",
        client=low,
    )
    cheap.wait("running", timeout_s=60)
    wait_for(lambda: "up" in _lines(cheap), 30, "the cheap pod's first line")
    urgent = crucible.Pod.create("urgent", gpu="H100", client=high)  # on demand: $1.89
    ended = cheap.wait("preempted", "stopped", "failed", timeout_s=60)
    assert ended.state == "preempted" and "crucible pod start" in (ended.reason or "")
    # It got the SIGTERM grace: its trap ran and said so.
    wait_for(lambda: "got SIGTERM" in _lines(cheap), 30, "the trap's line")
    assert urgent.wait("running", timeout_s=60).state == "running"
    # Preempted stays down (nothing restarts it) until `start` asks the market again, which
    # with the only H100 held on demand leaves it pending.
    assert cheap.info().state == "preempted"
    assert cheap.start().state == "pending"
    urgent.stop()
    assert cheap.wait("running", timeout_s=60).state == "running"
    cheap.stop()
    low.close()
    high.close()


def test_pods_are_private_and_the_cli_escapes_what_they_print(
    pods_exchange: Exchange, tmp_path: Path
) -> None:
    ex = pods_exchange
    owner_token = ex.owner_token("alice")
    alice = ex.client(owner_token)
    mallory = ex.client(ex.new_account("mallory"))
    pod = crucible.Pod.create(
        "cpu-box",
        command="printf 'evil \\033[31mred\\033]0;title\\007\\n'; exec sleep 600",
        client=alice,
    )
    pod.wait("running", timeout_s=60)
    wait_for(lambda: any("evil" in x for x in _lines(pod)), 30, "the printed line")
    # Another account sees nothing: 404 by name and by id, for every route.
    for path in ("/v1/pods/cpu-box", f"/v1/pods/{pod.id}", f"/v1/pods/{pod.id}/logs"):
        with pytest.raises(crucible.NotFoundError):
            mallory.get(path)
    for action in ("stop", "start"):
        with pytest.raises(crucible.NotFoundError):
            mallory.post(f"/v1/pods/{pod.id}/{action}")
    with pytest.raises(crucible.NotFoundError):
        mallory.transport.delete(f"/v1/pods/{pod.id}")
    assert mallory.get("/v1/pods") == []
    assert pod.info().state == "running"
    # Pod apps stay out of the app list.
    assert all(not a.name.startswith("pod:") for a in alice.list_apps())

    env = {k: v for k, v in os.environ.items() if not k.startswith("CRUCIBLE_")}
    env.update(
        CRUCIBLE_HOME=str(tmp_path / "cli-home"),
        CRUCIBLE_SERVER_URL=ex.url,
        CRUCIBLE_TOKEN=owner_token,
        COLUMNS="80",
    )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "crucible.cli.main", "pod", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    out = cli("logs", "cpu-box")
    assert out.returncode == 0, out.stderr
    assert "evil" in out.stdout and "\x1b" not in out.stdout and "\x07" not in out.stdout
    assert "\\x1b[31mred" in out.stdout
    listed = cli("list")
    assert listed.returncode == 0 and "cpu-box" in listed.stdout and "running" in listed.stdout
    assert max(len(line) for line in listed.stdout.splitlines()) <= 80
    shown = cli("show", "cpu-box")
    assert shown.returncode == 0 and "running" in shown.stdout
    bad = cli("create", "--name", "Bad_Name!")
    assert bad.returncode != 0 and "pod name" in bad.stderr
    assert cli("stop", "cpu-box").returncode == 0
    assert pod.wait("stopped", timeout_s=30).state == "stopped"
    gone = cli("show", "nope")
    assert gone.returncode != 0 and "no pod 'nope'" in gone.stderr
    # `logs -f` follows until the pod ends: a command that exits 0 ends it `stopped`.
    short = crucible.Pod.create("short", command="sleep 1; echo last-words", client=alice)
    followed = cli("logs", "short", "-f")
    assert followed.returncode == 0 and "last-words" in followed.stdout
    ended = short.wait("stopped", "failed", timeout_s=30)
    assert ended.state == "stopped" and "status 0" in (ended.reason or "")
    # Waiting for a pod to run that has ended says so at once (it waited out its timeout).
    with pytest.raises(crucible.Error, match=r"pod 'short' is stopped, not running: .*start"):
        short.wait("running", timeout_s=120)
    alice.close()
    mallory.close()


def test_a_pod_past_its_disk_size_fails_saying_so(pods_exchange: Exchange) -> None:
    client = pods_exchange.client(pods_exchange.owner_token("filler"))
    pod = crucible.Pod.create(
        "filler",
        disk="64MiB",
        command="head -c 100000000 /dev/zero > big; echo written; exec sleep 600",
        client=client,
    )
    info = pod.wait("failed", "stopped", timeout_s=60)
    assert info.state == "failed", info
    assert "over its 0.06 GiB" in (info.reason or "") and "larger --disk" in (info.reason or "")
    pod.delete()
    client.close()


def test_a_pod_no_host_can_take_waits_and_says_why(
    pods_exchange: Exchange,
) -> None:
    client = pods_exchange.client(pods_exchange.owner_token("big"))
    pod = crucible.Pod.create("big", gpu="H100:8", client=client)
    info = wait_for(
        lambda: (i := pod.info()).reason and "no host can ever run" in i.reason and i,
        30,
        "the scheduler's reason",
    )
    assert info.state == "pending" and "H100" in (info.reason or "")
    assert "this pod" in (info.reason or "") and "function" not in (info.reason or "")
    assert "--gpu" in (info.reason or "")
    # A bid below every host's minimum: the market's own words.
    low = crucible.Pod.create("low", gpu="H100", tier="interruptible", bid=0.01, client=client)
    info = wait_for(
        lambda: (i := low.info()).reason and i.reason.startswith("the market:") and i,
        30,
        "the market's reason",
    )
    assert info.state == "pending" and "bid" in (info.reason or "")
    low.stop()
    assert pod.stop().state == "stopped"
    client.close()


def test_the_disks_of_deleted_pods_are_removed_and_a_stopped_pods_kept(tmp_path: Path) -> None:
    ex = Exchange(tmp_path, f"sqlite:///{tmp_path / 'store.db'}", CRUCIBLE_POD_DISK_PRUNE_S="0.5")
    ex.start_server()
    try:
        ex.start_agent("disk-host")
        client = ex.client(ex.owner_token("tidy"))
        made = []
        for name in ("kept", "gone"):
            pod = crucible.Pod.create(name, disk="1GiB", command="exec sleep 600", client=client)
            pod.wait("running", timeout_s=60)
            made.append(pod)
        kept, gone = made

        def disk(pod: crucible.Pod) -> list[Path]:
            return list((tmp_path / "agent-disk-host").glob(f"**/pods/{pod.id}"))

        wait_for(lambda: bool(disk(kept)) and bool(disk(gone)), 30, "both pods' disks")
        # A stray directory no pod owns (say, left by a crash) is removed too.
        stray = disk(kept)[0].parent / "pd-stray"
        (stray / "disk").mkdir(parents=True)
        kept.stop()
        kept.wait("stopped", timeout_s=30)
        gone.delete()
        wait_for(lambda: not disk(gone) and not stray.exists(), 30, "the deleted pod's disk gone")
        # The stopped pod's disk stays for its next `start`, through several passes.
        log = (tmp_path / "agent-disk-host.log").read_text()
        assert f"removed the disk of pod {gone.id}" in log
        assert disk(kept) and f"removed the disk of pod {kept.id}" not in log
        kept.start()
        kept.wait("running", timeout_s=60)
        assert disk(kept)
        client.close()
    finally:
        ex.close()
