"""Traces in Redis, shared by every replica: snapshots with versions, a listing, event logs.

Keys (``P`` is the prefix, ``mtrd`` by default; see docs/redis.md for the whole layout)::

    P:{ID}:trace          hash: value (codec bytes), status, version, vantage, replica, runner
    P:{ID}:events         stream of the trace's events; ids 0-1, 0-2, ... are the SSE ids
    P:{index}:traces      sorted set: trace id by seq (newest first listing; may lag, heals)
    P:{index}:active      sorted set: the queued and running ones among them (lags, heals)
    P:{index}:seq         counter handing out seq numbers

Every key of one trace shares the hash tag ``{ID}``, every script touches one trace's
keys only or the index keys only (which share the hash tag ``{index}``), so the layout
works on Redis Cluster. The indexes may name a trace that has expired or been deleted,
and the index of active traces one that has ended (listing and the cap check drop such
ids as they meet them); a trace is indexed only once it is written.

Finished traces expire by Redis key expiry (``PEXPIRE`` with the store TTL) on both keys.
An active trace expires too, ``stale_after`` (a day) after its last save: what a replica
that died halfway through a POST leaves behind does not stay forever.
The stored-trace cap counts the index: an add that takes it past the cap evicts the
oldest finished trace, or removes the new one again and raises :class:`StoreFull` when
the oldest ``EVICTION_SCAN`` are all active. Replicas adding at the same instant may
overshoot the cap by as many traces as add at once; the next add brings it back.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Any, Final

import attrs
from twisted.internet.interfaces import IReactorTime

from mtrd.tracing.events import Event
from mtrd.tracing.model import Hop, Trace, TraceError, TraceStatus
from mtrd.tracing.redis import codec
from mtrd.tracing.redis.commands import RedisCommands, Script, as_text, together
from mtrd.tracing.redis.connection import Command
from mtrd.tracing.store import BadCursor, StoreFull, StoreLimits

EVICTION_SCAN: Final = 100
LIST_BATCH: Final = 100
EVENTS_KEPT: Final = 2000
DEFAULT_LIMITS: Final = StoreLimits()
# An active trace nobody has saved for this long is left behind by a replica that died
# halfway through a POST (before the work queue knew of it): it expires like a finished one.
STALE_AFTER: Final = 86_400.0


class NotRunning(Exception):
    """A fenced save of a trace that the replica no longer runs."""

    def __init__(self, trace_id: str) -> None:
        super().__init__(f"trace {trace_id} is not running on this replica any more")
        self.trace_id = trace_id


class CancelOutcome(enum.Enum):
    """What :meth:`RedisTraceStore.request_cancel` did."""

    GONE = "gone"  # no such trace (deleted, expired)
    FINAL = "final"  # it had ended already: nothing to cancel
    CANCELLED = "cancelled"  # it was queued and nobody had taken it: it is cancelled now
    CANCELLING = "cancelling"  # a replica runs (or is starting) it: it stops within a second


@attrs.frozen
class StoredTrace:
    """A trace as read from Redis: the snapshot, its version, and who runs it."""

    trace: Trace
    version: int
    vantage: str
    replica: str
    # The state of the trace's webhook, as the web layer wrote it (opaque here); None
    # when the trace has no webhook.
    webhook: str | None = None

    def placed(self) -> Trace:
        """The trace naming where it runs.

        Format-1 values carry no vantage, and a runner may save its snapshots without
        naming itself: the hash knows both (its replica field names the runner once a
        replica took the trace).
        """
        trace = self.trace
        if not trace.vantage:
            trace = attrs.evolve(trace, vantage=self.vantage)
        if trace.replica is None and trace.status is not TraceStatus.QUEUED and self.replica:
            trace = attrs.evolve(trace, replica=self.replica)
        return trace


# What a listing reads of each trace: the document and where it runs (see StoredTrace.placed).
_LISTED: Final = ("value", "vantage", "replica")


def _listed(reply: Sequence[Any]) -> Trace:
    value, vantage, replica = reply
    return StoredTrace(codec.decode_trace(value), 0, as_text(vantage), as_text(replica)).placed()


@attrs.frozen
class Saved:
    """A snapshot written: its version, and whether a cancel of the trace was asked for."""

    version: int
    cancel: bool


@attrs.frozen
class EventPage:
    """Events after an id, oldest first; ``gap`` when some after that id were trimmed away,
    so the reader must start from the current snapshot instead."""

    events: tuple[Event, ...]
    gap: bool


# KEYS: trace, events. ARGV: value, status, vantage, replica, expiry_ms
_ADD = Script("""
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'value', ARGV[1], 'status', ARGV[2], 'version', 1,
           'vantage', ARGV[3], 'replica', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
