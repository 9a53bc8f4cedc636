"""The DOT path graph: node labels with names and AS, escaped as untrusted text."""

from __future__ import annotations

from mtrd.annotations.model import Annotation
from mtrd.tracing.model import (
    Hop,
    MultipathResult,
    Responder,
    Trace,
    TraceMode,
    TraceRequest,
    TraceStatus,
    TraceTarget,
)
from mtrd.web.graph import render_dot


def _trace(*responders: Responder) -> Trace:
    return Trace(
        id="t1",
        status=TraceStatus.COMPLETED,
        request=TraceRequest("203.0.113.7", mode=TraceMode.MULTIPATH),
        target=TraceTarget("203.0.113.7", "203.0.113.7", 4),
        created_at=0.0,
        hops=(Hop(ttl=1, responders=responders), Hop(ttl=2)),
        multipath=MultipathResult(
            confidence=95,
            links=(),
            flows=(),
            probes_sent=0,
            stop_reason="destination",
            full_mda_hops=(),
        ),
    )


def _label(dot: str, node: str) -> str:
    line = next(line for line in dot.splitlines() if line.strip().startswith(f'"{node}" [label='))
    return line.split("[label=", 1)[1].removesuffix("];")


def test_a_named_responder_is_labelled_name_address_and_as() -> None:
    """A node reads ``name (address)``, then its AS number and name, then its TTL."""
    named = Annotation(hostname="gw.example.net", asn=64500, as_name="Example Net")
    dot = render_dot(_trace(Responder("198.51.100.1", 3, annotation=named)))
    assert _label(dot, "1 198.51.100.1") == (
        '"gw.example.net (198.51.100.1)\\nAS64500 Example Net\\nTTL 1"'
    )


def test_an_unnamed_responder_is_labelled_with_its_address() -> None:
    """Without annotations a node reads its address and TTL, one per line."""
    dot = render_dot(_trace(Responder("198.51.100.1", 3)))
    assert _label(dot, "1 198.51.100.1") == '"198.51.100.1\\nTTL 1"'


def test_a_silent_ttl_is_one_star_node() -> None:
    """A TTL nobody answered at shows as ``*`` with its TTL."""
    dot = render_dot(_trace(Responder("198.51.100.1", 3)))
    assert _label(dot, "2 *") == '"*\\nTTL 2"'


def test_quotes_and_backslashes_in_an_as_name_stay_plain_text() -> None:
    """An AS name cannot end the label, add attributes or a DOT escape: it is escaped."""
    hostile = Annotation(asn=64500, as_name='Evil" color=red \\N \\l \\\\"];\n')
    dot = render_dot(_trace(Responder("198.51.100.1", 3, annotation=hostile)))
    label = _label(dot, "1 198.51.100.1")
    body = label[1:-1]
    # Every quote is escaped, and every backslash is doubled except the two line breaks.
    assert '"' not in body.replace('\\"', "")
    assert body.count("\\n") >= 2
    assert body.replace("\\\\", "").replace('\\"', "").count("\\") == 2
    assert "\n" not in label
    assert 'Evil\\" color=red \\\\N \\\\l \\\\\\\\\\"];' in body
