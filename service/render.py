"""Trace values as JSON-ready dicts, the shapes documented in openapi.yaml."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from service.trace import Hop, Trace, TraceRequest, TraceStatus


def rfc3339(seconds: float | None) -> str | None:
    """An epoch time as RFC 3339 in UTC with milliseconds, e.g. 2026-11-22T21:00:00.123Z."""
    if seconds is None:
        return None
    moment = datetime.fromtimestamp(seconds, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def links(trace_id: str) -> dict[str, str]:
    """Where a trace and its event stream live."""
    return {"self": f"/traces/{trace_id}", "events": f"/traces/{trace_id}/events"}


def request_json(request: TraceRequest) -> dict[str, Any]:
    """The normalised request, defaults filled in."""
    return {
        "target": request.target,
        "ip_version": request.ip_version,
        "protocol": request.protocol.value,
        "port": request.port,
        "first_ttl": request.first_ttl,
        "max_ttl": request.max_ttl,
        "probes": request.probes,
        "interval": request.interval,
        "timeout": request.timeout,
        "size": request.size,
        "tos": request.tos,
    }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def hop_json(hop: Hop) -> dict[str, Any]:
    """One hop with its responders and figures."""
    return {
        "ttl": hop.ttl,
        "responders": [
            {
                "address": r.address,
                "replies": r.replies,
                "mpls": [
                    {
                        "label": m.label,
                        "traffic_class": m.traffic_class,
                        "bottom_of_stack": m.bottom_of_stack,
                        "ttl": m.ttl,
                    }
                    for m in r.mpls
                ],
            }
            for r in hop.responders
        ],
        "sent": hop.sent,
        "received": hop.received,
        "lost": hop.lost,
        "loss_pct": round(hop.loss_pct, 1),
        "rtt_ms": {
            "last": _ms(hop.rtt_ms.last),
            "best": _ms(hop.rtt_ms.best),
            "avg": _ms(hop.rtt_ms.avg),
            "worst": _ms(hop.rtt_ms.worst),
            "stdev": _ms(hop.rtt_ms.stdev),
        },
        "jitter_ms": {
            "last": _ms(hop.jitter_ms.last),
            "avg": _ms(hop.jitter_ms.avg),
            "max": _ms(hop.jitter_ms.max),
        },
        "end": None if hop.end is None else hop.end.value,
    }


def _target_json(trace: Trace) -> dict[str, Any]:
    return {
        "input": trace.target.input,
        "address": trace.target.address,
        "ip_version": trace.target.ip_version,
    }


def trace_json(trace: Trace) -> dict[str, Any]:
    """The trace resource."""
    return {
        "id": trace.id,
        "status": trace.status.value,
        "request": request_json(trace.request),
        "target": _target_json(trace),
        "source": trace.source,
        "created_at": rfc3339(trace.created_at),
        "started_at": rfc3339(trace.started_at),
        "finished_at": rfc3339(trace.finished_at),
        "expires_at": rfc3339(trace.expires_at),
        "destination_reached": trace.destination_reached,
        "hops": [hop_json(hop) for hop in trace.hops],
        "error": None
        if trace.error is None
        else {"type": trace.error.type, "message": trace.error.message},
        "links": links(trace.id),
    }


def summary_json(trace: Trace) -> dict[str, Any]:
    """A trace in a listing."""
    return {
        "id": trace.id,
        "status": trace.status.value,
        "target": _target_json(trace),
        "created_at": rfc3339(trace.created_at),
        "finished_at": rfc3339(trace.finished_at),
        "destination_reached": trace.destination_reached,
        "links": links(trace.id),
    }


def status_json(trace_id: str, status: TraceStatus) -> dict[str, Any]:
    """The data of a ``status`` event."""
    return {"id": trace_id, "status": status.value}
