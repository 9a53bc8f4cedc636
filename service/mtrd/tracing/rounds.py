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

A probe counts as lost only once its wait is over: when mtr-packet says
``no-reply``, or when the worker holding it died. The run ends ``completed``
once every round was sent and every probe settled, or ``failed`` when a probe
cannot be sent at all (a local error such as no route, no source address for
the family, permission denied), or when its deadline passes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol as TypingProtocol

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mtrd.engine.errors import ProbeFailed, WorkerDied, WorkerUnresponsive
from mtrd.engine.fairqueue import Flow
from mtrd.engine.probe import ProbeReply, ProbeRequest, Protocol, ReplyKind
from mtrd.tracing.model import DEFAULT_PORTS, Hop, HopEnd, LiveHop, TraceError, TraceRequest
from mtrd.tracing.stats import HopAccumulator

DEFAULT_MAX_UNKNOWN = 5


class Prober(TypingProtocol):
    """What the runner needs of a probe pool."""

    def probe(self, request: ProbeRequest, flow: Flow | None = None) -> Deferred[ProbeReply]:
        """Send one probe; fire with its reply. Waiting probes take turns by ``flow``."""
        ...


@attrs.frozen
class RunSettings:
    """How a run paces itself and when it gives up."""

    max_unknown: int = DEFAULT_MAX_UNKNOWN
    deadline_slack: float = 40.0  # beyond rounds x interval + timeout: pool queueing, restarts

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
    ) -> None:
        """``flow`` names this run's probes to the pool, which serves flows in turn."""
        self._clock = clock
        self._flow = flow
        self._prober = prober
        self._request = request
        self._address = address
        self._on_hop = on_hop
        self._settings = settings
        self._source = source
        self._local_port = local_port
        self._hops: dict[int, HopAccumulator] = {}
        self._probes: dict[int, ProbeRequest] = {}  # one request per TTL, reused every round
        self._in_flight: set[Deferred[ProbeReply]] = set()
        self._calls: set[IDelayedCall] = set()
        self._rounds_left = request.probes
        self._destination_ttl: int | None = None
        self._unreachable_ttl: int | None = None
        self._known_limit: int | None = None  # _limit() until the next answer or loss
        self._last_answered = request.first_ttl - 1  # the highest TTL that answered
        self._silent_losses = False  # whether a TTL that never answered lost a probe
        self._done: Deferred[RunOutcome] | None = None
        self._deadline: IDelayedCall | None = None
        self._sending = False
        self._over = False

    def start(self) -> Deferred[RunOutcome]:
        """Begin the first round; the Deferred fires with the outcome."""
        if self._done is not None:
            raise RuntimeError("a run starts once")
        # Cancelling the Deferred ends the run as cancelled (it then fires with that outcome).
        self._done = Deferred(lambda _: self._finish(cancelled=True))
        self._deadline = self._clock.callLater(
            self._settings.deadline(self._request), self._deadline_passed
        )
        self._round()
        return self._done

    def cancel(self) -> None:
        """Stop sending, give up on what is in flight, and end the run as cancelled."""
        self._finish(cancelled=True)

    # -- rounds ---------------------------------------------------------------------------

    def _round(self) -> None:
        self._rounds_left -= 1
        interval = self._request.interval
        ttls = range(self._request.first_ttl, self._limit() + 1)
        spacing = interval / len(ttls) if ttls else 0.0
        self._sending = True  # replies that settle at once must not end the run mid-round
        try:
            for index, ttl in enumerate(ttls):
                if index == 0 or spacing == 0:
                    self._send(ttl)
                else:
                    self._later(index * spacing, self._send, ttl)
            if self._rounds_left > 0 and interval > 0:
                self._later(interval, self._round)
        finally:
            self._sending = False
        self._check_done()

    def _send(self, ttl: int) -> None:
        if self._finished or ttl > self._limit():
            return
        probe = self._probes.get(ttl)
        if probe is None:
            try:
                probe = self._probes[ttl] = self._probe_request(ttl)
            except ValueError as e:
                self._finish(error=TraceError("invalid-probe", str(e)))
                return
            self._hops[ttl] = HopAccumulator(ttl=ttl)
        self._hops[ttl].record_sent()
        try:
            result = self._prober.probe(probe, self._flow)
        except ProbeFailed as e:
            self._finish(error=TraceError("engine-unavailable", str(e)))
            return
        self._in_flight.add(result)
        result.addBoth(self._settled, ttl, result)

    def _probe_request(self, ttl: int) -> ProbeRequest:
        request = self._request
        port = request.port
        if port is None and request.protocol in DEFAULT_PORTS:
            port = DEFAULT_PORTS[request.protocol]
        return ProbeRequest(
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

    # -- replies ---------------------------------------------------------------------------

    def _settled(self, outcome: ProbeReply | Failure, ttl: int, result: object) -> None:
        self._in_flight.discard(result)
        if not self._finished:
            if isinstance(outcome, Failure):
                self._failed(outcome, ttl)
            else:
                self._answered(outcome, ttl)
        self._check_done()

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
                self._note_end(ttl, end)
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

    def _note_end(self, ttl: int, end: HopEnd | None) -> None:
        if end is HopEnd.DESTINATION:
            self._destination_ttl = min(ttl, self._destination_ttl or ttl)
        elif end is not None:
            self._unreachable_ttl = min(ttl, self._unreachable_ttl or ttl)

    def _failed(self, failure: Failure, ttl: int) -> None:
        if isinstance(failure.value, CancelledError):
            return
        if isinstance(failure.value, WorkerDied | WorkerUnresponsive):
            # The probe was sent and its answer is lost with the worker: count it lost.
            self.log.warn("probe at TTL {ttl} lost: {why}", ttl=ttl, why=failure.getErrorMessage())
            self._hops[ttl].record_lost()
            self._known_limit = None
            self._silent_losses = self._silent_losses or not self._hops[ttl].received
            self._on_hop(self._hops[ttl])
            return
        if isinstance(failure.value, ProbeFailed):
            self._finish(error=TraceError("engine-unavailable", failure.getErrorMessage()))
            return
        self.log.failure("probe at TTL {ttl} failed unexpectedly", failure, ttl=ttl)
        self._finish(error=TraceError("internal-error", failure.getErrorMessage()))

    # -- the end ---------------------------------------------------------------------------

    def _limit(self) -> int:
        """The highest TTL still worth probing (kept until the next answer or loss)."""
        if self._known_limit is not None:
            return self._known_limit
        limit = self._request.max_ttl
        for bound in (self._destination_ttl, self._unreachable_ttl):
            if bound is not None:
                limit = min(limit, bound)
        if self._silent_losses:
            hops, last = self._hops, self._last_answered
            silent, ttl = 0, last + 1
            while ttl in hops and hops[ttl].received == 0 and hops[ttl].lost > 0:
                silent += 1
                ttl += 1
            if silent >= self._settings.max_unknown:
                limit = min(limit, last + self._settings.max_unknown)
        self._known_limit = limit
        return limit

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
        for call in [*self._calls, self._deadline]:
            if call is not None and call.active():
                call.cancel()
        self._calls.clear()
        for result in list(self._in_flight):
            result.cancel()
        limit = self._limit()
        hops = tuple(self._hops[ttl].snapshot() for ttl in sorted(self._hops) if ttl <= limit)
        self._done.callback(
            RunOutcome(
                hops=hops,
                destination_reached=self._destination_ttl is not None,
                error=error,
                cancelled=cancelled,
            )
        )

    def _later(self, delay: float, f: Callable[..., object], *args: object) -> None:
        """Schedule a send or a round; ``_calls`` holds exactly those not yet run."""

        def run() -> None:
            self._calls.discard(call)
            f(*args)
            self._check_done()

        call = self._clock.callLater(delay, run)
        self._calls.add(call)
