"""The pool: dispatch, sequences, supervision and shutdown, on a fake process reactor."""

from __future__ import annotations

import attrs
import pytest
from mtrd.engine.errors import (
    EngineStartError,
    InvalidProbeRequest,
    NoWorkerAvailable,
    PoolStopped,
    WorkerDied,
    WorkerUnresponsive,
)
from mtrd.engine.fairqueue import Flow
from mtrd.engine.pool import PoolConfig, PoolState, ProbePool
from mtrd.engine.probe import ProbeReply, ProbeRequest, ReplyKind
from twisted.application.service import IService, MultiService
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from zope.interface.verify import verifyObject

from tests.fakes import FakeProcessReactor, FakeProcessTransport

CONFIG = PoolConfig(size=2, command=("true",), spread_above=0)  # spread: both work


def started_pool(
    config: PoolConfig = CONFIG, version: str = "0.95"
) -> tuple[ProbePool, FakeProcessReactor]:
    """A pool whose processes all answered their version check."""
    reactor = FakeProcessReactor()
    pool = ProbePool(reactor, config)
    started = ensureDeferred(pool.start())
    for transport in reactor.spawned:
        transport.answer_version(version)
    assert started.called
    return pool, reactor


def sequences(transport: FakeProcessTransport, start: int = 33000) -> list[int]:
    """The sequence each real probe got, replaying the counter over burns and probes."""
    counter, result = start, []
    for line in transport.lines():
        if " send-probe " not in line:
            continue
        if not line.endswith(" burn"):
            result.append(counter)
        counter += 1
    return result


def reply(transport: FakeProcessTransport, index: int, text: str = "no-reply") -> None:
    transport.feed(f"{transport.token_of(index)} {text}\n")


def result_of(d: Deferred[ProbeReply]) -> ProbeReply:
    assert d.called
    value = d.result  # type: ignore[attr-defined]
    assert isinstance(value, ProbeReply), value
    return value


def failure_of(d: Deferred[ProbeReply]) -> BaseException:
    assert d.called
    failures: list[BaseException] = []
    d.addErrback(lambda f: failures.append(f.value))
    assert failures
    return failures[0]


async def test_start_spawns_the_configured_command() -> None:
    """start() runs the configured command once per slot, wrapper included."""
    reactor = FakeProcessReactor()
    pool = ProbePool(reactor, PoolConfig(size=3, command="true netns exec lab mtr-packet"))
    started = ensureDeferred(pool.start())
    assert [t.args for t in reactor.spawned] == [["true", "netns", "exec", "lab", "mtr-packet"]] * 3
    assert not started.called
    reactor.spawned[1].answer_version()
    assert started.called
    assert pool.ready_workers == 1


async def test_missing_binary_fails_start_clearly() -> None:
    """A command that is not on PATH makes start() raise an error naming it."""
    pool = ProbePool(FakeProcessReactor(), PoolConfig(command=("no-such-mtr-packet",)))
    with pytest.raises(EngineStartError, match="'no-such-mtr-packet' not found"):
        await pool.start()


def test_every_worker_failing_at_start_fails_start() -> None:
    """When each process exits before answering, start() fails with what they said."""
    reactor = FakeProcessReactor()
    pool = ProbePool(reactor, CONFIG)
    started = ensureDeferred(pool.start())
    for transport in reactor.spawned:
        transport.exit(status=1, stderr="mtr-packet: Failure to open IPv4 sockets\n")
    error = failure_of(started)  # type: ignore[arg-type]
    assert isinstance(error, EngineStartError)
    assert "Failure to open IPv4 sockets" in str(error)


def test_probe_gets_its_reply() -> None:
    """A probe is written to a process and its Deferred fires with the reply."""
    pool, reactor = started_pool()
    d = pool.probe(ProbeRequest("203.0.113.7", ttl=2))
    transport = next(t for t in reactor.spawned if t.probe_lines())
    reply(transport, 0, "ttl-expired ip-4 198.51.100.1 round-trip-time 250")
    assert result_of(d).address == "198.51.100.1"
    assert pool.outstanding == 0


def test_probes_spread_over_processes() -> None:
    """With spread_above 0, probes go to the least-loaded process."""
    pool, reactor = started_pool()
    for _ in range(4):
        pool.probe(ProbeRequest("203.0.113.7"))
    assert [len(t.probe_lines()) for t in reactor.spawned] == [2, 2]


def test_probes_pack_into_the_first_process_until_it_holds_spread_above() -> None:
    """Each process in turn takes probes until it holds ``spread_above``; beyond that
    they go to the least loaded; and the first takes them again once it has room."""
    pool, reactor = started_pool(attrs.evolve(CONFIG, spread_above=3))
    for _ in range(3):
        pool.probe(ProbeRequest("203.0.113.7"))
    assert [len(t.probe_lines()) for t in reactor.spawned] == [3, 0]
    for _ in range(4):
        pool.probe(ProbeRequest("203.0.113.7"))
    assert [len(t.probe_lines()) for t in reactor.spawned] == [4, 3]
    first = reactor.spawned[0]
    for index in range(3):
        reply(first, index, "no-reply")
    pool.probe(ProbeRequest("203.0.113.7"))  # the first holds 1 again: it takes the next
    assert [len(t.probe_lines()) for t in reactor.spawned] == [5, 3]


