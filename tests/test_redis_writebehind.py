"""Write-behind of a running trace: numbering, coalescing, order, and holding while Redis
is away, against a fake store (no sockets, no time)."""

from __future__ import annotations

from typing import Any

import attrs
import pytest_twisted
from mtrd.annotations.model import Annotation
from mtrd.tracing.model import Hop, Responder, Trace, TraceError, TraceStatus
from mtrd.tracing.redis.connection import RedisTimeout
from mtrd.tracing.redis.store import NotRunning, Saved, StoredTrace
from mtrd.tracing.redis.writebehind import Flushed, TraceWriter

from tests.trace_values import rich_trace

RUNNING = TraceStatus.RUNNING


class FakeStore:
    """Records the writes a :class:`TraceWriter` makes; can be made to fail."""

    def __init__(self) -> None:
        self.writes: list[tuple[Any, ...]] = []
        self.away = False
        self.cancel = False
        self.not_running = False
        self.stored: StoredTrace | None = None

    async def save_running(self, trace: Trace, runner: str) -> Saved | None:
        if self.away:
            raise RedisTimeout("Redis did not answer within 2 s")
        if self.not_running:
            raise NotRunning(trace.id)
        self.writes.append(("save", trace.status, len(trace.hops)))
        return Saved(len(self.writes), cancel=self.cancel)

    async def write_running(
        self, trace: Trace, runner: str, events: list[tuple[int, str, Any]]
    ) -> Saved | None:
        saved = await self.save_running(trace, runner)
        if saved is not None and events:
            await self.append_events(trace.id, events)
        return saved

    async def append_events(self, trace_id: str, events: list[tuple[int, str, Any]]) -> int:
        if self.away:
            raise RedisTimeout("Redis did not answer within 2 s")
        self.writes += [(kind, event_id, value) for event_id, kind, value in events]
        return len(events)

    async def get(self, trace_id: str) -> StoredTrace | None:
        return self.stored

    async def save_late(self, trace: Trace, runner: str) -> int | None:
        if self.away:
            raise RedisTimeout("Redis did not answer within 2 s")
        self.writes.append(("late", trace.status, trace.hops))
        return len(self.writes)


def writer(store: FakeStore) -> TraceWriter:
    queued = attrs.evolve(rich_trace("t", TraceStatus.QUEUED), hops=(), error=None)
    return TraceWriter(queued, store, "r1")  # type: ignore[arg-type]


def running(w: TraceWriter) -> Trace:
    return attrs.evolve(w.trace, status=RUNNING)


@pytest_twisted.ensureDeferred
async def test_a_flush_writes_the_snapshot_then_events_in_id_order() -> None:
    """The snapshot (with current hops) goes first, then status and hops by id from 2."""
    store = FakeStore()
    w = writer(store)
    w.update(running(w))
    w.hop(Hop(ttl=1, sent=1))
    w.hop(Hop(ttl=2, sent=1))
    assert await w.flush(0.0) is Flushed.WRITTEN
    assert store.writes == [
        ("save", RUNNING, 2),
        ("status", 2, RUNNING),
        ("hop", 3, Hop(ttl=1, sent=1)),
        ("hop", 4, Hop(ttl=2, sent=1)),
    ]
    assert not w.pending


@pytest_twisted.ensureDeferred
async def test_a_hop_changed_twice_before_a_flush_is_written_once() -> None:
    """Coalescing: only a hop's latest change is written, under its own (later) id."""
    store = FakeStore()
    w = writer(store)
    w.update(running(w))
    w.hop(Hop(ttl=1, sent=1))
    w.hop(Hop(ttl=2, sent=1))
    w.hop(Hop(ttl=1, sent=2))
    await w.flush(0.0)
    assert [write[:2] for write in store.writes[1:]] == [("status", 2), ("hop", 4), ("hop", 5)]
    assert store.writes[-1][2] == Hop(ttl=1, sent=2)


@pytest_twisted.ensureDeferred
async def test_updates_are_held_while_redis_is_away_and_written_after() -> None:
    """A failed flush loses nothing: the next one writes everything, in order."""
    store = FakeStore()
    w = writer(store)
    w.update(running(w))
    store.away = True
    try:
        await w.flush(0.0)
    except RedisTimeout:
        pass
    else:
        raise AssertionError("the flush should have failed")
    w.hop(Hop(ttl=1, sent=1))
    assert w.pending
    assert w.held_events == 2
    store.away = False
    await w.flush(1.0)
    assert [write[:2] for write in store.writes] == [
        ("save", RUNNING), ("status", 2), ("hop", 3)
    ]  # fmt: skip


@pytest_twisted.ensureDeferred
async def test_the_end_is_written_with_done_last() -> None:
    """finish() writes the final snapshot, its status and done, after what was held."""
    store = FakeStore()
    w = writer(store)
    w.update(running(w))
    w.hop(Hop(ttl=1, sent=1))
    final = rich_trace("t", TraceStatus.COMPLETED)
    w.finish(final)
    await w.flush(0.0)
    assert store.writes[0] == ("save", TraceStatus.COMPLETED, len(final.hops))
    assert [write[:2] for write in store.writes[1:]] == [
        ("status", 2), ("hop", 3), ("status", 4), ("done", 5)
    ]  # fmt: skip
    assert store.writes[-1][2] == final


