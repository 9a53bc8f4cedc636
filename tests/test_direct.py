"""The direct routes: POST /traces and GET /traces/{id} answered without Klein, as
Klein answers them, the body written whole with its length."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mtrd.web.direct import DirectRoutes
from mtrd.web.problems import Problem, not_found, write_problem
from mtrd.web.routes import Api
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.test.requesthelper import DummyChannel
from werkzeug.exceptions import HTTPException

from tests.test_edge import Edgeway, body_of, post_head, status_of
from tests.test_http import QUICK

TRANSPORTS: dict[int, Any] = {}  # by request: the channel lets its request go when it ends
SEGMENTS = ["traces", "", "x2xr3zBm", "a%2Fb", "%C3%A9t%C3%A9", "events", "%FF", "monitors"]


def request_for(method: bytes, path: bytes) -> Request:
    """A request as the site hands it on: its path split in unescaped segments."""
    channel = DummyChannel()
    request = Request(channel)
    TRANSPORTS[id(request)] = channel.transport
    request.method = method
    request.uri = request.path = path
    request.clientproto = b"HTTP/1.1"
    request.prepath = []
    request.postpath = [unquote_to_bytes(part) for part in path[1:].split(b"/")]
    return request


def klein_endpoint(method: bytes, request: Request) -> str | None:
    """The endpoint Klein's map gives the request (None: it answers an error)."""
    try:
        path_info = "/" + b"/".join(request.postpath).decode("utf-8")
    except UnicodeDecodeError:
        return None  # the edge answers 400 before any route
    try:
        endpoint, _ = Api.app.url_map.bind("mtrd.test").match(path_info, method.decode())
    except HTTPException:
        return None
    return str(endpoint)


@given(
    st.sampled_from([b"GET", b"POST", b"HEAD", b"DELETE", b"PATCH"]),
    st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=4),
)
def test_a_request_answered_directly_is_one_klein_maps_to_show_or_create(
    method: bytes, segments: list[str]
) -> None:
    """What is answered directly, Klein would answer with show (GET) or create (POST);
    the rest goes to Klein, whatever it makes of it."""
    request = request_for(method, ("/" + "/".join(segments)).encode())
    direct = DirectRoutes(StubApi(b"{}"), None).route(request) is not None
    endpoint = klein_endpoint(method, request)
    if direct:
        assert (method, endpoint) in ((b"GET", "show"), (b"POST", "create")), segments


@pytest.mark.parametrize(
    ("method", "path"),
    [(b"POST", b"/traces"), (b"GET", b"/traces/x2xr3zBm"), (b"GET", b"/traces/%C3%A9t%C3%A9")],
)
def test_the_polling_routes_are_answered_directly(method: bytes, path: bytes) -> None:
    """POST /traces and GET /traces/{id}, as clients send them, do not go through Klein."""
    assert DirectRoutes(StubApi(b"{}"), None).route(request_for(method, path)) is not None


class StubApi:
    """The Api methods the direct routes call; ``answer`` is what show gives (or raises)."""

    def __init__(self, answer: object) -> None:
        self.answer = answer
        self.failures: list[Failure] = []

    def show(self, request: Any, trace_id: str) -> object:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def create(self, request: Any) -> object:
        return self.show(request, "")

    def failed(self, request: Any, failure: Failure) -> bytes:
        self.failures.append(failure)
        problem = failure.value
        assert isinstance(problem, Problem)
        return write_problem(request, problem, None)


class KleinStandIn:
    """Where every other request goes."""

    def __init__(self) -> None:
        self.rendered: list[Any] = []

    def render(self, request: Any) -> bytes:
        self.rendered.append(request)
        return b"klein"


def written(request: Request) -> bytes:
    return bytes(TRANSPORTS[id(request)].written.getvalue())


def render(api: StubApi, method: bytes = b"GET", path: bytes = b"/traces/abc") -> Request:
    request = request_for(method, path)
    assert DirectRoutes(api, KleinStandIn()).render(request) is NOT_DONE_YET
    return request


