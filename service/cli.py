"""The ``mtrd`` command and the composition root: the only place that imports the reactor."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from twisted.internet import endpoints, task
from twisted.internet.defer import Deferred
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver
from twisted.names import client
from twisted.web.server import Site

from service.config import ServeConfig, parse_serve_args
from service.errors import EngineStartError
from service.http import Api
from service.jobs import TraceJobs
from service.pool import ProbePool
from service.resolve import TargetResolver
from service.store import TraceStore
from service.tracer import Tracer

log = Logger()

USAGE = """usage: mtrd serve [--help] [options]     run the service
       mtrd trace TARGET [--help] [options]  run a trace on a server and follow it"""


async def serve(reactor: Any, config: ServeConfig) -> None:
    """Start the pool and the HTTP site; return when the reactor shuts down."""
    pool = ProbePool(reactor, config.pool)
    try:
        await pool.start()
    except EngineStartError as e:
        print(f"mtrd: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    store = TraceStore(reactor, config.store)
    tracer = Tracer(
        reactor,
        pool,
        TargetResolver(client.createResolver(servers=list(config.dns_servers) or None)),
        source_ipv4=config.pool.source_ipv4,
        source_ipv6=config.pool.source_ipv6,
    )
    jobs = TraceJobs(tracer, store, max_running=config.max_running)
    api = Api(pool=pool, jobs=jobs, store=store, clock=reactor)
    site = Site(api.app.resource())
    endpoint_type = (
        endpoints.TCP6ServerEndpoint if ":" in config.host else endpoints.TCP4ServerEndpoint
    )
    listening = await endpoint_type(reactor, config.port, interface=config.host).listen(site)
    log.info("mtrd listening on {host}:{port}", host=config.host, port=config.port)
    done: Deferred[None] = Deferred()

    async def shutdown() -> None:
        await listening.stopListening()
        await pool.stop()
        done.callback(None)

    reactor.addSystemEventTrigger("before", "shutdown", lambda: Deferred.fromCoroutine(shutdown()))
    await done


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``mtrd`` with ``argv`` (default: the command line)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        raise SystemExit(0 if args else 2)
    command, rest = args[0], args[1:]
    if command == "trace":
        from service.client import main as trace_main  # noqa: PLC0415 - keeps serve's start lean

        raise SystemExit(trace_main(rest))
    if command != "serve":
        print(f"mtrd: unknown command {command!r}\n{USAGE}", file=sys.stderr)
        raise SystemExit(2)
    config = parse_serve_args(rest)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    task.react(lambda reactor: Deferred.fromCoroutine(serve(reactor, config)))
