"""The storage codec of the Redis store: every trace value reads back equal."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given
from mtrd.tracing.model import Hop, Trace, TraceStatus
from mtrd.tracing.redis import codec

from tests.trace_values import hops, multipath_trace, rich_trace, traces


@given(traces)
def test_any_trace_round_trips(trace: Trace) -> None:
    """A trace decodes to an equal trace."""
    assert codec.decode_trace(codec.encode_trace(trace)) == trace


@given(hops)
def test_any_hop_event_round_trips(hop: Hop) -> None:
    """A hop event's value decodes to an equal hop."""
    assert codec.decode_event("hop", codec.encode_event("hop", hop)) == hop


@pytest.mark.parametrize(
    ("kind", "value"),
    [("status", TraceStatus.RUNNING), ("done", rich_trace())],
)
def test_status_and_done_events_round_trip(kind: str, value: TraceStatus | Trace) -> None:
    """Status and done events decode to their value."""
    assert codec.decode_event(kind, codec.encode_event(kind, value)) == value


def test_integer_times_read_back_as_floats() -> None:
    """A time given as a whole number reads back as a float of the same value."""
    trace = rich_trace()
    decoded = codec.decode_trace(codec.encode_trace(trace).replace(b"1700000000.125", b"17"))
    assert isinstance(decoded.created_at, float)
    assert decoded.created_at == 17.0


def test_unknown_format_is_refused() -> None:
    """A document of another format number is refused, not guessed at."""
    data = codec.encode_trace(rich_trace()).replace(b'"f":3', b'"f":99')
    with pytest.raises(codec.UnknownFormat):
        codec.decode_trace(data)


def test_event_kind_must_match_its_value() -> None:
    """A hop event cannot carry a status."""
    with pytest.raises(ValueError, match="cannot carry"):
        codec.encode_event("hop", TraceStatus.RUNNING)


def test_format_1_documents_still_read() -> None:
    """A trace stored before vantage and replica were in the value reads back without them."""
    trace = rich_trace()
    old = codec.encode_trace(trace).replace(b'"f":3', b'"f":1')
    old = old.replace(b',"at":["fra","host-a-41-9f3c"]', b"")
    assert b'"at"' not in old
    assert codec.decode_trace(old) == attrs.evolve(trace, vantage="", replica=None)


def test_the_owner_round_trips_and_is_left_out_when_there_is_none() -> None:
    """A trace's owner is stored with it; a trace without one stores no owner key."""
    owned = attrs.evolve(rich_trace(), owner="alice")
    assert codec.decode_trace(codec.encode_trace(owned)).owner == "alice"
    assert b'"own"' not in codec.encode_trace(attrs.evolve(owned, owner=None))


def test_a_multipath_trace_round_trips() -> None:
    """Mode, confidence, links and flows of a multipath trace read back equal."""
    trace = multipath_trace()
    assert codec.decode_trace(codec.encode_trace(trace)) == trace


def test_a_classic_document_has_no_multipath_keys() -> None:
    """Classic traces are stored as before: older replicas read them unchanged."""
    assert b'"mp"' not in codec.encode_trace(rich_trace())
    assert b'"mode"' not in codec.encode_trace(rich_trace())
