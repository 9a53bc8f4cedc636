"""RedisRunner's loops on a Clock, over fakes of the store, queue and heartbeats: claiming
with room, fencing, cancel checks, the write-behind bound, failing loops, draining."""

from __future__ import annotations

from typing import Any

import attrs
from mtrd.tracing.model import Trace, TraceRequest, TraceStatus
from mtrd.tracing.redis.connection import RedisUnavailable
from mtrd.tracing.redis.queue import Claim
from mtrd.tracing.redis.replicas import ReplicaBeat
from mtrd.tracing.redis.runner import RedisRunner, RunnerState
from mtrd.tracing.redis.store import NotRunning, Saved, StoredTrace
from mtrd.tracing.tracer import Tracer
from twisted.internet.task import Clock

from tests.fakes import FakeNetwork
from tests.test_jobs import ROUTERS, StaticResolver

LONG = TraceRequest("203.0.113.7", probes=100, interval=1.0, max_ttl=8)


class FakeStore:
    """Traces by id, the runner of each, and what was written; ``away`` fails every call."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.traces: dict[str, Trace] = {}
        self.runners: dict[str, str] = {}
        self.cancel: set[str] = set()
        self.events: list[tuple[str, str, int]] = []
        self.away = False

    def _check(self) -> None:
        if self.away:
            raise RedisUnavailable("Redis is not connected")

    async def take(self, trace_id: str, replica: str) -> StoredTrace | None:
        self._check()
        if self.traces[trace_id].status is not TraceStatus.QUEUED or trace_id in self.runners:
            return None
        self.runners[trace_id] = replica
        return await self.get(trace_id)

    async def take_many(self, trace_ids: list[str], replica: str) -> list[StoredTrace | None]:
        return [await self.take(trace_id, replica) for trace_id in trace_ids]

    async def get(self, trace_id: str) -> StoredTrace | None:
        self._check()
        trace = self.traces.get(trace_id)
        return None if trace is None else StoredTrace(trace, 1, "fra", self.runners[trace_id])

    async def save_running(self, trace: Trace, runner: str) -> Saved | None:
        self._check()
        if self.runners.get(trace.id) != runner or self.traces[trace.id].status.is_final:
            raise NotRunning(trace.id)
        self.traces[trace.id] = trace
        return Saved(1, cancel=trace.id in self.cancel)

    async def write_running(
        self, trace: Trace, runner: str, events: list[tuple[int, str, Any]]
    ) -> Saved | None:
        saved = await self.save_running(trace, runner)
        if saved is not None and events:
            await self.append_events(trace.id, events)
        return saved

    async def append_events(self, trace_id: str, events: list[tuple[int, str, Any]]) -> int:
        self._check()
        self.events += [(trace_id, kind, event_id) for event_id, kind, _ in events]
        return len(events)

    async def cancel_requested(self, trace_id: str) -> bool:
        self._check()
        return trace_id in self.cancel

    def expires_at(self) -> float:
        return self.clock.seconds() + 3600


class FakeQueue:
    """Queued claims, and the room of every claim asked for."""

    def __init__(self) -> None:
        self.entries: list[Claim] = []
        self.rooms: list[int] = []
        self.released: list[Claim] = []

    async def create(self) -> None:
        pass

    async def claim(self, room: int) -> list[Claim]:
        self.rooms.append(room)
        taken, self.entries = self.entries[:room], self.entries[room:]
        return taken

    async def started(self, *claims: Claim) -> None:
        pass

    async def release(self, claims: list[Claim]) -> int:
        self.released += claims
        return len(claims)

    async def take_over(self, room: int, idle_seconds: float) -> list[Claim]:
        return []

    async def forget_idle_consumers(self, idle_seconds: float) -> int:
        return 0


class FakeReplicas:
    """Heartbeats received; ``away`` refuses them; ``lost`` can be made to fail."""

    def __init__(self) -> None:
        self.beats: list[ReplicaBeat] = []
        self.away = False
        self.lost_calls = 0
        self.lost_fails = False
        self.forgotten: list[str] = []
        self.finished_calls: list[list[str]] = []

    async def beat(self, beat: ReplicaBeat, now: float) -> None:
        if self.away:
            raise RedisUnavailable("Redis is not connected")
        self.beats.append(beat)

    async def lost(self, vantage: str, now: float) -> list[str]:
        self.lost_calls += 1
        if self.lost_fails:
            raise ValueError("a bug in the reaper")
        return []

    async def started(self, replica: str, *trace_ids: str) -> None:
        pass

    async def finished(self, replica: str, *trace_ids: str) -> None:
        self.finished_calls.append(sorted(trace_ids))

    async def running(self, replica: str) -> list[str]:
        return []

    async def forget(self, vantage: str, replica: str) -> None:
        self.forgotten.append(replica)


@attrs.define
class Setup:
    runner: RedisRunner
    clock: Clock
    store: FakeStore
    queue: FakeQueue
    replicas: FakeReplicas

    def submit(self, request: TraceRequest = LONG, resolver: Any = None) -> str:
        trace = Tracer(self.clock, FakeNetwork(self.clock, ROUTERS), StaticResolver()).new(request)
        self.store.traces[trace.id] = trace
        self.queue.entries.append(Claim(f"0-{len(self.store.traces)}", trace.id))
        return trace.id

    def pump(self, seconds: float, step: float = 0.05) -> None:
        self.clock.pump([step] * round(seconds / step))


def setup(*, max_running: int = 2, resolver: Any = None, **kwargs: Any) -> Setup:
    clock = Clock()
    tracer = Tracer(clock, FakeNetwork(clock, ROUTERS), resolver or StaticResolver())  # type: ignore[arg-type]
    store, queue, replicas = FakeStore(clock), FakeQueue(), FakeReplicas()
    runner = RedisRunner(
        clock,
        tracer,
        store,  # type: ignore[arg-type]
        queue,  # type: ignore[arg-type]
        replicas,  # type: ignore[arg-type]
        replica="r1",
        vantage="fra",
        max_running=max_running,
        ready=lambda: True,
        **kwargs,
    )
    return Setup(runner, clock, store, queue, replicas)


def test_claims_only_as_many_as_there_is_room_for() -> None:
    """With two slots and three queued traces, two start and no claim is made without room."""
    s = setup(max_running=2)
    ids = [s.submit() for _ in range(3)]
    s.runner.startService()
    s.pump(1.0)
    assert s.queue.rooms == [2]
    assert [s.store.traces[i].status for i in ids] == [
        TraceStatus.RUNNING, TraceStatus.RUNNING, TraceStatus.QUEUED
    ]  # fmt: skip
    assert s.replicas.beats[-1].running == 2


def test_a_trace_queued_here_is_claimed_at_once_not_at_the_next_tick() -> None:
    """Told that a trace was queued for its vantage, the runner claims within the turn's
    end, not 100 ms later at its claim tick."""
    s = setup()
    s.runner.startService()
    assert s.queue.rooms == [2]  # the first tick's claim: nothing queued yet
    s.clock.advance(0.01)
    s.submit()
    s.runner.work_queued("fra")
    assert s.runner.running_traces == 0  # claimed at the end of the turn, with others
    s.clock.advance(0)
    assert s.runner.running_traces == 1
    assert s.queue.rooms == [2, 2]


def test_a_trace_queued_for_another_vantage_waits_for_the_tick() -> None:
    """A trace queued for some other vantage is not this runner's to claim at once."""
    s = setup()
    s.runner.startService()
    s.submit()
    s.runner.work_queued("nyc")
    s.clock.advance(0)
    assert s.runner.running_traces == 0


