"""A monitor's memory (what its runner saw) round-trips through its stored form, and a new
record that recalls it continues the path, alerts and event numbering."""

from __future__ import annotations

import pytest
from mtrd.monitors.model import AlertKind, Alerts
from mtrd.monitors.service import MonitorMemory
from mtrd.web.monitor_memory import decode_memory, encode_memory

from tests.monitor_values import run_trace
from tests.test_monitor_service import DEST, A, B, C, events, make, spec, tick

ALERTS = Alerts(loss_pct=10.0, path_change=True)


def seen() -> MonitorMemory:
    """The memory of a monitor that saw a path change and has an alert open."""
    service, clock, _, _ = make([run_trace(A, B, DEST), run_trace(A, C, DEST, loss=1)])
    record = service.create(spec(alerts=ALERTS, confirm_runs=2))
    tick(clock, 11)
    return record.memory(spec_version=3)


def test_a_memory_round_trips_through_its_stored_form() -> None:
    """Encoded then decoded, the memory is equal: path, candidate, runs, history, alerts."""
    memory = seen()
    assert len(memory.runs) == 2
    assert memory.path.candidate is not None
    assert [kind for kind, _ in memory.open_alerts] == [AlertKind.LOSS]
    assert decode_memory(encode_memory(memory)) == memory


def test_another_format_is_refused() -> None:
    """A kept memory of another format is a ValueError (the runner then starts afresh)."""
    with pytest.raises(ValueError, match="format"):
        decode_memory(b'{"v": 99}')


def test_a_recalled_monitor_confirms_the_candidate_it_was_given() -> None:
    """The new runner's first run completes the confirmation the old one had begun."""
    memory = seen()
    service, clock, _, _ = make([run_trace(A, C, DEST, loss=1)])
    record = service.create(spec(alerts=ALERTS, confirm_runs=2))
    record.recall(memory)
    tick(clock, 1)
    assert record.path_changes == 1
    published = events(service, record.id)
    assert [e.kind for e in published] == ["run", "path_change", "alert"]
    assert published[0].id == memory.next_event_id
    assert sorted(record.open_alerts) == [AlertKind.LOSS, AlertKind.PATH_CHANGE]


def test_a_recall_under_other_settings_starts_the_path_afresh() -> None:
    """With ``same_settings`` false, runs and alerts carry over but not the path."""
    memory = seen()
    service, _, _, _ = make([run_trace(A, C, DEST)])
    record = service.create(spec())
    record.recall(memory, same_settings=False)
    assert record.path.current is None
    assert list(record.runs) == list(memory.runs)
