"""A trace's channel: numbered events, late subscribers and resuming after an id."""

from __future__ import annotations

from mtrd.tracing.events import Event, TraceChannel
from mtrd.tracing.model import Hop, LiveHop, Trace, TraceRequest, TraceStatus, TraceTarget

FINAL = Trace(
    id="t" * 22,
    status=TraceStatus.COMPLETED,
    request=TraceRequest("203.0.113.7"),
    target=TraceTarget("203.0.113.7"),
    created_at=0.0,
)


def channel_with_history() -> TraceChannel:
    channel = TraceChannel(TraceStatus.QUEUED)  # id 1
    channel.publish_status(TraceStatus.RUNNING)  # 2
    channel.publish_hop(Hop(ttl=1, sent=1))  # 3
    channel.publish_hop(Hop(ttl=2, sent=1))  # 4
    channel.publish_hop(Hop(ttl=1, sent=2))  # 5
    return channel


def test_subscriber_gets_events_as_they_happen() -> None:
    """A subscriber receives each event with increasing ids."""
    channel = TraceChannel(TraceStatus.QUEUED)
    seen: list[Event] = []
    channel.subscribe(seen.append, after=channel.last_id)
    channel.publish_status(TraceStatus.RUNNING)
    channel.publish_hop(Hop(ttl=1))
    assert [(e.id, e.kind) for e in seen] == [(2, "status"), (3, "hop")]


def test_late_subscriber_first_gets_the_current_state() -> None:
    """Without an id, the subscriber gets status and every hop as they are now."""
    channel = channel_with_history()
    seen: list[Event] = []
    channel.subscribe(seen.append)
    assert [(e.id, e.kind) for e in seen] == [(2, "status"), (4, "hop"), (5, "hop")]
    assert seen[2].value == Hop(ttl=1, sent=2)


def test_resume_sends_only_what_changed_after_the_id() -> None:
    """Last-Event-ID 4 gets only the hop that changed at id 5."""
    channel = channel_with_history()
    seen: list[Event] = []
    channel.subscribe(seen.append, after=4)
    assert [(e.id, e.kind) for e in seen] == [(5, "hop")]


def test_subscriber_after_the_end_gets_done_and_is_not_kept() -> None:
    """After the end, a subscriber gets the final trace once and nothing is retained."""
    channel = channel_with_history()
    channel.publish_done(FINAL)
    seen: list[Event] = []
    channel.subscribe(seen.append)
    assert [e.kind for e in seen] == ["done"]
    assert channel.subscribers == 0


def test_done_lets_every_subscriber_go() -> None:
    """The done event is the last one: subscribers are dropped after it."""
    channel = TraceChannel(TraceStatus.RUNNING)
    seen: list[Event] = []
    channel.subscribe(seen.append)
    channel.publish_done(FINAL)
    assert channel.subscribers == 0
    assert seen[-1].kind == "done"


def test_a_hop_after_the_end_goes_to_late_hop_only() -> None:
    """A hop published after done is handed to ``late_hop``: no event, no new id, not kept."""
    channel = channel_with_history()
    late: list[LiveHop] = []
    channel.publish_done(FINAL, late_hop=late.append)
    last = channel.last_id
    named = Hop(ttl=1, sent=2, received=2)
    channel.publish_hop(named)
    assert late == [named]
    assert channel.last_id == last
    assert channel.current_hops() == ()
    assert [e.kind for e in channel.replay(None)] == ["done"]


def test_a_hop_after_the_end_without_late_hop_is_dropped() -> None:
    """Without ``late_hop``, a hop after done changes nothing."""
    channel = channel_with_history()
    channel.publish_done(FINAL)
    last = channel.last_id
    channel.publish_hop(Hop(ttl=1, sent=3))
    assert channel.last_id == last
    assert channel.current_hops() == ()


def test_unsubscribe_stops_delivery() -> None:
    """After unsubscribing, nothing more arrives."""
    channel = TraceChannel(TraceStatus.RUNNING)
    seen: list[Event] = []
    unsubscribe = channel.subscribe(seen.append, after=channel.last_id)
    unsubscribe()
    channel.publish_hop(Hop(ttl=1))
    assert seen == []
    assert channel.subscribers == 0


def test_a_failing_subscriber_is_dropped_without_hurting_others() -> None:
    """A subscriber that raises is unsubscribed; the others still get the event."""
    channel = TraceChannel(TraceStatus.RUNNING)
    seen: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("gone")

    channel.subscribe(broken, after=channel.last_id)
    channel.subscribe(seen.append, after=channel.last_id)
    channel.publish_hop(Hop(ttl=1))
    assert len(seen) == 1
    assert channel.subscribers == 1


class _CountedHop:
    """A live hop that counts how often its figures were turned into a value."""

    def __init__(self, ttl: int) -> None:
        self.ttl = ttl
        self.sent = 0
        self.snapshots = 0

    def snapshot(self) -> Hop:
        self.snapshots += 1
        return Hop(ttl=self.ttl, sent=self.sent)


def test_live_hops_are_snapshotted_only_when_someone_looks() -> None:
    """Without subscribers a live hop is only kept; a reader sees its latest figures."""
    channel = TraceChannel(TraceStatus.RUNNING)
    live = _CountedHop(3)
    for sent in range(1, 4):
        live.sent = sent
        channel.publish_hop(live)
    assert live.snapshots == 0
    assert channel.current_hops() == (Hop(ttl=3, sent=3),)
    seen: list[Event] = []
    channel.subscribe(seen.append, after=channel.last_id)
    channel.publish_hop(live)
    assert [(e.kind, e.value) for e in seen] == [("hop", Hop(ttl=3, sent=3))]
