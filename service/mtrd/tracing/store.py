"""The in-memory trace store: records by id, newest first, expiry and caps.

Finished traces expire ``ttl`` seconds after they end (on the injected clock)
while the store runs: it is a Twisted ``IService`` whose start arms the expiry
(catching up on traces that expired while it was stopped) and whose stop disarms it.
At ``max_traces``, adding a trace evicts the oldest finished one (its owner's own
first); when every stored trace is still active, :class:`StoreFull` says when to retry.
A trace's owner may be held to a cap of its own (``max_owned``), where adding evicts
the owner's oldest finished trace, or refuses with
:class:`~mtrd.tracing.tenants.TenantCapReached`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

import attrs
from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from mtrd.tracing.events import TraceChannel
from mtrd.tracing.model import Trace, TraceStatus
from mtrd.tracing.tenants import Cap, TenantCapReached
from mtrd.tracing.values import replace


class StoreFull(Exception):
    """Every stored trace is still active: no room for another."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the trace store is full of active traces; retry in {retry_after} s")
        self.retry_after = retry_after


class BadCursor(ValueError):
    """A listing cursor that this store did not hand out."""


@attrs.frozen
class StoreLimits:
    """How long finished traces stay and how many traces are kept."""

    ttl: float = 3600.0
    max_traces: int = 10_000

    def __attrs_post_init__(self) -> None:
        if self.ttl <= 0:
            raise ValueError("the store ttl must be positive")
        if self.max_traces < 1:
            raise ValueError("the store must hold at least one trace")


@attrs.define(eq=False)
class TraceRecord:
    """One stored trace: its latest snapshot, its live channel and its version.

    While the trace runs, ``trace`` is the snapshot without the hops that change with
    every reply: those live in the channel, and :meth:`full_trace` puts them together
    only when someone asks. Once the trace is final, ``trace`` is the whole value.
    """

    trace: Trace
    channel: TraceChannel
    seq: int
    expiry: IDelayedCall | None = None
    _updates: int = 0

    @property
    def version(self) -> int:
        """A number that grows with every change of the trace (ETags and caches key on it).

        Snapshot updates (a resolved address, a new status) and hop events both count:
        each bumps one of two counters that only grow.
        """
        return self._updates + self.channel.last_id

    def replace(self, trace: Trace) -> None:
        """Take a new snapshot of the trace."""
        self.trace = trace
        self._updates += 1

    def full_trace(self) -> Trace:
        """The whole trace, hops included."""
        if self.trace.status.is_final:
            return self.trace
        hops = self.channel.current_hops()
        return replace(self.trace, hops=hops) if hops else self.trace


class TraceStore(Service):
    """Holds traces in memory; see the module docstring."""

    def __init__(self, clock: IReactorTime, limits: StoreLimits = StoreLimits()) -> None:
        self._clock = clock
        self.limits = limits
        self._records: dict[str, TraceRecord] = {}  # insertion order: oldest first
        self._seq = 0
        self.evictions = 0
        self._by_owner: Counter[str | None] = Counter()

    def __len__(self) -> int:
        return len(self._records)

    def startService(self) -> None:
        """Arm the expiry of every finished trace."""
        super().startService()  # type: ignore[no-untyped-call]
        for record in list(self._records.values()):
            if record.trace.status.is_final and record.expiry is None:
                self._expire_later(record)

    def stopService(self) -> None:
        """Disarm the expiry: nothing expires until the store starts again."""
        super().stopService()  # type: ignore[no-untyped-call]
        for record in self._records.values():
            if record.expiry is not None and record.expiry.active():
                record.expiry.cancel()
            record.expiry = None

    def get(self, trace_id: str) -> TraceRecord | None:
        """The record of ``trace_id``, or None if unknown or expired."""
        return self._records.get(trace_id)

    def add(
        self, trace: Trace, retry_after: Callable[[], int], max_owned: int | None = None
    ) -> TraceRecord:
        """Store a new trace, evicting the oldest finished one if at a cap: the store's, or
        ``max_owned`` traces of the trace's owner."""
        owner = trace.owner
        if max_owned is not None and self._by_owner[owner] >= max_owned:
            own = self._oldest_finished(owner)
            if own is None:
                raise TenantCapReached(
                    Cap.STORED,
                    max_owned,
                    retry_after(),
                    f"this tenant has {self._by_owner[owner]} traces stored, none finished",
                )
            self.remove(own.trace.id)
            self.evictions += 1
        if len(self._records) >= self.limits.max_traces:
            oldest = self._oldest_finished(owner) or self._oldest_finished()
            if oldest is None:
                raise StoreFull(retry_after())
            self.remove(oldest.trace.id)
            self.evictions += 1
        self._seq += 1
        record = TraceRecord(trace=trace, channel=TraceChannel(trace.status), seq=self._seq)
        self._records[trace.id] = record
        self._by_owner[owner] += 1
        return record

    def _oldest_finished(self, owner: str | None = None) -> TraceRecord | None:
        """The oldest finished record (of ``owner``, when one is named)."""
        return next(
            (
                r
                for r in self._records.values()
                if r.trace.status.is_final and owner in (None, r.trace.owner)
            ),
            None,
        )

    def update(self, record: TraceRecord, trace: Trace) -> None:
        """Replace the snapshot; a finished trace starts its expiry clock."""
        record.replace(trace)
        if trace.status.is_final and record.expiry is None and self.running:
            self._expire_later(record)

    def _expire_later(self, record: TraceRecord) -> None:
        expires_at = record.trace.expires_at
        delay = (
            self.limits.ttl if expires_at is None else max(0.0, expires_at - self._clock.seconds())
        )
        record.expiry = self._clock.callLater(delay, self.remove, record.trace.id)

    def expires_at(self) -> float:
        """When a trace that finishes now will expire."""
        return self._clock.seconds() + self.limits.ttl

    def remove(self, trace_id: str) -> None:
        """Forget a trace (expired, evicted or deleted)."""
        record = self._records.pop(trace_id, None)
        if record is None:
            return
        self._by_owner[record.trace.owner] -= 1
        if self._by_owner[record.trace.owner] <= 0:
            del self._by_owner[record.trace.owner]
        if record.expiry is not None and record.expiry.active():
            record.expiry.cancel()

    def newest_first(
        self,
        status: TraceStatus | None,
        limit: int,
        cursor: str | None,
        visible: Callable[[Trace], bool] = lambda _: True,
    ) -> tuple[list[Trace], str | None]:
        """A page of the ``visible`` traces, newest first, and the cursor of the next page
        (or None)."""
        below = _decode_cursor(cursor) if cursor is not None else None
        page: list[Trace] = []
        last_seq = 0
        for record in self._newest():
            if below is not None and record.seq >= below:
                continue
            if status is not None and record.trace.status is not status:
                continue
            if not visible(record.trace):
                continue
            if len(page) == limit:
                return page, _encode_cursor(last_seq)
            page.append(record.trace)
            last_seq = record.seq
        return page, None

    def records(self) -> Iterator[TraceRecord]:
        """Every record, oldest first."""
        return iter(list(self._records.values()))

    def _newest(self) -> Iterator[TraceRecord]:
        return reversed(list(self._records.values()))


def _encode_cursor(seq: int) -> str:
    # A cursor names a place in the listing: "traces older than this one".
    return str(seq)


def _decode_cursor(cursor: str) -> int:
    if not cursor.isascii() or not cursor.isdigit() or len(cursor) > 18:
        raise BadCursor(cursor)
    return int(cursor)
