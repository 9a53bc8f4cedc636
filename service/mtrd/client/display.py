"""What ``mtrd trace`` shows: a live table on a terminal, plain lines elsewhere, or JSON.

On a terminal the table is redrawn in place (at most ten times a second); otherwise
each hop update is one plain line and the full table follows at the end. The table
lists every responder of a hop; a multipath trace's table is followed by one line per
flow: its source port, loss, the round-trip time of its farthest answer, and its path.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from typing import Protocol, TextIO

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from mtrd.annotations.model import Annotation
from mtrd.tracing.model import Hop, Trace
from mtrd.web.report import HostDisplay, render_report

__all__ = [
    "REDRAW_INTERVAL",
    "Display",
    "JsonOnly",
    "LiveTable",
    "PlainLines",
    "display_for",
    "flow_summary",
    "hop_line",
]

REDRAW_INTERVAL = 0.1


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def hop_line(hop: Hop) -> str:
    """One hop as a plain line: ``hop 3 198.51.100.17 loss 0.0% sent 3 last 0.4 ms avg 0.4 ms``."""
    hosts = ",".join(_named(r.address, r.annotation) for r in hop.responders) or "???"
    return (
        f"hop {hop.ttl} {hosts} loss {hop.loss_pct:.1f}% sent {hop.sent} "
        f"last {_ms(hop.rtt_ms.last)} avg {_ms(hop.rtt_ms.avg)}"
    )


def _named(address: str, annotation: Annotation | None) -> str:
    if annotation is None or annotation.hostname is None:
        return address
    return f"{annotation.hostname}({address})"


def flow_summary(trace: Trace, hosts: HostDisplay = HostDisplay.BOTH) -> str:
    """Each flow of a multipath trace on a line, ``""`` for other traces; paths show
    addresses, or names where known with ``hosts`` name."""
    if trace.multipath is None or not trace.multipath.flows:
        return ""
    by_name = {
        (hop.ttl, r.address): r.annotation.hostname
        for hop in trace.hops
        for r in hop.responders
        if hosts is HostDisplay.NAME and r.annotation is not None and r.annotation.hostname
    }
    lines = [f"Flow paths: {len(trace.multipath.flows)}", " Flow   Port   Loss%    RTT  Path"]
    for flow in trace.multipath.flows:
        shown = [
            "*" if h.address is None else by_name.get((h.ttl, h.address), h.address)
            for h in flow.hops
        ]
        path = " > ".join(shown)
        answered = [h.rtt_ms for h in flow.hops if h.rtt_ms is not None]
        rtt = "-" if not answered else f"{answered[-1]:.1f}"
        lines.append(f"{flow.flow:5d} {flow.local_port:6d} {flow.loss_pct:6.1f}% {rtt:>6}  {path}")
    return "\n".join(lines) + "\n"


class Display(Protocol):
    """Where the trace is shown while it runs and when it ends."""

    def changed(self, trace: Trace, hops: Sequence[Hop], status_changed: bool) -> None:
        """The trace changed: these hops, and maybe its status."""

    def finished(self, trace: Trace, document: str) -> None:
        """The trace is final; ``document`` is the resource as the server sent it."""


class PlainLines:
    """One line per hop update and status change, then the whole table."""

    def __init__(self, out: TextIO, hosts: HostDisplay = HostDisplay.BOTH) -> None:
        self._out = out
        self._hosts = hosts
        self._started = False

    def changed(self, trace: Trace, hops: Sequence[Hop], status_changed: bool) -> None:
        """Print the trace id first, then what changed."""
        lines = []
        if not self._started:
            self._started = True
            lines.append(f"trace {trace.id} {trace.status.value}")
        elif status_changed:
            lines.append(f"status {trace.status.value}")
        lines.extend(hop_line(hop) for hop in hops)
        if lines:
            self._out.write("".join(line + "\n" for line in lines))
            self._out.flush()

    def finished(self, trace: Trace, document: str) -> None:  # noqa: ARG002 - the table is ours
        """Print the report table (and a multipath trace's flows)."""
        self._out.write("\n" + render_report(trace, hosts=self._hosts))
        self._out.write(flow_summary(trace, self._hosts))
        self._out.flush()


class LiveTable:
    """The report table, redrawn in place with ANSI escapes, at most every ``interval`` s."""

    def __init__(
        self,
        out: TextIO,
        clock: IReactorTime,
        *,
        width: Callable[[], int] = lambda: shutil.get_terminal_size().columns,
        interval: float = REDRAW_INTERVAL,
        hosts: HostDisplay = HostDisplay.BOTH,
    ) -> None:
        self._out = out
        self._hosts = hosts
        self._clock = clock
        self._width = width
        self._interval = interval
        self._drawn = 0  # lines on screen from the last draw
        self._last_draw: float | None = None
        self._pending: IDelayedCall | None = None
        self._latest: Trace | None = None

    def changed(self, trace: Trace, hops: Sequence[Hop], status_changed: bool) -> None:  # noqa: ARG002
        """Redraw now, or once the interval since the last draw is over."""
        self._latest = trace
        if self._pending is not None:
            return
        now = self._clock.seconds()
        wait = 0.0 if self._last_draw is None else self._last_draw + self._interval - now
        if wait > 0:
            self._pending = self._clock.callLater(wait, self._redraw)
        else:
            self._draw(trace)

    def finished(self, trace: Trace, document: str) -> None:  # noqa: ARG002 - the table is ours
        """Draw the final table at once (and a multipath trace's flows after it)."""
        self.stop()
        self._draw(trace)
        self._out.write(flow_summary(trace, self._hosts))
        self._out.flush()

    def stop(self) -> None:
        """Drop a redraw still waiting."""
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None

    def _redraw(self) -> None:
        self._pending = None
        if self._latest is not None:
            self._draw(self._latest)

    def _draw(self, trace: Trace) -> None:
        # A line wider than the terminal would wrap and spoil the count of lines to erase.
        width = max(self._width(), 20)
        lines = [line[:width] for line in render_report(trace, hosts=self._hosts).splitlines()]
        erase = f"\x1b[{self._drawn}A\r\x1b[J" if self._drawn else ""
        self._out.write(erase + "".join(line + "\n" for line in lines))
        self._out.flush()
        self._drawn = len(lines)
        self._last_draw = self._clock.seconds()


class JsonOnly:
    """Nothing while the trace runs; the final resource at the end."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def changed(self, trace: Trace, hops: Sequence[Hop], status_changed: bool) -> None:
        """Say nothing yet."""

    def finished(self, trace: Trace, document: str) -> None:  # noqa: ARG002 - printed as sent
        """Print the resource as the server sent it."""
        self._out.write(document.strip() + "\n")
        self._out.flush()


def display_for(
    clock: IReactorTime,
    out: TextIO,
    *,
    json: bool,
    live: bool | None,
    hosts: HostDisplay = HostDisplay.BOTH,
) -> Display:
    """JSON when asked; else the live table on a terminal (or when ``live``), plain lines not.
    ``hosts`` says how the tables name responders."""
    if json:
        return JsonOnly(out)
    if live is None:
        live = out.isatty()
    return LiveTable(out, clock, hosts=hosts) if live else PlainLines(out, hosts)
