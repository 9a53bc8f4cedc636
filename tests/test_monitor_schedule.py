"""When monitor runs are due: jitter and the fixed grid."""

from __future__ import annotations

import random

from mtrd.monitors.schedule import first_due, next_due


def test_first_runs_spread_over_the_jitter() -> None:
    """First runs fall within [now, now + jitter) and are spread, not bunched."""
    rng = random.Random(7)
    dues = [first_due(100.0, 10.0, rng) for _ in range(200)]
    assert all(100.0 <= d <= 110.0 for d in dues)
    assert len({int(d) for d in dues}) == 10  # every second of the window is used


def test_no_jitter_runs_at_once() -> None:
    """A jitter of 0 runs the first run now."""
    assert first_due(100.0, 0.0, random.Random(1)) == 100.0


def test_runs_keep_to_the_grid_when_late() -> None:
    """A late run does not move the next: it is due one period after the previous slot."""
    assert next_due(100.0, 5.0, now=103.0) == 105.0


def test_slots_missed_for_longer_than_a_period_become_one_run_now() -> None:
    """After a long stall the next run is due now, not a burst of missed slots."""
    assert next_due(100.0, 5.0, now=130.0) == 130.0
