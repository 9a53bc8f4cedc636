"""RedisTraceStore against a real redis-server: versions, expiry, cap, listing, events, faults."""

from __future__ import annotations

from collections.abc import AsyncIterator

import attrs
import pytest
import pytest_twisted
from mtrd.tracing.model import Hop, TraceStatus
from mtrd.tracing.redis.connection import (
    RedisCommandError,
    RedisConnection,
    RedisTimeout,
    RedisUnavailable,
)
from mtrd.tracing.redis.store import CancelOutcome, NotRunning, RedisTraceStore
from mtrd.tracing.store import BadCursor, StoreFull, StoreLimits
from twisted.internet import reactor

from tests.redis_server import RedisServer
from tests.redis_support import connected, sleep, wait_until
from tests.trace_values import rich_trace

pytestmark = pytest.mark.redis  # a real redis-server, started by the test

RUNNING = TraceStatus.RUNNING
DONE = TraceStatus.COMPLETED


def never() -> int:
    """A retry_after for adds that must not be refused."""
    raise AssertionError("the store said it was full")


@pytest_twisted.async_yield_fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[RedisConnection]:
    """A connection to a fresh server, stopped after the test."""
    connection = await connected(redis_server)
    yield connection
    await connection.stopService()


def store_on(redis: RedisConnection, **limits: float) -> RedisTraceStore:
    """A store on ``redis`` with the given limits."""
    return RedisTraceStore(redis, reactor, StoreLimits(**limits))  # type: ignore[arg-type]


@pytest_twisted.ensureDeferred
async def test_full_trace_round_trips(redis: RedisConnection) -> None:
    """A trace with every field set reads back equal, at version 1, with who runs it."""
    store = store_on(redis)
    await store.add(rich_trace("a", RUNNING), never, vantage="fra", replica="r1")
    stored = await store.get("a")
    assert stored is not None
    assert (stored.trace, stored.version) == (rich_trace("a", RUNNING), 1)
    assert (stored.vantage, stored.replica) == ("fra", "r1")


@pytest_twisted.ensureDeferred
async def test_every_save_grows_the_version(redis: RedisConnection) -> None:
    """Each saved snapshot gets a higher version, and get returns the latest."""
    store = store_on(redis)
    trace = rich_trace("a", RUNNING)
    await store.add(trace, never, vantage="v", replica="r")
    versions = [await store.save(attrs.evolve(trace, source=f"s{i}")) for i in range(3)]
    assert versions == [2, 3, 4]
    stored = await store.get("a")
    assert stored is not None
    assert (stored.version, stored.trace.source) == (4, "s2")


@pytest_twisted.ensureDeferred
async def test_save_of_a_gone_trace_says_so(redis: RedisConnection) -> None:
    """Saving a trace that is not stored returns None and stores nothing."""
    store = store_on(redis)
    assert await store.save(rich_trace("ghost")) is None
    assert await store.get("ghost") is None


@pytest_twisted.ensureDeferred
async def test_adding_an_id_twice_is_refused(redis: RedisConnection) -> None:
    """A second add of one id fails and leaves the first trace alone."""
    store = store_on(redis)
    await store.add(rich_trace("a", RUNNING), never, vantage="v", replica="r1")
    with pytest.raises(ValueError, match="already stored"):
        await store.add(rich_trace("a", DONE), never, vantage="v", replica="r2")
    stored = await store.get("a")
    assert stored is not None
    assert stored.replica == "r1"


@pytest_twisted.ensureDeferred
async def test_finished_trace_expires_with_its_events(redis: RedisConnection) -> None:
    """A final snapshot makes the trace and its event log expire after the store TTL."""
    store = store_on(redis, ttl=0.6)
    trace = rich_trace("a", RUNNING)
    await store.add(trace, never, vantage="v", replica="r")
    await store.append_event("a", "status", RUNNING)
    await store.save(attrs.evolve(trace, status=DONE))
    await store.append_event("a", "done", attrs.evolve(trace, status=DONE))
    assert await store.get("a") is not None
    await sleep(0.9)
    assert await store.get("a") is None
    assert await redis.execute("EXISTS", store.events_key("a")) == 0


