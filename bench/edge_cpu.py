"""CPU per request of mtrd's HTTP path, in one process, no lab and no socket.

Run as ``python -m bench.edge_cpu [COUNT]``. The real site, channel, edge (access log to a
buffer, metrics) and routes answer requests written on one keep-alive connection over a
``StringTransport``; timers run on an epoll reactor instance that is never run or installed
(a test ``Clock`` sorts its calls on every ``callLater``, which would dominate), the network
is the tests' ``FakeNetwork``. Printed, in microseconds of process CPU per request:

- ``post``: ``POST /traces`` with the trace start replaced by one stored record of a trace
  just begun, its 202 body rendered each time: the HTTP work of a POST alone;
- ``get finished``: ``GET /traces/{id}`` of finished traces whose bodies are cached;
- ``get unknown``: ``GET /traces/{id}`` of ids that do not exist (404 problems).

The socket's system calls are not in these figures (``wrk`` against a lab server measures
them: bench/results/peers.md, session 4).
"""

from __future__ import annotations

import gc
import io
import json
import re
import sys
import time
from typing import Any

from mtrd.tracing.jobs import TraceJobs
from mtrd.tracing.model import TraceRequest
from mtrd.tracing.policy import TargetPolicy
from mtrd.tracing.store import StoreLimits, TraceStore
from mtrd.tracing.tracer import Tracer
from mtrd.web.access import AccessLog, Edge
from mtrd.web.connections import EdgeSite
from mtrd.web.metrics import MeteredProber, Metrics
from mtrd.web.routes import Api
from twisted.internet.address import IPv4Address
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.testing import StringTransport

from tests.fakes import FakeNetwork
from tests.test_http import FakePool
from tests.test_jobs import ROUTERS, StaticResolver

REQUEST = {"probes": 3, "interval": 0, "timeout": 1, "max_ttl": 8}


class Connection:
    """One keep-alive connection to an mtrd site built as ``app.build`` builds it."""

    def __init__(self) -> None:
        self.reactor = EPollReactor()  # type: ignore[no-untyped-call]
        self.store = TraceStore(self.reactor, StoreLimits(ttl=600, max_traces=100_000))
        self.store.startService()
        metrics = Metrics()
        tracer = Tracer(
            self.reactor,
            MeteredProber(FakeNetwork(self.reactor, ROUTERS), metrics),  # type: ignore[arg-type]
            StaticResolver(),  # type: ignore[arg-type]
            policy=TargetPolicy(),
            vantage="bench",
            replica="bench-1-beef",
        )
        self.jobs = TraceJobs(tracer, self.store, max_running=100_000, max_queued=100_000)
        self.api = Api(pool=FakePool(), jobs=self.jobs, store=self.store, clock=self.reactor)
        log = AccessLog(io.StringIO(), "json", self.reactor)
        # Before the direct routes, the Api's resource was its Klein app's (for A/B runs).
        resource = getattr(self.api, "resource", None)
        resource = self.api.app.resource() if resource is None else resource()
        edge = Edge(resource, self.reactor, metrics, log)
        site = EdgeSite(edge, reactor=self.reactor)
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert channel is not None
        self.channel = channel
        self.transport = StringTransport()
        channel.makeConnection(self.transport)

    def send(self, raw: bytes) -> bytes:
        """Write one request; what came back."""
        self.channel.dataReceived(raw)
        answer = bytes(self.transport.value())
        self.transport.clear()
        return answer


def post_bytes(target: str) -> bytes:
    body = json.dumps({"target": target, **REQUEST}).encode()
    head = (
        b"POST /traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    return head + body


def trace_id(answer: bytes) -> str:
    """The id in a 202 answer (its body whole or chunked, as older commits wrote it)."""
    found = re.search(rb'"id":"([^"]+)"', answer)
    assert found is not None, answer[:200]
    return found.group(1).decode()


def get_bytes(path: bytes) -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path


def per_request(requests: list[bytes], connection: Connection, expect: bytes) -> float:
    """Microseconds of CPU per request, each answered with status ``expect``."""
    gc.collect()
    started = time.process_time()
    answers = [connection.send(raw) for raw in requests]
    spent = time.process_time() - started
    assert all(a.startswith(b"HTTP/1.1 " + expect) for a in answers), answers[-1][:200]
    return 1e6 * spent / len(requests)


def measure(count: int) -> dict[str, float]:
    """The figures named in the module docstring."""
    connection = Connection()
    ids = [trace_id(connection.send(post_bytes("203.0.113.7"))) for _ in range(count)]
    deadline = time.monotonic() + 30
    while any(not r.trace.status.is_final for r in map(connection.store.get, ids) if r):
        connection.reactor.runUntilCurrent()  # type: ignore[no-untyped-call]
        time.sleep(0.002)
        if time.monotonic() > deadline:
            raise RuntimeError("the traces did not finish")
    gets = [get_bytes(f"/traces/{i}".encode()) for i in ids]
    per_request(gets, connection, b"200")  # renders and caches each finished body
    figures = {
        "get finished": per_request(gets * 3, connection, b"200"),
        "get unknown": per_request(
            [get_bytes(f"/traces/x{i}".encode()) for i in ids], connection, b"404"
        ),
    }
    fresh = trace_id(connection.send(post_bytes("203.0.113.7")))
    record = connection.store.get(fresh)  # as a POST renders it: just begun
    assert record is not None
    api: Any = connection.api

    def stored(_request: TraceRequest, owner: str | None = None) -> Any:  # noqa: ARG001
        api._bodies.forget(record.trace.id)  # rendered each time, as for a new trace
        return record

    connection.jobs.submit = stored  # type: ignore[method-assign]
    figures["post"] = per_request([post_bytes("203.0.113.7")] * count, connection, b"202")
    return figures


if __name__ == "__main__":
    figures = measure(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
    print("  ".join(f"{name} {value:.1f} us" for name, value in figures.items()))
