"""The monitor service: holds monitors, fires their runs on time, follows their paths.

Each run is an ordinary trace started through a :class:`TraceStarter` (in memory mode,
the trace jobs), so it is stored, linkable and expires like any other. When a run's trace
ends, the service works out the path, the path change (if confirmed) and the alert
transitions, publishes them as events and hands them to the :class:`Notifier` (webhooks).

It is a Twisted ``IService``: start arms every monitor's timer (the first run after a
random share of its jitter), stop disarms them; runs in flight finish in the trace jobs.
"""

from __future__ import annotations

import random
import secrets
from collections import deque
from collections.abc import Callable, Iterator
from typing import Protocol

import attrs
from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from mtrd.monitors.alerts import destination_hop, firing, transitions
from mtrd.monitors.events import AlertChange, MonitorChannel, MonitorEvent, MonitorEventKind
from mtrd.monitors.model import (
    AlertKind,
    Delivery,
    MonitorSource,
    MonitorSpec,
    Run,
    RunResult,
    WebhookTarget,
)
from mtrd.monitors.path import PathChange, PathState, path_of
from mtrd.monitors.schedule import first_due, next_due
from mtrd.tracing.model import Trace, TraceRequest, TraceStatus

KEEP_RUNS = 10
KEEP_CHANGES = 20
KEEP_DELIVERIES = 10


class TraceStarter(Protocol):
    """How the service starts a run's trace and hears how it went."""

    def start(
        self,
        request: TraceRequest,
        vantage: str | None,
        on_done: Callable[[Trace], None],
        on_refused: Callable[[str], None],
        owner: str | None = None,
    ) -> None:
        """Start a trace owned by ``owner`` (the monitor's); ``on_done`` gets it once final,
        ``on_refused`` why it could not start (a full queue or store, a tenant's cap, no live
        vantage). Either may be called at once."""
        ...


class Notifier(Protocol):
    """Where events go beyond the event stream (webhooks)."""

    def notify(
        self, target: WebhookTarget, event: MonitorEvent, on_status: Callable[[Delivery], None]
    ) -> None:
        """Deliver ``event`` to ``target``, eventually, telling ``on_status`` how it goes;
        never raises."""
        ...


class _NoNotifier:
    def notify(
        self, target: WebhookTarget, event: MonitorEvent, on_status: Callable[[Delivery], None]
    ) -> None:
        """Drop it: no webhooks configured."""


class MonitorNotFound(LookupError):
    """No monitor with this id (or not the asker's)."""


class MonitorNameTaken(Exception):
    """Another monitor has this name (names are metric labels: unique)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"a monitor named {name!r} exists already")
        self.name = name


class MonitorReadOnly(Exception):
    """The monitor comes from the monitors file: change it there."""

    def __init__(self, name: str) -> None:
        super().__init__(f"monitor {name!r} is declared in the monitors file and is read-only")
        self.name = name


class TooManyMonitors(Exception):
    """The cap on monitors (in all, or of one owner) is reached."""

    def __init__(self, cap: int, owner: str | None) -> None:
        if owner is None:
            super().__init__(f"at most {cap} monitors in all")
        else:
            super().__init__(
                f"at most {cap} monitors for {owner} (per-tenant cap --tenant-max-monitors {cap})"
            )
        self.cap = cap
        self.owner = owner


def visible(monitor_owner: str | None, asker: str | None) -> bool:
    """Whether a monitor of ``monitor_owner`` shows to ``asker`` (None: anyone, or an admin).

    Like traces: a tenant sees its own monitors only; the operator's (file) monitors have
    no owner, so only admins, or everyone without auth, see them and their runs."""
    return asker is None or monitor_owner == asker


@attrs.frozen
class PathChangeRecord:
    """A path change in the monitor's history."""

    at: float
    change: PathChange


