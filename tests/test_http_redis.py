"""The HTTP edge in Redis mode: two fronts ("replicas") sharing one real redis-server.

Each front is the real Klein resource over StubTreq, answering from :class:`SharedTraces`;
the runner is simulated by writing to Redis with :class:`RedisTraceStore` directly.
Every response is checked against openapi.yaml.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import pytest_twisted
import treq
from mtrd.tracing.jobs import TraceJobs
from mtrd.tracing.model import Hop, Responder, Trace, TraceRequest, TraceStatus, TraceTarget
from mtrd.tracing.redis.connection import RedisConnection
from mtrd.tracing.redis.front import SharedTraces
from mtrd.tracing.redis.queue import RedisWorkQueue
from mtrd.tracing.redis.replicas import RedisReplicas, ReplicaBeat
from mtrd.tracing.redis.store import RedisTraceStore
from mtrd.tracing.redis.tenants import RedisTenants
from mtrd.tracing.store import StoreLimits, TraceStore
from mtrd.tracing.tenants import TenantLimits
from mtrd.tracing.tracer import Tracer, new_trace_id
from mtrd.web.auth import AuthGuard, BearerAuth
from mtrd.web.limits import EdgeLimits
from mtrd.web.routes import Api
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from tests.openapi import validate_response
from tests.redis_server import RedisServer
from tests.redis_support import FAST, connected, sleep, wait_until
from tests.test_http import BASE, Answer, FakePool, _disconnect, parse_events

pytestmark = pytest.mark.redis  # a real redis-server, started by the test

VANTAGE = "fra"
RUNNER = "runner-1"
QUICK = {"target": "203.0.113.7", "probes": 2, "interval": 0.5, "max_ttl": 8}


def _new_trace(request: TraceRequest) -> Trace:
    return Trace(
        id=new_trace_id(),
        status=TraceStatus.QUEUED,
        request=request,
        target=TraceTarget(request.target),
        created_at=reactor.seconds(),  # type: ignore[attr-defined]
    )


class Front:
    """One replica's HTTP side on the shared Redis."""

    def __init__(
        self,
        connection: RedisConnection,
        name: str,
        *,
        max_queued: int = 100,
        max_traces: int = 100,
        limits: EdgeLimits | None = None,
        tenant_limits: TenantLimits | None = None,
        auth: BearerAuth | None = None,
        webhooks: Any = None,
    ) -> None:
        """With ``tenant_limits`` the fronts count tenants in Redis; with ``auth`` the
        resource is behind the auth guard. ``queued`` lists the vantage of each trace
        queued here (what the replica's runner is told)."""
        self.connection = connection
        self.queued: list[str] = []
        self.store = RedisTraceStore(
            connection,
            reactor,  # type: ignore[arg-type]
            StoreLimits(ttl=600, max_traces=max_traces),
        )
        self.replicas = RedisReplicas(connection)
        self.shared = SharedTraces(
            redis=connection,
            store=self.store,
            replicas=self.replicas,
            new_trace=_new_trace,
            clock=reactor,  # type: ignore[arg-type]
            vantage=VANTAGE,
            replica=name,
            max_queued=max_queued,
            tenants=None
            if tenant_limits is None
            else RedisTenants(connection, self.store, tenant_limits),
            on_queued=self.queued.append,
        )
        self.shared.startService()
        memory = TraceStore(reactor)  # type: ignore[arg-type]
        unused = Tracer(reactor, None, None)  # type: ignore[arg-type]
        self.api = Api(
            pool=FakePool(),
            jobs=TraceJobs(unused, memory),
            store=memory,
            clock=reactor,  # type: ignore[arg-type]
            vantage=VANTAGE,
            limits=limits or EdgeLimits(),
            shared=self.shared,
            store_health=connection.health,
            webhooks=webhooks,
        )
        resource: Any = self.api.resource()
        self.stub = StubTreq(resource if auth is None else AuthGuard(resource, auth))

    async def pumped(self, d: Deferred[Any], seconds: float = 5.0) -> Any:
        """The result of ``d``, flushing the stub while the real reactor runs."""
        results: list[Any] = []
        d.addBoth(results.append)
        deadline = time.monotonic() + seconds
        while not results:
            assert time.monotonic() < deadline, "no answer in time"
            self.stub.flush()
            await sleep(0.01)
        result = results[0]
        if isinstance(result, Failure):
            result.raiseException()
        return result

    async def request(self, method: str, path: str, **kwargs: Any) -> Answer:
        response = await self.pumped(self.stub.request(method, BASE + path, **kwargs))
        body = await self.pumped(response.content())
        answer = Answer(response.code, response.headers, body)
        validate_response(
            method, path.split("?", maxsplit=1)[0], answer.code, answer.header("content-type"), body
        )
        return answer

    async def post_trace(self, body: object) -> Answer:
        return await self.request(
            "POST",
            "/traces",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )


