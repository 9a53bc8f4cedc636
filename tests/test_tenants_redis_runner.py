"""A tenant's running cap across replicas: two runners of one vantage on a real redis-server
share ``--tenant-max-running`` through the tenant's running set in Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_twisted
from mtrd.tracing.model import TraceRequest, TraceStatus
from mtrd.tracing.redis.connection import RedisConnection
from mtrd.tracing.redis.queue import RedisWorkQueue
from mtrd.tracing.redis.runner import RedisRunner
from mtrd.tracing.redis.store import RedisTraceStore
from mtrd.tracing.redis.tenants import TAKE_GRACE, RedisTenants
from mtrd.tracing.tenants import TenantLimits
from mtrd.tracing.tracer import Tracer
from twisted.internet import reactor

from tests.fakes import FakeNetwork
from tests.redis_server import RedisServer
from tests.redis_support import connected, sleep
from tests.test_jobs import ROUTERS, StaticResolver
from tests.test_redis_runner import runner, status_of, wait_for
from tests.test_tenants_redis import _close, _pair, post

pytestmark = pytest.mark.redis  # a real redis-server, started by the test

LIMITS = TenantLimits(max_running=2, max_queued=20)
# About a second each over the fake network: long enough to overlap, short for the suite.
MEDIUM = TraceRequest("203.0.113.7", probes=12, interval=0.08, max_ttl=8)
SHORT = TraceRequest("203.0.113.7", probes=2, interval=0.05, max_ttl=8)


@pytest_twisted.async_yield_fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[RedisConnection]:
    """A connection to a fresh server, stopped after the test."""
    connection = await connected(redis_server)
    yield connection
    await connection.stopService()


def store_of(redis: RedisConnection) -> RedisTraceStore:
    return RedisTraceStore(redis, reactor)  # type: ignore[arg-type]


def tenants_of(redis: RedisConnection) -> RedisTenants:
    return RedisTenants(redis, store_of(redis), LIMITS)


def capped_runner(redis: RedisConnection, replica: str) -> RedisRunner:
    """A runner with room for four traces, holding tenants to LIMITS."""
    return runner(redis, replica, max_running=4, tenants=tenants_of(redis))


async def submit(
    redis: RedisConnection, request: TraceRequest, owner: str, *, older: bool = False
) -> str:
    """What the front does on POST for ``owner``: store the trace queued, then queue it
    (``older``: as a replica from before queue entries named the owner)."""
    tracer = Tracer(reactor, FakeNetwork(reactor, ROUTERS), StaticResolver())  # type: ignore[arg-type]
    trace = tracer.new(request, owner=owner)
    await store_of(redis).add(trace, lambda: 1, "fra", "")
    queue = RedisWorkQueue(redis, "fra", "front")
    await queue.create()
    if older:
        await redis.execute("XADD", queue.key, "*", "t", trace.id)
    else:
        assert await queue.enqueue(trace.id, max_queued=100, owner=owner)
    return trace.id


async def statuses(redis: RedisConnection, ids: list[str]) -> list[TraceStatus | None]:
    return [await status_of(redis, trace_id) for trace_id in ids]


@pytest.mark.parametrize("older", [False, True], ids=["owner-in-entry", "older-entries"])
@pytest_twisted.ensureDeferred
async def test_a_tenants_running_cap_holds_across_two_runners(
    redis: RedisConnection, older: bool
) -> None:
    """Six traces of one tenant on two runners with room for eight: never more than two run
    (also when the queue entries do not name the owner: the runner reads the trace)."""
    runners = [capped_runner(redis, "r1"), capped_runner(redis, "r2")]
    for r in runners:
        r.startService()
    ids = [await submit(redis, MEDIUM, "alice", older=older) for _ in range(6)]
    most = 0
    deadline = reactor.seconds() + 30  # type: ignore[attr-defined]
    while True:
        now = await statuses(redis, ids)
        most = max(most, now.count(TraceStatus.RUNNING))
        if all(s is TraceStatus.COMPLETED for s in now):
            break
        assert reactor.seconds() < deadline, now  # type: ignore[attr-defined]
        await sleep(0.02)
    for r in runners:
        await r.stopService()
    assert most == 2
    ran = [t for r in runners for t in r._tracer.ran]  # type: ignore[attr-defined]
    assert sorted(ran) == sorted(ids)  # each run once


@pytest_twisted.ensureDeferred
async def test_another_tenants_trace_behind_a_capped_one_runs_at_once(
    redis: RedisConnection,
) -> None:
    """Bob's trace queued behind alice's capped ones completes while hers still wait."""
    runners = [capped_runner(redis, "r1"), capped_runner(redis, "r2")]
    for r in runners:
        r.startService()
    alice = [await submit(redis, MEDIUM, "alice") for _ in range(6)]
    bob = await submit(redis, SHORT, "bob")
    await wait_for(redis, bob, TraceStatus.COMPLETED, 3)
    waiting = (await statuses(redis, alice)).count(TraceStatus.QUEUED)
    for r in runners:
        await r.stopService()
    assert waiting >= 2


@pytest_twisted.ensureDeferred
async def test_claiming_backs_off_while_only_capped_traces_are_queued(
    redis: RedisConnection,
) -> None:
    """With only a capped tenant's traces queued, a runner sends few back, not one per read."""
    r = capped_runner(redis, "r1")
    r.startService()
    ids = [await submit(redis, MEDIUM, "alice") for _ in range(4)]
    await wait_for(redis, ids[0], TraceStatus.RUNNING, 3)
    before = r.put_back
    await sleep(0.8)
    sent_back = r.put_back - before
    await r.stopService()
    # Reading every 100 ms without a back-off sends two back per read: 16 in 0.8 s.
    assert sent_back <= 8


