"""The trace runner on a Clock with a fake network: rounds, pacing, pruning, the end."""

from __future__ import annotations

from typing import Any

import attrs
from mtrd.engine.errors import NoWorkerAvailable, WorkerDied
from mtrd.engine.pool import PoolConfig, ProbePool
from mtrd.engine.probe import Protocol
from mtrd.tracing.model import HopEnd, Responder, Stop, StopReason, TraceRequest
from mtrd.tracing.rounds import RunOutcome, RunSettings, TraceRun
from mtrd.tracing.wait import WaitRule
from twisted.internet.defer import Deferred, ensureDeferred, fail
from twisted.internet.task import Clock

from tests.fakes import FakeNetwork, FakeProcessReactor, SendsByProbe

ROUTERS = ["198.51.100.1", "198.51.100.6", "198.51.100.17"]
TARGET = "203.0.113.7"


def run(
    network: Any,
    clock: Clock,
    request: TraceRequest,
    *,
    hops: list[Any] | None = None,
    **kwargs: Any,
) -> tuple[TraceRun, Deferred[RunOutcome]]:
    trace_run = TraceRun(
        clock=clock,
        prober=network,
        request=request,
        address=TARGET,
        on_hop=(hops.append if hops is not None else lambda _: None),
        **kwargs,
    )
    return trace_run, trace_run.start()


def outcome_of(d: Deferred[RunOutcome]) -> RunOutcome:
    assert d.called, "the run has not ended"
    value = d.result  # type: ignore[attr-defined]
    assert isinstance(value, RunOutcome), value
    return value


def test_completed_trace_reaches_the_destination_and_stops_there() -> None:
    """Hops end at the destination's TTL; nothing above it stays in the result."""
    clock = Clock()
    network = FakeNetwork(clock, ROUTERS)
    _, d = run(network, clock, TraceRequest(TARGET, probes=3, interval=1.0, max_ttl=30))
    clock.pump([0.05] * 100)
    outcome = outcome_of(d)
    assert outcome.destination_reached
    assert outcome.error is None
    assert [h.ttl for h in outcome.hops] == [1, 2, 3, 4]
    assert [h.responders[0].address for h in outcome.hops] == [*ROUTERS, TARGET]
    assert outcome.hops[-1].end is HopEnd.DESTINATION
    assert all(h.sent == 3 and h.received == 3 for h in outcome.hops)


def test_no_ttl_above_the_destination_is_probed_again() -> None:
    """Once the destination answered at TTL 4, only TTLs 1-4 are probed."""
    clock = Clock()
    network = FakeNetwork(clock, ROUTERS)
    run(network, clock, TraceRequest(TARGET, probes=3, interval=1.0, max_ttl=30))
    clock.pump([0.05] * 100)
    beyond = [p.ttl for p in network.sent if p.ttl > 4]
    assert beyond == []  # TTL 4's reply came 0.01 s after its probe, before TTL 5's turn
    assert sorted(p.ttl for p in network.sent if p.ttl <= 4) == sorted([1, 2, 3, 4] * 3)


def test_probes_of_a_round_are_spread_over_the_interval() -> None:
    """A round of 10 TTLs with interval 1 s sends one probe every 0.1 s, not a burst."""
    clock = Clock()
    network = FakeNetwork(clock, ["198.51.100.1"] * 20)
    run(network, clock, TraceRequest(TARGET, probes=1, interval=1.0, max_ttl=10))
    assert len(network.sent) == 1
    clock.advance(0.1)
    assert len(network.sent) == 2
    clock.advance(0.85)
    assert len(network.sent) == 10


def test_zero_interval_sends_every_ttl_at_once() -> None:
    """With interval 0 a round is sent at once (for the fastest possible trace)."""
    clock = Clock()
    network = FakeNetwork(clock, ROUTERS)
    _, d = run(network, clock, TraceRequest(TARGET, probes=1, interval=0.0, max_ttl=8))
    assert len(network.sent) == 8
    clock.advance(0.01)
    assert outcome_of(d).destination_reached


