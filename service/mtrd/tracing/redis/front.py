"""The front half of a replica on Redis: what the HTTP routes do with traces shared by replicas.

:class:`SharedTraces` never runs a trace. A new trace is stored ``queued`` for a vantage
with a live replica and put on that vantage's work queue; some replica's runner
(``mtrd.tracing.redis.runner``) takes it and writes its snapshots and events back. Reads
(one trace with its version, the listing) go to Redis; a delete cancels a trace through
:meth:`RedisTraceStore.request_cancel` or removes a finished one.

Events reach subscribers on this replica through one poller per trace followed here, not
one per subscriber: it reads ``events_after`` every ``poll_interval`` seconds, from the
oldest position any of its subscribers has seen, while the trace has subscribers here.
A subscriber first gets what it missed, coalesced as the in-memory channel replays it
(the latest status, the latest figures of each hop, the end), so ``Last-Event-ID``
resumes on any replica; when events it missed were trimmed away (a gap) it starts from
the snapshot instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Final

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from mtrd.tracing.events import Event, Subscriber
from mtrd.tracing.jobs import Deletion, QueueFull
from mtrd.tracing.model import Hop, Trace, TraceRequest, TraceStatus
from mtrd.tracing.redis.commands import RedisCommands
from mtrd.tracing.redis.errors import NoLiveVantage, RedisUnavailable
from mtrd.tracing.redis.queue import RedisWorkQueue, queued
from mtrd.tracing.redis.replicas import RedisReplicas, VantagePoint, live_replicas
from mtrd.tracing.redis.store import CancelOutcome, RedisTraceStore, StoredTrace
from mtrd.tracing.redis.tenants import RedisTenants
from mtrd.tracing.store import StoreFull
from mtrd.tracing.tenants import TenantCapReached

log = Logger()

POLL_INTERVAL: Final = 0.1
# Without events for this many polls, the poller checks that the trace still exists, so
# subscribers of a deleted or expired trace are let go.
IDLE_CHECK_POLLS: Final = 10
# Seconds a client is asked to wait when the deployment's queue is full.
QUEUE_RETRY_AFTER: Final = 2


def _coalesced(events: Sequence[Event]) -> list[Event]:
    """What a subscriber needs of ``events``: the latest status, each hop's latest
    figures, and the end; in id order (the in-memory channel's replay)."""
    status: Event | None = None
    hops: dict[int, Event] = {}
    done: Event | None = None
    for event in events:
        if event.kind == "status":
            status = event
        elif event.kind == "hop" and isinstance(event.value, Hop):
            hops[event.value.ttl] = event
        elif event.kind == "done":
            done = event
    if done is not None:
        return [done]
    kept = [*([status] if status is not None else []), *hops.values()]
    return sorted(kept, key=lambda e: e.id)


def _from_snapshot(trace: Trace, event_id: int) -> list[Event]:
    """Events that bring a subscriber to ``trace``, all numbered ``event_id``."""
    if trace.status.is_final:
        return [Event(event_id, "done", trace)]
    return [Event(event_id, "status", trace.status)] + [
        Event(event_id, "hop", hop) for hop in trace.hops
    ]


@attrs.define(eq=False)
class _Follower:
    """One subscriber on this replica: where it is in the trace's events."""

    deliver: Subscriber
    ended: Callable[[], None]
    seen: int


@attrs.define(eq=False)
class _Poller:
    """The one poller of a trace followed on this replica."""

    trace_id: str
    followers: list[_Follower] = attrs.field(factory=list)
    loop: LoopingCall | None = None
    idle_polls: int = 0
    failing: bool = False


class SharedTraces(Service):
    """Traces in Redis as the HTTP routes use them; see the module docstring.

    An ``IService``: stopping it stops every poller and lets their subscribers go.
    """

    def __init__(
        self,
        *,
        redis: RedisCommands,
        store: RedisTraceStore,
        replicas: RedisReplicas,
        new_trace: Callable[[TraceRequest], Trace],
        clock: IReactorTime,
        vantage: str,
        replica: str,
        max_queued: int,
        prefix: str = "mtrd",
        poll_interval: float = POLL_INTERVAL,
        tenants: RedisTenants | None = None,
        on_queued: Callable[[str], None] = lambda _: None,
    ) -> None:
        """``tenants`` counts owners' traces against their caps (none without it);
        ``on_queued`` is told the vantage of each trace queued here (this replica's runner
        then claims it at once)."""
        self._redis = redis
        self._tenants = tenants
        self._store = store
        self._replicas = replicas
        self._new_trace = new_trace
        self._clock = clock
        self.vantage = vantage
        self.replica = replica
        self._max_queued = max_queued
        self._prefix = prefix
        self._poll_interval = poll_interval
        self._on_queued = on_queued
        self._queues: dict[str, RedisWorkQueue] = {}
        self._pollers: dict[str, _Poller] = {}

    # -- traces -------------------------------------------------------------------------

    async def submit(
        self, request: TraceRequest, vantage: str | None, owner: str | None = None
    ) -> StoredTrace:
        """Store a new trace of ``owner`` ``queued`` and queue it for its vantage.

        Raises :class:`NoLiveVantage`, ``TenantCapReached``, ``StoreFull`` or ``QueueFull``.
        """
        where = vantage or self.vantage
        now = self._clock.seconds()
        trace = attrs.evolve(self._new_trace(request), vantage=where, replica=None, owner=owner)
        # Kept among this replica's queues only once the vantage is known to be live: names
        # a client makes up leave nothing behind.
        queue = self._queues.get(where) or RedisWorkQueue(
            self._redis, where, self.replica, prefix=self._prefix
        )
        tenants = None if owner is None else self._tenants
        admits = [] if tenants is None else tenants.admit_commands(owner or "", trace.id, now)
        if tenants is not None:
            # Read with the rest: the tenant's probes waiting on every replica.
            admits.append(tenants.probes_command(owner or ""))
        # One call to Redis, a single write: the live check, the owner's place in its
        # tenant's caps, the trace with its index entries, and its queue entry. What the
        # replies refuse is undone after. The queue entry may run ahead of the trace
        # (separate keys): a runner that claims it first finds no queued trace and drops
        # the entry, so nothing runs that was not stored.
        try:
            live, *replies, entry = await self._redis.pipeline(
                [
                    self._replicas.live_command(where, now),
                    *admits,
                    *self._store.add_commands(trace, vantage=where, replica=self.replica),
                    queue.enqueue_command(trace.id, self._max_queued, owner=owner),
                ]
            )
        except RedisUnavailable:
            await self._forget(trace.id)
            raise
        admitted, added = replies[: len(admits)], replies[len(admits) :]
        probes = admitted.pop() if tenants is not None else None
        refused: Exception | None = None
        if not queued(entry):
            entry = None  # nothing to take back
        if not live_replicas(live):
            points = await self._replicas.vantage_points(now)
            refused = NoLiveVantage(where, [p.name for p in points])
        elif entry is None:
            refused = QueueFull(QUEUE_RETRY_AFTER)
        elif tenants is not None and owner is not None:
            try:
                tenants.check_probes(probes, now)
                await tenants.admitted(owner, trace.id, now, admitted)
            except TenantCapReached as e:
                refused = e
        if refused is None:
            try:
                await self._store.added(trace, added, lambda: QUEUE_RETRY_AFTER)
            except StoreFull as e:  # the trace is removed already
                await self._drop(queue, entry)
                await self._withdraw(tenants, owner, trace.id)
                raise e from None
            self._queues[where] = queue  # kept for live vantages only
            self._on_queued(where)
            return StoredTrace(trace, 1, where, self.replica)
        await self._drop(queue, entry)
        await self._forget(trace.id)
        await self._withdraw(tenants, owner, trace.id)
        raise refused

    async def _withdraw(
        self, tenants: RedisTenants | None, owner: str | None, trace_id: str
    ) -> None:
        if tenants is None or owner is None:
            return
        # Without Redis, the tenant's sets drop the id once its grace is over.
        with contextlib.suppress(RedisUnavailable):
            await tenants.withdraw(owner, trace_id)

    async def _drop(self, queue: RedisWorkQueue, entry: bytes | None) -> None:
        # Else a runner would take it; if Redis does not let us, the trace goes (below) and
        # the runner that claims the entry finds nothing to run.
        if entry is None:
            return
        try:
            await queue.drop(entry)
        except RedisUnavailable as e:
            log.warn("cannot remove a refused trace's queue entry: {error}", error=e)

    async def _forget(self, trace_id: str) -> None:
        # A trace stored but not queued would stay queued until it goes stale: the client
        # was told no, so it goes now (if Redis lets us; else it goes stale).
        try:
            await self._store.delete(trace_id)
        except RedisUnavailable as e:
            log.warn("cannot remove trace {id} that was not queued: {error}", id=trace_id, error=e)

    async def get(self, trace_id: str) -> StoredTrace | None:
        """The trace with its version, or None if unknown, deleted or expired."""
        stored = await self._store.get(trace_id)
        if stored is None:
            return None
        return attrs.evolve(stored, trace=stored.placed())

    async def set_webhook(self, trace_id: str, state: str) -> bool:
        """Write the state of the trace's webhook where every replica reads it."""
        return await self._store.set_webhook(trace_id, state)

    async def newest_first(
        self,
        status: TraceStatus | None,
        limit: int,
        cursor: str | None,
        visible: Callable[[Trace], bool] = lambda _: True,
    ) -> tuple[list[Trace], str | None]:
        """A page of the ``visible`` traces of every replica, newest first, and the next
        page's cursor."""
        return await self._store.newest_first(status, limit, cursor, visible)

    async def delete(self, trace_id: str) -> Deletion | None:
        """Cancel a queued or running trace, or remove a finished one; None if unknown."""
        outcome = await self._store.request_cancel(trace_id, self._clock.seconds())
        if outcome is CancelOutcome.GONE:
            return None
        if outcome is CancelOutcome.FINAL:
            return Deletion.REMOVED if await self._store.delete(trace_id) else None
        return Deletion.CANCELLED

    async def vantage_points(self) -> list[VantagePoint]:
        """Every vantage with a live replica."""
        return await self._replicas.vantage_points(self._clock.seconds())

    # -- events -------------------------------------------------------------------------

    @property
    def followed(self) -> int:
        """Traces followed on this replica now: one poller each."""
        return len(self._pollers)

    def subscribers(self, trace_id: str) -> int:
        """How many subscribers follow ``trace_id`` on this replica."""
        poller = self._pollers.get(trace_id)
        return 0 if poller is None else len(poller.followers)

    async def follow(
        self,
        trace_id: str,
        after: int | None,
        deliver: Subscriber,
        ended: Callable[[], None],
    ) -> Callable[[], None] | None:
        """Send ``deliver`` what it missed after ``after``, then follow the trace; the
        unsubscribe call, or None if there is no such trace.

        After the end the subscriber gets the ``done`` event and is not kept. If the trace
        goes away without one (deleted, expired), ``ended`` is called instead.
        """
        stored = await self._store.get(trace_id)
        if stored is None:
            return None
        seen = await self._catch_up(trace_id, after or 0, deliver, snapshot=stored)
        if seen is None:
            return lambda: None
        follower = _Follower(deliver, ended, seen)
        poller = self._pollers.get(trace_id)
        if poller is None:
            poller = self._pollers[trace_id] = _Poller(trace_id)
            poller.loop = LoopingCall(lambda: Deferred.fromCoroutine(self._poll(poller)))
            poller.loop.clock = self._clock
            poller.loop.start(self._poll_interval, now=False).addErrback(
                lambda failure: log.failure(
                    "the event poller of {id} stopped", failure, id=trace_id
                )
            )
        poller.followers.append(follower)

        def unsubscribe() -> None:
            if follower in poller.followers:
                poller.followers.remove(follower)
            if not poller.followers:
                self._stop_poller(poller)

        return unsubscribe

    async def _catch_up(
        self, trace_id: str, after: int, deliver: Subscriber, snapshot: StoredTrace | None = None
    ) -> int | None:
        """Deliver what a subscriber that saw ``after`` missed; the id it has now seen, or
        None once it got the end."""
        page = await self._store.events_after(trace_id, after)
        if page.gap or (after == 0 and not page.events):
            # Some of it was trimmed away, or nothing is logged yet: the snapshot first,
            # numbered just before what the log still holds, then the log.
            stored = await self._store.get(trace_id) if page.gap or snapshot is None else snapshot
            if stored is None:
                return after
            base = page.events[0].id - 1 if page.events else after
            events = _from_snapshot(stored.placed(), base) + _coalesced(page.events)
        else:
            events = _coalesced(page.events)
        seen = after
        for event in events:
            deliver(event)
            seen = max(seen, event.id)
            if event.kind == "done":
                return None
        return seen

    async def _poll(self, poller: _Poller) -> None:
        # A background loop: it logs its own failures, or LoopingCall would stop for good.
        try:
            await self._poll_once(poller)
        except RedisUnavailable as e:
            if not poller.failing:
                log.warn("cannot read events of {id}: {error}", id=poller.trace_id, error=e)
            poller.failing = True
        except Exception:
            log.failure("reading events of {id} failed", id=poller.trace_id)
        else:
            poller.failing = False

    async def _poll_once(self, poller: _Poller) -> None:
        if not poller.followers:
            return
        start = min(f.seen for f in poller.followers)
        page = await self._store.events_after(poller.trace_id, start)
        if not page.events:
            poller.idle_polls += 1
            if poller.idle_polls >= IDLE_CHECK_POLLS:
                poller.idle_polls = 0
                if await self._store.get(poller.trace_id) is None:
                    self._end(poller)
            return
        poller.idle_polls = 0
        for follower in list(poller.followers):
            if page.gap:
                # Some of what a subscriber missed was trimmed: start it over.
                seen = await self._catch_up(poller.trace_id, follower.seen, follower.deliver)
            else:
                seen = self._send(follower, page.events)
            if seen is None:
                if follower in poller.followers:
                    poller.followers.remove(follower)
            else:
                follower.seen = seen
        if not poller.followers:
            self._stop_poller(poller)

    @staticmethod
    def _send(follower: _Follower, events: Sequence[Event]) -> int | None:
        seen = follower.seen
        for event in events:
            if event.id <= follower.seen:
                continue
            follower.deliver(event)
            seen = event.id
            if event.kind == "done":
                return None
        return seen

    def _end(self, poller: _Poller) -> None:
        """The trace is gone, or this replica stops: let its subscribers go."""
        followers, poller.followers = poller.followers, []
        self._stop_poller(poller)
        for follower in followers:
            follower.ended()

    def _stop_poller(self, poller: _Poller) -> None:
        if self._pollers.get(poller.trace_id) is poller:
            del self._pollers[poller.trace_id]
        if poller.loop is not None and poller.loop.running:
            poller.loop.stop()

    def stopService(self) -> None:
        """Stop every poller."""
        super().stopService()  # type: ignore[no-untyped-call]
        for poller in list(self._pollers.values()):
            self._end(poller)