@pytest_twisted.ensureDeferred
async def test_a_running_place_frees_when_its_trace_ends(redis: RedisConnection) -> None:
    """At the cap, a reserved trace that ended (failed by a reaper, say) gives its place up."""
    tenants = tenants_of(redis)
    ids = [await submit(redis, SHORT, "alice") for _ in range(3)]
    now = reactor.seconds()  # type: ignore[attr-defined]
    store = store_of(redis)
    for trace_id in ids[:2]:
        assert await tenants.reserve_running("alice", trace_id, now)
        assert (await store.take_many([trace_id], "gone"))[0]
    assert not await tenants.reserve_running("alice", ids[2], now)
    assert await store.fail_lost(ids[0], "gone", now)
    assert await tenants.reserve_running("alice", ids[2], now)


@pytest_twisted.ensureDeferred
async def test_a_reservation_never_taken_is_dropped_after_the_grace(
    redis: RedisConnection,
) -> None:
    """A place reserved by a replica that died before its take frees after TAKE_GRACE."""
    tenants = tenants_of(redis)
    ids = [await submit(redis, SHORT, "alice") for _ in range(3)]
    now = reactor.seconds()  # type: ignore[attr-defined]
    for trace_id in ids[:2]:
        assert await tenants.reserve_running("alice", trace_id, now)
    assert not await tenants.reserve_running("alice", ids[2], now + TAKE_GRACE / 2)
    assert await tenants.reserve_running("alice", ids[2], now + TAKE_GRACE + 1)


@pytest_twisted.ensureDeferred
async def test_probes_waiting_on_every_replica_count_against_the_cap(
    redis_server: RedisServer,
) -> None:
    """600 + 500 of alice's probes wait on two replicas: her POST on a third is 429; bob's not."""
    fronts = await _pair(redis_server, TenantLimits(max_probes_waiting=1000))
    try:
        now = reactor.seconds()  # type: ignore[attr-defined]
        tenants = RedisTenants(fronts.a.connection, fronts.a.store, TenantLimits())
        await tenants.publish_probes("r1", {"alice": 600}, set(), now, 5.0)
        await tenants.publish_probes("r2", {"alice": 500, "bob": 10}, set(), now, 5.0)
        refused = await post(fronts.b, "alice")
        assert refused.code == 429
        assert refused.json()["type"] == "urn:mtrd:problem:tenant-max-probes-waiting"
        assert (await post(fronts.b, "bob")).code == 202
    finally:
        await _close(fronts)


@pytest_twisted.ensureDeferred
async def test_a_lost_replicas_probes_stop_counting_with_its_lease(
    redis_server: RedisServer,
) -> None:
    """Probes published by a replica whose lease lapsed count for nothing."""
    fronts = await _pair(redis_server, TenantLimits(max_probes_waiting=1000))
    try:
        long_ago = reactor.seconds() - 10  # type: ignore[attr-defined]
        tenants = RedisTenants(fronts.a.connection, fronts.a.store, TenantLimits())
        await tenants.publish_probes("gone", {"alice": 5000}, set(), long_ago, 5.0)
        assert (await post(fronts.b, "alice")).code == 202
    finally:
        await _close(fronts)


@pytest_twisted.ensureDeferred
async def test_a_runner_beats_its_pools_probes_per_tenant(redis: RedisConnection) -> None:
    """Each beat publishes the pool's waiting probes per tenant, and drops a tenant at zero."""
    waiting = {"alice": 7}
    r = runner(redis, "r1", tenants=tenants_of(redis), probes_waiting=lambda: dict(waiting))
    r.startService()
    key = tenants_of(redis).key("alice", "probes")
    deadline = reactor.seconds() + 3  # type: ignore[attr-defined]
    while not await redis.execute("HEXISTS", key, "r1"):
        assert reactor.seconds() < deadline  # type: ignore[attr-defined]
        await sleep(0.05)
    shown = (await redis.execute("HGET", key, "r1")).split()[0]
    waiting.clear()
    while await redis.execute("HEXISTS", key, "r1"):
        assert reactor.seconds() < deadline  # type: ignore[attr-defined]
        await sleep(0.05)
    await r.stopService()
    assert shown == b"7"
