"""Write-behind of one running trace: its changes held, coalesced, and written in order.

A :class:`TraceWriter` takes the updates the :class:`Tracer` hands out (snapshots, live
hops, the end) without waiting for Redis, and numbers them as :class:`TraceChannel` does:
id 1 is the ``queued`` status the trace was stored with, then every status change, every
hop change and ``done`` take the next id. What is not written yet is coalesced the way the
channel keeps it: the latest snapshot, each hop's latest change (an older one that was
never written is dropped, its id skipped), every status change and ``done``. A flush
writes the snapshot (with the current hops) and then the events in id order in one call
(:meth:`RedisTraceStore.write_running`), with the
ids given explicitly: subscribers on every replica see the same ids, and Redis refuses an
id that does not grow (a second writer cannot slip events in).

A name that comes after the final snapshot was written rewrites that snapshot (a new
version, so a new ETag, as in the memory store; no event follows ``done``).

While Redis does not answer, the changes stay held; the memory that takes is bounded by
the trace's hops (one held change each), whatever the outage lasts. ``held_since`` says
since when a flush has failed, so that the runner can end the trace past its bound.
"""

from __future__ import annotations

import enum

import attrs

from mtrd.tracing.model import Hop, LiveHop, Trace, TraceStatus
from mtrd.tracing.redis.store import NotRunning, RedisTraceStore

# The id of the ``queued`` status event: the trace was stored with it.
QUEUED_EVENT_ID = 1


class Flushed(enum.Enum):
    """What a flush learnt about the trace."""

    WRITTEN = "written"
    CANCEL = "cancel"  # a cancel was asked for (DELETE on some replica)
    NOT_RUNNING = "not_running"  # ended or taken elsewhere: this replica must stop it
    GONE = "gone"  # deleted or expired


@attrs.define(eq=False)
class TraceWriter:
    """The held changes of one running trace; see the module docstring."""

    trace: Trace
    _store: RedisTraceStore
    _runner: str
    held_since: float | None = None
    last_saved: float | None = None
    _next_id: int = QUEUED_EVENT_ID + 1
    _hops: dict[int, LiveHop] = attrs.field(factory=dict)
    _hop_events: dict[int, int] = attrs.field(factory=dict)  # TTL -> id of its held change
    _events: dict[int, tuple[str, TraceStatus | LiveHop | Trace]] = attrs.field(factory=dict)
    _dirty: bool = True
    _end_written: bool = False  # the final snapshot is in Redis: later names rewrite it

    @property
    def pending(self) -> bool:
        """Whether anything is held that Redis has not got yet."""
        return self._dirty or bool(self._events)

    @property
    def held_events(self) -> int:
        """Events held, not written yet."""
        return len(self._events)

    def update(self, trace: Trace) -> bool:
        """A new snapshot (hops aside); True when its status changed."""
        changed = trace.status is not self.trace.status
        if changed:
            self._events[self._take_id()] = ("status", trace.status)
        self.trace = trace
        self._dirty = True
        return changed

    def hop(self, hop: LiveHop) -> None:
        """A hop's figures changed."""
        if self.trace.status.is_final:
            # A name that came after the end, while the end is still held: into the
            # final snapshot (no event follows ``done``).
            value = hop.snapshot()
            hops = tuple(value if h.ttl == value.ttl else h for h in self.trace.hops)
            self.trace = attrs.evolve(self.trace, hops=hops)
            self._dirty = True
            return
        superseded = self._hop_events.pop(hop.ttl, None)
        if superseded is not None:
            self._events.pop(superseded, None)
        event_id = self._take_id()
        self._events[event_id] = ("hop", hop)
        self._hop_events[hop.ttl] = event_id
        self._hops[hop.ttl] = hop
        self._dirty = True

    def finish(self, final: Trace) -> None:
        """The trace ended with ``final`` (which carries its hops)."""
        self.update(final)
        self._hops.clear()
        self._hop_events.clear()
        self._events[self._take_id()] = ("done", final)

    def snapshot(self) -> Trace:
        """The trace as it should read now, hops included."""
        if self.trace.status.is_final or not self._hops:
            return self.trace
        hops = tuple(hop.snapshot() for _, hop in sorted(self._hops.items()))
        return attrs.evolve(self.trace, hops=hops)

    async def flush(self, now: float) -> Flushed:
        """Write what is held: the snapshot, then the events in id order.

        Raises what the connection raises when Redis is away; what was not written stays
        held for the next flush.
        """
        outcome = Flushed.WRITTEN
        if self._dirty and self._end_written:
            return await self._flush_late(now)
        if self._dirty:
            self._dirty = False
            held = sorted(self._events.items())
            snapshot = self.snapshot()
            try:
                saved = await self._store.write_running(snapshot, self._runner, _written(held))
            except NotRunning:
                landed = await self._landed_before()
                if landed is None:
                    return Flushed.NOT_RUNNING
                # The snapshot is there; the events go below, on their own. Names that
                # came since that write follow as a late rewrite.
                self._end_written = True
                self._dirty = landed != self.trace
            except Exception:
                self._dirty = True
                raise
            else:
                if saved is None:
                    return Flushed.GONE
                if saved.cancel:
                    outcome = Flushed.CANCEL
                for event_id, _ in held:
                    self._events.pop(event_id, None)
                # What changed while the write was under way waits for the next flush.
                self.last_saved = now
                self._end_written = snapshot.status.is_final
                return outcome
            self.last_saved = now
        if self._events:
            held = sorted(self._events.items())
            if await self._store.append_events(self.trace.id, _written(held)) is None:
                return Flushed.GONE
            for event_id, _ in held:
                self._events.pop(event_id, None)
        return outcome

    async def _flush_late(self, now: float) -> Flushed:
        """Rewrite the final snapshot: a name came after it was written. As the memory
        store does, the stored trace and its version (so its ETag) change; the event
        stream ended with ``done`` and gets nothing more."""
        self._dirty = False
        try:
            saved = await self._store.save_late(self.trace, self._runner)
        except NotRunning:
            return Flushed.NOT_RUNNING
        except Exception:
            self._dirty = True
            raise
        if saved is None:
            return Flushed.GONE
        self.last_saved = now
        return Flushed.WRITTEN

    async def _landed_before(self) -> Trace | None:
        """The final snapshot refused now if it is there already (as stored): a save that
        timed out while Redis was paused is carried out when it resumes, and the retry
        then finds the trace ended. Anything else that ended it (a reaper) is not this
        snapshot: None."""
        if not self.trace.status.is_final:
            return None
        stored = await self._store.get(self.trace.id)
        if (
            stored is not None
            and stored.replica == self._runner
            and stored.trace.status is self.trace.status
            and stored.trace.error == self.trace.error
        ):
            return stored.trace
        return None

    def _take_id(self) -> int:
        taken = self._next_id
        self._next_id += 1
        return taken


def _written(
    held: list[tuple[int, tuple[str, TraceStatus | LiveHop | Trace]]],
) -> list[tuple[int, str, TraceStatus | Hop | Trace]]:
    """Held events as the store writes them: a live hop as its snapshot."""
    return [
        (event_id, kind, value if isinstance(value, TraceStatus | Trace) else value.snapshot())
        for event_id, (kind, value) in held
    ]
