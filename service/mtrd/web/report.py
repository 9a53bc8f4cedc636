"""A trace as plain text, laid out like ``mtr --report`` for reading in a terminal."""

from __future__ import annotations

from datetime import UTC, datetime

from mtrd.engine.probe import Protocol
from mtrd.tracing.model import DEFAULT_PORTS, Hop, HopEnd, Trace

# How traceroute and mtr mark a hop that answered "unreachable".
_END_MARKS = {HopEnd.UNREACHABLE: "!N", HopEnd.HOST_DOWN: "!H"}
# Column titles and their least widths, as mtr --report prints them.
_FIGURES = (
    ("Loss%", 6),
    ("Snt", 5),
    ("Last", 6),
    ("Avg", 5),
    ("Best", 5),
    ("Wrst", 5),
    ("StDev", 5),
)
_HOP_WIDTH = len("255.|-- ")
_HOST_GAP = "  "
_SILENT = "???"


def render_report(trace: Trace) -> str:
    """The trace as a header line and a table of hops, ending with a newline."""
    rows: list[tuple[str, str, tuple[str, ...]]] = []
    for hop in trace.hops:
        rows.extend(_hop_rows(hop))
    host_width = max([len("Host"), *(len(host) for _, host, _ in rows)])
    widths = [
        max([least, *(len(figures[i]) for _, _, figures in rows if figures)])
        for i, (_, least) in enumerate(_FIGURES)
    ]
    header = _line("Hop", "Host", tuple(title for title, _ in _FIGURES), host_width, widths)
    lines = [_title(trace), header]
    lines.extend(_line(prefix, host, figures, host_width, widths) for prefix, host, figures in rows)
    if trace.error is not None:
        lines.append(f"Error: {trace.error.message} ({trace.error.type})")
    return "\n".join(lines) + "\n"


def _title(trace: Trace) -> str:
    target = trace.target
    if target.address is None:
        where = f"{target.input} (unresolved)"
    elif target.address == target.input:
        where = target.address
    else:
        where = f"{target.input} ({target.address})"
    request = trace.request
    protocol = request.protocol.value
    if request.protocol is not Protocol.ICMP:
        port = request.port if request.port is not None else DEFAULT_PORTS[request.protocol]
        protocol = f"{protocol} port {port}"
    start = (
        "not started"
        if trace.started_at is None
        else datetime.fromtimestamp(trace.started_at, tz=UTC).isoformat()
    )
    return f"Target: {where}  Protocol: {protocol}  Status: {trace.status.value}  Start: {start}"


def _hop_rows(hop: Hop) -> list[tuple[str, str, tuple[str, ...]]]:
    hosts = [responder.address for responder in hop.responders] or [_SILENT]
    mark = _END_MARKS.get(hop.end) if hop.end is not None else None
    first = hosts[0] if mark is None else f"{hosts[0]} {mark}"
    rtt = hop.rtt_ms
    figures = (
        f"{hop.loss_pct:.1f}%",
        str(hop.sent),
        *(_time(value) for value in (rtt.last, rtt.avg, rtt.best, rtt.worst, rtt.stdev)),
    )
    # ECMP: the other responders of this TTL follow on lines of their own.
    return [(f"{hop.ttl:3d}.|-- ", first, figures)] + [("", host, ()) for host in hosts[1:]]


def _time(milliseconds: float | None) -> str:
    return "-" if milliseconds is None else f"{milliseconds:.1f}"


def _line(
    prefix: str, host: str, figures: tuple[str, ...], host_width: int, widths: list[int]
) -> str:
    cells = "".join(
        " " + figure.rjust(width) for figure, width in zip(figures, widths, strict=False)
    )
    return (prefix.ljust(_HOP_WIDTH) + host.ljust(host_width) + _HOST_GAP + cells).rstrip()
