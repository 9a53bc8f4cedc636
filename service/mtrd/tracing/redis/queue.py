"""The work queue of one vantage: a Redis Stream with one consumer group of its replicas.

``P:vantage:{V}:queue`` holds one entry per trace waiting to run (field ``t``: the trace id;
field ``o``: its owner, '' for none, so that a runner holding tenants to their caps need not
read the trace first; entries queued by older replicas have no ``o``). Every replica of
vantage V reads it as consumer ``<replica>`` of group ``runners``, and only as many entries
as it has room for: a busy replica holds no work an idle one could run. An entry read but
not yet acknowledged is *claimed*; once the trace has started, the entry is acknowledged and
deleted, so the stream's length is the number of traces queued or claimed in the whole
deployment, and the queue cap holds there.

Claimed entries of a replica that died are taken over with ``XAUTOCLAIM`` once idle for
longer than the lease (a live replica starts what it claims at once); a replica that stops
gives its claimed entries back at once (:meth:`RedisWorkQueue.release`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import attrs

from mtrd.tracing.redis.commands import RedisCommands, Script, as_text
from mtrd.tracing.redis.connection import Command, RedisCommandError

GROUP: Final = "runners"


@attrs.frozen
class Claim:
    """One queue entry this replica read: the trace to start, and the entry to acknowledge."""

    entry: str
    trace_id: str
    owner: str | None = None
    says_owner: bool = False  # whether the entry says ``owner`` (None: no owner)


# KEYS: queue. ARGV: trace id, most entries, owner ('' for none). The entry id, or nil
# when the queue is full.
_ENQUEUE = Script("""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[2]) then return false end
return redis.call('XADD', KEYS[1], '*', 't', ARGV[1], 'o', ARGV[3])
""")

# KEYS: queue. ARGV: entry ids. Each entry is queued again as a new entry (at the back),
# and the old one acknowledged and deleted, in one step: nothing is lost or doubled.
_RELEASE = Script("""
local released = 0
for i = 1, #ARGV do
  local entry = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
  if #entry == 1 then
    redis.call('XADD', KEYS[1], '*', unpack(entry[1][2]))
    released = released + 1
  end
  redis.call('XACK', KEYS[1], 'runners', ARGV[i])
  redis.call('XDEL', KEYS[1], ARGV[i])
end
return released
""")

# KEYS: queue. ARGV: idle ms. Consumers with nothing pending that have not read for that
# long are deleted (replica ids are new with every process: without this the group would
# keep one consumer per replica that ever ran). Atomic, so no claim slips in between; a
# live replica deleted by mistake is created again by its next read.
_FORGET_IDLE = Script("""
local forgotten = 0
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], 'runners')) do
  local f = {}
  for i = 1, #consumer, 2 do f[consumer[i]] = consumer[i + 1] end
  if f['pending'] == 0 and f['idle'] > tonumber(ARGV[1]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], 'runners', f['name'])
    forgotten = forgotten + 1
  end
end
return forgotten
""")


class RedisWorkQueue:
    """The queue of one vantage, as seen by one replica; see the module docstring."""

    def __init__(
        self, redis: RedisCommands, vantage: str, replica: str, *, prefix: str = "mtrd"
    ) -> None:
        self._redis = redis
        self.vantage = vantage
        self.replica = replica
        self.key = f"{prefix}:vantage:{{{vantage}}}:queue"

    async def create(self) -> None:
        """Make the stream and its group if they are not there (every replica, at start)."""
        try:
            await self._redis.execute("XGROUP", "CREATE", self.key, GROUP, "0", "MKSTREAM")
        except RedisCommandError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def enqueue(self, trace_id: str, max_queued: int, *, owner: str | None) -> bool:
        """Queue a trace of ``owner``; False when ``max_queued`` traces are queued or
        claimed already."""
        entry = await _ENQUEUE.run(self._redis, [self.key], [trace_id, max_queued, owner or ""])
        return queued(entry)

    def enqueue_command(self, trace_id: str, max_queued: int, *, owner: str | None) -> Command:
        """:meth:`enqueue` as one command of a pipeline; its reply is the entry's id, nil
        when the queue is full, or 0 when the queue was never made (no replica of this
        vantage ever started: a name a client made up must not become a key). This script
        alone holds the queue caps."""
        return _ENQUEUE.source_command([self.key], [trace_id, max_queued, owner or ""])

    async def drop(self, entry: bytes | str) -> None:
        """Remove an entry nobody should run (its trace was refused after all)."""
        await self._redis.pipeline([("XACK", self.key, GROUP, entry), ("XDEL", self.key, entry)])

    async def claim(self, room: int) -> list[Claim]:
        """Up to ``room`` traces to start, oldest first; none without room."""
        if room < 1:
            return []
        reply = await self._redis.execute(
            "XREADGROUP", "GROUP", GROUP, self.replica, "COUNT", room, "STREAMS", self.key, ">"
        )
        if not reply:
            return []
        _stream, entries = reply[0]
        return _claims(entries)

    async def started(self, *claims: Claim) -> None:
        """The claimed traces started (or were dropped): their entries leave the queue."""
        entries = [claim.entry for claim in claims]
        await self._redis.pipeline(
            [("XACK", self.key, GROUP, *entries), ("XDEL", self.key, *entries)]
        )

    async def release(self, claims: Sequence[Claim]) -> int:
        """Give claimed traces back to the queue at once (on shutdown); how many went back."""
        if not claims:
            return 0
        released = await _RELEASE.run(self._redis, [self.key], [c.entry for c in claims])
        return int(released)

    async def take_over(self, room: int, idle_seconds: float) -> list[Claim]:
        """Claim up to ``room`` entries that another replica claimed and left idle for
        ``idle_seconds`` (longer than the lease: that replica is gone)."""
        if room < 1:
            return []
        reply = await self._redis.execute(
            "XAUTOCLAIM", self.key, GROUP, self.replica, max(1, round(idle_seconds * 1000)),
            "0-0", "COUNT", room,
        )  # fmt: skip
        return _claims(reply[1])

    async def forget_idle_consumers(self, idle_seconds: float) -> int:
        """Delete the group's consumers that hold no claim and have not read for
        ``idle_seconds`` (replicas gone); how many went."""
        forgotten = await _FORGET_IDLE.run(
            self._redis, [self.key], [max(1, round(idle_seconds * 1000))]
        )
        return int(forgotten)

    async def waiting(self) -> int:
        """Traces queued or claimed in the whole deployment for this vantage."""
        return int(await self._redis.execute("XLEN", self.key))


def _claims(entries: list[Any]) -> list[Claim]:
    claims = []
    for entry, fields in entries:
        if fields is None:  # deleted while claimed (XAUTOCLAIM reports such ids)
            continue
        values = dict(zip(fields[::2], fields[1::2], strict=True))
        owner = values.get(b"o")
        claims.append(
            Claim(
                as_text(entry),
                as_text(values[b"t"]),
                owner=as_text(owner) or None,
                says_owner=owner is not None,
            )
        )
    return claims


def queued(entry: object) -> bool:
    """Whether an enqueue reply is an entry (not a full queue, not a queue never made)."""
    return entry is not None and entry != 0
