"""Runs one trace over the probe pool: rounds of probes, hop statistics, the end.

A round sends one probe to every TTL still worth probing, spread evenly over
the round's ``interval`` rather than fired in one burst; rounds start every
``interval`` seconds whatever is still in flight, as mtr does. With an
interval of 0 there is no pacing to learn from, so a round is sent at once and
the next one starts as soon as every probe of the previous one has settled:
rounds follow each other back to back but never overlap, and no round probes
above a destination the previous one found. The TTLs worth probing shrink as
the trace learns:

* once the destination answers at TTL d, nothing above d is probed again (and
  hops above d are dropped from the result);
* once a router answers unreachable at TTL u, nothing above u is probed again;
* once ``max_unknown`` consecutive TTLs past the last one that answered have
  each lost a probe and answered none, nothing beyond them is probed again
  (mtr's max-unknown idea).

A probe counts as lost once its wait is over: when mtr-packet says ``no-reply``,
when the worker holding it died, or when the request's :class:`WaitRule` gives it
up early because the trace already knows how long answers take (traceroute's
adaptive wait, see :mod:`mtrd.tracing.wait`). Its wait starts once a probe the run
sent after it has answered: the pool sends a run's probes in order but may hold them back
under load, so until then nothing shows this one went out. A given-up probe stays with the pool,
which keeps its sequence until mtr-packet is done with it; should its answer still
come, it is a *late* reply: counted per hop, its responder shown, loss and RTT
left as they were. The run ends ``completed``
once every round was sent and every probe settled, or ``failed`` when a probe
cannot be sent at all (a local error such as no route, no source address for
the family, permission denied), or when its deadline passes.

With an annotator, each responder address is annotated (name, AS) when the run first
sees it: what is known at once goes into the hop with the reply, a name still being
looked up follows later and the hops it answered at are published again. Nothing waits
for a name while probing; once probing is over, the outcome waits at most
``name_grace`` seconds for lookups still out. A name that comes after that is still put
into the hops and published (``on_hop``), for whoever keeps the trace.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from typing import Protocol as TypingProtocol

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mtrd.annotations.model import Annotation
from mtrd.engine.errors import ProbeFailed, WorkerDied, WorkerUnresponsive
from mtrd.engine.fairqueue import NO_FLOW, Flow
from mtrd.engine.probe import ProbeReply, ProbeRequest, Protocol, ReplyKind
from mtrd.engine.ticket import ProbeTicket
from mtrd.tracing.model import (
    DEFAULT_PORTS,
    Hop,
    HopEnd,
    LiveHop,
    Stop,
    StopReason,
    TraceError,
    TraceRequest,
)
from mtrd.tracing.naming import Annotating, HopNames
from mtrd.tracing.stats import HopAccumulator
from mtrd.tracing.wait import WaitFloor

DEFAULT_MAX_UNKNOWN = 5
_EPSILON = 1e-9  # a timer set for time t may read the clock a rounding error before t


class Prober(TypingProtocol):
    """What the runners need of a probe pool (see :class:`~mtrd.engine.pool.ProbePool`)."""

    def probe(self, request: ProbeRequest, flow: Flow | None = None) -> Deferred[ProbeReply]:
        """Send one probe; fire with its reply. Waiting probes take turns by ``flow``."""
        ...

    def send(self, *tickets: ProbeTicket) -> None:
        """Send each ticket's probe, in order; deliver its reply or error to it once."""
        ...

    def cancel(self, ticket: ProbeTicket) -> None:
        """Give up on the ticket's probe: nothing is delivered to it."""
        ...


@attrs.frozen
class RunSettings:
    """How a run paces itself and when it gives up."""

    max_unknown: int = DEFAULT_MAX_UNKNOWN
    deadline_slack: float = 40.0  # beyond rounds x interval + timeout: pool queueing, restarts
    name_grace: float = 1.0  # how long the end waits for names still being looked up

    def deadline(self, request: TraceRequest) -> float:
        """Seconds after which a trace with ``request`` fails rather than run on.

        Rounds start every ``interval`` seconds; with interval 0 each waits for the
        previous one to settle, which takes at most its ``timeout``.
        """
        round_time = request.interval if request.interval > 0 else request.timeout
        return request.probes * round_time + request.timeout + self.deadline_slack


