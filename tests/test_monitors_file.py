"""The monitors file: parsing, applying at start and on reload, read-only monitors."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from mtrd.monitors.model import MonitorSource, MonitorSpec
from mtrd.monitors.service import MonitorService
from mtrd.web.monitors_file import (
    MonitorsFile,
    MonitorsFileError,
    apply_monitors_file,
    file_monitor_id,
    parse_monitors_file,
    read_monitors_file,
)
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from tests.monitor_values import REQUEST
from tests.test_monitor_service import ScriptedStarter

FILE = """
monitors:
  - name: gateway
    target: 203.0.113.7
    every: 30
    alerts: {loss_pct: 20, path_change: true}
  - name: dns
    target: 198.51.100.53
    protocol: udp
    port: 53
"""


def service() -> MonitorService:
    clock = Clock()
    monitors = MonitorService(clock, ScriptedStarter(clock, []), rng=random.Random(1))
    monitors.startService()
    return monitors


def test_a_file_declares_monitors_as_post_bodies() -> None:
    """Each entry reads as a POST /monitors body."""
    specs = parse_monitors_file(FILE)
    assert [(s.name, s.every, s.request.port) for s in specs] == [
        ("gateway", 30.0, None),
        ("dns", 60.0, 53),
    ]
    assert specs[0].alerts.loss_pct == 20.0


def test_a_bad_entry_is_named() -> None:
    """A bad entry's index, name and field are in the error."""
    text = "monitors:\n  - name: gw\n    target: 203.0.113.7\n    every: 0\n"
    with pytest.raises(MonitorsFileError, match=r"monitors\[0\] \(gw\): every"):
        parse_monitors_file(text)


def test_a_name_twice_is_refused() -> None:
    """Two monitors with one name are refused."""
    text = "monitors:\n  - {name: a, target: 203.0.113.7}\n  - {name: a, target: 203.0.113.8}\n"
    with pytest.raises(MonitorsFileError, match="declared twice"):
        parse_monitors_file(text)


def test_an_empty_file_declares_none() -> None:
    """An empty file is no monitors, not an error."""
    assert parse_monitors_file("") == []


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    """An unreadable file is an error naming it."""
    with pytest.raises(MonitorsFileError, match="cannot read"):
        read_monitors_file(str(tmp_path / "none.yaml"))


def test_file_monitors_have_ids_from_their_names() -> None:
    """Applied monitors are file monitors whose id comes from the name."""
    monitors = service()
    apply_monitors_file(monitors, parse_monitors_file(FILE))
    records = monitors.listing()
    assert {r.source for r in records} == {MonitorSource.FILE}
    assert {r.id for r in records} == {file_monitor_id("gateway"), file_monitor_id("dns")}


def test_a_reload_updates_adds_and_removes() -> None:
    """Applying a new file updates a changed monitor in place, adds and removes the rest."""
    monitors = service()
    apply_monitors_file(monitors, parse_monitors_file(FILE))
    gateway = monitors.get(file_monitor_id("gateway"))
    changed = FILE.replace("every: 30", "every: 10").split("  - name: dns")[0]
    changed += "  - name: web\n    target: 203.0.113.80\n"
    apply_monitors_file(monitors, parse_monitors_file(changed))
    assert sorted(r.spec.name for r in monitors.listing()) == ["gateway", "web"]
    assert monitors.get(file_monitor_id("gateway")) is gateway
    assert gateway.spec.every == 10.0


def test_api_monitors_are_left_alone_by_a_reload() -> None:
    """A reload removes only file monitors."""
    monitors = service()
    monitors.create(MonitorSpec("mine", REQUEST))
    apply_monitors_file(monitors, [])
    assert [r.spec.name for r in monitors.listing()] == ["mine"]


def test_a_bad_reload_keeps_the_monitors(tmp_path: Path) -> None:
    """A reload whose file does not read changes nothing."""
    monitors = service()
    path = tmp_path / "monitors.yaml"
    path.write_text(FILE)

    def read_later(name: str) -> Deferred[list[MonitorSpec]]:
        try:
            return succeed(read_monitors_file(name))
        except MonitorsFileError as e:
            return fail(e)

    loader = MonitorsFile(str(path), monitors, read_later)
    loader.startService()
    path.write_text("monitors: [{name: broken}]")
    loader.reload()
    assert len(monitors) == 2
    path.write_text("monitors: []")
    loader.reload()
    assert len(monitors) == 0
