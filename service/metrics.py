"""Prometheus metrics: counters fed as things happen, gauges read at scrape time.

Each :class:`Metrics` has its own registry, so tests and several services in one
process never share counters. The engine and the trace logic know nothing of
it: :class:`MeteredProber` wraps the pool, the jobs report finished traces, and
the HTTP edge reports requests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.internet.defer import Deferred

from service.probe import ProbeReply, ProbeRequest
from service.runner import Prober
from service.trace import Trace

RTT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _StateCollector(Collector):
    """Gauges and counters whose values live elsewhere, read when scraped."""

    def __init__(self, read: Callable[[], Iterable[Metric]]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        return self._read()


class Metrics:
    """The service's metrics and the text exposition of them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.traces = Counter(
            "mtrd_traces", "Traces that ended, by final status", ["status"], registry=self.registry
        )
        self.probes_sent = Counter(
            "mtrd_probes_sent", "Probes handed to the pool", ["protocol"], registry=self.registry
        )
        self.replies = Counter(
            "mtrd_probe_replies", "Probe outcomes by kind", ["kind"], registry=self.registry
        )
        self.probe_rtt = Histogram(
            "mtrd_probe_rtt_seconds",
            "Round-trip time of answered probes",
            buckets=RTT_BUCKETS,
            registry=self.registry,
        )
        self.http_requests = Counter(
            "mtrd_http_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "mtrd_http_request_duration_seconds",
            "Time to answer an HTTP request (streams: until they end)",
            ["route"],
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )
        self._state: list[Callable[[], Iterable[Metric]]] = []
        self._request_children: dict[tuple[str, str, int], Counter] = {}
        self._duration_children: dict[str, Histogram] = {}
        self._sent_children: dict[str, Counter] = {}
        self._reply_children: dict[str, Counter] = {}
        self.registry.register(_StateCollector(self._collect_state))

    def probe_counted(self, protocol: str) -> None:
        """Count one probe handed to the pool."""
        child = self._sent_children.get(protocol)
        if child is None:
            child = self._sent_children[protocol] = self.probes_sent.labels(protocol)
        child.inc()

    def outcome_counted(self, kind: str) -> None:
        """Count one probe outcome."""
        child = self._reply_children.get(kind)
        if child is None:
            child = self._reply_children[kind] = self.replies.labels(kind)
        child.inc()

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one HTTP request and its duration (label children cached: a hot path)."""
        key = (route, method, status)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self.http_requests.labels(
                route, method, str(status)
            )
        histogram = self._duration_children.get(route)
        if histogram is None:
            histogram = self._duration_children[route] = self.http_duration.labels(route)
        counter.inc()
        histogram.observe(seconds)

    def watch(self, read: Callable[[], Iterable[Metric]]) -> None:
        """Add metrics computed at scrape time."""
        self._state.append(read)

    def trace_finished(self, trace: Trace) -> None:
        """Count a trace that reached its final status."""
        self.traces.labels(trace.status.value).inc()

    def exposition(self) -> bytes:
        """All metrics in the Prometheus text format."""
        return generate_latest(self.registry)

    def _collect_state(self) -> Iterable[Metric]:
        for read in self._state:
            yield from read()


def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    """One unlabelled gauge."""
    return GaugeMetricFamily(name, documentation, value=value)


def counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    """One unlabelled counter whose total is kept elsewhere."""
    return CounterMetricFamily(name, documentation, value=value)


class MeteredProber:
    """A prober that counts probes and their outcomes on their way through the pool."""

    def __init__(self, prober: Prober, metrics: Metrics) -> None:
        self._prober = prober
        self._metrics = metrics

    def probe(self, request: ProbeRequest) -> Deferred[ProbeReply]:
        """Send through the wrapped prober, counting the probe and its outcome."""
        self._metrics.probe_counted(request.protocol.value)
        result = self._prober.probe(request)
        result.addCallbacks(self._replied, self._failed)
        return result

    def _replied(self, reply: ProbeReply) -> ProbeReply:
        self._metrics.outcome_counted(reply.kind.value)
        if reply.rtt_us is not None:
            self._metrics.probe_rtt.observe(reply.rtt_us / 1e6)
        return reply

    def _failed(self, failure: object) -> object:
        name = type(getattr(failure, "value", failure)).__name__
        self._metrics.outcome_counted(f"failed:{name}")
        return failure