@attrs.frozen
class MonitorMemory:
    """What a monitor has seen, kept so that another runner continues from it (Redis mode):
    its path (and the candidate being confirmed), last runs, path history, open alerts,
    counts, and the id its next event gets. ``spec_version`` is the version of the settings
    the path was followed under: a runner given other settings starts the path afresh."""

    path: PathState = attrs.Factory(PathState)
    runs: tuple[Run, ...] = ()
    history: tuple[PathChangeRecord, ...] = ()
    open_alerts: tuple[tuple[AlertKind, float], ...] = ()
    runs_by_result: tuple[tuple[RunResult, int], ...] = ()
    path_changes: int = 0
    next_event_id: int = 1
    spec_version: int = 0


@attrs.define(eq=False)
class MonitorRecord:
    """One monitor and everything the service knows of it."""

    id: str
    spec: MonitorSpec
    source: MonitorSource
    owner: str | None
    created_at: float
    channel: MonitorChannel = attrs.Factory(MonitorChannel)
    runs: deque[Run] = attrs.Factory(lambda: deque(maxlen=KEEP_RUNS))
    path: PathState = attrs.Factory(PathState)
    history: deque[PathChangeRecord] = attrs.Factory(lambda: deque(maxlen=KEEP_CHANGES))
    open_alerts: dict[AlertKind, float] = attrs.Factory(dict)  # kind -> when it fired
    runs_by_result: dict[RunResult, int] = attrs.Factory(dict)
    path_changes: int = 0
    last_trace: Trace | None = None
    due: float | None = None
    timer: IDelayedCall | None = None
    version: int = 0
    _deliveries: dict[str, Delivery] = attrs.Factory(dict)  # by event key, oldest first

    @property
    def deliveries(self) -> list[Delivery]:
        """The last webhook deliveries' states, oldest first."""
        return list(self._deliveries.values())

    def delivery(self, delivery: Delivery) -> None:
        """Keep the latest state of an event's delivery (and only the last few events')."""
        self._deliveries.pop(delivery.event_id, None)
        self._deliveries[delivery.event_id] = delivery
        while len(self._deliveries) > KEEP_DELIVERIES:
            del self._deliveries[next(iter(self._deliveries))]

    def memory(self, spec_version: int = 0) -> MonitorMemory:
        """What this monitor has seen, as a value."""
        return MonitorMemory(
            path=self.path,
            runs=tuple(self.runs),
            history=tuple(self.history),
            open_alerts=tuple(sorted(self.open_alerts.items())),
            runs_by_result=tuple(sorted(self.runs_by_result.items())),
            path_changes=self.path_changes,
            next_event_id=self.channel.last_id + 1,
            spec_version=spec_version,
        )

    def recall(self, memory: MonitorMemory, *, same_settings: bool = True) -> None:
        """Continue from what another runner saw (its path only under the same settings)."""
        if same_settings:
            self.path = memory.path
        self.runs.extend(memory.runs)
        self.history.extend(memory.history)
        self.open_alerts = dict(memory.open_alerts)
        self.runs_by_result = dict(memory.runs_by_result)
        self.path_changes = memory.path_changes
        self.channel = MonitorChannel(next_id=memory.next_event_id)

    def count(self, result: RunResult) -> None:
        """Count one run by its result."""
        self.runs_by_result[result] = self.runs_by_result.get(result, 0) + 1