@attrs.define
class Pair:
    """Two fronts on one Redis, a runner beating for the vantage."""

    a: Front
    b: Front
    server: RedisServer

    async def beat(self, replica: str = RUNNER, capacity: int = 4) -> None:
        # As a runner does: its vantage's queue exists before its first beat.
        await RedisWorkQueue(self.a.connection, VANTAGE, replica).create()
        await self.a.replicas.beat(
            ReplicaBeat(replica, VANTAGE, capacity, running=0, ready=True),
            reactor.seconds(),  # type: ignore[attr-defined]
        )


@pytest_twisted.async_yield_fixture
async def pair(redis_server: RedisServer) -> AsyncIterator[Pair]:
    """Fronts A and B on their own connections to one fresh server, a live runner."""
    first = await connected(redis_server)
    second = await connected(redis_server)
    fronts = Pair(Front(first, "front-a"), Front(second, "front-b"), redis_server)
    await fronts.beat()
    yield fronts
    for front in (fronts.a, fronts.b):
        front.shared.stopService()
        front.stub.flush()
    await first.stopService()
    await second.stopService()


async def _started(front: Front, trace_id: str) -> Trace:
    """What a runner does on taking a trace: take it, save it running."""
    assert (await front.store.take_many([trace_id], RUNNER))[0]
    stored = await front.store.get(trace_id)
    assert stored is not None
    running = attrs.evolve(stored.trace, status=TraceStatus.RUNNING, started_at=1.0)
    assert await front.store.save(running, runner=RUNNER)
    return running


@pytest_twisted.ensureDeferred
async def test_post_on_one_replica_reads_on_the_other(pair: Pair) -> None:
    """A trace POSTed on A is queued for its vantage with no replica yet, and B shows it."""
    posted = await pair.a.post_trace(QUICK)
    assert posted.code == 202
    body = posted.json()
    assert (body["status"], body["vantage"], body["replica"]) == ("queued", VANTAGE, None)
    assert posted.header("location") == f"/traces/{body['id']}"
    shown = await pair.b.request("GET", f"/traces/{body['id']}")
    assert shown.code == 200
    assert shown.json() == body


@pytest_twisted.ensureDeferred
async def test_etag_is_the_redis_version_on_every_replica(pair: Pair) -> None:
    """Both replicas give one ETag; If-None-Match is 304 until a save changes the trace."""
    trace_id = (await pair.a.post_trace(QUICK)).json()["id"]
    etag = (await pair.a.request("GET", f"/traces/{trace_id}")).header("etag")
    assert etag == f'"{trace_id}.1"'
    same = await pair.b.request("GET", f"/traces/{trace_id}", headers={"If-None-Match": etag})
    assert same.code == 304
    await _started(pair.a, trace_id)
    changed = await pair.b.request("GET", f"/traces/{trace_id}", headers={"If-None-Match": etag})
    assert changed.code == 200
    assert changed.header("etag") != etag
    assert (changed.json()["status"], changed.json()["replica"]) == ("running", RUNNER)


