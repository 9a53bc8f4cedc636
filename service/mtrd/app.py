"""The composition root: builds the pool, the trace jobs and the HTTP site, and wires them.

Only this module (and the ``mtrd trace`` client's entry point) imports the global reactor.
"""

from __future__ import annotations

import errno
import gc
import os
import secrets
import signal
import socket
import sys
from collections.abc import Iterable
from resource import RLIMIT_NOFILE, getrlimit, setrlimit
from typing import Any, Protocol

import attrs
from prometheus_client.core import GaugeMetricFamily, Metric
from twisted.application.service import MultiService, Service
from twisted.internet import endpoints, task, threads
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger, globalLogBeginner
from twisted.python.failure import Failure

from mtrd.annotations.annotator import Annotator
from mtrd.annotations.networks import Loaded, NetworkDatabase
from mtrd.annotations.reverse import ReverseNames
from mtrd.config import ServeConfig
from mtrd.engine.drops import read_file
from mtrd.engine.errors import EngineStartError
from mtrd.engine.pool import ProbePool
from mtrd.logs import observer
from mtrd.monitors.model import MonitorSpec
from mtrd.monitors.runs import JobsStarter
from mtrd.monitors.service import MonitorService
from mtrd.tracing.jobs import TraceJobs
from mtrd.tracing.multipath.run import MultipathSettings
from mtrd.tracing.redis.settings import RedisStore
from mtrd.tracing.resolution import TargetResolver, dns_resolver
from mtrd.tracing.rounds import RunSettings
from mtrd.tracing.store import TraceStore
from mtrd.tracing.tracer import Tracer
from mtrd.web.access import AccessLog, Edge
from mtrd.web.auth import AuthGuard, BearerAuth
from mtrd.web.connections import EdgeSite, descriptors_needed, fit_descriptors
from mtrd.web.framing import Admission
from mtrd.web.metrics import (
    MeteredProber,
    Metrics,
    counter,
    gauge,
    monitor_metrics,
    webhook_metrics,
)
from mtrd.web.monitor_intake import decode_spec, encode_spec
from mtrd.web.monitor_memory import decode_memory, encode_memory
from mtrd.web.monitor_render import encode_event, monitor_bytes, webhook_body
from mtrd.web.monitors_file import MonitorsFile, file_monitor_id, read_monitors_file
from mtrd.web.routes import Api
from mtrd.webhooks.delivery import WebhookSender
from mtrd.webhooks.http import TreqPoster
from mtrd.webhooks.notify import MonitorWebhooks

log = Logger(namespace="mtrd")
MONITORS_FILE = "monitors-file"


class QuietSite(EdgeSite):
    """The site mtrd serves (:class:`~mtrd.web.connections.EdgeSite`): no twisted.web
    access log (:class:`Edge` writes one line per request), framing errors as
    problem+json, requests admitted before their bodies are read, connections capped.
    The API takes JSON, never form submissions, so twisted.web need not parse each
    POST's Content-Type looking for one."""


def _state_metrics(
    pool: ProbePool, jobs: TraceJobs, store: TraceStore, api: Api
) -> Iterable[Metric]:
    yield gauge("mtrd_traces_running", "Traces probing now", jobs.running_traces)
    yield gauge("mtrd_traces_queued", "Traces waiting for a running slot", jobs.queued)
    yield gauge("mtrd_traces_stored", "Traces in the store", len(store))
    yield counter(
        "mtrd_trace_evictions", "Finished traces evicted at the store cap", store.evictions
    )
    yield from _process_metrics(pool, api)


