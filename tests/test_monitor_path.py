"""Path identity and diff of monitor runs: silent TTLs, ECMP sets, confirmation."""

from __future__ import annotations

from mtrd.monitors.path import Path, PathState, TtlChange, diff, merge, path_of

from tests.monitor_values import run_trace

A, B, C, D, DEST = "198.51.100.1", "198.51.100.2", "198.51.100.3", "198.51.100.4", "203.0.113.7"


def test_path_of_a_reached_trace_ends_at_the_destination() -> None:
    """A reached trace's path holds each TTL's responders up to the destination."""
    path = path_of(run_trace(A, B, DEST))
    assert path == Path(1, (frozenset({A}), frozenset({B}), frozenset({DEST})), reached=True)


def test_path_of_an_unreached_trace_ends_at_its_last_answer() -> None:
    """Silent TTLs after the last answer are not part of an unreached path."""
    path = path_of(run_trace(A, None, B, None, None, reached=False))
    assert path.hops == (frozenset({A}), None, frozenset({B}))
    assert not path.reached


def test_ecmp_responders_are_a_set() -> None:
    """The same responders in another order give the same path id."""
    one = path_of(run_trace(A, (B, C), DEST))
    other = path_of(run_trace(A, (C, B), DEST))
    assert one.path_id == other.path_id


def test_path_ids_differ_with_the_responders() -> None:
    """Another responder at one TTL gives another path id."""
    assert path_of(run_trace(A, B, DEST)).path_id != path_of(run_trace(A, C, DEST)).path_id


def test_a_silent_ttl_keeps_what_was_known() -> None:
    """Merging a run with a silent TTL keeps the current responders there."""
    current = path_of(run_trace(A, B, DEST))
    merged = merge(current, path_of(run_trace(A, None, DEST)))
    assert merged.path_id == current.path_id


def test_an_unreached_run_keeps_the_known_tail() -> None:
    """A run that stopped answering early does not shorten the known path."""
    current = path_of(run_trace(A, B, DEST))
    merged = merge(current, path_of(run_trace(A, None, None, reached=False)))
    assert merged == current


def test_diff_names_who_left_and_who_came_by_ttl() -> None:
    """The diff lists, per changed TTL, the responders that left and those that came."""
    old = path_of(run_trace(A, B, DEST))
    new = path_of(run_trace(A, C, D, DEST))
    assert diff(old, new) == (
        TtlChange(2, (B,), (C,)),
        TtlChange(3, (DEST,), (D,)),
        TtlChange(4, (), (DEST,)),
    )


def test_diff_of_an_ecmp_set_names_only_the_difference() -> None:
    """A responder joining an ECMP hop is a change that came, nothing left."""
    old = path_of(run_trace(A, B, DEST))
    new = path_of(run_trace(A, (B, C), DEST))
    assert diff(old, new) == (TtlChange(2, (), (C,)),)


def test_the_first_run_sets_the_path_without_a_change() -> None:
    """The first path seen becomes the current path; nothing changed."""
    state, change = PathState().observe(path_of(run_trace(A, B, DEST)), confirm_runs=2)
    assert change is None
    assert state.current == path_of(run_trace(A, B, DEST))


def test_a_new_path_needs_confirming_runs() -> None:
    """With confirm_runs=2, one run on a new path changes nothing; the second confirms it."""
    state, _ = PathState().observe(path_of(run_trace(A, B, DEST)), 2)
    new = path_of(run_trace(A, C, DEST))
    state, first = state.observe(new, 2)
    assert first is None
    state, second = state.observe(new, 2)
    assert second is not None
    assert second.changes == (TtlChange(2, (B,), (C,)),)
    assert state.current == new


def test_a_blip_back_to_the_current_path_resets_confirmation() -> None:
    """new, old, new with confirm_runs=2 confirms nothing."""
    old, new = path_of(run_trace(A, B, DEST)), path_of(run_trace(A, C, DEST))
    state, _ = PathState().observe(old, 2)
    changes = []
    for seen in (new, old, new):
        state, change = state.observe(seen, 2)
        changes.append(change)
    assert changes == [None, None, None]
    assert state.current == old


def test_a_silent_run_is_not_a_change() -> None:
    """A run silent at one TTL, with confirm_runs=1, is no change."""
    state, _ = PathState().observe(path_of(run_trace(A, B, DEST)), 1)
    _, change = state.observe(path_of(run_trace(A, None, DEST)), 1)
    assert change is None
