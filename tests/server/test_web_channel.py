"""Web channels in memory (server/web_channel.py): a request goes on a channel with a free
slot, its frames reach the relayed request in order, the reader's progress is acknowledged
to the worker, a closed channel ends its requests as lost, and a draining one takes nothing
new."""

from __future__ import annotations

import asyncio

from crucible.protocol.web_channel import ACK_EVERY, BUSY, decode_frame, encode_frame
from crucible.server.web_channel import Channel, WebChannels
from crucible.server.web_relay import WebRelay, relayed_response, rest_of


class _Wire:
    """What the server sent on a channel, decoded."""

    def __init__(self) -> None:
        self.frames: list[tuple[dict[str, object], bytes]] = []

    async def send(self, message: bytes) -> None:
        self.frames.append(decode_frame(message))


def _channel(channels: WebChannels, container: str = "co-1", slots: int = 2) -> _Wire:
    wire = _Wire()
    channels.attach(Channel(container, "fn-1", slots, wire.send))
    return wire


def test_a_request_and_its_streamed_response() -> None:
    async def go() -> None:
        relay = WebRelay()
        channels = WebChannels(relay)
        wire = _channel(channels)
        channel = channels.free("fn-1")
        assert channel is not None and channels.free("fn-other") is None
        http = {"method": "POST", "path": "/x", "query": "", "headers": []}
        relayed = await channels.hand(channel, "acct", http, b"body", 5.0)
        [(header, data)] = wire.frames
        assert header["t"] == "req" and header["id"] == relayed.id and data == b"body"
        assert header["http"] == http
        assert relay.in_flight() == {"fn-1": 1} and relay.busy() == {"co-1"}

        n = 2 * ACK_EVERY  # parts read while the response goes on
        start = {"t": "start", "id": relayed.id, "status": 201, "headers": [["x-a", "1"]]}
        channels.received(channel, encode_frame({**start, "more": True}, b"p0"))
        for i in range(1, n + 1):
            frame = encode_frame({"t": "body", "id": relayed.id, "more": True}, b"p%d" % i)
            channels.received(channel, frame)
        answer = await relayed_response(relayed)
        assert answer is not None and answer.status == 201
        assert answer.headers == [("x-a", "1")]
        got = [await anext(answer.body) for _ in range(n)]
        assert got == [b"p%d" % i for i in range(n)]
        await asyncio.sleep(0)  # the acknowledgements' tasks run
        acks = [h["n"] for h, _ in wire.frames if h["t"] == "ack"]
        assert acks == [ACK_EVERY, 2 * ACK_EVERY]
        channels.received(channel, encode_frame({"t": "body", "id": relayed.id, "more": False}))
        assert [chunk async for chunk in answer.body] == [b"p%d" % n, b""]
        assert answer.state == "succeeded"
        assert relay.in_flight() == {} and not channel.running

    asyncio.run(go())


def test_a_whole_response_in_one_frame_and_an_error() -> None:
    async def go() -> None:
        relay = WebRelay()
        channels = WebChannels(relay)
        _channel(channels)
        channel = channels.free("fn-1")
        assert channel is not None
        http = {"method": "GET", "path": "/", "query": "", "headers": []}
        relayed = await channels.hand(channel, "acct", http, b"", 5.0)
        frame = {"t": "start", "id": relayed.id, "status": 200, "headers": [], "more": False}
        channels.received(channel, encode_frame(frame, b"all of it"))
        answer = await relayed_response(relayed)
        assert answer is not None and answer.whole == b"all of it"
        assert answer.state == "succeeded"

        failing = await channels.hand(channel, "acct", http, b"", 5.0)
        error = {"t": "error", "id": failing.id, "code": "function_error", "message": "boom"}
        channels.received(channel, encode_frame(error))
        answer = await relayed_response(failing)
        assert answer is not None and answer.status is None
        assert answer.state == "failed" and answer.error_code == "function_error"

    asyncio.run(go())


