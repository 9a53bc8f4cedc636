"""The probe pool: N supervised mtr-packet processes shared by every caller.

``await pool.probe(request)`` sends one probe and gives its
:class:`~mtrd.engine.probe.ProbeReply`; ``pool.send(ticket)`` does the same without a
Deferred, for callers with many probes out (see :mod:`mtrd.engine.ticket`). The pool
queues probes beyond the
processes' caps (taking turns between flows, see :mod:`mtrd.engine.fairqueue`, and
holding each group of flows to ``max_group_share`` of the slots), sends each to the
least-loaded ready process, restarts a
process that dies with exponential back-off on the injected clock, reports
readiness, and stops cleanly.

The pool is a Twisted ``IService`` (as ``twisted.runner.procmon.ProcessMonitor`` is):
``startService`` spawns the processes, ``stopService`` drains and stops them, and it
can be started again after. ``await pool.start()`` / ``await pool.stop()`` do the same
for code that runs the pool on its own.

How it keeps every reply with the probe that caused it -- across processes,
with icmp, udp and tcp in flight at once, and within a process after its
sequence counter would wrap -- is explained in :mod:`mtrd.engine.sequence`: each
slot counts sequence numbers in its own band, a process is retired and
replaced before it leaves its band, and a ledger of held sequences and fixed
udp ports keeps every outstanding probe's numbers unique.

A process nearing the end of its band gets its successor early: the new process is
spawned while the old one still takes probes, and takes over only once it answered
its version check. Retirement therefore never leaves a slot without a ready process
(unless the successor could not start in time), so processes of several slots that
run out of their bands at the same moment do not leave the pool with none ready.
"""

from __future__ import annotations

import enum
import os
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorProcess, IReactorTime
from twisted.logger import Logger

from mtrd.engine.drops import DropCount, read_tables
from mtrd.engine.errors import EngineStartError, NoWorkerAvailable, PoolStopped
from mtrd.engine.fairqueue import NO_FLOW, FairQueue, Flow
from mtrd.engine.probe import ProbeReply, ProbeRequest, Protocol
from mtrd.engine.sequence import (
    Allocation,
    Band,
    Plan,
    SequenceLedger,
    SequenceSpace,
    fixed_udp_values,
)
from mtrd.engine.ticket import ProbeTicket, deferred_ticket
from mtrd.engine.worker import MtrPacketProcess, PendingProbe, WorkerState, permission_advice

# Bands are cut from the range every supported version counts in (0.96 starts
# at 33434); older processes burn their way up to it.
POOL_SEQUENCE_SPACE = SequenceSpace(low=33434, high=65535)
MAX_POOL_SIZE = 16
MTR_PACKET_PROBE_LIMIT = 1024  # outstanding probes per process in 0.93/0.95


