"""One renderer writes every problem body; errors become answers in one mapping."""

from __future__ import annotations

import pytest
import pytest_twisted
from mtrd.tracing.jobs import QueueFull
from mtrd.tracing.policy import TargetRefused
from mtrd.tracing.redis.errors import NoLiveVantage, RedisTimeout, RedisUnavailable
from mtrd.tracing.store import BadCursor, StoreFull
from mtrd.web.auth import UNAUTHORIZED, AuthGuard, BearerAuth, NamedToken
from mtrd.web.framing import MAX_REQUEST_LINE, ProblemChannel
from mtrd.web.intake import InvalidFields
from mtrd.web.problems import Problem, invalid_fields, not_found
from mtrd.web.routes import problem_of
from treq.testing import StubTreq
from twisted.internet.testing import StringTransport

from tests.test_http import BASE, Client

TOKEN = b"s3cret-token-0123456789"


@pytest_twisted.ensureDeferred
async def test_a_problem_a_route_raises_is_the_renderers_bytes() -> None:
    """GET of an unknown trace answers exactly what Problem.render writes for it."""
    answer = await Client().request("GET", "/traces/nosuchtrace")
    assert answer.code == 404
    assert answer.body == not_found("trace nosuchtrace").render("/traces/nosuchtrace")


@pytest_twisted.ensureDeferred
async def test_a_domain_error_a_route_lets_through_is_mapped_by_the_app() -> None:
    """A cursor the store refuses (BadCursor) becomes the 422 problem_of says."""
    answer = await Client().request("GET", "/traces?cursor=bogus")
    expected = invalid_fields([("cursor", "not a cursor this service handed out")])
    assert answer.code == 422
    assert answer.body == expected.render("/traces")


@pytest_twisted.ensureDeferred
async def test_auth_writes_its_401_with_the_same_renderer() -> None:
    """The auth guard's 401 body is the renderer's bytes for UNAUTHORIZED."""
    client = Client()
    stub = StubTreq(AuthGuard(client.api.resource(), BearerAuth([NamedToken("ops", TOKEN)])))
    refused = await stub.get(f"{BASE}/traces")
    assert refused.code == 401
    assert await refused.content() == UNAUTHORIZED.render("/traces")


@pytest_twisted.ensureDeferred
async def test_the_edge_writes_its_400_with_the_same_renderer() -> None:
    """A URL that is not UTF-8 gets the renderer's bytes from the edge."""
    answer = await Client().request("GET", "/traces/%ff%fe")
    expected = Problem(400, "bad-request", "Bad request", "the URL is not valid UTF-8")
    assert answer.code == 400
    assert answer.body == expected.render()


def test_framing_limits_write_their_body_with_the_same_renderer() -> None:
    """An over-long request line gets a 414 whose body is the renderer's bytes."""
    channel = ProblemChannel()
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b"GET /" + b"a" * MAX_REQUEST_LINE + b" HTTP/1.1\r\n")
    head, _, body = transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 414 URI Too Long")
    detail = f"the request line is over {MAX_REQUEST_LINE} bytes"
    assert body == Problem(414, "uri-too-long", "URI Too Long", detail).render()


@pytest.mark.parametrize(
    ("error", "status", "name", "headers"),
    [
        (InvalidFields([("probes", "must be an integer")]), 422, "invalid-fields", ()),
        (BadCursor("bogus"), 422, "invalid-fields", ()),
        (TargetRefused("203.0.113.7", "deny 203.0.113.0/28"), 403, "forbidden-target", ()),
        (QueueFull(7), 429, "queue-full", (("Retry-After", "7"),)),
        (StoreFull(9), 429, "store-full", (("Retry-After", "9"),)),
        (NoLiveVantage("nrt", ["fra"]), 422, "invalid-fields", ()),
        (RedisUnavailable("not connected"), 503, "store-unavailable", (("Retry-After", "1"),)),
        (RedisTimeout("no answer in 2 s"), 503, "store-unavailable", (("Retry-After", "1"),)),
    ],
)
def test_each_domain_error_has_its_problem(
    error: Exception, status: int, name: str, headers: tuple[tuple[str, str], ...]
) -> None:
    """problem_of gives each domain error its status, type and headers."""
    problem = problem_of(error)
    assert (problem.status, problem.name, problem.headers) == (status, name, headers)


def test_an_error_without_a_mapping_is_not_given_a_made_up_answer() -> None:
    """problem_of refuses an error it does not know (the catch-all 500 answers it)."""
    with pytest.raises(TypeError):
        problem_of(RuntimeError("boom"))


def test_no_live_vantage_names_the_field_and_the_live_ones() -> None:
    """The 422 for a vantage without live replicas names vantage and lists the live ones."""
    problem = problem_of(NoLiveVantage("nrt", ["ams", "fra"]))
    assert [field for field, _ in problem.errors] == ["vantage"]
    assert problem.errors[0][1].endswith("live vantage points: ams, fra")


def test_no_live_vantage_at_all_says_none() -> None:
    """With no live vantage anywhere the 422 says so."""
    problem = problem_of(NoLiveVantage("fra", []))
    assert problem.errors[0][1].endswith("live vantage points: none")
