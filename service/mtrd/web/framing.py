"""HTTP/1.1 framing: limits checked before twisted.web reads on, answered as problem+json.

twisted.web refuses over-long request lines and header blocks by writing a bodiless
``400 Bad Request``, spools any body over 100 kB (or any chunked one) to a temporary
file, and hands the request on only once the whole body is in. mtrd's channel and
request do otherwise:

- framing errors get problem+json: ``414`` for an over-long request line (the URL),
  ``431`` for too much header data, ``400`` for a request line it cannot read;
- once the headers are in, before a byte of the body is read, a request is admitted or
  refused (:meth:`ProblemChannel.admit`): an HTTP/1.1 request without exactly one
  ``Host`` gets ``400``, a request without a valid token ``401``, a ``Content-Length``
  over the body limit ``413``, ``OPTIONS *`` ``501``;
- bodies are kept in memory and counted as they stream in: past the limit the request
  is answered ``413`` at once and the rest is never read;
- each phase of a request has a total deadline (:class:`~mtrd.web.limits.EdgeLimits`):
  a connection with no request begun is closed after ``idle_timeout``; a request whose
  headers are not in within ``header_timeout`` of its first byte, or whose body is not
  in within ``body_timeout`` of its headers, is answered ``408``.

A refused request is answered, then the connection closes: mtrd stops sending, reads and
drops what the client still sends for a moment (:data:`LINGER`), then closes. Closing
at once with unread bytes would make the kernel reset the connection, and the client
could lose the answer it had not read yet.

Refusals once the headers are in go through the site like any request (the edge logs
and counts them); framing errors and header timeouts, which have no complete request,
are logged and counted through the site's ``framing_refused``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from io import BytesIO
from typing import Any
from urllib.parse import unquote_to_bytes

import attrs
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.http import datetimeToString
from twisted.web.http_headers import Headers

from mtrd.web.auth import UNAUTHORIZED
from mtrd.web.limits import DEFAULT_LIMITS, MAX_BODY, EdgeLimits
from mtrd.web.problems import PROBLEM_JSON, Problem

MAX_REQUEST_LINE = 8192
MAX_HEADER_BYTES = 16384
MAX_HEADER_NAME = 128
LINGER = 2.0
_REQUEST_LINE = re.compile(rb"^[A-Z]+ \S+ HTTP/\d\.\d$")
_REQUEST_START = re.compile(rb"^[A-Z]+ (/|\*|https?://)")
_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}
NOSNIFF = (b"X-Content-Type-Options", b"nosniff")


def body_too_large(limit: int = MAX_BODY) -> Problem:
    """413: the body is over the limit (said by its Content-Length, or counted)."""
    return Problem(413, "body-too-large", "Body too large", f"the limit is {limit} bytes")


def _timed_out(what: str, seconds: float) -> Problem:
    return Problem(
        408, "request-timeout", "Request timeout", f"the {what} did not arrive within {seconds:g} s"
    )


_NO_HOST = Problem(400, "bad-request", "Bad request", "an HTTP/1.1 request needs one Host header")
_TWO_HOSTS = Problem(400, "bad-request", "Bad request", "a request has at most one Host header")
_STAR = Problem(
    400, "bad-request", "Bad request", "the request target * is only for OPTIONS * requests"
)
_OPTIONS_STAR = Problem(
    501, "not-implemented", "Not implemented", "mtrd implements no server-wide OPTIONS"
)


def problem_response(
    status: int, name: str, detail: str, *, retry_after: int | None = None
) -> bytes:
    """A complete HTTP/1.1 response carrying a problem+json body; the connection closes."""
    reason = _REASONS[status]
    body = Problem(status, name, reason.decode(), detail).render()
    retry = b"" if retry_after is None else b"Retry-After: %d\r\n" % retry_after
    head = (
        b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s: %s\r\n%s"
        b"Connection: close\r\n\r\n" % (status, reason, PROBLEM_JSON, len(body), *NOSNIFF, retry)
    )
    return head + body


@attrs.frozen
class Admission:
    """What a request is checked against once its headers are in, before its body."""

    authorized: Callable[[str, bytes | None], bool] = lambda _path, _authorization: True
    max_body: int = MAX_BODY
    limits: EdgeLimits = DEFAULT_LIMITS


OPEN_ADMISSION = Admission()


class MtrdRequest(server.Request):
    """A request whose body stays in memory, counted, and that may be refused before its
    body is read (``refusal``: the edge answers it instead of the routes)."""

    refusal: Problem | None = None

    def gotLength(self, length: int | None) -> None:  # noqa: ARG002 - twisted.web's call
        """Keep the body in memory, whatever its length: it is bounded by the limit."""
        self.content = BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        """Keep a chunk of the body; past the limit, refuse the request (413)."""
        if self.refusal is not None:
            return
        assert self.content is not None
        limit = _admission(self.channel).max_body
        if self.content.tell() + len(data) > limit:
            self.refusal = body_too_large(limit)
            return
        self.content.write(data)

    def process(self) -> None:
        """As twisted.web does, without naming the server and its version, and with
        ``nosniff``; ``*`` goes to the site's resource like any other target."""
        self.site = self.channel.site  # type: ignore[attr-defined]
        self.setHeader(b"Date", datetimeToString())
        self.setHeader(*NOSNIFF)
        self.prepath = []
        self.postpath = [unquote_to_bytes(part) for part in self.path[1:].split(b"/")]
        try:
            self.render(self.site.getResourceFor(self))
        except BaseException:  # twisted.web's own catch-all, answered as problem+json
            self.processingFailed(Failure())

    def processingFailed(self, reason: Failure) -> None:
        """A fault below the edge: a 500 problem, never a page with a traceback."""
        self._log.failure("unhandled error answering {uri}", failure=reason, uri=self.uri)
        body = Problem(
            500, "internal-error", "Internal error", "mtrd failed to answer; see its log"
        ).render()
        self.setResponseCode(500)
        self.setHeader(b"Content-Type", PROBLEM_JSON)
        self.setHeader(b"Content-Length", b"%d" % len(body))
        self.write(body)
        self.finish()


