"""The text report: an mtr --report style table of a trace."""

from __future__ import annotations

import attrs
from mtrd.engine.probe import Protocol
from mtrd.tracing.model import (
    Hop,
    HopEnd,
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
from mtrd.web.report import render_report as render

HOST = "probe-host"
TITLES = "  Loss%   Snt   Last   Avg  Best  Wrst StDev"  # from column 32, as mtr --report

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


def render_report(report_trace: Trace) -> str:
    """The report as rendered on a machine called probe-host."""
    return render(report_trace, host=HOST)


def table(report_trace: Trace) -> list[str]:
    """The report's table: the HOST title line and the hop lines after it."""
    return render_report(report_trace).splitlines()[2:]


def trace(*hops: Hop, error: TraceError | None = None, protocol: Protocol = Protocol.ICMP) -> Trace:
    """A trace of example.org with the given hops."""
    return Trace(
        id="t1",
        status=TraceStatus.FAILED if error else TraceStatus.COMPLETED,
        request=TraceRequest(target="example.org", protocol=protocol),
        target=TraceTarget(input="example.org", address="192.0.2.7", ip_version=4),
        created_at=STARTED,
        started_at=STARTED + 0.123456,
        hops=hops,
        error=error,
    )


def test_first_line_is_the_start_time_in_whole_seconds() -> None:
    """The report opens with Start: and the start time in UTC, no fraction of a second."""
    assert render_report(trace()).splitlines()[0] == "Start: 2026-11-18T11:06:40+00:00"


def test_second_line_names_target_protocol_and_status() -> None:
    """The second line names input and resolved address, protocol with port, and status."""
    line = render_report(trace(protocol=Protocol.TCP)).splitlines()[1]
    assert line == (
        "Target: example.org (192.0.2.7)  Protocol: tcp port 80  Status: completed"
        "  Stopped: max_ttl"
    )


def test_title_line_names_the_host_and_mtr_columns_at_mtr_positions() -> None:
    """The HOST line names the probing machine, then mtr's titles in mtr's columns."""
    assert table(trace(answered(1, "198.51.100.1")))[0] == f"HOST: {HOST}".ljust(32) + TITLES


def test_a_report_drawn_without_a_host_name_says_mtrd() -> None:
    """Without the probing machine's name (the client draws reports too), HOST says mtrd."""
    assert render(trace()).splitlines()[2].startswith("HOST: mtrd ")


def test_hop_line_figures() -> None:
    """A hop line shows its number, address, loss and times with one decimal, each figure
    ending under the last letter of its title."""
    line = table(trace(answered(1, "198.51.100.1")))[1]
    assert line == ("  1.|-- 198.51.100.1               0.0%     3    0.1   0.1   0.1   0.2   0.0")


def test_numbers_are_right_aligned_under_their_titles() -> None:
    """Every figure ends in the same column as its title."""
    header, *rows = table(trace(answered(1, "198.51.100.1"), silent(2)))
    for row in rows:
        assert len(row) == len(header)


def test_loss_that_does_not_carry_on_gets_a_forward_loss_figure() -> None:
    """A silent hop before hops that answer shows Fwd% 0.0% under its title; others none."""
    header, *rows = table(trace(answered(1, "198.51.100.1"), silent(2), answered(3, "192.0.2.7")))
    assert header.endswith("StDev   Fwd%")
    assert rows[1].endswith("0.0%")
    assert len(rows[1]) == len(header)
    assert [len(row) < len(header) for row in rows] == [True, False, True]


def test_no_forward_loss_column_when_every_loss_carries_on() -> None:
    """Loss that starts at a hop and stays to the end needs no Fwd% column."""
    lossy = Hop(ttl=2, responders=(Responder("192.0.2.7", 2),), sent=3, received=2, lost=1)
    assert table(trace(answered(1, "198.51.100.1"), lossy))[0].endswith("StDev")


def test_late_answers_get_a_late_column_last() -> None:
    """A hop whose answer came after its probe was given up counts it under Late; a
    trace without late answers has no such column."""
    late = Hop(
        ttl=2, responders=(Responder("198.51.100.6", 1),), sent=3, received=2, lost=1, late=1
    )
    header, *rows = table(trace(answered(1, "198.51.100.1"), late))
    assert header.endswith("StDev Late")
    assert rows[1].endswith(" 1")
    assert len(rows[1]) == len(header)
    assert len(rows[0]) < len(header)
    assert "Late" not in table(trace(answered(1, "198.51.100.1")))[0]


def test_late_and_forward_loss_columns_together() -> None:
    """Fwd% comes before Late when both are shown."""
    late = Hop(ttl=3, responders=(Responder("192.0.2.7", 1),), sent=2, received=1, lost=1, late=1)
    header, *_ = table(trace(answered(1, "198.51.100.1"), silent(2), late))
    assert header.endswith("StDev   Fwd% Late")


def test_target_line_says_why_the_trace_stopped() -> None:
    """An unreachable stop names its ICMP kind on the Target line."""
    stopped = attrs.evolve(
        trace(answered(1, "198.51.100.1")), stop=Stop(StopReason.UNREACHABLE, "no-route-host")
    )
    line = render_report(stopped).splitlines()[1]
    assert line.endswith("Status: completed  Stopped: unreachable (no-route-host)")


def test_a_long_time_widens_its_column_for_every_line() -> None:
    """A round trip of 1000 ms or more widens its column; the figures stay aligned."""
    slow = Hop(
        ttl=2,
        responders=(Responder("198.51.100.2", 1),),
        sent=1,
        received=1,
        rtt_ms=RttStats(last=12345.6, best=12345.6, avg=12345.6, worst=12345.6, stdev=0.0),
    )
    header, *rows = table(trace(answered(1, "198.51.100.1"), slow))
    assert "12345.6" in rows[1]
    assert len(rows[0]) == len(rows[1]) == len(header)


def test_silent_hop_shows_question_marks() -> None:
    """A hop with no responder reads ??? with 100% loss."""
    line = table(trace(answered(1, "198.51.100.1"), silent(2), answered(3, "192.0.2.7")))[2]
    assert line.split() == ["2.|--", "???", "100.0%", "3", "-", "-", "-", "-", "-", "0.0%"]


def test_trailing_silent_ttls_show_as_one_line() -> None:
    """After the last hop that answered, a run of silent TTLs shows as one ??? line: the
    first TTL of the run, as mtr stops one hop after the last answer."""
    rows = table(trace(answered(1, "198.51.100.1"), *(silent(ttl) for ttl in range(2, 31))))[1:]
    assert [row.split()[:2] for row in rows] == [["1.|--", "198.51.100.1"], ["2.|--", "???"]]


def test_a_trace_nothing_answered_shows_one_line() -> None:
    """When no TTL answered at all, the table has the first one only."""
    rows = table(trace(*(silent(ttl) for ttl in range(1, 6))))[1:]
    assert [row.split()[:2] for row in rows] == [["1.|--", "???"]]


def test_ecmp_responders_on_continuation_lines() -> None:
    """Further responders of one TTL follow on their own lines with an empty Hop column."""
    lines = table(trace(answered(1, "198.51.100.1", "198.51.100.2")))
    assert "198.51.100.1" in lines[1]
    assert lines[2].strip() == "198.51.100.2"
    assert lines[2].index("198.51.100.2") == lines[1].index("198.51.100.1")


def test_ipv6_address_widens_the_host_column() -> None:
    """A long IPv6 address fits in full and keeps the figures aligned."""
    lines = table(trace(answered(1, "198.51.100.1"), answered(2, V6_ROUTER)))
    assert V6_ROUTER in lines[2]
    assert len(lines[1]) == len(lines[2]) == len(lines[0])


def test_unreachable_hop_is_marked() -> None:
    """A hop that answered ICMP unreachable carries !N after its address."""
    line = table(trace(answered(1, "198.51.100.1", end=HopEnd.UNREACHABLE)))[1]
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
