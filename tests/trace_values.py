"""Hypothesis strategies for trace values, and one rich example trace."""

from __future__ import annotations

import attrs
from hypothesis import strategies as st
from mtrd.annotations.model import Annotation, DatabaseInfo, Sources
from mtrd.engine.probe import MplsLabel, Protocol
from mtrd.tracing.model import (
    FlowHop,
    FlowPath,
    Hop,
    HopEnd,
    JitterStats,
    MultipathResult,
    PathLink,
    Responder,
    RttStats,
    Stop,
    StopReason,
    Trace,
    TraceError,
    TraceMode,
    TraceRequest,
    TraceStatus,
    TraceTarget,
)
from mtrd.tracing.wait import WaitRule

_floats = st.floats(min_value=0, max_value=1e6, allow_nan=False)
_maybe_float = st.none() | _floats
_small = st.integers(min_value=0, max_value=10_000)
_text = st.text(max_size=40)

mpls_labels = st.builds(
    MplsLabel,
    label=st.integers(0, 2**20 - 1),
    traffic_class=st.integers(0, 7),
    bottom_of_stack=st.booleans(),
    ttl=st.integers(0, 255),
)
annotations = st.none() | st.builds(
    Annotation,
    hostname=st.none() | _text,
    verified=st.none() | st.booleans(),
    asn=st.none() | st.integers(1, 2**32 - 1),
    as_name=st.none() | _text,
    prefix=st.none() | _text,
    country=st.none() | _text,
)
hops = st.builds(
    Hop,
    ttl=st.integers(1, 255),
    responders=st.lists(
        st.builds(Responder, address=_text, replies=_small, mpls=st.tuples() | st.lists(
            mpls_labels, max_size=3).map(tuple), annotation=annotations),
        max_size=3,
    ).map(tuple),
    sent=_small,
    received=_small,
    lost=_small,
    rtt_ms=st.builds(RttStats, _maybe_float, _maybe_float, _maybe_float, _maybe_float,
                     _maybe_float),
    jitter_ms=st.builds(JitterStats, _maybe_float, _maybe_float, _maybe_float),
    end=st.none() | st.sampled_from(HopEnd),
    late=_small,
)  # fmt: skip
traces = st.builds(
    Trace,
    id=st.text(min_size=1, max_size=30),
    status=st.sampled_from(TraceStatus),
    request=st.builds(
        TraceRequest,
        target=_text,
        ip_version=st.none() | st.sampled_from([4, 6]),
        protocol=st.sampled_from(Protocol),
        port=st.none() | st.integers(1, 65535),
        first_ttl=st.integers(1, 255),
        max_ttl=st.integers(1, 255),
        probes=st.integers(1, 100),
        interval=_floats,
        timeout=st.integers(1, 60),
        size=st.none() | st.integers(0, 9000),
        tos=st.none() | st.integers(0, 255),
        wait=st.builds(WaitRule, here=st.floats(0, 100), near=st.floats(0, 100)),
    ),
    target=st.builds(TraceTarget, input=_text, address=st.none() | _text,
                     ip_version=st.none() | st.sampled_from([4, 6])),
    created_at=_floats,
    source=st.none() | _text,
    started_at=_maybe_float,
    finished_at=_maybe_float,
    expires_at=_maybe_float,
    destination_reached=st.booleans(),
    hops=st.lists(hops, max_size=4).map(tuple),
    error=st.none() | st.builds(TraceError, type=_text, message=_text),
    vantage=_text,
    replica=st.none() | _text,
    annotations=st.builds(
        Sources,
        asn_db=st.none() | st.builds(DatabaseInfo, type=_text, built_at=_floats),
        geo_db=st.none() | st.builds(DatabaseInfo, type=_text, built_at=_floats),
    ),
    stop=st.none() | st.builds(Stop, reason=st.sampled_from(StopReason),
                               unreachable=st.none() | st.sampled_from(["no-route", "host-down"])),
    owner=st.none() | _text,
)  # fmt: skip


def rich_trace(trace_id: str = "t-1", status: TraceStatus = TraceStatus.COMPLETED) -> Trace:
    """A trace with every field set, MPLS labels and Unicode included."""
    return Trace(
        id=trace_id,
        status=status,
        request=TraceRequest(target="example.test", ip_version=6, protocol=Protocol.TCP,
                             port=443, first_ttl=2, max_ttl=20, probes=5, interval=0.25,
                             timeout=3, size=100, tos=16, wait=WaitRule(here=2.5, near=8)),
        target=TraceTarget(input="example.test", address="2001:db8::1", ip_version=6),
        created_at=1_700_000_000.125,
        source="2001:db8::2",
        started_at=1_700_000_000.5,
        finished_at=1_700_000_009.75,
        expires_at=1_700_003_609.75,
        destination_reached=True,
        hops=(
            Hop(ttl=2, responders=(Responder("2001:db8::a", 4, (MplsLabel(16, 0, True, 1),),
                                             Annotation("a.example", True, 64500, "Ëxample",
                                                        "2001:db8::/32", "NL")),
                                   Responder("2001:db8::b", 1)),
                sent=5, received=5, lost=0, rtt_ms=RttStats(1.5, 1.0, 1.25, 2.0, 0.3),
                jitter_ms=JitterStats(0.5, 0.25, 1.0)),
            Hop(ttl=3, responders=(Responder("2001:db8::c", 0),), sent=5, lost=5, late=2),
            Hop(ttl=4, responders=(Responder("2001:db8::1", 5),), sent=5, received=5,
                rtt_ms=RttStats(9.0, 8.0, 8.5, 9.5, 0.5), end=HopEnd.DESTINATION),
        ),
        error=TraceError("résumé", "ünïcode — ok"),
        vantage="fra",
        replica="host-a-41-9f3c",
        annotations=Sources(asn_db=DatabaseInfo("GeoLite2-ASN", 1_699_000_000.0)),
    )  # fmt: skip


def multipath_trace(trace_id: str = "t-mp") -> Trace:
    """A finished multipath trace with links, flows (one with a lost probe) and a stop reason."""
    trace = rich_trace(trace_id)
    return attrs.evolve(
        trace,
        request=attrs.evolve(trace.request, mode=TraceMode.MULTIPATH, confidence=99),
        multipath=MultipathResult(
            confidence=99,
            links=(PathLink(1, "198.51.100.1", "198.51.100.6"),),
            flows=(
                FlowPath(0, 20000, (FlowHop(1, "198.51.100.1", 0.25), FlowHop(2, None, None))),
                FlowPath(1, 20001, (FlowHop(1, "198.51.100.1", 0.5),)),
            ),
            probes_sent=3,
            stop_reason="destination",
            full_mda_hops=(2,),
        ),
    )