@attrs.frozen
class RunOutcome:
    """How a run ended."""

    hops: tuple[Hop, ...]
    destination_reached: bool
    error: TraceError | None = None
    cancelled: bool = False
    stop: Stop = Stop(StopReason.MAX_TTL)


@attrs.define(eq=False)
class _InFlight:
    """A probe whose wait is not over: its TTL, when the run sent it, and how many probes
    the run sent before it."""

    ttl: int
    sent_at: float
    order: int


_ENDS = {
    ReplyKind.REPLY: HopEnd.DESTINATION,
    ReplyKind.NO_ROUTE: HopEnd.UNREACHABLE,
    ReplyKind.NO_ROUTE_NETWORK: HopEnd.UNREACHABLE,
    ReplyKind.NO_ROUTE_HOST: HopEnd.UNREACHABLE,
    ReplyKind.HOST_DOWN: HopEnd.HOST_DOWN,
}
_LOST = frozenset({ReplyKind.NO_REPLY, ReplyKind.TCP_RESPONSE_TIMEOUT, ReplyKind.PROBES_EXHAUSTED})
_LOCAL_ERRORS = {
    ReplyKind.NO_ROUTE: "no route to the target from this host",
    ReplyKind.NETWORK_DOWN: "the network is down",
    ReplyKind.PERMISSION_DENIED: "mtr-packet may not send probes (it needs CAP_NET_RAW)",
    ReplyKind.ADDRESS_IN_USE: "the source address and port are in use",
    ReplyKind.ADDRESS_NOT_AVAILABLE: "the source address is not available on this host",
    ReplyKind.INVALID_ARGUMENT: "mtr-packet refused the probe (no source address for "
    "this address family, or an unusable argument)",
}


