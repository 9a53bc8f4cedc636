"""Around every HTTP request: one access-log line and the request metrics.

:class:`Edge` wraps the Klein resource. It also answers, as a problem, the one kind
of bad request Klein would answer in plain text: a URL that is not UTF-8.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from json.encoder import encode_basestring_ascii as quote
from typing import IO, Any
from urllib.parse import unquote_to_bytes

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource

from mtrd.logs import escape_controls, log_time
from mtrd.web.metrics import Metrics
from mtrd.web.problems import Problem, write_problem

_request_log = Logger(namespace="mtrd.http")


@attrs.frozen
class AccessRecord:
    """What the access log says about one request."""

    method: str
    path: str
    status: int
    duration_ms: float
    trace_id: str | None
    client_gone: bool

    @property
    def message(self) -> str:
        """The line a person reads."""
        return f"{self.method} {self.path} {self.status} {self.duration_ms:.1f} ms"


def log_access(record: AccessRecord) -> None:
    """Send the record through Twisted's logger (the default; see AccessLog)."""
    _request_log.info("{method} {path} {status} {duration_ms:.1f} ms", **attrs.asdict(record))


_URL_NOT_UTF8 = Problem(400, "bad-request", "Bad request", "the URL is not valid UTF-8")
_KNOWN_ROUTES = frozenset(
    {"/vantage-points", "/traces", "/monitors", "/healthz", "/readyz", "/metrics", "/openapi.yaml"}
    | {"/"}  # the web page
)


def route_of(path: str) -> str:
    """The route template a path belongs to, for metrics labels (bounded cardinality)."""
    if path in _KNOWN_ROUTES:
        return path
    parts = path.split("?", maxsplit=1)[0].rstrip("/").split("/")
    if len(parts) >= 3 and parts[1] in ("traces", "monitors"):
        collection = parts[1]
        return (
            f"/{collection}/{{id}}/events"
            if parts[3:] == ["events"]
            else (f"/{collection}/{{id}}" if len(parts) == 3 else "other")
        )
    if len(parts) >= 3 and parts[1] == "static":
        return "/static/{asset}"
    if len(parts) == 4 and parts[1] == "ui" and parts[2] in ("traces", "monitors"):
        return f"/ui/{parts[2]}/{{id}}"
    joined = "/".join(parts) or "/"
    return joined if joined in _KNOWN_ROUTES else "other"


class Edge(Resource):
    """Wraps the Klein resource: one log line and the metrics for every request."""

    isLeaf = True

    def __init__(
        self,
        inner: Any,
        clock: IReactorTime,
        metrics: Metrics | None,
        access_log: Callable[[AccessRecord], None] = log_access,
    ) -> None:
        super().__init__()
        self._inner = inner
        self._clock = clock
        self._metrics = metrics
        self._access_log = access_log

    def render(self, request: Any) -> Any:
        """Time the request, then let Klein answer it (or answer the refusal the channel
        made before reading the body)."""
        started = self._clock.seconds()
        path = request.path
        refusal = getattr(request, "refusal", None)
        if refusal is not None:
            body = write_problem(request, refusal, path.decode("utf-8", "replace"))
            self._record(request, started, client_gone=False)
            return body
        if (b"%" in path or not path.isascii()) and not _is_utf8(unquote_to_bytes(path)):
            # Klein would answer this with a bare text/plain 400.
            request.notifyFinish().addBoth(self._finished, request, started)
            return write_problem(request, _URL_NOT_UTF8, None)
        result = self._inner.render(request)
        if request.finished:
            # Answered while rendering, as most requests are: no need to wait for the end.
            self._record(request, started, client_gone=False)
        else:
            request.notifyFinish().addBoth(self._finished, request, started)
        return result

    def framing_refused(self, method: bytes, path: bytes, status: int) -> None:
        """Log and count a request refused before it was complete (bad framing, headers
        too large or too slow): as much of it as was read."""
        text = path.decode("utf-8", "replace")
        self._log_and_count(route_of(text), method.decode("ascii", "replace"), text, status, 0.0)

    def _finished(self, result: object, request: Any, started: float) -> None:
        self._record(request, started, client_gone=isinstance(result, Failure))

    def _record(self, request: Any, started: float, *, client_gone: bool) -> None:
        duration = self._clock.seconds() - started
        path = request.path.decode("utf-8", "replace")
        method = request.method.decode("ascii", "replace")
        route = route_of(path)
        status = int(request.code)
        trace_id = path.split("/", 3)[2] if route.startswith("/traces/{id}") else None
        if trace_id is None and status == 202:
            location = request.responseHeaders.getRawHeaders(b"location") or [b""]
            trace_id = location[0].decode().rsplit("/", 1)[-1] or None
        self._log_and_count(
            route, method, path, status, duration, trace_id=trace_id, client_gone=client_gone
        )

    def _log_and_count(
        self,
        route: str,
        method: str,
        path: str,
        status: int,
        duration: float,
        *,
        trace_id: str | None = None,
        client_gone: bool = False,
    ) -> None:
        if self._metrics is not None:
            self._metrics.observe_request(route, method, status, duration)
        self._access_log(
            AccessRecord(
                method=method,
                path=path,
                status=status,
                duration_ms=duration * 1000,
                trace_id=trace_id,
                client_gone=client_gone,
            )
        )


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