""")

# KEYS: seq, index, active (one hash tag). ARGV: trace id, active (1 or 0). A new trace's
# seq from the counter, its index entries, and how many traces the index holds now.
_INDEX = Script("""
local seq = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[2], 'NX', seq, ARGV[1])
if ARGV[2] == '1' then redis.call('ZADD', KEYS[3], 'NX', seq, ARGV[1]) end
return {seq, redis.call('ZCARD', KEYS[2])}
""")

# KEYS: trace, events. ARGV: value, status, expiry_ms, runner ('' for anyone). The new
# version and whether a cancel was asked for (field `cancel`, 1 or 0), nil if the trace
# is gone, or 0 if a runner was named and the trace is not running there any more (taken
# over, or already ended by a reaper or a cancel).
_SAVE = Script("""
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if ARGV[4] ~= '' then
  local status = redis.call('HGET', KEYS[1], 'status')
  if redis.call('HGET', KEYS[1], 'runner') ~= ARGV[4] or status == 'completed'
     or status == 'failed' or status == 'cancelled' then
    return 0
  end
end
redis.call('HSET', KEYS[1], 'value', ARGV[1], 'status', ARGV[2])
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local cancel = redis.call('HGET', KEYS[1], 'cancel')
if cancel and cancel ~= '0' then return {version, 1} end
return {version, 0}
""")

# KEYS: trace, events. ARGV: value, status, expiry_ms, runner, events kept, then (id, kind,
# value) per event, ids growing. A runner's flush in one call: the fenced save of _SAVE, then
# the events as _APPEND_MANY writes them, both keys given the snapshot's expiry. nil if the
# trace is gone, 0 if it is not running on that runner any more (nothing written), else the
# new version, whether a cancel was asked for (1 or 0), and how many events were new.
_WRITE_RUNNING = Script("""
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local status = redis.call('HGET', KEYS[1], 'status')
if redis.call('HGET', KEYS[1], 'runner') ~= ARGV[4] or status == 'completed'
   or status == 'failed' or status == 'cancelled' then
  return 0
end
redis.call('HSET', KEYS[1], 'value', ARGV[1], 'status', ARGV[2])
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
local written = 0
for i = 6, #ARGV, 3 do
  local ok = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], ARGV[i], 'k', ARGV[i + 1],
                         'v', ARGV[i + 2])
  if type(ok) == 'table' and ok.err then
    if not string.find(ok.err, 'equal or smaller') then return redis.error_reply(ok.err) end
  else
    written = written + 1
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local cancel = redis.call('HGET', KEYS[1], 'cancel')
if cancel and cancel ~= '0' then return {version, 1, written} end
return {version, 0, written}
""")

# KEYS: trace. ARGV: value, status, runner. A final snapshot rewritten by the runner that
# wrote it (a name that came after the end): the new version, nil if the trace is gone, 0
# if it is not that runner's final snapshot (ended by a reaper, or still running). The
# expiry is left as the end set it.
_SAVE_LATE = Script("""
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if redis.call('HGET', KEYS[1], 'runner') ~= ARGV[3]
   or redis.call('HGET', KEYS[1], 'status') ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], 'value', ARGV[1])
