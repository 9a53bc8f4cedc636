"""``replace``: a frozen value with some fields changed, as ``attrs.evolve`` makes it."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mtrd.tracing.model import Stop, StopReason, Trace, TraceRequest, TraceStatus, TraceTarget
from mtrd.tracing.values import replace

QUEUED = Trace(
    id="t" * 22,
    status=TraceStatus.QUEUED,
    request=TraceRequest("203.0.113.7"),
    target=TraceTarget("203.0.113.7"),
    created_at=0.0,
)


@attrs.frozen
class Private:
    _secret: int
    shown: str = "x"
    derived: int = attrs.field(init=False, default=7)


@attrs.frozen
class Checked:
    size: int = attrs.field(converter=int)

    @size.validator
    def _positive(self, _: object, value: int) -> None:
        if value < 1:
            raise ValueError("size must be positive")


@attrs.frozen(kw_only=True)
class KeywordsOnly:
    a: int
    b: int = 2


@given(
    status=st.sampled_from(TraceStatus),
    started=st.none() | st.floats(allow_nan=False),
    reached=st.booleans(),
    stop=st.none() | st.builds(Stop, st.sampled_from(StopReason)),
)
def test_a_trace_replaced_equals_the_evolved_one(
    status: TraceStatus, started: float | None, reached: bool, stop: Stop | None
) -> None:
    """Any changes of a trace give the value attrs.evolve gives, post-init included."""
    changes = {
        "status": status,
        "started_at": started,
        "destination_reached": reached,
        "stop": stop,
    }
    assert replace(QUEUED, **changes) == attrs.evolve(QUEUED, **changes)


def test_no_change_gives_an_equal_new_value() -> None:
    """Without changes the copy is equal, and a value of its own."""
    copy = replace(QUEUED)
    assert copy == QUEUED
    assert copy is not QUEUED


def test_private_fields_go_by_their_argument_name() -> None:
    """A private field is changed by its init name; fields outside init keep their default."""
    value = replace(Private(1, "y"), secret=5)
    assert value == attrs.evolve(Private(1, "y"), secret=5) == Private(5, "y")
    assert value.derived == 7


def test_validators_and_converters_run() -> None:
    """The new value goes through the class's init: converted, and checked."""
    assert replace(Checked(1), size="3").size == 3  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        replace(Checked(1), size=0)


def test_keyword_only_classes_are_replaced_too() -> None:
    """A class whose fields go by keyword only is replaced as well."""
    assert replace(KeywordsOnly(a=1), b=5) == KeywordsOnly(a=1, b=5)


def test_an_unknown_field_is_refused() -> None:
    """A change of a field the class does not take is a TypeError, as with attrs.evolve."""
    with pytest.raises(TypeError, match="no field 'nope'"):
        replace(QUEUED, nope=1)


def test_a_single_field_class() -> None:
    """A class of one field (read as one value, not a tuple) is replaced."""
    assert replace(Checked(1), size=4) == Checked(4)
