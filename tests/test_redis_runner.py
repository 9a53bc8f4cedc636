"""The runner side of Redis mode on a real redis-server: two runners of one vantage in one
process, over a fake network on the real reactor."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from mtrd.tracing.model import Trace, TraceRequest, TraceStatus
from mtrd.tracing.redis.connection import RedisConnection, RedisUnavailable
from mtrd.tracing.redis.queue import GROUP, RedisWorkQueue
from mtrd.tracing.redis.replicas import RedisReplicas, ReplicaBeat
from mtrd.tracing.redis.runner import RedisRunner
from mtrd.tracing.redis.store import RedisTraceStore
from mtrd.tracing.tracer import Tracer
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from tests.fakes import FakeNetwork
from tests.redis_server import RedisServer
from tests.redis_support import connected, sleep, wait_until
from tests.test_jobs import ROUTERS, StaticResolver

pytestmark = pytest.mark.redis  # a real redis-server, started by the test

LEASE = 1.0
SHORT = TraceRequest("203.0.113.7", probes=2, interval=0.05, max_ttl=8)
LONG = TraceRequest("203.0.113.7", probes=200, interval=0.1, max_ttl=8)


class RecordingTracer(Tracer):
    """A tracer that remembers which traces it was asked to run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ran: list[str] = []

    def trace(self, request: TraceRequest, **kwargs: Any) -> Deferred[Trace]:
        self.ran.append(kwargs["queued"].id)
        return super().trace(request, **kwargs)


@pytest_twisted.async_yield_fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[RedisConnection]:
    """A connection to a fresh server, stopped after the test."""
    connection = await connected(redis_server)
    yield connection
    await connection.stopService()


def runner(
    redis: RedisConnection, replica: str, *, max_running: int = 2, **kwargs: Any
) -> RedisRunner:
    """A runner of vantage 'fra' over a fake network on the real reactor (not started)."""
    lease = kwargs.pop("lease", LEASE)
    network = FakeNetwork(reactor, ROUTERS, rtt=0.005)  # type: ignore[arg-type]
    tracer = RecordingTracer(reactor, network, StaticResolver())
    return RedisRunner(
        reactor,  # type: ignore[arg-type]
        tracer,
        RedisTraceStore(redis, reactor),  # type: ignore[arg-type]
        RedisWorkQueue(redis, "fra", replica),
        RedisReplicas(redis, lease=lease),
        replica=replica,
        vantage="fra",
        max_running=max_running,
        ready=lambda: True,
        lease=lease,
        **kwargs,
    )


async def submit(redis: RedisConnection, request: TraceRequest) -> str:
    """What the front does on POST: store the trace queued, then queue it for 'fra'."""
    store = RedisTraceStore(redis, reactor)  # type: ignore[arg-type]
    trace = Tracer(reactor, FakeNetwork(reactor, ROUTERS), StaticResolver()).new(request)  # type: ignore[arg-type]
    await store.add(trace, lambda: 1, "fra", "")
    queue = RedisWorkQueue(redis, "fra", "front")
    await queue.create()
    assert await queue.enqueue(trace.id, max_queued=100, owner=None)
    return trace.id


async def status_of(redis: RedisConnection, trace_id: str) -> TraceStatus | None:
    stored = await RedisTraceStore(redis, reactor).get(trace_id)  # type: ignore[arg-type]
    return None if stored is None else stored.trace.status


async def wait_for(
    redis: RedisConnection, trace_id: str, status: TraceStatus, seconds: float
) -> Trace:
    """The trace once it has ``status`` in Redis; fails after ``seconds``."""
    store = RedisTraceStore(redis, reactor)  # type: ignore[arg-type]
    found: list[Trace] = []

    async def poll() -> None:
        try:
            stored = await store.get(trace_id)
        except RedisUnavailable:  # reconnecting after a pause
            return
        if stored is not None and stored.trace.status is status:
            found.append(stored.trace)

    deadline = reactor.seconds() + seconds  # type: ignore[attr-defined]
    while not found:
        assert reactor.seconds() < deadline, f"{trace_id} not {status} within {seconds} s"  # type: ignore[attr-defined]
        await poll()
        if not found:
            await sleep(0.02)
    return found[0]


