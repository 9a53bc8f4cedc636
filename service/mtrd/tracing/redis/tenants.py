"""Per-tenant caps across replicas: every replica counts a tenant's traces in Redis.

Keys (``P`` is the prefix; ``T`` the tenant name)::

    P:tenant:{T}:active   sorted set: the tenant's traces admitted and maybe not final, by
                          creation time (queued or running, on any replica)
    P:tenant:{T}:stored   sorted set: the tenant's stored traces, by creation time

A trace is added to both when it is admitted (one single-key script each, so the cap
holds whichever replica admits, and the layout works on Redis Cluster). Nothing removes
it when it ends, is deleted or expires: at the cap, the admitting replica reads the
status of each trace the set names, drops those that ended or are gone, evicts the
tenant's own oldest finished trace for ``stored``, and refuses only if the cap still
holds. An id whose trace is not written yet is kept for ``ADMIT_GRACE`` seconds (it may
be on its way), so two replicas admitting at once cannot both slip past the cap.
"""

from __future__ import annotations

from typing import Final

from mtrd.tracing.model import TraceStatus
from mtrd.tracing.redis.commands import RedisCommands, Script, as_text
from mtrd.tracing.redis.store import RedisTraceStore
from mtrd.tracing.tenants import Cap, TenantCapReached, TenantLimits

ADMIT_GRACE: Final = 60.0
RETRY_AFTER: Final = 2

# KEYS: the set. ARGV: cap, trace id, score. 1 if added, 0 at the cap.
_ADMIT = Script("""
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

    async def admit(self, owner: str, trace_id: str, now: float) -> None:
        """Count a new trace of ``owner``, or raise :class:`TenantCapReached` naming the cap.

        Active traces (queued or running) are held to ``max_running + max_queued``: with
        the shared store the runners of every replica take queued traces in turn, and the
        tenant's queue is what may wait beyond what runs.
        """
        active_cap = self.limits.max_running + self.limits.max_queued
        if not await self._admit("active", owner, trace_id, now, active_cap):
            await self._forget(owner, "active", [trace_id])
            raise TenantCapReached(
                Cap.QUEUED,
                self.limits.max_queued,
                RETRY_AFTER,
                f"this tenant has {active_cap} traces queued or running across replicas "
                f"(with --tenant-max-running {self.limits.max_running})",
            )
        if not await self._admit("stored", owner, trace_id, now, self.limits.max_stored):
            await self._forget(owner, "active", [trace_id])
            raise TenantCapReached(
                Cap.STORED,
                self.limits.max_stored,
                RETRY_AFTER,
                f"this tenant has {self.limits.max_stored} traces stored, none finished",
            )

    async def withdraw(self, owner: str, trace_id: str) -> None:
        """Uncount a trace that was admitted but not stored after all."""
        await self._forget(owner, "active", [trace_id])
        await self._forget(owner, "stored", [trace_id])

    async def _admit(self, which: str, owner: str, trace_id: str, now: float, cap: int) -> bool:
        key = self.key(owner, which)
        if await _ADMIT.run(self._redis, [key], [cap, trace_id, now]):
            return True
        await self._make_room(which, owner, now)
        return bool(await _ADMIT.run(self._redis, [key], [cap, trace_id, now]))

    async def _make_room(self, which: str, owner: str, now: float) -> None:
        reply = await self._redis.execute("ZRANGE", self.key(owner, which), 0, -1, "WITHSCORES")
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
