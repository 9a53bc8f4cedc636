"""How trace values are stored in Redis: compact JSON with a format number, decoded exactly.

This is a storage format, not the HTTP rendering (``mtrd.web.render``): it keeps the
values as the model has them (times as epoch seconds, enums by value, ``None`` as null),
leaves out nothing, and round-trips every value to an equal one. Replicas of different
versions may share one Redis during a rolling update, so every document carries
``"f": FORMAT`` and a decoder refuses formats it does not know rather than guess.
"""

from __future__ import annotations

import json
from typing import Any, Final

from mtrd.annotations.model import Annotation, DatabaseInfo, Sources
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
from mtrd.tracing.wait import WaitRule

FORMAT: Final = 3
# Format 1 had no vantage and replica in the value (they were fields of the hash only);
# format 2 had no annotations (a responder's name and network, the databases'). Keys added
# within format 2 ("w" the wait rule, "stop", a hop's "l" late count) are optional: a
# document without them reads as the default (older writers).
READABLE: Final = (1, 2, 3)


class UnknownFormat(ValueError):
    """A stored document this version of mtrd cannot read."""


def encode_trace(trace: Trace) -> bytes:
    """A trace as stored bytes."""
    return _dump(_trace(trace))


def decode_trace(data: bytes) -> Trace:
    """The trace stored as ``data``."""
    return _trace_from(_load(data))


def encode_event(kind: str, value: TraceStatus | Hop | Trace) -> bytes:
    """The value of one event (status, hop or done) as stored bytes."""
    if kind == "status" and isinstance(value, TraceStatus):
        return _dump({"s": value.value})
    if kind == "hop" and isinstance(value, Hop):
        return _dump(_hop(value))
    if kind == "done" and isinstance(value, Trace):
        return _dump(_trace(value))
    raise ValueError(f"an event of kind {kind!r} cannot carry a {type(value).__name__}")


def decode_event(kind: str, data: bytes) -> TraceStatus | Hop | Trace:
    """The value of an event of ``kind`` stored as ``data``."""
    document = _load(data)
    if kind == "status":
        return TraceStatus(document["s"])
    if kind == "hop":
        return _hop_from(document)
    if kind == "done":
        return _trace_from(document)
    raise UnknownFormat(f"unknown event kind {kind!r}")


def _dump(document: dict[str, Any]) -> bytes:
    document["f"] = FORMAT
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()


def _load(data: bytes) -> dict[str, Any]:
    document = json.loads(data)
    if not isinstance(document, dict) or document.get("f") not in READABLE:
        raise UnknownFormat("a stored trace document of an unknown format")
    return document


def _trace(trace: Trace) -> dict[str, Any]:
    request = trace.request
    document = _classic(trace)
    # Multipath keys only where they apply: a classic trace's document is as before.
    if request.mode is not TraceMode.CLASSIC:
        document["mode"] = [request.mode.value, request.confidence]
    if trace.multipath is not None:
        document["mp"] = _multipath(trace.multipath)
    return document


def _multipath(result: MultipathResult) -> dict[str, Any]:
    return {
        "c": result.confidence,
        "links": [[k.ttl, k.source, k.to] for k in result.links],
        "flows": [
            [f.flow, f.local_port, [[h.ttl, h.address, h.rtt_ms] for h in f.hops]]
            for f in result.flows
        ],
        "n": result.probes_sent,
        "stop": result.stop_reason,
        "full": list(result.full_mda_hops),
    }


def _multipath_from(d: dict[str, Any] | None) -> MultipathResult | None:
    if d is None:
        return None
    return MultipathResult(
        confidence=d["c"],
        links=tuple(PathLink(*k) for k in d["links"]),
        flows=tuple(
            FlowPath(flow, port, tuple(FlowHop(*h) for h in hops))
            for flow, port, hops in d["flows"]
        ),
        probes_sent=d["n"],
        stop_reason=d["stop"],
        full_mda_hops=tuple(d["full"]),
    )


