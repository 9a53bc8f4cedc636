"""HTTP/1.1 framing limits that answer with problem+json instead of a bare 400.

twisted.web refuses over-long request lines and header blocks by writing a
bodiless ``400 Bad Request``. mtrd answers every error as problem+json, so its
channel checks the limits first: ``414`` for an over-long request line (the
URL), ``431`` for too much header data, ``400`` for a request line it cannot read.
"""

from __future__ import annotations

import re

from twisted.web import http

from mtrd.web.problems import PROBLEM_JSON, Problem

MAX_REQUEST_LINE = 8192
MAX_HEADER_BYTES = 16384
_REQUEST_LINE = re.compile(rb"^[A-Z]+ \S+ HTTP/\d\.\d$")
_REQUEST_START = re.compile(rb"^[A-Z]+ (/|\*|https?://)")
_REASONS = {400: b"Bad Request", 414: b"URI Too Long", 431: b"Request Header Fields Too Large"}


def problem_response(status: int, name: str, detail: str) -> bytes:
    """A complete HTTP/1.1 response carrying a problem+json body; the connection closes."""
    reason = _REASONS[status]
    body = Problem(status, name, reason.decode(), detail).render()
    head = (
        b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        % (status, reason, PROBLEM_JSON, len(body))
    )
    return head + body


class ProblemChannel(http.HTTPChannel):
    """An HTTPChannel whose framing errors are problem+json answers."""

    MAX_LENGTH = MAX_HEADER_BYTES
    totalHeadersSize = MAX_HEADER_BYTES

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
        if self.transport is None:
            return
        self.transport.write(problem_response(status, name, detail))
        self.loseConnection()
        # Ignore whatever else the client sends on this connection.
        self.dataReceived = lambda _: None  # type: ignore[method-assign]
