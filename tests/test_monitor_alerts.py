"""Alert conditions of a run and their transitions."""

from __future__ import annotations

from mtrd.monitors.alerts import firing, transitions
from mtrd.monitors.model import AlertKind, Alerts

from tests.monitor_values import run_trace

A, DEST = "198.51.100.1", "203.0.113.7"


def test_loss_above_the_threshold_fires() -> None:
    """Destination loss above loss_pct fires the loss alert."""
    assert firing(Alerts(loss_pct=20), run_trace(A, DEST, loss=1), False) == {AlertKind.LOSS}


def test_loss_at_the_threshold_does_not_fire() -> None:
    """Loss equal to the threshold is not above it."""
    assert firing(Alerts(loss_pct=50), run_trace(A, DEST, loss=1), False) == frozenset()


def test_an_unreached_destination_is_total_loss() -> None:
    """Not reaching the destination fires loss and unreachable."""
    trace = run_trace(A, None, reached=False)
    assert firing(Alerts(loss_pct=50, unreachable=True), trace, False) == {
        AlertKind.LOSS,
        AlertKind.UNREACHABLE,
    }


def test_rtt_above_the_threshold_fires() -> None:
    """A destination average RTT above rtt_ms fires the rtt alert."""
    assert firing(Alerts(rtt_ms=5), run_trace(A, DEST, rtt=7.5), False) == {AlertKind.RTT}


def test_path_change_fires_only_when_asked_for() -> None:
    """A path change fires path_change when the monitor alerts on it, and only then."""
    trace = run_trace(A, DEST)
    assert firing(Alerts(path_change=True), trace, True) == {AlertKind.PATH_CHANGE}
    assert firing(Alerts(), trace, True) == frozenset()


def test_transitions_fire_new_and_resolve_gone() -> None:
    """An alert firing now opens; an open one no longer firing resolves; others stay."""
    was_open = frozenset({AlertKind.LOSS, AlertKind.RTT})
    moved = transitions(was_open, frozenset({AlertKind.RTT, AlertKind.UNREACHABLE}))
    assert moved.fired == {AlertKind.UNREACHABLE}
    assert moved.resolved == {AlertKind.LOSS}