@pytest_twisted.ensureDeferred
async def test_text_report_from_the_other_replica(pair: Pair) -> None:
    """Accept: text/plain on B gives the report of a trace POSTed on A."""
    trace_id = (await pair.a.post_trace(QUICK)).json()["id"]
    answer = await pair.b.request("GET", f"/traces/{trace_id}", headers={"Accept": "text/plain"})
    assert answer.code == 200
    assert answer.header("content-type") == "text/plain; charset=utf-8"
    assert "203.0.113.7" in answer.body.decode()


@pytest_twisted.ensureDeferred
async def test_listing_is_newest_first_across_replicas_with_a_cursor(pair: Pair) -> None:
    """Traces POSTed on both replicas list newest first on either, a page at a time."""
    ids = [(await front.post_trace(QUICK)).json()["id"] for front in (pair.a, pair.b, pair.a)]
    first = await pair.b.request("GET", "/traces?limit=2")
    assert [t["id"] for t in first.json()["traces"]] == ids[::-1][:2]
    cursor = first.json()["next_cursor"]
    second = await pair.a.request("GET", f"/traces?limit=2&cursor={cursor}")
    assert [t["id"] for t in second.json()["traces"]] == ids[:1]
    assert second.json()["next_cursor"] is None


@pytest_twisted.ensureDeferred
async def test_listing_names_the_replica_once_one_has_taken_the_trace(pair: Pair) -> None:
    """In the list on B a queued trace has no replica; once A's runner takes it, it has."""
    trace_id = (await pair.a.post_trace(QUICK)).json()["id"]
    queued = (await pair.b.request("GET", "/traces")).json()["traces"]
    assert [(t["id"], t["replica"]) for t in queued] == [(trace_id, None)]
    await _started(pair.a, trace_id)
    running = (await pair.b.request("GET", "/traces")).json()["traces"]
    assert [(t["id"], t["replica"]) for t in running] == [(trace_id, RUNNER)]


@pytest_twisted.ensureDeferred
async def test_bad_cursor_is_422_in_redis_mode(pair: Pair) -> None:
    """A cursor that is not a number is 422 naming cursor."""
    answer = await pair.a.request("GET", "/traces?cursor=nope")
    assert answer.code == 422
    assert [e["field"] for e in answer.json()["errors"]] == ["cursor"]


@pytest_twisted.ensureDeferred
async def test_delete_of_a_queued_trace_cancels_it_then_removes_it(pair: Pair) -> None:
    """DELETE on B of a queued trace is 200 cancelled; again, 204; then it is gone."""
    trace_id = (await pair.a.post_trace(QUICK)).json()["id"]
    cancelled = await pair.b.request("DELETE", f"/traces/{trace_id}")
    assert cancelled.code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert (await pair.a.request("GET", f"/traces/{trace_id}")).json()["status"] == "cancelled"
    assert (await pair.a.request("DELETE", f"/traces/{trace_id}")).code == 204
    assert (await pair.b.request("GET", f"/traces/{trace_id}")).code == 404
    assert (await pair.b.request("DELETE", f"/traces/{trace_id}")).code == 404


@pytest_twisted.ensureDeferred
async def test_delete_of_a_running_trace_asks_its_runner(pair: Pair) -> None:
    """DELETE of a running trace sets the cancel field its runner reads, and answers 200."""
    trace_id = (await pair.a.post_trace(QUICK)).json()["id"]
    await _started(pair.a, trace_id)
    answer = await pair.b.request("DELETE", f"/traces/{trace_id}")
    assert answer.code == 200
    assert answer.json()["status"] == "running"
    cancel = await pair.a.connection.execute("HGET", pair.a.store.trace_key(trace_id), "cancel")
    assert cancel == b"1"


@pytest_twisted.ensureDeferred
async def test_the_runner_is_told_of_traces_queued_and_not_of_refused_ones(pair: Pair) -> None:
    """A queued trace tells this replica's runner its vantage (so it claims at once); a
    trace refused (no live replica) tells nothing."""
    assert (await pair.a.post_trace(QUICK)).code == 202
    assert (await pair.a.post_trace({**QUICK, "vantage": "nrt"})).code == 422
    assert (pair.a.queued, pair.b.queued) == ([VANTAGE], [])


