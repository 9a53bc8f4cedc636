"""Bad input and overload: always a problem+json answer, never a 500, never half-made work."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import mtrd.web.routes
import pytest
import pytest_twisted
from mtrd.app import QuietSite
from mtrd.tracing.events import Event
from mtrd.tracing.model import Hop
from mtrd.tracing.policy import TargetPolicy, parse_networks
from mtrd.web.access import Edge
from mtrd.web.limits import EdgeLimits
from mtrd.web.sse import EventStream
from twisted.internet import reactor as global_reactor
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread

from tests.openapi import validate_response
from tests.test_http import QUICK, Client, open_stream

reactor: Any = global_reactor


def problem(answer: Any) -> dict[str, Any]:
    assert answer.header("content-type") == "application/problem+json"
    return dict(answer.json())


# -- bodies -------------------------------------------------------------------------------


async def post_raw(client: Client, raw: bytes) -> Any:
    return await client.request(
        "POST", "/traces", data=raw, headers={"Content-Type": "application/json"}
    )


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"x" * (64 * 1024 + 1), 413),
        (b"[" * 40 + b"]" * 40, 400),
        (b'{"target": "203.0.113.7", "a": ' + b"[" * 20 + b"]" * 20 + b"}", 400),
        (b'{"target": "\xff\xfe"}', 400),
        (b'{"target": "203.0.113.7"\x00}', 400),
        (b'{"target": "203.0.113.7\\u0000"}', 422),
        (b'{"target": "203.0.113.7", "probes": "3"}', 422),
        (b'{"target": "203.0.113.7", "probes": 3.5}', 422),
        (b'{"target": "203.0.113.7", "port": null}', 422),
        (b'{"target": "203.0.113.7", "probes": 1e400}', 422),
        (b"", 400),
        (b"null", 422),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_bodies_get_a_problem_and_create_nothing(raw: bytes, status: int) -> None:
    """Oversized, deeply nested, invalid UTF-8, NUL and mistyped bodies: a problem, no trace."""
    client = Client()
    answer = await post_raw(client, raw)
    assert answer.code == status, answer.body
    assert problem(answer)["status"] == status
    assert len(client.store) == 0
    assert client.network.sent == []


@pytest_twisted.ensureDeferred
async def test_nul_and_bad_utf8_in_paths_are_problems() -> None:
    """A NUL in a trace id is an unknown trace; a URL that is not UTF-8 is a 400."""
    client = Client()
    for path, status in [
        ("/traces/%00abc", 404),
        ("/traces/%ff%fe", 400),
        ("/traces/" + "a" * 2000, 404),
    ]:
        answer = await client.request("GET", path)
        assert answer.code == status, path
        assert answer.header("content-type") == "application/problem+json"


# -- target policy --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_forbidden_literal_target_is_403_naming_the_rule() -> None:
    """A literal the policy refuses is 403 before anything is probed."""
    client = Client(policy=TargetPolicy(deny=parse_networks("203.0.113.0/28")))
    answer = await client.post_trace(QUICK)
    assert answer.code == 403
    body = problem(answer)
    assert body["errors"] == [{"field": "target", "message": "deny 203.0.113.0/28"}]
    assert client.network.sent == []


@pytest_twisted.ensureDeferred
async def test_multicast_target_is_403_by_default() -> None:
    """The built-in rules refuse a multicast target."""
    answer = await Client().post_trace({**QUICK, "target": "224.0.0.5"})
    assert answer.code == 403
    assert "multicast" in problem(answer)["detail"]


@pytest_twisted.ensureDeferred
async def test_hostname_resolving_to_a_forbidden_address_fails_before_probing() -> None:
    """The policy is checked on the resolved address: the trace fails, nothing is sent."""
    client = Client(policy=TargetPolicy(allow=parse_networks("198.51.100.0/24")))
    answer = await client.post_trace({**QUICK, "target": "target.example"})
    assert answer.code == 202
    trace = (await client.request("GET", answer.header("location") or "")).json()
    assert trace["status"] == "failed"
    assert trace["error"]["type"] == "forbidden-target"
    assert client.network.sent == []


# -- overload -------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_full_queue_is_429_and_keeps_what_was_accepted() -> None:
    """Past the running and queued caps, POST is 429; accepted traces still complete."""
    client = Client(max_running=1, max_queued=1)
    first = (await client.post_trace(QUICK)).json()["id"]
    second = (await client.post_trace(QUICK)).json()["id"]
    refused = await client.post_trace(QUICK)
    assert refused.code == 429
    assert int(refused.header("retry-after") or 0) >= 1
    client.run_for(4)
    for trace_id in (first, second):
        trace = (await client.request("GET", f"/traces/{trace_id}")).json()
        assert trace["status"] == "completed"


@pytest_twisted.ensureDeferred
async def test_saturated_engine_is_429() -> None:
    """Too many probes waiting for a worker: new traces get 429."""
    client = Client(limits=EdgeLimits(max_probes_waiting=10))
    client.pool.queued = 10
    answer = await client.post_trace(QUICK)
    assert (answer.code, problem(answer)["type"]) == (429, "urn:mtrd:problem:engine-saturated")


@pytest_twisted.ensureDeferred
async def test_subscriber_caps_per_trace_and_in_all() -> None:
    """Streams beyond the per-trace or total cap get 429."""
    client = Client(limits=EdgeLimits(max_subscribers=3, max_subscribers_per_trace=2))
    one = (await client.post_trace(QUICK)).json()["id"]
    two = (await client.post_trace(QUICK)).json()["id"]
    await open_stream(client, one)
    await open_stream(client, one)
    third = await client.request("GET", f"/traces/{one}/events")
    assert third.code == 429
    await open_stream(client, two)
    fourth = await client.request("GET", f"/traces/{two}/events")
    assert (fourth.code, fourth.header("retry-after")) == (429, "5")


# -- a subscriber that stops reading ---------------------------------------------------------


@attrs.define
class FakeStreamRequest:
    """Just enough of a twisted.web request for an EventStream."""

    written: list[bytes] = attrs.Factory(list)
    producer: Any = None
    aborted: bool = False
    channel: object = True

    @property
    def transport(self) -> Any:
        return self

    def registerProducer(self, producer: Any, streaming: bool) -> None:  # noqa: N802
        self.producer = producer

    def unregisterProducer(self) -> None:  # noqa: N802
        self.producer = None

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def abortConnection(self) -> None:  # noqa: N802
        self.aborted = True


def stream(request: FakeStreamRequest, closed: list[bool], backlog: int = 2000) -> EventStream:
    return EventStream(
        request,
        trace_id="t",
        clock=Clock(),
        heartbeat=15,
        max_backlog=backlog,
        on_close=lambda: closed.append(True),
    )


def test_paused_subscriber_gets_what_waited_when_it_reads_again() -> None:
    """Events sent while the client's socket is full are written once it drains."""
    request, closed = FakeStreamRequest(), []
    subscriber = stream(request, closed)
    subscriber.pauseProducing()
    subscriber.send(Event(5, "hop", Hop(ttl=1)))
    assert not any(b"id: 5" in w for w in request.written)
    subscriber.resumeProducing()
    assert any(b"id: 5" in w for w in request.written)
    assert closed == []