async def event_kinds(redis: RedisConnection, trace_id: str) -> list[tuple[int, str]]:
    page = await RedisTraceStore(redis, reactor).events_after(trace_id, 0)  # type: ignore[arg-type]
    return [(e.id, e.kind) for e in page.events]


@pytest_twisted.ensureDeferred
async def test_two_runners_share_the_work_and_run_nothing_twice(redis: RedisConnection) -> None:
    """Traces queued for a vantage all complete, spread over both runners, each run once."""
    runners = [runner(redis, "r1"), runner(redis, "r2")]
    for r in runners:
        r.startService()
    ids = [await submit(redis, SHORT) for _ in range(6)]
    for trace_id in ids:
        await wait_for(redis, trace_id, TraceStatus.COMPLETED, 10)
    for r in runners:
        await r.stopService()
    ran = [t for r in runners for t in r._tracer.ran]  # type: ignore[attr-defined]
    assert sorted(ran) == sorted(ids)
    assert all(r._tracer.ran for r in runners)  # type: ignore[attr-defined]
    store = RedisTraceStore(redis, reactor)  # type: ignore[arg-type]
    replicas = {(await store.get(t)).replica for t in ids}  # type: ignore[union-attr]
    assert replicas == {"r1", "r2"}


@pytest_twisted.ensureDeferred
async def test_events_reach_redis_in_id_order_ending_with_done(redis: RedisConnection) -> None:
    """A run trace's events are status running, hops, status completed and done, ids growing."""
    r1 = runner(redis, "r1")
    r1.startService()
    trace_id = await submit(redis, SHORT)
    final = await wait_for(redis, trace_id, TraceStatus.COMPLETED, 10)
    await wait_until(lambda: r1.running_traces == 0)
    await r1.stopService()
    events = await event_kinds(redis, trace_id)
    ids = [i for i, _ in events]
    assert ids == sorted(set(ids))
    assert ids[0] == 2
    kinds = [k for _, k in events]
    assert kinds[0] == "status"
    assert kinds[-2:] == ["status", "done"]
    assert "hop" in kinds
    assert final.destination_reached
    assert final.expires_at is not None


@pytest_twisted.ensureDeferred
async def test_a_lost_replicas_traces_fail_and_its_claims_run_elsewhere(
    redis: RedisConnection,
) -> None:
    """A replica that stops beating: its running trace ends replica_lost within lease + a
    beat, and the trace it had claimed but not started runs on the other replica."""
    replicas = RedisReplicas(redis, lease=LEASE)
    store = RedisTraceStore(redis, reactor)  # type: ignore[arg-type]
    running_id = await submit(redis, LONG)
    await submit(redis, SHORT)
    dead = RedisWorkQueue(redis, "fra", "dead")
    started, claimed = await dead.claim(2)
    await replicas.beat(ReplicaBeat("dead", "fra", 2, 1, True), reactor.seconds())  # type: ignore[attr-defined]
    await replicas.started("dead", running_id)
    assert (await store.take_many([running_id], "dead"))[0]
    await dead.started(started)
    died_at = reactor.seconds()  # type: ignore[attr-defined]
    live = runner(redis, "live")
    live.startService()
    await wait_for(redis, running_id, TraceStatus.FAILED, LEASE + 2)
    assert reactor.seconds() - died_at < LEASE + 2 * LEASE / 5 + 0.3  # type: ignore[attr-defined]
    failed = await store.get(running_id)
    assert failed is not None
    assert failed.trace.error is not None
    assert failed.trace.error.type == "replica_lost"
    assert (await event_kinds(redis, running_id))[-1][1] == "done"
    await wait_for(redis, claimed.trace_id, TraceStatus.COMPLETED, LEASE + 3)
    assert live._tracer.ran == [claimed.trace_id]  # type: ignore[attr-defined]
    assert await replicas.running("dead") == []
    await live.stopService()