def _annotation_metrics(annotator: Annotator) -> Iterable[Metric]:
    names = annotator.names
    if names is not None:
        counts = names.counts
        yield counter("mtrd_reverse_dns_lookups", "PTR lookups sent", counts.lookups)
        yield counter("mtrd_reverse_dns_cache_hits", "Names found in the cache", counts.hits)
        yield counter(
            "mtrd_reverse_dns_rejected",
            "PTR answers dropped because they were not a valid hostname",
            counts.rejected,
        )
        yield counter("mtrd_reverse_dns_timeouts", "PTR lookups that timed out", counts.timeouts)
        yield counter(
            "mtrd_reverse_dns_failures",
            "PTR lookups with no name (or a DNS error)",
            counts.failures,
        )
        yield counter(
            "mtrd_reverse_dns_skipped",
            "Addresses not looked up because too many lookups were out",
            counts.skipped,
        )
        yield gauge("mtrd_reverse_dns_cached", "Names (and their absence) cached", len(names))
        yield gauge("mtrd_reverse_dns_in_flight", "PTR lookups out now", names.in_flight)
    for kind, database in (("asn", annotator.asn_db), ("geo", annotator.geo_db)):
        if database is not None:
            yield counter(
                f"mtrd_{kind}_db_reloads", f"Reloads of the {kind} database", database.reloads
            )
            yield counter(
                f"mtrd_{kind}_db_failed_reloads",
                f"Reloads of the {kind} database refused (the data before stays)",
                database.failed_reloads,
            )


def _shared_metrics(pool: ProbePool, runner: Drains, front: Any, api: Api) -> Iterable[Metric]:
    # Queued and stored traces are the deployment's, in Redis: not one replica's to report.
    yield gauge("mtrd_traces_running", "Traces probing now", runner.running_traces)
    yield gauge(
        "mtrd_sse_followed_traces",
        "Traces whose events this replica polls from Redis for its streams",
        front.followed,
    )
    yield from _process_metrics(pool, api)


def _process_metrics(pool: ProbePool, api: Api) -> Iterable[Metric]:
    yield gauge("mtrd_sse_subscribers", "Open event streams", api.sse_subscribers)
    yield gauge(
        "mtrd_workers_ready",
        "mtr-packet workers that answered their version check",
        pool.ready_workers,
    )
    yield counter("mtrd_worker_restarts", "mtr-packet workers restarted after dying", pool.restarts)
    yield counter(
        "mtrd_worker_reply_drops",
        "Replies the kernel dropped at the mtr-packet workers' raw sockets (receive buffer "
        "full): counted as lost probes, though the path lost nothing",
        pool.reply_drops(),
    )
    yield gauge("mtrd_probes_queued", "Probes waiting for a worker", pool.queued)
    outstanding = GaugeMetricFamily(
        "mtrd_worker_outstanding_probes", "Probes held by each worker", labels=["slot"]
    )
    for worker in pool.workers():
        outstanding.add_metric([str(worker["slot"])], worker["outstanding"])
    yield outstanding


def _monitor_state(monitors: MonitorService, webhooks: WebhookSender) -> Iterable[Metric]:
    yield gauge("mtrd_monitors", "Monitors held", len(monitors))
    yield from monitor_metrics(monitors.records())
    yield from webhook_metrics(webhooks)


def _connection_metrics(site: EdgeSite) -> Iterable[Metric]:
    yield gauge("mtrd_http_connections", "Open HTTP connections", site.connections.total)
    yield counter(
        "mtrd_http_connections_refused",
        "HTTP connections refused at a connection cap (answered 503)",
        site.connections.refused,
    )


YOUNG_COLLECTION_EVERY = 50_000
"""Allocations between collections of the young generation (CPython's default: 700).

Under load a trace's run lives through hundreds of default collections: each looked at
its objects again and moved them on, and the old generation they reached grew, which
set off full collections of every stored trace. Nothing a trace makes holds itself in a
cycle (tests check the run, its timers and the stored record), so reference counting
frees it as it ends, and collecting less often leaves no more garbage about. The figures
are in bench/results/peers.md.
"""