@pytest_twisted.ensureDeferred
async def test_post_to_a_vantage_without_live_replicas_is_422(pair: Pair) -> None:
    """A vantage nobody beats for is 422 naming vantage and listing the live ones."""
    answer = await pair.a.post_trace({**QUICK, "vantage": "nrt"})
    assert answer.code == 422
    error = answer.json()["errors"][0]
    assert error["field"] == "vantage"
    assert "live vantage points: fra" in error["message"]


@pytest_twisted.ensureDeferred
async def test_a_post_refused_for_its_vantage_leaves_no_trace_and_no_queue_entry(
    pair: Pair,
) -> None:
    """A 422 for a vantage with no live replica takes back the trace and its queue entry
    that went to Redis in the same call."""
    assert (await pair.a.post_trace({**QUICK, "vantage": "nrt"})).code == 422
    redis = pair.a.connection
    assert await redis.execute("XLEN", "mtrd:vantage:{nrt}:queue") == 0
    assert await redis.execute("ZCARD", "mtrd:{index}:traces") == 0
    assert await redis.execute("ZCARD", "mtrd:{index}:active") == 0


@pytest_twisted.ensureDeferred
async def test_vantage_points_list_the_live_vantages(pair: Pair) -> None:
    """GET /vantage-points on either replica lists each live vantage with its replicas."""
    await pair.beat("runner-2", capacity=8)
    answer = await pair.b.request("GET", "/vantage-points")
    assert answer.json() == {
        "vantage_points": [
            {"name": VANTAGE, "replicas": 2, "capacity": 12, "running": 0, "ready": True}
        ]
    }


@asynccontextmanager
async def _alone(redis_server: RedisServer, **options: Any) -> AsyncIterator[Front]:
    """One front on its own connection, a runner beating for its vantage."""
    connection = await connected(redis_server)
    front = Front(connection, "front-a", **options)
    await RedisWorkQueue(connection, VANTAGE, RUNNER).create()
    await front.replicas.beat(
        ReplicaBeat(RUNNER, VANTAGE, 4, running=0, ready=True),
        reactor.seconds(),  # type: ignore[attr-defined]
    )
    try:
        yield front
    finally:
        front.shared.stopService()
        front.stub.flush()
        await connection.stopService()


@pytest_twisted.ensureDeferred
async def test_full_queue_is_429_and_stores_nothing(redis_server: RedisServer) -> None:
    """Past --max-queued for the deployment, POST is 429 with Retry-After, nothing kept."""
    async with _alone(redis_server, max_queued=1) as front:
        assert (await front.post_trace(QUICK)).code == 202
        refused = await front.post_trace(QUICK)
        assert refused.code == 429
        assert refused.json()["type"].endswith("queue-full")
        assert refused.header("retry-after") is not None
        listed = await front.request("GET", "/traces")
        assert len(listed.json()["traces"]) == 1


@pytest_twisted.ensureDeferred
async def test_store_full_of_active_traces_is_429(redis_server: RedisServer) -> None:
    """At the store cap with only active traces, POST is 429 store-full with Retry-After."""
    async with _alone(redis_server, max_traces=1) as front:
        assert (await front.post_trace(QUICK)).code == 202
        refused = await front.post_trace(QUICK)
        assert refused.code == 429
        assert refused.json()["type"].endswith("store-full")
        assert refused.header("retry-after") is not None


@pytest_twisted.ensureDeferred
async def test_store_full_takes_back_the_refused_trace_and_its_queue_entry(
    redis_server: RedisServer,
) -> None:
    """A POST refused at the store cap leaves the queue and the index as they were."""
    async with _alone(redis_server, max_traces=1) as front:
        assert (await front.post_trace(QUICK)).code == 202
        assert (await front.post_trace(QUICK)).code == 429
        redis = front.connection
        assert await redis.execute("XLEN", f"mtrd:vantage:{{{VANTAGE}}}:queue") == 1
        assert await redis.execute("ZCARD", "mtrd:{index}:traces") == 1


