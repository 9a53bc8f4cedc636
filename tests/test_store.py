"""The in-memory store: expiry on the clock, caps, eviction, listing."""

from __future__ import annotations

import attrs
import pytest
from mtrd.tracing.model import Hop, Trace, TraceRequest, TraceStatus, TraceTarget
from mtrd.tracing.store import BadCursor, StoreFull, StoreLimits, TraceStore
from twisted.internet.task import Clock


def trace(n: int, status: TraceStatus = TraceStatus.RUNNING) -> Trace:
    return Trace(
        id=f"trace-{n:04d}-xxxxxxxxxxxx",
        status=status,
        request=TraceRequest("203.0.113.7"),
        target=TraceTarget("203.0.113.7"),
        created_at=float(n),
    )


def test_finished_trace_expires_after_the_ttl() -> None:
    """A finished trace is gone ttl seconds after it ends, not before."""
    clock = Clock()
    store = TraceStore(clock, StoreLimits(ttl=60))
    store.startService()
    record = store.add(trace(1), retry_after=lambda: 1)
    clock.advance(1000)
    assert store.get(record.trace.id) is not None  # running traces do not expire
    store.update(record, attrs.evolve(record.trace, status=TraceStatus.COMPLETED))
    clock.advance(59.9)
    assert store.get(record.trace.id) is not None
    clock.advance(0.2)
    assert store.get(record.trace.id) is None


def test_cap_evicts_the_oldest_finished_trace() -> None:
    """At the cap, adding evicts the oldest finished trace, not an active one."""
    store = TraceStore(Clock(), StoreLimits(max_traces=3))
    active = store.add(trace(1), retry_after=lambda: 1)
    old = store.add(trace(2, TraceStatus.COMPLETED), retry_after=lambda: 1)
    store.add(trace(3, TraceStatus.FAILED), retry_after=lambda: 1)
    store.add(trace(4), retry_after=lambda: 1)
    assert store.get(old.trace.id) is None
    assert store.get(active.trace.id) is not None
    assert store.evictions == 1


def test_full_of_active_traces_refuses_with_retry_after() -> None:
    """When everything stored is active, adding raises StoreFull with a retry time."""
    store = TraceStore(Clock(), StoreLimits(max_traces=2))
    store.add(trace(1), retry_after=lambda: 5)
    store.add(trace(2, TraceStatus.QUEUED), retry_after=lambda: 5)
    with pytest.raises(StoreFull) as full:
        store.add(trace(3), retry_after=lambda: 7)
    assert full.value.retry_after == 7
    assert len(store) == 2


def test_listing_is_newest_first_with_a_cursor() -> None:
    """Pages come newest first; the cursor continues where the last page stopped."""
    store = TraceStore(Clock())
    for n in range(5):
        store.add(trace(n), retry_after=lambda: 1)
    page, cursor = store.newest_first(None, 2, None)
    assert [t.created_at for t in page] == [4.0, 3.0]
    page, cursor = store.newest_first(None, 2, cursor)
    assert [t.created_at for t in page] == [2.0, 1.0]
    page, cursor = store.newest_first(None, 2, cursor)
    assert ([t.created_at for t in page], cursor) == ([0.0], None)


def test_listing_filters_by_status() -> None:
    """Only traces with the asked status are listed."""
    store = TraceStore(Clock())
    store.add(trace(1, TraceStatus.COMPLETED), retry_after=lambda: 1)
    store.add(trace(2), retry_after=lambda: 1)
    page, _ = store.newest_first(TraceStatus.COMPLETED, 10, None)
    assert [t.created_at for t in page] == [1.0]


@pytest.mark.parametrize("cursor", ["", "!!!", "-1", "1e3", "١٢", "9" * 19])
def test_a_cursor_that_is_not_a_place_in_the_listing_is_refused(cursor: str) -> None:
    """Garbage cursors raise BadCursor rather than list something arbitrary."""
    store = TraceStore(Clock())
    with pytest.raises(BadCursor):
        store.newest_first(None, 10, cursor)


def test_finished_trace_is_kept_whole_as_a_value() -> None:
    """A finished trace is stored as the value it is, hops included."""
    store = TraceStore(Clock())
    record = store.add(trace(1), retry_after=lambda: 1)
    finished = attrs.evolve(
        record.trace, status=TraceStatus.COMPLETED, hops=(Hop(ttl=1, sent=3, lost=3),)
    )
    store.update(record, finished)
    assert record.full_trace() is finished


def test_every_change_of_a_trace_changes_its_version() -> None:
    """Snapshot updates without an event (a resolved address) and hop events both bump it."""
    store = TraceStore(Clock())
    record = store.add(trace(1), retry_after=lambda: 1)
    seen = {record.version}
    store.update(record, attrs.evolve(record.trace, status=TraceStatus.RUNNING))
    seen.add(record.version)
    record.channel.publish_hop(Hop(ttl=1, sent=1, lost=1))
    seen.add(record.version)
    store.update(record, attrs.evolve(record.trace, started_at=5.0))
    seen.add(record.version)
    assert len(seen) == 4


def test_running_trace_shows_the_latest_figures_of_every_hop() -> None:
    """Hop updates live in the channel; the trace read from the record carries them, by TTL."""
    store = TraceStore(Clock())
    record = store.add(trace(1), retry_after=lambda: 1)
    record.channel.publish_hop(Hop(ttl=2, sent=1, lost=1))
    record.channel.publish_hop(Hop(ttl=1, sent=1, lost=1))
    record.channel.publish_hop(Hop(ttl=2, sent=2, lost=2))
    assert [(h.ttl, h.sent) for h in record.full_trace().hops] == [(1, 1), (2, 2)]
    assert record.trace.hops == ()  # the snapshot itself stays slim


def test_a_stopped_store_keeps_finished_traces_and_expires_them_when_started() -> None:
    """Stopped, the store expires nothing; started again, what is overdue goes at once."""
    clock = Clock()
    store = TraceStore(clock, StoreLimits(ttl=60))
    store.startService()
    early = store.add(trace(1), retry_after=lambda: 1)
    late = store.add(trace(2), retry_after=lambda: 1)
    store.update(early, attrs.evolve(early.trace, status=TraceStatus.COMPLETED, expires_at=60.0))
    clock.advance(30)
    store.update(late, attrs.evolve(late.trace, status=TraceStatus.COMPLETED, expires_at=90.0))
    store.stopService()
    assert not clock.getDelayedCalls()
    clock.advance(40)
    assert store.get(early.trace.id) is not None
    store.startService()
    clock.advance(0)
    assert store.get(early.trace.id) is None
    clock.advance(19.9)
    assert store.get(late.trace.id) is not None
    clock.advance(0.1)
    assert store.get(late.trace.id) is None
