"""A trace as plain text, laid out like ``mtr --report`` for reading in a terminal.

The layout::

    Start: 2026-12-01T02:03:04+00:00
    Target: example.org (192.0.2.7)  Protocol: icmp  Status: completed
    HOST: probe-host                  Loss%   Snt   Last   Avg  Best  Wrst StDev
      1.|-- 198.51.100.1               0.0%     3    0.1   0.1   0.1   0.2   0.0
      2.|-- ???                      100.0%     3      -     -     -     -     -

A responder with a name shows as ``name (address)`` (``hosts="both"``, the default, as
``mtr -b``); ``hosts="address"`` shows addresses only (``mtr -n``), ``hosts="name"`` the
name alone where there is one (mtr's default). When the trace had an AS database, an AS
column comes first, ``AS64500`` or ``AS???`` (as ``mtr -z``).

Columns have mtr's widths (``HOST`` is the machine that probed); a wider cell (a
long IPv6 address, a time of 1000 ms or more) widens its whole column, so figures stay
under their titles. Times are milliseconds with one decimal; a hop nothing answered
shows ``-`` where mtr shows 0.0. Hops are shown up to the last one that answered; a
run of silent TTLs after it shows as one ``???`` line, the first TTL of the run (as
mtr stops one hop after the last answer): the JSON has every TTL.

Where some hop's loss does not carry on to the hops after it (a router rate-limiting
its own replies), a ``Fwd%`` column follows ``StDev`` with the forward loss of each hop
where it differs from ``Loss%``, blank elsewhere. Where some hop answered a probe after it
was given up (a late reply: not counted in ``Loss%`` or the times), a ``Late`` column comes
last with how many, blank elsewhere. A finished trace's ``Target`` line
ends with ``Stopped:`` and why (and the ICMP kind when a router answered unreachable).
"""

from __future__ import annotations

import enum
import socket
from datetime import UTC, datetime

from mtrd.engine.probe import Protocol
from mtrd.tracing.model import DEFAULT_PORTS, Hop, HopEnd, Responder, StopReason, Trace
from mtrd.tracing.stats import forward_loss


class HostDisplay(enum.StrEnum):
    """How a responder is named in a report (the ``hosts`` query parameter)."""

    BOTH = "both"  # name (address), as mtr -b
    ADDRESS = "address"  # as mtr -n
    NAME = "name"  # the name where there is one, as mtr


# How traceroute and mtr mark a hop that answered "unreachable".
_END_MARKS = {HopEnd.UNREACHABLE: "!N", HopEnd.HOST_DOWN: "!H"}
# Column titles, the spaces before each and the width of its figures, as mtr --report
# prints them (mtr leaves one more space between Snt and Last).
_FIGURES = (
    ("Loss%", 1, 6),
    ("Snt", 1, 5),
    ("Last", 2, 5),
    ("Avg", 1, 5),
    ("Best", 1, 5),
    ("Wrst", 1, 5),
    ("StDev", 1, 5),
)
_FORWARD = ("Fwd%", 1, 6)
_LATE = ("Late", 1, 4)
_PREFIX_WIDTH = len("255.|-- ")
_HOST_WIDTH = 24  # mtr's titles start at column 33
_SILENT = "???"
# The server names itself in its reports; a report drawn elsewhere (the client's) does
# not know the server's name, and says mtrd.
LOCAL_HOST = socket.gethostname()


