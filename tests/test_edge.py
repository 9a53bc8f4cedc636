"""The HTTP edge before the routes: admission before a body is read, bodies in memory,
deadlines per phase, connection caps, and what a client sends never becoming unbounded
state. Driven through the real site and channel over StringTransport, on a Clock."""

from __future__ import annotations

import json
import random
import string
import tempfile
import tracemalloc
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mtrd.tracing.events import Event
from mtrd.tracing.model import TraceStatus
from mtrd.web import sse
from mtrd.web.access import AccessRecord, Edge, route_of
from mtrd.web.bodies import BodyCache
from mtrd.web.connections import EdgeSite, client_of, descriptors_needed, fit_descriptors
from mtrd.web.framing import LINGER, Admission
from mtrd.web.limits import MAX_BODY, EdgeLimits
from mtrd.web.metrics import method_label
from mtrd.web.routes import parse_count
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers

from tests.test_http import QUICK, Client

TOKEN = b"s3cret-token-0123456789"
ROUTES = {"/traces", "/traces/{id}", "/traces/{id}/events", "/healthz", "/readyz", "/metrics"}
ROUTES |= {"/openapi.yaml", "/vantage-points", "other"}
ROUTES |= {"/", "/ui/traces/{id}", "/ui/monitors/{id}", "/static/{asset}"}  # the web page


