"""``mtrd trace``, the command-line client: its pure parts, then against a server in memory.

The session runs on a ``Clock`` against ``StubTreq``: over the real Klein resource (backed
by the fake network) or a scripted resource whose streams drop. One test runs the real
command as a process.
"""

from __future__ import annotations

import io
import itertools
import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mtrd.client import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EventParser,
    LiveTable,
    PlainLines,
    ServerEvent,
    Timing,
    TraceView,
    exit_status,
    failure_reason,
    hop_line,
    main,
    network_reason,
    parse_args,
    problem_line,
    run,
    trace_from_json,
)
from mtrd.tracing.jobs import TraceJobs
from mtrd.tracing.model import (
    Hop,
    HopEnd,
    JitterStats,
    Responder,
    RttStats,
    Trace,
    TraceError,
    TraceRequest,
    TraceStatus,
    TraceTarget,
)
from mtrd.tracing.store import StoreLimits, TraceStore
from mtrd.tracing.tracer import Tracer
from mtrd.web.render import hop_json, trace_json
from mtrd.web.routes import Api
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import (
    ConnectionDone,
    ConnectionRefusedError,
    DNSLookupError,
    NoRouteError,
    TCPTimedOutError,
)
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed, ResponseNeverReceived
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from tests.fakes import FakeNetwork
from tests.mtrd_process import free_port
from tests.openapi import validate_schema
from tests.test_http import FakePool
from tests.test_jobs import ROUTERS, StaticResolver

# -- the event-stream parser ----------------------------------------------------------------

STREAM = (
    b": stream of abc\n\n"
    b'id: 1\nevent: status\ndata: {"status": "running"}\n\n'
    b": keep-alive\n\n"
    b"id: 2\r\nevent: hop\r\ndata: line one\r\ndata: line two\r\n\r\n"
    b"id: 3\revent: done\rdata:no space\r\r"
)
EXPECTED = [
    ServerEvent("status", '{"status": "running"}', "1"),
    ServerEvent("hop", "line one\nline two", "2"),
    ServerEvent("done", "no space", "3"),
]


def feed_all(chunks: list[bytes]) -> list[ServerEvent]:
    parser = EventParser()
    return [event for chunk in chunks for event in parser.feed(chunk)]


def test_parser_reads_events_comments_and_every_line_ending() -> None:
    """Whole events come out in order; comments are skipped; LF, CRLF and CR all end lines."""
    assert feed_all([STREAM]) == EXPECTED


def test_parser_gives_the_same_events_split_at_every_byte() -> None:
    """A chunk boundary anywhere (inside a CRLF too) changes nothing."""
    for cut in range(len(STREAM) + 1):
        assert feed_all([STREAM[:cut], STREAM[cut:]]) == EXPECTED, cut


def test_parser_gives_the_same_events_one_byte_at_a_time() -> None:
    """Chunks of one byte each give the same events."""
    assert feed_all([STREAM[i : i + 1] for i in range(len(STREAM))]) == EXPECTED


@given(st.lists(st.integers(0, len(STREAM)), max_size=12))
def test_parser_gives_the_same_events_for_any_chunking(cuts: list[int]) -> None:
    """Any set of chunk boundaries gives the same events."""
    points = [0, *sorted(cuts), len(STREAM)]
    assert feed_all([STREAM[a:b] for a, b in itertools.pairwise(points)]) == EXPECTED


def test_parser_joins_a_crlf_split_by_an_empty_chunk() -> None:
    """CR, an empty chunk, then LF still end one line, not two."""
    assert feed_all([b"event: hop\r", b"", b"\ndata: x\r\n\r\n"]) == [ServerEvent("hop", "x")]


def test_parser_keeps_utf8_split_across_chunks() -> None:
    """A multi-byte character cut in two by a chunk boundary arrives whole."""
    data = "data: r\u00e9seau\n\n".encode()
    cut = data.index(b"\xc3") + 1
    assert feed_all([data[:cut], data[cut:]]) == [ServerEvent("message", "r\u00e9seau", None)]


def test_parser_keeps_the_last_id_and_skips_empty_events() -> None:
    """An id with no data dispatches nothing but is kept for the next event and resumption."""
    parser = EventParser(last_event_id="7")
    assert parser.feed(b"id: 8\n\n") == []
    assert parser.last_event_id == "8"
    assert parser.feed(b"event: hop\ndata: x\n\n") == [ServerEvent("hop", "x", "8")]


def test_parser_resumes_after_the_last_whole_event() -> None:
    """The id of an event cut short is not the one to resume after."""
    parser = EventParser()
    parser.feed(b"id: 1\ndata: x\n\nid: 2\nevent: ho")
    assert parser.last_event_id == "1"