def test_by_default_the_second_process_takes_probes_only_once_the_first_is_full() -> None:
    """Every raw socket receives every reply: the default keeps one process busy until it
    holds max_outstanding, so two never fill each other's receive buffers at ordinary loads."""
    config = PoolConfig(size=2, command=("true",))
    assert config.spread_above >= config.max_outstanding
    pool, reactor = started_pool(config)
    for _ in range(config.max_outstanding):
        pool.probe(ProbeRequest("203.0.113.7"))
    assert [len(t.probe_lines()) for t in reactor.spawned] == [config.max_outstanding, 0]
    pool.probe(ProbeRequest("203.0.113.7"))
    assert [len(t.probe_lines()) for t in reactor.spawned] == [config.max_outstanding, 1]


def test_each_slot_counts_in_its_own_band() -> None:
    """Processes are burned up to their band, so their sequences never meet."""
    pool, reactor = started_pool()
    for _ in range(6):
        pool.probe(ProbeRequest("203.0.113.7"))
    first, second = (sequences(t) for t in reactor.spawned)
    bands = [slot.band for slot in pool._slots]
    assert first == [bands[0].start + i for i in range(3)]
    assert second == [bands[1].start + i for i in range(3)]
    assert first[0] == 33434  # 0.95 counts from 33000: 434 burned


def test_a_ready_process_is_burned_to_its_band_before_any_probe() -> None:
    """The burns happen when a process is ready, not on the way of its first probe;
    and the burn replies are not mistaken for anything."""
    pool, reactor = started_pool()
    bands = [slot.band for slot in pool._slots]
    assert [t.burns() for t in reactor.spawned] == [b.start - 33000 for b in bands]
    assert all(not t.probe_lines() for t in reactor.spawned)
    for transport in reactor.spawned:
        transport.feed("1 invalid-argument\n" * transport.burns())
    assert pool.ready_workers == 2
    pool.probe(ProbeRequest("203.0.113.7"))
    pool.probe(ProbeRequest("203.0.113.7"))
    assert [sequences(t) for t in reactor.spawned] == [[b.start] for b in bands]


def test_udp_probe_waits_while_its_fixed_port_is_an_outstanding_sequence() -> None:
    """A udp probe whose port equals a held sequence waits until that probe ends."""
    pool, reactor = started_pool(attrs.evolve(CONFIG, size=1))
    (transport,) = reactor.spawned
    pool.probe(ProbeRequest("203.0.113.7"))  # takes sequence 33434
    udp = pool.probe(ProbeRequest("203.0.113.8", protocol="udp", port=33434, local_port=40000))
    assert len(transport.probe_lines()) == 1
    assert pool.queued == 1
    reply(transport, 0)
    assert len(transport.probe_lines()) == 2
    assert not udp.called


def test_a_cancelled_udp_probe_waiting_for_its_port_is_never_sent() -> None:
    """Cancelling a udp probe that waits for its fixed port takes it out for good."""
    pool, reactor = started_pool(attrs.evolve(CONFIG, size=1))
    (transport,) = reactor.spawned
    pool.probe(ProbeRequest("203.0.113.7"))
    udp = pool.probe(ProbeRequest("203.0.113.8", protocol="udp", port=33434, local_port=40000))
    udp.cancel()
    assert pool.queued == 0
    reply(transport, 0)
    assert len(transport.probe_lines()) == 1
    assert isinstance(failure_of(udp), CancelledError)


def test_a_udp_probe_waiting_for_its_port_gives_up_after_queue_timeout() -> None:
    """A udp probe whose port stays held fails with NoWorkerAvailable after queue_timeout."""
    pool, reactor = started_pool(attrs.evolve(CONFIG, size=1))
    pool.probe(ProbeRequest("203.0.113.7", timeout=60))
    udp = pool.probe(ProbeRequest("203.0.113.8", protocol="udp", port=33434, local_port=40000))
    reactor.advance(CONFIG.queue_timeout)
    assert isinstance(failure_of(udp), NoWorkerAvailable)
    assert pool.queued == 0


def test_udp_probes_waiting_for_ports_are_not_retried_on_every_probe() -> None:
    """Probes that wait for a held port are passed over until it is released, not tried again."""
    pool, _reactor = started_pool(attrs.evolve(CONFIG, size=1))
    pool.probe(ProbeRequest("203.0.113.7", timeout=60))
    for _ in range(50):
        pool.probe(ProbeRequest("203.0.113.8", protocol="udp", port=33434, local_port=40000))
    tried = 0
    dispatch = pool._dispatch

    def counting(*args: object) -> bool:
        nonlocal tried
        tried += 1
        return dispatch(*args)  # type: ignore[arg-type]

    pool._dispatch = counting  # type: ignore[method-assign]
    for _ in range(10):
        pool.probe(ProbeRequest("203.0.113.9"))
    assert tried == 10
    assert pool.queued == 50


