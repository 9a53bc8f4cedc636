"""The work queue of a vantage, taking a trace to run, and replica heartbeats, on real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_twisted
from mtrd.tracing.model import TraceStatus
from mtrd.tracing.redis.connection import RedisConnection
from mtrd.tracing.redis.queue import GROUP, RedisWorkQueue
from mtrd.tracing.redis.replicas import RedisReplicas, ReplicaBeat, VantagePoint
from mtrd.tracing.redis.store import NotRunning, RedisTraceStore
from twisted.internet import reactor

from tests.redis_server import RedisServer
from tests.redis_support import connected, sleep
from tests.trace_values import rich_trace

pytestmark = pytest.mark.redis  # a real redis-server, started by the test

QUEUED = TraceStatus.QUEUED


@pytest_twisted.async_yield_fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[RedisConnection]:
    """A connection to a fresh server, stopped after the test."""
    connection = await connected(redis_server)
    yield connection
    await connection.stopService()


async def queues(redis: RedisConnection, *replicas: str) -> list[RedisWorkQueue]:
    """The queue of vantage 'fra' as seen by each of ``replicas``, created."""
    found = [RedisWorkQueue(redis, "fra", replica) for replica in replicas]
    for queue in found:
        await queue.create()
    return found


@pytest_twisted.ensureDeferred
async def test_claims_only_as_many_as_there_is_room_for(redis: RedisConnection) -> None:
    """A replica claims at most its room, oldest first; without room it claims nothing."""
    (queue,) = await queues(redis, "r1")
    for n in range(3):
        assert await queue.enqueue(f"t{n}", max_queued=10, owner=None)
    assert await queue.claim(0) == []
    assert [c.trace_id for c in await queue.claim(2)] == ["t0", "t1"]
    assert [c.trace_id for c in await queue.claim(5)] == ["t2"]


@pytest_twisted.ensureDeferred
async def test_replicas_of_a_vantage_share_the_work(redis: RedisConnection) -> None:
    """Two replicas never claim the same entry."""
    first, second = await queues(redis, "r1", "r2")
    for n in range(4):
        await first.enqueue(f"t{n}", max_queued=10, owner=None)
    a = [c.trace_id for c in await first.claim(1)]
    b = [c.trace_id for c in await second.claim(10)]
    assert (a, b) == (["t0"], ["t1", "t2", "t3"])


@pytest_twisted.ensureDeferred
async def test_queue_cap_counts_queued_and_claimed(redis: RedisConnection) -> None:
    """The cap holds across replicas until started entries leave the queue."""
    first, second = await queues(redis, "r1", "r2")
    assert await first.enqueue("a", max_queued=2, owner=None)
    assert await second.enqueue("b", max_queued=2, owner=None)
    assert not await first.enqueue("c", max_queued=2, owner=None)
    (claim,) = await first.claim(1)
    assert not await second.enqueue("c", max_queued=2, owner=None)
    await first.started(claim)
    assert await first.waiting() == 1
    assert await second.enqueue("c", max_queued=2, owner=None)


@pytest_twisted.ensureDeferred
async def test_release_puts_claimed_traces_back_at_once(redis: RedisConnection) -> None:
    """Claimed-but-not-started traces given back are claimed by the next replica at once."""
    first, second = await queues(redis, "r1", "r2")
    for n in range(2):
        await first.enqueue(f"t{n}", max_queued=10, owner=None)
    claims = await first.claim(2)
    assert await first.release(claims) == 2
    assert sorted(c.trace_id for c in await second.claim(5)) == ["t0", "t1"]
    assert await first.waiting() == 2


@pytest_twisted.ensureDeferred
async def test_a_claim_says_the_owner_even_after_a_release(redis: RedisConnection) -> None:
    """The entry carries the trace's owner (none said as such), kept when it is released."""
    first, second = await queues(redis, "r1", "r2")
    await first.enqueue("t0", max_queued=10, owner="acme")
    await first.enqueue("t1", max_queued=10, owner=None)
    claims = await first.claim(2)
    said = [(c.trace_id, c.owner, c.says_owner) for c in claims]
    assert said == [("t0", "acme", True), ("t1", None, True)]
    await first.release(claims)
    again = [(c.trace_id, c.owner, c.says_owner) for c in await second.claim(5)]
    assert again == said


