"""Faults with the real mtr-packet in the lab: workers killed, frozen, or unable to start."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from mtrd.engine.errors import ProbeFailed
from mtrd.engine.pool import PoolConfig, ProbePool
from mtrd.engine.probe import ProbeRequest
from mtrd.tracing.model import TraceRequest, TraceStatus
from mtrd.tracing.resolution import TargetResolver, dns_resolver
from mtrd.tracing.tracer import Tracer
from twisted.internet import reactor as global_reactor
from twisted.internet.task import deferLater

from tests.lab import Lab

pytestmark = pytest.mark.lab
reactor: Any = global_reactor


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


@asynccontextmanager
async def engine(
    lab: Lab, command: list[str] | None = None, size: int = 1
) -> AsyncIterator[ProbePool]:
    pool = ProbePool(
        reactor,
        PoolConfig(
            size=size, command=tuple(command or [*lab.netns_exec("c"), "mtr-packet"]), grace=1.0
        ),
    )
    await pool.start()
    try:
        yield pool
    finally:
        await pool.stop()


def tracer(pool: ProbePool) -> Tracer:
    return Tracer(reactor, pool, TargetResolver(dns_resolver([("127.0.0.1", 9)])))


async def wait_for(condition: Any, limit: float, what: str) -> float:
    started = reactor.seconds()
    while not condition():
        assert reactor.seconds() - started < limit, f"{what} did not happen within {limit} s"
        await sleep(0.02)
    return float(reactor.seconds() - started)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP])
@pytest_twisted.ensureDeferred
async def test_worker_killed_or_frozen_mid_trace(lab: Lab, how: signal.Signals) -> None:
    """The trace still completes, showing the lost probes; the worker is replaced."""
    async with engine(lab) as pool:
        victim = pool.workers()[0]["pid"]
        request = TraceRequest(lab.targets(4)[70], probes=6, interval=0.5, timeout=1, max_ttl=6)
        with lab.silent("r3"):  # TTL 3 probes wait their full second: some are in flight
            running = tracer(pool).trace(request)
            await sleep(0.8)
            os.kill(victim, how)
            try:
                trace = await running
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGKILL)  # a frozen one was killed by the pool
        assert trace.status is TraceStatus.COMPLETED, trace.error
        assert trace.destination_reached
        # Every probe is accounted for: answered, or lost (with the worker, or silently).
        assert all(hop.sent == hop.received + hop.lost for hop in trace.hops)
        assert all(hop.sent == 6 for hop in trace.hops)
        assert pool.restarts >= 1
        assert pool.workers()[0]["pid"] != victim
        assert pool.ready_workers == 1


def switchable_mtr_packet(tmp_path: Path, lab: Lab) -> tuple[list[str], Path]:
    """A wrapper that execs mtr-packet in the lab while a flag file exists, else fails."""
    flag = tmp_path / "enabled"
    flag.touch()
    script = tmp_path / "mtr-packet-switch"
    netns = " ".join(lab.netns_exec("c"))
    script.write_text(
        "#!/bin/sh\n"
        f'[ -e "{flag}" ] || {{ echo "mtr-packet is switched off" >&2; exit 1; }}\n'
        f"exec {netns} mtr-packet\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return [str(script)], flag


@pytest_twisted.ensureDeferred
async def test_every_worker_dead_fails_fast_then_recovers(lab: Lab, tmp_path: Path) -> None:
    """With no worker able to start, probes fail at once saying why; later it recovers alone."""
    command, flag = switchable_mtr_packet(tmp_path, lab)
    async with engine(lab, command, size=2) as pool:
        await wait_for(lambda: pool.ready_workers == 2, 5, "both workers ready")
        flag.unlink()
        for worker in pool.workers():
            os.kill(worker["pid"], signal.SIGKILL)
        await wait_for(lambda: all(w["last_error"] for w in pool.workers()), 5, "restarts failing")
        assert pool.ready_workers == 0
        with pytest.raises(ProbeFailed, match="switched off"):
            await pool.probe(ProbeRequest(lab.targets(4)[1], ttl=4, timeout=1))
        trace = await tracer(pool).trace(TraceRequest(lab.targets(4)[1], probes=1, interval=0))
        assert trace.status is TraceStatus.FAILED
        assert trace.error is not None
        assert trace.error.type == "engine-unavailable"
        flag.touch()
        await wait_for(lambda: pool.ready_workers == 2, 10, "recovery")
        reply = await pool.probe(ProbeRequest(lab.targets(4)[1], ttl=4, timeout=1))
        assert reply.address == lab.targets(4)[1]


@pytest_twisted.ensureDeferred
async def test_dns_server_that_never_answers_fails_in_bounded_time() -> None:
    """A resolver that gets no answer fails the trace with a timeout, within its timeouts."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))  # receives queries, answers none
    try:
        resolver = TargetResolver(dns_resolver([silent.getsockname()]), timeouts=(1, 1))
        tracer = Tracer(reactor, None, resolver)  # type: ignore[arg-type]
        started = reactor.seconds()
        trace = await tracer.trace(TraceRequest("never.mtrd.test", ip_version=4))
        waited = reactor.seconds() - started
    finally:
        silent.close()
    assert trace.status is TraceStatus.FAILED
    assert trace.error is not None
    assert trace.error.type == "dns"
    assert "timed out after 2 s" in trace.error.message
    assert waited < 4