@pytest_twisted.ensureDeferred
async def test_a_cancel_asked_for_in_redis_stops_the_trace_within_a_second(
    redis: RedisConnection,
) -> None:
    """Field ``cancel`` set on a running trace (DELETE on any replica) ends it cancelled."""
    r1 = runner(redis, "r1")
    r1.startService()
    trace_id = await submit(redis, LONG)
    await wait_for(redis, trace_id, TraceStatus.RUNNING, 5)
    store = RedisTraceStore(redis, reactor)  # type: ignore[arg-type]
    await redis.execute("HSET", store.trace_key(trace_id), "cancel", 1)
    await wait_for(redis, trace_id, TraceStatus.CANCELLED, 1.0)
    await wait_until(lambda: r1.running_traces == 0)
    assert (await event_kinds(redis, trace_id))[-1][1] == "done"
    await r1.stopService()


@pytest_twisted.ensureDeferred
async def test_updates_held_while_redis_is_paused_are_written_when_it_resumes(
    redis: RedisConnection, redis_server: RedisServer
) -> None:
    """Hops found while Redis is paused reach it, in order, once it answers again."""
    r1 = runner(redis, "r1", lease=5.0)
    r1.startService()
    request = TraceRequest("203.0.113.7", probes=30, interval=0.1, max_ttl=8)
    trace_id = await submit(redis, request)
    await wait_for(redis, trace_id, TraceStatus.RUNNING, 5)
    redis_server.pause()
    await sleep(1.5)
    held = r1._jobs[trace_id].writer
    assert held.pending
    assert held.held_since is not None
    redis_server.resume()
    final = await wait_for(redis, trace_id, TraceStatus.COMPLETED, 10)
    await wait_until(lambda: r1.running_traces == 0)
    events = await event_kinds(redis, trace_id)
    ids = [i for i, _ in events]
    assert ids == sorted(set(ids))
    assert events[-1][1] == "done"
    assert final.error is None
    await r1.stopService()


@pytest_twisted.ensureDeferred
async def test_a_trace_held_past_the_bound_fails_store_unavailable(
    redis: RedisConnection, redis_server: RedisServer
) -> None:
    """Past ``store_backlog`` without Redis, the trace ends failed (store_unavailable),
    written once Redis is back."""
    r1 = runner(redis, "r1", lease=10.0, store_backlog=0.5)
    r1.startService()
    trace_id = await submit(redis, LONG)
    await wait_for(redis, trace_id, TraceStatus.RUNNING, 5)
    redis_server.pause()
    await sleep(1.5)
    redis_server.resume()
    failed = await wait_for(redis, trace_id, TraceStatus.FAILED, 5)
    assert failed.error is not None
    assert failed.error.type == "store_unavailable"
    await wait_until(lambda: r1.running_traces == 0)
    assert (await event_kinds(redis, trace_id))[-1][1] == "done"
    await r1.stopService()


@pytest_twisted.ensureDeferred
async def test_a_runner_that_cannot_beat_for_a_lease_stops_its_traces(
    redis: RedisConnection, redis_server: RedisServer
) -> None:
    """Self-fencing: a whole lease without a heartbeat ends the runner's traces."""
    r1 = runner(redis, "r1", lease=1.0, store_backlog=30.0)
    r1.startService()
    trace_id = await submit(redis, LONG)
    await wait_for(redis, trace_id, TraceStatus.RUNNING, 5)
    redis_server.pause()
    await wait_until(lambda: r1._jobs[trace_id].finished, 3.0)
    redis_server.resume()
    failed = await wait_for(redis, trace_id, TraceStatus.FAILED, 5)
    assert failed.error is not None
    assert failed.error.type == "store_unavailable"
    await r1.stopService()


