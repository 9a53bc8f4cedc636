"""Log output: one JSON object per line (the default), or text for people.

Both formats, and the access log (``mtrd.web.access``), stamp lines with :func:`log_time`:
ISO 8601 in UTC with milliseconds, ``2026-12-01T02:03:04.567+00:00``. The libraries'
own info lines (Twisted's "Site starting on 8080", "(TCP Port 8080 Closed)", "Main loop
terminated.", its resolver's "Resolver added ...") say nothing an operator acts on and
are left out; their warnings and errors are kept.
"""

from __future__ import annotations

import json
import re
import time
from typing import IO, Any

import attrs
from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    formatEvent,
    formatEventAsClassicLogText,
)
from zope.interface import implementer

# Keys of Twisted's own bookkeeping, not worth a field in the output.
_INTERNAL = {"log_logger", "log_source", "log_io", "log_trace", "log_system", "log_text"}


def _json_line(event: LogEvent) -> str:
    level = event.get("log_level", LogLevel.info)
    record: dict[str, Any] = {
        "time": log_time(event.get("log_time", 0.0)),
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


def _text_line(event: LogEvent) -> str:
    return escape_controls(formatEventAsClassicLogText(event, formatTime=_event_time) or "")


# Every control character but tab and newline: Twisted's text format already turns each
# newline inside an event into newline-tab, so no text can start a line of its own.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def escape_controls(text: str) -> str:
    """``text`` with control characters (but tab and newline) written as ``\\xNN``: what a
    client sent cannot rewrite a terminal or a line of the log (a carriage return, an
    escape sequence)."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def _event_time(when: float | None) -> str:
    return "-" if when is None else log_time(when)


@implementer(ILogObserver)
@attrs.frozen
class _OursOrWarnings:
    """Passes on mtrd's own events at every level, other namespaces' from warnings up."""

    write: ILogObserver

    def __call__(self, event: LogEvent) -> None:
        namespace: str = event.get("log_namespace") or ""
        level: LogLevel = event.get("log_level", LogLevel.info)
        if namespace == "mtrd" or namespace.startswith("mtrd.") or level >= LogLevel.warn:
            self.write(event)


def observer(stream: IO[str], log_format: str) -> ILogObserver:
    """A log observer writing ``json`` lines or ``text`` to ``stream``."""
    write: ILogObserver
    if log_format == "json":
        write = FileLogObserver(stream, _json_line)
    elif log_format == "text":
        write = FileLogObserver(stream, _text_line)
    else:
        raise ValueError(f"unknown log format {log_format!r}: json or text")
    return _OursOrWarnings(write)


__all__ = ["escape_controls", "log_time", "observer"]

# The second it was, and that second formatted: one tuple, replaced whole, so a line
# logged from another thread never pairs one second's text with another's.
_second: tuple[int, str] = (-1, "")


def log_time(now: float) -> str:
    """ISO 8601 UTC with milliseconds; the part up to the second is formatted once a second."""
    global _second  # noqa: PLW0603 - a one-entry cache of the formatted second
    whole = int(now)
    second = _second
    if second[0] != whole:
        second = _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{second[1]}.{int((now - whole) * 1000):03d}+00:00"