class MonitorService(Service):
    """Runs monitors; see the module docstring."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        starter: TraceStarter,
        *,
        notifier: Notifier | None = None,
        max_monitors: int = 200,
        max_per_owner: int | None = None,
        rng: random.Random | None = None,
        on_started: Callable[[float], None] = lambda _: None,
    ) -> None:
        self._clock = clock
        self._starter = starter
        self._notifier: Notifier = notifier or _NoNotifier()
        self.max_monitors = max_monitors
        self.max_per_owner = max_per_owner
        self._rng = rng or random.Random()  # noqa: S311  # spreads runs in time; not a secret
        self._on_started = on_started  # hears each run's lateness, in seconds
        self._records: dict[str, MonitorRecord] = {}

    def __len__(self) -> int:
        return len(self._records)

    # -- the API's side ------------------------------------------------------------------

    def create(
        self,
        spec: MonitorSpec,
        owner: str | None = None,
        source: MonitorSource = MonitorSource.API,
        monitor_id: str | None = None,
    ) -> MonitorRecord:
        """Add a monitor and arm its first run; raises on a taken name or a cap."""
        if any(r.spec.name == spec.name for r in self._records.values()):
            raise MonitorNameTaken(spec.name)
        if len(self._records) >= self.max_monitors:
            raise TooManyMonitors(self.max_monitors, None)
        if self.max_per_owner is not None and owner is not None:
            mine = sum(1 for r in self._records.values() if r.owner == owner)
            if mine >= self.max_per_owner:
                raise TooManyMonitors(self.max_per_owner, owner)
        record = MonitorRecord(
            id=monitor_id or "m-" + secrets.token_urlsafe(12),
            spec=spec,
            source=source,
            owner=owner,
            created_at=self._clock.seconds(),
        )
        self._records[record.id] = record
        if self.running:
            self._arm_first(record)
        return record

    def get(self, monitor_id: str, owner: str | None = None) -> MonitorRecord:
        """The monitor ``monitor_id`` if ``owner`` may see it; raises MonitorNotFound."""
        record = self._records.get(monitor_id)
        if record is None or not visible(record.owner, owner):
            raise MonitorNotFound(monitor_id)
        return record

    def listing(self, owner: str | None = None) -> list[MonitorRecord]:
        """The monitors ``owner`` may see, oldest first."""
        return [r for r in self._records.values() if visible(r.owner, owner)]

    def records(self) -> Iterator[MonitorRecord]:
        """Every monitor, oldest first."""
        return iter(list(self._records.values()))

    def update(
        self, monitor_id: str, spec: MonitorSpec, owner: str | None = None, *, force: bool = False
    ) -> MonitorRecord:
        """Replace a monitor's settings (``force``: even a file monitor's)."""
        record = self.get(monitor_id, owner)
        if record.source is MonitorSource.FILE and not force:
            raise MonitorReadOnly(record.spec.name)
        if spec.name != record.spec.name and any(
            r.spec.name == spec.name for r in self._records.values()
        ):
            raise MonitorNameTaken(spec.name)
        old, record.spec = record.spec, spec
        record.version += 1
        if spec.request != old.request or spec.vantage != old.vantage:
            # Another target or options: another path. Start following it afresh.
            record.path = PathState()
        if not self.running:
            return record
        if spec.paused:
            self._disarm(record)
        elif old.paused or spec.every != old.every or record.timer is None:
            self._disarm(record)
            self._arm_first(record)
        return record

    def delete(self, monitor_id: str, owner: str | None = None, *, force: bool = False) -> None:
        """Remove a monitor; runs in flight finish as ordinary traces."""
        record = self.get(monitor_id, owner)
        if record.source is MonitorSource.FILE and not force:
            raise MonitorReadOnly(record.spec.name)
        self._disarm(record)
        record.channel.close()
        del self._records[monitor_id]

    # -- the lifecycle -------------------------------------------------------------------

    def startService(self) -> None:
        """Arm every monitor that is not paused."""
        super().startService()  # type: ignore[no-untyped-call]
        for record in self._records.values():
            self._arm_first(record)

    def stopService(self) -> None:
        """Disarm every monitor: no run starts until the service starts again."""
        super().stopService()  # type: ignore[no-untyped-call]
        for record in self._records.values():
            self._disarm(record)

    # -- runs ----------------------------------------------------------------------------

    def _arm_first(self, record: MonitorRecord) -> None:
        if record.spec.paused:
            return
        now = self._clock.seconds()
        self._arm(record, first_due(now, record.spec.start_jitter, self._rng))

    def _arm(self, record: MonitorRecord, due: float) -> None:
        record.due = due
        delay = max(0.0, due - self._clock.seconds())
        record.timer = self._clock.callLater(delay, self._fire, record)

    def _disarm(self, record: MonitorRecord) -> None:
        if record.timer is not None and record.timer.active():
            record.timer.cancel()
        record.timer = None
        record.due = None

    def _fire(self, record: MonitorRecord) -> None:
        due = record.due if record.due is not None else self._clock.seconds()
        record.timer = None
        if record.id not in self._records or record.spec.paused or not self.running:
            return
        self._arm(record, next_due(due, record.spec.every, self._clock.seconds()))
        try:
            self._run(record, due)
        except Exception:
            # A timer's failure must not stop the monitor: the next run is armed already.
            self.log.failure("monitor {name}: run failed to start", name=record.spec.name)

    def _run(self, record: MonitorRecord, due: float) -> None:
        now = self._clock.seconds()
        spec = record.spec

        def done(trace: Trace) -> None:
            self._ended(record, Run(trace.id, due, now), trace)

        def refused(why: str) -> None:
            self.log.warn("monitor {name}: run not started: {error}", name=spec.name, error=why)
            if self._records.get(record.id) is record:
                self._record_run(record, Run(None, due, now, RunResult.REFUSED, now))

        self._on_started(now - due)
        self._starter.start(spec.request, spec.vantage, done, refused, record.owner)

    def _ended(self, record: MonitorRecord, started: Run, trace: Trace) -> None:
        if self._records.get(record.id) is not record:
            return  # deleted meanwhile
        now = self._clock.seconds()
        hop = destination_hop(trace)
        if trace.status is not TraceStatus.COMPLETED:
            result = RunResult.FAILED
        else:
            result = RunResult.REACHED if hop is not None else RunResult.UNREACHED
        change: PathChange | None = None
        path_id = None
        if result is not RunResult.FAILED and trace.request == record.spec.request:
            # A run started before a PATCH changed the request says nothing of the new path.
            record.path, change = record.path.observe(path_of(trace), record.spec.confirm_runs)
            assert record.path.current is not None
            path_id = record.path.current.path_id
        if result is not RunResult.FAILED:
            record.last_trace = trace
        run = attrs.evolve(
            started,
            result=result,
            finished_at=now,
            loss_pct=None if result is RunResult.FAILED else 100.0 if hop is None else hop.loss_pct,
            rtt_ms=None if hop is None else hop.rtt_ms.avg,
            path_id=path_id,
        )
        self._record_run(record, run)
        if result is RunResult.FAILED:
            return
        if change is not None:
            record.path_changes += 1
            record.history.append(PathChangeRecord(now, change))
            self._publish(record, MonitorEventKind.PATH_CHANGE, change)
        now_firing = firing(record.spec.alerts, trace, change is not None)
        moved = transitions(frozenset(record.open_alerts), now_firing)
        for kind in sorted(moved.resolved):
            del record.open_alerts[kind]
            self._publish(record, MonitorEventKind.ALERT, AlertChange(kind, "resolved", run))
        for kind in sorted(moved.fired):
            record.open_alerts[kind] = now
            self._publish(record, MonitorEventKind.ALERT, AlertChange(kind, "fired", run))

    def _record_run(self, record: MonitorRecord, run: Run) -> None:
        record.runs.append(run)
        record.version += 1
        assert run.result is not None
        record.count(run.result)
        self._publish(record, MonitorEventKind.RUN, run)

    def _publish(
        self, record: MonitorRecord, kind: str, value: Run | PathChange | AlertChange
    ) -> None:
        event = record.channel.publish(
            kind, self._clock.seconds(), record.id, record.spec.name, value
        )
        webhook = record.spec.webhook
        if webhook is not None and (kind != MonitorEventKind.RUN or webhook.every_run):
            self._notifier.notify(webhook, event, record.delivery)