return redis.call('HINCRBY', KEYS[1], 'version', 1)
""")

# KEYS: trace. ARGV: replica. The trace (value, version, vantage, replica) if this replica
# may now run the queued trace, else nil. The trace comes with the take: a read after it
# could fail and leave a trace taken that nobody runs.
_TAKE = Script("""
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return false end
if redis.call('HSETNX', KEYS[1], 'runner', ARGV[1]) == 0 then return false end
redis.call('HSET', KEYS[1], 'replica', ARGV[1])
return redis.call('HMGET', KEYS[1], 'value', 'version', 'vantage', 'replica')
""")

# KEYS: trace. ARGV: webhook state. 1 if written, 0 if the trace is gone: a late
# delivery must not bring a deleted trace's hash back.
_SET_WEBHOOK = Script("""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'webhook', ARGV[1])
return 1
""")

# KEYS: trace, events. ARGV: kind, value, kept, id ('0-N', or '0-*' for the next). The
# event's stream id, or nil if the trace is gone. With '0-*' Redis hands out 0-1, 0-2, ...,
# so ids stay monotonic whichever replica appends; an explicit id that does not grow is
# refused by Redis. An event after the end shares the trace's remaining lifetime.
_APPEND = Script("""
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], ARGV[4], 'k', ARGV[1], 'v', ARGV[2])
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
return id
""")

# KEYS: trace, events. ARGV: events kept, then (id, kind, value) per event, ids growing.
# One call for what a runner holds: an id at or below the stream's last one was written
# by an earlier call that timed out after it got through, and is skipped, not refused.
_APPEND_MANY = Script("""
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local written = 0
for i = 2, #ARGV, 3 do
  local ok = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], ARGV[i], 'k', ARGV[i + 1],
                         'v', ARGV[i + 2])
  if type(ok) == 'table' and ok.err then
    if not string.find(ok.err, 'equal or smaller') then return redis.error_reply(ok.err) end
  else
    written = written + 1
  end
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
return written
""")

# KEYS: events. ARGV: exclusive start id, count, the id itself. Whether events after
# that id were trimmed away (1 or 0), and the entries. Ids need not be contiguous (the
# runner may coalesce hop updates), so when old entries were trimmed and the first one
# kept is not the very next id, the answer errs on the side of a gap: the reader then
# starts from the snapshot, which costs a little and loses nothing.
_EVENTS_AFTER = Script("""
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, {}} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local f = {}
for i = 1, #info, 2 do f[info[i]] = info[i + 1] end
local function seq(id) return tonumber(string.match(id, '-(%d+)$')) end
local after = tonumber(ARGV[3])
local gap = 0
if after < seq(f['max-deleted-entry-id']) then gap = 1 end
if f['entries-added'] > f['length'] then
  local first = f['first-entry']
  local next_kept = first and seq(first[1]) or (seq(f['last-generated-id']) + 1)
  if after < next_kept - 1 then gap = 1 end
