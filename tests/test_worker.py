"""One mtr-packet process: framing, version check, deadlines, death."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from mtrd.engine.errors import WorkerDied, WorkerUnresponsive
from mtrd.engine.probe import ProbeReply, ProbeRequest, ReplyKind
from mtrd.engine.ticket import deferred_ticket
from mtrd.engine.worker import MtrPacketProcess, PendingProbe, WorkerState
from twisted.internet.defer import Deferred

from tests.fakes import FakeProcessReactor, FakeProcessTransport


class RecordingOwner:
    """Records what the process tells its owner."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def worker_ready(self, worker: MtrPacketProcess) -> None:
        self.events.append(("ready", worker.version))

    def probe_ended(self, worker: MtrPacketProcess, pending: PendingProbe) -> None:
        self.events.append(("ended", pending.token))

    def worker_doubtful(self, worker: MtrPacketProcess, why: str) -> None:
        self.events.append(("doubtful", why))

    def worker_unresponsive(self, worker: MtrPacketProcess, why: str) -> None:
        self.events.append(("unresponsive", why))

    def worker_exited(
        self, worker: MtrPacketProcess, why: str, lost: Sequence[PendingProbe]
    ) -> None:
        self.events.append(("exited", why))


def start(
    reactor: FakeProcessReactor, owner: RecordingOwner
) -> tuple[MtrPacketProcess, FakeProcessTransport]:
    worker = MtrPacketProcess(name="w", clock=reactor, owner=owner, grace=2.0, start_timeout=5.0)
    transport = reactor.spawnProcess(worker, "mtr-packet", ["mtr-packet"])
    return worker, transport


def send(worker: MtrPacketProcess, sequence: int, timeout: int = 1) -> Deferred[ProbeReply]:
    ticket, result = deferred_ticket(ProbeRequest("203.0.113.7", ttl=3, timeout=timeout))
    worker.send(ticket.request, burns=0, sequence=sequence, udp_ports=(), ticket=ticket)
    return result


def test_version_check_makes_the_process_ready() -> None:
    """The first command is the version check; its answer makes the process ready."""
    reactor, owner = FakeProcessReactor(), RecordingOwner()
    worker, transport = start(reactor, owner)
    assert transport.lines() == ["1 check-support feature version"]
    assert not worker.ready
    transport.answer_version("0.95")
    assert worker.ready
    assert worker.next_sequence == 33000
    assert owner.events == [("ready", "0.95")]


def test_wrong_answer_to_version_check_kills_the_process() -> None:
    """Anything but a version answer means this is not mtr-packet: kill it."""
    reactor, owner = FakeProcessReactor(), RecordingOwner()
    _, transport = start(reactor, owner)
    transport.feed("1 unknown-command\n")
    assert transport.signals == ["KILL"]


def test_no_answer_to_version_check_kills_the_process() -> None:
    """A process that does not answer its version check in time is killed."""
    reactor, owner = FakeProcessReactor(), RecordingOwner()
    worker, transport = start(reactor, owner)
    reactor.advance(5.0)
    assert transport.signals == ["KILL"]
    transport.exit(signal=9)
    assert "no answer to the version check" in owner.events[-1][1]  # type: ignore[operator]
    assert not worker.ready


def test_several_replies_in_one_read_all_arrive() -> None:
    """Replies batched into one read each reach their own probe."""
    reactor, owner = FakeProcessReactor(), RecordingOwner()
    worker, transport = start(reactor, owner)
    transport.answer_version()
    results = [send(worker, 40000 + i) for i in range(3)]
    tokens = [transport.token_of(i) for i in range(3)]
    transport.feed(
        f"{tokens[2]} no-reply\n"
        f"{tokens[0]} ttl-expired ip-4 198.51.100.1 round-trip-time 100\n"
        f"{tokens[1]} reply ip-4 203.0.113.7 round-trip-time 300\n"
    )
    kinds = [r.result.kind for r in results]  # type: ignore[attr-defined]
    assert kinds == [ReplyKind.TTL_EXPIRED, ReplyKind.REPLY, ReplyKind.NO_REPLY]
    assert not worker.pending


def test_a_reply_split_across_reads_is_reassembled() -> None:
    """A line cut in two by the pipe is read whole."""
    reactor, owner = FakeProcessReactor(), RecordingOwner()
    worker, transport = start(reactor, owner)
    transport.answer_version()
    result = send(worker, 40000)
    token = transport.token_of(0)
    transport.feed(f"{token} reply ip-4 203.0")
    assert not result.called
    transport.feed(".113.7 round-trip-time 42\n")
    assert result.result.address == "203.0.113.7"  # type: ignore[attr-defined]


