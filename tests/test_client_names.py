"""``mtrd trace`` shows names and AS numbers; ``-n`` shows addresses only."""

from __future__ import annotations

import io

import attrs
from mtrd.annotations.model import Annotation, DatabaseInfo, Sources
from mtrd.client.display import LiveTable, PlainLines, hop_line
from mtrd.client.options import parse_args
from mtrd.tracing.model import Hop, Responder, Trace, TraceRequest, TraceStatus, TraceTarget
from mtrd.web.report import HostDisplay
from twisted.internet.task import Clock

NAMED = Hop(1, (Responder("198.51.100.1", 3, (), Annotation("gw.example.net", asn=64500)),), 3, 3)
TRACE = Trace(
    id="t",
    status=TraceStatus.COMPLETED,
    request=TraceRequest("203.0.113.7"),
    target=TraceTarget("203.0.113.7", "203.0.113.7", 4),
    created_at=0.0,
    hops=(NAMED,),
    annotations=Sources(asn_db=DatabaseInfo("GeoLite2-ASN", 0.0)),
)


def test_the_live_table_shows_names_and_as_numbers() -> None:
    """The live table reads ``AS64500  name (address)``."""
    out = io.StringIO()
    LiveTable(out, Clock()).finished(TRACE, "{}")
    assert "AS64500   gw.example.net (198.51.100.1)" in out.getvalue()


def test_numeric_shows_addresses_only() -> None:
    """With ``-n`` the table shows no names."""
    options = parse_args(["203.0.113.7", "-n"])
    assert options.hosts == "address"
    out = io.StringIO()
    PlainLines(out, HostDisplay(options.hosts)).finished(TRACE, "{}")
    assert "gw.example.net" not in out.getvalue()
    assert "198.51.100.1" in out.getvalue()


def test_a_plain_hop_line_names_the_responder() -> None:
    """A hop line carries the name with the address."""
    assert hop_line(NAMED).startswith("hop 1 gw.example.net(198.51.100.1) ")


def test_a_hop_line_without_a_name_is_unchanged() -> None:
    """No annotation: the address alone, as before."""
    bare = attrs.evolve(NAMED, responders=(Responder("198.51.100.1", 3),))
    assert hop_line(bare).startswith("hop 1 198.51.100.1 ")