def test_parser_holds_an_unfinished_event() -> None:
    """An event without its blank line is not dispatched yet."""
    parser = EventParser()
    assert parser.feed(b"id: 1\nevent: hop\ndata: x\n") == []
    assert parser.feed(b"\n") == [ServerEvent("hop", "x", "1")]


def test_parser_skips_a_leading_byte_order_mark() -> None:
    """A UTF-8 BOM at the start of the stream is not part of the first field name."""
    assert feed_all([b"\xef\xbb\xbfdata: x\n\n"]) == [ServerEvent("message", "x", None)]


# -- JSON back to values, and what is printed -----------------------------------------------

STARTED = 1_795_000_000.125


def hop(ttl: int, address: str | None = None, *, rtt: float = 0.4, lost: int = 0) -> Hop:
    responders = () if address is None else (Responder(address, 2 - lost),)
    received = 0 if address is None else 2 - lost
    rtts = RttStats() if address is None else RttStats(rtt, rtt, rtt, rtt, 0.0)
    return Hop(
        ttl=ttl,
        responders=responders,
        sent=2,
        received=received,
        lost=2 - received,
        rtt_ms=rtts,
        jitter_ms=JitterStats() if address is None else JitterStats(0.0, 0.0, 0.0),
        end=HopEnd.DESTINATION if address == "203.0.113.7" else None,
    )


def a_trace(
    status: TraceStatus = TraceStatus.COMPLETED,
    hops: tuple[Hop, ...] = (),
    error: TraceError | None = None,
) -> Trace:
    return Trace(
        id="Vb4nR0s9_kLm2xQp",
        status=status,
        request=TraceRequest("203.0.113.7", probes=2, interval=0.5, max_ttl=8),
        target=TraceTarget("203.0.113.7", "203.0.113.7", 4),
        created_at=STARTED,
        started_at=STARTED + 0.001,
        finished_at=None if not status.is_final else STARTED + 2.5,
        expires_at=None if not status.is_final else STARTED + 3602.5,
        destination_reached=status is TraceStatus.COMPLETED,
        hops=hops,
        error=error,
    )


FULL = a_trace(hops=(hop(1, ROUTERS[0]), hop(2), hop(3, "203.0.113.7", rtt=1.234)))


def test_trace_from_json_round_trips_the_rendered_resource() -> None:
    """Reading the rendered resource back gives a trace that renders the same."""
    document = trace_json(FULL)
    assert trace_json(trace_from_json(document)) == document
    assert trace_from_json(json.dumps(document).encode()) == FULL


def test_trace_from_json_reads_times_as_epoch_seconds() -> None:
    """RFC 3339 times come back as the epoch seconds they were (to the millisecond)."""
    read = trace_from_json(trace_json(FULL))
    assert read.created_at == pytest.approx(STARTED, abs=0.0005)
    assert read.finished_at == pytest.approx(STARTED + 2.5, abs=0.0005)


def test_hop_line_names_ttl_host_loss_and_times() -> None:
    """A hop that answered is one line: TTL, address, loss, last and average."""
    assert hop_line(hop(3, "198.51.100.17")) == (
        "hop 3 198.51.100.17 loss 0.0% sent 2 last 0.4 ms avg 0.4 ms"
    )


def test_hop_line_of_a_silent_hop() -> None:
    """A hop nobody answered shows ??? and no times."""
    assert hop_line(hop(2)) == "hop 2 ??? loss 100.0% sent 2 last - avg -"


def test_hop_line_lists_every_ecmp_responder() -> None:
    """Several responders at one TTL are all named."""
    two = attrs.evolve(hop(4, "198.51.100.1"), responders=(Responder("a", 1), Responder("b", 1)))
    assert hop_line(two).startswith("hop 4 a,b loss")


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (TraceStatus.COMPLETED, EXIT_OK),
        (TraceStatus.FAILED, EXIT_FAILED),
        (TraceStatus.CANCELLED, EXIT_FAILED),
    ],
)
def test_exit_status_of_a_final_trace(status: TraceStatus, code: int) -> None:
    """Completed is 0 whether or not the destination answered; failed and cancelled are 1."""
    assert exit_status(a_trace(status)) == code
    assert exit_status(attrs.evolve(a_trace(status), destination_reached=False)) == code


def test_exit_codes_are_distinct() -> None:
    """Each outcome has its own status."""
    codes = [EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_INTERRUPTED]
    assert codes == [0, 1, 2, 3, 130]