def test_subscriber_that_stops_reading_is_disconnected_past_the_bound() -> None:
    """A client whose backlog passes the bound is cut off; memory stays bounded."""
    request, closed = FakeStreamRequest(), []
    subscriber = stream(request, closed, backlog=2000)
    subscriber.pauseProducing()
    for n in range(100):
        subscriber.send(Event(n, "hop", Hop(ttl=1)))
        if subscriber.closed:
            break
    assert request.aborted
    assert closed == [True]
    assert n < 20


@pytest_twisted.ensureDeferred
async def test_a_stalled_subscriber_does_not_slow_the_trace_or_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One paused stream is dropped while the trace and another stream carry on."""
    streams: list[EventStream] = []

    class Recorded(EventStream):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            streams.append(self)

    monkeypatch.setattr(mtrd.web.routes, "EventStream", Recorded)
    client = Client(limits=EdgeLimits(max_sse_backlog=1500))
    trace_id = (await client.post_trace({**QUICK, "probes": 5})).json()["id"]
    healthy = await open_stream(client, trace_id)
    stalled = await client.stub.get(f"http://mtrd.test/traces/{trace_id}/events")
    record = client.store.get(trace_id)
    assert record is not None
    assert record.channel.subscribers == 2
    assert stalled.code == 200
    streams[1].pauseProducing()  # its client stopped reading: the socket buffer is full
    client.run_for(5)
    assert healthy.events()[-1]["event"] == "done"
    assert streams[1].closed
    assert client.api.sse_subscribers == 0
    assert record.trace.status.value == "completed"


# -- framing limits on a real socket -----------------------------------------------------------


@asynccontextmanager
async def listening(client: Client) -> AsyncIterator[int]:
    site = QuietSite(Edge(client.api.resource(), reactor, None))
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    try:
        yield port.getHost().port
    finally:
        await port.stopListening()


def exchange(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(raw)
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /traces/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET /traces HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 17000 + b"\r\n\r\n", 431),
        (b"GET /traces HTTP/1.1\r\n" + b"X-A: aaaaaaaaaa\r\n" * 1200 + b"\r\n", 431),
        (b"NONSENSE\r\n\r\n", 400),
    ],
)
@pytest_twisted.ensureDeferred
async def test_oversized_urls_and_headers_are_problem_answers(raw: bytes, status: int) -> None:
    """Framing limits answer problem+json with 414, 431 or 400, then close."""
    async with listening(Client()) as port:
        answer = await deferToThread(exchange, port, raw)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), head
    assert b"Content-Type: application/problem+json" in head
    document = json.loads(body)
    assert document["status"] == status
    validate_response(
        "GET", "/traces", 400, "application/problem+json", body
    ) if status == 400 else None
