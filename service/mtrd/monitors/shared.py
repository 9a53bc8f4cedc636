"""Redis mode's monitors: kept in Redis, each run by one replica of its vantage at a time.

:class:`SharedMonitors` keeps each monitor's settings in Redis (a hash per monitor, an
index of ids, and an index of names, which are unique). Any replica answers the API from it.

:class:`MonitorDirector`, one per replica, decides which monitors this replica runs: every
``sync_every`` seconds it takes or renews a lease (``SET NX PX``, renewed only by its
holder) on each monitor of its vantage, runs those it holds in its local
:class:`MonitorService`, drops those it lost, and writes what each of its monitors looks
like now (rendered by the web) for the other replicas to answer ``GET`` with. A replica that
dies stops renewing: its leases expire within ``lease`` seconds and another replica of
the vantage takes each monitor at its next sync. A monitor's runs are ordinary traces,
queued for its vantage through the shared trace store (:class:`SharedStarter`).

What a monitor has seen (path, runs, path history, open alerts, event numbering) is kept
in Redis by its runner after each change, in one key next to its settings (one hash tag per
monitor): a monitor that moves continues on the new replica from the stored path and
alerts. Its runner also appends each event (already encoded for the event stream) to a
short log in Redis, which any replica's event stream follows.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from mtrd.monitors.events import MonitorEvent
from mtrd.monitors.model import MonitorSource, MonitorSpec
from mtrd.monitors.service import (
    MonitorMemory,
    MonitorNameTaken,
    MonitorNotFound,
    MonitorRecord,
    MonitorService,
    TooManyMonitors,
)
from mtrd.tracing.events import Event
from mtrd.tracing.model import Trace, TraceRequest
from mtrd.tracing.redis.commands import RedisCommands, Script, as_text
from mtrd.tracing.redis.front import SharedTraces

log = Logger(namespace="mtrd.monitors")
LEASE = 5.0
SYNC_EVERY = 1.0
KEEP_EVENTS = 256  # events kept in Redis per monitor, for other replicas and resumes
EVENTS_TTL = 86400  # seconds a monitor's event log outlives its last event

# KEYS: lease. ARGV: replica, lease_ms. 1 if this replica holds the lease now, else 0.
_TAKE_LEASE = Script("""
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
""")
# KEYS: lease. ARGV: replica. Let go of the lease if this replica holds it.
_DROP_LEASE = Script("""
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
""")
# KEYS: monitor, memory. ARGV: memory. Keep it only while the monitor exists: a runner that
# has not yet heard of a deletion must not leave its memory behind.
_KEEP_MEMORY = Script("""
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('SET', KEYS[2], ARGV[1]) return 1 end
return 0
""")


@attrs.frozen
class StoredMonitor:
    """A monitor as kept in Redis: its settings (encoded by the web), owner and vantage."""

    id: str
    spec: MonitorSpec
    owner: str | None
    vantage: str
    created_at: float
    version: int
    source: MonitorSource = MonitorSource.API


class SharedMonitors:
    """Monitors' settings in Redis; see the module docstring."""

    def __init__(
        self,
        redis: RedisCommands,
        *,
        encode: Callable[[MonitorSpec], bytes],
        decode: Callable[[bytes], MonitorSpec],
        max_monitors: int = 200,
        max_per_owner: int | None = None,
        prefix: str = "mtrd",
    ) -> None:
        """``encode`` and ``decode`` turn settings into bytes and back (the web's JSON);
        ``max_per_owner`` caps each named owner's monitors across the deployment."""
        self._redis = redis
        self._encode = encode
        self._decode = decode
        self.max_monitors = max_monitors
        self.max_per_owner = max_per_owner
        self._prefix = prefix

    def _key(self, monitor_id: str) -> str:
        return f"{self._prefix}:monitor:{{{monitor_id}}}"

    def lease_key(self, monitor_id: str) -> str:
        """Who runs the monitor now."""
        return f"{self._prefix}:monitor:{{{monitor_id}}}:lease"

    def _state_key(self, monitor_id: str) -> str:
        return f"{self._prefix}:monitor:{{{monitor_id}}}:state"

    def _memory_key(self, monitor_id: str) -> str:
        return f"{self._prefix}:monitor:{{{monitor_id}}}:memory"

    def _events_key(self, monitor_id: str) -> str:
        return f"{self._prefix}:monitor:{{{monitor_id}}}:events"

    @property
    def _ids(self) -> str:
        return f"{self._prefix}:monitors"

    @property
    def _names(self) -> str:
        return f"{self._prefix}:monitor-names"

    def _owned(self, owner: str) -> str:
        return f"{self._prefix}:monitor-owner:{owner}"

    async def create(
        self, spec: MonitorSpec, owner: str | None, vantage: str, now: float
    ) -> StoredMonitor:
        """Keep a new monitor; raises MonitorNameTaken or TooManyMonitors."""
        monitor_id = "m-" + secrets.token_urlsafe(12)
        if not await self._redis.execute("HSETNX", self._names, spec.name, monitor_id):
            raise MonitorNameTaken(spec.name)
        if await self._redis.execute("SCARD", self._ids) >= self.max_monitors:
            await self._redis.execute("HDEL", self._names, spec.name)
            raise TooManyMonitors(self.max_monitors, None)
        if owner is not None and self.max_per_owner is not None:
            # Take the place first, then count: two creations racing on two replicas may
            # both be refused at the cap, but never both pass it.
            owned = self._owned(owner)
            _, count = await self._redis.pipeline([("SADD", owned, monitor_id), ("SCARD", owned)])
            if int(count) > self.max_per_owner:
                await self._redis.pipeline(
                    [("SREM", owned, monitor_id), ("HDEL", self._names, spec.name)]
                )
                raise TooManyMonitors(self.max_per_owner, owner)
        fields = ("spec", self._encode(spec), "owner", owner or "", "vantage", vantage,
                  "created_at", repr(now), "version", 1)  # fmt: skip
        await self._redis.pipeline(
            [("HSET", self._key(monitor_id), *fields), ("SADD", self._ids, monitor_id)]
        )
        return StoredMonitor(monitor_id, spec, owner, vantage, now, 1)

    async def get(self, monitor_id: str) -> StoredMonitor | None:
        """The monitor, or None."""
        reply = await self._redis.execute("HGETALL", self._key(monitor_id))
        return self._stored(monitor_id, reply)

    async def listing(self) -> list[StoredMonitor]:
        """Every monitor, by id."""
        ids = sorted(as_text(i) for i in await self._redis.execute("SMEMBERS", self._ids))
        if not ids:
            return []
        replies = await self._redis.pipeline([("HGETALL", self._key(i)) for i in ids])
        found = (self._stored(i, reply) for i, reply in zip(ids, replies, strict=True))
        return [m for m in found if m is not None]

    async def update(self, stored: StoredMonitor, spec: MonitorSpec) -> StoredMonitor:
        """New settings for a monitor; raises MonitorNameTaken for a taken new name."""
        if spec.name != stored.spec.name:
            if not await self._redis.execute("HSETNX", self._names, spec.name, stored.id):
                raise MonitorNameTaken(spec.name)
            await self._redis.execute("HDEL", self._names, stored.spec.name)
        key = self._key(stored.id)
        replies = await self._redis.pipeline(
            [("HSET", key, "spec", self._encode(spec)), ("HINCRBY", key, "version", 1)]
        )
        return attrs.evolve(stored, spec=spec, version=int(replies[-1]))

    async def delete(self, stored: StoredMonitor) -> None:
        """Forget a monitor; its runner drops it at its next sync."""
        owned = [] if stored.owner is None else [("SREM", self._owned(stored.owner), stored.id)]
        keys = (
            self._key(stored.id),
            self._state_key(stored.id),
            self._memory_key(stored.id),
            self._events_key(stored.id),
        )
        await self._redis.pipeline(
            [
                ("DEL", *keys),
                ("SREM", self._ids, stored.id),
                ("HDEL", self._names, stored.spec.name),
                *owned,
            ]
        )

    async def keep_file_monitors(
        self, wanted: Sequence[tuple[str, MonitorSpec]], vantage: str, now: float
    ) -> bool:
        """Make the file monitors kept in Redis those of ``wanted`` (id, settings): the
        file's content wins over what another replica wrote. True if anything changed."""
        current = {m.id: m for m in await self.listing()}
        changed = False
        for monitor_id, spec in wanted:
            where = spec.vantage or vantage
            kept = current.get(monitor_id)
            if kept is not None and (kept.spec, kept.vantage) == (spec, where):
                continue
            holder = await self._redis.execute("HGET", self._names, spec.name)
            if holder is not None and as_text(holder) != monitor_id:
                log.warn("monitors file: {name} not applied: an API monitor has this name",
                         name=spec.name)  # fmt: skip
                continue
            key = self._key(monitor_id)
            fields = ("spec", self._encode(spec), "owner", "", "vantage", where,
                      "source", MonitorSource.FILE.value)  # fmt: skip
            await self._redis.pipeline(
                [
                    ("HSET", self._names, spec.name, monitor_id),
                    ("HSETNX", key, "created_at", repr(now)),
                    ("HSET", key, *fields),
                    ("HINCRBY", key, "version", 1),
                    ("SADD", self._ids, monitor_id),
                ]
            )
            changed = True
        names = {monitor_id for monitor_id, _ in wanted}
        for monitor in current.values():
            if monitor.source is MonitorSource.FILE and monitor.id not in names:
                await self.delete(monitor)
                changed = True
        return changed

    async def states(self, monitor_ids: Sequence[str]) -> list[bytes | None]:
        """What each monitor looks like on the replica that runs it (None: nobody yet)."""
        if not monitor_ids:
            return []
        replies = await self._redis.pipeline([("GET", self._state_key(i)) for i in monitor_ids])
        return [None if r is None else r if isinstance(r, bytes) else r.encode() for r in replies]

    async def put_state(self, monitor_id: str, state: bytes, ttl: float) -> None:
        """Publish what a monitor looks like here, for ``ttl`` seconds."""
        await self._redis.execute("SET", self._state_key(monitor_id), state, "PX", int(ttl * 1000))

    async def put_memory(self, monitor_id: str, memory: bytes) -> bool:
        """Keep what the monitor has seen (while it exists); True if kept."""
        keys = [self._key(monitor_id), self._memory_key(monitor_id)]
        return bool(await _KEEP_MEMORY.run(self._redis, keys, [memory]))

    async def memory(self, monitor_id: str) -> bytes | None:
        """What the monitor's last runner kept of what it saw, or None."""
        reply = await self._redis.execute("GET", self._memory_key(monitor_id))
        return None if reply is None else reply if isinstance(reply, bytes) else reply.encode()

    async def append_event(self, monitor_id: str, event_id: int, data: bytes) -> None:
        """Add one event to the monitor's log (the last ``KEEP_EVENTS`` are kept)."""
        key = self._events_key(monitor_id)
        await self._redis.pipeline(
            [
                ("RPUSH", key, b"%d " % event_id + data),
                ("LTRIM", key, -KEEP_EVENTS, -1),
                ("EXPIRE", key, EVENTS_TTL),
            ]
        )

    async def events_after(self, monitor_id: str, after: int) -> list[tuple[int, bytes]] | None:
        """The logged events with an id above ``after``, oldest first; None once the
        monitor is gone."""
        exists, entries = await self._redis.pipeline(
            [("EXISTS", self._key(monitor_id)), ("LRANGE", self._events_key(monitor_id), 0, -1)]
        )
        if not exists:
            return None
        found = []
        for entry in entries:
            raw = entry if isinstance(entry, bytes) else entry.encode()
            number, _, data = raw.partition(b" ")
            if int(number) > after:
                found.append((int(number), data))
        return found

    async def take_lease(self, monitor_id: str, replica: str, lease: float) -> bool:
        """Take or renew the monitor's lease; True while this replica holds it."""
        keys = [self.lease_key(monitor_id)]
        return bool(await _TAKE_LEASE.run(self._redis, keys, [replica, int(lease * 1000)]))

    async def drop_lease(self, monitor_id: str, replica: str) -> None:
        """Let go of the lease (a replica stopping hands its monitors on at once)."""
        await _DROP_LEASE.run(self._redis, [self.lease_key(monitor_id)], [replica])

    def _stored(self, monitor_id: str, reply: Any) -> StoredMonitor | None:
        if not reply:
            return None
        if isinstance(reply, dict):
            fields = {as_text(k): v for k, v in reply.items()}
        else:
            fields = {as_text(k): v for k, v in zip(reply[::2], reply[1::2], strict=True)}
        if "spec" not in fields:
            return None
        raw = fields["spec"]
        return StoredMonitor(
            id=monitor_id,
            spec=self._decode(raw if isinstance(raw, bytes) else raw.encode()),
            owner=as_text(fields.get("owner")) or None,
            vantage=as_text(fields.get("vantage")),
            created_at=float(as_text(fields.get("created_at")) or 0),
            version=int(as_text(fields.get("version")) or 1),
            source=MonitorSource(as_text(fields.get("source")) or MonitorSource.API.value),
        )


