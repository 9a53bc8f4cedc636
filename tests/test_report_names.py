"""Names and AS numbers in the text report and the JSON of a responder."""

from __future__ import annotations

import attrs
import pytest
from mtrd.annotations.model import Annotation, DatabaseInfo, Sources
from mtrd.tracing.model import Hop, Responder, Trace, TraceRequest, TraceStatus, TraceTarget
from mtrd.web.render import responder_json, trace_bytes, trace_from_json
from mtrd.web.report import HostDisplay, render_report

NAMED = Responder("198.51.100.1", 3, (), Annotation("gw.example.net", None, 64500, "Transit"))
BARE = Responder("198.51.100.6", 3)
TRACE = Trace(
    id="t",
    status=TraceStatus.COMPLETED,
    request=TraceRequest("203.0.113.7"),
    target=TraceTarget("203.0.113.7", "203.0.113.7", 4),
    created_at=0.0,
    hops=(Hop(1, (NAMED,), 3, 3), Hop(2, (BARE,), 3, 3)),
)
WITH_ASN = attrs.evolve(TRACE, annotations=Sources(asn_db=DatabaseInfo("GeoLite2-ASN", 0.0)))


def host_lines(report: str) -> list[str]:
    return [line for line in report.splitlines() if ".|-- " in line]


def test_a_named_responder_shows_as_name_and_address() -> None:
    """By default a host reads ``name (address)``, as mtr -b; one without a name its address."""
    lines = host_lines(render_report(TRACE))
    assert "gw.example.net (198.51.100.1)" in lines[0]
    assert lines[1].split()[1] == "198.51.100.6"


def test_addresses_only_as_mtr_n() -> None:
    """``hosts=address`` shows no names."""
    report = render_report(TRACE, hosts=HostDisplay.ADDRESS)
    assert "gw.example.net" not in report
    assert "198.51.100.1" in report


def test_names_only_as_mtr() -> None:
    """``hosts=name`` shows the name alone where there is one."""
    lines = host_lines(render_report(TRACE, hosts=HostDisplay.NAME))
    assert lines[0].split()[1] == "gw.example.net"
    assert "198.51.100.1" not in lines[0]


def test_an_as_column_comes_with_an_as_database() -> None:
    """With an AS database, each host starts with its AS, AS??? when unknown."""
    lines = host_lines(render_report(WITH_ASN))
    assert lines[0].split()[1:3] == ["AS64500", "gw.example.net"]
    assert lines[1].split()[1:3] == ["AS???", "198.51.100.6"]


def test_no_as_column_without_a_database() -> None:
    """Without an AS database, no AS column."""
    assert "AS" not in "".join(host_lines(render_report(TRACE)))


def test_a_responder_without_annotations_has_null_fields() -> None:
    """No name, no database: every annotation field is present and null, no verified."""
    data = responder_json(BARE)
    assert [data[k] for k in ("hostname", "asn", "as_name", "prefix", "country")] == [None] * 5
    assert "verified" not in data


@pytest.mark.parametrize("verified", [True, False])
def test_verified_appears_only_when_checked(verified: bool) -> None:
    """With FCrDNS, a named responder says whether its name is verified."""
    data = responder_json(Responder("198.51.100.1", 1, (), Annotation("gw.example", verified)))
    assert data["verified"] is verified


def test_annotations_read_back_from_the_json() -> None:
    """The client reads names, AS and the databases back from the trace resource."""
    assert trace_from_json(trace_bytes(WITH_ASN)) == WITH_ASN