def test_zero_interval_rounds_follow_each_other_without_overlap() -> None:
    """Interval 0: the next round starts once the previous settled, and skips what it learned.

    Round 1 probes TTLs 1-8 at once; the destination answers at TTL 4, so rounds 2 and 3
    probe TTLs 1-4 only: 16 probes, not 24.
    """
    clock = Clock()
    network = FakeNetwork(clock, ROUTERS)
    _, d = run(network, clock, TraceRequest(TARGET, probes=3, interval=0.0, max_ttl=8))
    assert [p.ttl for p in network.sent] == list(range(1, 9))
    clock.advance(0.01)
    assert [p.ttl for p in network.sent[8:]] == [1, 2, 3, 4]
    clock.advance(0.01)
    assert [p.ttl for p in network.sent[12:]] == [1, 2, 3, 4]
    assert not d.called
    clock.advance(0.01)
    outcome = outcome_of(d)
    assert len(network.sent) == 16
    assert [(h.ttl, h.sent, h.received) for h in outcome.hops] == [(t, 3, 3) for t in (1, 2, 3, 4)]


def test_zero_interval_round_waits_for_a_silent_hop() -> None:
    """A silent TTL holds the next round until its probe's timeout is over."""
    clock = Clock()
    network = FakeNetwork(clock, ROUTERS, silent=frozenset({2}))
    request = TraceRequest(TARGET, probes=2, interval=0.0, max_ttl=8, timeout=1)
    _, d = run(network, clock, request)
    clock.advance(0.5)
    assert len(network.sent) == 8  # round 2 waits for TTL 2's no-reply
    clock.advance(0.5)
    assert len(network.sent) == 12
    clock.advance(1.0)
    outcome = outcome_of(d)
    assert outcome.destination_reached
    assert (outcome.hops[1].sent, outcome.hops[1].lost) == (2, 2)


def test_zero_interval_deadline_allows_every_round_its_timeout() -> None:
    """With interval 0 rounds may each take ``timeout``: the deadline counts that."""
    request = TraceRequest(TARGET, probes=5, interval=0.0, timeout=3)
    assert RunSettings(deadline_slack=1.0).deadline(request) == 5 * 3 + 3 + 1.0
    paced = TraceRequest(TARGET, probes=5, interval=0.5, timeout=3)
    assert RunSettings(deadline_slack=1.0).deadline(paced) == 5 * 0.5 + 3 + 1.0


def test_silent_hops_past_the_last_responder_end_the_trace_early() -> None:
    """A blackhole: after max_unknown silent TTLs, nothing beyond them is probed or kept."""
    clock = Clock()
    network = FakeNetwork(clock, ROUTERS, blackhole_after=2)
    request = TraceRequest(TARGET, probes=3, interval=1.0, max_ttl=30, timeout=2)
    _, d = run(network, clock, request, settings=RunSettings(max_unknown=5))
    clock.pump([0.05] * 200)
    outcome = outcome_of(d)
    assert not outcome.destination_reached
    assert [h.ttl for h in outcome.hops] == [1, 2, 3, 4, 5, 6, 7]
    assert all(h.received == 0 and h.lost > 0 for h in outcome.hops[2:])
    # Rounds 1 and 2 go out before any probe's 2 s wait is over; round 3 is pruned.
    third_round = network.sent[60:]
    assert third_round
    assert all(p.ttl <= 7 for p in third_round)


def test_a_silent_hop_in_the_middle_does_not_end_the_trace() -> None:
    """One router that never answers is a lost hop; the path past it is still traced."""
    clock = Clock()
    network = FakeNetwork(clock, ROUTERS, silent=frozenset({2}))
    _, d = run(network, clock, TraceRequest(TARGET, probes=2, interval=0.5, max_ttl=10))
    clock.pump([0.05] * 200)
    outcome = outcome_of(d)
    assert outcome.destination_reached
    hop2 = outcome.hops[1]
    assert (hop2.sent, hop2.received, hop2.lost, hop2.loss_pct) == (2, 0, 2, 100.0)