def test_claimed_traces_start_a_batch_at_a_time() -> None:
    """Forty queued traces with room for all: claimed and started 16 in one pass, then 16
    and 8 right after, not at the next tick (a burst of starts overflows the probe
    workers' sockets)."""
    s = setup(max_running=40)
    for _ in range(40):
        s.submit()
    s.runner.startService()
    assert (s.queue.rooms, s.runner.running_traces) == ([16], 16)
    s.clock.advance(0)
    assert (s.queue.rooms, s.runner.running_traces) == ([16, 16, 8], 40)


def test_a_trace_younger_than_a_flush_interval_is_not_written_yet() -> None:
    """The start waits for the flush ticks: nothing of a trace 40 ms old is in Redis, and
    it is written once it is older than an interval."""
    s = setup()
    trace_id = s.submit()
    s.runner.startService()
    s.clock.advance(0)
    s.clock.advance(0.04)
    assert s.store.traces[trace_id].status is TraceStatus.QUEUED
    assert s.store.events == []
    s.pump(0.1, step=0.05)
    assert s.store.traces[trace_id].status is TraceStatus.RUNNING
    assert s.store.events[0][1:] == ("status", 2)


def test_without_a_heartbeat_for_a_lease_its_traces_end_and_it_claims_nothing() -> None:
    """Self-fencing: a lease without a beat fails the running traces (store_unavailable)
    and stops claiming."""
    s = setup(lease=5.0)
    trace_id = s.submit()
    s.replicas.away = True
    s.runner.startService()
    s.pump(4.9)
    assert s.store.traces[trace_id].status is TraceStatus.RUNNING
    s.pump(0.3)
    claims = len(s.queue.rooms)
    final = s.store.traces[trace_id]
    assert final.status is TraceStatus.FAILED
    assert final.error is not None
    assert final.error.type == "store_unavailable"
    assert s.store.events[-1][1] == "done"
    s.submit()
    s.pump(1.0)
    assert len(s.queue.rooms) == claims


