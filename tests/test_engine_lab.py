"""The engine against the real mtr-packet in the network-namespace lab."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from mtrd.engine.drops import read_file
from mtrd.engine.errors import EngineStartError, WorkerDied
from mtrd.engine.fairqueue import Flow
from mtrd.engine.pool import PoolConfig, ProbePool
from mtrd.engine.probe import ProbeReply, ProbeRequest, Protocol, ReplyKind
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from tests.lab import Lab

pytestmark = pytest.mark.lab

reactor: Any = global_reactor
FAMILIES = [4, 6]
PROTOCOLS = [Protocol.ICMP, Protocol.UDP, Protocol.TCP]


@asynccontextmanager
async def running_pool(
    lab: Lab, size: int = 2, read_proc: Any = None, **config: Any
) -> AsyncIterator[ProbePool]:
    """A pool whose mtr-packet runs in the lab's client namespace; always stopped after.

    Probes are spread over every worker (spread_above 0) unless a test says otherwise:
    these tests are about replies finding their probe across processes.
    """
    config.setdefault("spread_above", 0)
    pool = ProbePool(
        reactor,
        PoolConfig(size=size, command=(*lab.netns_exec("c"), "mtr-packet"), **config),
        read_proc=read_proc,
    )
    await pool.start()
    try:
        for _ in range(100):  # start() returns with the first worker ready: wait for all
            if pool.ready_workers == size:
                break
            await sleep(0.02)
        yield pool
    finally:
        await pool.stop()


def request(lab: Lab, target: str, ttl: int, protocol: Protocol, **fields: Any) -> ProbeRequest:
    """A probe as the tests send it: tcp to the open port, udp to a fixed port pair on IPv4."""
    if protocol is Protocol.TCP:
        fields.setdefault("port", lab.open_tcp_port)
    return ProbeRequest(
        target, ttl=ttl, protocol=protocol, timeout=fields.pop("timeout", 2), **fields
    )


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest_twisted.ensureDeferred
async def test_every_ttl_answers_from_the_router_the_topology_says(
    lab: Lab, family: int, protocol: Protocol
) -> None:
    """TTL 1-3 answer ttl-expired from r1, r2a|r2b and r3; TTL 4 is the destination's reply."""
    target = lab.targets(family)[7]
    async with running_pool(lab) as pool:
        replies = [await pool.probe(request(lab, target, ttl, protocol)) for ttl in (1, 2, 3, 4)]
    for ttl, reply in enumerate(replies, start=1):
        expected_kind = ReplyKind.REPLY if ttl == 4 else ReplyKind.TTL_EXPIRED
        assert (reply.kind, ttl) == (expected_kind, ttl), reply.raw
        assert reply.address in lab.expected_responders(family, ttl, target), (ttl, reply.raw)
        assert reply.ip_version == family
        assert reply.rtt_us is not None


@pytest.mark.parametrize("family", FAMILIES)
@pytest_twisted.ensureDeferred
async def test_closed_tcp_port_counts_as_reached(lab: Lab, family: int) -> None:
    """A refused tcp connection is the destination answering: reply from the target."""
    target = lab.targets(family)[3]
    async with running_pool(lab, size=1) as pool:
        reply = await pool.probe(request(lab, target, 10, Protocol.TCP, port=lab.closed_tcp_port))
    assert (reply.kind, reply.address) == (ReplyKind.REPLY, target)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest_twisted.ensureDeferred
async def test_unreachable_prefix_gives_the_routers_no_route(
    lab: Lab, family: int, protocol: Protocol
) -> None:
    """Past r3, the unreachable prefix answers no-route from r3's address."""
    target = lab.unreachable_target(family)
    async with running_pool(lab, size=1) as pool:
        reply = await pool.probe(request(lab, target, 10, protocol))
    assert reply.kind in (ReplyKind.NO_ROUTE, ReplyKind.NO_ROUTE_NETWORK), reply.raw
    assert reply.address == lab.r3_address(family)