def test_an_answer_is_written_whole_with_its_length() -> None:
    """The body goes out with Content-Length, not chunked, and the request is finished."""
    request = render(StubApi(b'{"id":"abc"}'))
    assert request.finished
    head, _, body = written(request).partition(b"\r\n\r\n")
    assert b"Content-Length: 12" in head
    assert b"chunked" not in head
    assert body == b'{"id":"abc"}'


def test_a_raised_problem_is_answered_by_the_api_handler() -> None:
    """What a route raises goes to the Api's one error handler, as with Klein."""
    api = StubApi(not_found("trace abc"))
    request = render(api)
    assert request.code == 404
    assert len(api.failures) == 1
    assert b"urn:mtrd:problem:not-found" in written(request)


def test_other_requests_go_to_klein() -> None:
    """A route the direct resource does not answer is rendered by Klein's resource."""
    klein = KleinStandIn()
    request = request_for(b"GET", b"/traces/abc/events")
    assert DirectRoutes(StubApi(b"{}"), klein).render(request) == b"klein"
    assert klein.rendered == [request]


def test_a_deferred_answer_is_written_when_it_fires() -> None:
    """A route answering later (Redis mode) is written when its Deferred fires."""
    later: Deferred[bytes] = Deferred()
    request = render(StubApi(later), b"POST", b"/traces")
    assert not request.finished
    later.callback(b"{}")
    assert request.finished
    assert b"Content-Length: 2" in written(request)


def test_a_deferred_failure_is_answered_by_the_api_handler() -> None:
    """A Deferred that fails with a problem gets that problem's answer."""
    later: Deferred[bytes] = Deferred()
    request = render(StubApi(later))
    later.errback(Problem(503, "store-unavailable", "Trace store unavailable", "down"))
    assert request.code == 503
    assert request.finished


def test_a_client_gone_cancels_the_deferred_answer_quietly() -> None:
    """When the client goes first, the answer's Deferred is cancelled and nothing is
    written or logged (the cancellation is no error)."""
    later: Deferred[bytes] = Deferred()
    api = StubApi(later)
    request = render(api)
    request.connectionLost(Failure(ConnectionDone()))
    assert later.called  # cancelled
    assert api.failures == []
    assert written(request) == b""


def test_a_304_carries_no_content_length() -> None:
    """Over the real site: a 200 says its length; a 304 has no body and says no length
    (it would have to be the 200's)."""
    edge = Edgeway()
    channel, transport = edge.connect()
    body = json.dumps(QUICK).encode()
    channel.dataReceived(post_head(len(body)) + body)
    trace_id = body_of(transport.value())["id"]
    transport.clear()
    get = b"GET /traces/%s HTTP/1.1\r\nHost: mtrd.test\r\n" % trace_id.encode()
    channel.dataReceived(get + b"\r\n")
    head, _, first = transport.value().partition(b"\r\n\r\n")
    assert head.endswith(b"\r\nContent-Length: %d" % len(first))
    etag = next(line for line in head.split(b"\r\n") if line.startswith(b"ETag: "))[6:]
    transport.clear()
    channel.dataReceived(get + b"If-None-Match: " + etag + b"\r\n\r\n")
    answer = transport.value()
    assert status_of(answer) == 304
    assert b"Content-Length" not in answer
    assert answer.endswith(b"\r\n\r\n")


@pytest.mark.parametrize("path", [b"/traces/abc/", b"/traces/a%2Fb"])
def test_other_forms_of_the_paths_are_answered_as_before(path: bytes) -> None:
    """A trailing slash or an escaped / in the id is left to Klein: no route, 404."""
    answer, _ = Edgeway().exchange(b"GET %s HTTP/1.1\r\nHost: mtrd.test\r\n\r\n" % path)
    assert status_of(answer) == 404
    assert body_of(answer)["detail"].startswith("no route")