@pytest_twisted.ensureDeferred
async def test_running_trace_does_not_expire(redis: RedisConnection) -> None:
    """Only final traces expire."""
    store = store_on(redis, ttl=0.2)
    await store.add(rich_trace("a", RUNNING), never, vantage="v", replica="r")
    await store.save(rich_trace("a", RUNNING))
    await sleep(0.4)
    assert await store.get("a") is not None


@pytest_twisted.ensureDeferred
async def test_active_trace_nobody_saves_goes_stale(redis: RedisConnection) -> None:
    """An active trace expires ``stale_after`` after its last save; each save pushes it on."""
    store = RedisTraceStore(redis, reactor, stale_after=1.0)  # type: ignore[arg-type]
    await store.add(rich_trace("a", RUNNING), never, vantage="v", replica="r")
    await sleep(0.6)
    assert await store.save(rich_trace("a", RUNNING)) == 2
    await sleep(0.6)
    assert await store.get("a") is not None
    await sleep(1.0)
    assert await store.get("a") is None


@pytest_twisted.ensureDeferred
async def test_cap_evicts_the_oldest_finished_trace(redis: RedisConnection) -> None:
    """At the cap, adding evicts the oldest finished trace, not an active one."""
    store = store_on(redis, max_traces=3)
    await store.add(rich_trace("active", RUNNING), never, vantage="v", replica="r")
    await store.add(rich_trace("old", DONE), never, vantage="v", replica="r")
    await store.add(rich_trace("newer", DONE), never, vantage="v", replica="r")
    await store.add(rich_trace("new", RUNNING), never, vantage="v", replica="r")
    assert await store.get("old") is None
    assert [await store.get(i) is not None for i in ("active", "newer", "new")] == [True] * 3
    assert store.evictions == 1


@pytest_twisted.ensureDeferred
async def test_cap_full_of_active_traces_refuses(redis: RedisConnection) -> None:
    """At the cap with every trace active, add raises StoreFull with the retry time."""
    store = store_on(redis, max_traces=2)
    for trace_id in ("a", "b"):
        await store.add(rich_trace(trace_id, RUNNING), never, vantage="v", replica="r")
    with pytest.raises(StoreFull) as full:
        await store.add(rich_trace("c", RUNNING), lambda: 7, vantage="v", replica="r")
    assert full.value.retry_after == 7
    assert await store.get("c") is None


@pytest_twisted.ensureDeferred
async def test_cap_counts_expired_traces_out(redis: RedisConnection) -> None:
    """Index entries of expired traces free their place at the cap (the index heals)."""
    store = store_on(redis, max_traces=1, ttl=0.1)
    await store.add(rich_trace("a", DONE), never, vantage="v", replica="r")
    await sleep(0.3)
    await store.add(rich_trace("b", RUNNING), never, vantage="v", replica="r")
    assert store.evictions == 0
    assert await redis.execute("ZRANGE", "mtrd:{index}:traces", 0, -1) == [b"b"]


@pytest_twisted.ensureDeferred
async def test_listing_is_newest_first_across_replicas(
    redis: RedisConnection, redis_server: RedisServer
) -> None:
    """Traces added through two replicas list newest first from either, page by page."""
    other = await connected(redis_server)
    try:
        first, second = store_on(redis), store_on(other)
        for n in range(5):
            store = first if n % 2 == 0 else second
            await store.add(rich_trace(f"t{n}", DONE), never, vantage="v", replica=f"r{n % 2}")
        page, cursor = await second.newest_first(None, 2, None)
        assert [t.id for t in page] == ["t4", "t3"]
        page, cursor = await first.newest_first(None, 2, cursor)
        assert [t.id for t in page] == ["t2", "t1"]
        page, cursor = await second.newest_first(None, 2, cursor)
        assert ([t.id for t in page], cursor) == (["t0"], None)
    finally:
        await other.stopService()


@pytest_twisted.ensureDeferred
async def test_listing_filters_by_status(redis: RedisConnection) -> None:
    """A status filter lists only traces in that status."""
    store = store_on(redis)
    for n, status in enumerate([RUNNING, DONE, RUNNING, DONE]):
        await store.add(rich_trace(f"t{n}", status), never, vantage="v", replica="r")
    page, cursor = await store.newest_first(RUNNING, 10, None)
    assert ([t.id for t in page], cursor) == (["t2", "t0"], None)


