"""One mtr-packet process: framing, tokens, pending probes, deadlines.

:class:`MtrPacketProcess` is a Twisted ``ProcessProtocol``. It writes
commands, frames stdout by newline over a persistent buffer (one read often
holds several replies, and a reply may be split across reads), answers each
probe's ticket from the reply with its token, and fails every pending probe
at once when the process exits. It does not choose sequence numbers or decide
where probes go: its owner (the pool, see :mod:`mtrd.engine.pool`) does, and hears
from it through :class:`WorkerOwner`.
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Sequence
from typing import Protocol as TypingProtocol

import attrs
from twisted.internet import error, protocol
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mtrd.engine.codec import (
    BURN_COMMAND,
    CONTROL_TOKEN,
    VERSION_COMMAND,
    format_probe,
    parse_reply,
)
from mtrd.engine.errors import WorkerDied, WorkerUnresponsive
from mtrd.engine.probe import ProbeReply, ProbeRequest, Protocol, ReplyKind
from mtrd.engine.sequence import SequenceSpace
from mtrd.engine.ticket import ProbeTicket

MAX_LINE = 4096
_BURN_REPLY = f"{CONTROL_TOKEN} invalid-argument"
STDERR_LINES_KEPT = 5
# How many deadlines (timeout + grace) a probe may take while its process keeps
# answering others: a busy host delays replies, a lost probe is still given up.
OVERDUE_PATIENCE = 4

# Replies after which the mirror of the process's sequence counter may be off:
# these can come from before mtr-packet allocated a sequence.
_MIRROR_DOUBT = frozenset(
    {
        ReplyKind.PROBES_EXHAUSTED,
        ReplyKind.INVALID_ARGUMENT,
        ReplyKind.UNKNOWN_COMMAND,
        ReplyKind.UNKNOWN,
        ReplyKind.COMMAND_PARSE_ERROR,
        ReplyKind.COMMAND_BUFFER_OVERFLOW,
        ReplyKind.FEATURE_SUPPORT,
    }
)


class WorkerOwner(TypingProtocol):
    """What a process tells the one that started it."""

    def worker_ready(self, worker: MtrPacketProcess) -> None:
        """The process answered its version check and takes probes."""

    def probe_ended(self, worker: MtrPacketProcess, pending: PendingProbe) -> None:
        """A probe got its reply: its sequence is free again."""

    def worker_doubtful(self, worker: MtrPacketProcess, why: str) -> None:
        """The sequence mirror may be off: retire the process."""

    def worker_unresponsive(self, worker: MtrPacketProcess, why: str) -> None:
        """A probe outlived its deadline: the process hangs."""

    def worker_exited(
        self, worker: MtrPacketProcess, why: str, lost: Sequence[PendingProbe]
    ) -> None:
        """The process is gone; ``lost`` are the probes it held, which fail next."""


class WorkerState(enum.Enum):
    """Where one mtr-packet process is in its life; it only moves forward."""

    STARTING = "starting"  # spawned; the version check is not answered yet
    READY = "ready"  # answered the version check: takes probes
    RETIRING = "retiring"  # takes no probes; stdin closes once it holds none, then it exits
    EXITED = "exited"


@attrs.define(eq=False)
class PendingProbe:
    """A probe written to a process and not yet answered."""

    token: int
    request: ProbeRequest
    sequence: int
    udp_ports: tuple[int, ...]
    ticket: ProbeTicket
    sent_at: float = 0.0

    def settle(self, outcome: ProbeReply | Exception) -> None:
        """Give the caller its outcome unless it already gave up (cancelled)."""
        self.ticket.settle(outcome)


RAW_SOCKET_ADVICE = (
    "mtr-packet may not open raw sockets: grant it CAP_NET_RAW "
    "(sudo setcap cap_net_raw+ep $(command -v mtr-packet); check with "
    "getcap $(command -v mtr-packet)) or run mtrd as root; in a container, "
    "add the NET_RAW capability (docker run --cap-add NET_RAW)"
)
CAPABILITY_EXEC_ADVICE = (
    "mtr-packet carries the file capability cap_net_raw, which this process may not "
    "gain (a container or service without NET_RAW in its capability bounding set): "
    "add NET_RAW (docker run --cap-add NET_RAW, or CapabilityBoundingSet=CAP_NET_RAW "
    "in a systemd unit)"
)


def permission_advice(why: str) -> str | None:
    """What to do when ``why`` (how mtr-packet ended) says it lacks raw-socket rights."""
    denied = "Permission denied" in why or "Operation not permitted" in why
    if not denied:
        return None
    if "Failure to open IPv4 sockets" in why or "Failure to open IPv6 sockets" in why:
        return RAW_SOCKET_ADVICE
    if "could not be started" in why:
        return CAPABILITY_EXEC_ADVICE
    return None


def describe_exit(reason: Failure) -> str:
    """Say in words how a process ended."""
    value = reason.value
    if isinstance(value, error.ProcessTerminated):
        if value.signal is not None:
            return f"killed by signal {value.signal}"
        return f"exited with status {value.exitCode}"
    if isinstance(value, error.ProcessDone):
        return "exited with status 0"
    return str(value)


class MtrPacketProcess(protocol.ProcessProtocol):
    """The protocol for one running mtr-packet.

    It alone owns the probes written to it (``pending``, by token): it adds them,
    answers them, and on exit hands the ones left to its owner before failing them.
    Others only read ``pending``.
    """

    log = Logger()

    def __init__(
        self,
        *,
        name: str,
        clock: IReactorTime,
        owner: WorkerOwner,
        grace: float,
        start_timeout: float,
    ) -> None:
        self.name = name
        self.clock = clock
        self.owner = owner
        self.grace = grace
        self.start_timeout = start_timeout
        self.version: str | None = None
        self.next_sequence = 0  # mirror of mtr-packet's counter, set by the version
        self.pending: dict[int, PendingProbe] = {}
        self.tcp_outstanding = 0
        self.started_at = clock.seconds()
        self.ready_at: float | None = None
        self.state = WorkerState.STARTING
        self.ended: Deferred[None] = Deferred()  # fires once the process is gone
        self._stdin_closed = False
        self.pid = 0
        self._buffer = b""
        self._next_token = CONTROL_TOKEN + 1
        self._stderr: list[str] = []
        self._start_deadline: IDelayedCall | None = None
        # Every probe's deadline (timeout + grace) as (when, token) in a heap, watched by
        # one timer set for the earliest: no timer per probe. Answered probes' entries
        # are skipped when they come up, and swept out when they pile up.
        self._deadlines: list[tuple[float, int]] = []
        self._deadline_timer: IDelayedCall | None = None
        self._second_look = False
        self._stalled = False
        self._heard_at = self.started_at  # when the process last wrote to stdout

    # -- what the owner calls -------------------------------------------------

    @property
    def ready(self) -> bool:
        """True when the process takes probes."""
        return self.state is WorkerState.READY

    def send(
        self,
        request: ProbeRequest,
        *,
        burns: int,
        sequence: int,
        udp_ports: tuple[int, ...],
        ticket: ProbeTicket,
    ) -> PendingProbe:
        """Write ``burns`` burn commands and then the probe, which gets ``sequence``."""
        assert self.transport is not None
        token = self._next_token
        self._next_token += 1
        pending = PendingProbe(
            token=token,
            request=request,
            sequence=sequence,
            udp_ports=udp_ports,
            ticket=ticket,
            sent_at=self.clock.seconds(),
        )
        self._watch(token, request.timeout + self.grace)
        self.pending[token] = pending
        if request.protocol is Protocol.TCP:
            self.tcp_outstanding += 1
        self.next_sequence = sequence + 1
        self.transport.write(BURN_COMMAND * burns + format_probe(token, request))
        return pending

    def burn(self, count: int) -> None:
        """Advance mtr-packet's sequence counter by ``count`` without sending anything."""
        if count <= 0 or self.transport is None or self.state is not WorkerState.READY:
            return
        self.next_sequence += count
        self.transport.write(BURN_COMMAND * count)

    def retire(self) -> None:
        """Take no more probes; once the ones it holds are answered, close stdin, and
        mtr-packet exits.

        Not at once: with its stdin at end of file, mtr-packet (0.95) spins on it, a
        whole core busy until its last probe is answered or times out, and a probe into
        silence holds it for its whole timeout (tests/test_engine_lab.py shows it).
        """
        if self.state is WorkerState.RETIRING or self.state is WorkerState.EXITED:
            return
        self.state = WorkerState.RETIRING
        self._close_when_idle()

    def _close_when_idle(self) -> None:
        if not self.pending and self.transport is not None and not self._stdin_closed:
            self._stdin_closed = True
            self.transport.closeStdin()

    def kill(self) -> None:
        """End the process at once (SIGKILL)."""
        if self.transport is None or self.state is WorkerState.EXITED:
            return
        try:
            self.transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            return

    def never_started(self, why: str) -> None:
        """The process could not be spawned: it is gone before it began."""
        self.state = WorkerState.EXITED
        self._stderr.append(why)
        self.ended.callback(None)

    def last_stderr(self) -> str:
        """The last lines mtr-packet wrote to stderr, for error messages."""
        return " | ".join(self._stderr)

    # -- ProcessProtocol ----------------------------------------------------

    def connectionMade(self) -> None:
        """Ask for the version: the answer says the process is alive and which one it is."""
        assert self.transport is not None
        self.pid = self.transport.pid or 0
        self._start_deadline = self.clock.callLater(self.start_timeout, self._start_overdue)
        self.transport.write(VERSION_COMMAND)

    def outReceived(self, data: bytes) -> None:
        """Frame replies by newline; several may come in one read, one may be split."""
        self._heard_at = self.clock.seconds()
        self._buffer += data
        if b"\n" not in self._buffer:
            if len(self._buffer) > MAX_LINE:
                self.log.warn("{name}: dropping an over-long line", name=self.name)
                self._buffer = b""
            return
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self._line_received(line.decode("utf-8", "replace"))

    def errReceived(self, data: bytes) -> None:
        """Log what mtr-packet says on stderr and keep the last lines for errors."""
        for line in data.decode("utf-8", "replace").splitlines():
            if line.strip():
                self.log.warn("{name} stderr: {line}", name=self.name, line=line)
                self._stderr = [*self._stderr[-(STDERR_LINES_KEPT - 1) :], line]

    def processEnded(self, reason: Failure) -> None:
        """Tell the owner why the process ended and what it held, then fail those probes."""
        self.state = WorkerState.EXITED
        for timer in (self._start_deadline, self._deadline_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._deadline_timer = None
        self._deadlines.clear()
        why = describe_exit(reason)
        if self._stderr:
            why += f" (stderr: {self.last_stderr()})"
        failure = WorkerDied(f"mtr-packet worker {self.name} {why}")
        held = list(self.pending.values())
        self.pending.clear()
        self.tcp_outstanding = 0
        self.owner.worker_exited(self, why, held)
        for pending in held:
            pending.settle(failure)
        self.ended.callback(None)

    # -- replies --------------------------------------------------------------

    def _line_received(self, line: str) -> None:
        if line == _BURN_REPLY and self.version is not None:
            return  # a burn did what it is for: a sequence number went by
        token, reply = parse_reply(line)
        if token == CONTROL_TOKEN:
            self._control_reply(reply)
            return
        pending = self.pending.pop(token, None)
        if pending is None:
            # Token 0 marks a framing error mtr-packet could not tie to a command.
            self.log.warn("{name}: reply for no pending probe: {line!r}", name=self.name, line=line)
            if token == 0:
                self.owner.worker_doubtful(self, f"framing error: {line!r}")
            return
        if pending.request.protocol is Protocol.TCP:
            self.tcp_outstanding -= 1
        if self.state is WorkerState.RETIRING:
            self._close_when_idle()
        # The owner frees the sequence first, so the caller sees the pool as it now is.
        self.owner.probe_ended(self, pending)
        pending.ticket.settle(reply)
        if reply.kind in _MIRROR_DOUBT:
            self.owner.worker_doubtful(self, f"reply {line!r}")

    def _control_reply(self, reply: ProbeReply) -> None:
        if self.version is None:
            if reply.kind is not ReplyKind.FEATURE_SUPPORT or not reply.detail:
                self.log.error(
                    "{name}: unexpected answer to the version check: {raw!r}",
                    name=self.name,
                    raw=reply.raw,
                )
                self.kill()
                return
            if self._start_deadline is not None and self._start_deadline.active():
                self._start_deadline.cancel()
            self.version = reply.detail
            self.ready_at = self.clock.seconds()
            self.next_sequence = SequenceSpace.for_version(reply.detail).low
            if self.state is WorkerState.STARTING:  # not when retired before it answered
                self.state = WorkerState.READY
                self.owner.worker_ready(self)
        elif reply.kind is not ReplyKind.INVALID_ARGUMENT:
            self.log.warn("{name}: unexpected control reply {raw!r}", name=self.name, raw=reply.raw)

    def _start_overdue(self) -> None:
        self._start_deadline = None
        self._stderr.append(f"no answer to the version check within {self.start_timeout:g} s")
        self.kill()

    def _watch(self, token: int, seconds: float) -> None:
        """Note that probe ``token`` must be answered within ``seconds``."""
        now = self.clock.seconds()
        when = now + seconds
        heap = self._deadlines
        if len(heap) > 2 * len(self.pending) + 1024:
            heap[:] = [entry for entry in heap if entry[1] in self.pending]
            heapq.heapify(heap)
        heapq.heappush(heap, (when, token))
        timer = self._deadline_timer
        if timer is None:
            self._deadline_timer = self.clock.callLater(seconds, self._deadlines_due)
        elif when < timer.getTime():
            timer.reset(seconds)

    def _deadlines_due(self) -> None:
        """Fail the probes past their deadline, unless the process shows it is alive.

        A hung process says nothing: it is judged at timeout + grace. One that keeps
        answering is only behind (a busy host) and gets ``grace`` more at a time, up to
        ``OVERDUE_PATIENCE`` deadlines in all, so a probe it lost is still given up; so
        does every probe when the timer itself ran late (mtrd, not mtr-packet, stalled).
        """
        timer, self._deadline_timer = self._deadline_timer, None
        now = self.clock.seconds()
        heap, pending = self._deadlines, self.pending
        while heap and heap[0][1] not in pending:
            heapq.heappop(heap)
        if heap and heap[0][0] <= now and not self._second_look:
            # A reactor turn runs timers before reads: after a stall the answers may sit
            # unread in the pipe. Judge once they are read.
            self._second_look = True
            self._stalled = timer is not None and now - timer.getTime() > self.grace / 2
            self._deadline_timer = self.clock.callLater(0, self._deadlines_due)
            return
        self._second_look = False
        # A timer that ran late means this process (mtrd) was held up: the probes may
        # have sat in its own write buffer. That is no sign of a hung mtr-packet.
        talking = now - self._heard_at < self.grace or self._stalled
        self._stalled = False
        overdue: list[PendingProbe] = []
        later: list[tuple[float, int]] = []
        while heap and (heap[0][0] <= now or heap[0][1] not in pending):
            _, token = heapq.heappop(heap)
            probe = pending.get(token)
            if probe is None:
                continue
            limit = probe.sent_at + OVERDUE_PATIENCE * (probe.request.timeout + self.grace)
            if talking and now < limit:
                later.append((min(now + self.grace, limit), token))
            else:
                overdue.append(probe)
        for entry in later:
            heapq.heappush(heap, entry)
        if heap:
            self._deadline_timer = self.clock.callLater(heap[0][0] - now, self._deadlines_due)
        for probe in overdue:
            self._probe_overdue(probe)

    def _probe_overdue(self, pending: PendingProbe) -> None:
        waited = self.clock.seconds() - pending.sent_at
        why = (
            f"mtr-packet worker {self.name} gave no answer within {waited:g} s "
            f"(the probe's timeout is {pending.request.timeout} s, the grace {self.grace:g} s)"
        )
        pending.settle(WorkerUnresponsive(why))
        self.owner.worker_unresponsive(self, why)


__all__ = [
    "MtrPacketProcess",
    "PendingProbe",
    "WorkerOwner",
    "WorkerState",
    "describe_exit",
    "permission_advice",
]
