"""openapi.yaml is valid OpenAPI 3.1, its examples hold, and the response checker is strict."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
from mtrd.engine.probe import MplsLabel, Protocol
from mtrd.tracing.model import (
    Hop,
    HopEnd,
    JitterStats,
    Responder,
    RttStats,
    Trace,
    TraceRequest,
    TraceStatus,
    TraceTarget,
)
from mtrd.web.render import trace_json
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from tests.openapi import (
    SPEC,
    Example,
    examples,
    validate_at,
    validate_response,
    validate_schema,
)

EXAMPLES = list(examples())
TRACE_ID = "Vb4nR0s9_kLm2xQp"


def completed_trace() -> dict[str, Any]:
    """A fresh copy of the document's completed trace example."""
    return copy.deepcopy(SPEC["components"]["examples"]["CompletedTrace"]["value"])


def as_body(value: object) -> bytes:
    """JSON bytes as the service sends them."""
    return json.dumps(value).encode()


def test_document_is_valid_openapi_3_1() -> None:
    """openapi-spec-validator accepts the document as OpenAPI 3.1."""
    assert SPEC["openapi"] == "3.1.0"
    validate(SPEC, cls=OpenAPIV31SpecValidator)


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.location for e in EXAMPLES])
def test_example_matches_its_schema(example: Example) -> None:
    """Each request and response example validates against the schema it illustrates."""
    validate_at(example.schema_pointer, example.value, what=example.location)


def test_every_component_example_is_used_by_a_body() -> None:
    """Each example in components is attached to some body, so the test above checks it."""
    used = {e.location.rsplit("(", 1)[-1].rstrip(")") for e in EXAMPLES}
    declared = {f"/components/examples/{name}" for name in SPEC["components"]["examples"]}
    assert declared <= used


def test_completed_example_has_four_hops_and_an_ecmp_hop() -> None:
    """The completed trace example shows four hops, one answered by two responders."""
    hops = completed_trace()["hops"]
    assert len(hops) == 4
    assert any(len(hop["responders"]) == 2 for hop in hops)


def test_accepts_a_good_trace() -> None:
    """A documented Trace for GET /traces/{id} passes."""
    validate_response(
        "GET", f"/traces/{TRACE_ID}", 200, "application/json", as_body(completed_trace())
    )


def test_accepts_the_renderers_trace() -> None:
    """What mtrd.web.render makes of a finished trace with an ECMP, MPLS hop passes."""
    trace = Trace(
        id=TRACE_ID,
        status=TraceStatus.COMPLETED,
        request=TraceRequest(target="example.net", protocol=Protocol.UDP, port=33434),
        target=TraceTarget(input="example.net", address="192.0.2.10", ip_version=4),
        created_at=1_795_000_000.0,
        started_at=1_795_000_000.5,
        finished_at=1_795_000_004.25,
        expires_at=1_795_003_604.25,
        destination_reached=True,
        hops=(
            Hop(
                ttl=1,
                responders=(
                    Responder("203.0.113.1", 2, (MplsLabel(24001, 0, True, 1),)),
                    Responder("203.0.113.5", 1),
                ),
                sent=3,
                received=3,
                rtt_ms=RttStats(1.8, 1.7, 1.75, 1.8, 0.04),
                jitter_ms=JitterStats(0.1, 0.05, 0.1),
            ),
            Hop(ttl=2, sent=3, lost=3),
            Hop(ttl=3, responders=(Responder("192.0.2.10", 3),), end=HopEnd.DESTINATION),
        ),
    )
    validate_response(
        "GET", f"/traces/{TRACE_ID}", 200, "application/json", as_body(trace_json(trace))
    )


def test_ignores_media_type_parameters() -> None:
    """A charset parameter on a documented media type is fine."""
    validate_response("GET", "/healthz", 200, "application/json; charset=utf-8", b'{"status":"ok"}')


def test_ignores_the_query_string() -> None:
    """/traces?status=completed is matched as /traces."""
    body = as_body({"traces": [], "next_cursor": None})
    validate_response("GET", "/traces?status=completed&limit=5", 200, "application/json", body)


def test_accepts_an_empty_304() -> None:
    """A 304 carries no body and needs no media type."""
    validate_response("GET", f"/traces/{TRACE_ID}", 304, None, b"")