@pytest_twisted.ensureDeferred
async def test_listing_skips_and_forgets_deleted_traces(redis: RedisConnection) -> None:
    """A trace whose keys are gone is left out of the listing and dropped from the index."""
    store = store_on(redis)
    for n in range(3):
        await store.add(rich_trace(f"t{n}", DONE), never, vantage="v", replica="r")
    await redis.execute("DEL", store.trace_key("t1"))
    page, _ = await store.newest_first(None, 10, None)
    assert [t.id for t in page] == ["t2", "t0"]
    assert await redis.execute("ZSCORE", "mtrd:{index}:traces", "t1") is None


@pytest_twisted.ensureDeferred
async def test_a_final_save_takes_the_trace_off_the_active_index(redis: RedisConnection) -> None:
    """Active traces are indexed apart until a final snapshot of theirs is saved."""
    store = store_on(redis)
    await store.add(rich_trace("a", RUNNING), never, vantage="v", replica="r")
    await store.add(rich_trace("b", DONE), never, vantage="v", replica="r")
    assert await redis.execute("ZRANGE", "mtrd:{index}:active", 0, -1) == [b"a"]
    await store.save(rich_trace("a", DONE))
    assert await redis.execute("ZRANGE", "mtrd:{index}:active", 0, -1) == []


@pytest_twisted.ensureDeferred
async def test_listing_active_traces_drops_ids_of_ended_ones(redis: RedisConnection) -> None:
    """An active index entry whose trace has ended (its runner died before saying so) is
    left out of the running listing and removed from that index, not from the main one."""
    store = store_on(redis)
    for n in range(3):
        await store.add(rich_trace(f"t{n}", RUNNING), never, vantage="v", replica="r")
    await redis.execute("HSET", store.trace_key("t1"), "status", "failed")
    page, cursor = await store.newest_first(RUNNING, 10, None)
    assert ([t.id for t in page], cursor) == (["t2", "t0"], None)
    assert await redis.execute("ZRANGE", "mtrd:{index}:active", 0, -1) == [b"t0", b"t2"]
    assert await redis.execute("ZCARD", "mtrd:{index}:traces") == 3


@pytest_twisted.ensureDeferred
async def test_a_filtered_page_has_a_cursor_when_more_match(redis: RedisConnection) -> None:
    """A status listing that fills its page says where the next one starts."""
    store = store_on(redis)
    for n, status in enumerate([RUNNING, DONE, RUNNING, DONE, RUNNING]):
        await store.add(rich_trace(f"t{n}", status), never, vantage="v", replica="r")
    page, cursor = await store.newest_first(RUNNING, 2, None)
    assert [t.id for t in page] == ["t4", "t2"]
    page, cursor = await store.newest_first(RUNNING, 2, cursor)
    assert ([t.id for t in page], cursor) == (["t0"], None)


@pytest_twisted.ensureDeferred
async def test_bad_cursor_is_refused(redis: RedisConnection) -> None:
    """A cursor the store did not hand out raises BadCursor."""
    with pytest.raises(BadCursor):
        await store_on(redis).newest_first(None, 10, "abc")


@pytest_twisted.ensureDeferred
async def test_delete_forgets_trace_and_events(redis: RedisConnection) -> None:
    """Delete removes the trace, its events and its index entry; twice says False."""
    store = store_on(redis)
    await store.add(rich_trace("a", RUNNING), never, vantage="v", replica="r")
    await store.append_event("a", "status", RUNNING)
    assert await store.delete("a") is True
    assert await store.get("a") is None
    assert await redis.execute("EXISTS", store.events_key("a")) == 0
    assert await store.newest_first(None, 10, None) == ([], None)
    assert await store.delete("a") is False


@pytest_twisted.ensureDeferred
async def test_events_resume_after_an_id_on_another_replica(
    redis: RedisConnection, redis_server: RedisServer
) -> None:
    """Event ids grow by one per event, and another replica reads the ones after an id."""
    other = await connected(redis_server)
    try:
        writer, reader = store_on(redis), store_on(other)
        await writer.add(rich_trace("a", RUNNING), never, vantage="v", replica="r")
        hop = Hop(ttl=1, sent=1)
        ids = [
            await writer.append_event("a", "status", RUNNING),
            await writer.append_event("a", "hop", hop),
            await reader.append_event("a", "done", rich_trace("a", DONE)),
        ]
        assert ids == [1, 2, 3]
        page = await reader.events_after("a", 1)
        assert [(e.id, e.kind, e.value) for e in page.events] == [
            (2, "hop", hop),
            (3, "done", rich_trace("a", DONE)),
        ]
        assert not page.gap
        assert (await reader.events_after("a", 3)).events == ()
    finally:
        await other.stopService()