@pytest_twisted.ensureDeferred
async def test_an_entry_of_an_older_replica_does_not_say_the_owner(redis: RedisConnection) -> None:
    """An entry without the owner field (queued by an older replica) claims as unknown."""
    (queue,) = await queues(redis, "r1")
    await redis.execute("XADD", queue.key, "*", "t", "t0")
    (claim,) = await queue.claim(1)
    assert (claim.trace_id, claim.owner, claim.says_owner) == ("t0", None, False)


@pytest_twisted.ensureDeferred
async def test_idle_claims_of_a_lost_replica_are_taken_over(redis: RedisConnection) -> None:
    """Entries another replica claimed and left idle past the lease go to one that has room."""
    lost, alive = await queues(redis, "lost", "alive")
    await lost.enqueue("t0", max_queued=10, owner=None)
    await lost.claim(1)
    assert await alive.take_over(room=5, idle_seconds=1.0) == []
    await sleep(1.1)
    assert [c.trace_id for c in await alive.take_over(room=5, idle_seconds=1.0)] == ["t0"]
    assert await alive.take_over(room=5, idle_seconds=1.0) == []


@pytest_twisted.ensureDeferred
async def test_idle_consumers_without_claims_leave_the_group(redis: RedisConnection) -> None:
    """A consumer that holds a claim stays; one that holds none and is idle goes."""
    holder, gone = await queues(redis, "holder", "gone")
    for n in range(2):
        await holder.enqueue(f"t{n}", max_queued=10, owner=None)
    await holder.claim(1)
    (started,) = await gone.claim(1)
    await gone.started(started)
    await sleep(0.4)
    assert await holder.forget_idle_consumers(0.3) == 1
    consumers = await redis.execute("XINFO", "CONSUMERS", holder.key, GROUP)
    assert [dict(zip(c[::2], c[1::2], strict=True))[b"name"] for c in consumers] == [b"holder"]


@pytest_twisted.ensureDeferred
async def test_only_one_replica_takes_a_trace(redis: RedisConnection) -> None:
    """Of two replicas taking one queued trace, exactly one wins; a running one is not taken."""
    store = RedisTraceStore(redis, reactor)  # type: ignore[arg-type]
    await store.add(rich_trace("q", QUEUED), lambda: 1, vantage="fra", replica="r0")
    await store.add(rich_trace("r", TraceStatus.RUNNING), lambda: 1, vantage="fra", replica="r0")
    taken = (await store.take_many(["q"], "r1"))[0]
    assert taken is not None
    assert (taken.trace.id, taken.replica) == ("q", "r1")
    assert (await store.take_many(["q"], "r2"))[0] is None
    stored = await store.get("q")
    assert stored is not None
    assert stored.replica == "r1"
    assert (await store.take_many(["r"], "r1"))[0] is None
    assert (await store.take_many(["gone"], "r1"))[0] is None


@pytest_twisted.ensureDeferred
async def test_vantage_points_from_heartbeats(redis: RedisConnection) -> None:
    """Live replicas make their vantage's count, capacity, running and readiness."""
    replicas = RedisReplicas(redis, lease=5.0)
    now = 1_000.0
    await replicas.beat(ReplicaBeat("r1", "fra", capacity=32, running=3, ready=True), now)
    await replicas.beat(ReplicaBeat("r2", "fra", capacity=16, running=0, ready=False), now)
    await replicas.beat(ReplicaBeat("r3", "nyc", capacity=8, running=1, ready=False), now)
    assert await replicas.vantage_points(now + 1) == [
        VantagePoint("fra", replicas=2, capacity=48, running=3, ready=True),
        VantagePoint("nyc", replicas=1, capacity=8, running=1, ready=False),
    ]