def test_rejects_a_body_on_an_empty_response() -> None:
    """A 204 from DELETE must have no body."""
    with pytest.raises(AssertionError, match="documents no body"):
        validate_response("DELETE", f"/traces/{TRACE_ID}", 204, "application/json", b"{}")


def test_rejects_an_unknown_path() -> None:
    """A path the document does not list fails."""
    with pytest.raises(AssertionError, match="matches no path"):
        validate_response("GET", "/nowhere", 200, "application/json", b"{}")


def test_rejects_an_undocumented_method() -> None:
    """A method the path does not document fails."""
    with pytest.raises(AssertionError, match=re.escape("PUT /traces/{id} is not documented")):
        validate_response("PUT", f"/traces/{TRACE_ID}", 200, "application/json", b"{}")


def test_other_statuses_must_be_problems() -> None:
    """A status without its own entry falls to `default`, which only a Problem satisfies."""
    with pytest.raises(AssertionError, match="'type' is a required property"):
        validate_response("GET", f"/traces/{TRACE_ID}", 418, "application/problem+json", b"{}")
    with pytest.raises(AssertionError, match="media type application/json is not documented"):
        validate_response("GET", f"/traces/{TRACE_ID}", 418, "application/json", b"{}")


def test_rejects_a_missing_required_field() -> None:
    """A Trace without its hops fails."""
    body = completed_trace()
    del body["hops"]
    with pytest.raises(AssertionError, match="'hops' is a required property"):
        validate_response("GET", f"/traces/{TRACE_ID}", 200, "application/json", as_body(body))


def test_rejects_an_extra_field() -> None:
    """A Trace with a field the schema does not name fails."""
    body = completed_trace()
    body["hops"][0]["colour"] = "blue"
    with pytest.raises(AssertionError, match="colour"):
        validate_response("GET", f"/traces/{TRACE_ID}", 200, "application/json", as_body(body))


def test_rejects_a_wrong_media_type() -> None:
    """JSON served as text/html fails."""
    with pytest.raises(AssertionError, match="text/html is not documented"):
        validate_response("GET", "/healthz", 200, "text/html", b'{"status":"ok"}')


def test_rejects_a_missing_media_type() -> None:
    """A body with no Content-Type fails."""
    with pytest.raises(AssertionError, match="no Content-Type"):
        validate_response("GET", "/healthz", 200, None, b'{"status":"ok"}')


def test_rejects_a_body_that_is_not_json() -> None:
    """A JSON media type with a body that does not parse fails."""
    with pytest.raises(AssertionError, match="not JSON"):
        validate_response("GET", "/healthz", 200, "application/json", b"ok")


def test_rejects_a_bad_date_time() -> None:
    """created_at must be an RFC 3339 date-time, not any string."""
    body = completed_trace()
    body["created_at"] = "yesterday"
    with pytest.raises(AssertionError, match="date-time"):
        validate_response("GET", f"/traces/{TRACE_ID}", 200, "application/json", as_body(body))


def test_accepts_status_event_data() -> None:
    """validate_schema accepts the data of a status event."""
    validate_schema("StatusEvent", {"id": TRACE_ID, "status": "running"})


def test_rejects_bad_status_event_data() -> None:
    """validate_schema rejects a status outside the five."""
    with pytest.raises(AssertionError, match="StatusEvent"):
        validate_schema("StatusEvent", {"id": TRACE_ID, "status": "paused"})


def test_rejects_an_unknown_schema_name() -> None:
    """validate_schema fails for a name not in components/schemas."""
    with pytest.raises(AssertionError, match="no schema Nope"):
        validate_schema("Nope", {})


def test_accepts_a_405_for_an_undocumented_method() -> None:
    """A 405 to a method the path does not list is checked against the path's 405."""
    body = as_body(
        {
            "type": "urn:mtrd:problem:method-not-allowed",
            "title": "Method not allowed",
            "status": 405,
            "detail": "PUT is not allowed here; use DELETE, GET",
            "instance": f"/traces/{TRACE_ID}",
        }
    )
    validate_response("PUT", f"/traces/{TRACE_ID}", 405, "application/problem+json", body)