def test_slots_least_loaded_first_and_drain() -> None:
    async def go() -> None:
        relay = WebRelay()
        channels = WebChannels(relay)
        _channel(channels, "co-1", slots=1)
        _channel(channels, "co-2", slots=2)
        http = {"method": "GET", "path": "/", "query": "", "headers": []}
        taken = []
        for _ in range(3):
            channel = channels.free("fn-1")
            assert channel is not None
            taken.append(channel.container_id)
            await channels.hand(channel, "acct", http, b"", 5.0)
        assert sorted(taken) == ["co-1", "co-2", "co-2"]
        assert channels.free("fn-1") is None and channels.serves("fn-1")

        one = channels._by_function["fn-1"]["co-1"]
        channels.received(one, encode_frame({"t": "drain"}))
        first = next(iter(one.running.values()))
        channels.received(
            one,
            encode_frame(
                {"t": "start", "id": first.id, "status": 200, "headers": [], "more": False}
            ),
        )
        assert channels.free("fn-1") is None  # co-1 drains: no new requests for it

    asyncio.run(go())


def test_a_closed_channel_ends_its_requests_as_lost() -> None:
    async def go() -> None:
        relay = WebRelay()
        channels = WebChannels(relay)
        _channel(channels)
        channel = channels.free("fn-1")
        assert channel is not None
        http = {"method": "GET", "path": "/", "query": "", "headers": []}
        relayed = await channels.hand(channel, "acct", http, b"", 5.0)
        channels.detach(channel)
        answer = await relayed_response(relayed)
        assert answer is not None and answer.status is None
        assert answer.state == "lost" and answer.error_code == "container_exited"
        assert not channels.serves("fn-1") and relay.in_flight() == {}

    asyncio.run(go())


def test_a_channel_gone_before_the_request_was_sent_hands_nothing() -> None:
    async def go() -> None:
        relay = WebRelay()
        channels = WebChannels(relay)

        async def broken(_message: bytes) -> None:
            raise ConnectionError("gone")

        channels.attach(Channel("co-1", "fn-1", 1, broken))
        channel = channels.free("fn-1")
        assert channel is not None
        http = {"method": "GET", "path": "/", "query": "", "headers": []}
        relayed = await channels.hand(channel, "acct", http, b"", 5.0)
        assert await relayed_response(relayed) is None  # the caller makes it a call
        assert not channels.serves("fn-1")

    asyncio.run(go())


def test_an_abandoned_response_is_acknowledged_as_it_comes() -> None:
    async def go() -> None:
        relay = WebRelay()
        channels = WebChannels(relay)
        wire = _channel(channels)
        channel = channels.free("fn-1")
        assert channel is not None
        http = {"method": "GET", "path": "/", "query": "", "headers": []}
        relayed = await channels.hand(channel, "acct", http, b"", 5.0)
        start = {"t": "start", "id": relayed.id, "status": 200, "headers": [], "more": True}
        channels.received(channel, encode_frame(start, b"x"))
        answer = await relayed_response(relayed)
        assert answer is not None
        relay.abandon(relayed)  # the client left
        for _ in range(2 * ACK_EVERY):
            channels.received(channel, encode_frame({"t": "body", "id": relayed.id, "more": True}))
        await asyncio.sleep(0)
        acks = [h["n"] for h, _ in wire.frames if h["t"] == "ack"]
        assert acks and acks[-1] >= 2 * ACK_EVERY  # the worker is never held back

    asyncio.run(go())


def test_reading_on_after_the_client_left() -> None:
    """The OpenAI API reads on from where the client's reader stopped, for the usage at the
    end of the stream (api/openai.py): the rest of the frames reach it."""

    async def go() -> None:
        relay = WebRelay()
        channels = WebChannels(relay)
        _channel(channels)
        channel = channels.free("fn-1")
        assert channel is not None
        http = {"method": "POST", "path": "/v1/chat/completions", "query": "", "headers": []}
        relayed = await channels.hand(channel, "acct", http, b"{}", 5.0)
        start = {"t": "start", "id": relayed.id, "status": 200, "headers": [], "more": True}
        channels.received(channel, encode_frame(start, b"token 1"))
        answer = await relayed_response(relayed)
        assert answer is not None and await anext(answer.body) == b"token 1"
        relay.abandon(relayed)
        rest = rest_of(relay, relayed)
        for part, more in ((b"token 2", True), (b"usage", False)):
            frame = encode_frame({"t": "body", "id": relayed.id, "more": more}, part)
            channels.received(channel, frame)
        assert [chunk async for chunk in rest] == [b"token 2", b"usage"]
        assert not channel.running

    asyncio.run(go())


