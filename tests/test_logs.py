"""Log lines: JSON objects by default, text on request."""

from __future__ import annotations

import io
import json

import pytest
from mtrd.logs import observer
from mtrd.web.access import ACCESS_FLUSH_DELAY, ACCESS_MAX_PENDING, AccessLog, AccessRecord
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure


def emit(log_format: str) -> str:
    stream = io.StringIO()
    log = Logger(namespace="mtrd.test", observer=observer(stream, log_format))
    log.info("GET {path} {status}", path="/traces", status=200, trace_id="abc")
    return stream.getvalue()


def test_json_lines_carry_message_level_and_fields() -> None:
    """Each event is one JSON object with the formatted message and its fields."""
    line = emit("json")
    assert line.endswith("\n")
    assert line.count("\n") == 1
    record = json.loads(line)
    assert record["message"] == "GET /traces 200"
    assert (record["level"], record["logger"]) == (LogLevel.info.name, "mtrd.test")
    assert (record["path"], record["status"], record["trace_id"]) == ("/traces", 200, "abc")
    assert record["time"].endswith("+00:00")


def test_json_lines_include_the_traceback_of_a_failure() -> None:
    """A logged failure carries its traceback in the error field."""
    stream = io.StringIO()
    log = Logger(namespace="mtrd.test", observer=observer(stream, "json"))
    log.failure("it broke", Failure(ValueError("boom")))
    record = json.loads(stream.getvalue())
    assert "ValueError: boom" in record["error"]


def test_text_format_is_for_people() -> None:
    """The text format is Twisted's classic line."""
    assert "GET /traces 200" in emit("text")
    assert not emit("text").startswith("{")


def test_unknown_format_is_refused() -> None:
    """Only json and text exist."""
    with pytest.raises(ValueError, match="json or text"):
        observer(io.StringIO(), "xml")


def test_access_lines_are_json_objects_with_the_request() -> None:
    """The fast access-log writer writes one JSON object per request."""
    stream = io.StringIO()
    write = AccessLog(stream, "json")
    write(AccessRecord("GET", "/traces/abc", 200, 1.25, "abc", client_gone=False))
    record = json.loads(stream.getvalue())
    assert record["message"] == "GET /traces/abc 200 1.2 ms"
    assert (record["logger"], record["level"]) == ("mtrd.http", "info")
    assert (record["status"], record["trace_id"], record["client_gone"]) == (200, "abc", False)
    assert record["time"].endswith("+00:00")


def test_access_lines_as_text() -> None:
    """In text mode the access line is for people."""
    stream = io.StringIO()
    AccessLog(stream, "text")(AccessRecord("POST", "/traces", 202, 3.0, "x", False))
    assert stream.getvalue().endswith("[mtrd.http#info] POST /traces 202 3.0 ms\n")


class _CountingStream(io.StringIO):
    flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def test_access_lines_are_flushed_together_soon_after_the_first() -> None:
    """With a clock, many requests cost one flush, ACCESS_FLUSH_DELAY after the first."""
    clock = Clock()
    stream = _CountingStream()
    write = AccessLog(stream, "text", clock)
    for _ in range(50):
        write(AccessRecord("GET", "/healthz", 200, 0.1, None, False))
        clock.advance(ACCESS_FLUSH_DELAY / 100)
    assert stream.flushes == 0
    clock.advance(ACCESS_FLUSH_DELAY / 2)
    assert stream.flushes == 1
    write(AccessRecord("GET", "/healthz", 200, 0.1, None, False))
    clock.advance(ACCESS_FLUSH_DELAY)
    assert stream.flushes == 2
    assert stream.getvalue().count("\n") == 51
    clock.advance(10)
    assert stream.flushes == 2  # nothing written, nothing flushed: an idle server sleeps


def test_access_json_line_is_what_json_dumps_writes() -> None:
    """The hand-assembled line is byte for byte json.dumps of the same fields, even for
    paths with quotes, backslashes, control and non-ASCII characters."""
    stream = io.StringIO()
    path = '/traces/"x\\y\x01\u00e9\U0001f600'
    AccessLog(stream, "json")(AccessRecord("GET", path, 404, 0.1234567, None, True))
    line = stream.getvalue().rstrip("\n")
    fields = json.loads(line)
    assert fields["path"] == path
    assert (fields["trace_id"], fields["client_gone"], fields["duration_ms"]) == (None, True, 0.123)
    assert line == json.dumps(fields)


def test_held_access_lines_are_written_whole_in_one_call() -> None:
    """Held lines go out in one write of whole lines: when the delay is over, when
    ACCESS_MAX_PENDING wait, and when flush() is called (at shutdown)."""
    writes: list[str] = []

    class Recording(io.StringIO):
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

    clock = Clock()
    log = AccessLog(Recording(), "text", clock)
    record = AccessRecord("GET", "/healthz", 200, 0.1, None, False)
    for _ in range(ACCESS_MAX_PENDING - 1):
        log(record)
    assert writes == []
    log(record)  # the last one that may wait: all go now, without waiting for the timer
    assert len(writes) == 1
    assert writes[0].count("\n") == ACCESS_MAX_PENDING
    assert writes[0].endswith("\n")
    log(record)
    log.flush()
    assert [w.count("\n") for w in writes] == [ACCESS_MAX_PENDING, 1]
    clock.advance(1)
    assert len(writes) == 2  # the flush cancelled the timer: nothing more to write