def render_report(trace: Trace, host: str = "mtrd", hosts: HostDisplay = HostDisplay.BOTH) -> str:
    """The trace as a header and a table of hops, ending with a newline; ``host`` is the
    machine that probed, for the HOST line; ``hosts`` how responders are named."""
    rows: list[tuple[str, str, tuple[str, ...]]] = []
    with_as = trace.annotations.asn_db is not None
    shown = _shown_hops(trace.hops)
    forward = forward_loss(trace.hops)[: len(shown)]
    differs = [f"{f:.1f}" != f"{hop.loss_pct:.1f}" for f, hop in zip(forward, shown, strict=True)]
    with_forward = any(differs)
    with_late = any(hop.late for hop in shown)
    columns = (*_FIGURES, *((_FORWARD,) if with_forward else ()), *((_LATE,) if with_late else ()))
    for hop, fwd, differ in zip(shown, forward, differs, strict=True):
        hop_rows = _hop_rows(hop, hosts, with_as=with_as)
        prefix, name, figures = hop_rows[0]
        if with_forward:
            figures = (*figures, f"{fwd:.1f}%" if differ else "")
        if with_late:
            figures = (*figures, str(hop.late) if hop.late else "")
        hop_rows[0] = (prefix, name, figures)
        rows.extend(hop_rows)
    header_host = f"HOST: {host}"
    host_width = max(
        [_HOST_WIDTH, len(header_host) - _PREFIX_WIDTH, *(len(name) for _, name, _ in rows)]
    )
    widths = [
        max([width, *(len(figures[i]) for _, _, figures in rows if figures)])
        for i, (_, _, width) in enumerate(columns)
    ]
    titles = tuple(title for title, _, _ in columns)
    lines = [
        f"Start: {_start(trace)}",
        _target(trace),
        _line(header_host, titles, host_width, widths, columns),
    ]
    lines.extend(
        _line(prefix.ljust(_PREFIX_WIDTH) + name, figures, host_width, widths, columns)
        for prefix, name, figures in rows
    )
    if trace.multipath is not None:
        result = trace.multipath
        lines.append(
            f"Multipath: {result.confidence}% confidence  Probes: {result.probes_sent}  "
            f"Flows: {len(result.flows)}  Links: {len(result.links)}  "
            f"Stop: {result.stop_reason or '-'}"
        )
    if trace.error is not None:
        lines.append(f"Error: {trace.error.message} ({trace.error.type})")
    return "\n".join(lines) + "\n"


def _shown_hops(hops: tuple[Hop, ...]) -> tuple[Hop, ...]:
    """Every hop up to the last that answered, and the first silent one after it."""
    answered = [i for i, hop in enumerate(hops) if hop.responders]
    last = answered[-1] if answered else -1
    return hops[: last + 2]


def _start(trace: Trace) -> str:
    if trace.started_at is None:
        return "not started"
    return datetime.fromtimestamp(trace.started_at, tz=UTC).isoformat(timespec="seconds")


def _target(trace: Trace) -> str:
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
    line = f"Target: {where}  Protocol: {protocol}  Status: {trace.status.value}"
    stop = trace.stop_reason
    if stop is not None:
        kind = f" ({stop.unreachable})" if stop.reason is StopReason.UNREACHABLE else ""
        line += f"  Stopped: {stop.reason.value}{kind}"
    return line


def _host(responder: Responder, display: HostDisplay, *, with_as: bool) -> str:
    annotation = responder.annotation
    name = None if annotation is None else annotation.hostname
    if display is HostDisplay.ADDRESS or name is None:
        shown = responder.address
    elif display is HostDisplay.NAME:
        shown = name
    else:
        shown = f"{name} ({responder.address})"
    if not with_as:
        return shown
    asn = None if annotation is None else annotation.asn
    return f"{'AS???' if asn is None else f'AS{asn}':<9} {shown}"


def _hop_rows(
    hop: Hop, display: HostDisplay, *, with_as: bool
) -> list[tuple[str, str, tuple[str, ...]]]:
    hosts = [_host(r, display, with_as=with_as) for r in hop.responders] or [
        f"{'AS???':<9} {_SILENT}" if with_as else _SILENT
    ]
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
    start: str,
    figures: tuple[str, ...],
    host_width: int,
    widths: list[int],
    columns: tuple[tuple[str, int, int], ...],
) -> str:
    """``start`` (the hop and host, or the HOST title) padded to the figures' column."""
    cells = "".join(
        " " * gap + figure.rjust(width)
        for figure, (_, gap, _), width in zip(figures, columns, widths, strict=False)
    )
    return (start.ljust(_PREFIX_WIDTH + host_width) + cells).rstrip()