def _classic(trace: Trace) -> dict[str, Any]:
    request = trace.request
    return {
        "id": trace.id,
        "status": trace.status.value,
        "request": [
            request.target, request.ip_version, request.protocol.value, request.port,
            request.first_ttl, request.max_ttl, request.probes, request.interval,
            request.timeout, request.size, request.tos,
        ],
        "target": [trace.target.input, trace.target.address, trace.target.ip_version],
        "times": [trace.created_at, trace.started_at, trace.finished_at, trace.expires_at],
        "source": trace.source,
        "reached": trace.destination_reached,
        "hops": [_hop(hop) for hop in trace.hops],
        "error": None if trace.error is None else [trace.error.type, trace.error.message],
        "at": [trace.vantage, trace.replica],
        "ann": [_database(trace.annotations.asn_db), _database(trace.annotations.geo_db)],
        "w": [request.wait.here, request.wait.near],
        "stop": None if trace.stop is None else [trace.stop.reason.value, trace.stop.unreachable],
        # The owning tenant, only when there is one: replicas that do not know the key
        # read the value all the same (and a trace without an owner is shown to no tenant
        # but admins once auth is on).
        **({} if trace.owner is None else {"own": trace.owner}),
    }  # fmt: skip


def _database(info: DatabaseInfo | None) -> list[Any] | None:
    return None if info is None else [info.type, info.built_at]


def _database_from(d: list[Any] | None) -> DatabaseInfo | None:
    return None if d is None else DatabaseInfo(d[0], float(d[1]))


def _responder(r: Responder) -> list[Any]:
    mpls = [[m.label, m.traffic_class, m.bottom_of_stack, m.ttl] for m in r.mpls]
    a = r.annotation
    if a is None:
        return [r.address, r.replies, mpls]
    return [r.address, r.replies, mpls,
            [a.hostname, a.verified, a.asn, a.as_name, a.prefix, a.country]]  # fmt: skip


def _responder_from(d: list[Any]) -> Responder:
    annotation = Annotation(*d[3]) if len(d) > 3 else None
    return Responder(d[0], d[1], tuple(MplsLabel(*m) for m in d[2]), annotation)


def _trace_from(d: dict[str, Any]) -> Trace:
    (target, ip_version, protocol, port, first_ttl, max_ttl, probes, interval, timeout, size,
     tos) = d["request"]  # fmt: skip
    created_at, started_at, finished_at, expires_at = d["times"]
    error = d["error"]
    vantage, replica = d.get("at", ("", None))
    mode, confidence = d.get("mode", (TraceMode.CLASSIC.value, 95))
    asn_db, geo_db = d.get("ann", (None, None))
    here, near = d.get("w", (WaitRule().here, WaitRule().near))
    stop = d.get("stop")
    return Trace(
        id=d["id"],
        status=TraceStatus(d["status"]),
        request=TraceRequest(
            target=target,
            ip_version=ip_version,
            protocol=Protocol(protocol),
            port=port,
            first_ttl=first_ttl,
            max_ttl=max_ttl,
            probes=probes,
            interval=float(interval),
            timeout=timeout,
            size=size,
            tos=tos,
            mode=TraceMode(mode),
            confidence=confidence,
            wait=WaitRule(float(here), float(near)),
        ),
        target=TraceTarget(*d["target"]),
        created_at=float(created_at),
        source=d["source"],
        started_at=_float(started_at),
        finished_at=_float(finished_at),
        expires_at=_float(expires_at),
        destination_reached=d["reached"],
        hops=tuple(_hop_from(hop) for hop in d["hops"]),
        error=None if error is None else TraceError(*error),
        vantage=vantage,
        replica=replica,
        multipath=_multipath_from(d.get("mp")),
        annotations=Sources(_database_from(asn_db), _database_from(geo_db)),
        stop=None if stop is None else Stop(StopReason(stop[0]), stop[1]),
        owner=d.get("own"),
    )


def _hop(hop: Hop) -> dict[str, Any]:
    rtt, jitter = hop.rtt_ms, hop.jitter_ms
    return {
        "ttl": hop.ttl,
        "r": [_responder(r) for r in hop.responders],
        "n": [hop.sent, hop.received, hop.lost],
        "rtt": [rtt.last, rtt.best, rtt.avg, rtt.worst, rtt.stdev],
        "jit": [jitter.last, jitter.avg, jitter.max],
        "end": None if hop.end is None else hop.end.value,
        "l": hop.late,
    }  # fmt: skip


def _hop_from(d: dict[str, Any]) -> Hop:
    sent, received, lost = d["n"]
    return Hop(
        ttl=d["ttl"],
        responders=tuple(_responder_from(r) for r in d["r"]),
        sent=sent,
        received=received,
        lost=lost,
        rtt_ms=RttStats(*(_float(v) for v in d["rtt"])),
        jitter_ms=JitterStats(*(_float(v) for v in d["jit"])),
        end=None if d["end"] is None else HopEnd(d["end"]),
        late=d.get("l", 0),
    )


def _float(value: float | None) -> float | None:
    # JSON writes 2.0 as 2.0, but a float field given an int (1) must read back as 1.0.
    return None if value is None else float(value)
