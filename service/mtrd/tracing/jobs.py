"""Trace jobs: what ``POST /traces`` starts and ``GET``/``DELETE`` look at.

:class:`TraceJobs` puts each new trace in the store, runs at most
``max_running`` at once (the others wait as ``queued`` and start, oldest
first, as running ones end), keeps every record's snapshot and live channel up
to date, and cancels or deletes on request. It knows nothing of HTTP.

Each trace may have an owner (a tenant name); an owner's traces are held to
:class:`~mtrd.tracing.tenants.TenantLimits`: at most ``max_running`` of them run (the
next waiting trace of another owner starts instead), at most ``max_queued`` wait.

It is a Twisted ``IService``: stopping it drains (what waits is cancelled, what
runs gets ``stop_grace`` seconds, then is cancelled too).
"""

from __future__ import annotations

import enum
import weakref
from collections import deque
from collections.abc import Callable
from functools import partial

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mtrd.tracing.model import LiveHop, Trace, TraceRequest
from mtrd.tracing.store import StoreFull, TraceRecord, TraceStore
from mtrd.tracing.tenants import DEFAULT_TENANT_LIMITS, Cap, TenantCapReached, TenantLimits
from mtrd.tracing.tracer import Tracer
from mtrd.tracing.values import replace


class Deletion(enum.Enum):
    """What ``DELETE`` did."""

    CANCELLED = "cancelled"  # it was queued or running; it is kept, as cancelled
    REMOVED = "removed"  # it had finished; it is gone


