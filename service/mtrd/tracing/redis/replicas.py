"""Replica heartbeats: who is alive at which vantage, for ``GET /vantage-points`` and leases.

Each replica beats every second or so: its hash ``P:replica:{R}`` (vantage, capacity,
running, ready) expires with the lease, and its lease deadline is its score in
``P:vantage:{V}:replicas``; ``P:vantages`` scores each vantage by its latest deadline.
``P:replica:{R}:running`` (the traces it runs) does not expire: the reaper needs it once
the replica is gone. A replica whose deadline has passed is lost: readers leave it out,
and the reaper (second round) fails its running traces with ``replica_lost``
(``RedisTraceStore.fail_lost``) and then :meth:`RedisReplicas.forget` s it.
Time is passed in (``now``, epoch seconds from the injected clock).
"""

from __future__ import annotations

from typing import Any, Final

import attrs

from mtrd.tracing.redis.commands import RedisCommands, as_text
from mtrd.tracing.redis.connection import Command

LEASE: Final = 5.0


@attrs.frozen
class ReplicaBeat:
    """What one replica says about itself in a heartbeat."""

    replica: str
    vantage: str
    capacity: int  # traces it may run at once (--max-running)
    running: int
    ready: bool


@attrs.frozen
class VantagePoint:
    """A vantage with live replicas: how many, their summed capacity, and whether any is ready."""

    name: str
    replicas: int
    capacity: int
    running: int
    ready: bool


class RedisReplicas:
    """Heartbeats and the live vantages they make; see the module docstring."""

    def __init__(self, redis: RedisCommands, *, prefix: str = "mtrd", lease: float = LEASE):
        self._redis = redis
        self._prefix = prefix
        self.lease = lease

    def _replica_key(self, replica: str) -> str:
        return f"{self._prefix}:replica:{{{replica}}}"

    def _members_key(self, vantage: str) -> str:
        return f"{self._prefix}:vantage:{{{vantage}}}:replicas"

    @property
    def _vantages_key(self) -> str:
        return f"{self._prefix}:vantages"

    async def beat(self, beat: ReplicaBeat, now: float) -> None:
        """Renew this replica's lease until ``now + lease``."""
        deadline = round((now + self.lease) * 1000)
        key = self._replica_key(beat.replica)
        await self._redis.pipeline(
            [
                ("HSET", key, "vantage", beat.vantage, "capacity", beat.capacity,
                 "running", beat.running, "ready", int(beat.ready)),
                ("PEXPIRE", key, round(self.lease * 1000)),
                ("ZADD", self._members_key(beat.vantage), deadline, beat.replica),
                ("ZADD", self._vantages_key, "GT", deadline, beat.vantage),
            ]
        )  # fmt: skip

    async def vantage_points(self, now: float) -> list[VantagePoint]:
        """Every vantage with a live replica, by name."""
        at = round(now * 1000)
        names = await self._redis.execute("ZRANGEBYSCORE", self._vantages_key, f"({at}", "+inf")
        points = []
        for name in sorted(as_text(n) for n in names):
            live = await self.live(name, now)
            if not live:
                continue
            beats = await self._redis.pipeline(
                [("HMGET", self._replica_key(r), "capacity", "running", "ready") for r in live]
            )
            known = [b for b in beats if b[0] is not None]
            if not known:
                continue
            points.append(
                VantagePoint(
                    name=name,
                    replicas=len(known),
                    capacity=sum(int(b[0]) for b in known),
                    running=sum(int(b[1]) for b in known),
                    ready=any(as_text(b[2]) == "1" for b in known),
                )
            )
        return points

    async def live(self, vantage: str, now: float) -> list[str]:
        """The replicas of ``vantage`` whose lease has not lapsed."""
        return live_replicas(await self._redis.execute(*self.live_command(vantage, now)))

    def live_command(self, vantage: str, now: float) -> Command:
        """The command behind :meth:`live`, to send in a pipeline; read its reply with
        :func:`live_replicas`."""
        return ("ZRANGEBYSCORE", self._members_key(vantage), f"({round(now * 1000)}", "+inf")

    async def lost(self, vantage: str, now: float) -> list[str]:
        """The replicas of ``vantage`` whose lease lapsed and who are not forgotten yet."""
        at = round(now * 1000)
        members = await self._redis.execute("ZRANGEBYSCORE", self._members_key(vantage), "-inf", at)
        return [as_text(m) for m in members]

    async def started(self, replica: str, *trace_ids: str) -> None:
        """``replica`` started the traces: the reaper fails them if the replica is lost."""
        await self._redis.execute("SADD", self._running_key(replica), *trace_ids)

    async def finished(self, replica: str, *trace_ids: str) -> None:
        """The trace no longer runs on ``replica``."""
        await self._redis.execute("SREM", self._running_key(replica), *trace_ids)

    async def running(self, replica: str) -> list[str]:
        """The traces ``replica`` started and has not finished, by id."""
        members = await self._redis.execute("SMEMBERS", self._running_key(replica))
        return sorted(as_text(m) for m in members)

    async def forget(self, vantage: str, replica: str) -> None:
        """Remove a replica (it stopped, or it was lost and its traces are dealt with)."""
        await self._redis.execute("DEL", self._replica_key(replica), self._running_key(replica))
        await self._redis.execute("ZREM", self._members_key(vantage), replica)

    def _running_key(self, replica: str) -> str:
        return f"{self._replica_key(replica)}:running"


def live_replicas(reply: list[Any]) -> list[str]:
    """The replicas in a reply to :meth:`RedisReplicas.live_command`."""
    return [as_text(member) for member in reply]