def test_tokens_start_after_the_control_token() -> None:
    """Probes get tokens from 2: 0 marks framing errors and 1 is the control token."""
    reactor, owner = FakeProcessReactor(), RecordingOwner()
    worker, transport = start(reactor, owner)
    transport.answer_version()
    send(worker, 40000)
    send(worker, 40001)
    assert [transport.token_of(0), transport.token_of(1)] == [2, 3]


def test_burns_are_written_before_the_probe() -> None:
    """Burn commands come first, so the probe gets the sequence the pool chose."""
    reactor, owner = FakeProcessReactor(), RecordingOwner()
    worker, transport = start(reactor, owner)
    transport.answer_version()
    worker.send(
        ProbeRequest("203.0.113.7"),
        burns=3,
        sequence=33003,
        udp_ports=(),
        ticket=deferred_ticket(ProbeRequest("203.0.113.7"))[0],
    )
    assert transport.lines()[1:] == [
        "1 send-probe ip-4 burn",
        "1 send-probe ip-4 burn",
        "1 send-probe ip-4 burn",
        "2 send-probe ip-4 203.0.113.7 ttl 255 timeout 10",
    ]
    assert worker.next_sequence == 33004


def test_exit_fails_every_pending_probe_with_the_reason() -> None:
    """When the process dies, each probe it held fails at once, saying how it died."""
    reactor, owner = FakeProcessReactor(), RecordingOwner()
    worker, transport = start(reactor, owner)
    transport.answer_version()
    results = [send(worker, 40000 + i) for i in range(2)]
    transport.exit(signal=9, stderr="mtr-packet: boom\n")
    for result in results:
        failure = result.result  # type: ignore[attr-defined]
        assert failure.check(WorkerDied)
        assert "killed by signal 9" in str(failure.value)
        assert "boom" in str(failure.value)
        result.addErrback(lambda _: None)
    assert owner.events[-1][0] == "exited"


def test_overdue_probe_fails_and_reports_the_process() -> None:
    """A probe not answered within timeout plus grace fails, and the owner hears of it."""
    reactor, owner = FakeProcessReactor(), RecordingOwner()
    worker, transport = start(reactor, owner)
    transport.answer_version()
    result = send(worker, 40000, timeout=1)
    reactor.advance(2.9)
    assert not result.called
    reactor.advance(0.2)
    with pytest.raises(WorkerUnresponsive):
        result.result.raiseException()  # type: ignore[attr-defined]
    result.addErrback(lambda _: None)
    assert owner.events[-1][0] == "unresponsive"


def test_each_probe_has_its_own_deadline_under_one_timer() -> None:
    """Probes with different timeouts, sent at different times, each fail at their own
    deadline; answered probes never fail, and the process keeps a single timer."""
    reactor, owner = FakeProcessReactor(), RecordingOwner()
    worker, transport = start(reactor, owner)
    transport.answer_version()
    slow = send(worker, 40000, timeout=5)  # due at 7
    reactor.advance(1.0)
    fast = send(worker, 40001, timeout=1)  # due at 1 + 3 = 4: earlier than the first
    answered = send(worker, 40002, timeout=1)
    transport.feed(f"{transport.token_of(2)} reply ip-4 203.0.113.7 round-trip-time 100\n")
    assert answered.called
    assert len([c for c in reactor.getDelayedCalls() if c.active()]) == 1
    reactor.advance(2.9)
    assert not fast.called
    reactor.advance(0.2)
    assert fast.called
    assert not slow.called
    reactor.advance(2.8)
    assert not slow.called
    reactor.advance(0.2)
    assert slow.called
    for result in (slow, fast):
        assert result.result.check(WorkerUnresponsive)  # type: ignore[attr-defined]
        result.addErrback(lambda _: None)
    assert [e[0] for e in owner.events].count("unresponsive") == 2
    assert not [c for c in reactor.getDelayedCalls() if c.active()]


def test_answered_probes_do_not_pile_up_in_the_deadline_watch() -> None:
    """Thousands of answered probes leave the watch bounded by what is outstanding."""
    reactor, owner = FakeProcessReactor(), RecordingOwner()
    worker, transport = start(reactor, owner)
    transport.answer_version()
    for i in range(5000):
        send(worker, 40000 + i, timeout=60)
        transport.feed(f"{transport.token_of(i)} no-reply\n")
    assert not worker.pending
    assert len(worker._deadlines) <= 1024 + 1