def test_unreachable_router_ends_the_path_there() -> None:
    """A router's no-route marks the hop unreachable and nothing above it is probed again."""
    clock = Clock()
    network = FakeNetwork(clock, ROUTERS, unreachable_ttl=3)
    _, d = run(network, clock, TraceRequest(TARGET, probes=2, interval=0.5, max_ttl=10))
    clock.pump([0.05] * 200)
    outcome = outcome_of(d)
    assert not outcome.destination_reached
    assert [h.ttl for h in outcome.hops] == [1, 2, 3]
    assert outcome.hops[-1].end is HopEnd.UNREACHABLE
    assert outcome.hops[-1].responders[0].address == ROUTERS[2]


def test_local_error_fails_the_trace_with_a_clear_reason() -> None:
    """A probe mtr-packet cannot send (no source for the family) fails the trace."""
    clock = Clock()
    network = FakeNetwork(clock, ROUTERS, local_error="invalid-argument")
    _, d = run(network, clock, TraceRequest(TARGET, probes=1, interval=0.0, max_ttl=5))
    clock.advance(0.01)
    outcome = outcome_of(d)
    assert outcome.error is not None
    assert outcome.error.type == "probe-error"
    assert "no source address" in outcome.error.message


def test_probes_lost_with_a_dead_worker_count_as_lost() -> None:
    """A probe whose worker died is a lost probe; the trace still completes."""
    clock = Clock()

    class Dying(SendsByProbe):
        def probe(self, request: Any, flow: Any = None) -> Deferred[Any]:
            return fail(WorkerDied("mtr-packet worker worker-0 killed by signal 9"))

    _, d = run(Dying(), clock, TraceRequest(TARGET, probes=1, interval=0.0, max_ttl=3))
    outcome = outcome_of(d)
    assert outcome.error is None
    assert [(h.sent, h.lost) for h in outcome.hops] == [(1, 1), (1, 1), (1, 1)]


def test_no_worker_available_fails_the_trace() -> None:
    """When the pool has no worker at all, the trace fails saying so."""
    clock = Clock()

    class Empty(SendsByProbe):
        def probe(self, request: Any, flow: Any = None) -> Deferred[Any]:
            return fail(NoWorkerAvailable("no mtr-packet worker is running: exited 1"))

    _, d = run(Empty(), clock, TraceRequest(TARGET, probes=1, interval=0.0, max_ttl=3))
    outcome = outcome_of(d)
    assert outcome.error is not None
    assert outcome.error.type == "engine-unavailable"


def test_cancel_stops_probing_and_gives_up_in_flight_probes() -> None:
    """Cancelling ends the run as cancelled, cancels in-flight probes and sends no more."""
    clock = Clock()
    network = FakeNetwork(clock, ROUTERS, rtt=0.5)
    trace_run, d = run(network, clock, TraceRequest(TARGET, probes=5, interval=1.0))
    clock.advance(0.2)
    sent = len(network.sent)
    trace_run.cancel()
    outcome = outcome_of(d)
    assert outcome.cancelled
    assert network.cancelled > 0
    clock.advance(10)
    assert len(network.sent) == sent


def test_cancelling_the_deferred_cancels_the_run() -> None:
    """Cancelling the run's Deferred gives the cancelled outcome, not an error."""
    clock = Clock()
    network = FakeNetwork(clock, ROUTERS, rtt=0.5)
    _, d = run(network, clock, TraceRequest(TARGET, probes=5, interval=1.0))
    clock.advance(0.2)
    d.cancel()
    assert outcome_of(d).cancelled
    assert not clock.getDelayedCalls() or all(
        not c.active() or c.func.__name__ == "answer" for c in clock.getDelayedCalls()
    )


