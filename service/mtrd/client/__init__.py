"""``mtrd trace``: start a trace on a server, follow its event stream, and draw it as mtr does.

The client POSTs the trace, then reads ``links.events`` as a ``text/event-stream``,
keeping a local picture of the trace (:class:`TraceView`) that each ``hop`` and
``status`` event updates and ``done`` replaces with the final resource. A stream
that drops before ``done`` is resumed with ``Last-Event-ID`` a bounded number of
times, then the client polls ``GET /traces/{id}`` instead.

On a terminal the table is redrawn in place (at most ten times a second);
otherwise each hop update is one plain line and the full table follows at the end.
Exit status: see :data:`EXIT_OK` and its neighbours.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TextIO, TypeVar
from urllib.parse import urljoin, urlsplit

import attrs
from treq.client import HTTPClient
from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.internet.protocol import connectionDone
from twisted.internet.task import deferLater, react
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse

from mtrd.tracing.model import Hop, Trace, TraceStatus
from mtrd.web.render import hop_from_json, trace_from_json
from mtrd.web.report import render_report

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_UNREACHABLE",
    "EventParser",
    "JsonOnly",
    "LiveTable",
    "PlainLines",
    "ServerEvent",
    "Session",
    "Stop",
    "Timing",
    "TraceOptions",
    "TraceView",
    "exit_status",
    "failure_reason",
    "hop_line",
    "main",
    "network_reason",
    "parse_args",
    "problem_line",
    "run",
    "trace_from_json",
]

EXIT_OK = 0  # the trace completed, whether or not it reached the destination
EXIT_FAILED = 1  # the trace failed or was cancelled
EXIT_REFUSED = 2  # bad arguments, or the server refused the request (4xx)
EXIT_UNREACHABLE = 3  # the server could not be reached, or answered with nonsense or a 5xx
EXIT_INTERRUPTED = 130  # Ctrl-C: the trace was cancelled on the server

DEFAULT_SERVER = "http://127.0.0.1:8080"
CONNECT_TIMEOUT = 10.0
REDRAW_INTERVAL = 0.1

_T = TypeVar("_T")
_Headers = dict[bytes | str, list[bytes | str]]


@attrs.frozen
class Timing:
    """How long the client waits, and how often it tries again."""

    request_timeout: float = 30.0
    # The server sends a keep-alive comment every 15 s; three missed means the stream is dead.
    stream_idle_timeout: float = 45.0
    # Reconnections in a row that bring no event before the client falls back to polling.
    max_reconnects: int = 3
    reconnect_delay: float = 0.5  # doubled on each idle reconnection, up to max_reconnect_delay
    max_reconnect_delay: float = 2.0
    poll_interval: float = 1.0
    # Polls in a row that cannot reach the server before the client gives up.
    max_poll_failures: int = 10
    cancel_timeout: float = 5.0

    def reconnect_after(self, attempt: int) -> float:
        """The pause before reconnection number ``attempt`` (from 1) in a row."""
        return float(min(self.reconnect_delay * 2 ** (attempt - 1), self.max_reconnect_delay))


# -- arguments ------------------------------------------------------------------------------


@attrs.frozen
class TraceOptions:
    """What ``mtrd trace`` was asked to do."""

    target: str
    server: str = DEFAULT_SERVER
    protocol: str | None = None
    port: int | None = None
    probes: int | None = None
    ip_version: int | None = None
    max_ttl: int | None = None
    interval: float | None = None
    timeout: int | None = None
    json: bool = False
    token: str | None = None

    def request_body(self) -> dict[str, Any]:
        """The POST /traces body: the target and only the fields that were given."""
        body: dict[str, Any] = {"target": self.target}
        for field in ("protocol", "port", "probes", "ip_version", "max_ttl", "interval", "timeout"):
            value = getattr(self, field)
            if value is not None:
                body[field] = value
        return body


def _server_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"not an http:// or https:// URL: {text!r}")
    return text.rstrip("/")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtrd trace",
        description="Run a trace on an mtrd server and follow it as it runs.",
        epilog="Exit status: 0 completed, 1 failed or cancelled, 2 refused or bad arguments, "
        "3 server unreachable, 130 interrupted (the trace is cancelled).",
    )
    parser.add_argument("target", help="an IPv4 or IPv6 address, or a hostname")
    parser.add_argument(
        "--server",
        type=_server_url,
        default=os.environ.get("MTRD_SERVER") or DEFAULT_SERVER,
        help="the mtrd to ask (default: $MTRD_SERVER or %(default)s)",
    )
    parser.add_argument("--protocol", choices=("icmp", "udp", "tcp"))
    parser.add_argument("--port", type=int, help="destination port (udp and tcp)")
    parser.add_argument("--probes", type=int, help="probes per hop")
    parser.add_argument("--ip-version", type=int, choices=(4, 6), dest="ip_version")
    parser.add_argument("--max-ttl", type=int, dest="max_ttl")
    parser.add_argument("--interval", type=float, help="seconds between rounds")
    parser.add_argument("--timeout", type=int, help="seconds each probe waits for its answer")
    parser.add_argument(
        "--json", action="store_true", help="print only the final trace resource as JSON"
    )
    return parser


def parse_args(argv: Sequence[str]) -> TraceOptions:
    """The options of ``mtrd trace``; argparse exits with status 2 on bad arguments."""
    ns = _parser().parse_args(list(argv))
    return TraceOptions(
        target=ns.target,
        server=ns.server,
        protocol=ns.protocol,
        port=ns.port,
        probes=ns.probes,
        ip_version=ns.ip_version,
        max_ttl=ns.max_ttl,
        interval=ns.interval,
        timeout=ns.timeout,
        json=ns.json,
        # A bearer token for a server with auth on; kept off the command line on purpose.
        token=os.environ.get("MTRD_TOKEN") or None,
    )


# -- server-sent events ---------------------------------------------------------------------


@attrs.frozen
class ServerEvent:
    """One dispatched event of a ``text/event-stream``."""

    kind: str
    data: str
    id: str | None = None


_LINE_END = re.compile(rb"\r\n|\r|\n")


class EventParser:
    """The ``text/event-stream`` format (WHATWG HTML, 9.2), fed in chunks cut anywhere."""

    def __init__(self, last_event_id: str | None = None) -> None:
        # The id to resume after: that of the last event whose blank line arrived, not
        # that of an event cut short.
        self.last_event_id = last_event_id
        self._id = last_event_id
        self._buffer = b""
        self._skip_lf = False  # the previous chunk ended in CR: a LF now belongs to it
        self._first_line = True
        self._kind = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[ServerEvent]:
        """The events that ``chunk`` completes, in order."""
        if not chunk:
            return []
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._skip_lf = False
        buffer = self._buffer + chunk
        events: list[ServerEvent] = []
        start = 0
        for match in _LINE_END.finditer(buffer):
            if match.group() == b"\r" and match.end() == len(buffer):
                self._skip_lf = True
            event = self._line(buffer[start : match.start()].decode("utf-8", "replace"))
            if event is not None:
                events.append(event)
            start = match.end()
        self._buffer = buffer[start:]
        return events

    def _line(self, line: str) -> ServerEvent | None:
        if self._first_line:
            self._first_line = False
            line = line.removeprefix("\ufeff")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._kind = value
        elif field == "data":
            self._data.append(value)
        elif field == "id" and "\0" not in value:
            self._id = value
        return None

    def _dispatch(self) -> ServerEvent | None:
        self.last_event_id = self._id
        kind, data = self._kind or "message", self._data
        self._kind, self._data = "", []
        if not data:
            return None
        return ServerEvent(kind, "\n".join(data), self.last_event_id)


# -- the local picture of a trace -----------------------------------------------------------


@attrs.define
class TraceView:
    """The latest known state of one trace, updated from events or polls."""

    trace: Trace

    def hop(self, hop: Hop) -> bool:
        """Take a hop update; True when it changed something."""
        hops = {h.ttl: h for h in self.trace.hops}
        if hops.get(hop.ttl) == hop:
            return False
        hops[hop.ttl] = hop
        self.trace = attrs.evolve(self.trace, hops=tuple(hops[ttl] for ttl in sorted(hops)))
        return True

    def status(self, status: TraceStatus) -> bool:
        """Take a status change; True when it is one."""
        if self.trace.status is status:
            return False
        self.trace = attrs.evolve(self.trace, status=status)
        return True

    def replace(self, trace: Trace) -> list[Hop]:
        """Take a whole new snapshot; the hops that differ from the known ones."""
        known = {h.ttl: h for h in self.trace.hops}
        self.trace = trace
        return [hop for hop in trace.hops if known.get(hop.ttl) != hop]


def exit_status(trace: Trace) -> int:
    """The exit status for a trace that ended: 0 completed, 1 otherwise."""
    return EXIT_OK if trace.status is TraceStatus.COMPLETED else EXIT_FAILED


def failure_reason(trace: Trace) -> str | None:
    """Why the trace did not complete, as one line; None when it completed."""
    if trace.status is TraceStatus.COMPLETED:
        return None
    if trace.status is TraceStatus.CANCELLED:
        return "trace cancelled"
    if trace.error is None:
        return f"trace {trace.status.value}"
    return f"trace failed: {_one_line(trace.error.message)}"


# -- output ---------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def hop_line(hop: Hop) -> str:
    """One hop as a plain line: ``hop 3 198.51.100.17 loss 0.0% sent 3 last 0.4 ms avg 0.4 ms``."""
    hosts = ",".join(r.address for r in hop.responders) or "???"
    return (
        f"hop {hop.ttl} {hosts} loss {hop.loss_pct:.1f}% sent {hop.sent} "
        f"last {_ms(hop.rtt_ms.last)} avg {_ms(hop.rtt_ms.avg)}"
    )


class Display(Protocol):
    """Where the trace is shown while it runs and when it ends."""

    def changed(self, trace: Trace, hops: Sequence[Hop], status_changed: bool) -> None:
        """The trace changed: these hops, and maybe its status."""

    def finished(self, trace: Trace, document: str) -> None:
        """The trace is final; ``document`` is the resource as the server sent it."""


class PlainLines:
    """One line per hop update and status change, then the whole table."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
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
        """Print the report table."""
        self._out.write("\n" + render_report(trace))
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
    ) -> None:
        self._out = out
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
        """Draw the final table at once."""
        self.stop()
        self._draw(trace)

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
        lines = [line[:width] for line in render_report(trace).splitlines()]
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