@pytest.mark.parametrize("family", FAMILIES)
@pytest_twisted.ensureDeferred
async def test_blackhole_gives_no_reply_after_the_timeout(lab: Lab, family: int) -> None:
    """The blackholed prefix answers nothing: no-reply once the probe's timeout is over."""
    target = lab.blackhole_target(family)
    async with running_pool(lab, size=1) as pool:
        started = reactor.seconds()
        reply = await pool.probe(request(lab, target, 10, Protocol.ICMP, timeout=1))
        waited = reactor.seconds() - started
    assert reply.kind is ReplyKind.NO_REPLY
    assert 0.9 <= waited < 3.0


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_mtr_packet_spins_at_end_of_file_until_its_last_probe_ends(lab: Lab) -> None:
    """Why a retiring worker keeps stdin open while it holds probes: bare mtr-packet with
    its stdin closed and a probe into silence burns a core for the probe's timeout."""
    bare = subprocess.Popen(
        [*lab.netns_exec("c"), "mtr-packet"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert bare.stdin is not None
    bare.stdin.write(f"1 send-probe ip-4 {lab.blackhole_target(4)} ttl 10 timeout 2\n".encode())
    bare.stdin.close()
    time.sleep(1.0)
    spinning = process_cpu_seconds(bare.pid)
    assert bare.stdout is not None
    assert bare.stdout.read() == b"1 no-reply\n"
    bare.wait(timeout=10)
    assert spinning > 0.5, "mtr-packet no longer spins at end of file: the wait can go"


@pytest_twisted.ensureDeferred
async def test_a_stopping_worker_waits_for_its_probe_without_spinning(lab: Lab) -> None:
    """A worker stopping (as one retired) with a probe into silence keeps its stdin open
    until the probe ends, and so idles meanwhile; then it exits."""
    pool = ProbePool(reactor, PoolConfig(size=1, command=(*lab.netns_exec("c"), "mtr-packet")))
    await pool.start()
    pid = pool.workers()[0]["pid"]
    answer = pool.probe(request(lab, lab.blackhole_target(4), 10, Protocol.ICMP, timeout=2))
    stopped = Deferred.fromCoroutine(pool.stop())
    await sleep(1.0)
    idling = process_cpu_seconds(pid)
    reply = await answer
    await stopped
    assert idling < 0.2
    assert reply.kind is ReplyKind.NO_REPLY


async def branches_taken(lab: Lab, pool: ProbePool, probes: list[ProbeRequest]) -> set[str]:
    replies = await _gather([pool.probe(probe) for probe in probes])
    ecmp = lab.ecmp_responders(4)
    assert all(r.kind is ReplyKind.TTL_EXPIRED and r.address in ecmp for r in replies), replies
    return {r.address for r in replies if r.address}


@pytest_twisted.ensureDeferred
async def test_udp_with_fixed_ports_stays_on_one_ecmp_branch(lab: Lab) -> None:
    """A fixed udp 5-tuple keeps every probe on one branch; varying ports use both."""
    targets = lab.targets(4)[:8]
    async with running_pool(lab) as pool:
        for target in targets:
            fixed = [
                request(lab, target, 2, Protocol.UDP, port=33434, local_port=41000)
                for _ in range(12)
            ]
            assert len(await branches_taken(lab, pool, fixed)) == 1
        varying = [request(lab, targets[0], 2, Protocol.UDP) for _ in range(40)]
        assert await branches_taken(lab, pool, varying) == set(lab.ecmp_responders(4))


async def _gather(deferreds: list[Deferred[ProbeReply]]) -> list[ProbeReply]:
    results = await DeferredList(deferreds, consumeErrors=True)
    replies = []
    for ok, value in results:
        if not ok:
            value.raiseException()
        replies.append(value)
    return replies


def misattributions(lab: Lab, probes: list[ProbeRequest], replies: list[Any]) -> list[str]:
    """Every reply that names an address the topology rules out for its probe."""
    wrong = []
    for probe, (ok, reply) in zip(probes, replies, strict=True):
        if not ok:
            wrong.append(f"{probe}: failed {reply.value!r}")
            continue
        if reply.kind is ReplyKind.NO_REPLY:
            continue
        expected = lab.expected_responders(probe.ip_version, probe.ttl, probe.target)
        kind = ReplyKind.REPLY if probe.ttl >= 4 else ReplyKind.TTL_EXPIRED
        if reply.kind is not kind or reply.address not in expected:
            wrong.append(f"{probe.protocol} ttl {probe.ttl} to {probe.target}: {reply.raw}")
    return wrong


def mixed_load(lab: Lab, count: int, seed: int) -> list[ProbeRequest]:
    """icmp, udp and tcp probes to random targets and TTLs, both families."""
    chooser = random.Random(seed)
    probes = []
    for _ in range(count):
        family = chooser.choice(FAMILIES)
        protocol = chooser.choice(PROTOCOLS)
        target = chooser.choice(lab.targets(family))
        ttl = chooser.randint(1, 5)
        fields: dict[str, Any] = {"timeout": 3}
        if protocol is Protocol.UDP and family == 4 and chooser.random() < 0.5:
            fields.update(port=33434 + chooser.randint(0, 3), local_port=41000)
        probes.append(request(lab, target, ttl, protocol, **fields))
    return probes


@pytest_twisted.ensureDeferred
async def test_mixed_load_on_two_workers_has_zero_misattributions(lab: Lab) -> None:
    """Thousands of concurrent icmp/udp/tcp probes on 2 workers: every reply fits the topology."""
    probes = mixed_load(lab, 4000, seed=20261122)
    async with running_pool(lab, size=2) as pool:
        replies = await DeferredList([pool.probe(p) for p in probes], consumeErrors=True)
        assert pool.outstanding == 0
    wrong = misattributions(lab, probes, replies)
    assert wrong == [], f"{len(wrong)} misattributed, e.g. {wrong[:5]}"
    kinds = Counter(reply.kind for ok, reply in replies if ok)
    assert kinds[ReplyKind.NO_REPLY] <= len(probes) // 100, kinds


async def windowed(pool: ProbePool, probes: list[ProbeRequest], window: int) -> list[Any]:
    """Send ``probes`` keeping ``window`` in flight; results in the order of ``probes``."""
    results: list[Any] = [None] * len(probes)
    pending = iter(enumerate(probes))

    async def lane() -> None:
        for index, probe in pending:
            try:
                results[index] = (True, await pool.probe(probe))
            except Exception as e:
                results[index] = (False, Failure(e))

    await DeferredList([Deferred.fromCoroutine(lane()) for _ in range(window)])
    return results


@pytest_twisted.ensureDeferred
async def test_retired_workers_hand_over_without_misattribution(lab: Lab) -> None:
    """Past a band's worth of probes, workers are retired and replaced; replies stay right."""
    probes = mixed_load(lab, 7000, seed=7)
    async with running_pool(lab, size=16) as pool:
        # With 4 in flight, the least-loaded choice keeps to the first 4 slots, so each
        # of them runs through its band (about 1500 sequences) and is retired.
        band = pool._slots[0].band.usable
        before = [w["pid"] for w in pool.workers()]
        replies = await windowed(pool, probes, window=4)
        after = [w["pid"] for w in pool.workers()]
    assert len(probes) > 4 * band
    assert before[:4] != after[:4], "no worker was retired"
    assert pool.restarts == 0
    assert misattributions(lab, probes, replies) == []


@pytest_twisted.ensureDeferred
async def test_kill_9_under_load_fails_fast_and_recovers(lab: Lab) -> None:
    """kill -9 of a worker: its probes fail at once, a new one is ready within a second."""
    async with running_pool(lab, size=2) as pool:
        target = lab.blackhole_target(4)  # probes stay outstanding for their whole timeout
        load = [pool.probe(request(lab, target, 10, Protocol.ICMP, timeout=5)) for _ in range(400)]
        await sleep(0.3)
        victim = pool.workers()[0]["pid"]
        killed_at = reactor.seconds()
        os.kill(victim, signal.SIGKILL)
        results = await DeferredList(load[:], consumeErrors=True, fireOnOneErrback=False)
        failed = [value.value for ok, value in results if not ok]
        assert failed, "no probe failed: the victim held none"
        assert all(isinstance(e, WorkerDied) for e in failed)
        assert all("killed by signal 9" in str(e) for e in failed)
        while pool.ready_workers < 2:
            assert reactor.seconds() - killed_at < 1.0, "no new worker within a second"
            await sleep(0.02)
        assert pool.workers()[0]["pid"] != victim
        later = await _gather(
            [pool.probe(request(lab, lab.targets(4)[1], 4, Protocol.ICMP)) for _ in range(20)]
        )
        assert {r.kind for r in later} == {ReplyKind.REPLY}
        assert pool.restarts == 1


@pytest_twisted.ensureDeferred
async def test_probes_that_failed_with_their_worker_fail_fast(lab: Lab) -> None:
    """Probes held by a killed worker fail within a fraction of their timeout."""
    async with running_pool(lab, size=1) as pool:
        probe = pool.probe(request(lab, lab.blackhole_target(4), 10, Protocol.ICMP, timeout=10))
        await sleep(0.2)
        os.kill(pool.workers()[0]["pid"], signal.SIGKILL)
        started = reactor.seconds()
        with pytest.raises(WorkerDied):
            await probe
        assert reactor.seconds() - started < 1.0


@pytest_twisted.ensureDeferred
async def test_a_pool_stopped_and_started_again_probes_the_real_network(lab: Lab) -> None:
    """stop() then start() on one pool: the new mtr-packet processes answer probes."""
    target = lab.targets(4)[2]
    async with running_pool(lab, size=1) as pool:
        first = await pool.probe(request(lab, target, 10, Protocol.ICMP))
        await pool.stop()
        await pool.start()
        second = await pool.probe(request(lab, target, 10, Protocol.ICMP))
    assert (first.kind, second.kind) == (ReplyKind.REPLY, ReplyKind.REPLY)


@pytest_twisted.ensureDeferred
async def test_missing_mtr_packet_binary_is_a_clear_error_at_start(lab: Lab) -> None:
    """A command that cannot run mtr-packet makes start() fail, saying why."""
    pool = ProbePool(reactor, PoolConfig(command=("/nonexistent/mtr-packet",)))
    with pytest.raises(EngineStartError, match="not found"):
        await pool.start()
    wrapped = ProbePool(
        reactor, PoolConfig(command=(*lab.netns_exec("c"), "/nonexistent/mtr-packet"))
    )
    with pytest.raises(EngineStartError, match="exited with status"):
        await wrapped.start()


def naive_pair_replies(lab: Lab, count: int) -> list[str]:
    """Two bare mtr-packet processes, started together, as a naive pool would run them.

    One holds icmp probes to the blackhole (they can only end in no-reply); the other sends
    tcp probes that expire at r3. Returns the first process's reply lines.
    """
    command = [*lab.netns_exec("c"), "mtr-packet"]
    silent, busy = (
        subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    )
    try:
        blackhole, target = lab.blackhole_target(4), lab.targets(4)[5]
        assert silent.stdin is not None
        assert busy.stdin is not None
        silent.stdin.write(
            "".join(
                f"{t} send-probe ip-4 {blackhole} ttl 10 timeout 4\n" for t in range(2, count + 2)
            )
        )
        silent.stdin.flush()
        # The busy process's replies come back within a millisecond: they can only be taken
        # for the silent process's probes once those are out. Its probes wait 4 s; give
        # it one (a process that starts slowly, under load, steals nothing otherwise).
        time.sleep(1.0)
        busy.stdin.write(
            "".join(
                f"{t} send-probe ip-4 {target} ttl 3 protocol tcp"
                f" port {lab.open_tcp_port} timeout 2\n"
                for t in range(2, count + 2)
            )
        )
        assert silent.stdout is not None
        assert busy.stdout is not None
        busy.stdin.close()
        busy.stdout.read()  # every tcp probe answered while the silent ones were still out
        silent.stdin.close()
        out = silent.stdout.read()
    finally:
        for process in (silent, busy):
            if process.poll() is None:
                process.kill()
                process.wait()
    return out.splitlines()


def test_naive_processes_do_steal_each_others_replies(lab: Lab) -> None:
    """Without the pool's sequence bands, tcp errors land on the other process's probes.

    This shows the hazard (mtr issues #344, #408) is real in the lab, so the next test,
    which runs the same load through the pool, can fail.
    """
    lines = naive_pair_replies(lab, 100)
    stolen = [line for line in lines if f"ttl-expired ip-4 {lab.r3_address(4)}" in line]
    assert len(stolen) > 10, lines[:5]


@pytest_twisted.ensureDeferred
async def test_pool_keeps_tcp_errors_away_from_other_workers_probes(lab: Lab) -> None:
    """The same load through the pool: every blackhole probe ends in no-reply."""
    async with running_pool(lab, size=2, max_outstanding=100) as pool:
        blackhole, target = lab.blackhole_target(4), lab.targets(4)[5]
        silent = [pool.probe(request(lab, blackhole, 10, Protocol.ICMP)) for _ in range(100)]
        busy = [pool.probe(request(lab, target, 3, Protocol.TCP)) for _ in range(100)]
        silent_replies = await _gather(silent)
        busy_replies = await _gather(busy)
    assert {w for w in pool.workers() if w["restarts"]} == set()
    assert Counter(r.kind for r in silent_replies) == {ReplyKind.NO_REPLY: 100}
    assert {r.address for r in busy_replies} == {lab.r3_address(4)}


@contextmanager
def echo_sequences_on_the_wire(lab: Lab) -> Iterator[list[int]]:
    """Capture the ICMP echo requests the client sends; the list fills when the block ends."""
    capture = subprocess.Popen(
        [*lab.netns_exec("c"), "tcpdump", "-i", "any", "-n", "-l", "-v", "icmp[0] == 8"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[int] = []
    try:
        assert capture.stderr is not None
        while "listening" not in (line := capture.stderr.readline()):
            assert line, "tcpdump ended before it listened"
        yield seen
    finally:
        capture.terminate()
        out, _ = capture.communicate(timeout=10)
    seen.extend(sorted(int(part.split()[0].rstrip(",")) for part in out.split(" seq ")[1:]))


@pytest_twisted.ensureDeferred
async def test_sequences_on_the_wire_are_the_ones_the_pool_chose(lab: Lab) -> None:
    """The pool's mirror of mtr-packet's counter is exact: burns move it, probes take it."""
    target = lab.targets(4)[9]
    with echo_sequences_on_the_wire(lab) as seen:
        async with running_pool(lab, size=2) as pool:
            bands = [slot.band for slot in pool._slots]
            for _ in range(5):  # one at a time: always the first slot
                await pool.probe(request(lab, target, 4, Protocol.ICMP))
            await _gather([pool.probe(request(lab, target, 4, Protocol.ICMP)) for _ in range(2)])
            await sleep(0.2)
    first = bands[0].start
    assert seen == [*range(first, first + 6), bands[1].start]


@pytest.mark.parametrize("family", FAMILIES)
@pytest_twisted.ensureDeferred
async def test_silent_router_gives_no_reply_at_its_ttl_only(lab: Lab, family: int) -> None:
    """A router that sends no time-exceeded leaves its TTL unanswered; the others answer."""
    target = lab.targets(family)[11]
    with lab.silent("r3"):
        async with running_pool(lab, size=1) as pool:
            replies = await _gather(
                [
                    pool.probe(request(lab, target, ttl, Protocol.ICMP, timeout=1))
                    for ttl in (1, 2, 3, 4)
                ]
            )
    assert [r.kind for r in replies] == [
        ReplyKind.TTL_EXPIRED,
        ReplyKind.TTL_EXPIRED,
        ReplyKind.NO_REPLY,
        ReplyKind.REPLY,
    ]


@pytest_twisted.ensureDeferred
async def test_a_small_trace_is_served_beside_27_heavy_ones(lab: Lab) -> None:
    """With the real mtr-packet, 10 probes queued behind 27 flows of 100 are all answered
    while most of the 2,700 still wait: the queue takes turns between flows."""
    target = lab.targets(4)[1]
    async with running_pool(lab, size=1, max_outstanding=4) as pool:
        heavy_answered = 0

        def answered(result: object) -> object:
            nonlocal heavy_answered
            heavy_answered += 1
            return result

        heavy = [
            pool.probe(ProbeRequest(target, ttl=4, timeout=2), Flow(f"heavy-{n}")).addBoth(answered)
            for n in range(27)
            for _ in range(100)
        ]
        started = reactor.seconds()
        small = [
            pool.probe(ProbeRequest(target, ttl=4, timeout=2), Flow("small")) for _ in range(10)
        ]
        replies = await DeferredList(small, consumeErrors=True)
        small_seconds = reactor.seconds() - started
        heavy_when_small_done = heavy_answered
        await DeferredList(heavy, consumeErrors=True)
        all_seconds = reactor.seconds() - started
    assert all(ok and reply.kind is ReplyKind.REPLY for ok, reply in replies)
    print(
        f"small trace: {small_seconds:.3f} s, {heavy_when_small_done} heavy probes answered "
        f"by then; all 2,710 probes: {all_seconds:.3f} s"
    )
    assert heavy_when_small_done < 27 * 100 // 2


@pytest_twisted.ensureDeferred
async def test_replies_the_kernel_drops_at_a_raw_socket_are_counted(lab: Lab) -> None:
    """A worker that does not read (stopped) while the other's replies arrive: every raw
    socket receives every reply, so the stopped one's overflows; the pool reports the
    kernel's count of drops, and the probes themselves, all on the first worker, answer."""
    async with running_pool(lab, size=2, read_proc=read_file, spread_above=900) as pool:
        assert pool.reply_drops() == 0
        idle = next(w["pid"] for w in pool.workers() if w["slot"] == 1)
        os.kill(idle, signal.SIGSTOP)
        try:
            target = lab.targets(4)[3]
            probes = [pool.probe(request(lab, target, 4, Protocol.ICMP)) for _ in range(600)]
            replies = await _gather(probes)
            dropped = pool.reply_drops()
        finally:
            os.kill(idle, signal.SIGCONT)
    assert Counter(r.kind for r in replies) == {ReplyKind.REPLY: 600}
    assert dropped > 0
