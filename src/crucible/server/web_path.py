"""The web gateway's state in this process: resolved endpoints, requests relayed in memory
and warm containers' channels.

Written and read by the gateway (api/gateway.py, api/web_calls.py, api/web_channel.py), the
container and host routes that deliver or end relayed requests, and the scheduler leader,
which counts relayed requests as running. ``endpoints`` are cleared by a deployment change
here and stale for at most a second on other replicas; ``relay`` and ``channels`` hold only
requests and containers connected to this process; ``other_replicas`` is kept by the
elector (server/leadership.py), and the in-memory fast path runs only while it is 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from crucible.server.dispatch import Dispatcher
from crucible.server.wakeups import Wakeups
from crucible.server.web_channel import WebChannels
from crucible.server.web_relay import WebRelay

__all__ = ["WebPath"]


@dataclass
class WebPath:
    dispatcher: Dispatcher
    wakeups: Wakeups
    # The web gateway's resolved endpoints: (account, deployment, function) names ->
    # (valid until monotonic s, owner account id, function row). Cleared by deployment
    # changes here; another replica's change is seen within the short TTL.
    endpoints: dict[tuple[str, str, str], tuple[float, str, Any]] = field(default_factory=dict)
    # Web requests handed to a parked container in memory, with no call row (web_relay.py).
    relay: WebRelay = field(default_factory=WebRelay)
    # Other replicas alive on this store (the elector counts them, server/leadership.py). The
    # web gateway's in-memory fast path (server/web_relay.py) runs only while this is 0: a
    # container's next requests may reach another replica behind a balancer.
    other_replicas: int = 0

    @cached_property
    def channels(self) -> WebChannels:
        """Warm web containers' channels to this process (web_channel.py). A container whose
        channel is full is handed no calls; when it frees a slot, its exchange looks again."""
        channels = WebChannels(self.relay)
        self.dispatcher.saturated = channels.saturated
        channels.on_free = lambda container_id: self.wakeups.notify_many(
            [f"container:{container_id}"]
        )
        return channels
