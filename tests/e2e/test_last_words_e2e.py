"""What a function printed just before its process died (``os._exit``, a segfault) is in
its logs, tied to its call, once: the worker sends lines about every half second, so those
lines never arrived, and they are the ones that explain the crash. The agent reports a
crashed container's last lines and the server adds those it does not have."""

from __future__ import annotations

from collections import Counter

import pytest

import crucible

import app_last_words
from harness import wait_for


@pytest.mark.parametrize("how", ["exit", "segfault"])
def test_lines_printed_just_before_a_crash_are_in_the_logs(builder, how: str) -> None:
    with app_last_words.app.run(client=builder):
        call = app_last_words.die.spawn(how)
        with pytest.raises(crucible.Error) as failed:
            call.get(timeout=120)
        assert f"and on stderr before {how}" in str(failed.value)  # the error's last line
        app_id = app_last_words.app.app_id
        assert app_id is not None

        def lines() -> list[dict[str, object]]:
            return list(builder.get(f"/v1/apps/{app_id}/logs")["lines"])

        wait_for(
            lambda: any(f"and on stderr before {how}" == x["line"] for x in lines()),
            30,
            "the last lines in the logs",
        )
    got = lines()
    counts = Counter(str(x["line"]) for x in got)
    for text in (f"early line of {how}", f"last words before {how}", f"and on stderr before {how}"):
        assert counts[text] == 1, got  # each once: the lines that did arrive are not repeated
    last = [x for x in got if x["line"] == f"last words before {how}"]
    assert last[0]["call_id"] == call.object_id, last