def test_sequence_equal_to_a_fixed_udp_port_is_skipped() -> None:
    """No probe gets a sequence equal to an outstanding udp probe's fixed port."""
    pool, reactor = started_pool(attrs.evolve(CONFIG, size=1))
    (transport,) = reactor.spawned
    pool.probe(ProbeRequest("203.0.113.8", protocol="udp", port=33435, local_port=40000))
    pool.probe(ProbeRequest("203.0.113.7"))
    assert sequences(transport) == [33434, 33436]


def test_probes_beyond_the_cap_queue_until_one_ends() -> None:
    """Past max_outstanding, probes wait and go as soon as a reply frees room."""
    pool, reactor = started_pool(attrs.evolve(CONFIG, size=1, max_outstanding=2))
    (transport,) = reactor.spawned
    ds = [pool.probe(ProbeRequest("203.0.113.7")) for _ in range(3)]
    assert (len(transport.probe_lines()), pool.queued) == (2, 1)
    reply(transport, 0)
    assert (len(transport.probe_lines()), pool.queued) == (3, 0)
    assert not ds[2].called


def test_tcp_has_its_own_cap() -> None:
    """tcp probes, which each hold a socket in mtr-packet, stop at max_tcp_outstanding."""
    pool, reactor = started_pool(attrs.evolve(CONFIG, size=1, max_tcp_outstanding=1))
    (transport,) = reactor.spawned
    pool.probe(ProbeRequest("203.0.113.7", protocol="tcp", port=80))
    pool.probe(ProbeRequest("203.0.113.7", protocol="tcp", port=80))
    pool.probe(ProbeRequest("203.0.113.7"))
    assert len(transport.probe_lines()) == 1
    assert pool.queued == 2


def test_cancelled_queued_probe_is_never_sent() -> None:
    """Cancelling a queued probe removes it from the queue."""
    pool, reactor = started_pool(attrs.evolve(CONFIG, size=1, max_outstanding=1))
    (transport,) = reactor.spawned
    pool.probe(ProbeRequest("203.0.113.7"))
    queued = pool.probe(ProbeRequest("203.0.113.8"))
    queued.cancel()
    assert isinstance(failure_of(queued), CancelledError)
    reply(transport, 0)
    assert len(transport.probe_lines()) == 1


def test_queued_probe_gives_up_after_queue_timeout() -> None:
    """A probe that no process takes within queue_timeout fails with NoWorkerAvailable."""
    pool, reactor = started_pool(attrs.evolve(CONFIG, size=1, max_outstanding=1))
    pool.probe(ProbeRequest("203.0.113.7", timeout=60))
    queued = pool.probe(ProbeRequest("203.0.113.8"))
    reactor.advance(30)
    assert isinstance(failure_of(queued), NoWorkerAvailable)


def test_killed_worker_fails_its_probes_and_is_restarted() -> None:
    """A process killed under load fails its probes at once and comes back after back-off."""
    pool, reactor = started_pool()
    ds = [pool.probe(ProbeRequest("203.0.113.7")) for _ in range(4)]
    victim = reactor.spawned[0]
    victim.exit(signal=9)
    died = [failure_of(d) for d, t in zip(ds, [0, 1, 0, 1], strict=True) if t == 0]
    assert all(isinstance(e, WorkerDied) and "killed by signal 9" in str(e) for e in died)
    assert pool.outstanding == 2
    assert len(reactor.spawned) == 2
    reactor.advance(0.1)
    assert len(reactor.spawned) == 3
    reactor.spawned[2].answer_version()
    assert pool.ready_workers == 2
    assert pool.restarts == 1


def test_restart_back_off_doubles_and_resets_after_stable_uptime() -> None:
    """Quick repeated deaths double the delay; a process that ran long resets it."""
    pool, reactor = started_pool(attrs.evolve(CONFIG, size=1))
    delays = []
    for _ in range(4):
        reactor.live()[0].exit(status=1)
        restart = pool._slots[0].restart
        assert restart is not None
        delays.append(round(restart.getTime() - reactor.seconds(), 3))
        reactor.advance(restart.getTime() - reactor.seconds())
        reactor.spawned[-1].answer_version()
    assert delays == [0.1, 0.2, 0.4, 0.8]
    reactor.advance(10)
    reactor.live()[0].exit(status=1)
    restart = pool._slots[0].restart
    assert restart is not None
    assert round(restart.getTime() - reactor.seconds(), 3) == 0.1


def test_queued_probes_fail_when_the_last_worker_dies() -> None:
    """With no process left, queued probes fail at once rather than wait."""
    pool, reactor = started_pool(attrs.evolve(CONFIG, size=1, max_outstanding=1))
    pool.probe(ProbeRequest("203.0.113.7")).addErrback(lambda _: None)
    queued = pool.probe(ProbeRequest("203.0.113.8"))
    reactor.spawned[0].exit(signal=9)
    error = failure_of(queued)
    assert isinstance(error, NoWorkerAvailable)
    assert "every mtr-packet worker is down" in str(error)