@pytest_twisted.ensureDeferred
async def test_too_many_subscribers_of_a_trace_is_429(redis_server: RedisServer) -> None:
    """Past the per-trace stream limit on a replica, another stream is 429."""
    async with _alone(redis_server, limits=EdgeLimits(max_subscribers_per_trace=1)) as front:
        trace_id = (await front.post_trace(QUICK)).json()["id"]
        stream = await open_stream(front, trace_id)
        await until(front, stream.events)
        refused = await front.request("GET", f"/traces/{trace_id}/events")
        assert refused.code == 429
        assert refused.header("retry-after") == "5"


class Stream:
    """An event stream on a stub, collecting what arrives."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.ended = False

    def events(self) -> list[dict[str, Any]]:
        text = b"".join(self.chunks).decode()
        return [e for e in parse_events(text) if "event" in e]


async def open_stream(front: Front, trace_id: str, last: int | None = None) -> Stream:
    headers = {} if last is None else {"Last-Event-ID": str(last)}
    response = await front.pumped(
        front.stub.get(f"{BASE}/traces/{trace_id}/events", headers=headers)
    )
    assert response.code == 200
    stream = Stream()
    treq.collect(response, stream.chunks.append).addBoth(lambda _: setattr(stream, "ended", True))
    return stream


async def until(front: Front, check: Callable[[], object], seconds: float = 5.0) -> None:
    """Flush ``front``'s stub until ``check()`` holds."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        front.stub.flush()
        await sleep(0.02)


def _hop(ttl: int) -> Hop:
    return Hop(ttl=ttl, responders=(Responder(f"198.51.100.{ttl}", 1),), sent=1, received=1)


@pytest_twisted.ensureDeferred
async def test_events_logged_in_redis_reach_a_subscriber_on_another_replica(pair: Pair) -> None:
    """B streams the status, hops and done a runner logs in Redis, then ends the stream."""
    trace_id = (await pair.a.post_trace(QUICK)).json()["id"]
    stream = await open_stream(pair.b, trace_id)
    await until(pair.b, stream.events)
    assert [(e["event"], e["data"]["status"]) for e in stream.events()] == [("status", "queued")]
    running = await _started(pair.a, trace_id)
    await pair.a.store.append_event(trace_id, "status", TraceStatus.RUNNING)
    await pair.a.store.append_event(trace_id, "hop", _hop(1))
    await until(pair.b, lambda: len(stream.events()) == 3)
    final = attrs.evolve(running, status=TraceStatus.COMPLETED, hops=(_hop(1),))
    await pair.a.store.save(final, runner=RUNNER)
    await pair.a.store.append_event(trace_id, "done", final)
    await until(pair.b, lambda: stream.ended)
    events = stream.events()
    assert [e["event"] for e in events] == ["status", "status", "hop", "done"]
    assert [e["id"] for e in events[1:]] == [1, 2, 3]
    assert events[-1]["data"]["status"] == "completed"
    assert pair.b.shared.subscribers(trace_id) == 0


@pytest_twisted.ensureDeferred
async def test_last_event_id_resumes_on_the_other_replica(pair: Pair) -> None:
    """A subscriber that saw event 1 on B resumes on A with what came after it, then the end."""
    trace_id = (await pair.a.post_trace(QUICK)).json()["id"]
    running = await _started(pair.a, trace_id)
    await pair.a.store.append_event(trace_id, "status", TraceStatus.RUNNING)
    await pair.a.store.append_event(trace_id, "hop", _hop(1))
    first = await open_stream(pair.b, trace_id)
    await until(pair.b, lambda: len(first.events()) == 2)
    assert [e["id"] for e in first.events()] == [1, 2]
    resumed = await open_stream(pair.a, trace_id, last=1)
    await until(pair.a, resumed.events)
    assert [(e["id"], e["event"]) for e in resumed.events()] == [(2, "hop")]
    final = attrs.evolve(running, status=TraceStatus.COMPLETED, hops=(_hop(1),))
    await pair.a.store.save(final, runner=RUNNER)
    await pair.a.store.append_event(trace_id, "done", final)
    await until(pair.a, lambda: resumed.ended)
    await until(pair.b, lambda: first.ended)
    assert [e["id"] for e in resumed.events()] == [2, 3]


