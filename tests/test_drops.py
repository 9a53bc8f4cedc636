"""The kernel's count of replies dropped at the workers' raw sockets, read from /proc."""

from __future__ import annotations

import os

from mtrd.engine.drops import DropCount, read_tables, socket_drops
from mtrd.engine.pool import PoolConfig, ProbePool
from mtrd.engine.probe import ProbeRequest
from twisted.internet.defer import ensureDeferred
from twisted.logger import globalLogPublisher

from tests.fakes import FakeProcessReactor

HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n"  # noqa: E501


def line(uid: int, inode: int, drops: int) -> str:
    return (
        f"  37: 00000000:0001 00000000:0000 07 00000000:00000000 00:00000000 00000000"
        f" {uid:5d}        0 {inode} 2 000000001db4bc46 {drops}\n"
    )


def test_socket_drops_reads_this_users_sockets_only() -> None:
    """Drops per inode, for the given uid; other users' sockets and odd lines are skipped."""
    table = HEADER + line(0, 11, 5) + line(1000, 12, 7) + line(0, 13, 0) + "  garbage\n"
    assert socket_drops(table, 0) == {11: 5, 13: 0}
    assert socket_drops(table, 1000) == {12: 7}
    assert socket_drops(HEADER, 0) == {}


def test_the_count_keeps_what_closed_sockets_dropped() -> None:
    """Each socket's count only grows while it lives; a retired worker's sockets go and a
    new worker's come with their own counts from 0: the total keeps everything."""
    count = DropCount()
    assert count.observe([(11, 5), (12, 0)]) == 5
    assert count.observe([(11, 9), (12, 2)]) == 6
    assert count.observe([(12, 2), (21, 3)]) == 3  # 11 closed, 21 is new
    assert count.total == 14


def test_read_tables_sums_both_families_and_says_when_it_cannot() -> None:
    """raw and raw6 of the process's namespace; a gone process reads as None."""
    uid = os.getuid()
    files = {
        "/proc/7/net/raw": HEADER + line(uid, 1, 4),
        "/proc/7/net/raw6": HEADER + line(uid, 2, 6),
    }

    def read(path: str) -> str:
        if path not in files:
            raise FileNotFoundError(path)
        return files[path]

    assert read_tables(7, read) == {1: 4, 2: 6}
    assert read_tables(8, read) is None


def pool_reading(files: dict[str, str]) -> tuple[ProbePool, FakeProcessReactor]:
    def read(path: str) -> str:
        if path not in files:
            raise FileNotFoundError(path)
        return files[path]

    reactor = FakeProcessReactor()
    pool = ProbePool(reactor, PoolConfig(size=1, command=("true",)), read_proc=read)
    started = ensureDeferred(pool.start())
    for transport in reactor.spawned:
        transport.answer_version()
    assert started.called
    return pool, reactor


def test_the_pool_counts_drops_across_a_retired_worker() -> None:
    """A retiring worker's sockets are read before they close; its successor's add on;
    a warning says what the drops mean and what to do, once a minute at most."""
    uid = os.getuid()
    files = {
        "/proc/4000/net/raw": HEADER + line(uid, 1, 3),
        "/proc/4000/net/raw6": HEADER,
    }
    pool, reactor = pool_reading(files)
    warnings: list[str] = []

    def observe(event: dict[str, object]) -> None:
        if event.get("log_level") is not None and "dropped" in str(event.get("log_format")):
            warnings.append(str(event.get("total")))

    globalLogPublisher.addObserver(observe)
    try:
        assert pool.reply_drops() == 3
        files["/proc/4000/net/raw"] = HEADER + line(uid, 1, 8)
        pool.worker_doubtful(reactor.spawned[0].protocol, "test")  # type: ignore[arg-type]
        assert pool.reply_drops() == 8  # read as it retired; the new one is not ready yet
        reactor.spawned[1].answer_version()
        files["/proc/4001/net/raw"] = HEADER + line(uid, 2, 1)
        files["/proc/4001/net/raw6"] = HEADER
        assert pool.reply_drops() == 9
        reactor.advance(61)
        files["/proc/4001/net/raw"] = HEADER + line(uid, 2, 4)
        assert pool.reply_drops() == 12
    finally:
        globalLogPublisher.removeObserver(observe)
    assert warnings == ["3", "12"]


def test_without_a_reader_nothing_is_read() -> None:
    """A library user's pool reads no /proc file unless given a reader."""
    reactor = FakeProcessReactor()
    pool = ProbePool(reactor, PoolConfig(size=1, command=("true",)))
    ensureDeferred(pool.start())
    reactor.spawned[0].answer_version()
    pool.probe(ProbeRequest("203.0.113.7"))
    assert pool.reply_drops() == 0