@pytest_twisted.ensureDeferred
async def test_stopping_gives_claimed_traces_back_at_once(redis: RedisConnection) -> None:
    """On stop, traces claimed but not started go back to the queue for another replica."""
    r1 = runner(redis, "r1", max_running=3)
    replicas = r1._replicas
    gate: Deferred[None] = Deferred()
    started = replicas.started

    async def slow_started(replica: str, *trace_ids: str) -> None:
        await gate
        await started(replica, *trace_ids)

    replicas.started = slow_started  # type: ignore[method-assign]
    ids = [await submit(redis, SHORT) for _ in range(3)]
    r1.startService()
    await wait_until(lambda: r1.room == 0)
    stopping = r1.stopService()
    gate.callback(None)
    await stopping
    assert r1.running_traces == 0
    queue = RedisWorkQueue(redis, "fra", "r2")
    assert await queue.waiting() == 3
    pending = await redis.execute("XPENDING", queue.key, GROUP)
    assert int(pending[0]) == 0
    assert sorted(c.trace_id for c in await queue.claim(5)) == sorted(ids)
    assert await RedisReplicas(redis).live("fra", reactor.seconds()) == []  # type: ignore[attr-defined]


@pytest_twisted.ensureDeferred
async def test_a_runner_whose_loops_stop_has_its_trace_failed_by_the_other(
    redis: RedisConnection,
) -> None:
    """Two runners: the one running a trace stops beating (its loops halt, its trace goes
    on); the other fails the trace replica_lost within lease + a beat, and the halted
    runner's own later writes are refused."""
    r1, r2 = runner(redis, "r1", max_running=1), runner(redis, "r2", max_running=1)
    r1.startService()
    trace_id = await submit(redis, LONG)
    await wait_for(redis, trace_id, TraceStatus.RUNNING, 5)
    r2.startService()
    for loop in r1._loops.values():
        loop.stop()
    halted_at = reactor.seconds()  # type: ignore[attr-defined]
    failed = await wait_for(redis, trace_id, TraceStatus.FAILED, LEASE + 2)
    assert reactor.seconds() - halted_at < LEASE + 2 * LEASE / 5 + 0.3  # type: ignore[attr-defined]
    assert failed.error is not None
    assert failed.error.type == "replica_lost"
    r1._jobs[trace_id].running.cancel()  # type: ignore[union-attr]
    await wait_until(lambda: r1.running_traces == 0)
    stored = await RedisTraceStore(redis, reactor).get(trace_id)  # type: ignore[arg-type]
    assert stored is not None
    assert stored.trace.error == failed.error
    assert r2._tracer.ran == []  # type: ignore[attr-defined]
    await r2.stopService()


@pytest_twisted.ensureDeferred
async def test_a_queue_lost_with_redis_is_made_again(redis: RedisConnection) -> None:
    """Redis restarted empty: the runner makes its queue again and runs what comes next."""
    r1 = runner(redis, "r1")
    r1.startService()
    queue = RedisWorkQueue(redis, "fra", "front")
    await wait_until(lambda: r1.registered)
    await redis.execute("FLUSHALL")
    deadline = reactor.seconds() + 5  # type: ignore[attr-defined]
    while not await redis.execute("EXISTS", queue.key):
        assert reactor.seconds() < deadline, "the queue was not made again"  # type: ignore[attr-defined]
        await sleep(0.05)
    store = RedisTraceStore(redis, reactor)  # type: ignore[arg-type]
    trace = Tracer(reactor, FakeNetwork(reactor, ROUTERS), StaticResolver()).new(SHORT)  # type: ignore[arg-type]
    await store.add(trace, lambda: 1, "fra", "")
    assert await queue.enqueue(trace.id, max_queued=100, owner=None)
    await wait_for(redis, trace.id, TraceStatus.COMPLETED, 10)
    await r1.stopService()


@pytest_twisted.ensureDeferred
async def test_no_queue_is_made_for_a_vantage_nobody_runs(redis: RedisConnection) -> None:
    """Enqueueing for a vantage whose queue was never made is refused and makes no key."""
    queue = RedisWorkQueue(redis, "made-up", "front")
    assert not await queue.enqueue("t1", max_queued=100, owner=None)
    assert not await redis.execute("EXISTS", queue.key)