@pytest_twisted.ensureDeferred
async def test_trimmed_events_are_reported_as_a_gap(redis: RedisConnection) -> None:
    """Resuming from an id whose successors were trimmed says so (the reader starts over)."""
    store = RedisTraceStore(redis, reactor, events_kept=5)  # type: ignore[arg-type]
    await store.add(rich_trace("a", RUNNING), never, vantage="v", replica="r")
    for ttl in range(1, 301):
        await store.append_event("a", "hop", Hop(ttl=ttl % 255 + 1))
    resumed = await store.events_after("a", 2, count=1000)
    assert resumed.gap
    assert resumed.events[-1].id == 300
    assert not (await store.events_after("a", 299)).gap


@pytest_twisted.ensureDeferred
async def test_deleted_event_after_the_id_is_a_gap(redis: RedisConnection) -> None:
    """An event removed after the resume id makes a gap; one before it does not."""
    store = store_on(redis)
    await store.add(rich_trace("a", RUNNING), never, vantage="v", replica="r")
    for _ in range(3):
        await store.append_event("a", "status", RUNNING)
    await redis.execute("XDEL", store.events_key("a"), "0-2")
    assert (await store.events_after("a", 1)).gap
    assert not (await store.events_after("a", 2)).gap


@pytest_twisted.ensureDeferred
async def test_resume_without_trimming_is_no_gap(redis: RedisConnection) -> None:
    """Resuming from an early id of an untrimmed log is no gap, and a missing log is empty."""
    store = store_on(redis)
    await store.add(rich_trace("a", RUNNING), never, vantage="v", replica="r")
    for _ in range(3):
        await store.append_event("a", "status", RUNNING)
    page = await store.events_after("a", 0)
    assert ([e.id for e in page.events], page.gap) == ([1, 2, 3], False)
    missing = await store.events_after("ghost", 5)
    assert (missing.events, missing.gap) == ((), False)


@pytest_twisted.ensureDeferred
async def test_explicit_event_ids_must_grow(redis: RedisConnection) -> None:
    """The runner's own ids are kept (gaps allowed); one that does not grow is refused."""
    store = store_on(redis)
    await store.add(rich_trace("a", RUNNING), never, vantage="v", replica="r")
    assert await store.append_event("a", "status", RUNNING, event_id=1) == 1
    assert await store.append_event("a", "status", RUNNING, event_id=5) == 5
    with pytest.raises(RedisCommandError, match="equal or smaller"):
        await store.append_event("a", "status", RUNNING, event_id=5)
    assert await store.append_event("a", "status", DONE) == 6
    assert [e.id for e in (await store.events_after("a", 1)).events] == [5, 6]


@pytest_twisted.ensureDeferred
async def test_event_for_a_gone_trace_is_not_logged(redis: RedisConnection) -> None:
    """Appending to a trace that is not stored returns None and creates no stream."""
    store = store_on(redis)
    assert await store.append_event("ghost", "status", RUNNING) is None
    assert await redis.execute("EXISTS", store.events_key("ghost")) == 0


@pytest_twisted.ensureDeferred
async def test_scripts_are_reloaded_after_a_flush(redis: RedisConnection) -> None:
    """When Redis forgot the scripts (restart, SCRIPT FLUSH), they are sent again."""
    store = store_on(redis)
    await store.add(rich_trace("a", RUNNING), never, vantage="v", replica="r")
    await redis.execute("SCRIPT", "FLUSH")
    assert await store.save(rich_trace("a", RUNNING)) == 2


@pytest_twisted.ensureDeferred
async def test_paused_server_gives_a_timeout(
    redis: RedisConnection, redis_server: RedisServer
) -> None:
    """A store call on a paused server fails with RedisTimeout instead of hanging."""
    store = store_on(redis)
    redis_server.pause()
    try:
        with pytest.raises(RedisTimeout):
            await store.get("a")
    finally:
        redis_server.resume()