def _admission(channel: Any) -> Admission:
    site = getattr(channel, "site", None)
    return getattr(site, "admission", None) or OPEN_ADMISSION


class Phase(enum.Enum):
    """Where a connection is in reading a request."""

    IDLE = "idle"  # no request begun: new, or between two requests
    HEADERS = "headers"
    BODY = "body"
    ANSWERING = "answering"  # the request is read; no deadline while it is answered
    CLOSING = "closing"


def _discard(_data: bytes) -> None:
    """What a closing connection does with the bytes a client still sends."""


class ProblemChannel(http.HTTPChannel):
    """An HTTPChannel whose framing errors are problem+json answers, which admits a
    request before reading its body, and which gives each phase a deadline (see the
    module docstring)."""

    MAX_LENGTH = MAX_HEADER_BYTES
    totalHeadersSize = MAX_HEADER_BYTES
    phase = Phase.IDLE
    _deadline: IDelayedCall | None = None
    _due: float | None = None  # when the current phase is over; None: no deadline
    _seconds: Callable[[], float]
    _linger = False
    _host: Any = None
    _timeouts: dict[Phase, float]  # each phase's timeout, from the site's limits
    _shortest: float

    # -- phases and their deadlines ------------------------------------------------------

    @property
    def _limits(self) -> EdgeLimits:
        return _admission(self).limits

    def connectionMade(self) -> None:
        """Start the idle deadline: a connection must begin a request in time."""
        super().connectionMade()
        limits = self._limits
        self._timeouts = {
            Phase.IDLE: limits.idle_timeout,
            Phase.HEADERS: limits.header_timeout,
            Phase.BODY: limits.body_timeout,
        }
        self._shortest = min(self._timeouts.values())
        self._enter(Phase.IDLE)

    def getHost(self) -> Any:  # noqa: N802 - Twisted's name
        """The connection's local address, asked of the socket once: twisted.web asks for
        it with every request, and a TCP transport makes a system call each time."""
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def _enter(self, phase: Phase) -> None:
        """Start ``phase`` and its deadline.

        Phases change several times per request; a timer made and cancelled for each is
        a share of a small request's CPU (bench/results/peers.md). So one timer serves
        them all: it fires at most the shortest timeout after it was armed, before any
        phase begun since can be due, and then expires the phase or waits on for it.
        """
        self.phase = phase
        timeout = self._timeouts.get(phase)
        if timeout is None:
            self._due = None  # a timer still armed finds nothing due
            return
        deadline = self._deadline
        if deadline is not None and deadline.active():
            self._due = self._seconds() + timeout
            return
        self._arm(timeout)
        self._due = self._seconds() + timeout

    def _arm(self, seconds: float) -> None:
        deadline: Any = self.callLater(min(seconds, self._shortest), self._expire)
        self._deadline = deadline
        self._seconds = deadline.seconds  # the clock the timers run on

    def _expire(self) -> None:
        self._deadline = None
        due = self._due
        if due is None:
            return
        left = due - self._seconds()
        if left > 0:
            self._arm(left)
            return
        self._due = None
        {
            Phase.IDLE: self._idle_expired,
            Phase.HEADERS: self._headers_expired,
            Phase.BODY: self._body_expired,
        }[self.phase]()

    def _disarm(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        self._due = None

    def dataReceived(self, data: bytes) -> None:
        """The first byte of a request starts its header deadline."""
        if self.phase is Phase.IDLE and data:
            self._enter(Phase.HEADERS)
        super().dataReceived(data)

    def allContentReceived(self) -> None:
        """The request is read: no deadline while it is answered."""
        self._enter(Phase.ANSWERING)
        super().allContentReceived()

    def requestDone(self, request: http.Request) -> None:
        """Between requests, the idle deadline again (or the next one's headers, when the
        client sent it already)."""
        if self.persistent and self.phase is Phase.ANSWERING:
            self._enter(Phase.HEADERS if self._dataBuffer else Phase.IDLE)
        super().requestDone(request)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """No deadline outlives the connection."""
        self.phase = Phase.CLOSING
        self._disarm()
        super().connectionLost(reason)

    def _idle_expired(self) -> None:
        self._deadline = None
        self.phase = Phase.CLOSING
        super().loseConnection()

    def _headers_expired(self) -> None:
        self._deadline = None
        detail = f"the request's headers did not arrive within {self._limits.header_timeout:g} s"
        self._refuse(408, "request-timeout", detail)

    def _body_expired(self) -> None:
        self._deadline = None
        request = self.requests[-1]
        if getattr(request, "refusal", None) is None:
            request.refusal = _timed_out("request's body", self._limits.body_timeout)
        self._end_body_early()

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:  # noqa: N802 - Twisted's name
        """Write a response's head as twisted.web does, joined first: a TCP transport keeps
        each piece of a sequence apart, some thirty for a head, a share of a small
        request's CPU (bench/results/peers.md)."""
        if not isinstance(headers, Headers):
            super().writeHeaders(version, code, reason, headers)
            return
        head = [version, b" ", code, b" ", reason, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                head += (name, b": ", value, b"\r\n")
        head.append(b"\r\n")
        transport: Any = self.transport
        transport.write(b"".join(head))

    # -- admission, once the headers are in ----------------------------------------------

    def headerReceived(self, line: bytes) -> bool:
        """Refuse what twisted.web would choke on or keep: a Content-Length too long for
        int(), a header name longer than any real one (twisted.web caches names)."""
        name, colon, value = line.partition(b":")
        if colon and len(name) > MAX_HEADER_NAME:
            self._refuse(431, "headers-too-large", f"a header name is over {MAX_HEADER_NAME} bytes")
            return False
        if colon and name.strip().lower() == b"content-length":
            digits = value.strip(b" \t")
            if digits.isdigit() and len(digits) > 18:
                limit = _admission(self).max_body
                self._refuse(413, "body-too-large", f"the limit is {limit} bytes")
                return False
        return bool(super().headerReceived(line))

    def allHeadersReceived(self) -> None:
        """Admit the request, or answer it now, without reading its body."""
        request = self.requests[-1]
        refusal = self.admit(request, self._command, self._path, self._version, self.length)
        if refusal is None:
            super().allHeadersReceived()
            if self.length != 0:
                self._enter(Phase.BODY)
            return
        request.refusal = refusal
        request.gotLength(0)
        request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
        self.persistent = False
        self._linger = True
        # The body is never read: with no length left, lineReceived ends the request
        # now and the site answers the refusal.
        self.length = 0

    def admit(
        self, request: MtrdRequest, method: bytes, target: bytes, version: bytes, length: int | None
    ) -> Problem | None:
        """Why the request is refused before its body is read, or None to read on."""
        hosts = request.requestHeaders.getRawHeaders(b"host") or []
        if len(hosts) > 1:
            return _TWO_HOSTS
        if version == b"HTTP/1.1" and not hosts:
            return _NO_HOST
        if target == b"*":
            return _OPTIONS_STAR if method == b"OPTIONS" else _STAR
        admission = _admission(self)
        path = target.split(b"?", 1)[0].decode("utf-8", "replace")
        authorization = request.requestHeaders.getRawHeaders(b"authorization")
        if not admission.authorized(path, authorization[-1] if authorization else None):
            return UNAUTHORIZED
        if length is not None and length > admission.max_body:
            return body_too_large(admission.max_body)
        return None

    def rawDataReceived(self, data: bytes) -> None:
        """Body bytes; a request refused while its body streams in is answered at once."""
        super().rawDataReceived(data)
        if self.phase is Phase.BODY and getattr(self.requests[-1], "refusal", None) is not None:
            self._end_body_early()

    def _end_body_early(self) -> None:
        self.requests[-1].responseHeaders.setRawHeaders(b"Connection", [b"close"])
        self.persistent = False
        self._linger = True
        self.allContentReceived()

    # -- framing errors --------------------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        """Check the URL and header limits before twisted.web reads the line."""
        if len(line) > MAX_REQUEST_LINE and _REQUEST_LINE.match(line):
            self._refuse(414, "uri-too-long", f"the request line is over {MAX_REQUEST_LINE} bytes")
            return
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self._refuse(431, "headers-too-large", f"the headers are over {MAX_HEADER_BYTES} bytes")
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        """One line longer than any header may be."""
        if _REQUEST_START.match(line[:40]):
            self._refuse(414, "uri-too-long", f"the request line is over {MAX_REQUEST_LINE} bytes")
        else:
            self._refuse(431, "headers-too-large", f"a header line is over {self.MAX_LENGTH} bytes")

    def _respondToBadRequestAndDisconnect(self) -> None:
        if self._receivedHeaderCount > self.maxHeaders:
            self._refuse(431, "headers-too-large", f"more than {self.maxHeaders} header lines")
            return
        self._refuse(400, "bad-request", "the request is not valid HTTP/1.1")

    def _refuse(self, status: int, name: str, detail: str) -> None:
        if self.transport is None or self.phase is Phase.CLOSING:
            return
        self.transport.write(problem_response(status, name, detail))
        refused = getattr(getattr(self, "site", None), "framing_refused", None)
        if refused is not None:
            refused(getattr(self, "_command", b"-"), getattr(self, "_path", b"-"), status)
        self._linger = True
        self.loseConnection()

    # -- closing ---------------------------------------------------------------------------

    def loseConnection(self) -> None:
        """Close; after a refusal, linger first (see the module docstring)."""
        if not self._linger or self.transport is None:
            if self.transport is not None:
                super().loseConnection()
            return
        self._linger = False
        self.phase = Phase.CLOSING
        self._disarm()
        # What the client still sends is dropped, whatever state the parser was in.
        self.dataReceived = self.rawDataReceived = self.lineReceived = _discard  # type: ignore[assignment]
        self._dataBuffer = []
        transport: Any = self.transport
        transport.unregisterProducer()
        close_writing = getattr(transport, "loseWriteConnection", None)
        if close_writing is None:
            transport.loseConnection()
            return
        transport.resumeProducing()
        close_writing()
        self._deadline = self.callLater(LINGER, transport.abortConnection)
