"""Log lines: JSON objects by default, text on request."""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys

import pytest
from mtrd.logs import escape_controls, log_time, observer
from mtrd.web.access import ACCESS_FLUSH_DELAY, ACCESS_MAX_PENDING, AccessLog, AccessRecord
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from tests.mtrd_process import free_port, wait_ready
from tests.test_serve import require_mtr_packet

# ISO 8601 in UTC with milliseconds: every log line's time looks like this.
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00")
WHEN = 1_795_000_000.25  # exact in binary, so the milliseconds are too


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
    """The text format is a timestamp, [namespace#level] and the message."""
    line = emit("text")
    stamp, rest = line.split(" ", 1)
    assert STAMP.fullmatch(stamp)
    assert rest == "[mtrd.test#info] GET /traces 200\n"


def test_log_time_is_iso_8601_utc_with_milliseconds() -> None:
    """log_time writes ISO 8601 in UTC with milliseconds and +00:00."""
    assert log_time(WHEN) == "2026-11-18T11:06:40.250+00:00"
    assert log_time(WHEN + 1.5) == "2026-11-18T11:06:41.750+00:00"


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_both_formats_stamp_an_event_with_log_time(log_format: str) -> None:
    """JSON and text lines carry the same timestamp, log_time's, for the same event."""
    stream = io.StringIO()
    observer(stream, log_format)(
        {
            "log_format": "hello",
            "log_time": WHEN,
            "log_namespace": "mtrd",
            "log_level": LogLevel.info,
        }
    )
    assert log_time(WHEN) in stream.getvalue()


def test_access_lines_are_stamped_like_the_others() -> None:
    """Access lines, in both formats, carry an ISO 8601 UTC time with milliseconds."""
    record = AccessRecord("GET", "/healthz", 200, 0.1, None, False)
    as_json, as_text = io.StringIO(), io.StringIO()
    AccessLog(as_json, "json")(record)
    AccessLog(as_text, "text")(record)
    assert STAMP.fullmatch(json.loads(as_json.getvalue())["time"])
    assert STAMP.fullmatch(as_text.getvalue().split(" ", 1)[0])


@pytest.mark.parametrize(
    ("namespace", "level", "shown"),
    [
        ("mtrd", LogLevel.info, True),
        ("mtrd.engine.pool.ProbePool", LogLevel.debug, True),
        ("twisted.internet.base", LogLevel.info, False),
        ("log_legacy", LogLevel.info, False),
        ("log_legacy", LogLevel.warn, True),
        ("twisted.internet.defer", LogLevel.critical, True),
        ("mtrdx", LogLevel.info, False),
    ],
)
def test_library_lines_below_warning_are_left_out(
    namespace: str, level: LogLevel, shown: bool
) -> None:
    """mtrd's own lines are written at every level; the libraries' only from warn up."""
    stream = io.StringIO()
    observer(stream, "json")(
        {"log_format": "x", "log_time": WHEN, "log_namespace": namespace, "log_level": level}
    )
    assert bool(stream.getvalue()) is shown


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_serve_logs_no_twisted_internals_and_one_time_format(log_format: str) -> None:
    """The real ``mtrd serve``, started and stopped with SIGTERM, writes only mtrd's own
    lines (no "Site starting on", "Port Closed", "Main loop terminated"), every one
    stamped with ISO 8601 UTC milliseconds."""
    require_mtr_packet()
    url = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [sys.executable, "-m", "mtrd", "serve", "--listen", url, "--log-format", log_format],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_ready(f"http://{url}", process)
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=20)
    assert process.returncode == 0
    lines = out.splitlines()
    assert len(lines) >= 4  # workers ready, listening, the request, shutting down, stopped
    for line in lines:
        if log_format == "json":
            record = json.loads(line)
            stamp, namespace = record["time"], record["logger"]
        else:
            stamp, system, _ = line.split(" ", 2)
            namespace = system.strip("[]").partition("#")[0]
        assert STAMP.fullmatch(stamp), line
        assert namespace.startswith("mtrd"), line
    assert "mtrd stopped" in lines[-1]


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


def test_control_characters_are_escaped_but_tab_and_newline_kept() -> None:
    """escape_controls writes CR, ESC, DEL and C1 controls as \\xNN; tab and newline stay."""
    assert escape_controls("a\rb\x1b[2Jc\x7fd\x85e\tf\ng") == ("a\\x0db\\x1b[2Jc\\x7fd\\x85e\tf\ng")


def test_text_logs_escape_control_characters_from_the_message() -> None:
    """A message carrying a carriage return and an escape sequence is one plain line."""
    stream = io.StringIO()
    Logger(namespace="mtrd.test", observer=observer(stream, "text")).info(
        "asked for {path}", path="/x\r\x1b[2Jfake line"
    )
    line = stream.getvalue()
    assert line.count("\n") == 1
    assert "\r" not in line
    assert "\x1b" not in line
    assert "/x\\x0d\\x1b[2Jfake line" in line


def test_text_access_lines_escape_control_characters() -> None:
    """The text access log escapes what it does not write itself."""
    stream = io.StringIO()
    AccessLog(stream, "text")(AccessRecord("GET", "/a\x1bb", 404, 1.0, None, False))
    assert "/a\\x1bb 404" in stream.getvalue()