@pytest_twisted.ensureDeferred
async def test_store_works_again_after_a_restart(
    redis: RedisConnection, redis_server: RedisServer
) -> None:
    """With Redis restarted on its port, the store reconnects and works (an empty Redis)."""
    store = store_on(redis)
    redis_server.restart()
    with pytest.raises(RedisUnavailable):
        await store.get("a")  # the old connections are gone
    await wait_until(lambda: redis.health().ready)
    await store.add(rich_trace("a", RUNNING), never, vantage="v", replica="r")
    stored = await store.get("a")
    assert stored is not None
    assert stored.version == 1


@pytest_twisted.ensureDeferred
async def test_a_running_save_says_whether_a_cancel_was_asked_for(redis: RedisConnection) -> None:
    """save_running reports field ``cancel``; cancel_requested reads it alone."""
    store = store_on(redis)
    await store.add(rich_trace("a", TraceStatus.QUEUED), never, vantage="fra", replica="")
    assert (await store.take_many(["a"], "r1"))[0]
    first = await store.save_running(rich_trace("a", RUNNING), "r1")
    assert first is not None
    assert (first.version, first.cancel) == (2, False)
    assert not await store.cancel_requested("a")
    await redis.execute("HSET", store.trace_key("a"), "cancel", 1)
    second = await store.save_running(rich_trace("a", RUNNING), "r1")
    assert second is not None
    assert (second.version, second.cancel) == (3, True)
    assert await store.cancel_requested("a")


QUEUED = TraceStatus.QUEUED


@pytest_twisted.ensureDeferred
async def test_cancel_of_a_queued_trace_ends_it_at_once(redis: RedisConnection) -> None:
    """A queued trace nobody took becomes cancelled: new version, status and done events."""
    store = store_on(redis, ttl=60)
    await store.add(rich_trace("a", QUEUED), never, vantage="v", replica="front")
    assert await store.request_cancel("a", now=100.0) is CancelOutcome.CANCELLED
    stored = await store.get("a")
    assert stored is not None
    assert (stored.trace.status, stored.trace.finished_at, stored.version) == (
        TraceStatus.CANCELLED,
        100.0,
        2,
    )
    page = await store.events_after("a", 0)
    assert [(e.kind, e.value if e.kind == "status" else None) for e in page.events] == [
        ("status", TraceStatus.CANCELLED),
        ("done", None),
    ]
    assert 0 < int(await redis.execute("PTTL", store.trace_key("a"))) <= 60_000


@pytest_twisted.ensureDeferred
async def test_cancel_of_a_taken_trace_asks_its_runner(redis: RedisConnection) -> None:
    """A trace a replica took (still queued or running) gets the cancel field, unchanged."""
    store = store_on(redis)
    await store.add(rich_trace("a", QUEUED), never, vantage="v", replica="front")
    assert (await store.take_many(["a"], "runner"))[0]
    assert await store.request_cancel("a", now=100.0) is CancelOutcome.CANCELLING
    assert await redis.execute("HGET", store.trace_key("a"), "cancel") == b"1"
    stored = await store.get("a")
    assert stored is not None
    assert (stored.trace.status, stored.version) == (QUEUED, 1)


@pytest_twisted.ensureDeferred
async def test_cancel_of_a_finished_or_unknown_trace_changes_nothing(
    redis: RedisConnection,
) -> None:
    """A finished trace is final, an unknown one gone; neither is written."""
    store = store_on(redis)
    await store.add(rich_trace("a", DONE), never, vantage="v", replica="r")
    assert await store.request_cancel("a", now=100.0) is CancelOutcome.FINAL
    assert await store.request_cancel("ghost", now=100.0) is CancelOutcome.GONE
    assert await redis.execute("HEXISTS", store.trace_key("a"), "cancel") == 0
    assert await redis.execute("EXISTS", store.trace_key("ghost")) == 0


