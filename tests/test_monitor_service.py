"""The monitor service on a Clock: runs on time, paths, alerts, events, caps."""

from __future__ import annotations

import random
from collections.abc import Callable

import attrs
import pytest
from mtrd.monitors.events import AlertChange, MonitorEvent
from mtrd.monitors.model import (
    AlertKind,
    Alerts,
    Delivery,
    MonitorSource,
    MonitorSpec,
    RunResult,
    WebhookTarget,
)
from mtrd.monitors.path import PathChange, TtlChange
from mtrd.monitors.runs import JobsStarter
from mtrd.monitors.service import (
    MonitorNameTaken,
    MonitorNotFound,
    MonitorReadOnly,
    MonitorService,
    TooManyMonitors,
)
from mtrd.tracing.jobs import QueueFull, TraceJobs
from mtrd.tracing.model import Trace, TraceRequest, TraceStatus
from mtrd.tracing.store import TraceStore
from mtrd.tracing.tracer import Tracer
from twisted.internet.task import Clock

from tests.fakes import FakeNetwork
from tests.monitor_values import REQUEST, run_trace
from tests.test_jobs import ROUTERS, StaticResolver

A, B, C, DEST = "198.51.100.1", "198.51.100.2", "198.51.100.3", "203.0.113.7"


class ScriptedStarter:
    """Starts runs that end ``duration`` seconds later as the next scripted trace."""

    def __init__(self, clock: Clock, traces: list[Trace], duration: float = 0.5) -> None:
        self.clock = clock
        self.traces = traces
        self.duration = duration
        self.started: list[float] = []
        self.refuse = False

    def start(
        self,
        request: TraceRequest,
        vantage: str | None,
        on_done: Callable[[Trace], None],
        on_refused: Callable[[str], None],
        owner: str | None = None,
    ) -> None:
        if self.refuse:
            on_refused(str(QueueFull(1)))
            return
        self.started.append(self.clock.seconds())
        trace = self.traces[min(len(self.started), len(self.traces)) - 1]
        trace = attrs.evolve(trace, request=request)
        self.clock.callLater(self.duration, on_done, trace)


class Notes:
    """A notifier that keeps what it was given."""

    def __init__(self) -> None:
        self.sent: list[tuple[WebhookTarget, MonitorEvent]] = []

    def notify(
        self, target: WebhookTarget, event: MonitorEvent, on_status: Callable[[Delivery], None]
    ) -> None:
        self.sent.append((target, event))


def make(
    traces: list[Trace], **kwargs: object
) -> tuple[MonitorService, Clock, ScriptedStarter, Notes]:
    clock = Clock()
    clock.advance(1000)
    starter = ScriptedStarter(clock, traces)
    notes = Notes()
    service = MonitorService(clock, starter, notifier=notes, rng=random.Random(3), **kwargs)  # type: ignore[arg-type]
    service.startService()
    return service, clock, starter, notes


def spec(name: str = "api", **kwargs: object) -> MonitorSpec:
    values: dict[str, object] = {"every": 10.0, "jitter": 0.0, "confirm_runs": 1}
    values.update(kwargs)
    request = values.pop("request", REQUEST)
    return MonitorSpec(name, request, **values)  # type: ignore[arg-type]


def tick(clock: Clock, seconds: int) -> None:
    """Run what is due now, then step a second at a time (calls run on their second)."""
    clock.advance(0)
    clock.pump([1.0] * seconds)


def events(service: MonitorService, monitor_id: str) -> list[MonitorEvent]:
    return service.get(monitor_id).channel.replay(None)


def test_runs_fire_every_period() -> None:
    """A monitor every 10 s with no jitter runs at 0, 10, 20 s."""
    service, clock, starter, _ = make([run_trace(A, DEST)])
    service.create(spec())
    tick(clock, 25)
    assert starter.started == [1000.0, 1010.0, 1020.0]


def test_the_first_run_waits_a_share_of_the_jitter() -> None:
    """With a jitter, the first run comes within the jitter, not at once."""
    service, clock, starter, _ = make([run_trace(A, DEST)])
    service.create(spec(jitter=10.0))
    assert starter.started == []
    tick(clock, 10)
    assert len(starter.started) == 1
    assert 1000.0 < starter.started[0] <= 1010.0


