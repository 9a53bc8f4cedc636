"""The adaptive wait rule (traceroute's -w MAX,HERE,NEAR) as a pure function."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from mtrd.tracing.wait import WAIT_FLOOR, WaitFloor, WaitRule

OFF = WaitRule(here=0, near=0)


def test_here_waits_its_factor_times_this_ttls_round_trip() -> None:
    """A TTL that answered before in 20 ms waits 3 x 20 ms."""
    assert WaitRule().wait(2, here_rtt=0.02, near_rtt=0.001) == 3 * 0.02


def test_near_applies_when_this_ttl_never_answered() -> None:
    """A silent TTL waits 10 x the round trip of a higher TTL that answered."""
    assert WaitRule().wait(2, here_rtt=None, near_rtt=0.02) == 10 * 0.02


def test_nothing_known_waits_the_whole_timeout() -> None:
    """With no round trip known the wait is mtr-packet's timeout."""
    assert WaitRule().wait(2, here_rtt=None, near_rtt=None) == 2.0


def test_the_wait_never_exceeds_the_timeout() -> None:
    """A slow path (10 x 0.5 s) still waits no longer than the timeout."""
    assert WaitRule().wait(1, here_rtt=None, near_rtt=0.5) == 1.0


def test_the_wait_never_falls_below_the_floor() -> None:
    """A 0.1 ms path waits the floor, not 1 ms."""
    assert WaitRule().wait(2, here_rtt=None, near_rtt=0.0001) == WAIT_FLOOR


def test_off_waits_the_timeout_whatever_is_known() -> None:
    """Factors of 0 turn the rule off."""
    assert not OFF.adaptive
    assert OFF.wait(2, here_rtt=0.01, near_rtt=0.01) == 2.0


def test_a_factor_of_zero_turns_only_that_one_off() -> None:
    """here=0 leaves near in force."""
    assert WaitRule(here=0, near=10).wait(2, here_rtt=0.01, near_rtt=0.02) == 10 * 0.02


@given(
    timeout=st.integers(1, 60),
    here=st.floats(0, 100),
    near=st.floats(0, 100),
    here_rtt=st.none() | st.floats(0, 10),
    near_rtt=st.none() | st.floats(0, 10),
)
def test_every_wait_lies_between_the_floor_and_the_timeout(
    timeout: int, here: float, near: float, here_rtt: float | None, near_rtt: float | None
) -> None:
    """Whatever is known, the wait is within [floor, timeout]."""
    wait = WaitRule(here, near).wait(timeout, here_rtt=here_rtt, near_rtt=near_rtt)
    assert WAIT_FLOOR <= wait <= timeout


def test_the_floor_starts_at_its_base() -> None:
    """With no late answer the floor is the base floor."""
    assert WaitFloor().seconds(100.0) == WAIT_FLOOR


def test_a_late_answer_raises_the_floor_to_twice_its_wait() -> None:
    """An answer 40 ms after its wait started makes the floor 80 ms."""
    floor = WaitFloor()
    floor.late(0.04, now=10.0)
    assert floor.seconds(10.0) == 0.08


def test_the_raised_floor_halves_every_half_life() -> None:
    """Ten seconds without a late answer halve the raised floor, down to the base."""
    floor = WaitFloor(half_life=10.0)
    floor.late(0.04, now=0.0)
    assert floor.seconds(10.0) == 0.04
    assert floor.seconds(1000.0) == WAIT_FLOOR


def test_the_rule_keeps_to_a_raised_floor() -> None:
    """A floor passed in bounds the wait from below."""
    assert WaitRule().wait(2, here_rtt=None, near_rtt=0.0001, floor=0.3) == 0.3