# -- talking to the server ------------------------------------------------------------------


class Stop(Exception):
    """End the command with this exit status and a one-line reason on stderr."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _TimedOut(Exception):
    """No answer in time."""


class _StreamUnavailable(Exception):
    """The event stream cannot be had (refused, gone): poll instead."""


class _ServerError(Exception):
    """The server answered a request with a 5xx."""


_NETWORK_ERRORS = (
    net_error.ConnectError,
    net_error.DNSLookupError,
    net_error.TimeoutError,
    net_error.ConnectionLost,
    net_error.ConnectionDone,
    ResponseFailed,
    ResponseNeverReceived,
    RequestTransmissionFailed,
    _TimedOut,
    _ServerError,
)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def network_reason(error: BaseException) -> str:
    """Why a request did not get through, in a few words."""
    if isinstance(error, net_error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, net_error.DNSLookupError):
        return "host name not found"
    if isinstance(error, net_error.TCPTimedOutError | net_error.TimeoutError):
        return "connection timed out"
    if isinstance(error, net_error.NoRouteError):
        return "no route to host"
    if isinstance(error, _TimedOut | _ServerError):
        return str(error)
    if isinstance(error, ResponseFailed | ResponseNeverReceived | RequestTransmissionFailed):
        inner = [
            f.value
            for f in error.reasons
            if not isinstance(f.value, net_error.ConnectionDone | net_error.ConnectionLost)
        ]
        return "connection lost" + (f" ({network_reason(inner[0])})" if inner else "")
    if isinstance(error, net_error.ConnectionLost | net_error.ConnectionDone):
        return "connection lost"
    return _one_line(str(error)).rstrip(".") or type(error).__name__


def problem_line(code: int, body: bytes) -> str:
    """A problem+json answer as one line: status, title, detail and each field at fault."""
    try:
        problem = json.loads(body)
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        text = _one_line(body.decode("utf-8", "replace"))[:200]
        return f"{code}" + (f": {text}" if text else "")
    line = f"{code} {problem.get('title', '')}".rstrip()
    if problem.get("detail"):
        line += f": {problem['detail']}"
    errors = problem.get("errors")
    if isinstance(errors, list) and errors:
        fields = "; ".join(
            f"{e.get('field')}: {e.get('message')}" for e in errors if isinstance(e, dict)
        )
        line += f" ({fields})"
    return _one_line(line)


class _EventReader(TwistedProtocol):
    """Feeds a response body to an :class:`EventParser`; stops on the first final event.

    ``finished`` fires with the final event, with None when the body ended before one,
    or fails when the connection broke or went quiet for ``idle`` seconds.
    """

    def __init__(
        self,
        parser: EventParser,
        on_event: Callable[[ServerEvent], bool],
        clock: IReactorTime,
        idle: float,
    ) -> None:
        self._parser = parser
        self._on_event = on_event
        self._clock = clock
        self._idle = idle
        self._watchdog: IDelayedCall | None = None
        self._ended = False
        self.events = 0
        # Cancelling (Ctrl-C) must not look like a dropped stream, which would be resumed.
        self.finished: Deferred[ServerEvent | None] = Deferred(
            lambda _: self._end(CancelledError(), abandon=True)
        )

    def connectionMade(self) -> None:
        """Start watching for silence."""
        self._watchdog = self._clock.callLater(self._idle, self._quiet)

    def dataReceived(self, data: bytes) -> None:
        """Parse what arrived and pass each event on."""
        if self._ended:
            return
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.reset(self._idle)
        try:
            for event in self._parser.feed(data):
                self.events += 1
                if self._on_event(event):
                    self._end(event, abandon=True)
                    return
        except Exception as e:  # a malformed event: hand the error to whoever awaits
            self._end(e, abandon=True)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """The body ended: cleanly (no final event) or not."""
        if isinstance(reason.value, ResponseDone | PotentialDataLoss):
            self._end(None, abandon=False)
        else:
            self._end(reason.value, abandon=False)

    def _quiet(self) -> None:
        self._watchdog = None
        self._end(_TimedOut(f"no event or keep-alive for {self._idle:g} s"), abandon=True)

    def _end(self, outcome: ServerEvent | BaseException | None, *, abandon: bool) -> None:
        # Set first: stopProducing below may report the connection lost at once.
        if self._ended:
            return
        self._ended = True
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None
        if abandon and self.transport is not None:
            # Stop reading first: the rest of the body (if any) is of no interest.
            self.transport.stopProducing()  # type: ignore[attr-defined]
        if isinstance(outcome, BaseException):
            self.finished.errback(outcome)
        else:
            self.finished.callback(outcome)


@attrs.frozen
class _Final:
    trace: Trace
    document: str


class Session:
    """One ``mtrd trace`` run against one server."""

    def __init__(
        self,
        reactor: Any,
        options: TraceOptions,
        display: Display,
        http: HTTPClient,
        timing: Timing = Timing(),
    ) -> None:
        self._reactor = reactor
        self._timing = timing
        self._options = options
        self._display = display
        self._http = http
        self._headers: _Headers = {}
        if options.token:
            self._headers["Authorization"] = [f"Bearer {options.token}"]
        self.trace_id: str | None = None
        self._self_url = ""
        self._events_url = ""
        self._view: TraceView | None = None
        self._final: _Final | None = None
        self.interrupted = False

    def _url(self, path: str) -> str:
        return urljoin(self._options.server + "/", path.lstrip("/"))

    async def _within(
        self, request: Deferred[_T], seconds: float | None = None, *, interruptible: bool = True
    ) -> _T:
        if seconds is None:
            seconds = self._timing.request_timeout
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            request.cancel()

        timer = self._reactor.callLater(seconds, expire)
        try:
            return await request
        except Exception:
            if interruptible and self.interrupted:
                # A cancelled request fails in many ways; none of them may read as the network's.
                raise CancelledError from None
            if expired:
                raise _TimedOut(f"no answer within {seconds:g} s") from None
            raise
        finally:
            if timer.active():
                timer.cancel()

    async def _fetch(
        self,
        method: str,
        url: str,
        seconds: float | None = None,
        *,
        interruptible: bool = True,
        **kwargs: Any,
    ) -> tuple[IResponse, bytes]:
        headers: _Headers = {**self._headers, **kwargs.pop("headers", {})}

        async def exchange() -> tuple[IResponse, bytes]:
            response = await self._http.request(method, url, headers=headers, **kwargs)
            return response, await response.content()

        return await self._within(
            Deferred.fromCoroutine(exchange()), seconds, interruptible=interruptible
        )

    def _unreachable(self, error: BaseException) -> Stop:
        return Stop(
            EXIT_UNREACHABLE, f"cannot reach {self._options.server}: {network_reason(error)}"
        )

    async def start(self) -> None:
        """POST the trace; stop with the server's reason when it refuses."""
        url = self._url("/traces")
        try:
            response, body = await self._fetch("POST", url, json=self._options.request_body())
        except _NETWORK_ERRORS as e:
            raise self._unreachable(e) from None
        if 400 <= response.code < 500:
            raise Stop(
                EXIT_REFUSED, f"the server refused the trace: {problem_line(response.code, body)}"
            )
        if response.code not in (200, 201, 202):
            raise Stop(EXIT_UNREACHABLE, f"{url} answered {problem_line(response.code, body)}")
        document = self._decode(body, url)
        self.trace_id = document["id"]
        links = document.get("links") or {}
        self._self_url = self._url(links.get("self") or f"/traces/{self.trace_id}")
        self._events_url = self._url(links.get("events") or f"/traces/{self.trace_id}/events")
        self._view = TraceView(self._trace(document, url))
        self._display.changed(self._view.trace, self._view.trace.hops, True)
        if self._view.trace.status.is_final:
            self._final = _Final(self._view.trace, body.decode())

    def _decode(self, body: bytes, url: str) -> dict[str, Any]:
        try:
            document = json.loads(body)
        except ValueError:
            raise Stop(EXIT_UNREACHABLE, f"{url} answered something other than JSON") from None
        if not isinstance(document, dict) or not isinstance(document.get("id"), str):
            raise Stop(EXIT_UNREACHABLE, f"{url} answered something other than a trace")
        return document

    def _trace(self, document: dict[str, Any], url: str) -> Trace:
        try:
            return trace_from_json(document)
        except (KeyError, TypeError, ValueError) as e:
            raise Stop(EXIT_UNREACHABLE, f"{url} answered a malformed trace ({e!r})") from None

    async def follow(self) -> _Final:
        """Follow the trace until it is final: its event stream, resumed, else polling."""
        if self._final is not None:
            return self._final
        parser = EventParser()
        idle_reconnects = 0
        timing = self._timing
        while idle_reconnects <= timing.max_reconnects:
            if idle_reconnects:
                await deferLater(self._reactor, timing.reconnect_after(idle_reconnects))
            parser = EventParser(parser.last_event_id)  # a half-read event is dropped
            reader = _EventReader(parser, self._event, self._reactor, timing.stream_idle_timeout)
            try:
                await self._stream(reader, parser.last_event_id)
                await reader.finished
            except _StreamUnavailable:
                break
            except _NETWORK_ERRORS:
                pass
            if self._final is not None:
                return self._final
            idle_reconnects = 0 if reader.events else idle_reconnects + 1
        return await self._poll()

    async def _stream(self, reader: _EventReader, last_event_id: str | None) -> None:
        headers: _Headers = {**self._headers, "Accept": ["text/event-stream"]}
        if last_event_id is not None:
            headers["Last-Event-ID"] = [last_event_id]
        response = await self._within(
            self._http.get(self._events_url, headers=headers, unbuffered=True)
        )
        if response.code != 200:
            await self._within(response.content())
            if 400 <= response.code < 500:  # gone (404) or too many streams (429)
                raise _StreamUnavailable
            raise _ServerError(f"{self._events_url} answered {response.code}")
        response.deliverBody(reader)

    def _event(self, event: ServerEvent) -> bool:
        """Apply one event to the view; True once it is the final one."""
        view = self._view
        assert view is not None
        try:
            data = json.loads(event.data)
            if event.kind == "hop":
                hop = hop_from_json(data)
                if view.hop(hop):
                    self._display.changed(view.trace, [hop], False)
            elif event.kind == "status":
                if view.status(TraceStatus(data["status"])):
                    self._display.changed(view.trace, [], True)
            elif event.kind == "done":
                self._final = _Final(self._trace(data, self._events_url), event.data)
                return True
        except (KeyError, TypeError, ValueError) as e:
            raise Stop(
                EXIT_UNREACHABLE, f"{self._events_url} sent a malformed {event.kind} event ({e!r})"
            ) from None
        return False

    async def _poll(self) -> _Final:
        view = self._view
        assert view is not None
        failures = 0
        etag: str | None = None
        while True:
            try:
                headers: _Headers = {"Accept": ["application/json"]}
                if etag is not None:
                    headers["If-None-Match"] = [etag]
                response, body = await self._fetch("GET", self._self_url, headers=headers)
            except _NETWORK_ERRORS as e:
                failures += 1
                if failures >= self._timing.max_poll_failures:
                    raise self._unreachable(e) from None
            else:
                failures = 0
                if response.code == 404:
                    raise Stop(EXIT_FAILED, f"trace {self.trace_id} no longer exists on the server")
                if response.code == 200:
                    etag = (response.headers.getRawHeaders("etag") or [None])[-1]
                    trace = self._trace(self._decode(body, self._self_url), self._self_url)
                    status_changed = trace.status is not view.trace.status
                    hops = view.replace(trace)
                    if hops or status_changed:
                        self._display.changed(trace, hops, status_changed)
                    if trace.status.is_final:
                        return _Final(trace, body.decode())
                elif response.code != 304:
                    failures += 1
                    if failures >= self._timing.max_poll_failures:
                        raise Stop(
                            EXIT_UNREACHABLE,
                            f"{self._self_url} answered {problem_line(response.code, body)}",
                        )
            await deferLater(self._reactor, self._timing.poll_interval)

    async def cancel(self) -> str:
        """DELETE the trace (cancel it); what happened, as a few words."""
        if self.trace_id is None:
            return "no trace was started"
        try:
            response, _ = await self._fetch(
                "DELETE", self._self_url, self._timing.cancel_timeout, interruptible=False
            )
        except _NETWORK_ERRORS as e:
            return f"could not cancel trace {self.trace_id}: {network_reason(e)}"
        if response.code == 200:
            return f"trace {self.trace_id} cancelled"
        if response.code == 204:  # it had finished meanwhile, and is now removed
            return f"trace {self.trace_id} had finished"
        if response.code == 404:
            return f"trace {self.trace_id} no longer exists"
        return f"could not cancel trace {self.trace_id}: the server answered {response.code}"