def test_failure_reason_quotes_the_error_message() -> None:
    """A failed trace's reason is its error message, on one line."""
    failed = a_trace(TraceStatus.FAILED, error=TraceError("dns", "DNS lookup\ntimed out"))
    assert failure_reason(failed) == "trace failed: DNS lookup timed out"
    assert failure_reason(a_trace(TraceStatus.CANCELLED)) == "trace cancelled"
    assert failure_reason(FULL) is None


def test_problem_line_names_detail_and_fields() -> None:
    """A problem+json answer becomes one line with the status, detail and each field."""
    body = json.dumps(
        {
            "type": "urn:mtrd:problem:invalid-fields",
            "title": "Invalid fields",
            "status": 422,
            "detail": "invalid: port",
            "errors": [{"field": "port", "message": "icmp probes have no port"}],
        }
    ).encode()
    assert problem_line(422, body) == (
        "422 Invalid fields: invalid: port (port: icmp probes have no port)"
    )
    assert problem_line(502, b"<html>\n bad gateway</html>") == "502: <html> bad gateway</html>"


def test_view_takes_hops_in_ttl_order_and_reports_changes() -> None:
    """A hop update inserts or replaces by TTL; the same hop again changes nothing."""
    view = TraceView(a_trace(TraceStatus.RUNNING))
    assert view.hop(hop(2, ROUTERS[1]))
    assert view.hop(hop(1, ROUTERS[0]))
    assert not view.hop(hop(1, ROUTERS[0]))
    assert [h.ttl for h in view.trace.hops] == [1, 2]
    assert view.status(TraceStatus.COMPLETED)
    assert not view.status(TraceStatus.COMPLETED)
    assert view.replace(attrs.evolve(view.trace, hops=(hop(1, ROUTERS[0]), hop(2)))) == [hop(2)]


def test_plain_lines_print_the_id_hops_status_then_the_table() -> None:
    """Plain output: the trace id, a line per hop update and status change, the report."""
    out = io.StringIO()
    plain = PlainLines(out)
    running = a_trace(TraceStatus.RUNNING)
    plain.changed(running, [], True)
    plain.changed(running, [hop(1, ROUTERS[0])], False)
    plain.changed(FULL, [], True)
    plain.finished(FULL, "{}")
    lines = out.getvalue().splitlines()
    assert lines[:3] == [
        "trace Vb4nR0s9_kLm2xQp running",
        f"hop 1 {ROUTERS[0]} loss 0.0% sent 2 last 0.4 ms avg 0.4 ms",
        "status completed",
    ]
    assert lines[4].startswith("Start: ")
    assert lines[5].startswith("Target: 203.0.113.7  Protocol: icmp  Status: completed")
    assert lines[-1].startswith("  3.|-- 203.0.113.7")


def test_live_table_redraws_in_place() -> None:
    """Each redraw moves the cursor up over the lines drawn last and clears below."""
    out, clock = io.StringIO(), Clock()
    table = LiveTable(out, clock, width=lambda: 200)
    running = a_trace(TraceStatus.RUNNING)
    table.changed(running, [], True)
    first = out.getvalue()
    assert "\x1b[" not in first
    assert first.count("\n") == 3  # Start, Target and HOST lines
    clock.advance(1)
    table.changed(attrs.evolve(running, hops=(hop(1, ROUTERS[0]),)), [], False)
    assert out.getvalue()[len(first) :].startswith("\x1b[3A\r\x1b[J")


def test_live_table_draws_at_most_ten_times_a_second() -> None:
    """Changes within 0.1 s of a draw wait for one redraw with the latest state."""
    out, clock = io.StringIO(), Clock()
    table = LiveTable(out, clock, width=lambda: 200)
    table.changed(a_trace(TraceStatus.RUNNING), [], True)
    for ttl in (1, 2, 3):
        table.changed(a_trace(TraceStatus.RUNNING, hops=FULL.hops[:ttl]), [], False)
    assert out.getvalue().count("Target:") == 1
    clock.advance(0.1)
    assert out.getvalue().count("Target:") == 2
    assert "  3.|-- 203.0.113.7" in out.getvalue().split("Target:")[-1]


def test_live_table_cuts_lines_to_the_terminal_width() -> None:
    """No line is wider than the terminal, so none wraps and the erase count holds."""
    out = io.StringIO()
    LiveTable(out, Clock(), width=lambda: 30).finished(FULL, "{}")
    assert max(len(line) for line in out.getvalue().splitlines()) == 30