ACCESS_FLUSH_DELAY = 0.05
ACCESS_MAX_PENDING = 512


class AccessLog:
    """A fast writer of access-log lines, bypassing the logger's formatting machinery.

    It writes what :func:`observer` would write for the same event (one line each).
    Without a ``clock`` each line is written and flushed at once. With one, whole lines
    are held and written together in one call at most ``ACCESS_FLUSH_DELAY`` after the
    first of them (or once ``ACCESS_MAX_PENDING`` wait): a write per request is a system
    call per request when stdout is unbuffered (``PYTHONUNBUFFERED``, usual in
    containers), a share of a GET worth saving (bench/results). Lines are never split,
    so they cannot interleave with other log lines; :meth:`flush` writes what waits (at
    shutdown).
    """

    def __init__(self, stream: IO[str], log_format: str, clock: IReactorTime | None = None) -> None:
        if log_format not in ("json", "text"):
            raise ValueError(f"unknown log format {log_format!r}: json or text")
        self._stream = stream
        self._json = log_format == "json"
        self._clock = clock
        self._pending: list[str] = []
        self._flush_due: IDelayedCall | None = None

    def __call__(self, record: AccessRecord) -> None:
        """Write (or hold) the line of one request."""
        now = log_time(time.time())
        if self._json:
            # The same object json.dumps would write, assembled directly: this runs for
            # every request, and only the strings from the request need escaping.
            trace_id = "null" if record.trace_id is None else quote(record.trace_id)
            line = (
                f'{{"time": "{now}", "level": "info", "logger": "mtrd.http", '
                f'"message": {quote(record.message)}, "method": {quote(record.method)}, '
                f'"path": {quote(record.path)}, "status": {record.status:d}, '
                f'"duration_ms": {round(record.duration_ms, 3)!r}, "trace_id": {trace_id}, '
                f'"client_gone": {"true" if record.client_gone else "false"}}}\n'
            )
        else:
            line = f"{now} [mtrd.http#info] {escape_controls(record.message)}\n"
        if self._clock is None:
            self._stream.write(line)
            self._stream.flush()
            return
        self._pending.append(line)
        if len(self._pending) >= ACCESS_MAX_PENDING:
            self.flush()
        elif self._flush_due is None:
            self._flush_due = self._clock.callLater(ACCESS_FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        """Write every held line now."""
        if self._flush_due is not None and self._flush_due.active():
            self._flush_due.cancel()
        self._flush_due = None
        if self._pending:
            text = "".join(self._pending)
            self._pending.clear()
            self._stream.write(text)
        self._stream.flush()
