"""The metrics: lock-free counts turned into Prometheus text when scraped."""

from __future__ import annotations

from mtrd.engine.probe import ReplyKind
from mtrd.tracing.model import Trace, TraceRequest, TraceStatus, TraceTarget
from mtrd.web.metrics import Metrics
from prometheus_client.parser import text_string_to_metric_families


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.exposition().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_counters_count_by_label_values() -> None:
    """Probes by protocol, outcomes by kind, traces by status, requests by route."""
    metrics = Metrics()
    for _ in range(3):
        metrics.probe_counted("icmp")
    metrics.probe_counted("udp")
    metrics.outcome_counted(ReplyKind.NO_REPLY.value)
    trace = Trace(
        id="t",
        status=TraceStatus.COMPLETED,
        request=TraceRequest("203.0.113.7"),
        target=TraceTarget("203.0.113.7"),
        created_at=0.0,
    )
    metrics.trace_finished(trace)
    metrics.observe_request("/traces", "POST", 202, 0.002)
    got = samples(metrics)
    assert got[("mtrd_probes_sent_total", (("protocol", "icmp"),))] == 3
    assert got[("mtrd_probes_sent_total", (("protocol", "udp"),))] == 1
    assert got[("mtrd_probe_replies_total", (("kind", "no-reply"),))] == 1
    assert got[("mtrd_traces_total", (("status", "completed"),))] == 1
    key = (("method", "POST"), ("route", "/traces"), ("status", "202"))
    assert got[("mtrd_http_requests_total", key)] == 1


def test_histograms_are_cumulative_with_sum_and_count() -> None:
    """A value lands in the first bucket whose bound is at least the value (le), and
    every bucket above counts it too, as Prometheus expects."""
    metrics = Metrics()
    for rtt in (0.0005, 0.0007, 0.003, 10.0):
        metrics.outcome_counted("reply", rtt)
    metrics.outcome_counted("no-reply")  # no round-trip time: not observed
    got = samples(metrics)

    def bucket(le: str) -> float:
        return got[("mtrd_probe_rtt_seconds_bucket", (("le", le),))]

    assert bucket("0.0005") == 1
    assert bucket("0.001") == 2
    assert bucket("0.0025") == 2
    assert bucket("0.005") == 3
    assert bucket("5.0") == 3
    assert bucket("+Inf") == 4
    assert got[("mtrd_probe_rtt_seconds_count", ())] == 4
    assert abs(got[("mtrd_probe_rtt_seconds_sum", ())] - 10.0042) < 1e-9
    assert got[("mtrd_probe_replies_total", (("kind", "reply"),))] == 4