def _freeze_start_up() -> None:
    """Freeze what exists once the service is up (modules, the app) out of collections,
    and collect the young generation less often (see :data:`YOUNG_COLLECTION_EVERY`).

    Every collection then looks only at objects made since.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, middle, old)


class Drains(Protocol):
    """What shutting down reads of whatever runs the traces."""

    @property
    def running_traces(self) -> int:
        """Traces running now."""
        ...

    @property
    def stop_grace(self) -> float:
        """Seconds running traces get to finish on shutdown."""
        ...


@attrs.frozen
class _RunnerDrain:
    """The runner of Redis mode, as shutting down reads it."""

    runner: Any
    stop_grace: float

    @property
    def running_traces(self) -> int:
        """Traces this replica runs now."""
        return int(self.runner.running_traces)


class MtrdService(MultiService):
    """Every long-lived part of one mtrd process, started in the order they were added.

    Stopping goes the other way and one at a time (``MultiService`` would stop them
    all at once): readiness turns 503 and new traces are refused, running traces get
    their grace, and only then do the pool and the listener stop.
    """

    def __init__(
        self, api: Api, jobs: Drains, access_log: AccessLog, annotator: Annotator | None = None
    ) -> None:
        super().__init__()
        self.annotator = annotator or Annotator()
        self._api = api
        self._jobs = jobs
        self._access_log = access_log

    def stopService(self) -> Deferred[None]:
        """Drain, then stop each service in reverse order of start."""
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        Service.stopService(self)
        log.info(
            "shutting down: {running} running traces get {grace:g} s",
            running=self._jobs.running_traces,
            grace=self._jobs.stop_grace,
        )
        self._api.draining = True
        for service in reversed(list(self)):
            await maybeDeferred(service.stopService)
        self._access_log.flush()
        log.info("mtrd stopped")


class Listener(Service):
    """Listens on an endpoint while running: start binds, stop unbinds, start binds again.

    A bind that fails at once (a TCP port in use does) raises from :meth:`startService`,
    so the services after it never start. Twisted's ``StreamServerEndpointService``
    cannot listen a second time, hence this one.
    """

    def __init__(self, endpoint: IStreamServerEndpoint, factory: IProtocolFactory) -> None:
        self._endpoint = endpoint
        self._factory = factory
        self._port: IListeningPort | None = None

    def startService(self) -> None:
        """Bind; raise ``CannotListenError`` if the endpoint refuses at once."""
        super().startService()
        refused: list[Failure] = []
        starting = True

        def failed(failure: Failure) -> None:
            if starting:
                refused.append(failure)
            else:
                log.failure("cannot listen", failure)

        self._endpoint.listen(self._factory).addCallbacks(self._listening, failed)
        starting = False
        if refused:
            super().stopService()
            refused[0].raiseException()

    def _listening(self, port: IListeningPort) -> None:
        self._port = port

    def stopService(self) -> Deferred[None]:
        """Stop listening; connections already open are left to finish."""
        super().stopService()
        port, self._port = self._port, None
        stopped = port.stopListening() if port is not None else None
        return stopped if stopped is not None else succeed(None)


def cannot_listen(host: str, port: int, error: CannotListenError) -> str:
    """The one line that says why mtrd could not listen."""
    reason = error.socketError
    if isinstance(reason, OSError) and reason.errno in _LISTEN_ERRORS:
        why = _LISTEN_ERRORS[reason.errno]
    elif isinstance(reason, OSError) and reason.strerror:
        why = reason.strerror.lower()
    else:
        why = str(reason)
    where = f"[{host}]" if ":" in host else host
    return f"mtrd: cannot listen on {where}:{port}: {why}"


_LISTEN_ERRORS = {
    errno.EADDRINUSE: "address in use",
    errno.EADDRNOTAVAIL: "address not available",
    errno.EACCES: "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
}


def replica_id() -> str:
    """This process's name among the replicas, made once at start: host, pid, 4 hex digits
    (a restarted container may reuse its pid)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