def test_a_cancel_is_seen_even_when_the_trace_has_nothing_to_save() -> None:
    """A trace stuck resolving is still cancelled within a second of the flag."""
    s = setup(resolver=StaticResolver(pending=True))
    trace_id = s.submit()
    s.runner.startService()
    s.pump(2.0)
    s.store.cancel.add(trace_id)
    s.pump(1.0)
    assert s.store.traces[trace_id].status is TraceStatus.CANCELLED
    assert s.runner.running_traces == 0


def test_past_the_backlog_bound_the_trace_fails_and_is_written_when_redis_is_back() -> None:
    """Updates held past store_backlog end the trace failed (store_unavailable), written
    once Redis takes writes again."""
    s = setup(lease=60.0, store_backlog=2.0)
    trace_id = s.submit()
    s.runner.startService()
    s.pump(0.5)
    s.store.away = True
    s.pump(2.5)
    assert s.store.traces[trace_id].status is TraceStatus.RUNNING  # nothing written
    assert s.runner.running_traces == 1
    s.store.away = False
    s.pump(0.2)
    final = s.store.traces[trace_id]
    assert final.status is TraceStatus.FAILED
    assert final.error is not None
    assert final.error.type == "store_unavailable"
    assert s.store.events[-1][1] == "done"
    assert s.runner.running_traces == 0


def test_a_loop_that_fails_goes_on() -> None:
    """A reaper pass that raises is logged and the next pass runs."""
    s = setup()
    s.replicas.lost_fails = True
    s.runner.startService()
    s.pump(2.5)
    assert s.replicas.lost_calls >= 2


def test_stopping_gives_running_traces_the_grace_then_cancels_them() -> None:
    """On stop a running trace gets shutdown_grace, is then cancelled and written, and the
    replica leaves Redis."""
    s = setup(shutdown_grace=3.0)
    trace_id = s.submit()
    s.runner.startService()
    s.pump(0.5)
    stopped = s.runner.stopService()
    s.pump(2.5)
    assert not stopped.called
    assert s.store.traces[trace_id].status is TraceStatus.RUNNING
    s.pump(1.0)
    assert stopped.called
    assert s.store.traces[trace_id].status is TraceStatus.CANCELLED
    assert s.replicas.forgotten == ["r1"]
    assert s.runner.state is RunnerState.STOPPED


def test_traces_that_end_in_one_turn_leave_the_running_set_in_one_call() -> None:
    """Two traces cancelled at the same flush tick end together: one call takes both out
    of this replica's running set, after their final writes."""
    s = setup()
    ids = [s.submit() for _ in range(2)]
    s.runner.startService()
    s.pump(0.2)
    s.store.cancel.update(ids)
    s.pump(0.6)
    assert [s.store.traces[i].status for i in ids] == [TraceStatus.CANCELLED] * 2
    assert s.replicas.finished_calls == [sorted(ids)]


def test_a_stopped_runner_starts_again() -> None:
    """Start, stop and start again: the second run claims and runs traces as the first."""
    s = setup()
    s.runner.startService()
    s.pump(0.5)
    stopped = s.runner.stopService()
    assert stopped.called
    trace_id = s.submit()
    s.runner.startService()
    s.pump(0.5)
    assert s.store.traces[trace_id].status is TraceStatus.RUNNING
    assert s.runner.state is RunnerState.RUNNING


def test_a_replica_is_registered_only_once_a_heartbeat_reached_redis() -> None:
    """Readiness waits for the first heartbeat that Redis took: before it, the others do
    not see this replica's vantage as live; a lease without one unregisters it again."""
    s = setup(lease=5.0)
    s.replicas.away = True
    s.runner.startService()
    s.pump(2.0)
    assert not s.runner.registered
    s.replicas.away = False
    s.pump(1.5)
    assert s.runner.registered
    s.replicas.away = True
    s.pump(5.5)
    assert not s.runner.registered