def test_deadline_fails_a_trace_that_never_settles() -> None:
    """A prober that never answers cannot keep a trace running forever."""
    clock = Clock()

    class Hung(SendsByProbe):
        def probe(self, request: Any, flow: Any = None) -> Deferred[Any]:
            return Deferred()

    request = TraceRequest(TARGET, probes=2, interval=1.0, timeout=2)
    settings = RunSettings(deadline_slack=5.0)
    _, d = run(Hung(), clock, request, settings=settings)
    clock.advance(settings.deadline(request) - 0.1)
    assert not d.called
    clock.advance(0.2)
    outcome = outcome_of(d)
    assert outcome.error is not None
    assert outcome.error.type == "deadline"


def test_hop_updates_are_reported_as_replies_arrive() -> None:
    """Each reply produces a hop update with the new figures."""
    clock = Clock()
    network = FakeNetwork(clock, ROUTERS)
    hops: list[Any] = []
    run(network, clock, TraceRequest(TARGET, probes=1, interval=0.0, max_ttl=4), hops=hops)
    clock.advance(0.01)
    assert sorted(h.ttl for h in hops) == [1, 2, 3, 4]
    assert all(h.received == 1 for h in hops)


def test_udp_probes_keep_one_flow() -> None:
    """Every udp probe of a trace carries the same destination and source port."""
    clock = Clock()
    network = FakeNetwork(clock, ROUTERS)
    request = attrs.evolve(TraceRequest(TARGET, probes=2, interval=0.5), protocol=Protocol.UDP)
    run(network, clock, request, local_port=23456)
    clock.pump([0.05] * 50)
    assert {(p.port, p.local_port) for p in network.sent} == {(33434, 23456)}


# -- adaptive wait, late replies, stop reasons ----------------------------------------------


def step(clock: Clock, seconds: float, tick: float = 0.0005) -> None:
    """Advance ``clock`` in small ticks, as a reactor reads replies soon after they arrive."""
    for _ in range(round(seconds / tick)):
        clock.advance(tick)


def test_a_silent_ttl_is_given_up_after_near_times_a_higher_ttls_round_trip() -> None:
    """TTL 2 is silent; TTL 3 answered in 10 ms, so TTL 2 is given up at 100 ms, not 2 s."""
    clock = Clock()
    network = FakeNetwork(clock, ROUTERS, silent=frozenset({2}))
    _, d = run(network, clock, TraceRequest(TARGET, probes=1, interval=0, timeout=2, max_ttl=4))
    step(clock, 0.099)
    assert not d.called
    step(clock, 0.002)
    outcome = outcome_of(d)
    assert [(h.ttl, h.received, h.lost) for h in outcome.hops][1] == (2, 0, 1)
    assert outcome.destination_reached


def test_a_ttl_that_answered_before_is_given_up_after_here_times_its_round_trip() -> None:
    """TTL 2 answered in 10 ms in round 1; its silent probe of round 2 is given up 30 ms
    after the next probe sent (TTL 3's, at 1.5 s) answered, so surely on the wire by then."""
    clock = Clock()
    network = FakeNetwork(clock, ROUTERS)
    hops: list[Any] = []
    request = TraceRequest(TARGET, probes=2, interval=1.0, timeout=2, max_ttl=4)
    run(network, clock, request, hops=hops)
    step(clock, 0.9)
    network.silent = frozenset({2})
    step(clock, 0.36)  # round 2's probe at TTL 2 went out at 1.25
    assert [p.ttl for p in network.sent].count(2) == 2
    step(clock, 0.268)
    assert [h.snapshot().lost for h in hops if h.ttl == 2][-1:] == [0]
    step(clock, 0.004)
    assert [h.snapshot().lost for h in hops if h.ttl == 2][-1:] == [1]


def test_a_probe_held_back_by_a_busy_pool_is_not_given_up() -> None:
    """Probes the pool sends late (TTL n after n x 100 ms) answer in 10 ms: none is given
    up, though an earlier TTL's answer came long before theirs."""
    clock = Clock()
    network = FakeNetwork(clock, ROUTERS, queued={1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4})
    request = TraceRequest(TARGET, probes=3, interval=0, timeout=2, max_ttl=4)
    _, d = run(network, clock, request)
    step(clock, 2.0, tick=0.001)
    outcome = outcome_of(d)
    assert [(h.received, h.lost, h.late) for h in outcome.hops] == [(3, 0, 0)] * 4


