"""A monitor as the service sees it: what it watches, how often, and what it alerts on.

Every value here is frozen; the monitor service keeps the latest of each in one holder
per monitor. Times are seconds since the epoch, read from the injected clock.
"""

from __future__ import annotations

import enum

import attrs

from mtrd.tracing.model import TraceRequest

DEFAULT_EVERY = 60.0
MIN_EVERY = 1.0
# A new path must be seen this many runs in a row before it replaces the current one:
# one run on another ECMP branch, or one odd reply, is not a path change.
DEFAULT_CONFIRM_RUNS = 2


class AlertKind(enum.StrEnum):
    """What an alert is about."""

    LOSS = "loss_pct"  # destination loss above the threshold, in percent
    RTT = "rtt_ms"  # destination average round-trip time above the threshold
    UNREACHABLE = "unreachable"  # the run did not reach the destination
    PATH_CHANGE = "path_change"  # the path changed (open until a run confirms the new one)


@attrs.frozen
class Alerts:
    """Which alerts a monitor raises; None or False leaves one off."""

    loss_pct: float | None = None
    rtt_ms: float | None = None
    unreachable: bool = False
    path_change: bool = False


@attrs.frozen
class WebhookTarget:
    """Where a monitor's (or a trace's) events are delivered, and the secret that signs them."""

    url: str
    secret: str = attrs.field(repr=False)
    every_run: bool = False


class MonitorSource(enum.StrEnum):
    """Who declared a monitor: the API (changeable) or the operator's file (read-only)."""

    API = "api"
    FILE = "file"


@attrs.frozen
class MonitorSpec:
    """A monitor's settings: everything ``POST`` and ``PATCH`` set."""

    name: str
    request: TraceRequest
    every: float = DEFAULT_EVERY
    jitter: float | None = None  # seconds of random delay before the first run (None: every)
    alerts: Alerts = Alerts()
    webhook: WebhookTarget | None = None
    paused: bool = False
    vantage: str | None = None
    confirm_runs: int = DEFAULT_CONFIRM_RUNS

    def __attrs_post_init__(self) -> None:
        if self.every < MIN_EVERY:
            raise ValueError(f"every must be at least {MIN_EVERY:g} s")
        if self.confirm_runs < 1:
            raise ValueError("confirm_runs must be at least 1")

    @property
    def start_jitter(self) -> float:
        """The spread of the first run's delay: by default the whole period."""
        return self.every if self.jitter is None else self.jitter


class RunResult(enum.StrEnum):
    """How one run of a monitor went, as the runs-by-result metric counts it."""

    REACHED = "reached"  # the trace completed and reached the destination
    UNREACHED = "unreached"  # it completed without reaching it
    FAILED = "failed"  # the trace failed or was cancelled
    REFUSED = "refused"  # the trace could not be started (queue or store full)


@attrs.frozen
class Run:
    """One run of a monitor: the trace it started and what came of it."""

    trace_id: str | None
    scheduled_at: float
    started_at: float
    result: RunResult | None = None  # None while the trace runs
    finished_at: float | None = None
    loss_pct: float | None = None  # at the destination
    rtt_ms: float | None = None  # average at the destination
    path_id: str | None = None

    @property
    def lateness(self) -> float:
        """Seconds between when the run was due and when it started."""
        return self.started_at - self.scheduled_at


class DeliveryStatus(enum.StrEnum):
    """Where a webhook delivery is."""

    PENDING = "pending"  # queued, or waiting for a retry
    DELIVERED = "delivered"  # the receiver answered 2xx
    FAILED = "failed"  # retries ran out, or the receiver refused it for good
    DROPPED = "dropped"  # the delivery queue was full
    REFUSED = "refused"  # the webhook policy refused the address the URL resolved to


@attrs.frozen
class Delivery:
    """The state of one event's webhook delivery."""

    event_id: str
    kind: str
    status: DeliveryStatus
    attempts: int
    at: float
    detail: str | None = None  # the last HTTP status or error
