"""The text report: an mtr --report style table of a trace."""

from __future__ import annotations

from mtrd.engine.probe import Protocol
from mtrd.tracing.model import (
    Hop,
    HopEnd,
    Responder,
    RttStats,
    Trace,
    TraceError,
    TraceRequest,
    TraceStatus,
    TraceTarget,
)
from mtrd.web.report import render_report

STARTED = 1_795_000_000.0
V6_ROUTER = "2001:db8:ffff:ffff:ffff:ffff:ffff:fffe"


def answered(ttl: int, *addresses: str, end: HopEnd | None = None) -> Hop:
    """A hop where three probes were sent and answered at 0.1 to 0.2 ms."""
    return Hop(
        ttl=ttl,
        responders=tuple(Responder(address, 3) for address in addresses),
        sent=3,
        received=3,
        lost=0,
        rtt_ms=RttStats(last=0.1, best=0.1, avg=0.13, worst=0.2, stdev=0.04),
        end=end,
    )


def silent(ttl: int) -> Hop:
    """A hop where three probes were sent and all were lost."""
    return Hop(ttl=ttl, sent=3, received=0, lost=3)


def trace(*hops: Hop, error: TraceError | None = None, protocol: Protocol = Protocol.ICMP) -> Trace:
    """A trace of example.org with the given hops."""
    return Trace(
        id="t1",
        status=TraceStatus.FAILED if error else TraceStatus.COMPLETED,
        request=TraceRequest(target="example.org", protocol=protocol),
        target=TraceTarget(input="example.org", address="192.0.2.7", ip_version=4),
        created_at=STARTED,
        started_at=STARTED,
        hops=hops,
        error=error,
    )


def test_header_names_target_protocol_status_and_start() -> None:
    """The first line names input and resolved address, protocol, status and start time."""
    title = render_report(trace(protocol=Protocol.TCP)).splitlines()[0]
    assert "example.org (192.0.2.7)" in title
    assert "tcp port 80" in title
    assert "completed" in title
    assert "Start: 2026-11-18T" in title
    assert title.endswith("+00:00")


def test_columns_in_mtr_order() -> None:
    """The table header has mtr's columns in mtr's order."""
    header = render_report(trace(answered(1, "198.51.100.1"))).splitlines()[1]
    assert header.split() == ["Hop", "Host", "Loss%", "Snt", "Last", "Avg", "Best", "Wrst", "StDev"]


def test_hop_line_figures() -> None:
    """A hop line shows its number, address, loss and times with one decimal."""
    line = render_report(trace(answered(1, "198.51.100.1"))).splitlines()[2]
    assert line.startswith("  1.|-- 198.51.100.1 ")
    assert line.split()[2:] == ["0.0%", "3", "0.1", "0.1", "0.1", "0.2", "0.0"]


def test_numbers_are_right_aligned_under_their_titles() -> None:
    """Every figure ends in the same column as its title."""
    header, *rows = render_report(trace(answered(1, "198.51.100.1"), silent(2))).splitlines()[1:]
    for row in rows:
        assert len(row) == len(header)


def test_silent_hop_shows_question_marks() -> None:
    """A hop with no responder reads ??? with 100% loss."""
    line = render_report(trace(silent(1))).splitlines()[2]
    assert line.split()[1:4] == ["???", "100.0%", "3"]


def test_ecmp_responders_on_continuation_lines() -> None:
    """Further responders of one TTL follow on their own lines with an empty Hop column."""
    lines = render_report(trace(answered(1, "198.51.100.1", "198.51.100.2"))).splitlines()
    assert "198.51.100.1" in lines[2]
    assert lines[3].strip() == "198.51.100.2"
    assert lines[3].index("198.51.100.2") == lines[2].index("198.51.100.1")


def test_ipv6_address_widens_the_host_column() -> None:
    """A long IPv6 address fits in full and keeps the figures aligned."""
    lines = render_report(trace(answered(1, "198.51.100.1"), answered(2, V6_ROUTER))).splitlines()
    assert V6_ROUTER in lines[3]
    assert len(lines[2]) == len(lines[3]) == len(lines[1])


def test_unreachable_hop_is_marked() -> None:
    """A hop that answered ICMP unreachable carries !N after its address."""
    line = render_report(trace(answered(1, "198.51.100.1", end=HopEnd.UNREACHABLE))).splitlines()[2]
    assert "198.51.100.1 !N" in line


def test_error_line_when_trace_failed() -> None:
    """A failed trace ends with a line giving the error message."""
    error = TraceError("engine-unavailable", "no mtr-packet process is running")
    last = render_report(trace(error=error)).splitlines()[-1]
    assert last == "Error: no mtr-packet process is running (engine-unavailable)"


def test_ends_with_newline() -> None:
    """The report ends with a single newline."""
    report = render_report(trace(answered(1, "198.51.100.1")))
    assert report.endswith("\n")
    assert not report.endswith("\n\n")
