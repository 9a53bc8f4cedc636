"""What a subscriber of a shared trace is sent first: pure functions, no Redis."""

from __future__ import annotations

import attrs
from mtrd.tracing.events import Event
from mtrd.tracing.model import Hop, TraceStatus
from mtrd.tracing.redis.front import _coalesced, _from_snapshot

from tests.trace_values import rich_trace

RUNNING = TraceStatus.RUNNING


def test_catch_up_keeps_the_latest_status_and_each_hops_latest_figures() -> None:
    """Older status and hop events are left out; what is kept is in id order."""
    events = [
        Event(1, "status", TraceStatus.QUEUED),
        Event(2, "status", RUNNING),
        Event(3, "hop", Hop(ttl=1, sent=1)),
        Event(4, "hop", Hop(ttl=2, sent=1)),
        Event(5, "hop", Hop(ttl=1, sent=2)),
    ]
    assert [e.id for e in _coalesced(events)] == [2, 4, 5]


def test_catch_up_after_the_end_is_the_done_event_alone() -> None:
    """Once a done event is among them, it is all a subscriber needs."""
    done = Event(4, "done", rich_trace())
    events = [Event(1, "status", RUNNING), Event(2, "hop", Hop(ttl=1)), done]
    assert _coalesced(events) == [done]


def test_snapshot_of_a_running_trace_is_its_status_and_hops() -> None:
    """A running snapshot gives its status, then each hop, all with the given id."""
    trace = rich_trace(status=RUNNING)
    events = _from_snapshot(trace, 7)
    assert [(e.id, e.kind) for e in events] == [(7, "status")] + [(7, "hop")] * len(trace.hops)
    assert [e.value for e in events[1:]] == list(trace.hops)


def test_snapshot_of_a_finished_trace_is_done() -> None:
    """A final snapshot gives one done event carrying the trace."""
    trace = attrs.evolve(rich_trace(), status=TraceStatus.CANCELLED)
    assert _from_snapshot(trace, 3) == [Event(3, "done", trace)]
