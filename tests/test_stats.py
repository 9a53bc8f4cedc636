"""Hop statistics: mtr's figures, checked against a plain reference computation."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mtrd.engine.probe import MplsLabel
from mtrd.tracing.model import Hop, HopEnd, JitterStats, Responder, RttStats
from mtrd.tracing.stats import HopAccumulator, forward_loss

# Up to 60 s in microseconds: more than any probe timeout allows.
rtts_us = st.lists(st.integers(0, 60_000_000), min_size=1, max_size=50)


def close(actual: float | None, expected: float) -> bool:
    """Equal within 1e-6 relative tolerance (and a hair absolute, for zero)."""
    return actual is not None and math.isclose(actual, expected, rel_tol=1e-6, abs_tol=1e-9)


def replied(rtts: list[int], address: str = "192.0.2.1") -> Hop:
    """The snapshot of a hop where every probe was answered after the given rtts."""
    hop = HopAccumulator(ttl=1)
    for rtt in rtts:
        hop.record_sent()
        hop.record_reply(address, rtt)
    return hop.snapshot()


def test_fresh_hop_is_empty() -> None:
    """A hop nothing was sent to has zero counters, no responders and no figures."""
    assert HopAccumulator(ttl=7).snapshot() == Hop(ttl=7)


def test_sent_probe_without_answer_has_no_figures() -> None:
    """A sent probe still in flight counts as sent, and leaves the figures None."""
    hop = HopAccumulator(ttl=2)
    hop.record_sent()
    snapshot = hop.snapshot()
    assert (snapshot.sent, snapshot.received, snapshot.lost) == (1, 0, 0)
    assert snapshot.rtt_ms == RttStats()
    assert snapshot.jitter_ms == JitterStats()
    assert snapshot.loss_pct == 0.0


def test_single_reply_figures() -> None:
    """One reply sets every rtt figure to it, the deviation and the jitter to zero."""
    snapshot = replied([1500])
    assert snapshot.rtt_ms == RttStats(last=1.5, best=1.5, avg=1.5, worst=1.5, stdev=0.0)
    assert snapshot.jitter_ms == JitterStats(last=0.0, avg=0.0, max=0.0)


def test_known_figures() -> None:
    """Three replies give the figures worked out by hand."""
    snapshot = replied([1000, 3000, 2000])
    assert snapshot.rtt_ms.last == 2.0
    assert (snapshot.rtt_ms.best, snapshot.rtt_ms.worst) == (1.0, 3.0)
    assert close(snapshot.rtt_ms.avg, 2.0)
    assert close(snapshot.rtt_ms.stdev, 1.0)
    # Jitters are 0 (first), 2 and 1.
    assert snapshot.jitter_ms.last == 1.0
    assert snapshot.jitter_ms.max == 2.0
    assert close(snapshot.jitter_ms.avg, 1.0)


def test_jitter_spans_a_lost_probe() -> None:
    """Jitter compares with the previous reply, not the previous probe (a loss is skipped)."""
    hop = HopAccumulator(ttl=3)
    for _ in range(3):
        hop.record_sent()
    hop.record_reply("192.0.2.1", 1000)
    hop.record_lost()
    hop.record_reply("192.0.2.1", 4000)
    assert hop.snapshot().jitter_ms.last == 3.0


@given(rtts_us)
def test_rtt_figures_match_reference(rtts: list[int]) -> None:
    """last, best, worst, avg and stdev equal the textbook computation."""
    ms = [rtt / 1000 for rtt in rtts]
    rtt = replied(rtts).rtt_ms
    assert rtt.last == ms[-1]
    assert rtt.best == min(ms)
    assert rtt.worst == max(ms)
    assert close(rtt.avg, statistics.mean(ms))
    assert close(rtt.stdev, statistics.stdev(ms) if len(ms) > 1 else 0.0)


@given(rtts_us)
def test_jitter_figures_match_reference(rtts: list[int]) -> None:
    """Jitter last, avg and max follow mtr: |difference| per reply, 0 for the first."""
    jitters = [0.0] + [abs(b - a) / 1000 for a, b in itertools.pairwise(rtts)]
    jitter = replied(rtts).jitter_ms
    assert jitter.last == jitters[-1]
    assert jitter.max == max(jitters)
    assert close(jitter.avg, statistics.mean(jitters))


@given(st.lists(st.booleans(), min_size=1, max_size=60))
def test_loss_is_lost_over_finished(outcomes: list[bool]) -> None:
    """loss_pct is 100 * lost / (received + lost), and the counters add up."""
    hop = HopAccumulator(ttl=4)
    for answered in outcomes:
        hop.record_sent()
        if answered:
            hop.record_reply("192.0.2.1", 1000)
        else:
            hop.record_lost()
    snapshot = hop.snapshot()
    lost = outcomes.count(False)
    assert (snapshot.sent, snapshot.received, snapshot.lost) == (
        len(outcomes),
        len(outcomes) - lost,
        lost,
    )
    assert close(snapshot.loss_pct, 100 * lost / len(outcomes))


events = st.lists(st.sampled_from(["sent", "reply", "lost"]), max_size=80)


@given(events)
def test_counters_stay_consistent(steps: list[str]) -> None:
    """Whatever is recorded, counters are never negative and received + lost <= sent."""
    hop = HopAccumulator(ttl=5)
    for step in steps:
        try:
            if step == "sent":
                hop.record_sent()
            elif step == "reply":
                hop.record_reply("192.0.2.1", 1000)
            else:
                hop.record_lost()
        except ValueError:
            pass
        snapshot = hop.snapshot()
        assert min(snapshot.sent, snapshot.received, snapshot.lost) >= 0
        assert snapshot.received + snapshot.lost <= snapshot.sent
        assert 0.0 <= snapshot.loss_pct <= 100.0


@given(st.lists(st.sampled_from(["192.0.2.1", "192.0.2.2", "2001:db8::3"]), min_size=1))
def test_responders_counted_per_address_in_first_answer_order(addresses: list[str]) -> None:
    """Each address appears once, in order of first answer, with its own reply count."""
    hop = HopAccumulator(ttl=6)
    for address in addresses:
        hop.record_sent()
        hop.record_reply(address, 1000)
    responders = hop.snapshot().responders
    assert [r.address for r in responders] == list(dict.fromkeys(addresses))
    assert [r.replies for r in responders] == [addresses.count(r.address) for r in responders]


def test_responder_keeps_latest_mpls_labels() -> None:
    """A responder's MPLS labels are those of its latest reply."""
    first = (MplsLabel(label=100, traffic_class=0, bottom_of_stack=True, ttl=1),)
    latest = (MplsLabel(label=200, traffic_class=0, bottom_of_stack=True, ttl=1),)
    hop = HopAccumulator(ttl=7)
    for labels in (first, latest):
        hop.record_sent()
        hop.record_reply("192.0.2.1", 1000, labels)
    assert hop.snapshot().responders == (Responder("192.0.2.1", 2, latest),)