def test_a_slow_run_does_not_delay_the_next() -> None:
    """Runs longer than the period overlap: each starts on its slot."""
    service, clock, starter, _ = make([run_trace(A, DEST)])
    starter.duration = 25.0
    service.create(spec())
    tick(clock, 31)
    assert starter.started == [1000.0, 1010.0, 1020.0, 1030.0]


def test_a_finished_run_is_recorded_with_its_figures() -> None:
    """A run that reached the destination is kept with its loss, RTT and path id."""
    service, clock, _, _ = make([run_trace(A, DEST, rtt=12.5)])
    record = service.create(spec())
    tick(clock, 1)
    (run,) = record.runs
    assert run.result is RunResult.REACHED
    assert (run.loss_pct, run.rtt_ms) == (0.0, 12.5)
    assert run.path_id == record.path.current.path_id  # type: ignore[union-attr]


def test_a_refused_run_is_counted_and_the_schedule_goes_on() -> None:
    """A run the jobs refuse is recorded as refused; the next slot still fires."""
    service, clock, starter, _ = make([run_trace(A, DEST)])
    starter.refuse = True
    record = service.create(spec())
    tick(clock, 0)
    assert [r.result for r in record.runs] == [RunResult.REFUSED]
    starter.refuse = False
    tick(clock, 10)
    assert starter.started == [1010.0]


def test_a_path_change_is_published_with_its_diff() -> None:
    """A confirmed path change becomes a path_change event with the diff by TTL."""
    service, clock, _, _ = make([run_trace(A, B, DEST), run_trace(A, C, DEST)])
    record = service.create(spec())
    tick(clock, 11)
    changes = [e.value for e in events(service, record.id) if e.kind == "path_change"]
    assert len(changes) == 1
    assert isinstance(changes[0], PathChange)
    assert changes[0].changes == (TtlChange(2, (B,), (C,)),)
    assert record.path_changes == 1
    assert len(record.history) == 1


def test_alerts_fire_then_resolve() -> None:
    """An alert fires on the run that meets it and resolves on the first that does not."""
    traces = [run_trace(A, DEST), run_trace(A, None, reached=False), run_trace(A, DEST)]
    service, clock, _, _ = make(traces)
    record = service.create(spec(alerts=Alerts(unreachable=True)))
    tick(clock, 1)
    assert record.open_alerts == {}
    tick(clock, 10)
    assert set(record.open_alerts) == {AlertKind.UNREACHABLE}
    tick(clock, 10)
    assert record.open_alerts == {}
    states = [
        (e.value.kind, e.value.state)
        for e in events(service, record.id)
        if isinstance(e.value, AlertChange)
    ]
    assert states == [(AlertKind.UNREACHABLE, "fired"), (AlertKind.UNREACHABLE, "resolved")]


def test_webhooks_get_changes_and_alerts_but_not_runs_by_default() -> None:
    """Without every_run, the webhook hears path changes and alerts, not plain runs."""
    service, clock, _, notes = make([run_trace(A, B, DEST), run_trace(A, C, DEST)])
    hook = WebhookTarget("https://hooks.example/x", "s3cret")
    service.create(spec(webhook=hook, alerts=Alerts(path_change=True)))
    tick(clock, 11)
    assert [e.kind for _, e in notes.sent] == ["path_change", "alert"]


def test_webhooks_get_every_run_when_asked() -> None:
    """With every_run, each run goes to the webhook too."""
    service, clock, _, notes = make([run_trace(A, DEST)])
    hook = WebhookTarget("https://hooks.example/x", "s3cret", every_run=True)
    service.create(spec(webhook=hook))
    tick(clock, 11)
    assert [e.kind for _, e in notes.sent] == ["run", "run"]


def test_event_ids_resume_after_last_event_id() -> None:
    """Subscribing after id N replays only the later events."""
    service, clock, _, _ = make([run_trace(A, DEST)])
    record = service.create(spec())
    tick(clock, 21)
    seen: list[int] = []
    record.channel.subscribe(lambda e: seen.append(e.id), after=1)
    assert seen == [2, 3]