def build(reactor: Any, config: ServeConfig) -> tuple[MtrdService, ProbePool]:
    """Every service of ``mtrd serve``, wired and not started: the listener comes first,
    so mtrd binds its port before it starts any mtr-packet."""
    pool = ProbePool(reactor, config.pool, read_proc=read_file)
    metrics = Metrics()
    replica = replica_id()
    resolver = dns_resolver(config.dns_servers)
    annotator = _annotator(reactor, config, resolver)
    target_resolver = TargetResolver(resolver)
    tracer = Tracer(
        reactor,
        MeteredProber(pool, metrics),
        target_resolver,
        settings=RunSettings(name_grace=config.name_grace),
        multipath=MultipathSettings(name_grace=config.name_grace),
        annotator=annotator,
        source_ipv4=config.pool.source_ipv4,
        source_ipv6=config.pool.source_ipv6,
        policy=config.policy,
        vantage=config.vantage,
        replica=replica,
    )
    # The in-memory store and jobs; with Redis they stay empty and are never started
    # (the routes read Redis through SharedTraces, and RedisRunner runs the traces).
    store = TraceStore(reactor, config.store)
    jobs = TraceJobs(
        tracer,
        store,
        max_running=config.max_running,
        max_queued=config.max_queued,
        on_finished=metrics.trace_finished,
        clock=reactor,
        stop_grace=config.shutdown_grace,
        tenant_limits=config.tenant_limits,
    )
    # Monitors run in memory mode (their runs go through the jobs); Redis mode has none yet.
    webhooks = WebhookSender(
        reactor, target_resolver, TreqPoster(reactor), policy=config.webhook_policy
    )
    notifier = MonitorWebhooks(webhooks, webhook_body)
    shared = None
    if isinstance(config.backend, RedisStore):
        shared = _shared_parts(
            reactor, config, tracer=tracer, pool=pool, metrics=metrics, replica=replica
        )
    # Memory mode: runs go through the jobs. Redis mode: through the shared queue, and
    # the monitor service holds the monitors this replica runs (the director's share).
    monitors = MonitorService(
        reactor,
        JobsStarter(jobs) if shared is None else shared.starter,
        notifier=notifier,
        max_monitors=config.max_monitors,
        # In Redis mode the shared monitors hold the per-tenant cap for the deployment.
        max_per_owner=config.tenant_limits.max_monitors if shared is None else None,
        on_started=metrics.run_started,
    )
    shared_monitors = director = None
    if shared is not None:
        shared_monitors, director = _shared_monitors(reactor, config, shared, monitors, replica)
    api = Api(
        pool=pool,
        jobs=jobs,
        store=store,
        clock=reactor,
        metrics=metrics,
        limits=config.limits,
        policy=config.policy,
        vantage=config.vantage,
        shared=None if shared is None else shared.front,
        store_health=None if shared is None else lambda: _replica_health(shared),
        monitors=monitors,
        webhooks=webhooks,
        shared_monitors=shared_monitors,
    )
    auth = BearerAuth(config.auth_tokens, config.auth_open_paths, config.admin_tenants)
    resource: Any = api.resource()
    if auth.enabled:
        resource = AuthGuard(resource, auth)
    access_log = AccessLog(sys.stdout, config.log_format, reactor)
    admission = Admission(authorized=auth.admits, limits=config.limits)
    site = QuietSite(
        Edge(resource, reactor, metrics, access_log), admission=admission, reactor=reactor
    )
    metrics.watch(lambda: _connection_metrics(site))
    endpoint_type = (
        endpoints.TCP6ServerEndpoint if ":" in config.host else endpoints.TCP4ServerEndpoint
    )
    listener = Listener(endpoint_type(reactor, config.port, interface=config.host), site)
    if shared is None:
        metrics.watch(lambda: _state_metrics(pool, jobs, store, api))
        services = MtrdService(api, jobs, access_log, annotator)
        # Stopped in reverse: monitors first (no run starts while the jobs drain), the
        # webhook sender after the jobs (the webhooks of the last traces still go out).
        parts: tuple[Any, ...] = (listener, pool, webhooks, store, jobs)
        metrics.watch(lambda: _monitor_state(monitors, webhooks))
        parts += (monitors, *_monitors_file(reactor, config, monitors))
    else:
        drain = _RunnerDrain(shared.runner, config.shutdown_grace)
        front = shared.front
        metrics.watch(lambda: _shared_metrics(pool, drain, front, api))
        services = MtrdService(api, drain, access_log, annotator)
        metrics.watch(lambda: _monitor_state(monitors, webhooks))
        # Stopped in reverse: the director (its leases handed on), the monitors, the
        # runner (its last writes) and the front's pollers go before the connection, the
        # connection before the pool.
        parts = (listener, pool, shared.connection, shared.front, shared.runner, webhooks)
        parts += (monitors, director, *_monitors_file(reactor, config, monitors, director))
    metrics.watch(lambda: _annotation_metrics(annotator))
    databases = tuple(d for d in (annotator.asn_db, annotator.geo_db) if d is not None)
    for service in (*parts, *databases):
        service.setServiceParent(services)
    return services, pool