class Edgeway:
    """The real site over the real Klein resource, with connections made by hand."""

    def __init__(self, *, limits: EdgeLimits | None = None, token: bytes | None = None) -> None:
        self.client = Client()
        self.clock = self.client.clock
        self.records: list[AccessRecord] = []
        self.edge = Edge(
            self.client.api.resource(),
            self.clock,
            self.client.metrics,
            self.records.append,
        )
        admission = Admission(
            authorized=(lambda _p, a: a == b"Bearer " + token) if token else (lambda _p, _a: True),
            limits=limits or EdgeLimits(),
        )
        self.site = EdgeSite(self.edge, admission=admission, reactor=self.clock)
        self.opened = 0

    def connect(self, host: str = "127.0.0.1") -> tuple[Any, StringTransport]:
        """A new connection from ``host``: its channel (or refusal) and its transport."""
        self.opened += 1
        address = IPv4Address("TCP", host, 40000 + self.opened)
        protocol = self.site.buildProtocol(address)
        assert protocol is not None
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        return protocol, transport

    def exchange(self, raw: bytes) -> tuple[bytes, StringTransport]:
        """Send ``raw`` on a new connection, then close it; what came back, and the
        transport."""
        channel, transport = self.connect()
        channel.dataReceived(raw)
        channel.connectionLost(Failure(ConnectionDone()))
        return transport.value(), transport

    def metrics(self) -> str:
        return self.client.metrics.exposition().decode()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def body_of(answer: bytes) -> dict[str, Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    if b"Transfer-Encoding: chunked" in head:
        chunks = []
        while True:
            size, _, rest = body.partition(b"\r\n")
            if int(size, 16) == 0:
                break
            chunks.append(rest[: int(size, 16)])
            body = rest[int(size, 16) + 2 :]
        body = b"".join(chunks)
    return dict(json.loads(body))


def post_head(length: int | None, extra: bytes = b"") -> bytes:
    framing = b"Transfer-Encoding: chunked" if length is None else b"Content-Length: %d" % length
    return (
        b"POST /traces HTTP/1.1\r\nHost: mtrd.test\r\nContent-Type: application/json\r\n"
        + framing
        + b"\r\n"
        + (extra + b"\r\n" if extra else b"")
        + b"\r\n"
    )


# -- before a body is read -------------------------------------------------------------------


def test_content_length_over_the_limit_is_413_before_the_body() -> None:
    """A 1 GiB Content-Length gets 413 problem+json as soon as the headers are in."""
    answer, transport = Edgeway().exchange(post_head(1 << 30))
    assert status_of(answer) == 413
    assert body_of(answer)["type"] == "urn:mtrd:problem:body-too-large"
    assert b"Connection: close" in answer
    assert transport.disconnecting


def test_a_chunked_body_past_the_limit_is_413_at_once() -> None:
    """A chunked body is counted as it streams: past the limit the answer is 413, and the
    request never reaches the routes."""
    way = Edgeway()
    channel, transport = way.connect()
    channel.dataReceived(post_head(None))
    chunk = b"x" * 16384
    for _ in range(MAX_BODY // len(chunk)):
        channel.dataReceived(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    assert transport.value() == b""
    channel.dataReceived(b"1\r\nx\r\n")
    assert status_of(transport.value()) == 413
    assert len(way.client.store) == 0
    assert [r.status for r in way.records] == [413]


def test_a_body_is_never_spooled_to_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunked and 60 KiB bodies stay in memory: no temporary file is made."""

    def no_file(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("a request body went to a temporary file")

    monkeypatch.setattr(tempfile, "TemporaryFile", no_file)
    body = json.dumps({**QUICK, "padding": "x" * 60000}).encode()
    answer, _ = Edgeway().exchange(post_head(len(body)) + body)
    assert status_of(answer) == 422  # read whole, then judged by the routes
    chunked = json.dumps(QUICK).encode()
    answer, _ = Edgeway().exchange(
        post_head(None) + b"%x\r\n%s\r\n0\r\n\r\n" % (len(chunked), chunked)
    )
    assert status_of(answer) == 202


def test_auth_is_checked_before_the_body_is_read() -> None:
    """Without a token, a POST gets 401 once its headers are in, its body unsent."""
    answer, transport = Edgeway(token=TOKEN).exchange(post_head(1000))
    assert status_of(answer) == 401
    assert b"WWW-Authenticate: Bearer" in answer
    assert transport.disconnecting


def test_a_valid_token_is_admitted_to_the_body() -> None:
    """With the token, the body is read and the trace starts."""
    body = json.dumps(QUICK).encode()
    answer, _ = Edgeway(token=TOKEN).exchange(
        post_head(len(body), b"Authorization: Bearer " + TOKEN) + body
    )
    assert status_of(answer) == 202


def test_expect_100_continue_is_not_sent_to_a_refused_request() -> None:
    """A request refused at its headers gets its answer, never a 100 Continue."""
    answer, _ = Edgeway().exchange(post_head(1 << 30, b"Expect: 100-continue"))
    assert answer.startswith(b"HTTP/1.1 413 ")


def test_a_content_length_of_5000_digits_is_413_not_a_crash() -> None:
    """A Content-Length too long for int() is over the limit: 413."""
    answer, _ = Edgeway().exchange(
        b"POST /traces HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n"
    )
    assert status_of(answer) == 413


def test_an_overlong_header_name_is_431() -> None:
    """Header names longer than any real one are refused before twisted.web caches them."""
    answer, _ = Edgeway().exchange(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X" * 200 + b": 1\r\n\r\n"
    )
    assert status_of(answer) == 431


# -- protocol -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /healthz HTTP/1.1\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.0\r\n\r\n", 200),
        (b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", 501),
        (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ],
)
def test_host_and_version_rules(raw: bytes, status: int) -> None:
    """HTTP/1.1 needs one Host; HTTP/1.0 is served; only OPTIONS may ask for *, and gets 501."""
    answer, _ = Edgeway().exchange(raw)
    assert status_of(answer) == status


def test_http_1_0_is_answered_and_closed() -> None:
    """An HTTP/1.0 request is answered in HTTP/1.0 and the connection closes."""
    answer, transport = Edgeway().exchange(b"GET /healthz HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 200 ")
    assert transport.disconnecting


@pytest.mark.parametrize(
    "raw",
    [
        b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nX: " + b"b" * 17000 + b"\r\n\r\n",
        b"NONSENSE\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\n\r\n",
    ],
)
def test_refusals_get_a_problem_an_access_line_and_a_metric(raw: bytes) -> None:
    """OPTIONS *, framing rejects and header-time refusals are logged and counted."""
    way = Edgeway()
    answer, _ = way.exchange(raw)
    status = status_of(answer)
    assert b"Content-Type: application/problem+json" in answer
    assert [r.status for r in way.records] == [status]
    assert f'route="other",status="{status}"' in way.metrics() or (
        f'status="{status}"' in way.metrics()
    )


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /traces/nope HTTP/1.1\r\nHost: a\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        b"NONSENSE\r\n\r\n",
        post_head(1 << 30),
    ],
)
def test_every_answer_says_nosniff_and_no_server(raw: bytes) -> None:
    """nosniff on every answer; no Server header naming the software and its version."""
    answer, _ = Edgeway().exchange(raw)
    head = answer.partition(b"\r\n\r\n")[0]
    assert b"\r\nX-Content-Type-Options: nosniff" in head
    assert b"\r\nServer:" not in head
    assert b"Twisted" not in head


# -- deadlines --------------------------------------------------------------------------------


def test_a_connection_that_sends_nothing_is_closed_after_the_idle_timeout() -> None:
    """No request begun within idle_timeout: the connection closes, with no answer."""
    way = Edgeway(limits=EdgeLimits(idle_timeout=30))
    _, transport = way.connect()
    way.clock.advance(29.9)
    assert not transport.disconnecting
    way.clock.advance(0.2)
    assert transport.disconnecting
    assert transport.value() == b""


def test_headers_trickled_a_byte_at_a_time_get_408_at_the_total_deadline() -> None:
    """Bytes arriving do not reset the header deadline: 408 once it is over."""
    way = Edgeway(limits=EdgeLimits(header_timeout=10))
    channel, transport = way.connect()
    for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 100:
        channel.dataReceived(bytes([byte]))
        way.clock.advance(0.3)
        if transport.value():
            break
    assert status_of(transport.value()) == 408
    assert way.clock.seconds() == pytest.approx(10.2, abs=0.31)
    assert [r.status for r in way.records] == [408]


def test_a_slow_body_gets_408_at_the_body_deadline() -> None:
    """A body not in within body_timeout of its headers: 408, logged with its route."""
    way = Edgeway(limits=EdgeLimits(body_timeout=10))
    channel, transport = way.connect()
    channel.dataReceived(post_head(100) + b"{")
    way.clock.advance(9.9)
    assert transport.value() == b""
    way.clock.advance(0.2)
    assert status_of(transport.value()) == 408
    assert [(r.method, r.path, r.status) for r in way.records] == [("POST", "/traces", 408)]


def test_a_keep_alive_connection_is_idle_again_after_an_answer() -> None:
    """After an answer, the next request must begin within idle_timeout."""
    way = Edgeway(limits=EdgeLimits(idle_timeout=5, header_timeout=1))
    channel, transport = way.connect()
    channel.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status_of(transport.value()) == 200
    way.clock.advance(4)
    assert not transport.disconnecting
    way.clock.advance(1.1)
    assert transport.disconnecting


def test_a_request_begun_late_in_the_idle_time_gets_its_whole_header_time() -> None:
    """The header deadline counts from the request's first byte, however long the
    connection was idle before it."""
    way = Edgeway(limits=EdgeLimits(idle_timeout=30, header_timeout=10))
    channel, transport = way.connect()
    way.clock.advance(25)
    channel.dataReceived(b"GET /healthz HTTP/1.1\r\n")
    way.clock.advance(9.9)
    assert transport.value() == b""
    way.clock.advance(0.2)
    assert status_of(transport.value()) == 408


def test_requests_on_a_connection_do_not_make_a_timer_each() -> None:
    """A keep-alive connection's requests share its one timer: it is made again only when
    it fires (at most every shortest timeout), never per request; none outlives the
    connection."""
    way = Edgeway(limits=EdgeLimits(idle_timeout=30, header_timeout=10, body_timeout=10))
    channel, transport = way.connect()
    made = []
    call_later = way.clock.callLater

    def counted(delay: float, *args: Any, **kwargs: Any) -> Any:
        made.append(delay)
        return call_later(delay, *args, **kwargs)

    channel.callLater = counted
    for _ in range(50):
        channel.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        way.clock.advance(0.5)
        assert len([c for c in way.clock.getDelayedCalls() if c.active()]) <= 1
    assert transport.value().count(b"HTTP/1.1 200 OK") == 50
    assert len(made) <= 3  # 25 s of requests: the timer fired twice at most
    channel.connectionLost(Failure(ConnectionDone()))
    assert not [c for c in way.clock.getDelayedCalls() if c.active()]


def test_the_local_address_is_asked_of_the_transport_once_per_connection() -> None:
    """Every request records the local address; the connection asks its transport once."""

    class Counting(StringTransport):
        asked = 0

        def getHost(self) -> Any:  # noqa: N802 - Twisted's name
            self.asked += 1
            return super().getHost()

    way = Edgeway()
    channel, _ = way.connect()
    transport = Counting()
    channel.makeConnection(transport)
    for _ in range(3):
        channel.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
    assert transport.value().count(b"HTTP/1.1 200 OK") == 3
    assert transport.asked == 1


def test_a_response_head_is_written_in_one_piece_as_twisted_writes_it() -> None:
    """The head goes to the transport as one write, the same bytes twisted.web writes."""

    class Recording(StringTransport):
        pieces: list[bytes]

        def write(self, data: bytes) -> None:
            self.pieces = [*getattr(self, "pieces", []), data]
            super().write(data)

        def writeSequence(self, seq: Any) -> None:  # noqa: N802 - Twisted's name
            self.pieces = [*getattr(self, "pieces", []), *seq]
            super().writeSequence(seq)

    headers = Headers({b"Content-Type": [b"application/json"], b"Vary": [b"Accept", b"X"]})
    ours = Edgeway().connect()[0]
    recording = Recording()
    ours.makeConnection(recording)
    ours.writeHeaders(b"HTTP/1.1", b"200", b"OK", headers)
    twisteds, theirs = HTTPChannel(), StringTransport()
    twisteds.makeConnection(theirs)
    twisteds.writeHeaders(b"HTTP/1.1", b"200", b"OK", headers)
    assert recording.pieces == [theirs.value()]


def test_a_refused_connection_lingers_then_is_aborted() -> None:
    """After a refusal the connection reads and drops what comes, then ends by LINGER."""

    class HalfClosing(StringTransport):
        write_closed = False

        def loseWriteConnection(self) -> None:  # noqa: N802
            self.write_closed = True

    way = Edgeway()
    channel, _ = way.connect()
    transport = HalfClosing()
    channel.makeConnection(transport)
    channel.dataReceived(post_head(1 << 30))
    assert status_of(transport.value()) == 413
    assert transport.write_closed
    channel.dataReceived(b"x" * 100000)  # dropped
    assert not transport.disconnected
    way.clock.advance(LINGER)
    assert transport.disconnected


# -- connection caps --------------------------------------------------------------------------


def test_connections_over_the_per_client_cap_get_503() -> None:
    """One address past its cap gets 503 and a close; another address is still served."""
    way = Edgeway(limits=EdgeLimits(max_connections=10, max_connections_per_client=2))
    way.connect()
    way.connect()
    _, refused = way.connect()
    assert status_of(refused.value()) == 503
    assert body_of(refused.value())["type"] == "urn:mtrd:problem:too-many-connections"
    assert b"Retry-After: 1" in refused.value()
    channel, other = way.connect("127.0.0.2")
    channel.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status_of(other.value()) == 200


def test_connections_over_the_total_cap_get_503() -> None:
    """Past max_connections from any addresses, 503."""
    way = Edgeway(limits=EdgeLimits(max_connections=2, max_connections_per_client=2))
    way.connect("127.0.0.1")
    way.connect("127.0.0.2")
    _, refused = way.connect("127.0.0.3")
    assert status_of(refused.value()) == 503


def test_closed_connections_free_their_place_and_their_address() -> None:
    """An address is forgotten with its last connection: the per-client map stays bounded."""
    way = Edgeway(limits=EdgeLimits(max_connections=3, max_connections_per_client=1))
    for n in range(500):
        channel, _ = way.connect(f"10.0.{n // 250}.{n % 250}")
        channel.connectionLost(Failure(ConnectionDone()))
    assert way.site.connections.per_client == {}
    assert way.site.connections.total == 0


@pytest.mark.parametrize(
    ("host", "client"),
    [
        ("198.51.100.7", "198.51.100.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
        ("::ffff:198.51.100.7", "198.51.100.7"),
    ],
)
def test_an_ipv6_client_is_its_64(host: str, client: str) -> None:
    """IPv6 connections count per /64, IPv4-mapped ones as their IPv4 address."""
    assert client_of(host) == client


def test_descriptors_needed_cover_the_caps_and_a_reserve_per_worker() -> None:
    """The descriptor budget grows with the connection cap and the pool."""
    assert descriptors_needed(1000, 4) > descriptors_needed(1000, 2) > 1000


def test_a_low_soft_descriptor_limit_is_raised_to_what_the_caps_need() -> None:
    """Soft limit below the need and hard limit above it: the soft one is raised."""
    raised: list[tuple[int, int]] = []
    problem = fit_descriptors(2000, lambda: (1024, 4096), lambda s, h: raised.append((s, h)))
    assert problem is None
    assert raised == [(2000, 4096)]


def test_a_hard_descriptor_limit_below_the_need_is_one_clear_line() -> None:
    """A hard limit too low for the caps: a line naming both numbers and what to do."""
    problem = fit_descriptors(2000, lambda: (1024, 1024), lambda _s, _h: None)
    assert problem is not None
    assert "2000" in problem
    assert "1024" in problem
    assert "--max-connections" in problem
    assert "\n" not in problem


# -- nothing a client sends becomes unbounded state -----------------------------------------


def test_method_names_become_a_fixed_set_of_labels() -> None:
    """Standard methods keep their names; anything else is ``other``."""
    assert method_label("GET") == "GET"
    assert method_label("get") == "other"
    assert method_label("X" * 100) == "other"


@given(st.text())
def test_any_path_maps_to_a_known_route_label(path: str) -> None:
    """Whatever the path, its route label is one of a fixed set."""
    assert route_of(path) in ROUTES


def test_a_method_name_flood_leaves_memory_and_metrics_bounded() -> None:
    """5,000 requests with random method names, half without a token: /metrics stays
    small, and the heap does not grow with them (traced over the last 2,000)."""
    way = Edgeway(token=TOKEN)
    way.edge._access_log = lambda _record: None
    rng = random.Random(12)
    methods = ["".join(rng.choices(string.ascii_uppercase, k=12)) for _ in range(5000)]

    def flood(names: list[str]) -> None:
        for n, method in enumerate(names):
            auth = b"Authorization: Bearer " + TOKEN + b"\r\n" if n % 2 else b""
            way.exchange(method.encode() + b" /traces HTTP/1.1\r\nHost: a\r\n" + auth + b"\r\n")

    flood(methods[:3000])
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    flood(methods[3000:])
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    text = way.metrics()
    assert len(text) < 20000
    assert text.count("mtrd_http_requests_total{") <= 4
    assert grown < 300_000, grown


def test_reading_unknown_traces_caches_no_body() -> None:
    """The body cache holds rendered traces only: a GET of an unknown id adds nothing."""
    way = Edgeway()
    for n in range(300):
        way.exchange(b"GET /traces/nope%d HTTP/1.1\r\nHost: a\r\n\r\n" % n)
    cache = way.client.api._bodies
    assert isinstance(cache, BodyCache)
    assert len(cache) == 0


# -- numbers a client sends ---------------------------------------------------------------------


@pytest.mark.parametrize("text", ["9" * 5000, "²", "٣", "-1", "", " 1", "1" * 19])
def test_counts_that_are_not_plain_small_numbers_are_refused(text: str) -> None:
    """parse_count takes only ASCII digits, few enough for int()."""
    assert parse_count(text) is None


@pytest.mark.parametrize("value", ["9" * 5000, "%C2%B2"])
def test_a_huge_or_non_ascii_limit_is_422(value: str) -> None:
    """A 5,000-digit or superscript limit is a 422 naming limit, never a 500."""
    way = Edgeway()
    answer, _ = way.exchange(f"GET /traces?limit={value} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    assert status_of(answer) == 422
    assert body_of(answer)["errors"][0]["field"] == "limit"


@pytest.mark.parametrize("value", ["9" * 5000, "²"])
def test_a_huge_or_non_ascii_last_event_id_is_ignored(value: str) -> None:
    """Such a Last-Event-ID is ignored: the stream starts from the beginning."""
    way = Edgeway()
    body = json.dumps(QUICK).encode()
    created, _ = way.exchange(post_head(len(body)) + body)
    trace_id = body_of(created)["id"]
    channel, transport = way.connect()
    head = f"GET /traces/{trace_id}/events HTTP/1.1\r\nHost: a\r\nLast-Event-ID: {value}\r\n"
    channel.dataReceived(head.encode() + b"\r\n")
    assert status_of(transport.value()) == 200
    assert b"event: status" in transport.value()


def test_malformed_json_says_where_not_the_parsers_words() -> None:
    """A body that is not JSON gets a 400 naming line and column, not Python's message."""
    answer, _ = Edgeway().exchange(post_head(2) + b"{x")
    detail = body_of(answer)["detail"]
    assert status_of(answer) == 400
    assert detail == "the body is not JSON (line 1, column 2)"


def test_a_5000_digit_number_in_the_body_is_400_without_internals() -> None:
    """int()'s digit limit is not quoted back to the client."""
    body = b'{"target": "203.0.113.7", "probes": ' + b"9" * 5000 + b"}"
    answer, _ = Edgeway().exchange(post_head(len(body)) + body)
    assert status_of(answer) == 400
    assert "sys.set_int_max_str_digits" not in body_of(answer)["detail"]


def test_the_encoded_event_cache_is_bounded() -> None:
    """However many events are encoded, the shared cache of encoded events stays capped."""
    for n in range(sse._ENCODED_MAX + 500):
        sse.encode("t" * 22, Event(n, "status", TraceStatus.RUNNING))
    assert len(sse._ENCODED) <= sse._ENCODED_MAX