@pytest_twisted.ensureDeferred
async def test_a_cancel_asked_for_is_reported() -> None:
    """A save that finds field cancel set says so."""
    store = FakeStore()
    store.cancel = True
    w = writer(store)
    w.update(running(w))
    assert await w.flush(0.0) is Flushed.CANCEL


@pytest_twisted.ensureDeferred
async def test_a_refused_save_means_the_trace_runs_elsewhere() -> None:
    """NotRunning on a running snapshot: the replica must stop the trace."""
    store = FakeStore()
    store.not_running = True
    w = writer(store)
    w.update(running(w))
    assert await w.flush(0.0) is Flushed.NOT_RUNNING


@pytest_twisted.ensureDeferred
async def test_a_final_save_that_landed_before_goes_on_with_the_events() -> None:
    """A final snapshot refused because an earlier (timed-out) save of it got through:
    the events still get written."""
    store = FakeStore()
    w = writer(store)
    final = attrs.evolve(rich_trace("t", TraceStatus.FAILED), error=TraceError("x", "y"))
    w.finish(final)
    store.not_running = True
    store.stored = StoredTrace(final, 3, "fra", "r1")
    assert await w.flush(0.0) is Flushed.WRITTEN
    assert store.writes[-1][:2] == ("done", 3)


@pytest_twisted.ensureDeferred
async def test_a_final_save_refused_after_a_reaper_ended_it_stops_there() -> None:
    """A final snapshot refused because a reaper ended the trace: nothing more is written."""
    store = FakeStore()
    w = writer(store)
    w.finish(rich_trace("t", TraceStatus.CANCELLED))
    store.not_running = True
    lost = attrs.evolve(
        rich_trace("t", TraceStatus.FAILED), error=TraceError("replica_lost", "gone")
    )
    store.stored = StoredTrace(lost, 3, "fra", "r1")
    assert await w.flush(0.0) is Flushed.NOT_RUNNING
    assert store.writes == []


@pytest_twisted.ensureDeferred
async def test_a_name_arriving_mid_trace_is_a_hop_event_like_any_other() -> None:
    """An annotated hop (a name came) goes through the write-behind as a hop event."""
    store = FakeStore()
    w = writer(store)
    w.update(running(w))
    named = Hop(1, (Responder("198.51.100.1", 1, (), Annotation("gw.example.net")),), 1, 1)
    w.hop(named)
    await w.flush(0.0)
    assert ("hop", 3, named) in store.writes


@pytest_twisted.ensureDeferred
async def test_a_name_after_the_end_goes_into_the_final_snapshot_not_after_done() -> None:
    """A hop change after finish updates the final trace; no event follows ``done``."""
    store = FakeStore()
    w = writer(store)
    w.update(running(w))
    bare = Hop(1, (Responder("198.51.100.1", 1),), 1, 1)
    final = attrs.evolve(w.trace, status=TraceStatus.COMPLETED, hops=(bare,))
    w.finish(final)
    named = Hop(1, (Responder("198.51.100.1", 1, (), Annotation("gw.example.net")),), 1, 1)
    w.hop(named)
    await w.flush(0.0)
    assert w.trace.hops == (named,)
    assert [kind for kind, *_ in store.writes if kind in ("hop", "done")][-1] == "done"


@pytest_twisted.ensureDeferred
async def test_a_name_after_the_end_was_written_rewrites_the_final_snapshot() -> None:
    """Once the end is in Redis, a name makes a late save of the final snapshot, no event."""
    store = FakeStore()
    w = writer(store)
    w.update(running(w))
    bare = Hop(1, (Responder("198.51.100.1", 1),), 1, 1)
    w.finish(attrs.evolve(w.trace, status=TraceStatus.COMPLETED, hops=(bare,)))
    await w.flush(0.0)
    written = len(store.writes)
    named = Hop(1, (Responder("198.51.100.1", 1, (), Annotation("gw.example.net")),), 1, 1)
    w.hop(named)
    assert w.pending
    assert await w.flush(1.0) is Flushed.WRITTEN
    assert store.writes[written:] == [("late", TraceStatus.COMPLETED, (named,))]
    assert not w.pending


@pytest_twisted.ensureDeferred
async def test_a_final_save_that_landed_before_is_not_written_again() -> None:
    """The end found in Redis as held is not rewritten; one with an older name is."""
    store = FakeStore()
    w = writer(store)
    final = rich_trace("t", TraceStatus.COMPLETED)
    w.finish(final)
    store.not_running = True
    store.stored = StoredTrace(final, 3, "fra", "r1")
    await w.flush(0.0)
    assert not w.pending
    older = StoredTrace(attrs.evolve(final, hops=()), 3, "fra", "r1")
    w2 = writer(store)
    w2.finish(final)
    store.stored = older
    await w2.flush(0.0)
    assert w2.pending
    await w2.flush(1.0)
    assert store.writes[-1] == ("late", TraceStatus.COMPLETED, final.hops)
