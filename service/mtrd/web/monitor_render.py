"""Monitors and their events as JSON-ready dicts, the shapes documented in openapi.yaml."""

from __future__ import annotations

import json
from typing import Any

from mtrd.monitors.events import AlertChange, MonitorEvent
from mtrd.monitors.model import Delivery, Run
from mtrd.monitors.path import Path, PathChange
from mtrd.monitors.service import MonitorRecord
from mtrd.tracing.model import Trace
from mtrd.web.render import request_json, rfc3339, trace_json


def monitor_links(monitor_id: str) -> dict[str, str]:
    """Where a monitor and its event stream live."""
    return {"self": f"/monitors/{monitor_id}", "events": f"/monitors/{monitor_id}/events"}


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def run_json(run: Run) -> dict[str, Any]:
    """One run of a monitor, with a link to its trace."""
    return {
        "trace_id": run.trace_id,
        "result": None if run.result is None else run.result.value,
        "scheduled_at": rfc3339(run.scheduled_at),
        "started_at": rfc3339(run.started_at),
        "finished_at": rfc3339(run.finished_at),
        "loss_pct": _round(run.loss_pct, 1),
        "rtt_ms": _round(run.rtt_ms),
        "path_id": run.path_id,
        "links": None if run.trace_id is None else {"trace": f"/traces/{run.trace_id}"},
    }


def path_json(path: Path) -> dict[str, Any]:
    """A path: its id and each TTL's responders (null where the TTL was never heard)."""
    return {
        "path_id": path.path_id,
        "reached": path.reached,
        "hops": [
            {"ttl": path.first_ttl + i, "responders": None if hop is None else sorted(hop)}
            for i, hop in enumerate(path.hops)
        ],
    }


def change_json(change: PathChange) -> dict[str, Any]:
    """A path change: from which path to which, and what changed at each TTL."""
    return {
        "from_path_id": change.old.path_id,
        "to_path_id": change.new.path_id,
        "diff": [
            {"ttl": c.ttl, "left": list(c.left), "came": list(c.came)} for c in change.changes
        ],
        "path": path_json(change.new),
    }


def alert_json(alert: AlertChange) -> dict[str, Any]:
    """An alert that fired or resolved, with the run that made it so."""
    return {"alert": alert.kind.value, "state": alert.state, "run": run_json(alert.run)}


def event_data(event: MonitorEvent) -> dict[str, Any]:
    """The JSON of one monitor event (SSE ``data`` and webhook ``data``)."""
    value = event.value
    data: dict[str, Any]
    if isinstance(value, Run):
        data = {"run": run_json(value)}
    elif isinstance(value, PathChange):
        data = {"change": change_json(value)}
    else:
        assert isinstance(value, AlertChange)
        data = alert_json(value)
    return {"monitor_id": event.monitor_id, "monitor": event.monitor_name} | data


def webhook_body(event: MonitorEvent) -> bytes:
    """A webhook delivery's JSON body: type, timestamp and the event's data."""
    document = {
        "type": f"monitor.{event.kind}",
        "timestamp": rfc3339(event.at),
        "data": event_data(event),
    }
    return json.dumps(document, separators=(",", ":")).encode()


def trace_webhook_body(trace: Trace) -> bytes:
    """The webhook of a trace that finished: its final resource."""
    document = {
        "type": "trace.finished",
        "timestamp": rfc3339(trace.finished_at),
        "data": trace_json(trace),
    }
    return json.dumps(document, separators=(",", ":")).encode()


def encode_event(event: MonitorEvent) -> bytes:
    """A monitor event in the text/event-stream format."""
    text = json.dumps(event_data(event), separators=(",", ":"))
    return f"id: {event.id}\nevent: {event.kind}\ndata: {text}\n\n".encode()


def monitor_json(record: MonitorRecord) -> dict[str, Any]:
    """The monitor resource: settings, current path, last runs, open alerts, history."""
    spec = record.spec
    current = record.path.current
    return {
        "id": record.id,
        "name": spec.name,
        "source": record.source.value,
        "owner": record.owner,
        "request": request_json(spec.request),
        "vantage": spec.vantage,
        "every": spec.every,
        "jitter": spec.start_jitter,
        "confirm_runs": spec.confirm_runs,
        "paused": spec.paused,
        "alerts": {
            "loss_pct": spec.alerts.loss_pct,
            "rtt_ms": spec.alerts.rtt_ms,
            "unreachable": spec.alerts.unreachable,
            "path_change": spec.alerts.path_change,
        },
        # The secret is never shown: only whether one is set.
        "webhook": None
        if spec.webhook is None
        else {"url": spec.webhook.url, "every_run": spec.webhook.every_run},
        "created_at": rfc3339(record.created_at),
        "next_run_at": rfc3339(record.due),
        "path": None if current is None else path_json(current),
        "runs": [run_json(run) for run in reversed(record.runs)],
        "alerts_open": [
            {"alert": kind.value, "since": rfc3339(since)}
            for kind, since in sorted(record.open_alerts.items())
        ],
        "path_changes": [
            {"at": rfc3339(entry.at), "change": change_json(entry.change)}
            for entry in reversed(record.history)
        ],
        "deliveries": [delivery_json(d) for d in reversed(record.deliveries)],
        "links": monitor_links(record.id),
    }


def monitor_bytes(record: MonitorRecord) -> bytes:
    """The monitor resource as compact JSON (what Redis mode publishes for other replicas)."""
    return json.dumps(monitor_json(record), separators=(",", ":")).encode()


def delivery_json(delivery: Delivery) -> dict[str, Any]:
    """One webhook delivery's state, as monitors and traces show it."""
    return {
        "event_id": delivery.event_id,
        "type": delivery.kind,
        "status": delivery.status.value,
        "attempts": delivery.attempts,
        "at": rfc3339(delivery.at),
        "detail": delivery.detail,
    }


def trace_hook_json(url: str, deliveries: list[Delivery]) -> dict[str, Any]:
    """A trace's webhook as its resource shows it: the URL (never the secret) and the
    deliveries' states, newest first."""
    return {"url": url, "deliveries": [delivery_json(d) for d in reversed(deliveries)]}
