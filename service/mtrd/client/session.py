"""One ``mtrd trace`` run against a server, over treq: POST, follow the events, poll, cancel.

The session POSTs the trace, then reads ``links.events`` as a ``text/event-stream``,
keeping a local picture of the trace (:class:`TraceView`) that each ``hop`` and
``status`` event updates and ``done`` replaces with the final resource. A stream
that drops before ``done`` is resumed with ``Last-Event-ID`` a bounded number of
times, then the session polls ``GET /traces/{id}`` instead. Every wait is on the
reactor it is given, so tests drive it with a ``Clock`` and ``StubTreq``.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import attrs
from hyperlink import EncodedURL
from treq.client import HTTPClient
from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.internet.protocol import connectionDone
from twisted.internet.task import deferLater
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

from mtrd.client.display import Display
from mtrd.client.eventstream import EventParser, ServerEvent
from mtrd.client.options import TraceOptions
from mtrd.client.outcome import EXIT_FAILED, EXIT_REFUSED, EXIT_UNREACHABLE, Stop, one_line
from mtrd.tracing.model import Hop, Trace, TraceStatus
from mtrd.web.render import hop_from_json, trace_from_json

__all__ = [
    "CONNECT_TIMEOUT",
    "FinalTrace",
    "Session",
    "Timing",
    "TraceView",
    "http_client",
    "network_reason",
    "problem_line",
]

CONNECT_TIMEOUT = 10.0


class _IPv6URL(EncodedURL):
    """A URL whose host is an IPv6 literal, handed to treq as already encoded.

    treq sends every URL through ``to_uri``, which IDNA-encodes the host, and IDNA
    rejects the colons of an IPv6 literal (python-hyper/hyperlink#68); Twisted's
    Agent itself connects to ``http://[::1]:8080`` fine. The URLs built here are
    ASCII already, so there is nothing left to encode.
    """

    def to_uri(self) -> EncodedURL:
        """This URL as it is."""
        return self


def _for_treq(url: str) -> str | EncodedURL:
    host = urlsplit(url).hostname or ""
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        return url
    return _IPv6URL.from_text(url) if literal.version == 6 else url


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
    return one_line(str(error)).rstrip(".") or type(error).__name__


def problem_line(code: int, body: bytes) -> str:
    """A problem+json answer as one line: status, title, detail and each field at fault."""
    try:
        problem = json.loads(body)
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        text = one_line(body.decode("utf-8", "replace"))[:200]
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
    return one_line(line)


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
class FinalTrace:
    """A trace that ended, and its resource as the server sent it."""

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
        self._final: FinalTrace | None = None
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
            response = await self._http.request(method, _for_treq(url), headers=headers, **kwargs)
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
            self._final = FinalTrace(self._view.trace, body.decode())

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

    async def follow(self) -> FinalTrace:
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
            self._http.get(_for_treq(self._events_url), headers=headers, unbuffered=True)
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
                self._final = FinalTrace(self._trace(data, self._events_url), event.data)
                return True
        except (KeyError, TypeError, ValueError) as e:
            raise Stop(
                EXIT_UNREACHABLE, f"{self._events_url} sent a malformed {event.kind} event ({e!r})"
            ) from None
        return False

    async def _poll(self) -> FinalTrace:
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
                if response.code == 404:
                    raise Stop(EXIT_FAILED, f"trace {self.trace_id} no longer exists on the server")
                if response.code in (200, 304):
                    failures = 0  # only an answer about the trace counts as reaching it
                if response.code == 200:
                    etag = (response.headers.getRawHeaders("etag") or [None])[-1]
                    trace = self._trace(self._decode(body, self._self_url), self._self_url)
                    status_changed = trace.status is not view.trace.status
                    hops = view.replace(trace)
                    if hops or status_changed:
                        self._display.changed(trace, hops, status_changed)
                    if trace.status.is_final:
                        return FinalTrace(trace, body.decode())
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