@pytest.mark.parametrize(
    ("ends", "expected"),
    [
        ([None, None], None),
        ([HopEnd.HOST_DOWN, None], HopEnd.HOST_DOWN),
        ([HopEnd.HOST_DOWN, HopEnd.UNREACHABLE], HopEnd.UNREACHABLE),
        ([HopEnd.DESTINATION, HopEnd.UNREACHABLE], HopEnd.DESTINATION),
        ([HopEnd.UNREACHABLE, HopEnd.DESTINATION, HopEnd.HOST_DOWN], HopEnd.DESTINATION),
    ],
)
def test_end_keeps_the_most_significant(ends: list[HopEnd | None], expected: HopEnd | None) -> None:
    """DESTINATION beats UNREACHABLE beats HOST_DOWN beats no end, in any order."""
    hop = HopAccumulator(ttl=8)
    for end in ends:
        hop.record_sent()
        hop.record_reply("192.0.2.1", 1000, (), end)
    assert hop.snapshot().end is expected


def test_reply_without_outstanding_probe_is_refused() -> None:
    """A reply beyond the probes sent raises ValueError and changes nothing."""
    hop = HopAccumulator(ttl=9)
    hop.record_sent()
    hop.record_reply("192.0.2.1", 1000)
    before = hop.snapshot()
    with pytest.raises(ValueError, match="no probe outstanding"):
        hop.record_reply("192.0.2.1", 2000)
    assert hop.snapshot() == before


