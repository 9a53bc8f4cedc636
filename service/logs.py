"""Log output: one JSON object per line (the default), or text for people."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii as _quote
from typing import IO, Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    formatEvent,
    formatEventAsClassicLogText,
)

from service.edge import AccessRecord

# Keys of Twisted's own bookkeeping, not worth a field in the output.
_INTERNAL = {"log_logger", "log_source", "log_io", "log_trace", "log_system", "log_text"}


def _json_line(event: LogEvent) -> str:
    level = event.get("log_level", LogLevel.info)
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0.0), tz=UTC).isoformat(
            timespec="milliseconds"
        ),
        "level": getattr(level, "name", str(level)),
        "logger": event.get("log_namespace", "-"),
        "message": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        record["error"] = failure.getTraceback()
    for key, value in event.items():
        if key.startswith("log_") or key in _INTERNAL or key in record:
            continue
        record[key] = (
            value if isinstance(value, str | int | float | bool | type(None)) else repr(value)
        )
    return json.dumps(record, default=repr) + "\n"


def observer(stream: IO[str], log_format: str) -> ILogObserver:
    """A log observer writing ``json`` lines or ``text`` to ``stream``."""
    if log_format == "json":
        return FileLogObserver(stream, _json_line)
    if log_format == "text":
        return FileLogObserver(stream, lambda e: formatEventAsClassicLogText(e) or "")
    raise ValueError(f"unknown log format {log_format!r}: json or text")


_second: list[Any] = [None, ""]


def _stamp(now: float) -> str:
    """ISO 8601 UTC with milliseconds; the part up to the second is formatted once a second."""
    whole = int(now)
    if _second[0] != whole:
        _second[0] = whole
        _second[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return f"{_second[1]}.{int((now - whole) * 1000):03d}+00:00"


ACCESS_FLUSH_DELAY = 0.05
ACCESS_MAX_PENDING = 512


class AccessLog:
    """A fast writer of access-log lines, bypassing the logger's formatting machinery.

    It writes what :func:`observer` would write for the same event (one line each).
    Without a ``clock`` each line is written and flushed at once. With one, whole lines
    are held and written together in one call at most ``ACCESS_FLUSH_DELAY`` after the
    first of them (or once ``ACCESS_MAX_PENDING`` wait): a write per request is a system
    call per request when stdout is unbuffered (``PYTHONUNBUFFERED``, usual in
    containers), which cost ~15% of a GET. Lines are never split, so they cannot
    interleave with other log lines; :meth:`flush` writes what waits (at shutdown).
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
        stamp = _stamp(time.time())
        if self._json:
            # The same object json.dumps would write, assembled directly: this runs for
            # every request, and only the strings from the request need escaping.
            trace_id = "null" if record.trace_id is None else _quote(record.trace_id)
            line = (
                f'{{"time": "{stamp}", "level": "info", "logger": "mtrd.http", '
                f'"message": {_quote(record.message)}, "method": {_quote(record.method)}, '
                f'"path": {_quote(record.path)}, "status": {record.status:d}, '
                f'"duration_ms": {round(record.duration_ms, 3)!r}, "trace_id": {trace_id}, '
                f'"client_gone": {"true" if record.client_gone else "false"}}}\n'
            )
        else:
            line = f"{stamp} [mtrd.http#info] {record.message}\n"
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
