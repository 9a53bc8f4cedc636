"""Trace jobs: the store, the running cap and its queue, cancel and delete."""

from __future__ import annotations

import gc
import weakref
from typing import Any

from mtrd.tracing.events import Event
from mtrd.tracing.jobs import Deletion, TraceJobs
from mtrd.tracing.model import TraceRequest, TraceStatus
from mtrd.tracing.resolution import Resolved
from mtrd.tracing.store import StoreLimits, TraceStore
from mtrd.tracing.tracer import Tracer
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from tests.fakes import FakeNetwork

ROUTERS = ["198.51.100.1", "198.51.100.6", "198.51.100.17"]


class StaticResolver:
    """Resolves every name to one address, or fails."""

    def __init__(self, address: str = "203.0.113.7", pending: bool = False) -> None:
        self.address = address
        self.pending: Deferred[Resolved] | None = Deferred() if pending else None

    def resolve(self, target: str, ip_version: int | None) -> Deferred[Resolved]:
        if self.pending is not None:
            return self.pending
        return succeed(Resolved(self.address, 4))


def make_jobs(
    *, max_running: int = 4, max_traces: int = 100, rtt: float = 0.01, resolver: Any = None
) -> tuple[TraceJobs, TraceStore, Clock, FakeNetwork]:
    clock = Clock()
    network = FakeNetwork(clock, ROUTERS, rtt=rtt)
    tracer = Tracer(clock, network, resolver or StaticResolver())  # type: ignore[arg-type]
    store = TraceStore(clock, StoreLimits(max_traces=max_traces))
    return TraceJobs(tracer, store, max_running=max_running), store, clock, network


REQUEST = TraceRequest("203.0.113.7", probes=2, interval=0.5, max_ttl=8)


def test_submitted_trace_runs_to_completion_in_the_store() -> None:
    """A submitted trace is running at once and completed in the store later."""
    jobs, store, clock, _ = make_jobs()
    record = jobs.submit(REQUEST)
    assert record.trace.status is TraceStatus.RUNNING
    assert record.trace.target.address == "203.0.113.7"
    clock.pump([0.05] * 60)
    final = store.get(record.trace.id)
    assert final is not None
    assert final.trace.status is TraceStatus.COMPLETED
    assert final.trace.destination_reached
    assert final.trace.expires_at == final.trace.finished_at + 3600  # type: ignore[operator]
    assert jobs.running_traces == 0


def test_beyond_the_running_cap_traces_wait_queued() -> None:
    """Past max_running, traces are queued and start as running ones end."""
    jobs, _, clock, _ = make_jobs(max_running=1)
    first = jobs.submit(REQUEST)
    second = jobs.submit(REQUEST)
    assert (first.trace.status, second.trace.status) == (TraceStatus.RUNNING, TraceStatus.QUEUED)
    assert (jobs.running_traces, jobs.queued) == (1, 1)
    clock.pump([0.05] * 22)
    assert first.trace.status is TraceStatus.COMPLETED
    assert second.trace.status is TraceStatus.RUNNING
    clock.pump([0.05] * 60)
    assert second.trace.status is TraceStatus.COMPLETED


def test_events_follow_the_trace_to_done() -> None:
    """A subscriber sees running, hop updates, completed and done, in id order."""
    jobs, _, clock, _ = make_jobs()
    record = jobs.submit(REQUEST)
    seen: list[Event] = []
    record.channel.subscribe(seen.append)
    clock.pump([0.05] * 60)
    kinds = [e.kind for e in seen]
    assert kinds[0] == "status"
    assert "hop" in kinds
    assert kinds[-2:] == ["status", "done"]
    assert seen[-2].value is TraceStatus.COMPLETED
    assert [e.id for e in seen] == sorted(e.id for e in seen)


def test_delete_cancels_a_running_trace() -> None:
    """DELETE on a running trace ends it as cancelled and keeps it."""
    jobs, store, clock, network = make_jobs(rtt=0.3)
    record = jobs.submit(REQUEST)
    clock.advance(0.1)
    assert jobs.delete(record.trace.id) is Deletion.CANCELLED
    assert record.trace.status is TraceStatus.CANCELLED
    sent = len(network.sent)
    clock.advance(5)
    assert len(network.sent) == sent
    assert store.get(record.trace.id) is not None