@pytest_twisted.ensureDeferred
async def test_a_runners_events_go_in_one_call_and_a_repeat_is_skipped(
    redis: RedisConnection,
) -> None:
    """append_events logs several events at once with the runner's ids; sent again (a
    call that timed out after it got through), the ids already there are skipped."""
    store = store_on(redis)
    trace = rich_trace("a", RUNNING)
    await store.add(trace, never, vantage="v", replica="r")
    batch = [(2, "status", RUNNING), (3, "hop", Hop(ttl=1)), (4, "hop", Hop(ttl=2))]
    assert await store.append_events("a", batch) == 3
    assert await store.append_events("a", [*batch, (5, "done", trace)]) == 1
    page = await store.events_after("a", 0)
    assert [e.id for e in page.events] == [2, 3, 4, 5]
    assert await store.append_events("gone", batch) is None


@pytest_twisted.ensureDeferred
async def test_a_late_save_rewrites_the_runners_end_keeping_its_expiry(
    redis: RedisConnection,
) -> None:
    """save_late replaces the final snapshot its runner wrote: a new version, same expiry."""
    store = store_on(redis, ttl=60)
    await store.add(rich_trace("a", QUEUED), never, vantage="v", replica="")
    assert (await store.take_many(["a"], "r1"))[0]
    assert await store.save(rich_trace("a", DONE), runner="r1") == 2
    await redis.execute("PEXPIRE", store.trace_key("a"), 30_000)
    later = attrs.evolve(rich_trace("a", DONE), hops=())
    assert await store.save_late(later, "r1") == 3
    stored = await store.get("a")
    assert stored is not None
    assert (stored.trace, stored.version) == (later, 3)
    assert 0 < int(await redis.execute("PTTL", store.trace_key("a"))) <= 30_000


@pytest_twisted.ensureDeferred
async def test_a_late_save_leaves_an_end_that_is_not_the_runners(redis: RedisConnection) -> None:
    """save_late refuses another runner's end or another status, and a gone trace is None."""
    store = store_on(redis)
    await store.add(rich_trace("a", QUEUED), never, vantage="v", replica="")
    assert (await store.take_many(["a"], "r1"))[0]
    assert await store.save(rich_trace("a", TraceStatus.FAILED)) == 2
    with pytest.raises(NotRunning):
        await store.save_late(rich_trace("a", DONE), "r1")
    with pytest.raises(NotRunning):
        await store.save_late(rich_trace("a", TraceStatus.FAILED), "r2")
    assert await store.save_late(rich_trace("ghost", DONE), "r1") is None
    stored = await store.get("a")
    assert stored is not None
    assert (stored.trace.status, stored.version) == (TraceStatus.FAILED, 2)


@pytest_twisted.ensureDeferred
async def test_take_many_takes_only_the_queued_traces_nobody_took(redis: RedisConnection) -> None:
    """Of a batch of takes in one call, only a queued trace nobody took is taken; a trace
    taken elsewhere, a running one and a gone one are not."""
    store = store_on(redis)
    for trace_id in ("q1", "q2"):
        await store.add(rich_trace(trace_id, QUEUED), never, vantage="v", replica="front")
    await store.add(rich_trace("r", RUNNING), never, vantage="v", replica="front")
    assert (await store.take_many(["q2"], "other"))[0]
    taken = await store.take_many(["q1", "q2", "r", "gone"], "r1")
    assert [None if t is None else (t.trace.id, t.replica) for t in taken] == [
        ("q1", "r1"), None, None, None
    ]  # fmt: skip
    stored = await store.get("q2")
    assert stored is not None
    assert stored.replica == "other"


@pytest_twisted.ensureDeferred
async def test_a_final_write_after_a_script_flush_lands_and_leaves_the_active_index(
    redis: RedisConnection,
) -> None:
    """The runner's last write of a trace, on a Redis that forgot its scripts, is sent
    again whole: the trace is final and off the index of active traces."""
    store = store_on(redis)
    await store.add(rich_trace("a", QUEUED), never, vantage="v", replica="front")
    assert (await store.take_many(["a"], "r1"))[0]
    active = "mtrd:{index}:active"
    assert await redis.execute("ZSCORE", active, "a") is not None
    await redis.execute("SCRIPT", "FLUSH")
    final = rich_trace("a", TraceStatus.COMPLETED)
    saved = await store.write_running(final, "r1", [(2, "done", final)])
    assert saved is not None
    assert await redis.execute("ZSCORE", active, "a") is None
    stored = await store.get("a")
    assert stored is not None
    assert (stored.trace.status, stored.version) == (TraceStatus.COMPLETED, 2)
