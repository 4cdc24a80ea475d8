"""In a sandbox too, the lines a function printed just before its process died are in its
logs (the sandbox runtime reports a crashed container's last lines like the process one;
tests/e2e/test_last_words_e2e.py)."""

from __future__ import annotations

from typing import Any

import pytest

import crucible

import app_last_words
from harness import Exchange, wait_for


def test_a_segfault_s_last_lines_are_in_the_logs(sandboxed: Exchange, tenant: Any) -> None:
    with app_last_words.app.run(client=tenant):
        call = app_last_words.die.spawn("segfault")
        with pytest.raises(crucible.Error):
            call.get(timeout=120)
        app_id = app_last_words.app.app_id

        def last() -> list[Any]:
            got = tenant.get(f"/v1/apps/{app_id}/logs")["lines"]
            return [x for x in got if x["line"] == "last words before segfault"]

        wait_for(lambda: len(last()) == 1, 30, "the last lines in the logs")
        assert last()[0]["call_id"] == call.object_id