def test_delete_cancels_a_queued_trace_that_never_starts() -> None:
    """A queued trace that is deleted is cancelled and never probes."""
    jobs, _, clock, network = make_jobs(max_running=1)
    jobs.submit(REQUEST)
    queued = jobs.submit(REQUEST)
    assert jobs.delete(queued.trace.id) is Deletion.CANCELLED
    assert queued.trace.status is TraceStatus.CANCELLED
    clock.pump([0.05] * 100)
    assert all(p.target == "203.0.113.7" for p in network.sent)
    assert jobs.queued == 0


def test_delete_removes_a_finished_trace() -> None:
    """DELETE on a finished trace removes it from the store."""
    jobs, store, clock, _ = make_jobs()
    record = jobs.submit(REQUEST)
    clock.pump([0.05] * 60)
    assert jobs.delete(record.trace.id) is Deletion.REMOVED
    assert store.get(record.trace.id) is None
    assert jobs.delete(record.trace.id) is None


def test_a_removed_trace_is_freed_without_a_collection() -> None:
    """Nothing of a finished trace holds itself: once the store lets it go, reference
    counting frees it (a cycle would wait for a full collection, holding memory)."""
    jobs, _, clock, _ = make_jobs()
    gc.collect()
    gc.disable()
    try:
        record = jobs.submit(REQUEST)
        clock.pump([0.05] * 60)
        trace_id, gone = record.trace.id, weakref.ref(record)
        channel = record.channel
        del record
        assert jobs.delete(trace_id) is Deletion.REMOVED
        assert gone() is None
        # A subscriber who held on to the channel still gets the final trace.
        (done,) = channel.replay(None)
        assert done.kind == "done"
        assert done.value.id == trace_id  # type: ignore[union-attr]
    finally:
        gc.enable()


def test_cancel_during_dns_resolution() -> None:
    """A trace cancelled while its name resolves ends cancelled, without probing."""
    resolver = StaticResolver(pending=True)
    jobs, _, _, network = make_jobs(resolver=resolver)
    record = jobs.submit(TraceRequest("example.test"))
    assert jobs.delete(record.trace.id) is Deletion.CANCELLED
    assert record.trace.status is TraceStatus.CANCELLED
    assert network.sent == []


def test_drain_cancels_queued_at_once_and_running_after_the_grace() -> None:
    """Draining cancels waiting traces, lets running ones finish within the grace, then cancels."""
    jobs, _, clock, _ = make_jobs(max_running=1)
    long = TraceRequest("203.0.113.7", probes=50, interval=1.0)
    running = jobs.submit(long)
    queued = jobs.submit(long)
    drained = Deferred.fromCoroutine(jobs.drain(clock, grace=3.0))
    assert queued.trace.status is TraceStatus.CANCELLED
    clock.advance(2.9)
    assert running.trace.status is TraceStatus.RUNNING
    assert not drained.called
    clock.advance(0.2)
    assert running.trace.status is TraceStatus.CANCELLED
    assert drained.called


def test_drain_returns_when_running_traces_finish_within_the_grace() -> None:
    """A trace that finishes inside the grace ends completed, and draining ends with it."""
    jobs, _, clock, _ = make_jobs()
    record = jobs.submit(REQUEST)
    drained = Deferred.fromCoroutine(jobs.drain(clock, grace=30.0))
    clock.pump([0.05] * 60)
    assert record.trace.status is TraceStatus.COMPLETED
    assert drained.called


def test_stopping_the_service_drains_with_its_grace() -> None:
    """stopService cancels running traces once the configured grace is over."""
    clock = Clock()
    tracer = Tracer(clock, FakeNetwork(clock, ROUTERS), StaticResolver())  # type: ignore[arg-type]
    jobs = TraceJobs(tracer, TraceStore(clock), clock=clock, stop_grace=3.0)
    jobs.startService()
    record = jobs.submit(TraceRequest("203.0.113.7", probes=50, interval=1.0))
    stopped = jobs.stopService()
    clock.advance(2.9)
    assert not stopped.called
    clock.advance(0.2)
    assert record.trace.status is TraceStatus.CANCELLED
    assert stopped.called
    assert not jobs.running


def test_the_service_runs_traces_again_after_a_stop_and_a_start() -> None:
    """start, stop and start again: a trace submitted after the restart completes."""
    jobs, store, clock, _ = make_jobs()
    jobs.startService()
    assert jobs.stopService().called
    jobs.startService()
    record = jobs.submit(REQUEST)
    clock.pump([0.05] * 60)
    final = store.get(record.trace.id)
    assert final is not None
    assert final.trace.status is TraceStatus.COMPLETED
