"""Prometheus metrics: counters fed as things happen, gauges read at scrape time.

Each :class:`Metrics` has its own registry, so tests and several services in one
process never share counters. The engine and the trace logic know nothing of
it: :class:`MeteredProber` wraps the pool, the jobs report finished traces, and
the HTTP edge reports requests.

Counting sits on the hot path (several counts per probe, two per request), and
everything counts on the reactor thread: so the counts are plain numbers in
dicts (:class:`Tally`, :class:`Buckets`), turned into metric families only when
``/metrics`` is scraped, rather than prometheus_client's thread-safe children,
which take a lock per increment.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from mtrd.engine.fairqueue import Flow
from mtrd.engine.probe import ProbeReply, ProbeRequest, Protocol, ReplyKind
from mtrd.engine.ticket import Outcome, ProbeTicket
from mtrd.monitors.alerts import destination_hop
from mtrd.monitors.model import AlertKind, DeliveryStatus, RunResult
from mtrd.monitors.service import MonitorRecord
from mtrd.tracing.model import Trace
from mtrd.tracing.rounds import Prober
from mtrd.webhooks.delivery import WebhookSender

RTT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LATENESS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

Labels = tuple[str, ...]
METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)


def method_label(method: str) -> str:
    """The method as a label value: a standard method's name, else ``other`` (a client
    may send any token as a method, and each label value is kept for good)."""
    return method if method in METHODS else "other"


class _StateCollector(Collector):
    """Metrics computed when scraped."""

    def __init__(self, read: Callable[[], Iterable[Metric]]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        return self._read()


class Tally:
    """A labelled counter: one number per label values, counted without locks."""

    def __init__(self, name: str, documentation: str, labels: Labels) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self.counts: dict[Labels, float] = {}

    def inc(self, values: Labels, amount: float = 1.0) -> None:
        """Add ``amount`` to the count of ``values`` (one value per label)."""
        counts = self.counts
        counts[values] = counts.get(values, 0.0) + amount

    def family(self) -> CounterMetricFamily:
        """The counter as scraped."""
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for values, count in sorted(self.counts.items()):
            family.add_metric(list(values), count)
        return family


class Buckets:
    """A labelled histogram: counts per bucket, a sum and a total per label values."""

    def __init__(
        self, name: str, documentation: str, labels: Labels, bounds: tuple[float, ...]
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self.bounds = bounds
        self.series: dict[Labels, tuple[list[int], list[float]]] = {}

    def observe(self, values: Labels, value: float) -> None:
        """Count ``value`` in the first bucket whose upper bound is at least ``value``."""
        series = self.series.get(values)
        if series is None:
            series = self.series[values] = ([0] * (len(self.bounds) + 1), [0.0])
        series[0][bisect.bisect_left(self.bounds, value)] += 1
        series[1][0] += value

    def family(self) -> HistogramMetricFamily:
        """The histogram as scraped: cumulative buckets, as Prometheus wants them."""
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        edges = [repr(b) for b in self.bounds] + ["+Inf"]
        for values, (counts, total) in sorted(self.series.items()):
            cumulative, running = [], 0
            for edge, count in zip(edges, counts, strict=True):
                running += count
                cumulative.append((edge, running))
            family.add_metric(list(values), cumulative, sum_value=total[0])
        return family


class Metrics:
    """The service's metrics and the text exposition of them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.traces = Tally("mtrd_traces", "Traces that ended, by final status", ("status",))
        self.probes_sent = Tally("mtrd_probes_sent", "Probes handed to the pool", ("protocol",))
        self.replies = Tally("mtrd_probe_replies", "Probe outcomes by kind", ("kind",))
        self.probe_rtt = Buckets(
            "mtrd_probe_rtt_seconds", "Round-trip time of answered probes", (), RTT_BUCKETS
        )
        self.http_requests = Tally(
            "mtrd_http_requests",
            "HTTP requests by route, method and status",
            ("route", "method", "status"),
        )
        self.http_duration = Buckets(
            "mtrd_http_request_duration_seconds",
            "Time to answer an HTTP request (streams: until they end)",
            ("route",),
            HTTP_BUCKETS,
        )
        self.monitor_lateness = Buckets(
            "mtrd_monitor_run_lateness_seconds",
            "How late monitor runs started after they were due",
            (),
            LATENESS_BUCKETS,
        )
        self._state: list[Callable[[], Iterable[Metric]]] = []
        self._counted = (
            self.traces,
            self.probes_sent,
            self.replies,
            self.probe_rtt,
            self.http_requests,
            self.http_duration,
            self.monitor_lateness,
        )
        self.registry.register(_StateCollector(self._collect))

    def probe_counted(self, protocol: str) -> None:
        """Count one probe handed to the pool."""
        self.probes_sent.inc((protocol,))

    def outcome_counted(self, kind: str, rtt_seconds: float | None = None) -> None:
        """Count one probe outcome (and its round-trip time, when it has one)."""
        self.replies.inc((kind,))
        if rtt_seconds is not None:
            self.probe_rtt.observe((), rtt_seconds)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one HTTP request and its duration; ``route`` is a template (see
        :func:`~mtrd.web.access.route_of`), ``method`` any method (labelled by
        :func:`method_label`)."""
        self.http_requests.inc((route, method_label(method), str(status)))
        self.http_duration.observe((route,), seconds)

    def run_started(self, lateness: float) -> None:
        """Count how late a monitor run started."""
        self.monitor_lateness.observe((), max(0.0, lateness))

    def watch(self, read: Callable[[], Iterable[Metric]]) -> None:
        """Add metrics computed at scrape time."""
        self._state.append(read)

    def trace_finished(self, trace: Trace) -> None:
        """Count a trace that reached its final status."""
        self.traces.inc((trace.status.value,))

    def exposition(self) -> bytes:
        """All metrics in the Prometheus text format."""
        return generate_latest(self.registry)

    def _collect(self) -> Iterable[Metric]:
        for counted in self._counted:
            yield counted.family()
        for read in self._state:
            yield from read()


def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    """One unlabelled gauge."""
    return GaugeMetricFamily(name, documentation, value=value)


def counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    """One unlabelled counter whose total is kept elsewhere."""
    return CounterMetricFamily(name, documentation, value=value)


class MeteredProber:
    """A prober that counts probes and their outcomes on their way through the pool.

    A probe given up by its sender (cancelled) has no outcome to count.
    """

    def __init__(self, prober: Prober, metrics: Metrics) -> None:
        self._prober = prober
        self._metrics = metrics
        # Every probe passes here: the label values are made once, not per probe.
        self._sent = metrics.probes_sent
        self._replies = metrics.replies
        self._rtt = metrics.probe_rtt
        self._protocol_labels = {p: (p.value,) for p in Protocol}
        self._kind_labels = {k: (k.value,) for k in ReplyKind}
        self._count_outcome = self._count  # one bound method, set on every ticket

    def probe(self, request: ProbeRequest, flow: Flow | None = None) -> Deferred[ProbeReply]:
        """Send through the wrapped prober, counting the probe and its outcome."""
        self._metrics.probe_counted(request.protocol.value)
        result = self._prober.probe(request, flow)
        result.addBoth(self._settled)
        return result

    def send(self, *tickets: ProbeTicket) -> None:
        """Send through the wrapped prober, counting each probe and its outcome."""
        sent, labels, count = self._sent, self._protocol_labels, self._count_outcome
        for ticket in tickets:
            sent.inc(labels[ticket.request.protocol])
            ticket.observe = count
        self._prober.send(*tickets)

    def cancel(self, ticket: ProbeTicket) -> None:
        """Give up on the ticket's probe (nothing is counted)."""
        self._prober.cancel(ticket)

    def _settled(self, outcome: ProbeReply | Failure) -> ProbeReply | Failure:
        if isinstance(outcome, Failure):
            if not isinstance(outcome.value, CancelledError):
                self._count(outcome.value)  # type: ignore[arg-type]
        else:
            self._count(outcome)
        return outcome

    def _count(self, outcome: Outcome) -> None:
        if isinstance(outcome, Exception):
            self._metrics.outcome_counted(f"failed:{type(outcome).__name__}")
            return
        self._replies.inc(self._kind_labels[outcome.kind])
        rtt = outcome.rtt_us
        if rtt is not None:
            self._rtt.observe((), rtt / 1e6)


