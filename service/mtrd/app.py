"""The composition root: builds the pool, the trace jobs and the HTTP site, and wires them.

Only this module (and the ``mtrd trace`` client's entry point) imports the global reactor.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterable
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from twisted.internet import endpoints, task
from twisted.internet.defer import Deferred
from twisted.logger import Logger, globalLogBeginner
from twisted.web.server import Site

from mtrd.config import ServeConfig
from mtrd.engine.errors import EngineStartError
from mtrd.engine.pool import ProbePool
from mtrd.logs import observer
from mtrd.tracing.jobs import TraceJobs
from mtrd.tracing.resolution import TargetResolver, dns_resolver
from mtrd.tracing.store import TraceStore
from mtrd.tracing.tracer import Tracer
from mtrd.web.access import AccessLog, Edge
from mtrd.web.auth import AuthGuard, BearerAuth
from mtrd.web.framing import ProblemChannel
from mtrd.web.metrics import MeteredProber, Metrics, counter, gauge
from mtrd.web.routes import Api

log = Logger(namespace="mtrd")


class QuietSite(Site):
    """A Site without twisted.web's access log (:class:`Edge` writes one line per request),
    whose framing errors are problem+json (:class:`ProblemChannel`), and which leaves
    request bodies alone: the API takes JSON, never form submissions, so twisted.web
    need not parse each POST's Content-Type looking for one."""

    noisy = False
    protocol = ProblemChannel  # type: ignore[assignment]  # HTTP/1.1 only: no h2 here

    def __init__(self, resource: Any) -> None:
        super().__init__(resource, parsePOSTFormSubmission=False)

    def log(self, request: object) -> None:
        """Leave request logging to the edge."""


def _state_metrics(
    pool: ProbePool, jobs: TraceJobs, store: TraceStore, api: Api
) -> Iterable[Metric]:
    yield gauge("mtrd_traces_running", "Traces probing now", jobs.running)
    yield gauge("mtrd_traces_queued", "Traces waiting for a running slot", jobs.queued)
    yield gauge("mtrd_traces_stored", "Traces in the store", len(store))
    yield counter(
        "mtrd_trace_evictions", "Finished traces evicted at the store cap", store.evictions
    )
    yield gauge("mtrd_sse_subscribers", "Open event streams", api.sse_subscribers)
    yield gauge(
        "mtrd_workers_ready",
        "mtr-packet workers that answered their version check",
        pool.ready_workers,
    )
    yield counter("mtrd_worker_restarts", "mtr-packet workers restarted after dying", pool.restarts)
    yield gauge("mtrd_probes_queued", "Probes waiting for a worker", pool.queued)
    outstanding = GaugeMetricFamily(
        "mtrd_worker_outstanding_probes", "Probes held by each worker", labels=["slot"]
    )
    for worker in pool.workers():
        outstanding.add_metric([str(worker["slot"])], worker["outstanding"])
    yield outstanding


def _freeze_start_up() -> None:
    """Freeze what exists once the service is up (modules, the app) out of collections.

    Every collection then looks only at objects made since. The young generation's
    threshold stays at CPython's default: collecting less often saved CPU under load but
    let memory grow in the soak test (the figures are in bench/results).
    """
    gc.collect()
    gc.freeze()


async def serve(reactor: Any, config: ServeConfig) -> None:
    """Start the pool and the HTTP site; on shutdown, drain and stop cleanly."""
    pool = ProbePool(reactor, config.pool)
    try:
        await pool.start()
    except EngineStartError as e:
        print(f"mtrd: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    metrics = Metrics()
    store = TraceStore(reactor, config.store)
    tracer = Tracer(
        reactor,
        MeteredProber(pool, metrics),
        TargetResolver(dns_resolver(config.dns_servers)),
        source_ipv4=config.pool.source_ipv4,
        source_ipv6=config.pool.source_ipv6,
        policy=config.policy,
    )
    jobs = TraceJobs(
        tracer,
        store,
        max_running=config.max_running,
        max_queued=config.max_queued,
        on_finished=metrics.trace_finished,
    )
    api = Api(
        pool=pool,
        jobs=jobs,
        store=store,
        clock=reactor,
        metrics=metrics,
        limits=config.limits,
        policy=config.policy,
    )
    metrics.watch(lambda: _state_metrics(pool, jobs, store, api))
    auth = BearerAuth(config.auth_tokens, config.auth_open_paths)
    resource: Any = api.app.resource()
    if auth.enabled:
        resource = AuthGuard(resource, auth)
    access_log = AccessLog(sys.stdout, config.log_format, reactor)
    site = QuietSite(Edge(resource, reactor, metrics, access_log))
    if not auth.enabled and config.host not in ("127.0.0.1", "::1", "localhost"):
        log.warn(
            "auth is off and mtrd listens on {host}: anyone who reaches it can trace",
            host=config.host,
        )
    endpoint_type = (
        endpoints.TCP6ServerEndpoint if ":" in config.host else endpoints.TCP4ServerEndpoint
    )
    listening = await endpoint_type(reactor, config.port, interface=config.host).listen(site)
    _freeze_start_up()
    log.info("mtrd listening on {host}:{port}", host=config.host, port=config.port)
    done: Deferred[None] = Deferred()

    async def shutdown() -> None:
        # Readiness turns 503 and new traces are refused while running ones finish.
        log.info(
            "shutting down: {running} running traces get {grace:g} s",
            running=jobs.running,
            grace=config.shutdown_grace,
        )
        api.draining = True
        await jobs.drain(reactor, config.shutdown_grace)
        await listening.stopListening()
        await pool.stop()
        access_log.flush()
        log.info("mtrd stopped")
        done.callback(None)

    reactor.addSystemEventTrigger("before", "shutdown", lambda: Deferred.fromCoroutine(shutdown()))
    await done


def run(config: ServeConfig) -> None:
    """Run ``mtrd serve`` with ``config`` on the global reactor until it is stopped."""
    globalLogBeginner.beginLoggingTo(
        [observer(sys.stdout, config.log_format)], redirectStandardIO=False
    )
    task.react(lambda reactor: Deferred.fromCoroutine(serve(reactor, config)))
