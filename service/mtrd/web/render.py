"""Trace values as JSON-ready dicts, the shapes documented in openapi.yaml."""

from __future__ import annotations

import functools
import json
import time
from datetime import UTC, datetime
from typing import Any

from mtrd.annotations.model import NOTHING, Annotation, DatabaseInfo, Sources
from mtrd.engine.probe import MplsLabel, Protocol
from mtrd.tracing.model import (
    FlowHop,
    FlowPath,
    Hop,
    HopEnd,
    JitterStats,
    MultipathResult,
    PathLink,
    Responder,
    RttStats,
    Stop,
    StopReason,
    Trace,
    TraceError,
    TraceMode,
    TraceRequest,
    TraceStatus,
    TraceTarget,
)
from mtrd.tracing.stats import forward_loss
from mtrd.tracing.wait import WaitRule

# One encoder for every render: json.dumps builds a new one per call when given options.
# What it encodes is always a fresh tree of dicts and lists, never a cycle: no need to
# track every container on the way (a share of a render, bench/results/peers.md).
_COMPACT = json.JSONEncoder(separators=(",", ":"), check_circular=False)


def rfc3339(seconds: float | None) -> str | None:
    """An epoch time as RFC 3339 in UTC with milliseconds, e.g. 2026-11-22T21:00:00.123Z."""
    if seconds is None:
        return None
    whole = int(seconds)
    millis = round((seconds - whole) * 1000)
    if millis == 1000:
        whole, millis = whole + 1, 0
    return f"{_second(whole)}.{millis:03d}Z"


@functools.lru_cache(maxsize=256)
def _second(whole: int) -> str:
    # Traces stored together share their seconds: format each second once.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))


def from_rfc3339(text: str | None) -> float | None:
    """The inverse of :func:`rfc3339`."""
    if text is None:
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


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
        "mode": request.mode.value,
        "confidence": request.confidence,
        "wait": {"here": request.wait.here, "near": request.wait.near},
    }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def responder_json(r: Responder) -> dict[str, Any]:
    """One responder: its address, replies, MPLS labels, name and network (null: unknown)."""
    a = r.annotation or NOTHING
    data: dict[str, Any] = {
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
        "hostname": a.hostname,
        "asn": a.asn,
        "as_name": a.as_name,
        "prefix": a.prefix,
        "country": a.country,
    }
    if a.verified is not None:
        data["verified"] = a.verified
    return data


def hop_json(hop: Hop, forward_loss_pct: float | None = None) -> dict[str, Any]:
    """One hop with its responders and figures; ``forward_loss_pct`` depends on the
    hops after it, so only a whole trace knows it (a hop event says null)."""
    return {
        "ttl": hop.ttl,
        "responders": [responder_json(r) for r in hop.responders],
        "sent": hop.sent,
        "received": hop.received,
        "lost": hop.lost,
        "loss_pct": round(hop.loss_pct, 1),
        "forward_loss_pct": None if forward_loss_pct is None else round(forward_loss_pct, 1),
        "late": hop.late,
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


def multipath_json(result: MultipathResult) -> dict[str, Any]:
    """What a multipath trace learned beyond its hops: links, flows, why it stopped."""
    return {
        "confidence": result.confidence,
        "stop_reason": result.stop_reason,
        "probes_sent": result.probes_sent,
        "full_mda_hops": list(result.full_mda_hops),
        "links": [{"ttl": k.ttl, "from": k.source, "to": k.to} for k in result.links],
        "flows": [
            {
                "flow": f.flow,
                "local_port": f.local_port,
                "sent": len(f.hops),
                "lost": f.lost,
                "loss_pct": round(f.loss_pct, 1),
                "hops": [
                    {"ttl": h.ttl, "address": h.address, "rtt_ms": _ms(h.rtt_ms)} for h in f.hops
                ],
            }
            for f in result.flows
        ],
    }


def multipath_from_json(data: dict[str, Any] | None) -> MultipathResult | None:
    """The inverse of :func:`multipath_json`."""
    if data is None:
        return None
    return MultipathResult(
        confidence=data["confidence"],
        links=tuple(PathLink(k["ttl"], k["from"], k["to"]) for k in data["links"]),
        flows=tuple(
            FlowPath(
                f["flow"],
                f["local_port"],
                tuple(FlowHop(h["ttl"], h["address"], h["rtt_ms"]) for h in f["hops"]),
            )
            for f in data["flows"]
        ),
        probes_sent=data["probes_sent"],
        stop_reason=data["stop_reason"],
        full_mda_hops=tuple(data["full_mda_hops"]),
    )


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
        "vantage": trace.vantage,
        "replica": trace.replica,
        "created_at": rfc3339(trace.created_at),
        "started_at": rfc3339(trace.started_at),
        "finished_at": rfc3339(trace.finished_at),
        "expires_at": rfc3339(trace.expires_at),
        "destination_reached": trace.destination_reached,
        **_stop_json(trace),
        "hops": [
            hop_json(hop, forward)
            for hop, forward in zip(trace.hops, forward_loss(trace.hops), strict=True)
        ],
        "error": None
        if trace.error is None
        else {"type": trace.error.type, "message": trace.error.message},
        "annotations": {
            "asn_db": _database_json(trace.annotations.asn_db),
            "geo_db": _database_json(trace.annotations.geo_db),
        },
        "links": links(trace.id),
        "multipath": None if trace.multipath is None else multipath_json(trace.multipath),
    }