def test_paused_monitors_do_not_run() -> None:
    """Pausing stops the runs; resuming starts them again."""
    service, clock, starter, _ = make([run_trace(A, DEST)])
    record = service.create(spec())
    tick(clock, 1)
    service.update(record.id, spec(paused=True))
    tick(clock, 30)
    assert len(starter.started) == 1
    service.update(record.id, spec())
    tick(clock, 1)
    assert len(starter.started) == 2


def test_stopping_the_service_stops_the_runs() -> None:
    """A stopped service starts no run."""
    service, clock, starter, _ = make([run_trace(A, DEST)])
    service.create(spec())
    tick(clock, 1)
    service.stopService()
    tick(clock, 60)
    assert len(starter.started) == 1


def test_names_are_unique() -> None:
    """A second monitor with a taken name is refused."""
    service, _, _, _ = make([run_trace(A, DEST)])
    service.create(spec("api"))
    with pytest.raises(MonitorNameTaken):
        service.create(spec("api"))


def test_the_cap_per_owner_holds() -> None:
    """An owner at its cap cannot add a monitor; another owner can."""
    service, _, _, _ = make([run_trace(A, DEST)], max_per_owner=1)
    service.create(spec("one"), owner="red")
    with pytest.raises(TooManyMonitors):
        service.create(spec("two"), owner="red")
    service.create(spec("three"), owner="blue")


def test_other_owners_do_not_see_a_monitor() -> None:
    """A monitor of one owner is not found by another."""
    service, _, _, _ = make([run_trace(A, DEST)])
    record = service.create(spec(), owner="red")
    with pytest.raises(MonitorNotFound):
        service.get(record.id, owner="blue")


def test_file_monitors_are_read_only() -> None:
    """A monitor from the file cannot be changed or deleted through the API."""
    service, _, _, _ = make([run_trace(A, DEST)])
    record = service.create(spec(), source=MonitorSource.FILE)
    with pytest.raises(MonitorReadOnly):
        service.update(record.id, spec(every=30.0))
    with pytest.raises(MonitorReadOnly):
        service.delete(record.id)


def test_deleted_monitors_run_no_more() -> None:
    """A deleted monitor's timer is disarmed."""
    service, clock, starter, _ = make([run_trace(A, DEST)])
    record = service.create(spec())
    tick(clock, 1)
    service.delete(record.id)
    tick(clock, 60)
    assert len(starter.started) == 1


def test_runs_through_the_jobs_are_ordinary_traces() -> None:
    """With the jobs starter, each run is a stored trace and the run links to it."""
    clock = Clock()
    tracer = Tracer(clock, FakeNetwork(clock, ROUTERS), StaticResolver())  # type: ignore[arg-type]
    store = TraceStore(clock)
    jobs = TraceJobs(tracer, store)
    service = MonitorService(clock, JobsStarter(jobs), rng=random.Random(1))
    service.startService()
    record = service.create(spec())
    clock.pump([0.05] * 200)
    (run,) = record.runs
    assert run.result is RunResult.REACHED
    assert store.get(run.trace_id or "") is not None


def test_a_failed_run_changes_neither_path_nor_alerts() -> None:
    """A run whose trace failed is counted as failed; the path and open alerts stay."""
    failed = run_trace(A, C, DEST, status=TraceStatus.FAILED)
    service, clock, _, _ = make([run_trace(A, B, DEST), failed])
    record = service.create(spec(alerts=Alerts(unreachable=True)))
    tick(clock, 1)
    path_id = record.path.current.path_id  # type: ignore[union-attr]
    tick(clock, 10)
    assert [r.result for r in record.runs] == [RunResult.REACHED, RunResult.FAILED]
    assert record.runs[-1].loss_pct is None
    assert record.path.current.path_id == path_id  # type: ignore[union-attr]
    assert record.open_alerts == {}


def test_a_run_of_the_old_request_does_not_move_the_new_path() -> None:
    """A run started before the target changed is recorded but not taken as the new path."""
    service, clock, starter, _ = make([run_trace(A, B, DEST)])
    starter.duration = 5.0
    record = service.create(spec())
    tick(clock, 1)
    service.update(record.id, spec(request=TraceRequest("203.0.113.9")))
    tick(clock, 5)
    assert [r.result for r in record.runs] == [RunResult.REACHED]
    assert record.path.current is None