def test_probe_fails_fast_when_no_worker_can_start() -> None:
    """When every restart fails before the version check, new probes fail at once."""
    pool, reactor = started_pool(attrs.evolve(CONFIG, size=1))
    reactor.spawned[0].exit(status=1)
    reactor.advance(0.1)
    reactor.spawned[1].exit(status=127, stderr="mtr-packet: not found\n")
    error = failure_of(pool.probe(ProbeRequest("203.0.113.7")))
    assert isinstance(error, NoWorkerAvailable)
    assert "not found" in str(error)


def test_unresponsive_worker_is_killed() -> None:
    """A process that sits on a probe past timeout plus grace is killed (SIGKILL)."""
    pool, reactor = started_pool(attrs.evolve(CONFIG, size=1))
    d = pool.probe(ProbeRequest("203.0.113.7", timeout=1))
    reactor.advance(3.0)
    assert isinstance(failure_of(d), WorkerUnresponsive)
    assert reactor.spawned[0].signals == ["KILL"]


def test_a_process_that_keeps_answering_is_not_killed_for_a_late_probe() -> None:
    """A probe past its deadline waits on while its process answers others (a busy host)."""
    pool, reactor = started_pool(attrs.evolve(CONFIG, size=1))
    late = pool.probe(ProbeRequest("203.0.113.7", timeout=1))
    other = pool.probe(ProbeRequest("203.0.113.8", timeout=1))
    reactor.advance(2.5)
    reply(reactor.spawned[0], 1)
    reactor.advance(1.0)
    assert not late.called
    assert reactor.spawned[0].signals == []
    reply(reactor.spawned[0], 0)
    assert result_of(late).kind is ReplyKind.NO_REPLY
    assert result_of(other).kind is ReplyKind.NO_REPLY


def test_a_probe_lost_by_a_talking_process_is_given_up_after_the_patience() -> None:
    """A process that answers others but never this probe is killed after 4 deadlines."""
    pool, reactor = started_pool(attrs.evolve(CONFIG, size=1))
    lost = pool.probe(ProbeRequest("203.0.113.7", timeout=1))
    for index in range(11):
        pool.probe(ProbeRequest("203.0.113.8", timeout=1))
        reactor.advance(1.0)
        reply(reactor.spawned[0], index + 1)
        assert not lost.called
    reactor.advance(1.0)
    assert isinstance(failure_of(lost), WorkerUnresponsive)
    assert reactor.spawned[0].signals == ["KILL"]


class TurnReactor(FakeProcessReactor):
    """Runs one reactor turn's timers at a time: calls scheduled by them wait for the next."""

    def turn(self, seconds: float) -> None:
        """Move time on and run only the calls that were due before the turn began."""
        self.rightNow += seconds
        due = [call for call in self.calls if call.getTime() <= self.rightNow]
        for call in due:
            self.calls.remove(call)
            call.func(*call.args, **call.kw)


def test_an_answer_read_after_a_stalled_turn_beats_the_deadline() -> None:
    """After a stall, a deadline is judged only once the turn's pending reads are in."""
    reactor = TurnReactor()
    pool = ProbePool(reactor, attrs.evolve(CONFIG, size=1))
    ensureDeferred(pool.start())
    reactor.spawned[0].answer_version()
    d = pool.probe(ProbeRequest("203.0.113.7", timeout=1))
    reactor.turn(10.0)  # the reactor was stalled; the answer waits in the pipe
    reply(reactor.spawned[0], 0)  # the same turn's reads
    reactor.turn(0)
    assert result_of(d).kind is ReplyKind.NO_REPLY
    assert reactor.spawned[0].signals == []


def test_a_late_deadline_timer_gives_grace_and_a_silent_process_is_killed_after() -> None:
    """A timer that ran late (mtrd stalled) gives grace more; still silent then: killed."""
    reactor = TurnReactor()
    pool = ProbePool(reactor, attrs.evolve(CONFIG, size=1))
    ensureDeferred(pool.start())
    reactor.spawned[0].answer_version()
    d = pool.probe(ProbeRequest("203.0.113.7", timeout=1))
    reactor.turn(10.0)
    reactor.turn(0)
    assert not d.called
    assert reactor.spawned[0].signals == []
    reactor.turn(2.0)
    reactor.turn(0)
    assert isinstance(failure_of(d), WorkerUnresponsive)
    assert reactor.spawned[0].signals == ["KILL"]