def test_loss_without_outstanding_probe_is_refused() -> None:
    """A loss beyond the probes sent raises ValueError and changes nothing."""
    hop = HopAccumulator(ttl=9)
    hop.record_sent()
    hop.record_lost()
    before = hop.snapshot()
    with pytest.raises(ValueError, match="no probe outstanding"):
        hop.record_lost()
    assert hop.snapshot() == before


def test_answer_before_any_send_is_refused() -> None:
    """A reply to a hop nothing was sent to raises ValueError."""
    with pytest.raises(ValueError, match="no probe outstanding"):
        HopAccumulator(ttl=1).record_reply("192.0.2.1", 1000)


def _hop(ttl: int, received: int, lost: int) -> Hop:
    return Hop(ttl=ttl, sent=received + lost, received=received, lost=lost)


def test_forward_loss_ignores_loss_that_later_hops_do_not_show() -> None:
    """A rate-limiting router (50%) before a clean path has 0% forward loss."""
    hops = [_hop(1, 10, 0), _hop(2, 5, 5), _hop(3, 10, 0)]
    assert forward_loss(hops) == [0.0, 0.0, 0.0]


def test_forward_loss_keeps_loss_that_carries_on() -> None:
    """Loss that starts at hop 2 and stays to the destination is forward loss from hop 2."""
    hops = [_hop(1, 10, 0), _hop(2, 8, 2), _hop(3, 7, 3)]
    assert forward_loss(hops) == [0.0, 20.0, 30.0]


def test_forward_loss_skips_silent_later_hops() -> None:
    """A later hop that never answered does not lower anyone's forward loss."""
    hops = [_hop(1, 5, 5), _hop(2, 0, 10), _hop(3, 5, 5)]
    assert forward_loss(hops) == [50.0, 50.0, 50.0]


def test_forward_loss_of_the_last_hop_is_its_own() -> None:
    """The destination's forward loss is its own loss."""
    assert forward_loss([_hop(1, 10, 0), _hop(2, 9, 1)])[-1] == 10.0


@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), max_size=12))
def test_forward_loss_never_exceeds_own_loss(counts: list[tuple[int, int]]) -> None:
    """Forward loss is at most the hop's own loss."""
    hops = [_hop(i + 1, r, lost) for i, (r, lost) in enumerate(counts)]
    assert all(f <= h.loss_pct for f, h in zip(forward_loss(hops), hops, strict=True))


def test_a_late_answer_shows_its_responder_but_not_in_the_figures() -> None:
    """A late answer: late 1, responder listed with no reply, loss and RTT unchanged."""
    hop = HopAccumulator(ttl=2)
    hop.record_sent()
    hop.record_lost()
    hop.record_late("198.51.100.6")
    snapshot = hop.snapshot()
    assert (snapshot.received, snapshot.lost, snapshot.late) == (0, 1, 1)
    assert snapshot.responders == (Responder("198.51.100.6", 0),)
    assert snapshot.rtt_ms.avg is None


def test_a_late_answer_needs_a_probe_given_up() -> None:
    """More late answers than losses is a bug in the caller."""
    hop = HopAccumulator(ttl=2)
    hop.record_sent()
    with pytest.raises(ValueError, match="late"):
        hop.record_late("198.51.100.6")
