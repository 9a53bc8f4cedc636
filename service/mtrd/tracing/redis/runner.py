"""The runner side of a replica in Redis mode: heartbeats, claiming, running, reaping.

:class:`RedisRunner` is one ``IService``. While it runs it

- beats five times a lease, every second by default (:meth:`RedisReplicas.beat`:
  capacity ``max_running``, the traces it runs, ``ready()``), and fences itself: after a
  whole lease without a beat that reached Redis, the other replicas take it for lost and
  fail its traces, so it ends them itself (failed, ``store_unavailable``; the fenced save
  of that end is refused if a reaper got there first);
- claims queued traces of its vantage only while it has room and its pool is ready
  (a non-blocking ``XREADGROUP`` every 100 ms: nothing waits on the shared connections;
  also as soon as this replica's front queued a trace for its vantage, see
  :meth:`RedisRunner.work_queued`; at most ``CLAIM_BATCH`` at a time, the next batch read
  at once), takes what it claimed in one batch (:meth:`RedisTraceStore.take`, which returns the
  trace; a lost race or a cancelled trace is skipped and its entry acknowledged), and
  runs each with the :class:`Tracer`, writing its
  snapshots and events behind (:mod:`mtrd.tracing.redis.writebehind`): every 50 ms, and
  at once at the end (a snapshot and its events in one call);
- stops a trace within a second of a cancel asked for in Redis (field ``cancel``, read
  on every save, and on its own when a trace has had nothing to save for half a second);
- holds each tenant to ``--tenant-max-running`` across replicas (with ``tenants``): before
  it takes a claimed trace it reserves a place in the tenant's running set in Redis
  (:meth:`RedisTenants.reserve_running`); a trace whose tenant is at its cap goes back to
  the end of the queue (released as on shutdown: never lost, never doubled), so the
  traces behind it still run. A replica that keeps meeting only such traces (it sees one
  it put back already) stops claiming for a back-off, doubling from 0.2 s to 1 s, reset
  when it starts a trace. The place is given back when the trace ends or is not taken;
- reaps: lost replicas of its vantage get their running traces failed ``replica_lost``,
  their claims idle for a lease are taken over and started here, and they are forgotten.

While Redis does not take a trace's updates they are held (one snapshot, one change per
hop, the status changes); past ``store_backlog`` seconds the trace ends failed
(``store_unavailable``), written when Redis is back. With the default lease (5 s) and
backlog (30 s) self-fencing comes first when Redis is away altogether; the backlog bounds
a trace whose writes fail while heartbeats get through.

Stopping it (SIGTERM) stops claiming, gives claimed-but-not-started traces back to the
queue at once, lets running traces finish within ``shutdown_grace`` (then cancels them),
writes what is held (for at most a lease more), and removes this replica from Redis. If
some end could not be written, the replica is left for the others' reapers instead.

How ``app.py`` builds it in Redis mode (after ``RedisConnection``, so that it is stopped
before the connection and its last writes get through)::

    runner = RedisRunner(
        reactor, tracer, trace_store, work_queue, replicas,
        replica=replica_id, vantage=config.vantage, max_running=config.max_running,
        ready=lambda: pool.ready_workers() > 0, shutdown_grace=config.shutdown_grace,
        on_finished=metrics.trace_finished,
    )
    runner.setServiceParent(services)   # after the RedisConnection

``trace_store``, ``work_queue`` (for ``config.vantage`` and ``replica_id``) and
``replicas`` share the one ``RedisConnection``; the runner creates the queue's consumer
group itself when it starts.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from mtrd.tracing.model import LiveHop, Trace, TraceError, TraceStatus
from mtrd.tracing.redis.commands import together
from mtrd.tracing.redis.connection import RedisCommandError, RedisUnavailable
from mtrd.tracing.redis.queue import Claim, RedisWorkQueue
from mtrd.tracing.redis.replicas import LEASE, RedisReplicas, ReplicaBeat
from mtrd.tracing.redis.store import RedisTraceStore, StoredTrace
from mtrd.tracing.redis.tenants import RedisTenants
from mtrd.tracing.redis.writebehind import Flushed, TraceWriter
from mtrd.tracing.tracer import Tracer

# Beats and reaping run five times a lease (every second with the 5 s lease): a replica is
# lost after five missed beats, and reaped within a beat of that.
BEATS_PER_LEASE = 5
CLAIM_INTERVAL = 0.1
# The most traces claimed, so started, at once. Each start sends a round of probes at once,
# and every reply reaches every raw socket of the probe workers: a few hundred replies in
# one burst overflow the workers' receive buffers (a whole round lost, the trace then waits
# out its timeout). A full batch is followed by another claim at once.
CLAIM_BATCH = 16
FLUSH_INTERVAL = 0.05
# A running trace with nothing to save is asked about a cancel at least this often.
CANCEL_CHECK = 0.5
# How long a running trace's updates are held while Redis does not take them; past it the
# trace ends failed (``store_unavailable``), written once Redis is back.
STORE_BACKLOG = 30.0
# Claiming pauses this long (doubling up to MAX_BACKOFF) while the queue holds only traces
# whose tenants are at their running cap.
MIN_BACKOFF = 0.2
MAX_BACKOFF = 1.0


class RunnerState(enum.Enum):
    """Where the runner is in its lifecycle."""

    STOPPED = "stopped"
    RUNNING = "running"
    STOPPING = "stopping"


class _Ending(enum.Enum):
    """Why this replica stops a running trace itself."""

    CANCELLED = "cancelled"  # asked for (DELETE), or the shutdown grace ran out
    STORE_UNAVAILABLE = "store_unavailable"  # held past the bound, or fenced
    ABANDONED = "abandoned"  # ended, taken or deleted elsewhere: write nothing more


@attrs.define(eq=False)
class _Job:
    """One trace this replica runs."""

    writer: TraceWriter
    started_at: float
    running: Deferred[Trace] | None = None
    ending: _Ending | None = None
    why: str = ""
    finished: bool = False  # the tracer is done; what is held still has to be written
    flushing: bool = False
    flush_again: bool = False
    done: Deferred[None] = attrs.field(factory=Deferred)

    @property
    def trace_id(self) -> str:
        return self.writer.trace.id


class RedisRunner(Service):
    """Runs the traces queued for this replica's vantage; see the module docstring."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        tracer: Tracer,
        store: RedisTraceStore,
        queue: RedisWorkQueue,
        replicas: RedisReplicas,
        *,
        replica: str,
        vantage: str,
        max_running: int,
        ready: Callable[[], bool],
        lease: float = LEASE,
        shutdown_grace: float = 0.0,
        store_backlog: float = STORE_BACKLOG,
        on_finished: Callable[[Trace], None] = lambda _: None,
        tenants: RedisTenants | None = None,
        probes_waiting: Callable[[], dict[str, int]] = dict,
    ) -> None:
        if max_running < 1:
            raise ValueError("max_running must be at least 1")
        self._clock = clock
        self._tracer = tracer
        self._store = store
        self._queue = queue
        self._replicas = replicas
        self.replica = replica
        self.vantage = vantage
        self.max_running = max_running
        self._ready = ready
        self.lease = lease
        self.shutdown_grace = shutdown_grace
        self.store_backlog = store_backlog
        self._on_finished = on_finished
        self._tenants = tenants
        self._probes_waiting = probes_waiting
        self._probes_published: set[str] = set()  # tenants counted in the last beat
        self._put_back: set[str] = set()  # traces sent back (tenant at cap) since a pause
        self._backoff = 0.0
        self._paused_until = 0.0
        self.put_back = 0  # traces sent back to the queue for a tenant cap, in all
        self.state = RunnerState.STOPPED
        self._jobs: dict[str, _Job] = {}
        self._claimed: dict[str, Claim] = {}  # by entry: claimed, not started yet
        self._group_ready = False
        self._last_beat = 0.0
        self._beat_failing = False
        self._registered = False
        self._loops: dict[str, LoopingCall] = {}
        self._busy: dict[str, Deferred[None]] = {}  # loop name -> its running pass
        self._steps: dict[str, Callable[[], Awaitable[None]]] = {}
        self._claim_soon_call: IDelayedCall | None = None
        self._claim_again = False  # asked for while a claim was under way
        self._leaving: list[tuple[str, str | None]] = []  # ended: (trace id, owner)
        self._leave_call: IDelayedCall | None = None
        self._failing: set[str] = set()  # loops whose last pass met Redis away

    @property
    def running_traces(self) -> int:
        """Traces this replica runs now (until their last write)."""
        return len(self._jobs)

    @property
    def room(self) -> int:
        """How many more traces this replica may start."""
        return self.max_running - len(self._jobs) - len(self._claimed)

    @property
    def registered(self) -> bool:
        """Whether a heartbeat has reached Redis since start and its lease holds: only then
        do the other replicas see this one's vantage as live (and accept traces for it)."""
        return self._registered and not self.fenced

    @property
    def fenced(self) -> bool:
        """Whether no heartbeat has reached Redis for a whole lease (the others take this
        replica for lost): it runs nothing then."""
        return self._clock.seconds() - self._last_beat >= self.lease

    def startService(self) -> None:
        """Beat, claim, write behind and reap, each on its own loop."""
        super().startService()  # type: ignore[no-untyped-call]
        self.state = RunnerState.RUNNING
        self._registered = False
        self._last_beat = self._clock.seconds()
        beat = self.lease / BEATS_PER_LEASE
        self._loops = {}
        self._loop("beat", self._beat, beat)
        self._loop("claim", self._claim, CLAIM_INTERVAL)
        self._loop("flush", self._flush_all, FLUSH_INTERVAL)
        self._loop("reap", self._reap, beat)

    def stopService(self) -> Deferred[None]:
        """Stop claiming, give back what is claimed, drain, and leave; see the module."""
        super().stopService()  # type: ignore[no-untyped-call]
        return Deferred.fromCoroutine(self._stop())

    # -- the loops -------------------------------------------------------------------------

    def work_queued(self, vantage: str) -> None:
        """A trace was just queued for ``vantage`` (by this replica's front): when it is
        this replica's, claim now rather than at the next tick. Traces then start about
        as they come, not a tick's worth at once."""
        if vantage == self.vantage:
            self._claim_soon()

    def _claim_soon(self) -> None:
        if self.state is not RunnerState.RUNNING or "claim" not in self._loops:
            return
        if "claim" in self._busy:
            self._claim_again = True  # when the claim under way is done
        elif self._claim_soon_call is None:
            # At the end of this turn: the traces queued in it are claimed together.
            self._claim_soon_call = self._clock.callLater(0, self._claim_now)

    def _claim_now(self) -> None:
        self._claim_soon_call = None
        if "claim" in self._loops:
            self._pass("claim")

    def _loop(self, name: str, step: Callable[[], Awaitable[None]], interval: float) -> None:
        self._steps[name] = step
        loop = LoopingCall(self._pass, name)
        loop.clock = self._clock
        # Listed before its first pass, which runs now: that pass may ask for another.
        self._loops[name] = loop
        loop.start(interval, now=True).addErrback(
            lambda f: self.log.failure("the {loop} loop stopped", f, loop=name)
        )

    def _pass(self, name: str) -> None:
        if name in self._busy:  # the last pass still waits on Redis
            return
        passing = Deferred.fromCoroutine(self._guarded(name))
        self._busy[name] = passing
        passing.addBoth(self._passed, name)

    async def _guarded(self, name: str) -> None:
        try:
            await self._steps[name]()
        except RedisUnavailable as e:
            # Redis away: said once, not on every pass until it is back.
            if name not in self._failing:
                self.log.warn("Redis runner, {loop} loop: {error}", loop=name, error=e)
            self._failing.add(name)
        except Exception:
            self.log.failure("the Redis runner's {loop} loop failed; it goes on", loop=name)
        else:
            self._failing.discard(name)

    def _passed(self, _: object, name: str) -> None:
        self._busy.pop(name, None)
        if name == "claim" and self._claim_again:
            self._claim_again = False
            self._claim_soon()

    async def _beat(self) -> None:
        beat = ReplicaBeat(
            self.replica, self.vantage, self.max_running, len(self._jobs), self._ready()
        )
        sent = self._clock.seconds()
        try:
            if not self._group_ready:
                # Before the vantage is live: a POST queues only into a queue that exists.
                await self._queue.create()
                self._group_ready = True
            await self._replicas.beat(beat, sent)
            await self._publish_probes(sent)
        except Exception as e:
            if not self._beat_failing:
                self.log.warn("heartbeat did not reach Redis: {error}", error=e)
            self._beat_failing = True
            return
        if self._beat_failing:
            self.log.info("heartbeat reaches Redis again")
        self._beat_failing = False
        self._registered = True
        self._last_beat = sent  # the lease runs from when the beat was sent

    async def _publish_probes(self, now: float) -> None:
        if self._tenants is None:
            return
        waiting = self._probes_waiting()
        gone = self._probes_published - set(waiting)
        await self._tenants.publish_probes(self.replica, waiting, gone, now, self.lease)
        self._probes_published = set(waiting)

    async def _claim(self) -> None:
        if self.state is not RunnerState.RUNNING or self.fenced or not self._ready():
            return
        if not self._group_ready or self.room < 1:
            return
        if self._clock.seconds() < self._paused_until:
            return
        room = min(self.room, CLAIM_BATCH)
        try:
            claims = await self._queue.claim(room)
        except RedisCommandError as e:
            if "NOGROUP" not in str(e):
                raise
            # Redis lost the queue (restarted empty): the next beat makes it again.
            self._group_ready = False
            return
        await self._start_claims(claims)
        if len(claims) == room:
            self._claim_again = True  # more may be waiting

    async def _reap(self) -> None:
        if self.state is not RunnerState.RUNNING:
            return
        now = self._clock.seconds()
        for lost in await self._replicas.lost(self.vantage, now):
            if lost == self.replica:
                continue
            for trace_id in await self._replicas.running(lost):
                if await self._store.fail_lost(trace_id, lost, now):
                    self.log.warn(
                        "trace {id} failed: replica {replica} was lost", id=trace_id, replica=lost
                    )
            await self._replicas.forget(self.vantage, lost)
        if not self._group_ready:
            return
        while self.room > 0 and self._ready() and not self.fenced:
            room = min(self.room, CLAIM_BATCH)  # started at once: see CLAIM_BATCH
            claims = await self._queue.take_over(room, self.lease)
            await self._start_claims(claims)
            if len(claims) < room or self.state is not RunnerState.RUNNING:
                break
        # Gone replicas leave the group; a live one reads every 100 ms, never idle this long.
        await self._queue.forget_idle_consumers(2 * self.lease)

    async def _flush_all(self) -> None:
        now = self._clock.seconds()
        fenced = self.fenced
        for job in list(self._jobs.values()):
            if job.finished:
                continue
            if fenced:
                self._end(
                    job,
                    _Ending.STORE_UNAVAILABLE,
                    f"this replica could not reach Redis for {self.lease:g} s",
                )
            elif job.writer.held_since is not None and now - job.writer.held_since > (
                self.store_backlog
            ):
                self._end(
                    job,
                    _Ending.STORE_UNAVAILABLE,
                    f"Redis did not take the trace's updates for {self.store_backlog:g} s",
                )
        for job in list(self._jobs.values()):
            if not job.finished and now - job.started_at < FLUSH_INTERVAL:
                # Younger than a flush interval: a short trace is then written once, at
                # its end, and a longer one from its second flush tick on.
                continue
            saved = job.writer.last_saved
            quiet = saved is not None and now - saved >= CANCEL_CHECK
            if job.writer.pending or (quiet and not job.finished):
                self._flush(job)

    # -- one trace -------------------------------------------------------------------------

    async def _start_claims(self, claims: list[Claim]) -> None:
        for claim in claims:
            self._claimed[claim.entry] = claim
        if self.state is not RunnerState.RUNNING or not claims:
            return  # stopping: what is claimed goes back to the queue
        try:
            started = await self._start(claims)
        except Exception:
            self.log.failure("could not start {n} claimed traces", n=len(claims))
            # Left claimed in Redis: after a lease they are taken over (here or elsewhere).
            started = True
        if started:
            for claim in claims:
                self._claimed.pop(claim.entry, None)

    async def _start(self, claims: list[Claim]) -> bool:
        """Take and run a batch of claims in three calls, whatever its size; False when
        stopping began before the takes (the claims then go back to the queue)."""
        # In the running set before the takes: a replica that dies in between leaves
        # traces that the reaper fails, never ones that stay queued and taken.
        await self._replicas.started(self.replica, *(claim.trace_id for claim in claims))
        if self.state is not RunnerState.RUNNING:
            return False
        claims, owners = await self._within_tenant_caps(claims)
        if not claims:
            return True

        try:
            taken = await self._store.take_many([c.trace_id for c in claims], self.replica)
        except Exception as e:
            # Left claimed: after a lease they are taken over (here or elsewhere).
            self.log.warn("could not take {n} claimed traces: {error}", n=len(claims), error=e)
            return True
        answered: list[tuple[Claim, StoredTrace | None]] = list(zip(claims, taken, strict=True))
        for _, stored in answered:
            if stored is not None:
                self._run(stored.trace)
        # Whether the take won or not (a cancelled trace, another replica first), the entry
        # leaves the queue; a trace not taken leaves the running set.
        not_taken = [claim.trace_id for claim, stored in answered if stored is None]
        if any(stored is not None for _, stored in answered):
            self._backoff = 0.0
        if not answered:
            return True
        calls = [self._queue.started(*(claim for claim, _ in answered))]
        if not_taken:
            calls.append(self._replicas.finished(self.replica, *not_taken))
            calls.extend(self._ran(owners, not_taken))
        try:
            await together(*calls)
        except RedisUnavailable as e:
            # Taken is what counts: an entry left behind is taken over after a lease, its
            # take then fails and it is acknowledged.
            self.log.warn("{n} claims not acknowledged: {error}", n=len(answered), error=e)
        return True

    async def _within_tenant_caps(self, claims: list[Claim]) -> tuple[list[Claim], dict[str, str]]:
        """The claims whose tenants have a running place (reserved now), with their owners
        by trace id; the others go back to the queue."""
        tenants = self._tenants
        if tenants is None:
            return claims, {}
        # The entry says the owner; one queued by an older replica does not: read the trace.
        unsaid = [claim for claim in claims if not claim.says_owner]
        found = await together(*(self._store.get(claim.trace_id) for claim in unsaid))
        read = {
            claim.trace_id: None if stored is None else stored.trace.owner
            for claim, stored in zip(unsaid, found, strict=True)
        }
        now = self._clock.seconds()
        kept: list[Claim] = []
        capped: list[Claim] = []
        owners: dict[str, str] = {}
        for claim in claims:
            owner = claim.owner if claim.says_owner else read[claim.trace_id]
            if owner is None:
                kept.append(claim)  # no tenant, or gone (the take then fails)
            elif await tenants.reserve_running(owner, claim.trace_id, now):
                owners[claim.trace_id] = owner
                kept.append(claim)
            else:
                capped.append(claim)
        if capped:
            await self._send_back(capped, now)
        return kept, owners

    async def _send_back(self, capped: list[Claim], now: float) -> None:
        ids = [claim.trace_id for claim in capped]
        await self._replicas.finished(self.replica, *ids)
        # Released as on shutdown: a new entry at the end, the old one gone, in one step.
        await self._queue.release(capped)
        self.put_back += len(capped)
        if self._put_back.intersection(ids):
            # Round the queue once with nothing to start: wait before the next read.
            self._backoff = min(MAX_BACKOFF, max(MIN_BACKOFF, 2 * self._backoff))
            self._paused_until = now + self._backoff
            self._put_back.clear()
        self._put_back.update(ids)

    def _ran(self, owners: dict[str, str], trace_ids: list[str]) -> list[Coroutine[Any, Any, None]]:
        tenants = self._tenants
        if tenants is None:
            return []
        by_owner: dict[str, list[str]] = {}
        for trace_id in trace_ids:
            if trace_id in owners:
                by_owner.setdefault(owners[trace_id], []).append(trace_id)
        return [tenants.ran(owner, *ids) for owner, ids in by_owner.items()]

    def _run(self, queued: Trace) -> None:
        writer = TraceWriter(queued, self._store, self.replica)
        job = _Job(writer, self._clock.seconds())
        self._jobs[queued.id] = job

        def updated(trace: Trace) -> None:
            # Held until the next flush (every FLUSH_INTERVAL), the start included: a short
            # trace then often reaches Redis in one write, its end (written at once).
            writer.update(trace)

        job.running = self._tracer.trace(
            queued.request, queued=queued, on_update=updated, on_live_hop=partial(self._hop, job)
        )
        job.running.addErrback(self._crashed, job)
        job.running.addCallback(self._ended, job)

    def _hop(self, job: _Job, hop: LiveHop) -> None:
        job.writer.hop(hop)
        if job.finished and job.ending is not _Ending.ABANDONED:
            # A name after the end: written at once, even once the job is forgotten
            # (the end is in Redis), into the final snapshot.
            self._flush(job)

    def _crashed(self, failure: Failure, job: _Job) -> Trace:
        self.log.failure("trace {id} crashed", failure, id=job.trace_id)
        return self._tracer.crashed(job.writer.trace, str(failure.value))

    def _ended(self, trace: Trace, job: _Job) -> None:
        job.finished = True
        if job.ending is _Ending.ABANDONED:
            self._forget(job)
            return
        if job.ending is _Ending.STORE_UNAVAILABLE:
            trace = attrs.evolve(
                trace,
                status=TraceStatus.FAILED,
                error=TraceError("store_unavailable", job.why),
            )
        final = attrs.evolve(trace, expires_at=self._store.expires_at())
        job.writer.finish(final)
        self._on_finished(final)
        self._flush(job)

    def _end(self, job: _Job, ending: _Ending, why: str = "") -> None:
        """Stop a running trace for ``ending`` (the first reason given wins)."""
        if job.ending is None:
            job.ending, job.why = ending, why
        if job.running is not None and not job.finished:
            job.running.cancel()

    def _flush(self, job: _Job) -> None:
        if job.flushing:
            job.flush_again = True
            return
        job.flushing = True
        Deferred.fromCoroutine(self._write(job))

    async def _write(self, job: _Job) -> None:
        try:
            while True:
                job.flush_again = False
                outcome = await self._flush_once(job)
                if outcome is None or not job.flush_again:
                    break
        finally:
            job.flushing = False
        if job.finished and job.trace_id in self._jobs and not job.writer.pending:
            self._forget(job)

    async def _flush_once(self, job: _Job) -> Flushed | None:
        writer = job.writer
        now = self._clock.seconds()
        try:
            if writer.pending or job.finished:
                outcome = await writer.flush(now)
            else:
                outcome = await self._check_cancel(job, now)
        except Exception as e:
            if writer.held_since is None:
                writer.held_since = now
                self.log.warn(
                    "trace {id}: Redis did not take its updates ({error}); holding them",
                    id=job.trace_id,
                    error=e,
                )
            return None
        writer.held_since = None
        if outcome is Flushed.CANCEL:
            self._end(job, _Ending.CANCELLED)
        elif outcome in (Flushed.NOT_RUNNING, Flushed.GONE):
            self._abandon(job)
        return outcome

    async def _check_cancel(self, job: _Job, now: float) -> Flushed:
        # Nothing to save for a while (resolving, a slow round): ask about a cancel alone.
        job.writer.last_saved = now
        if await self._store.cancel_requested(job.trace_id):
            return Flushed.CANCEL
        return Flushed.WRITTEN

    def _abandon(self, job: _Job) -> None:
        job.ending = _Ending.ABANDONED
        if job.finished:
            self._forget(job)
        else:
            self._end(job, _Ending.ABANDONED)

    def _forget(self, job: _Job) -> None:
        if self._jobs.pop(job.trace_id, None) is None:
            return
        # The traces that end in one reactor turn leave the running set in one call. Its
        # end is in Redis already: a reaper that still finds the trace there leaves it be.
        self._leaving.append((job.trace_id, job.writer.trace.owner))
        if self._leave_call is None:
            self._leave_call = self._clock.callLater(0, self._leave)
        if not job.done.called:
            job.done.callback(None)

    def _leave(self) -> Deferred[None]:
        if self._leave_call is not None and self._leave_call.active():
            self._leave_call.cancel()
        self._leave_call = None
        leaving, self._leaving = self._leaving, []
        return Deferred.fromCoroutine(self._finished_in_redis(leaving))

    async def _finished_in_redis(self, leaving: list[tuple[str, str | None]]) -> None:
        if not leaving:
            return
        ids = [trace_id for trace_id, _ in leaving]
        owners = {trace_id: owner for trace_id, owner in leaving if owner is not None}
        try:
            await together(
                self._replicas.finished(self.replica, *ids), *self._ran(owners, list(owners))
            )
        except Exception as e:
            # The reaper of another replica deals with them once this one is gone.
            self.log.warn(
                "{n} traces could not leave the running set: {error}", n=len(ids), error=e
            )

    # -- stopping --------------------------------------------------------------------------

    async def _stop(self) -> None:
        if self.state is not RunnerState.RUNNING:
            return
        self.state = RunnerState.STOPPING
        claiming = [self._busy[name] for name in ("claim", "reap") if name in self._busy]
        for name in ("claim", "reap"):
            self._loops.pop(name).stop()
        if self._claim_soon_call is not None:
            self._claim_soon_call.cancel()
            self._claim_soon_call = None
        if claiming:
            await DeferredList(claiming)
        await self._release()
        await self._drain()
        for loop in self._loops.values():  # beat and flush: until the last write
            loop.stop()
        self._loops = {}
        await self._leave()
        clean = not self._jobs
        if clean:
            try:
                await self._replicas.forget(self.vantage, self.replica)
            except Exception as e:
                self.log.warn("could not remove this replica from Redis: {error}", error=e)
        self.state = RunnerState.STOPPED

    async def _release(self) -> None:
        claims = list(self._claimed.values())
        self._claimed.clear()
        if not claims:
            return
        try:
            await self._queue.release(claims)
        except Exception as e:
            # Taken over by another replica once idle for a lease.
            self.log.warn("could not give {n} claimed traces back: {error}", n=len(claims), error=e)

    async def _drain(self) -> None:
        if not self._jobs:
            return
        timer: IDelayedCall = self._clock.callLater(self.shutdown_grace, self._cancel_all)
        # The final writes get a lease more; what is still held after that is given up (the
        # replica is not forgotten then, so the others' reapers end those traces).
        give_up = self._clock.callLater(self.shutdown_grace + self.lease, self._give_up)
        await DeferredList([job.done for job in list(self._jobs.values())])
        for call in (timer, give_up):
            if call.active():
                call.cancel()

    def _cancel_all(self) -> None:
        for job in list(self._jobs.values()):
            self._end(job, _Ending.CANCELLED)

    def _give_up(self) -> None:
        for job in list(self._jobs.values()):
            if not job.done.called:
                job.done.callback(None)