def _annotator(reactor: Any, config: ServeConfig, resolver: Any) -> Annotator:
    """Who the responders are: names through ``resolver``, networks from the databases."""

    def watched(loaded: Loaded | None) -> NetworkDatabase | None:
        if loaded is None:
            return None
        return NetworkDatabase(
            loaded,
            reactor,
            off_reactor=lambda read: threads.deferToThreadPool(
                reactor, reactor.getThreadPool(), read
            ),
        )

    names = None
    if config.reverse_dns is not None:
        names = ReverseNames(resolver, reactor, config.reverse_dns)
    return Annotator(names, watched(config.asn_db), watched(config.geo_db))


def _reload_on_hangup(reactor: Any, services: MtrdService) -> None:
    """SIGHUP reloads the AS and geo databases and the monitors file, those there are (a
    signal handler only hands it over to the reactor)."""
    annotator = services.annotator
    databases = [d for d in (annotator.asn_db, annotator.geo_db) if d is not None]
    try:
        monitors_file: MonitorsFile | None = services.getServiceNamed(MONITORS_FILE)
    except KeyError:
        monitors_file = None
    if not databases and monitors_file is None:
        return

    def reload() -> None:
        if databases:
            log.info("SIGHUP: reloading the network databases")
        for database in databases:
            database.reload()
        if monitors_file is not None:
            monitors_file.reload()

    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(reload))


@attrs.frozen
class _SharedParts:
    """What Redis mode adds: the connection, the front the routes use, the runner, and how
    monitors start their runs."""

    connection: Any
    front: Any
    runner: Any
    starter: Any


def _monitors_file(
    reactor: Any, config: ServeConfig, monitors: MonitorService, director: Any = None
) -> tuple[Any, ...]:
    """The service that keeps the monitors file's monitors, when there is a file. With
    Redis, the ``director`` keeps them in Redis at each sync (one replica runs each)."""
    if config.monitors_file is None:
        return ()

    def to_director(specs: list[MonitorSpec]) -> None:
        director.file_monitors = [(file_monitor_id(spec.name), spec) for spec in specs]

    monitors_file = MonitorsFile(
        config.monitors_file,
        monitors,
        lambda path: threads.deferToThreadPool(
            reactor, reactor.getThreadPool(), read_monitors_file, path
        ),
        apply=None if director is None else to_director,
    )
    monitors_file.setName(MONITORS_FILE)
    return (monitors_file,)


def _shared_monitors(
    reactor: Any, config: ServeConfig, shared: _SharedParts, monitors: MonitorService, replica: str
) -> tuple[Any, Any]:
    """Redis mode's monitors: kept in Redis, and the director of this replica's share."""
    from mtrd.monitors.shared import MonitorDirector, SharedMonitors  # noqa: PLC0415

    kept = SharedMonitors(
        shared.connection,
        encode=encode_spec,
        decode=decode_spec,
        max_monitors=config.max_monitors,
        max_per_owner=config.tenant_limits.max_monitors,
    )
    director = MonitorDirector(
        reactor,
        kept,
        monitors,
        replica=replica,
        vantage=config.vantage,
        render=monitor_bytes,
        encode_memory=encode_memory,
        decode_memory=decode_memory,
        encode_event=encode_event,
    )
    return kept, director


def _replica_health(shared: _SharedParts) -> Any:
    """Redis's health as readiness sees it: until this replica's heartbeat has reached
    Redis, no replica takes it for live, so a load balancer must not send it traffic yet."""
    health = shared.connection.health()
    if not health.ready or shared.runner.registered:
        return health
    return attrs.evolve(
        health, answering=False, last_error="this replica's heartbeat has not reached Redis yet"
    )