def test_the_floor_bounds_the_wait_on_a_very_fast_path() -> None:
    """With 0.1 ms round trips a silent TTL still waits the 5 ms floor."""
    clock = Clock()
    network = FakeNetwork(clock, ROUTERS, rtt=0.0001, silent=frozenset({2}))
    _, d = run(network, clock, TraceRequest(TARGET, probes=1, interval=0, timeout=2, max_ttl=4))
    step(clock, 0.0049, tick=0.0001)
    assert not d.called
    step(clock, 0.0002, tick=0.0001)
    assert outcome_of(d).hops[1].lost == 1


def test_wait_turned_off_waits_mtr_packets_timeout() -> None:
    """With here and near 0 a silent TTL waits its whole timeout."""
    clock = Clock()
    network = FakeNetwork(clock, ROUTERS, silent=frozenset({2}))
    request = TraceRequest(TARGET, probes=1, interval=0, timeout=2, max_ttl=4, wait=WaitRule(0, 0))
    _, d = run(network, clock, request)
    step(clock, 1.99)
    assert not d.called
    step(clock, 0.02)
    assert outcome_of(d).hops[1].lost == 1


def test_with_interval_zero_the_next_round_starts_once_the_silent_probe_is_given_up() -> None:
    """Round 2 is sent at 100 ms, when TTL 2 of round 1 is given up."""
    clock = Clock()
    network = FakeNetwork(clock, ROUTERS, silent=frozenset({2}))
    run(network, clock, TraceRequest(TARGET, probes=2, interval=0, timeout=2, max_ttl=4))
    step(clock, 0.099)
    assert len(network.sent) == 4
    step(clock, 0.002)
    assert len(network.sent) == 8


def test_an_answer_after_the_give_up_counts_late_not_received() -> None:
    """TTL 2 answers after 150 ms, given up at 100 ms in round 1: late, its responder shown,
    loss and RTT as if it was lost (round 2's answer is received: the floor rose)."""
    clock = Clock()
    network = FakeNetwork(clock, ROUTERS, slow={2: 0.15})
    request = TraceRequest(TARGET, probes=2, interval=0, timeout=2, max_ttl=4)
    _, d = run(network, clock, request)
    step(clock, 2.0, tick=0.001)
    hop = outcome_of(d).hops[1]
    assert (hop.sent, hop.received, hop.lost, hop.late) == (2, 1, 1, 1)
    assert hop.responders == (Responder(ROUTERS[1], 1),)
    assert hop.rtt_ms.avg == 150.0
    assert hop.loss_pct == 50.0


def test_a_late_answer_raises_the_floor_for_the_next_probes() -> None:
    """After TTL 2's answer came late (150 ms), waits are at least 300 ms: rounds 2 and 3
    get their answers."""
    clock = Clock()
    network = FakeNetwork(clock, ROUTERS, slow={2: 0.15})
    request = TraceRequest(TARGET, probes=3, interval=0, timeout=2, max_ttl=4)
    _, d = run(network, clock, request)
    step(clock, 2.0, tick=0.001)
    hop = outcome_of(d).hops[1]
    assert (hop.sent, hop.received, hop.lost, hop.late) == (3, 2, 1, 1)


def test_a_given_up_probe_is_left_to_the_pool_until_the_trace_ends() -> None:
    """Giving up does not cancel the probe (the pool keeps its sequence); the end does."""
    clock = Clock()
    network = FakeNetwork(clock, ROUTERS, silent=frozenset({2}))
    _, d = run(network, clock, TraceRequest(TARGET, probes=2, interval=0, timeout=2, max_ttl=4))
    step(clock, 0.101)
    assert network.cancelled == 0
    step(clock, 0.1)
    assert d.called
    assert network.cancelled == 2  # TTL 2 of both rounds, given up and still with the pool


