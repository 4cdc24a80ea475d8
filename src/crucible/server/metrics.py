"""Prometheus metrics of the control plane, served at ``/metrics`` (admin token).

Counters and histograms are kept in this process as events happen (calls accepted and
finished, container cold starts); gauges (queue depth, containers and hosts by state) are
read from the store when scraped. The text is Prometheus' exposition format 0.0.4.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Mapping

from sqlalchemy import Connection, func, select

from crucible.errors import is_error_code
from crucible.server.store.tables import calls, containers, hosts

__all__ = ["Metrics"]

# Seconds: from sub-millisecond no-ops to hour-long jobs.
EXEC_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 1800, 3600)
START_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_MAX_EXEC_S = 7 * 86_400.0


def _label_value(value: str) -> str:
    """A label value as the exposition format writes it: backslash, quote and line feed
    escaped (one that held them could end its sample and write others)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    def lines(self, name: str, labels: str) -> Iterable[str]:
        running = 0
        sep = "," if labels else ""
        for bound, n in zip(self.buckets, self.counts, strict=False):
            running += n
            yield f'{name}_bucket{{{labels}{sep}le="{bound:g}"}} {running}'
        running += self.counts[-1]
        yield f'{name}_bucket{{{labels}{sep}le="+Inf"}} {running}'
        yield f"{name}_sum{{{labels}}} {self.sum:.6f}"
        yield f"{name}_count{{{labels}}} {running}"


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls_accepted = 0
        self.outputs: dict[str, int] = {}  # status -> count (succeeded, failed, timed_out)
        self.errors: dict[str, int] = {}  # error code -> count
        self.cold_starts = 0
        self.exec_seconds = _Histogram(EXEC_BUCKETS)
        self.start_seconds = _Histogram(START_BUCKETS)

    def accepted(self, n: int) -> None:
        with self._lock:
            self.calls_accepted += n

    def finished(self, status: str, exec_s: float, error_code: str | None) -> None:
        """An attempt's output as its worker reported it. A worker runs a tenant's code, so
        what it reports is bounded here: an error code is one of Crucible's or ``other`` (a
        code of its choosing became a series of its own, forever), a run time at most a week."""
        with self._lock:
            self.outputs[status] = self.outputs.get(status, 0) + 1
            self.exec_seconds.observe(min(max(exec_s, 0.0), _MAX_EXEC_S))
            if error_code:
                code = error_code if is_error_code(error_code) else "other"
                self.errors[code] = self.errors.get(code, 0) + 1

    def cold_start(self, seconds: float) -> None:
        with self._lock:
            self.cold_starts += 1
            self.start_seconds.observe(seconds)

    def summary(self, conn: Connection) -> dict[str, object]:
        """The key figures (the console's operator page): the gauges, read from the store,
        and this process's counters."""
        queued, live, host_states = gauges(conn)
        with self._lock:
            return {
                "calls_queued": queued.get("queued", 0),
                "calls_running": queued.get("running", 0),
                "containers": live,
                "hosts": host_states,
                "calls_accepted": self.calls_accepted,
                "attempts": dict(self.outputs),
                "errors": dict(self.errors),
                "cold_starts": self.cold_starts,
                "mean_start_s": self.start_seconds.sum / max(1, sum(self.start_seconds.counts)),
                "mean_exec_s": self.exec_seconds.sum / max(1, sum(self.exec_seconds.counts)),
            }

    def render(self, conn: Connection) -> str:
        out: list[str] = []

        def family(name: str, kind: str, doc: str) -> None:
            out.append(f"# HELP {name} {doc}")
            out.append(f"# TYPE {name} {kind}")

        def by_label(name: str, label: str, values: Mapping[str, int]) -> None:
            for key, n in sorted(values.items()):
                out.append(f'{name}{{{label}="{_label_value(key)}"}} {n}')

        queued, live, host_states = gauges(conn)
        family("crucible_calls_in_flight", "gauge", "Calls queued or running, by state.")
        by_label(
            "crucible_calls_in_flight",
            "state",
            {s: queued.get(s, 0) for s in ("queued", "running")},
        )
        family("crucible_containers", "gauge", "Live containers, by state.")
        by_label(
            "crucible_containers",
            "state",
            {s: live.get(s, 0) for s in ("pending", "starting", "running", "stopping")},
        )
        family("crucible_hosts", "gauge", "Registered hosts, by state.")
        # Every state, with its zeros: an alert on crucible_hosts{state="ready"} == 0 fires
        # on an exchange with no host at all.
        by_label(
            "crucible_hosts",
            "state",
            {**{s: 0 for s in ("ready", "offline", "lost")}, **host_states},
        )
        with self._lock:
            family("crucible_calls_accepted_total", "counter", "Calls accepted by this server.")
            out.append(f"crucible_calls_accepted_total {self.calls_accepted}")
            family("crucible_call_attempts_total", "counter", "Finished attempts, by outcome.")
            by_label("crucible_call_attempts_total", "status", self.outputs)
            family("crucible_call_errors_total", "counter", "Failed attempts, by error code.")
            by_label("crucible_call_errors_total", "code", self.errors)
            family("crucible_call_exec_seconds", "histogram", "Execution time of an attempt.")
            out.extend(self.exec_seconds.lines("crucible_call_exec_seconds", ""))
            family("crucible_cold_starts_total", "counter", "Containers that became ready.")
            out.append(f"crucible_cold_starts_total {self.cold_starts}")
            family(
                "crucible_container_start_seconds",
                "histogram",
                "From container assigned to its worker ready.",
            )
            out.extend(self.start_seconds.lines("crucible_container_start_seconds", ""))
        return "\n".join(out) + "\n"


def gauges(conn: Connection) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """Calls queued/running, live containers by state, hosts by state: from the store."""
    queued: dict[str, int] = {
        str(k): int(v)
        for k, v in conn.execute(
            select(calls.c.state, func.count())
            .where(calls.c.state.in_(("queued", "running")))
            .group_by(calls.c.state)
        ).all()
    }
    live: dict[str, int] = {
        str(k): int(v)
        for k, v in conn.execute(
            select(containers.c.state, func.count())
            .where(containers.c.state != "stopped")
            .group_by(containers.c.state)
        ).all()
    }
    by_state = (
        select(hosts.c.state, func.count())
        .where(hosts.c.state != "removed")  # taken off the exchange by their owners
        .group_by(hosts.c.state)
    )
    host_states: dict[str, int] = {str(k): int(v) for k, v in conn.execute(by_state).all()}
    return queued, live, host_states