def test_cancelled_probe_is_still_tracked_until_its_reply() -> None:
    """A caller giving up does not free the probe: mtr-packet still holds its sequence."""
    reactor, owner = FakeProcessReactor(), RecordingOwner()
    worker, transport = start(reactor, owner)
    transport.answer_version()
    result = send(worker, 40000)
    result.cancel()
    result.addErrback(lambda _: None)
    assert worker.pending
    transport.feed(f"{transport.token_of(0)} no-reply\n")
    assert not worker.pending
    assert owner.events[-1] == ("ended", 2)


@pytest.mark.parametrize("line", ["probes-exhausted", "invalid-argument", "gibberish here"])
def test_replies_that_cast_doubt_on_the_counter_are_reported(line: str) -> None:
    """Replies that may come before a sequence was allocated make the owner retire the process."""
    reactor, owner = FakeProcessReactor(), RecordingOwner()
    worker, transport = start(reactor, owner)
    transport.answer_version()
    result = send(worker, 40000)
    transport.feed(f"{transport.token_of(0)} {line}\n")
    assert result.called
    assert owner.events[-1][0] == "doubtful"


def test_framing_error_is_reported() -> None:
    """A token-0 framing error cannot be tied to a probe: the process is doubtful."""
    reactor, owner = FakeProcessReactor(), RecordingOwner()
    _, transport = start(reactor, owner)
    transport.answer_version()
    transport.feed("0 command-parse-error\n")
    assert owner.events[-1][0] == "doubtful"


def test_burn_replies_are_ignored() -> None:
    """The invalid-argument answers to burns reach nobody."""
    reactor, owner = FakeProcessReactor(), RecordingOwner()
    _, transport = start(reactor, owner)
    transport.answer_version()
    transport.feed("1 invalid-argument\n1 invalid-argument\n")
    assert owner.events == [("ready", "0.95")]


def test_retire_closes_stdin() -> None:
    """Retiring closes stdin: mtr-packet finishes its probes and exits by itself."""
    reactor, owner = FakeProcessReactor(), RecordingOwner()
    worker, transport = start(reactor, owner)
    worker.retire()
    assert transport.stdin_closed
    assert transport.signals == []


def test_retire_closes_stdin_once_the_held_probes_are_answered() -> None:
    """A retired process holding probes keeps its stdin until the last one is answered:
    at end of file mtr-packet spins on it until then."""
    reactor, owner = FakeProcessReactor(), RecordingOwner()
    worker, transport = start(reactor, owner)
    transport.answer_version()
    first, second = send(worker, 40000), send(worker, 40001)
    worker.retire()
    assert not transport.stdin_closed
    transport.feed(f"{transport.token_of(0)} reply ip-4 203.0.113.7 round-trip-time 100\n")
    assert not transport.stdin_closed
    transport.feed(f"{transport.token_of(1)} no-reply\n")
    assert transport.stdin_closed
    assert first.called
    assert second.called


def test_exit_hands_the_held_probes_to_the_owner_and_keeps_none() -> None:
    """On exit the process gives its owner the probes it held and holds none itself."""
    reactor, owner = FakeProcessReactor(), LosingOwner()
    worker, transport = start(reactor, owner)
    transport.answer_version()
    d = send(worker, 33000)
    d.addErrback(lambda _: None)
    transport.exit(signal=9)
    assert [p.sequence for p in owner.lost] == [33000]
    assert not worker.pending
    assert worker.state is WorkerState.EXITED
    assert worker.ended.called


def test_a_process_retired_before_its_version_answer_never_becomes_ready() -> None:
    """A version answer after retire leaves the process retiring, and the owner is not told."""
    reactor, owner = FakeProcessReactor(), RecordingOwner()
    worker, transport = start(reactor, owner)
    worker.retire()
    transport.answer_version()
    assert worker.state is WorkerState.RETIRING
    assert not worker.ready
    assert owner.events == []


class LosingOwner(RecordingOwner):
    """Also keeps the probes a process held when it exited."""

    def __init__(self) -> None:
        super().__init__()
        self.lost: list[PendingProbe] = []

    def worker_exited(
        self, worker: MtrPacketProcess, why: str, lost: Sequence[PendingProbe]
    ) -> None:
        self.lost += lost
