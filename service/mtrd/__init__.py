"""mtrd: traceroutes as a REST API, on a supervised pool of mtr-packet processes.

The engine can be used on its own from Twisted code::

    pool = ProbePool(reactor, PoolConfig(size=2))
    await pool.start()
    reply = await pool.probe(ProbeRequest("203.0.113.7", ttl=3))
    await pool.stop()
"""

from mtrd.engine.errors import (
    EngineStartError,
    InvalidProbeRequest,
    NoWorkerAvailable,
    PoolStopped,
    ProbeFailed,
    WorkerDied,
    WorkerUnresponsive,
)
from mtrd.engine.pool import PoolConfig, PoolState, ProbePool
from mtrd.engine.probe import MplsLabel, ProbeReply, ProbeRequest, Protocol, ReplyKind
from mtrd.engine.ticket import ProbeTicket

__all__ = [
    "EngineStartError",
    "InvalidProbeRequest",
    "MplsLabel",
    "NoWorkerAvailable",
    "PoolConfig",
    "PoolState",
    "PoolStopped",
    "ProbeFailed",
    "ProbePool",
    "ProbeReply",
    "ProbeRequest",
    "ProbeTicket",
    "Protocol",
    "ReplyKind",
    "WorkerDied",
    "WorkerUnresponsive",
]
