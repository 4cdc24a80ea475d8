"""The autoscaler with real processes: min_containers keeps a container warm before any
call and after the scale-down window, and the scheduler explains its decisions in the log."""

from __future__ import annotations

import time

import pytest

import crucible

import app_scaling
from harness import Exchange, wait_for


def test_min_containers_are_kept_warm_and_explained(exchange: Exchange, builder) -> None:
    with app_scaling.app.run(client=builder):
        wait_for(lambda: exchange.host("host-a")["containers"] == 1, 30, "a warm container")
        first = app_scaling.warm.remote()
        time.sleep(2.5)  # past the 1 s scale-down window: the minimum stays
        assert exchange.host("host-a")["containers"] == 1
        assert app_scaling.warm.remote() == first
        log = exchange.log("server")
        assert "wants 1 container(s): min_containers=1" in log
    wait_for(lambda: exchange.host("host-a")["containers"] == 0, 30, "stopped with the app")


def test_bad_scaling_options_are_refused_at_decoration() -> None:
    app = crucible.App("bad-scaling")
    with pytest.raises(crucible.InvalidRequestError, match="min_containers=3 is above"):
        app.function(min_containers=3, max_containers=2)
    with pytest.raises(crucible.InvalidRequestError, match="buffer_containers"):
        app.function(buffer_containers=-1)