class QueueFull(Exception):
    """As many traces wait as the queue takes."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the queue of waiting traces is full; retry in {retry_after} s")
        self.retry_after = retry_after


class TraceJobs(Service):
    """Runs trace jobs against a store; see the module docstring."""

    log = Logger()

    def __init__(
        self,
        tracer: Tracer,
        store: TraceStore,
        *,
        max_running: int = 32,
        max_queued: int = 1000,
        on_finished: Callable[[Trace], None] = lambda _: None,
        clock: IReactorTime | None = None,
        stop_grace: float = 0.0,
        tenant_limits: TenantLimits = DEFAULT_TENANT_LIMITS,
    ) -> None:
        """``clock`` times the grace running traces get when the service stops;
        ``tenant_limits`` apply to traces with an owner."""
        if max_running < 1 or max_queued < 0:
            raise ValueError("max_running must be at least 1 and max_queued at least 0")
        self._tracer = tracer
        self._store = store
        self.max_running = max_running
        self.max_queued = max_queued
        self._on_finished = on_finished
        self._clock = clock
        self.stop_grace = stop_grace
        self._idle: list[Deferred[None]] = []
        self._waiting: deque[TraceRecord] = deque()
        self._running: dict[str, Deferred[Trace]] = {}
        self.tenant_limits = tenant_limits
        # Plain dicts, not Counters: a Counter's missing key and deletion run Python code.
        self._running_by_owner: dict[str | None, int] = {}
        self._waiting_by_owner: dict[str | None, int] = {}

    @property
    def running_traces(self) -> int:
        """Traces probing now."""
        return len(self._running)

    @property
    def queued(self) -> int:
        """Traces waiting for a running slot."""
        return len(self._waiting)

    def submit(self, request: TraceRequest, owner: str | None = None) -> TraceRecord:
        """Store a new trace of ``owner`` and start it, or queue it; raises ``StoreFull``,
        ``QueueFull``, ``TenantCapReached``."""
        limits = self.tenant_limits
        if owner is not None:
            running = self._running_by_owner.get(owner, 0)
            waiting = self._waiting_by_owner.get(owner, 0)
            if running >= limits.max_running and waiting >= limits.max_queued:
                raise TenantCapReached(
                    Cap.QUEUED,
                    limits.max_queued,
                    self._retry_after(),
                    f"this tenant has {waiting} traces waiting beside {running} running",
                )
        if len(self._running) >= self.max_running and len(self._waiting) >= self.max_queued:
            raise QueueFull(self._retry_after())
        trace = self._tracer.new(request, owner=owner)
        record = self._store.add(
            trace,
            retry_after=self._retry_after,
            max_owned=None if owner is None else limits.max_stored,
        )
        self._waiting.append(record)
        _count(self._waiting_by_owner, owner, 1)
        self._start_waiting()
        return record

    def delete(self, trace_id: str) -> Deletion | None:
        """Cancel a queued or running trace, or remove a finished one; None if unknown."""
        record = self._store.get(trace_id)
        if record is None:
            return None
        if record.trace.status.is_final:
            self._store.remove(trace_id)
            return Deletion.REMOVED
        if record in self._waiting:
            self._unqueue(record)
            self._finish(record, self._tracer.cancelled(record.trace))
        else:
            self._running[trace_id].cancel()
        return Deletion.CANCELLED

    def _retry_after(self) -> int:
        """A guess at when room frees up: the shortest planned duration of what is stored."""
        durations = (
            r.trace.request.probes * r.trace.request.interval + r.trace.request.timeout
            for r in self._store.records()
        )
        return max(1, round(min(durations, default=1.0)))

    def _start_waiting(self) -> None:
        while self._waiting and len(self._running) < self.max_running:
            record = next((r for r in self._waiting if self._may_start(r.trace.owner)), None)
            if record is None:
                return
            self._unqueue(record)
            self._start(record)

    def _may_start(self, owner: str | None) -> bool:
        return (
            owner is None or self._running_by_owner.get(owner, 0) < self.tenant_limits.max_running
        )

    def _unqueue(self, record: TraceRecord) -> None:
        self._waiting.remove(record)
        _count(self._waiting_by_owner, record.trace.owner, -1)

    def _start(self, record: TraceRecord) -> None:
        def updated(trace: Trace) -> None:
            changed = trace.status is not record.trace.status
            self._store.update(record, trace)
            if changed:
                record.channel.publish_status(trace.status)

        # Hop updates go to the channel only: it keeps each hop's latest figures, which
        # the record reads when the trace is asked for (see TraceRecord.full_trace). Those
        # that come after the end go to _late_hop (see _finish).
        running = self._tracer.trace(
            record.trace.request,
            queued=record.trace,
            on_update=updated,
            on_live_hop=record.channel.publish_hop,
        )
        self._running[record.trace.id] = running
        _count(self._running_by_owner, record.trace.owner, 1)
        running.addCallback(self._ended, record)
        running.addErrback(self._crashed, record)

    def _late_hop(self, held: weakref.ref[TraceRecord], hop: LiveHop) -> None:
        # A name that came after the end: it goes into the stored trace (whose version,
        # and so its ETag, moves); the event stream is over.
        record = held()
        if record is None or self._store.get(record.trace.id) is not record:
            return
        value = hop.snapshot()
        hops = tuple(value if h.ttl == value.ttl else h for h in record.trace.hops)
        if hops != record.trace.hops:
            self._store.update(record, replace(record.trace, hops=hops))

    def _ended(self, trace: Trace, record: TraceRecord) -> None:
        self._stopped_running(record)
        self._finish(record, trace)
        self._start_waiting()

    def _crashed(self, failure: object, record: TraceRecord) -> None:
        self.log.failure("trace {id} crashed", failure, id=record.trace.id)  # type: ignore[arg-type]
        self._stopped_running(record)
        self._finish(record, self._tracer.crashed(record.trace, str(failure)))
        self._start_waiting()

    def _stopped_running(self, record: TraceRecord) -> None:
        if self._running.pop(record.trace.id, None) is not None:
            _count(self._running_by_owner, record.trace.owner, -1)

    def _finish(self, record: TraceRecord, trace: Trace) -> None:
        final = replace(trace, expires_at=self._store.expires_at())
        self._store.update(record, final)
        record.channel.publish_status(final.status)
        # The record holds the channel: the channel holds the record weakly, or the two
        # would be a cycle that only a full garbage collection frees.
        held = weakref.ref(record)
        record.channel.publish_done(
            final, later=partial(_latest, held, final), late_hop=partial(self._late_hop, held)
        )
        self._on_finished(final)
        if not self._running and not self._waiting:
            idle, self._idle = self._idle, []
            for waiter in idle:
                waiter.callback(None)

    def stopService(self) -> Deferred[None]:
        """Drain: the Deferred fires once no trace runs (see :meth:`drain`)."""
        super().stopService()  # type: ignore[no-untyped-call]
        return Deferred.fromCoroutine(self.drain(self._clock, self.stop_grace))

    async def drain(self, clock: IReactorTime | None, grace: float) -> None:
        """Cancel what waits, give what runs ``grace`` seconds (none without a clock),
        then cancel it too."""
        for record in list(self._waiting):
            self.delete(record.trace.id)
        if not self._running:
            return
        idle: Deferred[None] = Deferred()
        self._idle.append(idle)
        if clock is None:
            self._cancel_running()
            await idle
            return
        timer = clock.callLater(grace, self._cancel_running)
        await idle
        if timer.active():
            timer.cancel()

    def _cancel_running(self) -> None:
        for running in list(self._running.values()):
            running.cancel()


def _count(counter: dict[str | None, int], owner: str | None, change: int) -> None:
    count = counter.get(owner, 0) + change
    if count > 0:
        counter[owner] = count
    else:
        counter.pop(owner, None)


__all__ = ["Deletion", "QueueFull", "StoreFull", "TraceJobs"]


def _latest(held: weakref.ref[TraceRecord], final: Trace) -> Trace:
    """The record's trace as it is now (a late name changes it), or ``final`` once the
    record is gone."""
    record = held()
    return final if record is None else record.full_trace()