@pytest_twisted.ensureDeferred
async def test_subscribers_of_one_trace_share_one_poller(pair: Pair) -> None:
    """Two subscribers of a trace on one replica are fed by one poller."""
    trace_id = (await pair.a.post_trace(QUICK)).json()["id"]
    streams = [await open_stream(pair.b, trace_id) for _ in range(2)]
    await until(pair.b, lambda: all(s.events() for s in streams))
    assert pair.b.shared.subscribers(trace_id) == 2
    assert pair.b.shared.followed == 1


@pytest_twisted.ensureDeferred
async def test_paused_redis_is_503_with_retry_after_then_200_again(pair: Pair) -> None:
    """While Redis does not answer, reads are 503 with Retry-After within the call timeout,
    /readyz is 503 naming the store; once it answers again, 200."""
    trace_id = (await pair.a.post_trace(QUICK)).json()["id"]
    pair.server.pause()
    try:
        started = time.monotonic()
        answer = await pair.b.request("GET", f"/traces/{trace_id}")
        elapsed = time.monotonic() - started
        assert answer.code == 503
        assert answer.header("content-type") == "application/problem+json"
        assert answer.header("retry-after") == "1"
        assert elapsed < FAST.call_timeout + 1.5
        posted = await pair.a.post_trace(QUICK)
        assert posted.code == 503
        await wait_until(lambda: not pair.b.connection.health().ready)
        ready = await pair.b.request("GET", "/readyz")
        assert ready.code == 503
        assert ready.json()["status"] == "not ready"
        assert ready.json()["store"]["name"] == "redis"
        assert ready.json()["store"]["ready"] is False
    finally:
        pair.server.resume()
    await wait_until(lambda: pair.b.connection.health().ready)
    assert (await pair.b.request("GET", f"/traces/{trace_id}")).code == 200
    ready = await pair.b.request("GET", "/readyz")
    assert ready.code == 200
    assert ready.json()["store"]["ready"] is True


@pytest_twisted.ensureDeferred
async def test_events_of_an_unknown_trace_are_404(pair: Pair) -> None:
    """An event stream of a trace Redis does not hold is a 404 problem."""
    answer = await pair.b.request("GET", "/traces/nosuchtrace/events")
    assert answer.code == 404


@pytest_twisted.ensureDeferred
async def test_trimmed_events_restart_a_subscriber_from_the_snapshot(pair: Pair) -> None:
    """When events after Last-Event-ID are gone, the snapshot comes first, then the log."""
    trace_id = (await pair.a.post_trace(QUICK)).json()["id"]
    await _started(pair.a, trace_id)
    for ttl in (1, 2, 3):
        await pair.a.store.append_event(trace_id, "hop", _hop(ttl))
    await pair.a.connection.execute("XDEL", pair.a.store.events_key(trace_id), "0-1", "0-2")
    stream = await open_stream(pair.b, trace_id, last=0)
    await until(pair.b, lambda: len(stream.events()) >= 2)
    events = stream.events()
    assert (events[0]["id"], events[0]["event"], events[0]["data"]["status"]) == (
        2,
        "status",
        "running",
    )
    assert (events[-1]["id"], events[-1]["event"], events[-1]["data"]["ttl"]) == (3, "hop", 3)


@pytest_twisted.ensureDeferred
async def test_stream_of_a_trace_deleted_meanwhile_ends(pair: Pair) -> None:
    """A followed trace that disappears from Redis without a done event ends its streams."""
    trace_id = (await pair.a.post_trace(QUICK)).json()["id"]
    stream = await open_stream(pair.b, trace_id)
    await until(pair.b, stream.events)
    assert await pair.a.store.delete(trace_id)
    await until(pair.b, lambda: stream.ended)
    assert pair.b.shared.followed == 0