class TraceRun:
    """One trace in progress. Create, then ``await run.start()``; ``cancel()`` stops it."""

    log = Logger()

    def __init__(
        self,
        *,
        clock: IReactorTime,
        prober: Prober,
        request: TraceRequest,
        address: str,
        on_hop: Callable[[LiveHop], None] = lambda _: None,
        settings: RunSettings = RunSettings(),
        source: str | None = None,
        local_port: int | None = None,
        flow: Flow | None = None,
        annotator: Annotating | None = None,
        wait_floor: WaitFloor | None = None,
    ) -> None:
        """``flow`` names this run's probes to the pool, which serves flows in turn."""
        self._clock = clock
        self._flow = NO_FLOW if flow is None else flow
        self._prober = prober
        self._request = request
        self._address = address
        self._on_hop = on_hop
        self._settings = settings
        self._source = source
        self._local_port = local_port
        self._wait_floor = wait_floor or WaitFloor()
        self._hops: dict[int, HopAccumulator] = {}
        self._probes: dict[int, ProbeRequest] = {}  # one request per TTL, reused every round
        self._template: ProbeRequest | None = None  # the first, checked in full
        self._in_flight: dict[ProbeTicket, _InFlight] = {}
        # Answers to these are late; each with when its wait started.
        self._given_up: dict[ProbeTicket, float] = {}
        self._rtt: dict[int, float] = {}  # the last round-trip time (s) at each TTL
        self._sends = 0
        # Answered probes by send order, and when each went on the wire (its answer's
        # arrival less its round-trip time). The pool sends a run's probes in the order it
        # was given them, so a probe sent before an answered one was on the wire by then,
        # however long the pool held both back: that is when its wait starts.
        self._answered_orders: list[int] = []
        self._answered_wire: list[float] = []
        self._give_up: IDelayedCall | None = None
        self._calls: set[IDelayedCall] = set()
        self._rounds_left = request.probes
        self._destination_ttl: int | None = None
        self._unreachable_ttl: int | None = None
        self._unreachable_kind: str | None = None
        self._known_limit: int | None = None  # _limit() until the next answer or loss
        self._last_answered = request.first_ttl - 1  # the highest TTL that answered
        self._silent_losses = False  # whether a TTL that never answered lost a probe
        self._done: Deferred[RunOutcome] | None = None
        self._deadline: IDelayedCall | None = None
        self._sending = False
        self._over = False
        self._names = (
            None if annotator is None else HopNames(annotator, self._named, self._names_settled)
        )
        self._ending: tuple[TraceError | None, bool] | None = None  # the outcome, in grace
        self._grace: IDelayedCall | None = None
        self._delivered = False

    def start(self) -> Deferred[RunOutcome]:
        """Begin the first round; the Deferred fires with the outcome."""
        if self._done is not None:
            raise RuntimeError("a run starts once")
        # Cancelling the Deferred ends the run as cancelled (it then fires with that outcome).
        self._done = Deferred(lambda _: self._cancel_asked())
        self._deadline = self._clock.callLater(
            self._settings.deadline(self._request), self._deadline_passed
        )
        self._round()
        return self._done

    def cancel(self) -> None:
        """Stop sending, give up on what is in flight, and end the run as cancelled."""
        self._cancel_asked()

    def _cancel_asked(self) -> None:
        if self._ending is not None:
            self._deliver()  # probing is over already: the names just stop being waited for
        else:
            self._finish(cancelled=True)

    # -- rounds ---------------------------------------------------------------------------

    def _round(self) -> None:
        self._rounds_left -= 1
        interval = self._request.interval
        ttls = range(self._request.first_ttl, self._limit() + 1)
        spacing = interval / len(ttls) if ttls else 0.0
        self._sending = True  # replies that settle at once must not end the run mid-round
        try:
            if spacing == 0:
                self._send(*ttls)
            else:
                for index, ttl in enumerate(ttls):
                    if index == 0:
                        self._send(ttl)
                    else:
                        self._later(index * spacing, self._send, ttl)
            if self._rounds_left > 0 and interval > 0:
                self._later(interval, self._round)
        finally:
            self._sending = False
        self._check_done()

    def _send(self, *ttls: int) -> None:
        """Send a probe at each of ``ttls`` (ascending), to the pool in one call."""
        tickets: list[ProbeTicket] = []
        now = self._clock.seconds()
        for ttl in ttls:
            if self._finished or ttl > self._limit():
                break
            probe = self._probes.get(ttl)
            if probe is None:
                try:
                    probe = self._probes[ttl] = self._probe_request(ttl)
                except ValueError as e:
                    self._send_tickets(tickets)
                    self._finish(error=TraceError("invalid-probe", str(e)))
                    return
                self._hops[ttl] = HopAccumulator(ttl=ttl)
            self._hops[ttl].record_sent()
            # In flight before it is sent: a pool that cannot send it answers at once.
            ticket = ProbeTicket(probe, self._settled, self._flow)
            self._in_flight[ticket] = _InFlight(ttl, now, self._sends)
            self._sends += 1
            tickets.append(ticket)
        self._send_tickets(tickets)

    def _send_tickets(self, tickets: list[ProbeTicket]) -> None:
        if not tickets:
            return
        try:
            self._prober.send(*tickets)
        except ProbeFailed as e:
            for ticket in tickets:
                self._in_flight.pop(ticket, None)
            self._finish(error=TraceError("engine-unavailable", str(e)))

    def _probe_request(self, ttl: int) -> ProbeRequest:
        if self._template is not None:
            return self._template.at_ttl(ttl)
        request = self._request
        port = request.port
        if port is None and request.protocol in DEFAULT_PORTS:
            port = DEFAULT_PORTS[request.protocol]
        self._template = ProbeRequest(
            target=self._address,
            ttl=ttl,
            protocol=request.protocol,
            port=port,
            local_port=self._local_port if request.protocol is Protocol.UDP else None,
            source=self._source,
            timeout=request.timeout,
            size=request.size,
            tos=request.tos,
        )
        return self._template

    # -- replies ---------------------------------------------------------------------------

    def _settled(self, ticket: ProbeTicket, outcome: ProbeReply | Exception) -> None:
        ttl = ticket.request.ttl
        started = self._given_up.pop(ticket, None)
        if started is not None:
            if not self._finished and isinstance(outcome, ProbeReply):
                self._answered_late(outcome, ttl, started)
            return
        sent = self._in_flight.pop(ticket, None)
        if not self._finished:
            if isinstance(outcome, Exception):
                self._failed(outcome, ttl)
            else:
                self._answered(outcome, ttl)
                if sent is not None and outcome.rtt_us is not None:
                    self._learn_rtt(sent, outcome.rtt_us / 1e6)
        self._check_done()

    def _answered_late(self, reply: ProbeReply, ttl: int, started: float) -> None:
        if reply.address is None or reply.rtt_us is None:
            return  # mtr-packet's own no-reply for a probe given up already
        end = _ENDS.get(reply.kind)
        if reply.kind not in (ReplyKind.REPLY, ReplyKind.TTL_EXPIRED) and end is None:
            return
        now = self._clock.seconds()
        self._wait_floor.late(now - started, now)
        hop = self._hops[ttl]
        hop.record_late(reply.address, reply.mpls, end)
        if self._names is not None:
            self._names.annotate(hop, reply.address)
        if end is not None:
            self._note_end(ttl, end, reply.kind)
            self._known_limit = None
        if ttl <= self._limit():
            self._on_hop(hop)

    # -- adaptive wait ---------------------------------------------------------------------

    def _learn_rtt(self, sent: _InFlight, rtt: float) -> None:
        """An answer taught how long answers take: probes still out may be given up sooner."""
        if not self._request.wait.adaptive:
            return
        self._rtt[sent.ttl] = rtt
        # Only probes sent before this one can be given up on its evidence; the oldest
        # probe in flight comes first (dicts keep insertion order, and sends go in order).
        oldest = next(iter(self._in_flight.values()), None)
        orders, wire = self._answered_orders, self._answered_wire
        # Answers older than every probe in flight are evidence for none: drop them.
        stale = len(orders) if oldest is None else bisect.bisect_left(orders, oldest.order)
        del orders[:stale], wire[:stale]
        if oldest is None or oldest.order > sent.order:
            return
        index = bisect.bisect_left(orders, sent.order)
        orders.insert(index, sent.order)
        wire.insert(index, max(sent.sent_at, self._clock.seconds() - rtt))
        self._schedule_give_up(self._in_flight.values())

    def _wait_start(self, probe: _InFlight) -> float | None:
        """When ``probe`` surely was on the wire: when the first probe sent after it and
        answered was. None until one has: nothing shows this probe has left the pool."""
        later = bisect.bisect_right(self._answered_orders, probe.order)
        if later == len(self._answered_orders):
            return None
        return max(probe.sent_at, self._answered_wire[later])

    def _give_up_at(self, probe: _InFlight, answered: list[int]) -> float | None:
        """When to give ``probe`` up (None: not before mtr-packet's own timeout);
        ``answered`` is the sorted TTLs with a known round-trip time.

        The wait runs from when the first probe sent after this one and answered went
        on the wire: until one has, nothing shows this probe has left the pool.
        """
        start = self._wait_start(probe)
        if start is None:
            return None
        ttl = probe.ttl
        index = bisect.bisect_right(answered, ttl)
        near = self._rtt[answered[index]] if index < len(answered) else None
        timeout = self._request.timeout
        floor = self._wait_floor.seconds(self._clock.seconds())
        wait = self._request.wait.wait(
            timeout, here_rtt=self._rtt.get(ttl), near_rtt=near, floor=floor
        )
        if wait >= timeout:
            return None
        return start + wait

    def _schedule_give_up(self, probes: Iterable[_InFlight]) -> None:
        """Keep one timer at or before the earliest give-up of ``probes`` (the timer
        re-checks every probe when it fires)."""
        earliest: float | None = None
        answered = sorted(self._rtt)
        for probe in probes:
            at = self._give_up_at(probe, answered)
            if at is not None and (earliest is None or at < earliest):
                earliest = at
        if earliest is None:
            return
        timer = self._give_up
        if timer is not None and timer.active():
            if timer.getTime() <= earliest:
                return
            timer.cancel()
        self._give_up = self._clock.callLater(
            max(0.0, earliest - self._clock.seconds()), self._give_up_due
        )

    def _give_up_due(self) -> None:
        self._give_up = None
        if self._finished:
            return
        now = self._clock.seconds()
        answered = sorted(self._rtt)
        due = [
            (ticket, probe)
            for ticket, probe in self._in_flight.items()
            if (at := self._give_up_at(probe, answered)) is not None and at <= now + _EPSILON
        ]
        for ticket, probe in due:
            del self._in_flight[ticket]
            start = self._wait_start(probe)
            self._given_up[ticket] = probe.sent_at if start is None else start
            self._lost(probe.ttl)
        if self._in_flight:
            self._schedule_give_up(self._in_flight.values())
        self._check_done()

    def _lost(self, ttl: int) -> None:
        """Count a probe at ``ttl`` lost (its wait is over) and tell who listens."""
        hop = self._hops[ttl]
        hop.record_lost()
        self._known_limit = None
        self._silent_losses = self._silent_losses or not hop.received
        if ttl <= self._limit():
            self._on_hop(hop)

    def _answered(self, reply: ProbeReply, ttl: int) -> None:
        hop = self._hops[ttl]
        end = _ENDS.get(reply.kind)
        if reply.kind in (ReplyKind.REPLY, ReplyKind.TTL_EXPIRED) or (
            end is not None and reply.address is not None
        ):
            if reply.address is None or reply.rtt_us is None:
                hop.record_lost()
            else:
                hop.record_reply(reply.address, reply.rtt_us, reply.mpls, end)
                if self._names is not None:
                    self._names.annotate(hop, reply.address)
                self._note_end(ttl, end, reply.kind)
        elif reply.kind in _LOST or reply.kind is ReplyKind.UNKNOWN:
            hop.record_lost()
        else:
            reason = _LOCAL_ERRORS.get(reply.kind, f"mtr-packet answered {reply.raw!r}")
            self._finish(error=TraceError("probe-error", reason))
            return
        if hop.received <= 1 or end is not None:
            # A first answer at this TTL, a loss at a silent one, or an end: the limit
            # may move. (Later answers at a TTL that already answered cannot move it.)
            self._known_limit = None
            if hop.received:
                self._last_answered = max(self._last_answered, ttl)
            else:
                self._silent_losses = True
        if ttl <= self._limit():
            self._on_hop(hop)

    # -- annotations -----------------------------------------------------------------------

    def _named(self, address: str, annotation: Annotation) -> None:
        limit = self._limit()
        for ttl in sorted(self._hops):
            hop = self._hops[ttl]
            if hop.annotate(address, annotation) and ttl <= limit:
                self._on_hop(hop)

    def _names_settled(self) -> None:
        if self._ending is not None:
            self._deliver()
        self._drop_names()

    def _drop_names(self) -> None:
        # The lookups hold this run's methods: once the outcome is out and no name is still
        # coming, letting go of them leaves no cycle, and the run is freed at once rather
        # than by a garbage collection.
        if self._delivered and self._names is not None and not self._names.pending:
            self._names = None

    # -- how it ends --------------------------------------------------------------------------

    def _note_end(self, ttl: int, end: HopEnd | None, kind: ReplyKind) -> None:
        if end is HopEnd.DESTINATION:
            self._destination_ttl = min(ttl, self._destination_ttl or ttl)
        elif end is not None and (self._unreachable_ttl is None or ttl < self._unreachable_ttl):
            self._unreachable_ttl = ttl
            self._unreachable_kind = kind.value

    def _failed(self, error: Exception, ttl: int) -> None:
        if isinstance(error, CancelledError):
            return
        if isinstance(error, WorkerDied | WorkerUnresponsive):
            # The probe was sent and its answer is lost with the worker: count it lost.
            self.log.warn("probe at TTL {ttl} lost: {why}", ttl=ttl, why=str(error))
            self._lost(ttl)
            return
        if isinstance(error, ProbeFailed):
            self._finish(error=TraceError("engine-unavailable", str(error)))
            return
        self.log.failure("probe at TTL {ttl} failed unexpectedly", Failure(error), ttl=ttl)  # type: ignore[no-untyped-call]
        self._finish(error=TraceError("internal-error", str(error)))

    # -- the end ---------------------------------------------------------------------------

    def _limit(self) -> int:
        """The highest TTL still worth probing (kept until the next answer or loss)."""
        if self._known_limit is not None:
            return self._known_limit
        limit = self._request.max_ttl
        for bound in (self._destination_ttl, self._unreachable_ttl):
            if bound is not None:
                limit = min(limit, bound)
        gap = self._gap_bound()
        if gap is not None:
            limit = min(limit, gap)
        self._known_limit = limit
        return limit

    def _gap_bound(self) -> int | None:
        """The last TTL worth probing before a run of ``max_unknown`` silent TTLs, if any."""
        if not self._silent_losses:
            return None
        hops, last = self._hops, self._last_answered
        silent, ttl = 0, last + 1
        while ttl in hops and hops[ttl].received == 0 and hops[ttl].lost > 0:
            silent += 1
            ttl += 1
        if silent >= self._settings.max_unknown:
            return last + self._settings.max_unknown
        return None

    def _stop(self, error: TraceError | None, *, cancelled: bool) -> Stop:
        """Why the run ends, given how it ends."""
        if cancelled:
            return Stop(StopReason.CANCELLED)
        if error is not None:
            return Stop(StopReason.DEADLINE if error.type == "deadline" else StopReason.ERROR)
        limit = self._limit()
        if self._destination_ttl == limit:
            return Stop(StopReason.DESTINATION)
        if self._unreachable_ttl == limit:
            return Stop(StopReason.UNREACHABLE, self._unreachable_kind)
        if self._gap_bound() == limit:
            return Stop(StopReason.GAP_LIMIT)
        return Stop(StopReason.MAX_TTL)

    @property
    def _finished(self) -> bool:
        return self._done is None or self._over

    def _check_done(self) -> None:
        if self._sending or self._finished or self._in_flight or self._calls:
            return
        if self._rounds_left > 0:
            # Interval 0: the previous round has settled, so the next one starts now.
            # (With an interval, a scheduled round is still in ``_calls``.)
            self._round()
        else:
            self._finish()

    def _deadline_passed(self) -> None:
        self._deadline = None
        seconds = self._settings.deadline(self._request)
        self._finish(error=TraceError("deadline", f"the trace did not finish within {seconds:g} s"))

    def _finish(self, *, error: TraceError | None = None, cancelled: bool = False) -> None:
        if self._finished:
            return
        assert self._done is not None
        self._over = True
        for call in [*self._calls, self._deadline, self._give_up]:
            if call is not None and call.active():
                call.cancel()
        self._calls.clear()
        # The pool keeps each sent probe's sequence until mtr-packet is done with it.
        for ticket in [*self._in_flight, *self._given_up]:
            self._prober.cancel(ticket)
        self._in_flight.clear()
        self._given_up.clear()
        self._ending = (error, cancelled)
        waiting = self._names is not None and self._names.pending
        if waiting and not cancelled and self._settings.name_grace > 0:
            self._grace = self._clock.callLater(self._settings.name_grace, self._deliver)
        else:
            self._deliver()

    def _deliver(self) -> None:
        """Fire the outcome (once): probing is over, and so is the wait for names."""
        if self._delivered or self._ending is None:
            return
        assert self._done is not None
        self._delivered = True
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        self._grace = None  # a call that ran still holds this method: no cycle to leave
        error, cancelled = self._ending
        limit = self._limit()
        hops = tuple(self._hops[ttl].snapshot() for ttl in sorted(self._hops) if ttl <= limit)
        self._done.callback(
            RunOutcome(
                hops=hops,
                destination_reached=self._destination_ttl is not None,
                error=error,
                cancelled=cancelled,
                stop=self._stop(error, cancelled=cancelled),
            )
        )
        self._drop_names()

    def _later(self, delay: float, f: Callable[..., object], *args: object) -> None:
        """Schedule a send or a round; ``_calls`` holds exactly those not yet run."""

        # The call is handed to ``run`` through a list it empties: a call that ran keeps
        # its function, and a function holding its call would be a cycle.
        held: list[IDelayedCall] = []

        def run() -> None:
            self._calls.discard(held.pop())
            f(*args)
            self._check_done()

        call = self._clock.callLater(delay, run)
        held.append(call)
        self._calls.add(call)
