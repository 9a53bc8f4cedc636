"""Rendering: the JSON documents, and reading a stored one back."""

from __future__ import annotations

import json

import attrs
from hypothesis import given
from hypothesis import strategies as st
from mtrd.engine.probe import MplsLabel, Protocol
from mtrd.tracing.model import (
    Hop,
    HopEnd,
    JitterStats,
    Responder,
    RttStats,
    Stop,
    StopReason,
    Trace,
    TraceError,
    TraceRequest,
    TraceStatus,
    TraceTarget,
)
from mtrd.web.render import from_rfc3339, rfc3339, trace_bytes, trace_from_json

from tests.trace_values import multipath_trace, rich_trace

FINAL = Trace(
    id="abcdefghijklmnopqrstuv",
    status=TraceStatus.COMPLETED,
    request=TraceRequest("example.test", protocol=Protocol.UDP, port=33434, size=100),
    target=TraceTarget("example.test", "203.0.113.7", 4),
    created_at=1795000000.125,
    source="198.51.100.2",
    started_at=1795000000.25,
    finished_at=1795000003.5,
    expires_at=1795003603.5,
    destination_reached=True,
    hops=(
        Hop(
            ttl=1,
            responders=(
                Responder("198.51.100.6", 2, (MplsLabel(16001, 0, True, 1),)),
                Responder("198.51.100.10", 1),
            ),
            sent=4,
            received=3,
            lost=1,
            rtt_ms=RttStats(0.125, 0.1, 0.2, 0.375, 0.05),
            jitter_ms=JitterStats(0.0, 0.125, 0.25),
        ),
        Hop(ttl=2, sent=4, lost=4),
        Hop(
            ttl=3,
            responders=(Responder("203.0.113.7", 4),),
            sent=4,
            received=4,
            end=HopEnd.DESTINATION,
            rtt_ms=RttStats(1.0, 1.0, 1.0, 1.0, 0.0),
            jitter_ms=JitterStats(0.0, 0.0, 0.0),
        ),
    ),
    error=TraceError("x", "y"),
)


def test_stored_json_reads_back_into_the_same_trace() -> None:
    """A trace rendered as JSON reads back into the same trace (as the client reads it)."""
    assert trace_from_json(trace_bytes(FINAL)) == FINAL


@given(st.integers(0, 4_000_000_000), st.integers(0, 999))
def test_rfc3339_round_trips_at_millisecond_precision(seconds: int, millis: int) -> None:
    """Times survive rendering and reading back, to the millisecond."""
    moment = seconds + millis / 1000
    text = rfc3339(moment)
    assert text is not None
    assert text.endswith("Z")
    assert round(from_rfc3339(text) or 0.0, 3) == round(moment, 3)


def test_each_hop_says_its_forward_loss() -> None:
    """A silent hop before the destination has 100% loss but 0% forward loss."""
    rendered = json.loads(trace_bytes(rich_trace()))
    assert [(h["loss_pct"], h["forward_loss_pct"]) for h in rendered["hops"]] == [
        (0.0, 0.0),
        (100.0, 0.0),
        (0.0, 0.0),
    ]
    assert rendered["hops"][1]["late"] == 2


def test_a_finished_trace_says_why_it_stopped() -> None:
    """The run's stop reason and its ICMP kind are in the resource; null while running."""
    stopped = attrs.evolve(rich_trace(), stop=Stop(StopReason.UNREACHABLE, "no-route-host"))
    rendered = json.loads(trace_bytes(stopped))
    assert (rendered["stop_reason"], rendered["unreachable_kind"]) == (
        "unreachable",
        "no-route-host",
    )
    running = json.loads(trace_bytes(attrs.evolve(stopped, status=TraceStatus.RUNNING)))
    assert running["stop_reason"] is None


def test_a_trace_that_failed_before_probing_stops_with_error() -> None:
    """With no run to say why, a failed trace's stop reason comes from its status."""
    failed = attrs.evolve(rich_trace(), status=TraceStatus.FAILED)
    assert json.loads(trace_bytes(failed))["stop_reason"] == "error"


def test_a_multipath_trace_reads_back_from_its_json() -> None:
    """trace_from_json restores mode, confidence, links and flows (rounded as rendered)."""
    trace = multipath_trace()
    assert trace_from_json(trace_bytes(trace)) == trace