def test_band_end_retires_the_process_and_a_fresh_one_takes_over() -> None:
    """Before its counter leaves the band, a process is retired and replaced."""
    pool, reactor = started_pool(attrs.evolve(CONFIG, size=16))
    band = pool._slots[0].band
    old = reactor.spawned[0]
    for index in range(band.usable):
        pool.probe(ProbeRequest("203.0.113.7"))
        reply(old, index)
    assert sequences(old) == list(range(band.start, band.stop))
    assert not old.stdin_closed
    pool.probe(ProbeRequest("203.0.113.7"))
    assert old.stdin_closed
    assert len(reactor.spawned) == 17
    assert len(reactor.spawned[1].probe_lines()) == 1
    reactor.spawned[16].answer_version()
    pool.probe(ProbeRequest("203.0.113.7"))
    assert sequences(reactor.spawned[16]) == [band.start]


def test_a_successor_is_spawned_in_the_last_quarter_of_the_band() -> None:
    """A process whose counter enters its band's last quarter gets a successor, still working."""
    pool, reactor = started_pool(attrs.evolve(CONFIG, size=16))
    band = pool._slots[0].band
    old = reactor.spawned[0]
    early = band.stop - band.usable // 4 - band.start
    for index in range(early):
        pool.probe(ProbeRequest("203.0.113.7"))
        reply(old, index)
    assert len(reactor.spawned) == 16
    pool.probe(ProbeRequest("203.0.113.7"))
    assert len(reactor.spawned) == 17
    assert not old.stdin_closed
    assert len(old.probe_lines()) == early + 1


