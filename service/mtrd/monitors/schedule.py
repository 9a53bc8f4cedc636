"""When a monitor's runs are due: a jittered first run, then a fixed grid.

Runs keep to the grid ``first + k * every`` rather than ``end of last run + every``,
so a run's lateness does not push every later run back. Runs may overlap: a run that
takes longer than the period does not hold the next one back (none is skipped).
"""

from __future__ import annotations

import random


def first_due(now: float, jitter: float, rng: random.Random) -> float:
    """The first run's time: ``now`` plus a uniform share of ``jitter``, so that many
    monitors created together do not fire together."""
    return now + rng.uniform(0.0, jitter) if jitter > 0 else now


def next_due(due: float, every: float, now: float) -> float:
    """The run after the one due at ``due``.

    When the process could not run for longer than a period (a stopped service, a
    suspended host), the slots missed meanwhile become one run now, not a burst.
    """
    following = due + every
    if following > now - every:
        return following
    return now