def _command(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(value.split())
    return tuple(value)


@attrs.frozen
class PoolConfig:
    """How many processes, started how, and the limits that keep them healthy."""

    size: int = 2
    command: tuple[str, ...] = attrs.field(default=("mtr-packet",), converter=_command)
    source_ipv4: str | None = None
    source_ipv6: str | None = None
    max_outstanding: int = 900
    max_tcp_outstanding: int = 256
    # A second process takes probes only once the first holds this many: see _pick.
    spread_above: int = 900
    grace: float = 2.0
    queue_timeout: float = 30.0
    # The share of the pool's probe slots (size x max_outstanding) the flows of one group
    # may hold at once. Slots are held for up to a probe's timeout and cannot be taken
    # back: without a share, one tenant's silent probes could hold every slot for a
    # minute. Flows without a group are not held to it.
    max_group_share: float = 0.5
    start_timeout: float = 5.0
    restart_initial: float = 0.1
    restart_max: float = 30.0
    stable_after: float = 10.0
    stop_grace: float = 5.0

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.size <= MAX_POOL_SIZE:
            raise ValueError(f"pool size must be between 1 and {MAX_POOL_SIZE}, got {self.size}")
        if not self.command:
            raise ValueError("the mtr-packet command is empty")
        if not 1 <= self.max_outstanding < MTR_PACKET_PROBE_LIMIT:
            raise ValueError(f"max_outstanding must be 1..{MTR_PACKET_PROBE_LIMIT - 1}")
        if self.max_tcp_outstanding < 1:
            raise ValueError("max_tcp_outstanding must be at least 1")
        if self.spread_above < 0:
            raise ValueError("spread_above must be at least 0")
        if not 0 < self.max_group_share <= 1:
            raise ValueError("max_group_share must be above 0 and at most 1")


DROPS_TOLD_EVERY = 60.0  # seconds between warnings about replies the kernel dropped


class PoolState(enum.Enum):
    """Where the pool is in its life: STOPPED -> STARTING -> RUNNING -> STOPPING -> STOPPED.

    FAILED: no process could start (start failed); stopping makes it STOPPED again.
    """

    STOPPED = "stopped"
    STARTING = "starting"  # processes spawned; none has answered its version check yet
    RUNNING = "running"  # one answered; dead processes are restarted
    FAILED = "failed"  # every process exited before answering; none is restarted
    STOPPING = "stopping"  # the queue is failed, processes finish what they hold


@attrs.define(eq=False)
class _Slot:
    """One place in the pool: a band of sequences and the process that uses it."""

    index: int
    band: Band
    active: MtrPacketProcess | None = None
    draining: list[MtrPacketProcess] = attrs.Factory(list)
    failures: int = 0
    restart: IDelayedCall | None = None
    last_error: str | None = None
    start_failed: bool = False
    restarts: int = 0
    # A process spawned before ``active`` runs out of its band; it takes over once ready.
    successor: MtrPacketProcess | None = None
    # The active process a successor was spawned for: one attempt each, so a successor
    # that cannot start is not spawned again on every probe.
    successor_for: MtrPacketProcess | None = None

    @property
    def ready(self) -> bool:
        return self.active is not None and self.active.state is WorkerState.READY


class ProbePool(Service):
    """A supervised pool of mtr-packet processes; see the module docstring."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        config: PoolConfig | None = None,
        *,
        read_proc: Callable[[str], str] | None = None,
    ) -> None:
        """``reactor`` provides ``IReactorProcess`` and ``IReactorTime``; ``read_proc``
        reads a /proc file, to count the replies the kernel dropped (see
        :mod:`mtrd.engine.drops`; :func:`~mtrd.engine.drops.read_file` reads the real
        one; None: not counted)."""
        self.config = config or PoolConfig()
        self._read_proc = read_proc
        self._drops = DropCount()
        self._drops_told_at: float | None = None
        self._spawner: IReactorProcess = reactor
        self._clock: IReactorTime = reactor
        self._ledger = SequenceLedger(POOL_SEQUENCE_SPACE)
        self._slots = [
            _Slot(index=i, band=band)
            for i, band in enumerate(POOL_SEQUENCE_SPACE.bands(self.config.size))
        ]
        self._queue: FairQueue[ProbeTicket] = FairQueue(lambda entry: entry.flow)
        # udp probes whose fixed port is an outstanding probe's sequence wait apart, by
        # that sequence, until it is released: retried on every pump, thousands of them
        # would make each pump go through them all.
        self._parked: dict[int, list[ProbeTicket]] = {}
        self._parked_by_group: Counter[str | None] = Counter()
        self._held_by_group: Counter[str] = Counter()  # probes in processes, per group
        self._group_of: dict[ProbeTicket, str] = {}
        self._group_cap = max(
            1, int(self.config.max_group_share * self.config.size * self.config.max_outstanding)
        )
        self.state = PoolState.STOPPED
        self._start_error: EngineStartError | None = None
        self._start_waiters: list[Deferred[None]] = []
        self._stop_waiters: list[Deferred[None]] = []
        self._slot_by_worker: dict[MtrPacketProcess, _Slot] = {}  # active and draining
        self._executable: str | None = None

    # -- IService ---------------------------------------------------------------------

    def startService(self) -> None:
        """Spawn every process; :meth:`started` says when one is ready or none could start.

        Starting while a stop is under way is fine: the old processes drain while the
        new ones start, each slot's held sequences keeping them apart.
        """
        if self.state in (PoolState.STARTING, PoolState.RUNNING):
            return
        super().startService()  # type: ignore[no-untyped-call]
        self._start_error = None
        executable = shutil.which(self.config.command[0])
        if executable is None:
            self._start_failed(
                EngineStartError(
                    f"cannot start mtr-packet: {self.config.command[0]!r} not found on PATH "
                    "(install mtr-tiny, or set the mtr-packet command)"
                )
            )
            return
        self._executable = executable
        self.state = PoolState.STARTING
        for slot in self._slots:
            slot.failures = 0
            slot.start_failed = False
            if slot.active is None:
                self._spawn(slot)

    def stopService(self) -> Deferred[None]:
        """Fail what is queued, let processes finish what they hold, kill stragglers.

        The Deferred fires once every process has exited.
        """
        if self.state is PoolState.STOPPED:
            return succeed(None)
        done: Deferred[None] = Deferred()
        self._stop_waiters.append(done)
        if self.state is PoolState.STOPPING:
            return done
        super().stopService()  # type: ignore[no-untyped-call]
        self.state = PoolState.STOPPING
        self._settle_start(PoolStopped("the probe pool was stopped before it was ready"))
        self._fail_queue(PoolStopped("the probe pool is stopping"))
        for slot in self._slots:
            if slot.restart is not None and slot.restart.active():
                slot.restart.cancel()
            slot.restart = None
            if slot.active is not None:
                slot.draining.append(slot.active)
                slot.active = None
            slot.successor = None
        stopping = list(self._slot_by_worker)
        for worker in stopping:
            worker.retire()
        Deferred.fromCoroutine(self._stopped(stopping))
        return done

    async def _stopped(self, workers: list[MtrPacketProcess]) -> None:
        killer = self._clock.callLater(self.config.stop_grace, _kill, workers)
        await DeferredList([worker.ended for worker in workers])
        if killer.active():
            killer.cancel()
        if self.state is PoolState.STOPPING:
            self.state = PoolState.STOPPED
        waiters, self._stop_waiters = self._stop_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # -- public API ---------------------------------------------------------------

    def started(self) -> Deferred[None]:
        """Fires once a process of this run is ready; fails with ``EngineStartError`` if
        none could start, or with ``PoolStopped`` if the pool is stopped first."""
        if self.state is PoolState.RUNNING:
            return succeed(None)
        if self.state is PoolState.FAILED:
            assert self._start_error is not None
            return fail(self._start_error)
        if self.state is not PoolState.STARTING:
            return fail(PoolStopped("the probe pool is not running"))
        waiter: Deferred[None] = Deferred()
        self._start_waiters.append(waiter)
        return waiter

    async def start(self) -> None:
        """Start the service; return once one process is ready, raise if none could start."""
        self.startService()
        try:
            await self.started()
        except EngineStartError:
            await self.stopService()
            raise

    async def stop(self) -> None:
        """Stop the service and wait until every process has exited."""
        await self.stopService()

    def probe(self, request: ProbeRequest, flow: Flow | None = None) -> Deferred[ProbeReply]:
        """Send one probe; the Deferred fires with its reply or fails with ``ProbeFailed``.

        Probes that wait for a process leave the queue round robin between their
        ``flow``s (see :mod:`mtrd.engine.fairqueue`); probes without one share a flow.

        It never raises: a stopped pool (``PoolStopped``), a request the pool cannot
        send (``InvalidProbeRequest``) and a pool without processes
        (``NoWorkerAvailable``) all fail the Deferred. Cancelling the Deferred gives
        up on the probe: a queued probe is never sent; one already sent keeps its
        sequence until mtr-packet is done with it.
        """
        ticket, result = deferred_ticket(request, NO_FLOW if flow is None else flow, self.cancel)
        self.send(ticket)
        return result

    def send(self, *tickets: ProbeTicket) -> None:
        """Send each ticket's probe, in order; its ``deliver`` gets the reply or the
        error, as :meth:`probe` describes (without a Deferred: every trace's probes come
        this way, a round's in one call). A ticket given up before its turn (an earlier
        one's outcome may end its sender) is not sent."""
        state = self.state
        if state is not PoolState.RUNNING and state is not PoolState.STARTING:
            for ticket in tickets:
                if state is PoolState.FAILED:
                    ticket.settle(NoWorkerAvailable(self._no_worker_reason()))
                else:
                    ticket.settle(PoolStopped("the probe pool is not running"))
            return
        for ticket in tickets:
            if ticket.deliver is None:
                continue
            try:
                self._send(ticket)
            except Exception as e:  # every failure goes to the ticket
                ticket.settle(e)

    def cancel(self, ticket: ProbeTicket) -> None:
        """Give up on ``ticket``'s probe: nothing is delivered. A queued probe is never
        sent; one already sent keeps its sequence until mtr-packet is done with it."""
        if ticket.open:
            ticket.close()
            self._cancelled(ticket)

    def _send(self, entry: ProbeTicket) -> None:
        entry.request = self._with_source(entry.request)
        flow = entry.flow
        if not self._queue and self._may_send(flow):
            # The common case: a process has room now, and the probe never waits.
            worker = self._pick(entry.request)
            if worker is not None and self._dispatch(worker, entry):
                return
        for slot in self._slots:
            if not slot.start_failed or slot.ready:
                break
        else:
            entry.settle(NoWorkerAvailable(self._no_worker_reason()))
            return
        entry.expiry = self._clock.callLater(self.config.queue_timeout, self._queue_expired, entry)
        if entry.blocked_on is not None:
            self._park(entry)
            return
        self._queue.append(entry)
        self._pump()

    @property
    def size(self) -> int:
        """How many processes the pool keeps running."""
        return len(self._slots)

    @property
    def ready_workers(self) -> int:
        """How many processes answered their version check and take probes."""
        return sum(slot.ready for slot in self._slots)

    @property
    def queued(self) -> int:
        """Probes waiting for a process."""
        return len(self._queue) + self._parked_by_group.total()

    def queued_in(self, group: str | None) -> int:
        """Probes of flows in ``group`` waiting for a process."""
        return self._queue.waiting_in(group) + self._parked_by_group[group]

    def queued_by_group(self) -> dict[str, int]:
        """Probes waiting for a process, per named group (a tenant): what a Redis runner
        publishes in its heartbeat."""
        return self._queue.waiting_by_group()

    @property
    def outstanding(self) -> int:
        """Probes written to a process and not yet answered."""
        return self._ledger.outstanding

    def reply_drops(self) -> int:
        """Replies the kernel dropped at the workers' raw sockets since the pool started
        (their probes count as lost): read now, and whenever a worker is retired."""
        worker = next((s.active for s in self._slots if s.active and s.active.pid), None)
        if worker is not None:
            self._count_drops(worker)
        return self._drops.total

    def _count_drops(self, worker: MtrPacketProcess) -> None:
        if self._read_proc is None or not worker.pid:
            return
        sockets = read_tables(worker.pid, self._read_proc)
        if sockets is None or not self._drops.observe(sockets.items()):
            return
        now = self._clock.seconds()
        if self._drops_told_at is None or now - self._drops_told_at >= DROPS_TOLD_EVERY:
            self._drops_told_at = now
            self.log.warn(
                "the kernel dropped replies at the mtr-packet workers' raw sockets ({total} "
                "so far): their probes count as lost though the path lost nothing. Replies "
                "came faster than the workers read them: run fewer traces at once "
                "(--max-running)",
                total=self._drops.total,
            )

    @property
    def restarts(self) -> int:
        """Processes restarted after dying (retirements not counted)."""
        return sum(slot.restarts for slot in self._slots)

    def workers(self) -> list[dict[str, Any]]:
        """A snapshot of every slot, for status pages and metrics."""
        return [
            {
                "slot": slot.index,
                "pid": slot.active.pid if slot.active else None,
                "ready": slot.ready,
                "version": slot.active.version if slot.active else None,
                "outstanding": len(slot.active.pending) if slot.active else 0,
                "draining": len(slot.draining),
                "restarts": slot.restarts,
                "last_error": slot.last_error,
            }
            for slot in self._slots
        ]

    # -- WorkerOwner ---------------------------------------------------------------

    def worker_ready(self, worker: MtrPacketProcess) -> None:
        """A process answered its version check."""
        self.log.info(
            "{name} ready: mtr-packet {version}, pid {pid}",
            name=worker.name,
            version=worker.version,
            pid=worker.pid,
        )
        slot = self._slot_of(worker)
        if slot is not None and slot.successor is worker:
            self._take_over(slot, worker)
        if slot is not None:
            slot.start_failed = False
            slot.last_error = None
            # Move the counter to the band now, while nothing waits on this process,
            # rather than with its first probe (a band far up the ring is thousands
            # of burns).
            worker.burn(slot.band.start - worker.next_sequence)
        if self.state is PoolState.STARTING:
            self.state = PoolState.RUNNING
            self._settle_start(None)
        self._pump()

    def probe_ended(self, worker: MtrPacketProcess, pending: PendingProbe) -> None:  # noqa: ARG002
        """Free the probe's numbers and send what waits."""
        self._ledger.release(pending.sequence, pending.udp_ports)
        self._unpark(pending.sequence)
        self._release_group(pending.ticket)
        self._pump()

    def worker_doubtful(self, worker: MtrPacketProcess, why: str) -> None:
        """The counter mirror may be off: replace the process."""
        self.log.warn("{name} retired: {why}", name=worker.name, why=why)
        self._retire(worker)

    def worker_unresponsive(self, worker: MtrPacketProcess, why: str) -> None:
        """A process that sits on a probe past its deadline hangs: kill it."""
        self.log.error("{why}; killing it", why=why)
        worker.kill()

    def worker_exited(
        self, worker: MtrPacketProcess, why: str, lost: Sequence[PendingProbe]
    ) -> None:
        """Release what the process held; restart its slot unless it was retired."""
        for pending in lost:
            self._ledger.release(pending.sequence, pending.udp_ports)
            self._unpark(pending.sequence)
            self._release_group(pending.ticket)
        slot = self._slot_by_worker.pop(worker, None)
        if slot is not None:
            if worker in slot.draining:
                slot.draining.remove(worker)
            elif slot.successor is worker:
                # The active process keeps working; at its band's end the slot is
                # replaced the ordinary way.
                slot.successor = None
                slot.last_error = f"mtr-packet {why}"
                self.log.error("{name} (successor) {why}", name=worker.name, why=why)
            elif slot.active is worker and slot.successor is not None:
                # The successor is on its way: it takes the slot instead of a restart.
                slot.active, slot.successor = slot.successor, None
                slot.last_error = f"mtr-packet {why}"
                self.log.error("{name} {why}", name=worker.name, why=why)
            elif slot.active is worker:
                slot.active = None
                self._unexpected_exit(slot, worker, why)
        self._pump()

    # -- supervision ---------------------------------------------------------------

    def _unexpected_exit(self, slot: _Slot, worker: MtrPacketProcess, why: str) -> None:
        never_ready = worker.ready_at is None
        slot.last_error = f"mtr-packet {why}"
        slot.start_failed = never_ready
        self.log.error("{name} {why}", name=worker.name, why=why)
        if self.state is not PoolState.STARTING and self.state is not PoolState.RUNNING:
            return
        if self.state is PoolState.STARTING and all(s.start_failed for s in self._slots):
            reason = self._no_worker_reason()
            advice = permission_advice(reason)
            self._start_failed(EngineStartError(f"{reason}. {advice}" if advice else reason))
            return
        uptime = self._clock.seconds() - worker.started_at
        slot.failures = 1 if uptime >= self.config.stable_after else slot.failures + 1
        delay = min(self.config.restart_max, self.config.restart_initial * 2 ** (slot.failures - 1))
        slot.restarts += 1
        slot.restart = self._clock.callLater(delay, self._restart, slot)
        if not any(s.ready for s in self._slots):
            # Never sent: not a probe lost on the path but an engine that is down.
            self._fail_queue(
                NoWorkerAvailable(f"every mtr-packet worker is down: {slot.last_error}")
            )

    def _restart(self, slot: _Slot) -> None:
        slot.restart = None
        if self.state is PoolState.STARTING or self.state is PoolState.RUNNING:
            self._spawn(slot)

    def _start_failed(self, error: EngineStartError) -> None:
        self.state = PoolState.FAILED
        self._start_error = error
        self._fail_queue(NoWorkerAvailable(str(error)))
        self._settle_start(error)

    def _settle_start(self, error: Exception | None) -> None:
        waiters, self._start_waiters = self._start_waiters, []
        for waiter in waiters:
            if error is None:
                waiter.callback(None)
            else:
                waiter.errback(error)

    def _spawn(self, slot: _Slot, *, successor: bool = False) -> None:
        assert self._executable is not None
        worker = MtrPacketProcess(
            name=f"worker-{slot.index}",
            clock=self._clock,
            owner=self,
            grace=self.config.grace,
            start_timeout=self.config.start_timeout,
        )
        if successor:
            slot.successor = worker
            slot.successor_for = slot.active
        else:
            slot.active = worker
        self._slot_by_worker[worker] = slot
        try:
            self._spawner.spawnProcess(
                worker, self._executable, list(self.config.command), env=dict(os.environ)
            )
        except OSError as e:
            self._slot_by_worker.pop(worker, None)
            why = f"could not be started: {e}"
            worker.never_started(why)
            if successor:
                slot.successor = None
                slot.last_error = f"mtr-packet {why}"
                return
            slot.active = None
            self._unexpected_exit(slot, worker, why)
            return
        if self._pid_collides(worker):
            # Same low 16 bits of the process id: ICMP replies would be shared.
            self.log.info(
                "{name}: ICMP id collides with a live worker; replacing", name=worker.name
            )
            self._retire(worker)
            if successor:
                slot.successor_for = None  # another try, with another process id

    def _pid_collides(self, worker: MtrPacketProcess) -> bool:
        ident = worker.pid & 0xFFFF
        return any(
            other is not worker
            and other.state is not WorkerState.EXITED
            and other.pid & 0xFFFF == ident
            for other in self._slot_by_worker
        )

    def _retire(self, worker: MtrPacketProcess) -> None:
        slot = self._slot_of(worker)
        if slot is None or worker.state is WorkerState.RETIRING:
            return
        self._count_drops(worker)  # its sockets close with it
        worker.retire()
        if slot.successor is worker:
            slot.successor = None
            return
        if slot.active is worker:
            slot.active = None
            slot.draining.append(worker)
            if self.state is PoolState.STARTING or self.state is PoolState.RUNNING:
                if slot.successor is not None:
                    slot.active, slot.successor = slot.successor, None
                else:
                    self._spawn(slot)

    def _take_over(self, slot: _Slot, successor: MtrPacketProcess) -> None:
        """The successor answered: it becomes the slot's process, the old one drains."""
        slot.successor = None
        old = slot.active
        slot.active = successor
        if old is not None:
            self._count_drops(old)  # its sockets close with it
            old.retire()
            slot.draining.append(old)

    def _prepare_successor(self, slot: _Slot, worker: MtrPacketProcess, sequence: int) -> None:
        """Spawn ``worker``'s successor once its counter is in the last quarter of the band."""
        if (
            sequence >= slot.band.stop - slot.band.usable // 4
            and slot.successor is None
            and slot.successor_for is not worker
            and slot.active is worker
            and self.state is PoolState.RUNNING
        ):
            self._spawn(slot, successor=True)

    def _slot_of(self, worker: MtrPacketProcess) -> _Slot | None:
        return self._slot_by_worker.get(worker)

    def _no_worker_reason(self) -> str:
        errors = sorted({slot.last_error for slot in self._slots if slot.last_error})
        return "no mtr-packet worker is running: " + ("; ".join(errors) or "none started yet")

    # -- dispatch --------------------------------------------------------------------

    def _with_source(self, request: ProbeRequest) -> ProbeRequest:
        if request.source is not None:
            return request
        source = self.config.source_ipv4 if request.ip_version == 4 else self.config.source_ipv6
        return request if source is None else attrs.evolve(request, source=source)

    def _pump(self) -> None:
        """Send queued probes, a flow at a time, while some process has room."""
        if not self._queue:
            return  # the common case, after every reply
        waiting: list[ProbeTicket] = []
        while self._queue:
            entry = self._queue.peek(self._may_send)
            if entry is None:
                break  # what waits belongs to groups that hold their share
            worker = self._pick(entry.request)
            if worker is None:
                break
            self._queue.popleft(self._may_send)
            if self._dispatch(worker, entry):
                continue
            if entry.blocked_on is not None:
                self._park(entry)
            else:
                waiting.append(entry)
        self._queue.put_back(waiting)

    def _park(self, entry: ProbeTicket) -> None:
        assert entry.blocked_on is not None
        self._parked.setdefault(entry.blocked_on, []).append(entry)
        self._parked_by_group[entry.flow.group] += 1

    def _unpark(self, sequence: int) -> None:
        """Queue again, at the head of their flows, the probes that waited for ``sequence``."""
        entries = self._parked.pop(sequence, None)
        if entries is None:
            return
        for entry in entries:
            entry.blocked_on = None
            self._unparked(entry)
        self._queue.put_back(entries)

    def _unparked(self, entry: ProbeTicket) -> None:
        self._parked_by_group[entry.flow.group] -= 1
        if self._parked_by_group[entry.flow.group] <= 0:
            del self._parked_by_group[entry.flow.group]

    def _take_parked(self, entry: ProbeTicket) -> bool:
        """Take ``entry`` out of the parked probes; False if it is not parked."""
        if entry.blocked_on is None:
            return False
        parked = self._parked.get(entry.blocked_on, [])
        if entry not in parked:
            return False
        parked.remove(entry)
        if not parked:
            del self._parked[entry.blocked_on]
        entry.blocked_on = None
        self._unparked(entry)
        return True

    def _pick(self, request: ProbeRequest) -> MtrPacketProcess | None:
        """The process for the next probe: the first (in slot order) that holds fewer
        than ``spread_above`` probes, else the least loaded one with room.

        Packing rather than spreading, by default until the first process is full: every
        process's raw socket receives every ICMP reply, and a process reads its socket only
        between the commands it works through. With two processes sending at once, each
        socket also fills with the other's replies while its reader is busy: under load
        the kernel's receive buffer (about 200 replies) overflows and replies are lost,
        which shows as loss that is not on the path and costs each hit round its whole
        timeout (bench/results/peers.md). One busy process reads its own replies between
        its sends. The first slot's band also starts where a new process starts counting,
        so its replacements burn almost nothing (see :mod:`mtrd.engine.sequence`).
        """
        best: MtrPacketProcess | None = None
        config = self.config
        for slot in self._slots:
            worker = slot.active
            if worker is None or not slot.ready:
                continue
            held = len(worker.pending)
            if held >= config.max_outstanding:
                continue
            if (
                request.protocol is Protocol.TCP
                and worker.tcp_outstanding >= config.max_tcp_outstanding
            ):
                continue
            if held < config.spread_above:
                return worker
            if best is None or held < len(best.pending):
                best = worker
        return best

    def _dispatch(self, worker: MtrPacketProcess, entry: ProbeTicket) -> bool:
        """Send ``entry`` to ``worker``; False when it must wait for a udp port."""
        slot = self._slot_of(worker)
        assert slot is not None
        ports = fixed_udp_values(entry.request, worker.pid)
        allocation = self._ledger.allocate(worker.next_sequence, slot.band, ports)
        while allocation is Plan.EXHAUSTED:
            self._retire(worker)
            replacement = self._pick(entry.request)
            if replacement is None:
                return False
            return self._dispatch(replacement, entry)
        if allocation is Plan.WAIT:
            entry.blocked_on = self._ledger.blocking(ports)
            return False
        assert isinstance(allocation, Allocation)
        self._prepare_successor(slot, worker, allocation.sequence)
        if entry.expiry is not None and entry.expiry.active():
            entry.expiry.cancel()
        self._ledger.hold(allocation.sequence, ports)
        worker.send(
            entry.request,
            burns=allocation.burns,
            sequence=allocation.sequence,
            udp_ports=ports,
            ticket=entry,
        )
        group = entry.flow.group
        if group is not None:
            self._held_by_group[group] += 1
            self._group_of[entry] = group
        return True

    def _may_send(self, flow: Flow) -> bool:
        return flow.group is None or self._held_by_group[flow.group] < self._group_cap

    def _release_group(self, ticket: ProbeTicket) -> None:
        group = self._group_of.pop(ticket, None)
        if group is not None:
            self._held_by_group[group] -= 1
            if not self._held_by_group[group]:
                del self._held_by_group[group]

    def _cancelled(self, entry: ProbeTicket) -> None:
        if not self._take_parked(entry) and entry in self._queue:
            self._queue.remove(entry)
        if entry.expiry is not None and entry.expiry.active():
            entry.expiry.cancel()

    def _queue_expired(self, entry: ProbeTicket) -> None:
        entry.expiry = None
        if self._take_parked(entry) or entry in self._queue:
            if entry in self._queue:
                self._queue.remove(entry)
            entry.settle(
                NoWorkerAvailable(
                    f"no mtr-packet worker took the probe within {self.config.queue_timeout:g} s"
                )
            )

    def _fail_queue(self, reason: Exception) -> None:
        for sequence in list(self._parked):
            self._unpark(sequence)
        while self._queue:
            entry = self._queue.popleft()
            if entry.expiry is not None and entry.expiry.active():
                entry.expiry.cancel()
            entry.settle(reason)


def _kill(workers: list[MtrPacketProcess]) -> None:
    for worker in workers:
        worker.kill()


__all__ = ["PoolConfig", "PoolState", "ProbePool"]
