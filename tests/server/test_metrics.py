"""Prometheus metrics: admin only, the exposition format, and figures that move."""

from __future__ import annotations

from crucible.protocol.accounts import Scope

from server_testlib import ServerUnderTest, error_code


def _value(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} not in the metrics")


def test_metrics_need_an_admin_token_and_count_what_happens(server: ServerUnderTest) -> None:
    admin = server.tenant("ops", Scope.ADMIN).token
    alice = server.tenant("alice").token
    assert server.request("GET", "/metrics").status_code == 401
    r = server.request("GET", "/metrics", token=alice)
    assert r.status_code == 403 and error_code(r) == "forbidden"

    fn = server.new_function(alice, server.new_app(alice), server.put_blob(alice))
    server.new_calls(alice, fn, 3)
    server.state.metrics.finished("failed", 0.2, "remote_error")
    server.state.metrics.cold_start(0.3)
    r = server.request("GET", "/metrics", token=admin)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert "# TYPE crucible_call_exec_seconds histogram" in text
    assert _value(text, 'crucible_calls_in_flight{state="queued"}') == 3
    assert _value(text, "crucible_calls_accepted_total") == 3
    assert _value(text, 'crucible_call_errors_total{code="remote_error"}') == 1
    assert _value(text, 'crucible_call_exec_seconds_bucket{le="0.5"}') == 1
    assert _value(text, 'crucible_call_exec_seconds_bucket{le="0.1"}') == 0
    assert _value(text, 'crucible_call_exec_seconds_bucket{le="+Inf"}') == 1
    assert _value(text, "crucible_cold_starts_total") == 1
    assert _value(text, 'crucible_containers{state="running"}') == 0
    assert _value(text, 'crucible_hosts{state="ready"}') == 0  # present with no host at all


def test_log_lines_are_capped_per_container() -> None:
    from crucible.protocol.logs import LogBatch, LogSent
    from crucible.server.services.logs import within_cap

    counts: dict[str, int] = {}
    batch = LogBatch(lines=[LogSent(ts_ms=i, stream="stdout", line=f"line {i}") for i in range(8)])
    first = within_cap(batch, counts, "ct-1", 5)
    assert [x.line for x in first.lines[:5]] == [f"line {i}" for i in range(5)]
    assert len(first.lines) == 6 and "reached its 5 stored log lines" in first.lines[5].line
    assert within_cap(batch, counts, "ct-1", 5).lines == []  # nothing more, ever
    assert len(within_cap(batch, counts, "ct-2", 5).lines) == 6  # per container


def test_a_worker_cannot_write_series_of_its_own(server: ServerUnderTest) -> None:
    """A tenant's function reports its outputs itself: an error code of its choosing became
    a series (12,000 of them, kept forever), and one holding a quote and a line feed wrote
    whole samples (a second crucible_hosts{state="ready"})."""
    admin = server.tenant("ops", Scope.ADMIN).token
    forged = 'x"} 1\ncrucible_hosts{state="ready"} 424242\n# evil'
    for i in range(50):
        server.state.metrics.finished("failed", 10.0**12, f"code{i:05d}")
    server.state.metrics.finished("failed", 1.0, forged)
    text = server.request("GET", "/metrics", token=admin).text
    assert _value(text, 'crucible_call_errors_total{code="other"}') == 51
    assert "424242" not in text and "code00001" not in text
    assert _value(text, 'crucible_call_exec_seconds_bucket{le="+Inf"}') == 51
    assert _value(text, "crucible_call_exec_seconds_sum{}") <= 51 * 7 * 86_400
    assert [ln for ln in text.splitlines() if ln.startswith("crucible_hosts{")] == [
        f'crucible_hosts{{state="{state}"}} 0' for state in ("lost", "offline", "ready")
    ]


def test_label_values_are_escaped() -> None:
    from crucible.server.metrics import _label_value

    assert _label_value('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