@pytest_twisted.ensureDeferred
async def test_cancelling_a_queued_trace_ends_its_streams_on_every_replica(pair: Pair) -> None:
    """DELETE of a queued trace on A sends done to a subscriber on B."""
    trace_id = (await pair.a.post_trace(QUICK)).json()["id"]
    stream = await open_stream(pair.b, trace_id)
    await until(pair.b, stream.events)
    assert (await pair.a.request("DELETE", f"/traces/{trace_id}")).code == 200
    await until(pair.b, lambda: stream.ended)
    assert stream.events()[-1]["event"] == "done"
    assert stream.events()[-1]["data"]["status"] == "cancelled"


@pytest_twisted.ensureDeferred
async def test_events_while_redis_is_paused_are_503(pair: Pair) -> None:
    """Opening an event stream while Redis does not answer is 503 with Retry-After."""
    trace_id = (await pair.a.post_trace(QUICK)).json()["id"]
    pair.server.pause()
    try:
        answer = await pair.b.request("GET", f"/traces/{trace_id}/events")
        assert answer.code == 503
        assert answer.header("retry-after") == "1"
    finally:
        pair.server.resume()


@pytest_twisted.ensureDeferred
async def test_vantage_points_while_redis_is_paused_are_503(pair: Pair) -> None:
    """GET /vantage-points while Redis does not answer is 503 with Retry-After."""
    pair.server.pause()
    try:
        answer = await pair.a.request("GET", "/vantage-points")
        assert answer.code == 503
        assert answer.header("retry-after") == "1"
    finally:
        pair.server.resume()


@pytest_twisted.ensureDeferred
async def test_a_client_that_leaves_stops_the_poller(pair: Pair) -> None:
    """When the only subscriber of a trace goes away, its poller stops at once."""
    trace_id = (await pair.a.post_trace(QUICK)).json()["id"]
    response = await pair.b.pumped(pair.b.stub.get(f"{BASE}/traces/{trace_id}/events"))
    await until(pair.b, lambda: pair.b.shared.followed == 1)
    await _disconnect(response)
    await until(pair.b, lambda: pair.b.shared.followed == 0)
    assert pair.b.api.sse_subscribers == 0


@pytest_twisted.ensureDeferred
async def test_a_stream_outlives_a_redis_pause(pair: Pair) -> None:
    """An open stream keeps its poller while Redis is paused and gets what follows after."""
    trace_id = (await pair.a.post_trace(QUICK)).json()["id"]
    stream = await open_stream(pair.b, trace_id)
    await until(pair.b, stream.events)
    pair.server.pause()
    try:
        await wait_until(lambda: not pair.b.connection.health().ready)
    finally:
        pair.server.resume()
    await wait_until(lambda: pair.a.connection.health().ready)
    await _started(pair.a, trace_id)
    await pair.a.store.append_event(trace_id, "status", TraceStatus.RUNNING)
    await until(pair.b, lambda: len(stream.events()) == 2)
    assert stream.events()[-1]["data"]["status"] == "running"
    assert not stream.ended


@pytest_twisted.ensureDeferred
async def test_unknown_traces_and_vantages_leave_no_state_behind(pair: Pair) -> None:
    """Streams of unknown traces start no poller; traces asked of an unknown vantage make
    no work queue, in this process or in Redis: ids and names a client makes up are never
    kept."""
    queues = set(pair.b.shared._queues)
    for n in range(50):
        assert (await pair.b.request("GET", f"/traces/unknown{n:09d}/events")).code == 404
        assert (await pair.b.post_trace({**QUICK, "vantage": f"nowhere{n}"})).code == 422
    assert pair.b.shared.followed == 0
    assert set(pair.b.shared._queues) == queues
    assert await pair.b.connection.execute("KEYS", "*nowhere*") == []