def test_stop_reason_destination() -> None:
    """A trace that reached its target stopped at the destination."""
    clock = Clock()
    _, d = run(FakeNetwork(clock, ROUTERS), clock, TraceRequest(TARGET, probes=1, interval=0))
    clock.pump([0.01] * 10)
    assert outcome_of(d).stop == Stop(StopReason.DESTINATION)


def test_stop_reason_unreachable_names_the_icmp_kind() -> None:
    """A router's no-route ends the trace as unreachable, kind no-route."""
    clock = Clock()
    network = FakeNetwork(clock, ROUTERS, unreachable_ttl=3)
    _, d = run(network, clock, TraceRequest(TARGET, probes=1, interval=0))
    clock.pump([0.01] * 10)
    assert outcome_of(d).stop == Stop(StopReason.UNREACHABLE, "no-route")


def test_stop_reason_gap_limit() -> None:
    """A blackhole past TTL 2 stops the trace at the gap limit."""
    clock = Clock()
    network = FakeNetwork(clock, ROUTERS, blackhole_after=2)
    _, d = run(network, clock, TraceRequest(TARGET, probes=1, interval=0, timeout=1))
    clock.pump([0.1] * 30)
    assert outcome_of(d).stop == Stop(StopReason.GAP_LIMIT)


def test_stop_reason_max_ttl() -> None:
    """A trace whose max_ttl is below the target stopped at max_ttl."""
    clock = Clock()
    _, d = run(FakeNetwork(clock, ROUTERS), clock, TraceRequest(TARGET, probes=1, max_ttl=2))
    clock.pump([0.1] * 30)
    assert outcome_of(d).stop == Stop(StopReason.MAX_TTL)


def test_stop_reason_cancelled() -> None:
    """A cancelled run says so."""
    clock = Clock()
    trace_run, d = run(FakeNetwork(clock, ROUTERS), clock, TraceRequest(TARGET))
    trace_run.cancel()
    assert outcome_of(d).stop == Stop(StopReason.CANCELLED)


def test_stop_reason_deadline() -> None:
    """A run that outlives its deadline stopped at the deadline."""
    clock = Clock()

    class Never(SendsByProbe):
        def probe(self, _request: Any, _flow: Any = None) -> Deferred[Any]:
            return Deferred()

    _, d = run(Never(), clock, TraceRequest(TARGET, probes=1), settings=RunSettings())
    clock.advance(1000)
    assert outcome_of(d).stop == Stop(StopReason.DEADLINE)


def test_stop_reason_error() -> None:
    """A probe that cannot be sent stops the trace with an error."""
    clock = Clock()
    network = FakeNetwork(clock, ROUTERS, local_error="permission-denied")
    _, d = run(network, clock, TraceRequest(TARGET, probes=1))
    step(clock, 0.01)
    assert outcome_of(d).stop == Stop(StopReason.ERROR)


def test_the_pool_keeps_a_given_up_probes_sequence_until_mtr_packet_is_done() -> None:
    """A probe given up by the trace (and cancelled at its end) still holds its sequence in
    the pool's ledger until mtr-packet answers it: no new probe can reuse it before then."""
    reactor = FakeProcessReactor()
    pool = ProbePool(reactor, PoolConfig(size=1, command=("true",)))
    started = ensureDeferred(pool.start())
    (transport,) = reactor.spawned
    transport.answer_version("0.95")
    assert started.called
    request = TraceRequest(TARGET, probes=1, interval=0, timeout=2, max_ttl=2)
    _, d = run(pool, reactor, request)
    assert [line.split()[5] for line in transport.probe_lines()] == ["1", "2"]
    transport.feed(f"{transport.token_of(1)} reply ip-4 {TARGET} round-trip-time 100\n")
    step(reactor, 0.006, tick=0.001)
    assert outcome_of(d).hops[0].lost == 1  # TTL 1 given up at the 5 ms floor
    assert pool.outstanding == 1
    transport.feed(f"{transport.token_of(0)} no-reply\n")
    assert pool.outstanding == 0
