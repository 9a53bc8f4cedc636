"""A whole trace, from target to final snapshot: resolve, run, report.

:class:`Tracer` is the library entry point for traces::

    tracer = Tracer(reactor, pool, resolver)
    trace = await tracer.trace(TraceRequest("203.0.113.7"), on_hop=print)

``on_hop`` receives every hop update; ``on_update`` the snapshot once the trace
is running, and again once its target is resolved. Cancelling the returned Deferred ends the trace
as ``cancelled`` with what it found so far.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime

from mtrd.annotations.annotator import Annotator
from mtrd.engine.fairqueue import Flow
from mtrd.tracing.model import (
    Hop,
    LiveHop,
    Trace,
    TraceError,
    TraceMode,
    TraceRequest,
    TraceStatus,
    TraceTarget,
)
from mtrd.tracing.multipath.run import MultipathRun, MultipathSettings
from mtrd.tracing.policy import TargetPolicy, TargetRefused
from mtrd.tracing.resolution import ResolutionFailed, TargetResolver
from mtrd.tracing.rounds import Prober, RunSettings, TraceRun
from mtrd.tracing.values import replace
from mtrd.tracing.wait import WaitFloor

DEFAULT_SETTINGS = RunSettings()
DEFAULT_MULTIPATH = MultipathSettings()
OPEN_POLICY = TargetPolicy()
LOCAL_PORT_RANGE = (20000, 32999)  # below mtr-packet's sequence range: no ledger clashes


def _random_local_port() -> int:
    low, high = LOCAL_PORT_RANGE
    return low + secrets.randbelow(high - low)


def new_trace_id() -> str:
    """An unguessable trace id (128 random bits, URL-safe)."""
    return secrets.token_urlsafe(16)


def _hop_listener(
    on_hop: Callable[[Hop], None] | None, on_live_hop: Callable[[LiveHop], None] | None
) -> Callable[[LiveHop], None]:
    if on_hop is None:
        return on_live_hop or (lambda _: None)
    if on_live_hop is None:
        return lambda live: on_hop(live.snapshot())

    def both(live: LiveHop) -> None:
        on_live_hop(live)
        on_hop(live.snapshot())

    return both


class Tracer:
    """Runs traces over a probe pool; see the module docstring."""

    def __init__(
        self,
        clock: IReactorTime,
        prober: Prober,
        resolver: TargetResolver,
        *,
        settings: RunSettings = DEFAULT_SETTINGS,
        source_ipv4: str | None = None,
        source_ipv6: str | None = None,
        policy: TargetPolicy = OPEN_POLICY,
        vantage: str = "",
        replica: str | None = None,
        multipath: MultipathSettings = DEFAULT_MULTIPATH,
        annotator: Annotator | None = None,
    ) -> None:
        """``annotator`` says who the responders are (names, AS); None: nobody asks."""
        self._clock = clock
        self._multipath = multipath
        self.annotator = annotator
        self.vantage = vantage
        self.replica = replica
        self._prober = prober
        self._resolver = resolver
        self._settings = settings
        self._policy = policy
        self._sources = {4: source_ipv4, 6: source_ipv6}
        # One floor for every trace: late answers show the host is slow for all of them.
        self._wait_floor = WaitFloor()

    def new(
        self, request: TraceRequest, trace_id: str | None = None, owner: str | None = None
    ) -> Trace:
        """The queued snapshot of a trace that has not started, owned by ``owner``."""
        return Trace(
            id=trace_id or new_trace_id(),
            status=TraceStatus.QUEUED,
            request=request,
            target=TraceTarget(input=request.target),
            created_at=self._clock.seconds(),
            vantage=self.vantage,
            replica=self.replica,
            owner=owner,
        )

    def trace(
        self,
        request: TraceRequest,
        *,
        queued: Trace | None = None,
        on_update: Callable[[Trace], None] = lambda _: None,
        on_hop: Callable[[Hop], None] | None = None,
        on_live_hop: Callable[[LiveHop], None] | None = None,
    ) -> Deferred[Trace]:
        """Run one trace; fire with its final snapshot (never fails).

        ``on_update`` gets the snapshot when it starts running and again once its
        target is resolved; ``on_hop`` gets every hop update as a value. ``on_live_hop``
        gets the same updates as live hops, to snapshot only if and when it needs
        the figures (the service keeps them so: most traces are polled, not followed).
        """
        hop_changed = _hop_listener(on_hop, on_live_hop)
        return Deferred.fromCoroutine(
            self._trace(queued or self.new(request), on_update=on_update, on_hop=hop_changed)
        )

    def cancelled(self, trace: Trace) -> Trace:
        """``trace`` ended as cancelled now."""
        return self._end(trace, status=TraceStatus.CANCELLED)

    def crashed(self, trace: Trace, why: str) -> Trace:
        """``trace`` failed through a fault of mtrd's own."""
        return self._end(trace, error=TraceError("internal-error", why))

    async def _trace(
        self,
        trace: Trace,
        *,
        on_update: Callable[[Trace], None],
        on_hop: Callable[[LiveHop], None],
    ) -> Trace:
        if self.annotator is None:
            trace = replace(trace, status=TraceStatus.RUNNING, started_at=self._clock.seconds())
        else:
            trace = replace(
                trace,
                status=TraceStatus.RUNNING,
                started_at=self._clock.seconds(),
                annotations=self.annotator.sources(),
            )
        on_update(trace)
        request = trace.request
        try:
            # Only IPv4 holds a flow (see mtrd.tracing.multipath.run): resolve to IPv4.
            family = request.ip_version
            if request.mode is TraceMode.MULTIPATH:
                family = 4
            resolved = await self._resolver.resolve(request.target, family)
        except ResolutionFailed as e:
            return self._end(trace, error=TraceError("dns", str(e)))
        except CancelledError:
            return self._end(trace, status=TraceStatus.CANCELLED)
        try:
            self._policy.check(resolved.address)
        except TargetRefused as e:
            return self._end(
                trace,
                error=TraceError("forbidden-target", str(e)),
                target=TraceTarget(request.target, resolved.address, resolved.ip_version),
            )
        source = self._sources[resolved.ip_version]
        trace = replace(
            trace,
            target=TraceTarget(request.target, resolved.address, resolved.ip_version),
            source=source,
        )
        on_update(trace)
        if request.mode is TraceMode.MULTIPATH:
            return await self._multipath_trace(trace, resolved.address, source, on_hop)
        run = TraceRun(
            clock=self._clock,
            prober=self._prober,
            request=request,
            address=resolved.address,
            on_hop=on_hop,
            settings=self._settings,
            wait_floor=self._wait_floor,
            source=source,
            flow=Flow(trace.id, group=trace.owner),
            local_port=_random_local_port() if resolved.ip_version == 4 else None,
            annotator=self.annotator,
        )
        outcome = await run.start()
        # What the run found and how the trace ended make one new value.
        return self._end(
            trace,
            error=None if outcome.cancelled else outcome.error,
            status=TraceStatus.CANCELLED if outcome.cancelled else None,
            hops=outcome.hops,
            destination_reached=outcome.destination_reached,
            stop=outcome.stop,
        )

    async def _multipath_trace(
        self, trace: Trace, address: str, source: str | None, on_hop: Callable[[LiveHop], None]
    ) -> Trace:
        low, high = LOCAL_PORT_RANGE
        run = MultipathRun(
            clock=self._clock,
            prober=self._prober,
            request=trace.request,
            address=address,
            # Each trace's flows take a block of source ports of their own.
            first_local_port=secrets.choice(range(low, high - self._multipath.max_flows + 1)),
            on_hop=on_hop,
            settings=self._multipath,
            source=source,
            annotator=self.annotator,
        )
        outcome = await run.start()
        return self._end(
            trace,
            error=None if outcome.cancelled else outcome.error,
            status=TraceStatus.CANCELLED if outcome.cancelled else None,
            hops=outcome.hops,
            destination_reached=outcome.destination_reached,
            multipath=outcome.multipath,
            stop=outcome.stop,
        )

    def _end(
        self,
        trace: Trace,
        *,
        error: TraceError | None = None,
        status: TraceStatus | None = None,
        **changes: Any,
    ) -> Trace:
        """``trace`` ended now: COMPLETED, or FAILED with ``error``, unless ``status`` says;
        ``changes`` are what else the end brings (the run's hops, ...)."""
        final = status or (TraceStatus.FAILED if error is not None else TraceStatus.COMPLETED)
        return replace(
            trace, status=final, error=error, finished_at=self._clock.seconds(), **changes
        )