class SharedStarter:
    """Starts runs as traces queued for the monitor's vantage, and follows them to the end."""

    def __init__(self, front: SharedTraces) -> None:
        self._front = front

    def start(
        self,
        request: TraceRequest,
        vantage: str | None,
        on_done: Callable[[Trace], None],
        on_refused: Callable[[str], None],
        owner: str | None = None,
    ) -> None:
        """Queue the trace as ``owner``'s; ``on_done`` gets it once final, ``on_refused``
        why not."""
        started = Deferred.fromCoroutine(self._start(request, vantage, on_done, owner))
        started.addErrback(lambda failure: on_refused(str(failure.value)))

    async def _start(
        self,
        request: TraceRequest,
        vantage: str | None,
        on_done: Callable[[Trace], None],
        owner: str | None,
    ) -> None:
        stored = await self._front.submit(request, vantage, owner)

        def heard(event: Event) -> None:
            if event.kind == "done":
                assert isinstance(event.value, Trace)
                on_done(event.value)

        await self._front.follow(stored.trace.id, None, heard, lambda: None)


class MonitorDirector(Service):
    """Runs this replica's share of the monitors; see the module docstring."""

    def __init__(
        self,
        clock: IReactorTime,
        shared: SharedMonitors,
        monitors: MonitorService,
        *,
        replica: str,
        vantage: str,
        render: Callable[[MonitorRecord], bytes],
        lease: float = LEASE,
        sync_every: float = SYNC_EVERY,
        encode_memory: Callable[[MonitorMemory], bytes] | None = None,
        decode_memory: Callable[[bytes], MonitorMemory] | None = None,
        encode_event: Callable[[MonitorEvent], bytes] | None = None,
    ) -> None:
        """``render`` gives what a monitor looks like (the web's resource); with
        ``encode_memory`` and ``decode_memory`` what each monitor saw is kept in Redis and
        a new runner continues from it; with ``encode_event`` each event goes to the
        monitor's log in Redis too."""
        self._clock = clock
        self._shared = shared
        self._monitors = monitors
        self.replica = replica
        self.vantage = vantage
        self._render = render
        self.lease = lease
        self._versions: dict[str, int] = {}
        self._encode_memory = encode_memory
        self._decode_memory = decode_memory
        self._encode_event = encode_event
        self._remembered: dict[str, tuple[int, int]] = {}  # id -> (record version, last event)
        # The monitors file's monitors (id, settings), kept in Redis at each sync; None
        # without a file (this replica then leaves file monitors as they are).
        self.file_monitors: list[tuple[str, MonitorSpec]] | None = None
        self._loop = LoopingCall(lambda: Deferred.fromCoroutine(self._sync_safely()))
        self._loop.clock = clock
        self._sync_every = sync_every

    @property
    def held(self) -> list[str]:
        """The monitors this replica runs now."""
        return sorted(self._versions)

    def startService(self) -> None:
        """Sync now and every ``sync_every`` seconds."""
        super().startService()  # type: ignore[no-untyped-call]
        self._loop.start(self._sync_every, now=True)

    def stopService(self) -> Deferred[None]:
        """Stop syncing and hand the monitors on (their leases dropped)."""
        super().stopService()  # type: ignore[no-untyped-call]
        if self._loop.running:
            self._loop.stop()
        return Deferred.fromCoroutine(self._hand_on())

    async def _hand_on(self) -> None:
        for monitor_id in list(self._versions):
            self._drop(monitor_id)
            try:
                await self._shared.drop_lease(monitor_id, self.replica)
            except Exception:  # it expires on its own within a lease
                log.warn("monitor {id}: lease not dropped", id=monitor_id)

    async def _sync_safely(self) -> None:
        try:
            await self.sync()
        except Exception:
            # A LoopingCall stops for good on an error: log it and try again next time.
            log.failure("monitors: sync with Redis failed")

    async def sync(self) -> None:
        """Take, renew and drop leases; run what is held; publish its state."""
        if self.file_monitors is not None:
            await self._shared.keep_file_monitors(
                self.file_monitors, self.vantage, self._clock.seconds()
            )
        stored = {m.id: m for m in await self._shared.listing() if m.vantage == self.vantage}
        for monitor_id in list(self._versions):
            if monitor_id not in stored:
                self._drop(monitor_id)
        for monitor_id, monitor in stored.items():
            if not await self._shared.take_lease(monitor_id, self.replica, self.lease):
                if monitor_id in self._versions:
                    self._drop(monitor_id)  # someone else took it: we were cut off
                continue
            await self._run(monitor)
            record = self._monitors.get(monitor_id)
            await self._shared.put_state(monitor_id, self._render(record), 2 * self.lease)
            await self._remember(record, monitor.version)

    async def _remember(self, record: MonitorRecord, spec_version: int) -> None:
        if self._encode_memory is None:
            return
        mark = (record.version, record.channel.last_id)
        if self._remembered.get(record.id) == mark:
            return  # nothing seen since the last time
        memory = self._encode_memory(record.memory(spec_version))
        await self._shared.put_memory(record.id, memory)
        self._remembered[record.id] = mark

    async def _recalled(self, monitor: StoredMonitor) -> MonitorMemory | None:
        if self._decode_memory is None:
            return None
        kept = await self._shared.memory(monitor.id)
        if kept is None:
            return None
        try:
            return self._decode_memory(kept)
        except Exception:
            # Unreadable (another release's format?): the monitor starts afresh.
            log.failure("monitor {id}: kept memory unreadable", id=monitor.id)
            return None

    async def _run(self, monitor: StoredMonitor) -> None:
        version = self._versions.get(monitor.id)
        if version is None:
            memory = await self._recalled(monitor)
            if monitor.id in self._versions:
                return  # another sync took it on meanwhile
            record = self._monitors.create(
                monitor.spec, monitor.owner, monitor.source, monitor_id=monitor.id
            )
            if memory is not None:
                record.recall(memory, same_settings=memory.spec_version == monitor.version)
            if self._encode_event is not None:
                record.channel.subscribe(self._logger(monitor.id, self._encode_event))
        elif version != monitor.version:
            self._monitors.update(monitor.id, monitor.spec, force=True)
        self._versions[monitor.id] = monitor.version

    def _logger(
        self, monitor_id: str, encode: Callable[[MonitorEvent], bytes]
    ) -> Callable[[MonitorEvent], None]:
        def log_event(event: MonitorEvent) -> None:
            kept = Deferred.fromCoroutine(
                self._shared.append_event(monitor_id, event.id, encode(event))
            )
            kept.addErrback(not_kept)

        def not_kept(failure: Failure) -> None:
            # Lost when Redis does not answer: this replica's own stream still has it.
            log.failure("monitor {id}: event not kept", failure, id=monitor_id)

        return log_event

    def _drop(self, monitor_id: str) -> None:
        self._versions.pop(monitor_id, None)
        self._remembered.pop(monitor_id, None)
        with contextlib.suppress(MonitorNotFound):
            self._monitors.delete(monitor_id, force=True)
