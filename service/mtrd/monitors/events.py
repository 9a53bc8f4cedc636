"""A monitor's numbered events and the subscribers who follow them.

Unlike a trace's channel, a monitor's never ends, and its events are not the current
state of a few things but a history: the channel keeps the last ``keep`` events, so a
subscriber who resumes after id N (``Last-Event-ID``) gets those after N it still holds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import attrs
from twisted.logger import Logger

from mtrd.monitors.model import AlertKind, Run
from mtrd.monitors.path import PathChange

log = Logger()


class MonitorEventKind:
    """The kinds of monitor events, as SSE ``event:`` names and webhook types."""

    RUN = "run"
    PATH_CHANGE = "path_change"
    ALERT = "alert"


@attrs.frozen
class AlertChange:
    """An alert that fired or resolved, and the run that made it so."""

    kind: AlertKind
    state: str  # "fired" or "resolved"
    run: Run


@attrs.frozen
class MonitorEvent:
    """One event of one monitor; ``key`` is stable across replicas and retries."""

    id: int
    kind: str
    at: float
    monitor_id: str
    monitor_name: str
    value: Run | PathChange | AlertChange

    @property
    def key(self) -> str:
        """The event's id outside this process (webhook-id): monitor and number."""
        return f"{self.monitor_id}.{self.id}"


MonitorSubscriber = Callable[[MonitorEvent], None]


@attrs.define(eq=False)
class MonitorChannel:
    """Numbered events of one monitor, the last ``keep`` of them kept for resuming."""

    keep: int = 256
    _next_id: int = 1
    _events: deque[MonitorEvent] = attrs.field(init=False)
    _subscribers: list[MonitorSubscriber] = attrs.field(factory=list)
    _enders: dict[int, Callable[[], None]] = attrs.field(factory=dict)  # by id of subscriber

    def __attrs_post_init__(self) -> None:
        self._events = deque(maxlen=self.keep)

    @property
    def subscribers(self) -> int:
        """How many subscribers follow the monitor now."""
        return len(self._subscribers)

    @property
    def last_id(self) -> int:
        """The id of the latest event (0 before the first)."""
        return self._next_id - 1

    def publish(
        self,
        kind: str,
        at: float,
        monitor_id: str,
        name: str,
        value: Run | PathChange | AlertChange,
    ) -> MonitorEvent:
        """Number, keep and send one event."""
        event = MonitorEvent(self._next_id, kind, at, monitor_id, name, value)
        self._next_id += 1
        self._events.append(event)
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:
                log.failure("monitor subscriber failed; unsubscribing it")
                self._unsubscribe(subscriber)
        return event

    def replay(self, after: int | None) -> list[MonitorEvent]:
        """The events kept after id ``after`` (all those kept when None)."""
        floor = 0 if after is None else after
        return [e for e in self._events if e.id > floor]

    def subscribe(
        self,
        subscriber: MonitorSubscriber,
        after: int | None = None,
        ended: Callable[[], None] | None = None,
    ) -> Callable[[], None]:
        """Send the kept events after ``after``, then follow; returns the unsubscribe call.

        ``ended`` is called if the channel closes (the monitor was deleted)."""
        for event in self.replay(after):
            subscriber(event)
        self._subscribers.append(subscriber)
        if ended is not None:
            self._enders[id(subscriber)] = ended
        return lambda: self._unsubscribe(subscriber)

    def close(self) -> None:
        """Let every subscriber go, telling those who asked (the monitor was deleted)."""
        enders = list(self._enders.values())
        self._subscribers.clear()
        self._enders.clear()
        for ended in enders:
            ended()

    def _unsubscribe(self, subscriber: MonitorSubscriber) -> None:
        self._enders.pop(id(subscriber), None)
        if subscriber in self._subscribers:
            self._subscribers.remove(subscriber)
