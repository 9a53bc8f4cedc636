"""The runner side of a replica in Redis mode: heartbeats, claiming, running, reaping.

:class:`RedisRunner` is one ``IService``. While it runs it

- beats every second (:meth:`RedisReplicas.beat`: capacity ``max_running``, the traces it
  runs, ``ready()``), and fences itself: after a whole lease without a beat that reached
  Redis it cancels its own running traces (the other replicas are failing them);
- claims queued traces of its vantage only while it has room, takes each
  (:meth:`RedisTraceStore.take`; a lost race or a cancelled trace is skipped), and runs it
  with the :class:`Tracer`, writing its snapshots and events behind
  (:mod:`mtrd.tracing.redis.writebehind`);
- reaps: lost replicas of its vantage get their running traces failed ``replica_lost``,
  their idle claims are taken over and started here, and they are forgotten.

Stopping it (SIGTERM) stops claiming, gives claimed-but-not-started traces back to the
queue at once, lets running traces finish within ``shutdown_grace`` (then cancels them),
flushes what is held, and removes this replica from Redis.

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

from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime

from mtrd.tracing.model import Trace
from mtrd.tracing.redis.queue import RedisWorkQueue
from mtrd.tracing.redis.replicas import LEASE, RedisReplicas
from mtrd.tracing.redis.store import RedisTraceStore
from mtrd.tracing.tracer import Tracer

BEAT_INTERVAL = 1.0
CLAIM_INTERVAL = 0.1
FLUSH_INTERVAL = 0.05
# How long a running trace's updates are held while Redis does not answer; past it the
# trace ends failed (``store_unavailable``), written once Redis is back.
STORE_BACKLOG = 30.0


class RedisRunner(Service):
    """Runs the traces queued for this replica's vantage; see the module docstring."""

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