def test_a_request_the_worker_sends_back_busy_becomes_a_call() -> None:
    async def go() -> None:
        relay = WebRelay()
        channels = WebChannels(relay)
        _channel(channels, slots=1)
        channel = channels.free("fn-1")
        assert channel is not None
        http = {"method": "GET", "path": "/", "query": "", "headers": []}
        relayed = await channels.hand(channel, "acct", http, b"", 5.0)
        busy = {"t": "error", "id": relayed.id, "code": BUSY, "message": "busy"}
        channels.received(channel, encode_frame(busy))
        assert await relayed_response(relayed) is None  # the gateway makes it a call
        assert channels.free("fn-1") is channel and relay.in_flight() == {}

    asyncio.run(go())


def test_a_freed_slot_wakes_the_exchange_only_when_work_was_turned_away() -> None:
    """A full channel's container is handed no calls; its exchange is told when a slot
    frees only if work was turned away meanwhile (else each request cost it a store read)."""

    async def go() -> None:
        relay = WebRelay()
        channels = WebChannels(relay)
        woken: list[str] = []
        channels.on_free = woken.append
        _channel(channels, "co-1", slots=1)
        http = {"method": "GET", "path": "/", "query": "", "headers": []}

        async def one(turn_away: bool) -> None:
            channel = channels.free("fn-1")
            assert channel is not None
            relayed = await channels.hand(channel, "acct", http, b"", 5.0)
            if turn_away:  # a call came meanwhile: the dispatcher asked, and passed it by
                assert channels.saturated("co-1")
            frame = {"t": "start", "id": relayed.id, "status": 200, "headers": [], "more": False}
            channels.received(channel, encode_frame(frame, b"ok"))

        await one(turn_away=False)
        assert woken == []
        await one(turn_away=True)
        assert woken == ["co-1"]
        await one(turn_away=False)
        assert woken == ["co-1"]
        assert not channels.saturated("co-1")

    asyncio.run(go())


def test_calls_handed_to_the_exchange_take_slots_until_the_worker_reports_them_done() -> None:
    """A container that takes one input at a time, handed a call on its exchange: from that
    moment (before its worker knows of it) no request goes on its channel, and its exchange
    takes no second call; once the worker says it holds none, both are free again."""
    channels = WebChannels(WebRelay())
    _channel(channels, slots=1)
    assert channels.free("fn-1") is not None and not channels.saturated("co-1")
    channels.calls_given("co-1", 1)  # handed by a submission, not yet received
    assert channels.free("fn-1") is None and channels.saturated("co-1")
    channels.calls_held("co-1", 1)  # the worker's exchange: it holds it, running
    assert channels.free("fn-1") is None
    channels.calls_given("co-1", -1)  # its output reported (the reporter says no more)
    assert channels.free("fn-1") is not None and not channels.saturated("co-1")
    freed: list[str] = []
    channels.on_free = freed.append
    channels.calls_given("co-1", 1)
    assert channels.saturated("co-1")  # the exchange is turned away meanwhile
    channels.calls_held("co-1", 2)  # a count behind its reporter's outputs raises nothing
    channels.calls_held("co-1", 0)  # the next ask: nothing in hand
    assert channels.free("fn-1") is not None
    assert freed == ["co-1"]  # the exchange turned away looks again
    channels.calls_given("co-1", -3)  # never below none
    assert channels.free("fn-1") is not None
    channels.calls_given("co-other", 1)  # no channel: nothing to count