def test_a_ready_successor_takes_over_and_the_old_process_drains() -> None:
    """Once the successor answers, it gets the probes and the old process is retired."""
    pool, reactor = started_pool(attrs.evolve(CONFIG, size=16))
    band = pool._slots[0].band
    old = reactor.spawned[0]
    for index in range(band.usable - band.usable // 4 + 1):
        pool.probe(ProbeRequest("203.0.113.7"))
        reply(old, index)
    held = pool.probe(ProbeRequest("203.0.113.7"))
    successor = reactor.spawned[16]
    successor.answer_version()
    assert pool.ready_workers == 16
    pool.probe(ProbeRequest("203.0.113.7"))
    assert sequences(successor) == [band.start]
    # Its stdin stays open while it holds a probe (at end of file, mtr-packet would spin).
    assert not old.stdin_closed
    reply(old, band.usable - band.usable // 4 + 1, "reply ip-4 203.0.113.7 round-trip-time 9")
    assert result_of(held).kind is ReplyKind.REPLY
    assert old.stdin_closed


def test_slots_running_out_of_their_bands_together_never_leave_the_pool_unready() -> None:
    """Two processes reaching their bands' ends at once: a ready process at every probe."""
    pool, reactor = started_pool(CONFIG)
    band = pool._slots[0].band
    results = []
    for _ in range(band.usable + 10):
        # Two probes outstanding at once land on the two slots, which count up together.
        pair = [pool.probe(ProbeRequest("203.0.113.7")) for _ in range(2)]
        results.extend(pair)
        assert pool.ready_workers == 2
        for transport in reactor.live():
            for token in list(transport.protocol.pending):  # type: ignore[attr-defined]
                transport.feed(f"{token} no-reply\n")
            if transport.protocol.version is None and not transport.stdin_closed:  # type: ignore[attr-defined]
                reactor.advance(0.05)  # a successor starts up in a moment
                transport.answer_version()
    assert reactor.spawned[0].stdin_closed
    assert reactor.spawned[1].stdin_closed
    assert all(result_of(d).kind is ReplyKind.NO_REPLY for d in results)


def test_a_successor_that_dies_before_it_is_ready_leaves_the_old_process_working() -> None:
    """A successor that exits unready is not respawned per probe; the old process keeps going."""
    pool, reactor = started_pool(attrs.evolve(CONFIG, size=16))
    band = pool._slots[0].band
    old = reactor.spawned[0]
    for index in range(band.usable - band.usable // 4 + 1):
        pool.probe(ProbeRequest("203.0.113.7"))
        reply(old, index)
    reactor.spawned[16].exit(status=1)
    d = pool.probe(ProbeRequest("203.0.113.7"))
    assert len(reactor.spawned) == 17
    assert not old.stdin_closed
    assert pool.restarts == 0
    reply(old, band.usable - band.usable // 4 + 1)
    assert result_of(d).kind is ReplyKind.NO_REPLY


def test_a_process_that_dies_while_its_successor_starts_is_replaced_by_it() -> None:
    """The successor takes the slot of an active process that dies, with no extra restart."""
    pool, reactor = started_pool(attrs.evolve(CONFIG, size=16))
    band = pool._slots[0].band
    old = reactor.spawned[0]
    for index in range(band.usable - band.usable // 4 + 1):
        pool.probe(ProbeRequest("203.0.113.7"))
        reply(old, index)
    old.exit(signal=9)
    reactor.advance(60)
    assert len(reactor.spawned) == 17
    reactor.spawned[16].answer_version()
    assert pool.ready_workers == 16
    assert pool.workers()[0]["pid"] == reactor.spawned[16].pid


def test_draining_process_still_delivers_replies() -> None:
    """A retired process keeps answering the probes it holds."""
    pool, reactor = started_pool(attrs.evolve(CONFIG, size=1))
    d = pool.probe(ProbeRequest("203.0.113.7"))
    old = reactor.spawned[0]
    reply(old, 0, "probes-exhausted")  # doubt: retire
    assert old.stdin_closed
    assert len(reactor.spawned) == 2
    d2 = pool.probe(ProbeRequest("203.0.113.7"))
    reactor.spawned[1].answer_version()
    new = reactor.spawned[1]
    reply(new, 0, "reply ip-4 203.0.113.7 round-trip-time 9")
    assert result_of(d).kind is ReplyKind.PROBES_EXHAUSTED
    assert result_of(d2).kind is ReplyKind.REPLY
    old.exit()
    assert pool.restarts == 0


def test_icmp_id_collision_replaces_the_new_process() -> None:
    """A process whose pid agrees with a live one in 16 bits is retired and replaced."""
    reactor = FakeProcessReactor()
    pool = ProbePool(reactor, CONFIG)
    reactor.next_pid = 70000
    started = ensureDeferred(pool.start())
    # 70000 and 70001; force the next spawn to collide with 70000 (70000 + 65536).
    reactor.next_pid = 70000 + 65536
    reactor.spawned[0].answer_version()
    reactor.spawned[1].exit(status=1)
    reactor.advance(0.1)
    assert reactor.spawned[2].stdin_closed
    assert len(reactor.spawned) == 4
    assert started.called


def test_source_address_per_family_is_applied() -> None:
    """Configured sources are used for probes that name none."""
    config = attrs.evolve(CONFIG, size=1, source_ipv4="198.51.100.2", source_ipv6="2001:db8:1::2")
    pool, reactor = started_pool(config)
    pool.probe(ProbeRequest("203.0.113.7"))
    pool.probe(ProbeRequest("2001:db8:ff::7"))
    pool.probe(ProbeRequest("203.0.113.7", source="198.51.100.99"))
    lines = reactor.spawned[0].probe_lines()
    assert "local-ip-4 198.51.100.2" in lines[0]
    assert "local-ip-6 2001:db8:1::2" in lines[1]
    assert "local-ip-4 198.51.100.99" in lines[2]


async def test_stop_drains_then_kills_stragglers() -> None:
    """stop() fails the queue, closes stdin once a process holds no probe, and kills what
    has not exited after the grace."""
    pool, reactor = started_pool(attrs.evolve(CONFIG, max_outstanding=1))
    pool.probe(ProbeRequest("203.0.113.7")).addErrback(lambda _: None)
    pool.probe(ProbeRequest("203.0.113.7")).addErrback(lambda _: None)
    queued = pool.probe(ProbeRequest("203.0.113.7"))
    stopped = ensureDeferred(pool.stop())
    assert isinstance(failure_of(queued), PoolStopped)
    assert not any(t.stdin_closed for t in reactor.spawned)  # each holds its probe
    reply(reactor.spawned[0], 0)
    assert reactor.spawned[0].stdin_closed
    reactor.spawned[0].exit()
    assert not stopped.called
    reactor.advance(5.0)
    assert reactor.spawned[1].signals == ["KILL"]
    reactor.spawned[1].exit(signal=9)
    assert stopped.called
    assert isinstance(failure_of(pool.probe(ProbeRequest("203.0.113.7"))), PoolStopped)


def stop_now(pool: ProbePool, reactor: FakeProcessReactor) -> None:
    """Stop the pool, its processes exiting as soon as stdin closes."""
    stopped = pool.stopService()
    for transport in reactor.live():
        transport.exit()
    assert stopped.called
    assert pool.state is PoolState.STOPPED


def test_a_pool_stopped_and_started_again_probes() -> None:
    """After stop and start, the new processes take probes and their replies arrive."""
    pool, reactor = started_pool()
    stop_now(pool, reactor)
    started = pool.started()
    assert isinstance(failure_of(started), PoolStopped)  # type: ignore[arg-type]
    pool.startService()
    assert [t.ended for t in reactor.spawned] == [True, True, False, False]
    for transport in reactor.live():
        transport.answer_version()
    assert pool.started().called
    assert pool.ready_workers == 2
    d = pool.probe(ProbeRequest("203.0.113.7"))
    transport = next(t for t in reactor.live() if t.probe_lines())
    reply(transport, 0, "reply ip-4 203.0.113.7 round-trip-time 90")
    assert result_of(d).kind is ReplyKind.REPLY


def test_start_while_stopping_spawns_new_processes_beside_the_draining_ones() -> None:
    """startService during a stop starts fresh processes; the stop ends with the old ones."""
    pool, reactor = started_pool(attrs.evolve(CONFIG, size=1))
    old = reactor.spawned[0]
    held = pool.probe(ProbeRequest("203.0.113.7"))
    stopped = pool.stopService()
    pool.startService()
    reactor.spawned[1].answer_version()
    fresh = pool.probe(ProbeRequest("203.0.113.8"))
    assert len(reactor.spawned[1].probe_lines()) == 1
    reply(old, 0, "reply ip-4 203.0.113.7 round-trip-time 90")
    old.exit()
    assert stopped.called
    assert pool.state is PoolState.RUNNING
    assert result_of(held).kind is ReplyKind.REPLY
    reply(reactor.spawned[1], 0, "reply ip-4 203.0.113.8 round-trip-time 90")
    assert result_of(fresh).kind is ReplyKind.REPLY


def test_pool_starts_and_stops_inside_a_multiservice() -> None:
    """The pool provides IService and starts and stops with its parent."""
    reactor = FakeProcessReactor()
    pool = ProbePool(reactor, CONFIG)
    assert verifyObject(IService, pool)
    parent = MultiService()
    pool.setServiceParent(parent)
    parent.startService()
    assert pool.running
    assert len(reactor.spawned) == 2
    stopped = parent.stopService()
    for transport in reactor.live():
        transport.exit()
    assert stopped.called
    assert not pool.running
    assert pool.state is PoolState.STOPPED


def test_stop_before_any_process_is_ready_fails_started() -> None:
    """A pool stopped while starting fails started() with PoolStopped."""
    reactor = FakeProcessReactor()
    pool = ProbePool(reactor, CONFIG)
    starting = ensureDeferred(pool.start())
    pool.stopService()
    assert isinstance(failure_of(starting), PoolStopped)  # type: ignore[arg-type]


def test_probe_on_a_pool_never_started_fails_its_deferred() -> None:
    """probe() before start does not raise: its Deferred fails with PoolStopped."""
    pool = ProbePool(FakeProcessReactor(), CONFIG)
    assert isinstance(failure_of(pool.probe(ProbeRequest("203.0.113.7"))), PoolStopped)


def test_probe_the_pool_cannot_send_fails_its_deferred() -> None:
    """A request made invalid by the pool's source (wrong family) fails, never raises."""
    pool, _ = started_pool(attrs.evolve(CONFIG, source_ipv4="2001:db8::2"))
    error = failure_of(pool.probe(ProbeRequest("203.0.113.7")))
    assert isinstance(error, InvalidProbeRequest)
    assert error.field == "source"


def test_probe_after_a_failed_start_fails_its_deferred_with_no_worker() -> None:
    """Once no process could start, probe() fails with NoWorkerAvailable saying why."""
    reactor = FakeProcessReactor()
    pool = ProbePool(reactor, CONFIG)
    pool.startService()
    for transport in reactor.spawned:
        transport.exit(status=1, stderr="mtr-packet: Failure to open IPv4 sockets\n")
    assert pool.state is PoolState.FAILED
    error = failure_of(pool.probe(ProbeRequest("203.0.113.7")))
    assert isinstance(error, NoWorkerAvailable)
    assert "Failure to open IPv4 sockets" in str(error)


def test_config_rejects_nonsense() -> None:
    """Pool sizes and caps outside what mtr-packet allows are refused."""
    with pytest.raises(ValueError, match="pool size"):
        PoolConfig(size=0)
    with pytest.raises(ValueError, match="max_outstanding"):
        PoolConfig(max_outstanding=1024)
    with pytest.raises(ValueError, match="empty"):
        PoolConfig(command="")


def test_start_without_raw_socket_permission_says_how_to_grant_it() -> None:
    """mtr-packet refused its raw sockets: the start error names CAP_NET_RAW, setcap, getcap."""
    reactor = FakeProcessReactor()
    pool = ProbePool(reactor, CONFIG)
    started = ensureDeferred(pool.start())
    for transport in reactor.spawned:
        transport.exit(
            status=1,
            stderr="mtr-packet: Failure to open IPv4 sockets: Permission denied\n"
            "mtr-packet: Failure to open IPv6 sockets: Permission denied\n",
        )
    error = str(failure_of(started))  # type: ignore[arg-type]
    assert "Failure to open IPv4 sockets: Permission denied" in error
    assert "setcap cap_net_raw+ep $(command -v mtr-packet)" in error
    assert "getcap" in error
    assert "run mtrd as root" in error
    assert "--cap-add NET_RAW" in error


def test_start_where_mtr_packet_may_not_be_executed_names_net_raw() -> None:
    """exec refused (file capability outside the bounding set): the error says add NET_RAW."""
    reactor = FakeProcessReactor()
    reactor.spawn_error = PermissionError(1, "Operation not permitted", "/usr/bin/mtr-packet")
    pool = ProbePool(reactor, CONFIG)
    error = str(failure_of(ensureDeferred(pool.start())))  # type: ignore[arg-type]
    assert "Operation not permitted: '/usr/bin/mtr-packet'" in error
    assert "--cap-add NET_RAW" in error
    assert "CapabilityBoundingSet" in error


def test_an_exit_that_is_not_about_permissions_gets_no_advice() -> None:
    """Other start failures say what mtr-packet said and nothing about capabilities."""
    reactor = FakeProcessReactor()
    pool = ProbePool(reactor, CONFIG)
    started = ensureDeferred(pool.start())
    for transport in reactor.spawned:
        transport.exit(status=127, stderr="sh: mtr-packet: not found\n")
    error = str(failure_of(started))  # type: ignore[arg-type]
    assert "not found" in error
    assert "NET_RAW" not in error


def answer_every_tick(
    reactor: FakeProcessReactor, transport: FakeProcessTransport, until: list[Deferred[ProbeReply]]
) -> int:
    """Answer every written probe each 10 ms tick; the ticks until ``until`` all fired."""
    answered = ticks = 0
    while not all(d.called for d in until):
        written = len(transport.probe_lines())
        for index in range(answered, written):
            reply(transport, index)
        answered = written
        reactor.advance(0.01)
        ticks += 1
        assert ticks < 10_000
    return ticks


def test_a_small_flow_is_served_beside_huge_ones() -> None:
    """Round robin between flows: 10 probes queued behind 27 x 100 finish in about 10 x 28
    sends, not after the 2,700 that came first."""
    pool, reactor = started_pool(attrs.evolve(CONFIG, size=1, max_outstanding=4))
    (transport,) = reactor.spawned
    for heavy in range(27):
        for ttl in range(1, 101):
            pool.probe(ProbeRequest("203.0.113.7", ttl=ttl), Flow(f"heavy-{heavy}"))
    small = [pool.probe(ProbeRequest("203.0.113.9", ttl=t), Flow("small")) for t in range(1, 11)]
    ticks = answer_every_tick(reactor, transport, small)
    assert ticks <= 10 * 28 // 4 + 2
    assert pool.queued > 2000  # the heavy flows still wait: the small one did not
    # wait for them


def test_probes_without_a_flow_keep_their_order() -> None:
    """Probes that name no flow leave the queue first come, first served, as before."""
    pool, reactor = started_pool(attrs.evolve(CONFIG, size=1, max_outstanding=1))
    (transport,) = reactor.spawned
    for ttl in (1, 2, 3):
        pool.probe(ProbeRequest("203.0.113.7", ttl=ttl))
    for index in range(2):
        reply(transport, index)
    assert [line.split(" ttl ")[1].split()[0] for line in transport.probe_lines()] == [
        "1",
        "2",
        "3",
    ]


def test_queued_probes_are_counted_per_group() -> None:
    """The pool says how many probes of a group's flows wait."""
    pool, _ = started_pool(attrs.evolve(CONFIG, size=1, max_outstanding=1))
    pool.probe(ProbeRequest("203.0.113.7"))
    for key in ("a", "b"):
        pool.probe(ProbeRequest("203.0.113.7"), Flow(key, group="alice"))
    cancelled = pool.probe(ProbeRequest("203.0.113.7"), Flow("c", group="bob"))
    cancelled.cancel()
    cancelled.addErrback(lambda _: None)
    assert (pool.queued_in("alice"), pool.queued_in("bob"), pool.queued) == (2, 0, 2)


def test_a_group_holds_at_most_its_share_of_the_slots() -> None:
    """A group at its share of the slots waits, and another group's probe goes at once."""
    pool, reactor = started_pool(
        attrs.evolve(CONFIG, size=1, max_outstanding=4, max_group_share=0.5)
    )
    (transport,) = reactor.spawned
    for ttl in range(1, 6):
        pool.probe(ProbeRequest("203.0.113.7", ttl=ttl), Flow("heavy", group="alice"))
    assert (len(transport.probe_lines()), pool.queued_in("alice")) == (2, 3)
    pool.probe(ProbeRequest("203.0.113.9"), Flow("small", group="bob"))
    assert len(transport.probe_lines()) == 3
    reply(transport, 0)  # one of alice's ends: her next one takes its slot
    assert (len(transport.probe_lines()), pool.queued_in("alice")) == (4, 2)


def test_probes_without_a_group_may_use_every_slot() -> None:
    """The share binds groups only: flows without one fill the pool as before."""
    pool, reactor = started_pool(
        attrs.evolve(CONFIG, size=1, max_outstanding=4, max_group_share=0.25)
    )
    (transport,) = reactor.spawned
    for ttl in range(1, 6):
        pool.probe(ProbeRequest("203.0.113.7", ttl=ttl), Flow("trace"))
    assert (len(transport.probe_lines()), pool.queued) == (4, 1)


def test_a_group_gets_its_slots_back_when_its_worker_dies() -> None:
    """Probes lost with a killed process no longer count against their group's share."""
    pool, reactor = started_pool(attrs.evolve(CONFIG, max_outstanding=1, max_group_share=0.5))
    first = pool.probe(ProbeRequest("203.0.113.7"), Flow("t", group="alice"))
    first.addErrback(lambda _: None)
    waiting = pool.probe(ProbeRequest("203.0.113.7"), Flow("t", group="alice"))
    assert pool.queued_in("alice") == 1
    (holder,) = [t for t in reactor.spawned if t.probe_lines()]
    (other,) = [t for t in reactor.spawned if t is not holder]
    holder.exit(signal=9)
    assert pool.queued_in("alice") == 0
    assert len(other.probe_lines()) == 1
    assert not waiting.called
