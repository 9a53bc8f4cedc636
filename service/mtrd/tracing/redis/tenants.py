"""Per-tenant caps across replicas: every replica counts a tenant's traces in Redis.

Keys (``P`` is the prefix; ``T`` the tenant name)::

    P:tenant:{T}:active   sorted set: the tenant's traces admitted and maybe not final, by
                          creation time (queued or running, on any replica)
    P:tenant:{T}:stored   sorted set: the tenant's stored traces, by creation time
    P:tenant:{T}:running  sorted set: the tenant's traces a runner reserved a place for
                          (taking or running, on any replica), by reservation time
    P:tenant:{T}:probes   hash: replica -> "<probes waiting> <lease deadline, ms>", what
                          each replica's pool holds of the tenant's probes (heartbeat)

A trace is added to both when it is admitted (one single-key script each, sent in the
pipeline of the POST, so the cap holds whichever replica admits, and the layout works
on Redis Cluster). Nothing removes
it when it ends, is deleted or expires: at the cap, the admitting replica reads the
status of each trace the set names, drops those that ended or are gone, evicts the
tenant's own oldest finished trace for ``stored``, and refuses only if the cap still
holds. An id whose trace is not written yet is kept for ``ADMIT_GRACE`` seconds (it may
be on its way), so two replicas admitting at once cannot both slip past the cap.

The running set holds ``--tenant-max-running`` for the runners of every replica: a
runner reserves a place (:meth:`RedisTenants.reserve_running`, one single-key script)
before it takes a claimed trace, and gives it back when the trace ends or the take
fails (:meth:`RedisTenants.ran`). It heals like the others: at the cap, ids whose trace
ended or is gone are dropped (a lost replica's traces end ``replica_lost`` by the
reaper), and so is a reservation whose trace nobody took within ``TAKE_GRACE`` (the
reserving replica died between the two steps).

Probes waiting are counted where they wait, in each replica's pool: every heartbeat
publishes the replica's count per tenant with its lease deadline
(:meth:`RedisTenants.publish_probes_commands`), and a POST reads the tenant's hash in its
one pipeline and sums the counts of replicas whose lease holds (a lost replica's figure
drops out with its lease). The sum is as old as the last beats (a fifth of a lease):
traces admitted within that time add probes it does not show yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from mtrd.tracing.model import TraceStatus
from mtrd.tracing.redis.commands import RedisCommands, Script, as_text
from mtrd.tracing.redis.connection import Command
from mtrd.tracing.redis.store import EVICTION_SCAN, RedisTraceStore
from mtrd.tracing.tenants import Cap, TenantCapReached, TenantLimits

ADMIT_GRACE: Final = 60.0
RETRY_AFTER: Final = 2
# A runner reserves, then takes in its next call: a reservation not followed by a take
# for this long belongs to a replica that died in between.
TAKE_GRACE: Final = 10.0

# KEYS: the set. ARGV: cap, trace id, score. 1 if added, 0 at the cap.
_ADMIT = Script("""
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
return 1
""")


# KEYS: the running set. ARGV: cap, trace id, score. 1 if reserved (or already), 0 at cap.
_RESERVE = Script("""
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
return 1
""")


class RedisTenants:
    """A tenant's caps counted in Redis; see the module docstring."""

    def __init__(
        self,
        redis: RedisCommands,
        store: RedisTraceStore,
        limits: TenantLimits,
        *,
        prefix: str = "mtrd",
    ) -> None:
        self._redis = redis
        self._store = store
        self.limits = limits
        self._prefix = prefix

    def key(self, owner: str, which: str) -> str:
        """The set ``which`` (active, stored) of ``owner``."""
        return f"{self._prefix}:tenant:{{{owner}}}:{which}"

    def admit_commands(self, owner: str, trace_id: str, now: float) -> list[Command]:
        """The commands that count a new trace of ``owner`` (active, then stored), to send
        in a pipeline; :meth:`admitted` reads their replies.

        Active traces (queued or running) are held to ``max_running + max_queued``: at
        most ``max_running`` of them run (the runners reserve places in the running set),
        and the tenant's queue is what may wait beyond that.
        """
        return [
            _ADMIT.source_command([self.key(owner, which)], [cap, trace_id, now])
            for which, cap in self._caps()
        ]

    async def admitted(self, owner: str, trace_id: str, now: float, replies: Sequence[Any]) -> None:
        """Check what :meth:`admit_commands` did: a set at its cap drops the ids of traces
        that ended or are gone (evicting the owner's oldest finished trace for ``stored``)
        and is asked again; :class:`TenantCapReached` names the cap that still holds (the
        caller then withdraws the trace)."""
        for (which, cap), reply in zip(self._caps(), replies, strict=True):
            if reply:
                continue
            key = self.key(owner, which)
            await self._make_room(which, owner, now)
            if await _ADMIT.run(self._redis, [key], [cap, trace_id, now]):
                continue
            limits = self.limits
            if which == "active":
                raise TenantCapReached(
                    Cap.QUEUED,
                    limits.max_queued,
                    RETRY_AFTER,
                    f"this tenant has {cap} traces queued or running across replicas "
                    f"(with --tenant-max-running {limits.max_running})",
                )
            raise TenantCapReached(
                Cap.STORED,
                limits.max_stored,
                RETRY_AFTER,
                f"this tenant has {cap} traces stored, none finished",
            )

    def _caps(self) -> list[tuple[str, int]]:
        limits = self.limits
        return [
            ("active", limits.max_running + limits.max_queued),
            ("stored", limits.max_stored),
        ]

    async def withdraw(self, owner: str, trace_id: str) -> None:
        """Uncount a trace that was admitted but not stored after all."""
        await self._forget(owner, "active", [trace_id])
        await self._forget(owner, "stored", [trace_id])

    def probes_command(self, owner: str) -> Command:
        """The command that reads ``owner``'s probes waiting on every replica, to send in
        the POST's pipeline; :func:`probes_waiting` sums its reply."""
        return ("HGETALL", self.key(owner, "probes"))

    def publish_probes_commands(
        self, replica: str, waiting: dict[str, int], gone: set[str], now: float, lease: float
    ) -> list[Command]:
        """What a heartbeat sends of its pool's probes waiting per tenant: a count with its
        lease deadline for each tenant in ``waiting``; the field removed for each tenant
        in ``gone`` (counted in the last beat, none waiting now)."""
        deadline = round((now + lease) * 1000)
        commands: list[Command] = []
        for owner, count in sorted(waiting.items()):
            key = self.key(owner, "probes")
            commands.append(("HSET", key, replica, f"{count} {deadline}"))
            # A tenant nobody beats for two leases leaves no key behind.
            commands.append(("PEXPIRE", key, round(2 * lease * 1000)))
        commands.extend(("HDEL", self.key(owner, "probes"), replica) for owner in sorted(gone))
        return commands

    async def publish_probes(
        self, replica: str, waiting: dict[str, int], gone: set[str], now: float, lease: float
    ) -> None:
        """Send :meth:`publish_probes_commands` (nothing when there is nothing to say)."""
        commands = self.publish_probes_commands(replica, waiting, gone, now, lease)
        if commands:
            await self._redis.pipeline(commands)

    def check_probes(self, reply: Any, now: float) -> None:
        """Raise :class:`TenantCapReached` when the tenant has ``max_probes_waiting`` probes
        waiting across replicas (``reply``: that of :meth:`probes_command`)."""
        waiting, cap = probes_waiting(reply, now), self.limits.max_probes_waiting
        if waiting >= cap:
            raise TenantCapReached(
                Cap.PROBES_WAITING,
                cap,
                RETRY_AFTER,
                f"this tenant has {waiting} probes waiting across replicas",
            )

    async def reserve_running(self, owner: str, trace_id: str, now: float) -> bool:
        """Reserve one of ``owner``'s running places for a trace about to be taken; False
        while ``max_running`` of its traces run (or are being taken) on any replica."""
        key, cap = self.key(owner, "running"), self.limits.max_running
        if await _RESERVE.run(self._redis, [key], [cap, trace_id, now]):
            return True
        await self._heal_running(owner, now)
        return bool(await _RESERVE.run(self._redis, [key], [cap, trace_id, now]))

    async def ran(self, owner: str, *trace_ids: str) -> None:
        """The traces no longer run (ended, or not taken after all): their places are free."""
        await self._forget(owner, "running", list(trace_ids))

    async def _heal_running(self, owner: str, now: float) -> None:
        reply = await self._redis.execute("ZRANGE", self.key(owner, "running"), 0, -1, "WITHSCORES")
        entries = [(as_text(reply[i]), float(reply[i + 1])) for i in range(0, len(reply), 2)]
        states = await self._redis.pipeline(
            [("HMGET", self._store.trace_key(t), "status", "runner") for t, _ in entries]
        )
        dropped = []
        for (trace_id, reserved), (status, runner) in zip(entries, states, strict=True):
            ended = status is None or TraceStatus(as_text(status)).is_final
            never_taken = runner is None and reserved < now - TAKE_GRACE
            if ended or never_taken:
                dropped.append(trace_id)
        await self._forget(owner, "running", dropped)

    async def _make_room(self, which: str, owner: str, now: float) -> None:
        # The active set is small (running + queued); of the stored set the oldest are
        # read, as the store's own eviction reads them.
        last = -1 if which == "active" else EVICTION_SCAN - 1
        reply = await self._redis.execute("ZRANGE", self.key(owner, which), 0, last, "WITHSCORES")
        entries = [(as_text(reply[i]), float(reply[i + 1])) for i in range(0, len(reply), 2)]
        statuses = await self._redis.pipeline(
            [("HGET", self._store.trace_key(trace_id), "status") for trace_id, _ in entries]
        )
        dropped: list[str] = []
        evicted = False
        for (trace_id, admitted), status in zip(entries, statuses, strict=True):
            if status is None:
                if admitted < now - ADMIT_GRACE:
                    dropped.append(trace_id)
            elif TraceStatus(as_text(status)).is_final:
                if which == "active":
                    dropped.append(trace_id)
                elif not evicted:
                    # The tenant's own oldest finished trace makes room for its new one.
                    await self._store.delete(trace_id)
                    self._store.evictions += 1
                    dropped.append(trace_id)
                    evicted = True
        await self._forget(owner, which, dropped)

    async def _forget(self, owner: str, which: str, trace_ids: list[str]) -> None:
        if trace_ids:
            await self._redis.execute("ZREM", self.key(owner, which), *trace_ids)


def probes_waiting(reply: Any, now: float) -> int:
    """The probes waiting in a reply to :meth:`RedisTenants.probes_command`, summed over the
    replicas whose lease holds at ``now``."""
    at = round(now * 1000)
    fields = list(reply or [])
    total = 0
    for value in fields[1::2]:
        count, deadline = as_text(value).split()
        if int(deadline) > at:
            total += int(count)
    return total
