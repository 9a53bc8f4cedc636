"""The operator's monitors file (``--monitors-file``, YAML): loaded at start and on SIGHUP.

The file holds ``monitors:``, a list of objects shaped as ``POST /monitors`` bodies. Its
monitors are read-only through the API (409). On a reload, monitors that changed are
updated in place (keeping their history), new ones are added and those no longer in the
file are removed; a file that does not read keeps the monitors as they are, and says why.
A file monitor's id is derived from its name, so it keeps its id across restarts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import yaml
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mtrd.monitors.model import MonitorSource, MonitorSpec
from mtrd.monitors.service import (
    MonitorNameTaken,
    MonitorNotFound,
    MonitorService,
    TooManyMonitors,
)
from mtrd.web.intake import InvalidFields
from mtrd.web.monitor_intake import parse_monitor

log = Logger(namespace="mtrd.monitors")


class MonitorsFileError(ValueError):
    """The monitors file does not read; the message says where and why."""


def file_monitor_id(name: str) -> str:
    """The id of a file monitor: the same for the same name, across restarts."""
    return "m-" + hashlib.sha256(name.encode()).hexdigest()[:16]


def parse_monitors_file(text: str, where: str = "the monitors file") -> list[MonitorSpec]:
    """The monitors a file's text declares; raises :class:`MonitorsFileError`."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise MonitorsFileError(f"{where}: not YAML: {e}") from None
    if document is None:
        return []
    if not isinstance(document, dict) or not isinstance(document.get("monitors", []), list):
        raise MonitorsFileError(f"{where}: expected a mapping with a 'monitors' list")
    unknown = sorted(set(document) - {"monitors"})
    if unknown:
        raise MonitorsFileError(f"{where}: unknown keys {', '.join(unknown)}")
    specs: list[MonitorSpec] = []
    problems = []
    for index, entry in enumerate(document.get("monitors") or []):
        try:
            specs.append(parse_monitor(entry))
        except InvalidFields as e:
            name = entry.get("name") if isinstance(entry, dict) else None
            label = f"monitors[{index}]" + (f" ({name})" if isinstance(name, str) else "")
            problems.append(f"{label}: {e}")
    names = [s.name for s in specs]
    problems += [
        f"monitor {n!r} is declared twice" for n in sorted({n for n in names if names.count(n) > 1})
    ]
    if problems:
        raise MonitorsFileError(f"{where}: " + "; ".join(problems))
    return specs


def read_monitors_file(path: str) -> list[MonitorSpec]:
    """Read and parse the file (blocking: at start, or in a thread)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise MonitorsFileError(f"cannot read {path}: {e.strerror or e}") from None
    return parse_monitors_file(text, path)


def apply_monitors_file(monitors: MonitorService, specs: list[MonitorSpec]) -> None:
    """Make the service's file monitors those of ``specs``."""
    wanted = {spec.name: spec for spec in specs}
    for record in monitors.records():
        if record.source is MonitorSource.FILE and record.spec.name not in wanted:
            monitors.delete(record.id, force=True)
    for spec in specs:
        monitor_id = file_monitor_id(spec.name)
        try:
            current = monitors.get(monitor_id)
        except MonitorNotFound:
            current = None
        try:
            if current is None:
                monitors.create(spec, source=MonitorSource.FILE, monitor_id=monitor_id)
            elif current.spec != spec:
                monitors.update(monitor_id, spec, force=True)
        except (MonitorNameTaken, TooManyMonitors) as e:
            log.warn("monitors file: {name} not applied: {error}", name=spec.name, error=str(e))


class MonitorsFile(Service):
    """Keeps the file monitors in step with the file: at start, and on each reload."""

    def __init__(
        self,
        path: str,
        monitors: MonitorService,
        read_later: Callable[[str], Deferred[list[MonitorSpec]]],
        apply: Callable[[list[MonitorSpec]], None] | None = None,
    ) -> None:
        """``read_later`` reads the file off the reactor (a thread in production);
        ``apply`` takes the monitors instead of the service (Redis mode: the director)."""
        self._path = path
        self._monitors = monitors
        self._read_later = read_later
        self._apply = apply or (lambda specs: apply_monitors_file(monitors, specs))

    def startService(self) -> None:
        """Load the file (at start the reactor serves nobody yet: reading here is fine)."""
        super().startService()  # type: ignore[no-untyped-call]
        self._apply(read_monitors_file(self._path))

    def reload(self) -> Deferred[None]:
        """Read the file again and apply it; a bad file is logged and changes nothing."""
        reading = self._read_later(self._path)

        def apply(specs: list[MonitorSpec]) -> None:
            self._apply(specs)
            log.info(
                "monitors file {path} reloaded: {count} monitors", path=self._path, count=len(specs)
            )

        def failed(failure: object) -> None:
            log.warn(
                "monitors file not reloaded: {error}", error=getattr(failure, "value", failure)
            )

        return reading.addCallbacks(apply, failed)