def test_arguments_become_the_request_body() -> None:
    """Given options go into the POST body; the others are left to the server's defaults."""
    options = parse_args(
        [
            "example.org", "--protocol", "udp", "--port", "53", "--probes", "5",
            "--ip-version", "6", "--max-ttl", "12", "--interval", "0.5", "--timeout", "3",
            "--server", "http://h:1/",
        ]
    )  # fmt: skip
    assert options.server == "http://h:1"
    assert options.request_body() == {
        "target": "example.org",
        "protocol": "udp",
        "port": 53,
        "probes": 5,
        "ip_version": 6,
        "max_ttl": 12,
        "interval": 0.5,
        "timeout": 3,
    }
    assert parse_args(["192.0.2.1"]).request_body() == {"target": "192.0.2.1"}


def test_server_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """--server defaults to MTRD_SERVER."""
    monkeypatch.setenv("MTRD_SERVER", "http://mtrd.example:9000")
    assert parse_args(["192.0.2.1"]).server == "http://mtrd.example:9000"
    monkeypatch.delenv("MTRD_SERVER")
    assert parse_args(["192.0.2.1"]).server == "http://127.0.0.1:8080"


@pytest.mark.parametrize(
    ("given", "url"),
    [
        ("127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("[::1]:8080", "http://[::1]:8080"),
        ("mtrd.example:9000/", "http://mtrd.example:9000"),
        ("https://mtrd.example", "https://mtrd.example"),
    ],
)
def test_server_may_be_host_and_port_without_a_scheme(given: str, url: str) -> None:
    """--server HOST:PORT means http://HOST:PORT; IPv6 in brackets; a URL is kept as given."""
    assert parse_args(["192.0.2.1", "--server", given]).server == url


def test_server_from_the_environment_may_be_host_and_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MTRD_SERVER takes the same forms as --server."""
    monkeypatch.setenv("MTRD_SERVER", "[2001:db8::1]:8080")
    assert parse_args(["192.0.2.1"]).server == "http://[2001:db8::1]:8080"


def test_an_ipv6_server_without_brackets_is_refused_with_the_fix(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--server ::1 exits 2 saying the address goes in brackets."""
    assert main(["192.0.2.1", "--server", "::1"]) == EXIT_REFUSED
    assert "an IPv6 address goes in brackets: [::1]:PORT" in capsys.readouterr().err


def test_a_bad_server_in_the_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad MTRD_SERVER exits 2 naming MTRD_SERVER, not --server."""
    monkeypatch.setenv("MTRD_SERVER", "ftp://mtrd.example")
    assert main(["192.0.2.1"]) == EXIT_REFUSED
    err = capsys.readouterr().err
    assert "MTRD_SERVER: not HOST:PORT or an http:// or https:// URL: 'ftp://mtrd.example'" in err
    assert "--server" not in err.splitlines()[-1]


def test_help_names_the_environment_variables(capsys: pytest.CaptureFixture[str]) -> None:
    """--help exits 0 and names MTRD_TOKEN and MTRD_SERVER."""
    assert main(["--help"]) == EXIT_OK
    out = " ".join(capsys.readouterr().out.split())
    assert "MTRD_TOKEN is the bearer token" in out
    assert "MTRD_SERVER is the default --server" in out


TOKEN = "s3cret-token-0123456789"  # noqa: S105 - a test value, not a secret


def test_the_token_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """MTRD_TOKEN becomes the options' token; an empty one is no token."""
    monkeypatch.setenv("MTRD_TOKEN", TOKEN)
    assert parse_args(["192.0.2.1"]).token == TOKEN
    monkeypatch.setenv("MTRD_TOKEN", "")
    assert parse_args(["192.0.2.1"]).token is None


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["x", "--protocol", "sctp"],
        ["x", "--port", "eighty"],
        ["x", "--server", "ftp://h"],
        ["x", "--server", "h:99999"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Bad or missing arguments give status 2 and a usage message, without a request."""
    assert main(argv) == EXIT_REFUSED
    assert "usage: mtrd trace" in capsys.readouterr().err


# -- against the real Klein resource, in memory --------------------------------------------

BASE = "http://mtrd.test"


class Refusing:
    """An HTTP client whose every connection is refused, as when nothing listens."""

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        return fail(ConnectionRefusedError())

    def get(self, url: str, **kwargs: Any) -> Deferred[Any]:
        return self.request("GET", url, **kwargs)

    def flush(self) -> None:
        pass


class Vanishing:
    """StubTreq until ``gone`` is set; then every connection is refused (the server went away)."""

    def __init__(self, stub: StubTreq) -> None:
        self.stub = stub
        self.gone = False

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        if self.gone:
            return fail(ConnectionRefusedError())
        return self.stub.request(method, url, **kwargs)  # type: ignore[no-any-return]

    def get(self, url: str, **kwargs: Any) -> Deferred[Any]:
        return self.request("GET", url, **kwargs)

    def flush(self) -> None:
        self.stub.flush()


@attrs.define
class Running:
    """One ``run()`` on a Clock: time moves from one scheduled call to the next, and the
    in-memory connections are pumped after each, so no test waits for real time."""

    clock: Clock
    http: Any
    done: Deferred[int]
    out: io.StringIO
    err: io.StringIO
    results: list[object] = attrs.Factory(list)

    def __attrs_post_init__(self) -> None:
        self.done.addBoth(self.results.append)
        self.http.flush()

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass (or less, if the run ends first)."""
        until = self.clock.seconds() + seconds
        while not self.results:
            times = [call.getTime() for call in self.clock.getDelayedCalls()]
            upcoming = min(times, default=until)
            if upcoming > until:
                break
            self.clock.advance(max(upcoming - self.clock.seconds(), 0.0))
            self.http.flush()
        if not self.results:
            self.clock.advance(max(until - self.clock.seconds(), 0.0))
            self.http.flush()

    def finish(self, within: float = 600.0) -> tuple[int, str, str]:
        """The exit status, stdout and stderr, once the run ends (within ``within`` s)."""
        self.advance(within)
        assert self.results, f"still running after {within} s"
        result = self.results[0]
        if isinstance(result, Failure):
            result.raiseException()
        assert isinstance(result, int)
        return result, self.out.getvalue(), self.err.getvalue()


def start(clock: Clock, http: Any, argv: list[str], **kwargs: Any) -> Running:
    out, err = io.StringIO(), io.StringIO()
    running = run(clock, parse_args(argv), out, err, http=http, **kwargs)
    return Running(clock, http, Deferred.fromCoroutine(running), out, err)


@attrs.define
class InMemoryServer:
    """The real Klein resource behind StubTreq, over the fake network, all on one Clock."""

    clock: Clock
    stub: StubTreq
    store: TraceStore
    jobs: TraceJobs

    def trace(self, argv: list[str], **kwargs: Any) -> tuple[int, str, str]:
        """Run ``mtrd trace`` against this server to its end."""
        return start(self.clock, self.stub, [*argv, "--server", BASE], **kwargs).finish()


def in_memory_server(**network: Any) -> InMemoryServer:
    """A server whose network answers as FakeNetwork does with ``network``'s options."""
    clock = Clock()
    network.setdefault("rtt", 0.002)
    fake = FakeNetwork(clock, ROUTERS, **network)
    store = TraceStore(clock, StoreLimits(ttl=600, max_traces=100))
    tracer = Tracer(clock, fake, StaticResolver())  # type: ignore[arg-type]
    jobs = TraceJobs(tracer, store, max_running=8, max_queued=100)
    api = Api(pool=FakePool(), jobs=jobs, store=store, clock=clock)  # type: ignore[arg-type]
    return InMemoryServer(clock, StubTreq(api.resource()), store, jobs)


QUICK = ["203.0.113.7", "--probes", "2", "--interval", "0.05", "--max-ttl", "8"]


def test_completed_trace_exits_0_with_hop_lines_and_the_report() -> None:
    """A trace that completes: a line per hop update, then the report table, status 0."""
    code, out, err = in_memory_server().trace(QUICK)
    assert (code, err) == (EXIT_OK, "")
    lines = out.splitlines()
    assert lines[0].startswith("trace ")
    assert f"hop 1 {ROUTERS[0]} loss 0.0% sent 2 last 2.0 ms avg 2.0 ms" in lines
    report = out[out.index("Target: ") :]
    assert "Status: completed" in report
    assert [line.split()[1] for line in report.splitlines()[2:]] == [*ROUTERS, "203.0.113.7"]


def test_json_prints_only_the_final_trace_resource() -> None:
    """--json prints one document: the final Trace, as the schema describes it."""
    code, out, err = in_memory_server().trace([*QUICK, "--json"])
    assert (code, err) == (EXIT_OK, "")
    document = json.loads(out)
    validate_schema("Trace", document)
    assert document["status"] == "completed"
    assert document["destination_reached"] is True
    assert len(document["hops"]) == 4


def test_a_server_given_as_host_and_port_is_reached_over_http() -> None:
    """--server HOST:PORT (no scheme) reaches the server: the trace runs to the end."""
    server = in_memory_server()
    argv = [*QUICK, "--json", "--server", "mtrd.test:8080"]
    code, out, _ = start(server.clock, server.stub, argv).finish()
    assert code == EXIT_OK
    assert json.loads(out)["status"] == "completed"


def test_a_server_given_as_an_ipv6_literal_is_reached() -> None:
    """--server [::1]:8080 reaches the server: the trace runs to the end."""
    server = in_memory_server()
    argv = [*QUICK, "--json", "--server", "[::1]:8080"]
    code, out, err = start(server.clock, server.stub, argv).finish()
    assert (code, err) == (EXIT_OK, "")
    assert json.loads(out)["status"] == "completed"


def test_live_output_redraws_the_table_in_place() -> None:
    """On a terminal the table is drawn, erased and drawn again, ending completed."""
    code, out, _ = in_memory_server().trace(QUICK, live=True)
    assert code == EXIT_OK
    assert "\x1b[J" in out
    last_draw = out.split("\x1b[J")[-1]
    assert last_draw.startswith("Start: ")
    assert (
        "\nTarget: 203.0.113.7  Protocol: icmp  Status: completed  Stopped: destination\n"
        in last_draw
    )


def test_refused_request_exits_2_naming_the_field() -> None:
    """A 422 (a port with icmp) gives status 2 and one line naming the field."""
    code, out, err = in_memory_server().trace([*QUICK, "--port", "80"])
    assert (code, out) == (EXIT_REFUSED, "")
    assert err == (
        "mtrd: the server refused the trace: 422 Invalid fields: invalid: port "
        "(port: icmp probes have no port)\n"
    )


def test_unreachable_server_exits_3_with_one_line() -> None:
    """Nothing listening: status 3 and one line saying which server and why."""
    url = "http://127.0.0.1:9"
    code, out, err = start(Clock(), Refusing(), [*QUICK, "--server", url]).finish()
    assert (code, out) == (EXIT_UNREACHABLE, "")
    assert err == f"mtrd: cannot reach {url}: connection refused\n"


def test_failed_trace_exits_1_with_its_error() -> None:
    """A trace that fails: the report with its error, status 1, the error message on stderr."""
    code, out, err = in_memory_server(local_error="invalid-argument").trace(QUICK)
    assert code == EXIT_FAILED
    assert "Status: failed" in out
    assert err.startswith("mtrd: trace failed: ")
    assert "no source address" in err
    assert err.count("\n") == 1


def test_interrupt_cancels_the_trace_on_the_server() -> None:
    """Ctrl-C while the trace runs: it is cancelled on the server, status 130."""
    server = in_memory_server()
    interrupt: Deferred[None] = Deferred()
    argv = ["203.0.113.7", "--probes", "50", "--interval", "0.5", "--server", BASE]
    running = start(server.clock, server.stub, argv, interrupt=interrupt)
    running.advance(0.3)
    assert not running.results
    interrupt.callback(None)
    code, out, err = running.finish()
    assert code == EXIT_INTERRUPTED
    assert out.startswith("trace ")
    trace_id = out.split()[1]
    assert err == f"mtrd: interrupted; trace {trace_id} cancelled\n"
    record = server.store.get(trace_id)
    assert record is not None
    assert record.trace.status is TraceStatus.CANCELLED


# -- a scripted server: streams that drop, and no stream at all ------------------------------

RUNNING = a_trace(TraceStatus.RUNNING)


def sse(event_id: int, kind: str, data: object) -> bytes:
    return f"id: {event_id}\nevent: {kind}\ndata: {json.dumps(data)}\n\n".encode()


class ScriptedServer(Resource):
    """Serves one trace; each events request plays the next script in ``streams``.

    A script is a list of byte strings to write, then ``"drop"`` (abort the connection)
    or ``"end"`` (finish the response); an int is an HTTP status answered instead.
    """

    isLeaf = True

    def __init__(
        self, clock: Clock, streams: list[list[bytes | str] | int], post_status: int = 202
    ) -> None:
        super().__init__()
        self.clock = clock
        self.streams = streams
        self.post_status = post_status
        self.on_events: Callable[[], object] = lambda: None
        self.last_event_ids: list[str | None] = []
        self.authorizations: list[str | None] = []
        self.polls = 0
        self.post_body: bytes | None = None  # instead of the running trace
        self.poll_status = 200

    def render(self, request: Any) -> Any:
        path, method = request.path.decode(), request.method.decode()
        self.authorizations.append(request.getHeader("authorization"))
        request.setHeader(b"Content-Type", b"application/json")
        if method == "POST":
            request.setResponseCode(self.post_status)
            if self.post_status != 202:
                return b"<html>Bad gateway</html>"
            if self.post_body is not None:
                return self.post_body
            return json.dumps(trace_json(RUNNING)).encode()
        if path.endswith("/events"):
            return self._events(request)
        self.polls += 1
        if self.poll_status != 200:
            request.setResponseCode(self.poll_status)
            return b"{}"
        return json.dumps(trace_json(FULL)).encode()

    def _events(self, request: Any) -> Any:
        self.last_event_ids.append(request.getHeader("last-event-id"))
        self.on_events()
        script = self.streams.pop(0) if self.streams else 503
        if isinstance(script, int):
            request.setResponseCode(script)
            return b"{}"
        request.setHeader(b"Content-Type", b"text/event-stream")
        for step in script:
            if step == "drop":
                self.clock.callLater(0.05, request.transport.abortConnection)
            elif step == "end":
                self.clock.callLater(0.05, request.finish)
            else:
                request.write(step)
        return NOT_DONE_YET


def scripted(
    streams: list[list[bytes | str] | int], post_status: int = 202
) -> tuple[ScriptedServer, Clock, StubTreq]:
    clock = Clock()
    resource = ScriptedServer(clock, streams, post_status)
    return resource, clock, StubTreq(resource)


def test_a_dropped_stream_is_resumed_after_the_last_event() -> None:
    """The stream breaks mid-event; the client reconnects with Last-Event-ID and finishes."""
    first, second, third = (hop_json(h) for h in FULL.hops)
    done = sse(5, "done", trace_json(FULL))
    resource, clock, stub = scripted(
        [
            [
                sse(1, "status", {"status": "running"}),
                sse(2, "hop", first),
                b"id: 3\nevent: ho",
                "drop",
            ],
            [sse(3, "hop", second), sse(4, "hop", third), done[:40], done[40:], "end"],
        ]
    )
    code, out, err = start(clock, stub, [*QUICK, "--server", BASE]).finish()
    assert (code, err) == (EXIT_OK, "")
    assert resource.last_event_ids == [None, "2"]
    assert [line.split()[1] for line in out.splitlines() if line.startswith("hop")] == [
        "1",
        "2",
        "3",
    ]
    assert resource.polls == 0


def test_a_silent_stream_is_given_up_and_resumed() -> None:
    """A stream with neither events nor keep-alives for the idle timeout is reconnected."""
    resource, clock, stub = scripted(
        [[sse(1, "status", {"status": "running"})], [sse(2, "done", trace_json(FULL)), "end"]]
    )
    running = start(clock, stub, [*QUICK, "--server", BASE])
    running.advance(Timing().stream_idle_timeout - 1)
    assert resource.last_event_ids == [None]
    code, _, _ = running.finish()
    assert code == EXIT_OK
    assert resource.last_event_ids == [None, "1"]


def test_without_a_stream_the_client_polls_the_trace() -> None:
    """Streams that keep ending without an event give way to polling GET /traces/{id}."""
    resource, clock, stub = scripted([["end"], ["drop"], [b": hello\n\n", "end"], ["end"]])
    code, out, _ = start(clock, stub, [*QUICK, "--server", BASE, "--json"]).finish()
    assert code == EXIT_OK
    assert json.loads(out) == trace_json(FULL)
    assert resource.polls == 1
    assert resource.last_event_ids == [None] * 4


def test_a_refused_stream_falls_back_to_polling_at_once() -> None:
    """A 429 for the stream (too many subscribers) goes straight to polling."""
    resource, clock, stub = scripted([429])
    code, out, _ = start(clock, stub, [*QUICK, "--server", BASE]).finish()
    assert code == EXIT_OK
    assert "Status: completed" in out
    assert len(resource.last_event_ids) == 1


def test_a_server_gone_while_following_exits_3() -> None:
    """The server goes away mid-trace: reconnects and polls fail, status 3 with one line."""
    resource, clock, stub = scripted([[sse(1, "status", {"status": "running"}), "drop"]])
    http = Vanishing(stub)
    resource.on_events = lambda: setattr(http, "gone", True)
    timing = Timing(max_poll_failures=2)
    code, _, err = start(clock, http, [*QUICK, "--server", BASE], timing=timing).finish()
    assert code == EXIT_UNREACHABLE
    assert err == f"mtrd: cannot reach {BASE}: connection refused\n"


def test_interrupt_with_the_server_gone_says_the_trace_was_not_cancelled() -> None:
    """Ctrl-C when the DELETE cannot get through: status 130 and a line saying so."""
    resource, clock, stub = scripted([[sse(1, "status", {"status": "running"})]])
    http = Vanishing(stub)
    resource.on_events = lambda: setattr(http, "gone", True)
    interrupt: Deferred[None] = Deferred()
    running = start(clock, http, [*QUICK, "--server", BASE], interrupt=interrupt)
    running.advance(0.2)
    interrupt.callback(None)
    code, _, err = running.finish()
    assert code == EXIT_INTERRUPTED
    assert err == (f"mtrd: interrupted; could not cancel trace {RUNNING.id}: connection refused\n")


def test_a_server_error_on_start_exits_3() -> None:
    """A 5xx answer to POST (a broken proxy, say) is status 3 with the status in one line."""
    _, clock, stub = scripted([], post_status=502)
    code, out, err = start(clock, stub, [*QUICK, "--server", BASE]).finish()
    assert (code, out) == (EXIT_UNREACHABLE, "")
    assert err == f"mtrd: {BASE}/traces answered 502: <html>Bad gateway</html>\n"


def test_the_token_goes_with_every_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """MTRD_TOKEN is sent as a bearer token on the POST, the stream and the polls."""
    monkeypatch.setenv("MTRD_TOKEN", TOKEN)
    resource, clock, stub = scripted([429])
    code, _, _ = start(clock, stub, [*QUICK, "--server", BASE]).finish()
    assert code == EXIT_OK
    assert len(resource.authorizations) == 3
    assert set(resource.authorizations) == {f"Bearer {TOKEN}"}


class Silent(Resource):
    """Takes every request and never answers."""

    isLeaf = True

    def render(self, request: Any) -> Any:
        return NOT_DONE_YET


def test_a_server_that_never_answers_exits_3_after_the_request_timeout() -> None:
    """POST with no answer: given up after the request timeout, status 3, one line."""
    clock, stub = Clock(), StubTreq(Silent())
    running = start(clock, stub, [*QUICK, "--server", BASE])
    running.advance(Timing().request_timeout - 1)
    assert not running.results
    code, out, err = running.finish()
    assert (code, out) == (EXIT_UNREACHABLE, "")
    assert err == f"mtrd: cannot reach {BASE}: no answer within 30 s\n"


def test_an_answer_that_is_not_json_exits_3() -> None:
    """A 202 whose body is not JSON (a proxy's page, say) is status 3, naming the URL."""
    resource, clock, stub = scripted([])
    resource.post_body = b"<html>hello</html>"
    code, _, err = start(clock, stub, [*QUICK, "--server", BASE]).finish()
    assert code == EXIT_UNREACHABLE
    assert err == f"mtrd: {BASE}/traces answered something other than JSON\n"


def test_a_malformed_event_exits_3_naming_the_event() -> None:
    """A hop event whose data is no hop ends the command: status 3, one line."""
    _, clock, stub = scripted([[sse(1, "hop", {"ttl": 1})]])
    code, _, err = start(clock, stub, [*QUICK, "--server", BASE]).finish()
    assert code == EXIT_UNREACHABLE
    assert err.startswith(f"mtrd: {BASE}/traces/{RUNNING.id}/events sent a malformed hop event")
    assert err.count("\n") == 1


def test_a_trace_gone_while_polling_exits_1() -> None:
    """Polling finds the trace gone (404, expired or deleted): status 1 and why."""
    resource, clock, stub = scripted([429])
    resource.poll_status = 404
    code, _, err = start(clock, stub, [*QUICK, "--server", BASE]).finish()
    assert code == EXIT_FAILED
    assert err == f"mtrd: trace {RUNNING.id} no longer exists on the server\n"


def test_polls_answered_with_5xx_give_up_after_the_limit() -> None:
    """Polls that keep getting a 5xx stop after max_poll_failures: status 3, the status."""
    resource, clock, stub = scripted([429])
    resource.poll_status = 503
    timing = Timing(max_poll_failures=3)
    code, _, err = start(clock, stub, [*QUICK, "--server", BASE], timing=timing).finish()
    assert code == EXIT_UNREACHABLE
    assert resource.polls == 3
    assert err == f"mtrd: {BASE}/traces/{RUNNING.id} answered 503\n"


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (ConnectionRefusedError(), "connection refused"),
        (DNSLookupError("mtrd.example"), "host name not found"),
        (TCPTimedOutError(), "connection timed out"),
        (NoRouteError(), "no route to host"),
        (ResponseFailed([Failure(ConnectionDone())]), "connection lost"),
        (
            ResponseNeverReceived([Failure(ConnectionRefusedError())]),
            "connection lost (connection refused)",
        ),
        (ValueError("odd.\nthing."), "odd. thing"),
    ],
)
def test_network_reason_says_why_in_a_few_words(error: BaseException, reason: str) -> None:
    """Each way a request fails reads as a few words, on one line."""
    assert network_reason(error) == reason


# -- the real command -----------------------------------------------------------------------


def test_command_against_a_closed_port_exits_3_with_one_line() -> None:
    """``python -m mtrd trace`` with no server: status 3, one line, no traceback."""
    url = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [sys.executable, "-m", "mtrd", "trace", "127.0.0.1", "--server", url],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == EXIT_UNREACHABLE
    assert result.stdout == ""
    assert result.stderr == f"mtrd: cannot reach {url}: connection refused\n"
