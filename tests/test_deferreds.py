"""The unhandled-Deferred check (tests/deferreds.py) still fails a test with a frozen heap."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

DROPPING = """
from twisted.internet.defer import Deferred


def test_first_lets_the_heap_be_frozen():
    pass


def test_drops_an_error_in_a_cycle():
    dropped = Deferred()
    dropped.errback(ValueError("dropped on the floor"))
    cycle = [dropped]
    cycle.append(cycle)  # only a collection frees it: reference counting alone cannot


def test_after_it_is_not_blamed():
    pass
"""


def test_a_dropped_error_in_garbage_fails_its_test(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Deferred failed, dropped and left in a reference cycle fails that test, not others."""
    path = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), path) if p))
    pytester.makepyfile(test_dropping=DROPPING)
    result = pytester.runpytest_subprocess("-p", "tests.deferreds", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        ["*ERROR at teardown of test_drops_an_error_in_a_cycle*", "*dropped on the floor*"]
    )
