"""Log output: one JSON object per line (the default), or text for people."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    formatEvent,
    formatEventAsClassicLogText,
)

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


__all__ = ["log_time", "observer"]

_second: list[Any] = [None, ""]


def log_time(now: float) -> str:
    """ISO 8601 UTC with milliseconds; the part up to the second is formatted once a second."""
    whole = int(now)
    if _second[0] != whole:
        _second[0] = whole
        _second[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return f"{_second[1]}.{int((now - whole) * 1000):03d}+00:00"