end
return {gap, redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])}
""")


# KEYS: trace, events. ARGV: cancelled value, expiry_ms, status event value, done event
# value, kept. A trace still queued and not taken becomes final at once (status and done
# events, expiry). One a replica took or runs gets field ``cancel`` = 1: its runner reads
# it back from its next save and stops the trace. The answer is a CancelOutcome value.
_REQUEST_CANCEL = Script("""
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'gone' end
if status == 'completed' or status == 'failed' or status == 'cancelled' then return 'final' end
if status == 'queued' and redis.call('HEXISTS', KEYS[1], 'runner') == 0 then
  redis.call('HSET', KEYS[1], 'value', ARGV[1], 'status', 'cancelled')
  redis.call('HINCRBY', KEYS[1], 'version', 1)
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '0-*', 'k', 'status', 'v', ARGV[3])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '0-*', 'k', 'done', 'v', ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return 'cancelled'
end
redis.call('HSET', KEYS[1], 'cancel', 1)
return 'cancelling'
""")


class RedisTraceStore:
    """Traces in a shared Redis; see the module docstring."""

    def __init__(
        self,
        redis: RedisCommands,
        clock: IReactorTime,
        limits: StoreLimits = DEFAULT_LIMITS,
        *,
        prefix: str = "mtrd",
        events_kept: int = EVENTS_KEPT,
        stale_after: float = STALE_AFTER,
    ) -> None:
        self._redis = redis
        self._clock = clock
        self.limits = limits
        self._prefix = prefix
        self._events_kept = events_kept
        self._stale_after = stale_after
        self.evictions = 0

    def trace_key(self, trace_id: str) -> str:
        """The hash holding the trace."""
        return f"{self._prefix}:{{{trace_id}}}:trace"

    def events_key(self, trace_id: str) -> str:
        """The stream of the trace's events."""
        return f"{self._prefix}:{{{trace_id}}}:events"

    @property
    def _index(self) -> str:
        return f"{self._prefix}:{{index}}:traces"

    @property
    def _active(self) -> str:
        return f"{self._prefix}:{{index}}:active"

    @property
    def _seq(self) -> str:
        return f"{self._prefix}:{{index}}:seq"

    def expires_at(self) -> float:
        """When a trace that finishes now will expire."""
        return self._clock.seconds() + self.limits.ttl

    def add_commands(self, trace: Trace, vantage: str, replica: str) -> list[Command]:
        """The commands that store a new trace, to send in a pipeline (possibly with
        others); :meth:`added` reads their replies.

        The trace goes first: readers drop index ids without a trace, so an id indexed
        before its trace was written could be dropped by a listing in between. The
        commands of a pipeline run in order, and the scripts are sent whole (``EVAL``, not
        ``EVALSHA``): a Redis that forgot its scripts cannot make one fail and the next
        run. A replica dying halfway leaves a trace missing from listings only, which
        expires.
        """
        fields = [codec.encode_trace(trace), trace.status.value, vantage, replica]
        return [
            _ADD.source_command(self._keys(trace.id), [*fields, self._expiry_ms(trace)]),
            _INDEX.source_command(
                [self._seq, self._index, self._active],
                [trace.id, 0 if trace.status.is_final else 1],
            ),
        ]

    async def added(
        self, trace: Trace, replies: Sequence[Any], retry_after: Callable[[], int]
    ) -> None:
        """Check what :meth:`add_commands` did: past the cap, the oldest finished traces
        are evicted, or the new trace is removed again and :class:`StoreFull` raised."""
        created, (_, count) = replies
        if not created:
            raise ValueError(f"a trace with id {trace.id!r} is already stored")
        if int(count) > self.limits.max_traces:
            try:
                await self._make_room(retry_after)
            except StoreFull:
                await self.delete(trace.id)
                raise

    async def add(
        self, trace: Trace, retry_after: Callable[[], int], vantage: str, replica: str
    ) -> StoredTrace:
        """Store a new trace (version 1), evicting the oldest finished one past the cap."""
        replies = await self._redis.pipeline(self.add_commands(trace, vantage, replica))
        await self.added(trace, replies, retry_after)
        return StoredTrace(trace, 1, vantage, replica)

    async def save(self, trace: Trace, *, runner: str | None = None) -> int | None:
        """Store a new snapshot; its version, or None if the trace is gone (deleted, expired).

        A final snapshot starts the trace's expiry: both its keys go ``ttl`` seconds later.
        Any other snapshot pushes the expiry of an active trace ``stale_after`` ahead.
        With ``runner``, the save is fenced: it raises :class:`NotRunning` unless the trace
        is still unfinished and run by that replica, so a replica that lost its lease can
        overwrite nothing.
        """
        saved = await self._save(trace, runner)
        return None if saved is None else saved.version

    async def save_running(self, trace: Trace, runner: str) -> Saved | None:
        """A fenced save (as :meth:`save` with ``runner``) that also says whether a cancel
        of the trace was asked for; None if the trace is gone."""
        return await self._save(trace, runner)

    async def write_running(
        self,
        trace: Trace,
        runner: str,
        events: Sequence[tuple[int, str, TraceStatus | Hop | Trace]],
    ) -> Saved | None:
        """A fenced save (as :meth:`save_running`) and the runner's events of the trace
        (as :meth:`append_events`) in one call; None if the trace is gone. Raises
        :class:`NotRunning`, having written nothing, when the trace does not run there."""
        snapshot = codec.encode_trace(trace)
        args: list[Any] = [snapshot, trace.status.value,
                           self._expiry_ms(trace), runner, self._events_kept]  # fmt: skip
        for event_id, kind, value in events:
            # The end's done event carries the final snapshot itself: encoded once.
            encoded = snapshot if value is trace else codec.encode_event(kind, value)
            args += [f"0-{event_id}", kind, encoded]
        # A final snapshot takes the trace off the index of active traces: sent with the
        # write, refused or not (the trace has ended either way).
        ended = [("ZREM", self._active, trace.id)] if trace.status.is_final else []
        reply = await _WRITE_RUNNING.run_then(self._redis, self._keys(trace.id), args, ended)
        if reply is None:
            return None
        if not isinstance(reply, list):
            raise NotRunning(trace.id)
        version, cancel, _written = reply
        return Saved(int(version), cancel=bool(int(cancel)))

    async def save_late(self, trace: Trace, runner: str) -> int | None:
        """Rewrite the final snapshot ``runner`` wrote with ``trace`` (names that came
        after the end); its new version, or None if the trace is gone. Raises
        :class:`NotRunning`, having written nothing, when the stored trace is not that
        runner's end (a reaper's, or a status that differs)."""
        reply = await _SAVE_LATE.run(
            self._redis,
            [self.trace_key(trace.id)],
            [codec.encode_trace(trace), trace.status.value, runner],
        )
        if reply is None:
            return None
        if int(reply) == 0:
            raise NotRunning(trace.id)
        return int(reply)

    async def cancel_requested(self, trace_id: str) -> bool:
        """Whether a cancel of the trace was asked for (the runner checks between saves)."""
        cancel = await self._redis.execute("HGET", self.trace_key(trace_id), "cancel")
        return cancel is not None and as_text(cancel) != "0"

    async def _save(self, trace: Trace, runner: str | None) -> Saved | None:
        reply, _ = await together(
            _SAVE.run(
                self._redis,
                self._keys(trace.id),
                [codec.encode_trace(trace), trace.status.value, self._expiry_ms(trace),
                 runner or ""],
            ),
            self._ended(trace),
        )  # fmt: skip
        if reply is None:
            return None
        if not isinstance(reply, list):
            raise NotRunning(trace.id)
        version, cancel = reply
        return Saved(int(version), cancel=bool(int(cancel)))

    async def fail_lost(self, trace_id: str, replica: str, now: float) -> bool:
        """End a trace that ``replica`` ran as ``failed`` / ``replica_lost``, if it still
        runs there; True if this call ended it. Safe to race: one caller wins."""
        stored = await self.get(trace_id)
        if stored is None or stored.trace.status.is_final:
            return False
        failed = attrs.evolve(
            stored.trace,
            status=TraceStatus.FAILED,
            finished_at=now,
            expires_at=now + self.limits.ttl,
            error=TraceError("replica_lost", f"the replica running the trace ({replica}) "
                             "stopped answering"),
        )  # fmt: skip
        try:
            version = await self.save(failed, runner=replica)
        except NotRunning:
            return False
        if version is None:
            return False
        await self.append_event(trace_id, "done", failed)
        return True

    async def request_cancel(self, trace_id: str, now: float) -> CancelOutcome:
        """Cancel a trace: at once if it is queued and nobody took it, else ask its runner.

        Safe to race with a runner taking the trace: the script decides on what Redis
        holds, and a trace taken meanwhile gets the ``cancel`` field instead.
        """
        stored = await self.get(trace_id)
        if stored is None:
            return CancelOutcome.GONE
        cancelled = attrs.evolve(
            stored.trace,
            status=TraceStatus.CANCELLED,
            finished_at=now,
            expires_at=now + self.limits.ttl,
        )
        outcome = await _REQUEST_CANCEL.run(
            self._redis,
            self._keys(trace_id),
            [codec.encode_trace(cancelled), self._expiry_ms(cancelled),
             codec.encode_event("status", TraceStatus.CANCELLED),
             codec.encode_event("done", cancelled), self._events_kept],
        )  # fmt: skip
        cancel = CancelOutcome(as_text(outcome))
        if cancel is CancelOutcome.CANCELLED:
            await self._redis.execute("ZREM", self._active, trace_id)
        return cancel

    async def take_many(self, trace_ids: Sequence[str], replica: str) -> list[StoredTrace | None]:
        """Make ``replica`` the one that runs each queued trace, and read it, in one call
        (one write, one deadline): per trace, None if it is not queued any more (cancelled,
        deleted, expired) or another replica took it first. The scripts go whole
        (``EVAL``): a Redis that forgot them cannot refuse some and not others."""
        if not trace_ids:
            return []
        replies = await self._redis.pipeline(
            [_TAKE.source_command([self.trace_key(trace_id)], [replica]) for trace_id in trace_ids]
        )
        return [_taken(reply) for reply in replies]

    async def get(self, trace_id: str) -> StoredTrace | None:
        """The trace and its version, or None if unknown, deleted or expired."""
        value, version, vantage, replica, webhook = await self._redis.execute(
            "HMGET", self.trace_key(trace_id), "value", "version", "vantage", "replica", "webhook"
        )
        if value is None:
            return None
        return StoredTrace(
            codec.decode_trace(value),
            int(version),
            as_text(vantage),
            as_text(replica),
            None if webhook is None else as_text(webhook),
        )

    async def set_webhook(self, trace_id: str, state: str) -> bool:
        """Write the state of the trace's webhook; False if the trace is gone."""
        reply = await _SET_WEBHOOK.run(self._redis, [self.trace_key(trace_id)], [state])
        return int(reply) == 1

    async def delete(self, trace_id: str) -> bool:
        """Forget a trace and its events; False if there was nothing to forget."""
        removed = await self._redis.execute(
            "DEL", self.trace_key(trace_id), self.events_key(trace_id)
        )
        await self._redis.pipeline(
            [("ZREM", self._index, trace_id), ("ZREM", self._active, trace_id)]
        )
        return int(removed) > 0

    async def newest_first(
        self,
        status: TraceStatus | None,
        limit: int,
        cursor: str | None,
        visible: Callable[[Trace], bool] | None = None,
    ) -> tuple[list[Trace], str | None]:
        """A page of traces (only the ``visible`` ones, when given), newest first across
        replicas, and the next page's cursor.

        Queued and running traces are listed from the index of active traces, so listing
        them costs what is active, not what is stored. With a status, the statuses are read
        first and only the documents of the page after (of every candidate when
        ``visible`` must judge them: the owner is in the document).
        """
        below = "+inf" if cursor is None else f"({_decode_cursor(cursor)}"
        active = status is not None and not status.is_final
        index = self._active if active else self._index
        page: list[Trace] = []
        last_seq = 0
        while True:
            batch = await self._redis.execute(
                "ZREVRANGEBYSCORE", index, below, "-inf", "WITHSCORES", "LIMIT", 0, LIST_BATCH,
            )  # fmt: skip
            if not batch:
                return page, None
            entries = [(as_text(batch[i]), int(batch[i + 1])) for i in range(0, len(batch), 2)]
            # Without a status every entry is wanted: the documents are read straight away.
            fields = ("status",) if status is not None else _LISTED
            replies = await self._redis.pipeline(
                [("HMGET", self.trace_key(trace_id), *fields) for trace_id, _ in entries]
            )
            gone, ended, wanted = [], [], []
            for (trace_id, seq), reply in zip(entries, replies, strict=True):
                stored = reply[0]
                if stored is None:
                    gone.append(trace_id)
                elif active and TraceStatus(as_text(stored)).is_final:
                    ended.append(trace_id)
                elif status is None or as_text(stored) == status.value:
                    wanted.append((trace_id, seq))
            room = limit - len(page)
            if visible is None:
                more = len(wanted) > room
                wanted = wanted[:room]
            if status is None:
                documents = dict(zip((trace_id for trace_id, _ in entries), replies, strict=True))
                values = [documents[trace_id] for trace_id, _ in wanted]
            elif wanted:
                values = await self._redis.pipeline(
                    [("HMGET", self.trace_key(trace_id), *_LISTED) for trace_id, _ in wanted]
                )
            else:
                values = []
            found = [
                (seq, _listed(value))
                for (_, seq), value in zip(wanted, values, strict=True)
                if value[0] is not None  # gone since its status was read
            ]
            if visible is not None:
                found = [(seq, trace) for seq, trace in found if visible(trace)]
                more = len(found) > room
                found = found[:room]
            for seq, trace in found:
                page.append(trace)
                last_seq = seq
            await self._forget(gone, ended)
            if more and page:
                return page, str(last_seq)
            below = f"({entries[-1][1]}"

    async def append_event(
        self,
        trace_id: str,
        kind: str,
        value: TraceStatus | Hop | Trace,
        event_id: int | None = None,
    ) -> int | None:
        """Log one event of a trace; its id, or None if the trace is gone.

        Without ``event_id`` Redis gives the next id; the runner passes its channel's id so
        that subscribers see the same ids on every replica. An id that does not grow is
        refused (:class:`RedisCommandError`): a second writer cannot slip events in.
        """
        stream_id = await _APPEND.run(
            self._redis,
            self._keys(trace_id),
            [kind, codec.encode_event(kind, value), self._events_kept,
             "0-*" if event_id is None else f"0-{event_id}"],
        )  # fmt: skip
        return None if stream_id is None else _event_id(stream_id)

    async def append_events(
        self, trace_id: str, events: Sequence[tuple[int, str, TraceStatus | Hop | Trace]]
    ) -> int | None:
        """Log a runner's events of one trace in one call, ids growing; how many were new
        (ids already in the log are skipped), or None if the trace is gone."""
        args: list[Any] = [self._events_kept]
        for event_id, kind, value in events:
            args += [f"0-{event_id}", kind, codec.encode_event(kind, value)]
        written = await _APPEND_MANY.run(self._redis, self._keys(trace_id), args)
        return None if written is None else int(written)

    async def events_after(self, trace_id: str, after: int, count: int = 500) -> EventPage:
        """Up to ``count`` events with ids above ``after``, oldest first."""
        gap, entries = await _EVENTS_AFTER.run(
            self._redis, [self.events_key(trace_id)], [f"(0-{after}", count, after]
        )
        events = []
        for stream_id, fields in entries:
            values = dict(zip(fields[::2], fields[1::2], strict=True))
            kind = as_text(values[b"k"])
            events.append(Event(_event_id(stream_id), kind, codec.decode_event(kind, values[b"v"])))
        return EventPage(tuple(events), gap=bool(gap))

    async def _make_room(self, retry_after: Callable[[], int]) -> None:
        # Evicts finished traces, oldest first, until the index holds at most the cap.
        most = self.limits.max_traces
        count = int(await self._redis.execute("ZCARD", self._index))
        if count <= most:
            return
        oldest = await self._redis.execute("ZRANGE", self._index, 0, EVICTION_SCAN - 1)
        ids = [as_text(trace_id) for trace_id in oldest]
        statuses = await self._redis.pipeline(
            [("HGET", self.trace_key(trace_id), "status") for trace_id in ids]
        )
        gone = []
        for trace_id, stored in zip(ids, statuses, strict=True):
            if count <= most:
                break
            if stored is None:
                gone.append(trace_id)
            elif TraceStatus(as_text(stored)).is_final:
                await self.delete(trace_id)
                self.evictions += 1
            else:
                continue
            count -= 1
        await self._forget(gone)
        if count > most:
            raise StoreFull(retry_after())

    async def _forget(self, gone: list[str], ended: Sequence[str] = ()) -> None:
        # Heals the indexes: ids whose trace expired or was never written, and active ids
        # of traces that have ended (a replica that died before it could say so).
        commands: list[Command] = []
        if gone:
            commands += [("ZREM", self._index, *gone), ("ZREM", self._active, *gone)]
        if ended:
            commands.append(("ZREM", self._active, *ended))
        if commands:
            await self._redis.pipeline(commands)

    async def _ended(self, trace: Trace) -> None:
        # A final snapshot takes the trace off the index of active traces (sent with the
        # snapshot's write, not waiting for it: refused or not, the trace has ended).
        if trace.status.is_final:
            await self._redis.execute("ZREM", self._active, trace.id)

    def _keys(self, trace_id: str) -> list[str]:
        return [self.trace_key(trace_id), self.events_key(trace_id)]

    def _expiry_ms(self, trace: Trace) -> int:
        seconds = self.limits.ttl if trace.status.is_final else self._stale_after
        return max(1, round(seconds * 1000))


def _taken(reply: Any) -> StoredTrace | None:
    """What the take script answered: the trace it took, or None."""
    if reply is None:
        return None
    value, version, vantage, taker = reply
    return StoredTrace(codec.decode_trace(value), int(version), as_text(vantage), as_text(taker))


def _event_id(stream_id: bytes | str) -> int:
    return int(as_text(stream_id).partition("-")[2])


def _decode_cursor(cursor: str) -> int:
    if not cursor.isascii() or not cursor.isdigit() or len(cursor) > 18:
        raise BadCursor(cursor)
    return int(cursor)
