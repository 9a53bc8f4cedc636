"""The ``text/event-stream`` format (WHATWG HTML, 9.2), read back into :class:`ServerEvent`."""

from __future__ import annotations

import re

import attrs

__all__ = ["EventParser", "ServerEvent"]


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