def http_client(reactor: Any) -> HTTPClient:
    """A treq client of its own reactor, one connection per request (none left open)."""
    pool = HTTPConnectionPool(reactor, persistent=False)  # type: ignore[no-untyped-call]
    agent = Agent(reactor, connectTimeout=CONNECT_TIMEOUT, pool=pool)  # type: ignore[no-untyped-call]
    return HTTPClient(agent)


def _display(reactor: Any, options: TraceOptions, out: TextIO, live: bool | None) -> Display:
    if options.json:
        return JsonOnly(out)
    if live is None:
        live = out.isatty()
    return LiveTable(out, reactor) if live else PlainLines(out)


async def run(
    reactor: Any,
    options: TraceOptions,
    out: TextIO,
    err: TextIO,
    *,
    interrupt: Deferred[None] | None = None,
    live: bool | None = None,
    http: HTTPClient | None = None,
    timing: Timing = Timing(),
) -> int:
    """Run one trace on the server and show it; the exit status.

    When ``interrupt`` fires (Ctrl-C), the trace is cancelled on the server and the
    status is :data:`EXIT_INTERRUPTED`.
    """
    display = _display(reactor, options, out, live)
    session = Session(reactor, options, display, http or http_client(reactor), timing)

    async def work() -> _Final:
        await session.start()
        return await session.follow()

    running = Deferred.fromCoroutine(work())

    def on_interrupt(_: object) -> None:
        session.interrupted = True
        running.cancel()

    if interrupt is not None:
        interrupt.addCallback(on_interrupt)
    try:
        final = await running
    except Exception as e:
        if isinstance(display, LiveTable):
            display.stop()
        if session.interrupted:
            err.write(f"mtrd: interrupted; {await session.cancel()}\n")
            return EXIT_INTERRUPTED
        if isinstance(e, Stop):
            err.write(f"mtrd: {e.message}\n")
            return e.code
        err.write(f"mtrd: {_one_line(str(e)) or type(e).__name__}\n")
        return EXIT_FAILED
    display.finished(final.trace, final.document)
    reason = failure_reason(final.trace)
    if reason is not None:
        err.write(f"mtrd: {reason}\n")
    return exit_status(final.trace)


async def _main(reactor: Any, options: TraceOptions) -> None:
    interrupt: Deferred[None] = Deferred()
    stopped: Deferred[None] = Deferred()

    def on_shutdown() -> Deferred[None] | None:
        # Ctrl-C stops the reactor; hold the shutdown until the trace is cancelled.
        if stopped.called:
            return None
        interrupt.callback(None)
        return stopped

    reactor.addSystemEventTrigger("before", "shutdown", on_shutdown)
    try:
        code = await run(reactor, options, sys.stdout, sys.stderr, interrupt=interrupt)
    finally:
        stopped.callback(None)
    raise SystemExit(code)


def main(argv: Sequence[str]) -> int:
    """Run ``mtrd trace`` with ``argv`` (the arguments after ``trace``); the exit status."""
    try:
        options = parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or bad arguments (2)
        return e.code if isinstance(e.code, int) else EXIT_REFUSED
    try:
        react(lambda reactor: Deferred.fromCoroutine(_main(reactor, options)))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else EXIT_FAILED
    return EXIT_OK  # pragma: no cover - react always exits
