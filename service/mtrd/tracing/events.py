"""The live side of a trace: numbered events, subscribers, and resuming after an id.

A :class:`TraceChannel` numbers every change of one trace: ``status`` on every
state change, ``hop`` whenever a hop's figures change, ``done`` with the final
trace. It keeps no history: it remembers the id of each hop's and the status's
latest change, so a subscriber who resumes after id N (``Last-Event-ID``) is
sent the current state of everything that changed after N, in id order, and
then what follows. A late subscriber (no id) gets the whole current state.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
from twisted.logger import Logger

from mtrd.tracing.model import Hop, LiveHop, Trace, TraceStatus


@attrs.frozen
class Event:
    """One server-sent event: ``id``, ``kind`` (status, hop or done) and its value."""

    id: int
    kind: str
    value: TraceStatus | Hop | Trace


Subscriber = Callable[[Event], None]
log = Logger()


@attrs.define(eq=False)
class TraceChannel:
    """Numbered changes of one trace and the subscribers who follow them."""

    status: TraceStatus
    _next_id: int = 1
    _status_id: int = 0
    _hops: dict[int, tuple[int, LiveHop]] = attrs.field(factory=dict)
    _final: tuple[int, Callable[[], Trace]] | None = None
    _subscribers: list[Subscriber] = attrs.field(factory=list)
    _late_hop: Callable[[LiveHop], None] | None = None

    def __attrs_post_init__(self) -> None:
        self._status_id = self._take_id()

    @property
    def subscribers(self) -> int:
        """How many subscribers follow the trace now."""
        return len(self._subscribers)

    @property
    def last_id(self) -> int:
        """The id of the latest event."""
        return self._next_id - 1

    def current_hops(self) -> tuple[Hop, ...]:
        """The latest figures of every hop published so far, by TTL (none once done)."""
        return tuple(hop.snapshot() for _, (_, hop) in sorted(self._hops.items()))

    def publish_status(self, status: TraceStatus) -> None:
        """The trace changed state."""
        self.status = status
        self._status_id = self._take_id()
        if self._subscribers:
            self._send(Event(self._status_id, "status", status))

    def publish_hop(self, hop: LiveHop) -> None:
        """A hop's figures changed.

        A live hop is kept as it is and turned into a value only when a subscriber,
        a replay or :meth:`current_hops` needs it: most traces are polled, not followed.
        Once the trace is done (a name that came late), the hop goes to ``late_hop``.
        """
        if self._final is not None:
            if self._late_hop is not None:
                self._late_hop(hop)
            return
        event_id = self._next_id
        self._next_id += 1
        self._hops[hop.ttl] = (event_id, hop)
        if self._subscribers:
            self._send(Event(event_id, "hop", hop.snapshot()))

    def publish_done(
        self,
        trace: Trace,
        later: Callable[[], Trace] | None = None,
        late_hop: Callable[[LiveHop], None] | None = None,
    ) -> None:
        """The trace ended: send the final resource, then let every subscriber go.

        ``later`` gives the final trace to subscribers who come after the end (so the
        channel need not hold it: the store keeps it in a compact form); ``late_hop``
        takes the hops published after the end (none are sent: the stream is over).
        """
        event = Event(self._take_id(), "done", trace)
        self._final = (event.id, later or (lambda: trace))
        self._late_hop = late_hop
        self._hops.clear()  # the final trace carries the hops; keep memory small
        self._send(event)
        self._subscribers.clear()

    def replay(self, after: int | None) -> list[Event]:
        """What a subscriber who saw everything up to ``after`` is missing, in id order."""
        floor = -1 if after is None else after
        if self._final is not None:
            final_id, final = self._final
            return [Event(final_id, "done", final())] if final_id > floor else []
        events = [Event(self._status_id, "status", self.status)]
        events += [Event(i, "hop", hop.snapshot()) for i, hop in self._hops.values()]
        return sorted((e for e in events if e.id > floor), key=lambda e: e.id)

    def subscribe(self, subscriber: Subscriber, after: int | None = None) -> Callable[[], None]:
        """Send what ``subscriber`` missed, then follow; returns the unsubscribe call.

        After the trace ended, the subscriber gets the final event and is not kept.
        """
        for event in self.replay(after):
            subscriber(event)
        if self._final is not None:
            return lambda: None
        self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

        return unsubscribe

    def _take_id(self) -> int:
        taken = self._next_id
        self._next_id += 1
        return taken

    def _send(self, event: Event) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:
                # One broken subscriber must not starve the others or the trace.
                log.failure("subscriber failed; unsubscribing it")
                if subscriber in self._subscribers:
                    self._subscribers.remove(subscriber)