@pytest_twisted.ensureDeferred
async def test_lapsed_lease_makes_a_replica_lost(redis: RedisConnection) -> None:
    """Past its lease a replica is lost: not live, listed as lost until forgotten."""
    replicas = RedisReplicas(redis, lease=5.0)
    await replicas.beat(ReplicaBeat("r1", "fra", 4, 0, True), 1_000.0)
    await replicas.beat(ReplicaBeat("r2", "fra", 4, 0, True), 1_003.0)
    assert await replicas.live("fra", 1_006.0) == ["r2"]
    assert await replicas.lost("fra", 1_006.0) == ["r1"]
    assert [p.replicas for p in await replicas.vantage_points(1_006.0)] == [1]
    await replicas.forget("fra", "r1")
    assert await replicas.lost("fra", 1_006.0) == []
    assert await replicas.vantage_points(1_009.0) == []


@pytest_twisted.ensureDeferred
async def test_fenced_save_only_by_the_runner(redis: RedisConnection) -> None:
    """A save naming a runner succeeds for the replica that took the trace, not another."""
    store = RedisTraceStore(redis, reactor)  # type: ignore[arg-type]
    await store.add(rich_trace("q", QUEUED), lambda: 1, vantage="fra", replica="r0")
    await store.take_many(["q"], "r1")
    running = rich_trace("q", TraceStatus.RUNNING)
    assert await store.save(running, runner="r1") == 2
    with pytest.raises(NotRunning):
        await store.save(running, runner="r2")


@pytest_twisted.ensureDeferred
async def test_trace_of_a_lost_replica_fails_once(redis: RedisConnection) -> None:
    """A lost replica's running trace ends failed / replica_lost with a done event, once;
    the lost replica's own later saves are refused."""
    store = RedisTraceStore(redis, reactor)  # type: ignore[arg-type]
    await store.add(rich_trace("q", QUEUED), lambda: 1, vantage="fra", replica="r0")
    await store.take_many(["q"], "r1")
    running = rich_trace("q", TraceStatus.RUNNING)
    await store.save(running, runner="r1")
    assert await store.fail_lost("q", "r1", now=2_000.0) is True
    assert await store.fail_lost("q", "r1", now=2_001.0) is False
    stored = await store.get("q")
    assert stored is not None
    assert stored.trace.status is TraceStatus.FAILED
    assert stored.trace.error is not None
    assert stored.trace.error.type == "replica_lost"
    assert stored.trace.finished_at == 2_000.0
    (done,) = (await store.events_after("q", 0)).events
    assert (done.kind, done.value) == ("done", stored.trace)
    with pytest.raises(NotRunning):
        await store.save(running, runner="r1")


@pytest_twisted.ensureDeferred
async def test_trace_run_elsewhere_is_not_failed(redis: RedisConnection) -> None:
    """fail_lost leaves a trace alone that another replica runs."""
    store = RedisTraceStore(redis, reactor)  # type: ignore[arg-type]
    await store.add(rich_trace("q", QUEUED), lambda: 1, vantage="fra", replica="r0")
    await store.take_many(["q"], "r2")
    await store.save(rich_trace("q", TraceStatus.RUNNING), runner="r2")
    assert await store.fail_lost("q", "r1", now=2_000.0) is False
    stored = await store.get("q")
    assert stored is not None
    assert stored.trace.status is TraceStatus.RUNNING


@pytest_twisted.ensureDeferred
async def test_running_traces_of_a_replica(redis: RedisConnection) -> None:
    """The traces a replica started and has not finished are listed until it is forgotten."""
    replicas = RedisReplicas(redis)
    await replicas.beat(ReplicaBeat("r1", "fra", 4, 2, True), 1_000.0)
    for trace_id in ("b", "a", "c"):
        await replicas.started("r1", trace_id)
    await replicas.finished("r1", "c")
    assert await replicas.running("r1") == ["a", "b"]
    await replicas.forget("fra", "r1")
    assert await replicas.running("r1") == []