def _database_json(info: DatabaseInfo | None) -> dict[str, Any] | None:
    return None if info is None else {"type": info.type, "built_at": rfc3339(info.built_at)}


def _database_from(data: dict[str, Any] | None) -> DatabaseInfo | None:
    if data is None:
        return None
    built = from_rfc3339(data["built_at"])
    return DatabaseInfo(data["type"], 0.0 if built is None else built)


def _annotation_from(r: dict[str, Any]) -> Annotation | None:
    annotation = Annotation(
        hostname=r.get("hostname"),
        verified=r.get("verified"),
        asn=r.get("asn"),
        as_name=r.get("as_name"),
        prefix=r.get("prefix"),
        country=r.get("country"),
    )
    return None if annotation.empty else annotation


def _stop_json(trace: Trace) -> dict[str, Any]:
    stop = trace.stop_reason
    return {
        "stop_reason": None if stop is None else stop.reason.value,
        "unreachable_kind": None if stop is None else stop.unreachable,
    }


def summary_json(trace: Trace) -> dict[str, Any]:
    """A trace in a listing."""
    return {
        "id": trace.id,
        "status": trace.status.value,
        "target": _target_json(trace),
        "vantage": trace.vantage,
        "replica": trace.replica,
        "created_at": rfc3339(trace.created_at),
        "finished_at": rfc3339(trace.finished_at),
        "destination_reached": trace.destination_reached,
        **_stop_json(trace),
        "links": links(trace.id),
    }


def status_json(trace_id: str, status: TraceStatus) -> dict[str, Any]:
    """The data of a ``status`` event."""
    return {"id": trace_id, "status": status.value}


def trace_bytes(trace: Trace) -> bytes:
    """The trace resource as compact JSON."""
    return _COMPACT.encode(trace_json(trace)).encode()


def _optional(kind: type[Any], value: Any) -> Any:
    return None if value is None else kind(value)


def hop_from_json(data: dict[str, Any]) -> Hop:
    """The inverse of :func:`hop_json` (times in milliseconds, as rendered)."""
    rtt, jitter = data["rtt_ms"], data["jitter_ms"]
    return Hop(
        ttl=data["ttl"],
        responders=tuple(
            Responder(
                address=r["address"],
                replies=r["replies"],
                mpls=tuple(
                    MplsLabel(m["label"], m["traffic_class"], m["bottom_of_stack"], m["ttl"])
                    for m in r["mpls"]
                ),
                annotation=_annotation_from(r),
            )
            for r in data["responders"]
        ),
        sent=data["sent"],
        received=data["received"],
        lost=data["lost"],
        rtt_ms=RttStats(rtt["last"], rtt["best"], rtt["avg"], rtt["worst"], rtt["stdev"]),
        jitter_ms=JitterStats(jitter["last"], jitter["avg"], jitter["max"]),
        end=_optional(HopEnd, data["end"]),
        late=data.get("late", 0),
    )


def trace_from_json(document: bytes | dict[str, Any]) -> Trace:
    """The inverse of :func:`trace_json`: a trace resource back into a :class:`Trace`."""
    data = json.loads(document) if isinstance(document, bytes) else document
    request, target, error = data["request"], data["target"], data["error"]
    created = from_rfc3339(data["created_at"])
    assert created is not None
    return Trace(
        id=data["id"],
        status=TraceStatus(data["status"]),
        request=TraceRequest(
            target=request["target"],
            ip_version=request["ip_version"],
            protocol=Protocol(request["protocol"]),
            port=request["port"],
            first_ttl=request["first_ttl"],
            max_ttl=request["max_ttl"],
            probes=request["probes"],
            interval=request["interval"],
            timeout=request["timeout"],
            size=request["size"],
            tos=request["tos"],
            mode=TraceMode(request.get("mode", "classic")),
            confidence=request.get("confidence", 95),
            wait=_wait_from_json(request.get("wait")),
        ),
        target=TraceTarget(target["input"], target["address"], target["ip_version"]),
        created_at=created,
        source=data["source"],
        started_at=from_rfc3339(data["started_at"]),
        finished_at=from_rfc3339(data["finished_at"]),
        expires_at=from_rfc3339(data["expires_at"]),
        destination_reached=data["destination_reached"],
        hops=tuple(hop_from_json(h) for h in data["hops"]),
        error=None if error is None else TraceError(error["type"], error["message"]),
        # A server older than these fields leaves them out.
        vantage=data.get("vantage", ""),
        replica=data.get("replica"),
        multipath=multipath_from_json(data.get("multipath")),
        annotations=Sources(
            _database_from(data.get("annotations", {}).get("asn_db")),
            _database_from(data.get("annotations", {}).get("geo_db")),
        ),
        stop=_stop_from_json(data),
    )


def _wait_from_json(data: dict[str, Any] | None) -> WaitRule:
    return WaitRule() if data is None else WaitRule(data["here"], data["near"])


def _stop_from_json(data: dict[str, Any]) -> Stop | None:
    reason = data.get("stop_reason")
    if reason is None:
        return None
    return Stop(StopReason(reason), data.get("unreachable_kind"))