def _shared_parts(
    reactor: Any,
    config: ServeConfig,
    *,
    tracer: Tracer,
    pool: ProbePool,
    metrics: Metrics,
    replica: str,
) -> _SharedParts:
    """The Redis services of one replica. Imported here: memory mode loads none of it."""
    from mtrd.monitors.shared import SharedStarter  # noqa: PLC0415
    from mtrd.tracing.redis.connection import RedisConnection  # noqa: PLC0415
    from mtrd.tracing.redis.front import SharedTraces  # noqa: PLC0415
    from mtrd.tracing.redis.queue import RedisWorkQueue  # noqa: PLC0415
    from mtrd.tracing.redis.replicas import RedisReplicas  # noqa: PLC0415
    from mtrd.tracing.redis.runner import RedisRunner  # noqa: PLC0415
    from mtrd.tracing.redis.store import RedisTraceStore  # noqa: PLC0415
    from mtrd.tracing.redis.tenants import RedisTenants  # noqa: PLC0415

    backend = config.backend
    assert isinstance(backend, RedisStore)
    connection = RedisConnection(backend, reactor, reactor)
    trace_store = RedisTraceStore(connection, reactor, config.store)
    replicas = RedisReplicas(connection)
    # The runner's writes (a flush tick sends every running trace's at once) go on a
    # connection of their own: a POST's one call does not wait behind them.
    runs = connection.lane(1)
    runs_store = RedisTraceStore(runs, reactor, config.store)
    runner = RedisRunner(
        reactor,
        tracer,
        runs_store,
        RedisWorkQueue(runs, config.vantage, replica),
        RedisReplicas(runs),
        replica=replica,
        vantage=config.vantage,
        max_running=config.max_running,
        ready=lambda: pool.ready_workers > 0,
        shutdown_grace=config.shutdown_grace,
        store_backlog=config.store_backlog,
        on_finished=metrics.trace_finished,
        tenants=RedisTenants(runs, runs_store, config.tenant_limits),
        probes_waiting=pool.queued_by_group,
    )
    front = SharedTraces(
        redis=connection,
        store=trace_store,
        replicas=replicas,
        new_trace=tracer.new,
        clock=reactor,
        vantage=config.vantage,
        replica=replica,
        max_queued=config.max_queued,
        tenants=RedisTenants(connection, trace_store, config.tenant_limits),
        on_queued=runner.work_queued,
    )
    return _SharedParts(connection, front, runner, SharedStarter(front))


def check_descriptors(config: ServeConfig) -> str | None:
    """Make room for the connection caps under RLIMIT_NOFILE (raising the soft limit when
    the hard one allows); None when they fit, else the line saying why they cannot."""
    needed = descriptors_needed(config.limits.max_connections, config.pool.size)
    problem = fit_descriptors(
        needed,
        lambda: getrlimit(RLIMIT_NOFILE),
        lambda soft, hard: setrlimit(RLIMIT_NOFILE, (soft, hard)),
    )
    return None if problem is None else f"mtrd: {problem}"


async def serve(reactor: Any, config: ServeConfig) -> None:
    """Start every service; on shutdown, drain and stop them cleanly."""
    too_few = check_descriptors(config)
    if too_few is not None:
        print(too_few, file=sys.stderr)
        raise SystemExit(1)
    services, pool = build(reactor, config)
    try:
        services.startService()
    except CannotListenError as e:
        print(cannot_listen(config.host, config.port, e), file=sys.stderr)
        raise SystemExit(1) from None
    try:
        await pool.started()
    except EngineStartError as e:
        await services.stopService()
        print(f"mtrd: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    if not config.auth_tokens and config.host not in ("127.0.0.1", "::1", "localhost"):
        log.warn(
            "auth is off and mtrd listens on {host}: anyone who reaches it can trace",
            host=config.host,
        )
    _reload_on_hangup(reactor, services)
    _freeze_start_up()
    # The store as RedisStore.display shows it: the password is masked.
    log.info(
        "mtrd listening on {host}:{port}, store {store}, vantage {vantage}",
        host=config.host,
        port=config.port,
        store=str(config.backend),
        vantage=config.vantage,
    )
    done: Deferred[None] = Deferred()

    async def shutdown() -> None:
        await services.stopService()
        done.callback(None)

    reactor.addSystemEventTrigger("before", "shutdown", lambda: Deferred.fromCoroutine(shutdown()))
    await done


def run(config: ServeConfig) -> None:
    """Run ``mtrd serve`` with ``config`` on the global reactor until it is stopped."""
    globalLogBeginner.beginLoggingTo(
        [observer(sys.stdout, config.log_format)], redirectStandardIO=False
    )
    task.react(lambda reactor: Deferred.fromCoroutine(serve(reactor, config)))
