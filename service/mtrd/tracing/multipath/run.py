"""Runs a multipath discovery over the probe pool: flows become udp source ports.

A flow is an IPv4 udp probe whose destination port is fixed and whose source
port is ``first_local_port + flow``: mtr-packet then carries its sequence in
the udp checksum, so the 5-tuple a load balancer hashes stays the same for every
probe of the flow (Paris traceroute). Source ports lie below mtr-packet's
sequence range, and the pool's ledger keeps every fixed port apart from every
outstanding sequence, so many flows in flight cannot take each other's replies.

Only IPv4 udp holds a flow. On the wire (tcpdump in a namespace, mtr-packet
0.95): tcp probes take their sequence as source port, icmp probes as ICMP
sequence (which changes the checksum), IPv6 udp as one of its ports (and with
both ports fixed no reply can be matched, since the kernel writes the IPv6
checksum): each probe is a new flow.

With an annotator, each responder is annotated (name, AS) when the run first sees
it, as a classic run does (:mod:`mtrd.tracing.rounds`): what is known at once goes
into the hop with the reply, a name still being looked up follows later and the hops
it answered at are published again. No probe waits for a name; once the discovery is
over, the outcome waits at most ``name_grace`` seconds for lookups still out.

Each batch the discovery asks for goes out with probes ``spacing`` seconds
apart (routers rate-limit their ICMP errors; a burst would look like loss);
the next batch waits for the previous one to settle.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import attrs
from twisted.internet.defer import CancelledError, Deferred, FirstError, gatherResults
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from mtrd.annotations.model import Annotation
from mtrd.engine.errors import ProbeFailed, WorkerDied, WorkerUnresponsive
from mtrd.engine.probe import ProbeReply, ProbeRequest, Protocol, ReplyKind
from mtrd.tracing.model import (
    FlowHop,
    FlowPath,
    Hop,
    HopEnd,
    LiveHop,
    MultipathResult,
    PathLink,
    Stop,
    StopReason,
    TraceError,
    TraceRequest,
)
from mtrd.tracing.multipath.discovery import Answer, FlowProbe, MultipathDiscovery
from mtrd.tracing.naming import Annotating, HopNames
from mtrd.tracing.rounds import DEFAULT_MAX_UNKNOWN, Prober
from mtrd.tracing.stats import HopAccumulator

MULTIPATH_PORT = 33434  # the udp destination port of every flow, unless the request names one
MAX_FLOWS = 1024  # distinct flows (source ports) one trace may use
MAX_PROBES = 4096  # probes one trace may send
PROBE_SPACING = 0.005  # seconds between the probes of one batch


@attrs.frozen
class MultipathSettings:
    """Bounds and pacing of a multipath run."""

    max_flows: int = MAX_FLOWS
    max_probes: int = MAX_PROBES
    spacing: float = PROBE_SPACING
    max_unknown: int = DEFAULT_MAX_UNKNOWN
    deadline_slack: float = 40.0
    name_grace: float = 1.0  # how long the end waits for names still being looked up

    def deadline(self, request: TraceRequest) -> float:
        """Seconds after which the run fails: every probe spaced out, plus a wait per hop
        and round of node control."""
        hops = request.max_ttl - request.first_ttl + 1
        return self.max_probes * self.spacing + 4 * hops * request.timeout + self.deadline_slack


@attrs.frozen
class MultipathOutcome:
    """How a multipath run ended."""

    hops: tuple[Hop, ...]
    destination_reached: bool
    multipath: MultipathResult
    error: TraceError | None = None
    cancelled: bool = False
    stop: Stop | None = None  # None: the trace's status says why (cancelled, failed)


_ENDS = {
    ReplyKind.REPLY: HopEnd.DESTINATION,
    ReplyKind.NO_ROUTE: HopEnd.UNREACHABLE,
    ReplyKind.NO_ROUTE_NETWORK: HopEnd.UNREACHABLE,
    ReplyKind.NO_ROUTE_HOST: HopEnd.UNREACHABLE,
    ReplyKind.HOST_DOWN: HopEnd.HOST_DOWN,
}
_LOST = frozenset(
    {
        ReplyKind.NO_REPLY,
        ReplyKind.TCP_RESPONSE_TIMEOUT,
        ReplyKind.PROBES_EXHAUSTED,
        ReplyKind.UNKNOWN,
    }
)


class _Stop(Exception):
    """A probe could not be sent or answered in a way that ends the run."""

    def __init__(self, error: TraceError) -> None:
        super().__init__(error.message)
        self.error = error


class MultipathRun:
    """One multipath trace in progress: ``await run.start()``; cancelling stops it."""

    log = Logger()

    def __init__(
        self,
        *,
        clock: IReactorTime,
        prober: Prober,
        request: TraceRequest,
        address: str,
        first_local_port: int,
        on_hop: Callable[[LiveHop], None] = lambda _: None,
        settings: MultipathSettings = MultipathSettings(),
        source: str | None = None,
        annotator: Annotating | None = None,
    ) -> None:
        self._clock = clock
        self._prober = prober
        self._request = request
        self._address = address
        self._first_local_port = first_local_port
        self._on_hop = on_hop
        self._settings = settings
        self._source = source
        self.discovery = MultipathDiscovery(
            confidence=request.confidence,
            first_ttl=request.first_ttl,
            max_ttl=request.max_ttl,
            max_flows=settings.max_flows,
            max_probes=settings.max_probes,
            max_unknown=settings.max_unknown,
        )
        self._hops: dict[int, HopAccumulator] = {}
        self._flows: dict[int, dict[int, FlowHop]] = defaultdict(dict)
        self._in_flight: set[Deferred[ProbeReply]] = set()
        self._deadline_passed = False
        self._over = False  # once set, late replies are dropped
        self._unreachable_kind: str | None = None  # the last ICMP unreachable's kind
        self._names = (
            None if annotator is None else HopNames(annotator, self._named, self._names_back)
        )
        self._names_done: Deferred[None] | None = None  # fired when the last lookup is back

    def start(self) -> Deferred[MultipathOutcome]:
        """Run the discovery; the Deferred fires with the outcome (never fails)."""
        run = Deferred.fromCoroutine(self._run())
        deadline: IDelayedCall = self._clock.callLater(
            self._settings.deadline(self._request), self._deadline, run
        )

        def stop_timer(result: MultipathOutcome) -> MultipathOutcome:
            if deadline.active():
                deadline.cancel()
            return result

        return run.addBoth(stop_timer)

    def _deadline(self, run: Deferred[MultipathOutcome]) -> None:
        self._deadline_passed = True
        run.cancel()

    async def _run(self) -> MultipathOutcome:
        error: TraceError | None = None
        cancelled = False
        try:
            while batch := self.discovery.next_batch():
                await self._send(batch)
        except _Stop as stop:
            self._give_up()
            error = stop.error
        except CancelledError:
            self._give_up()
            if self._deadline_passed:
                seconds = self._settings.deadline(self._request)
                why = f"the trace did not finish within {seconds:g} s"
                error = TraceError("deadline", why)
            else:
                cancelled = True
        if not cancelled:
            await self._wait_for_names()
        return self._outcome(error=error, cancelled=cancelled)

    async def _wait_for_names(self) -> None:
        """Wait for the lookups still out, at most ``name_grace`` seconds; cancelling
        the run stops the wait."""
        grace = self._settings.name_grace
        if self._names is None or not self._names.pending or grace <= 0:
            return
        waited: Deferred[None] = Deferred()
        self._names_done = waited
        timer = self._clock.callLater(grace, self._names_back)
        try:
            await waited
        except CancelledError:
            pass  # the names just stop being waited for
        finally:
            self._names_done = None
            if timer.active():
                timer.cancel()

    def _give_up(self) -> None:
        self._over = True
        for result in list(self._in_flight):
            result.cancel()

    async def _send(self, batch: list[FlowProbe]) -> None:
        pending: list[Deferred[None]] = []
        for index, probe in enumerate(batch):
            if index and self._settings.spacing > 0:
                await deferLater(self._clock, self._settings.spacing)
            pending.append(self._probe(probe))
        await gatherResults(pending, consumeErrors=True).addErrback(_first_error)

    def _probe(self, probe: FlowProbe) -> Deferred[None]:
        request = self._request
        hop = self._hops.get(probe.ttl)
        if hop is None:
            hop = self._hops[probe.ttl] = HopAccumulator(ttl=probe.ttl)
        hop.record_sent()
        try:
            sent = self._prober.probe(
                ProbeRequest(
                    target=self._address,
                    ttl=probe.ttl,
                    protocol=Protocol.UDP,
                    port=request.port or MULTIPATH_PORT,
                    local_port=self._first_local_port + probe.flow,
                    source=self._source,
                    timeout=request.timeout,
                    size=request.size,
                    tos=request.tos,
                )
            )
        except ProbeFailed as e:
            raise _Stop(TraceError("engine-unavailable", str(e))) from None
        except ValueError as e:
            raise _Stop(TraceError("invalid-probe", str(e))) from None
        self._in_flight.add(sent)
        return sent.addBoth(self._settled, probe, sent)

    def _settled(
        self, outcome: ProbeReply | Failure, probe: FlowProbe, sent: Deferred[ProbeReply]
    ) -> Failure | None:
        self._in_flight.discard(sent)
        hop = self._hops[probe.ttl]
        if self._over:
            return None
        if isinstance(outcome, Failure):
            if isinstance(outcome.value, CancelledError):
                return outcome  # the run is being cancelled: let the batch say so
            if isinstance(outcome.value, WorkerDied | WorkerUnresponsive):
                self.log.warn("probe lost: {why}", why=outcome.getErrorMessage())
                self._answered(probe, hop, None, None)
                return None
            if isinstance(outcome.value, ProbeFailed):
                raise _Stop(TraceError("engine-unavailable", outcome.getErrorMessage()))
            self.log.failure("probe failed unexpectedly", outcome)
            raise _Stop(TraceError("internal-error", outcome.getErrorMessage()))
        reply = outcome
        end = _ENDS.get(reply.kind)
        if (
            reply.address is not None
            and reply.rtt_us is not None
            and (reply.kind is ReplyKind.TTL_EXPIRED or end is not None)
        ):
            hop.record_reply(reply.address, reply.rtt_us, reply.mpls, end)
            if self._names is not None:
                self._names.annotate(hop, reply.address)
            if end is not None and end is not HopEnd.DESTINATION:
                self._unreachable_kind = reply.kind.value
            self._answered(probe, hop, Answer(reply.address, end), reply.rtt_ms)
        elif reply.kind in _LOST or reply.kind in _ENDS:
            self._answered(probe, hop, None, None)
        else:
            raise _Stop(TraceError("probe-error", f"mtr-packet answered {reply.raw!r}"))
        return None

    def _answered(
        self, probe: FlowProbe, hop: HopAccumulator, answer: Answer | None, rtt_ms: float | None
    ) -> None:
        if answer is None:
            hop.record_lost()
        self.discovery.record(probe, answer)
        address = None if answer is None else answer.address
        self._flows[probe.flow][probe.ttl] = FlowHop(probe.ttl, address, rtt_ms)
        self._on_hop(hop)

    # -- annotations -----------------------------------------------------------------------

    def _named(self, address: str, annotation: Annotation) -> None:
        # Published even once the run is over: whoever keeps the trace updates it.
        for ttl in sorted(self._hops):
            hop = self._hops[ttl]
            if hop.annotate(address, annotation):
                self._on_hop(hop)

    def _names_back(self) -> None:
        """End the wait for names (every lookup is back, or the grace is over)."""
        waited = self._names_done
        if waited is not None and not waited.called:
            waited.callback(None)

    def _outcome(
        self, *, error: TraceError | None = None, cancelled: bool = False
    ) -> MultipathOutcome:
        discovery = self.discovery
        hops = tuple(self._hops[ttl].snapshot() for ttl in sorted(self._hops))
        flows = tuple(
            FlowPath(
                flow=flow,
                local_port=self._first_local_port + flow,
                hops=tuple(found[ttl] for ttl in sorted(found)),
            )
            for flow, found in sorted(self._flows.items())
        )
        said = "cancelled" if cancelled else None
        if error is not None:
            said = "deadline" if error.type == "deadline" else "error"
        elif discovery.stop_reason is not None and not cancelled:
            said = discovery.stop_reason.value
        reason = discovery.stop_reason
        stop = None
        if error is None and not cancelled and reason is not None:
            kind = self._unreachable_kind if reason.value == "unreachable" else None
            stop = Stop(StopReason(reason.value), kind)
        return MultipathOutcome(
            stop=stop,
            hops=hops,
            destination_reached=any(h.end is HopEnd.DESTINATION for h in hops),
            multipath=MultipathResult(
                confidence=self._request.confidence,
                links=tuple(PathLink(k.ttl, k.source, k.to) for k in discovery.links()),
                flows=flows,
                probes_sent=discovery.probes_sent,
                stop_reason=said,
                full_mda_hops=tuple(discovery.full_mda_hops),
            ),
            error=error,
            cancelled=cancelled,
        )


def _first_error(failure: Failure) -> None:
    """gatherResults wraps the first failure: raise what it wraps."""
    if isinstance(failure.value, FirstError):
        failure.value.subFailure.raiseException()
    failure.raiseException()