def monitor_metrics(records: Iterable[MonitorRecord]) -> Iterable[Metric]:
    """Per-monitor metrics, read at scrape time. Cardinality is bounded: monitors are
    capped, and hop series by each monitor's TTLs."""
    labels = ["monitor"]
    runs = CounterMetricFamily(
        "mtrd_monitor_runs", "Monitor runs by result", labels=["monitor", "result"]
    )
    reached = GaugeMetricFamily(
        "mtrd_monitor_destination_reached",
        "1 if the last run reached the destination",
        labels=labels,
    )
    loss = GaugeMetricFamily(
        "mtrd_monitor_destination_loss_ratio",
        "Loss at the destination in the last run",
        labels=labels,
    )
    rtt = GaugeMetricFamily(
        "mtrd_monitor_destination_rtt_seconds",
        "Average round-trip time to the destination in the last run",
        labels=labels,
    )
    hop_loss = GaugeMetricFamily(
        "mtrd_monitor_hop_loss_ratio", "Loss at each TTL in the last run", labels=["monitor", "ttl"]
    )
    hop_rtt = GaugeMetricFamily(
        "mtrd_monitor_hop_rtt_seconds",
        "Average round-trip time at each TTL in the last run",
        labels=["monitor", "ttl"],
    )
    changes = CounterMetricFamily(
        "mtrd_monitor_path_changes", "Confirmed path changes", labels=labels
    )
    path = GaugeMetricFamily(
        "mtrd_monitor_path_info", "The current path of each monitor", labels=["monitor", "path_id"]
    )
    alerts = GaugeMetricFamily(
        "mtrd_monitor_alert_firing", "1 while an alert is open", labels=["monitor", "alert"]
    )
    for record in records:
        name = record.spec.name
        for result in RunResult:
            runs.add_metric([name, result.value], record.runs_by_result.get(result, 0))
        changes.add_metric([name], record.path_changes)
        for kind in AlertKind:
            alerts.add_metric([name, kind.value], 1.0 if kind in record.open_alerts else 0.0)
        if record.path.current is not None:
            path.add_metric([name, record.path.current.path_id], 1.0)
        trace = record.last_trace
        if trace is None:
            continue
        hop = destination_hop(trace)
        reached.add_metric([name], 0.0 if hop is None else 1.0)
        loss.add_metric([name], 1.0 if hop is None else hop.loss_pct / 100)
        if hop is not None and hop.rtt_ms.avg is not None:
            rtt.add_metric([name], hop.rtt_ms.avg / 1000)
        for each in trace.hops:
            ttl = str(each.ttl)
            hop_loss.add_metric([name, ttl], each.loss_pct / 100)
            if each.rtt_ms.avg is not None:
                hop_rtt.add_metric([name, ttl], each.rtt_ms.avg / 1000)
    return (runs, reached, loss, rtt, hop_loss, hop_rtt, changes, path, alerts)


def webhook_metrics(sender: WebhookSender) -> Iterable[Metric]:
    """The webhook sender's queue and outcomes, read at scrape time."""
    outcomes = CounterMetricFamily(
        "mtrd_webhook_deliveries",
        "Webhook deliveries that ended, by result (dropped: the queue was full)",
        labels=["result"],
    )
    for status in DeliveryStatus:
        if status is not DeliveryStatus.PENDING:
            outcomes.add_metric([status.value], sender.outcomes.get(status, 0))
    yield outcomes
    yield counter("mtrd_webhook_attempts", "Webhook delivery attempts", sender.attempts)
    yield gauge("mtrd_webhooks_queued", "Webhook deliveries waiting to be sent", sender.queued)
