"""What a monitor has seen, as kept in Redis for its next runner: compact JSON, decoded exactly.

A storage format, not a resource: it carries the candidate path being confirmed and the
event numbering, which the API does not show. ``v`` numbers the format; a runner that
cannot read a kept memory starts the monitor afresh.
"""

from __future__ import annotations

import json
from typing import Any

from mtrd.monitors.model import AlertKind, Run, RunResult
from mtrd.monitors.path import Path, PathChange, PathState, diff
from mtrd.monitors.service import MonitorMemory, PathChangeRecord

FORMAT = 1


def _path(path: Path | None) -> Any:
    if path is None:
        return None
    hops = [None if hop is None else sorted(hop) for hop in path.hops]
    return {"first": path.first_ttl, "hops": hops, "reached": path.reached}


def _path_of(d: Any) -> Path | None:
    if d is None:
        return None
    hops = tuple(None if hop is None else frozenset(hop) for hop in d["hops"])
    return Path(int(d["first"]), hops, bool(d["reached"]))


def _run(run: Run) -> dict[str, Any]:
    return {
        "trace": run.trace_id,
        "due": run.scheduled_at,
        "start": run.started_at,
        "result": None if run.result is None else run.result.value,
        "end": run.finished_at,
        "loss": run.loss_pct,
        "rtt": run.rtt_ms,
        "path": run.path_id,
    }


def _run_of(d: dict[str, Any]) -> Run:
    return Run(
        trace_id=d["trace"],
        scheduled_at=d["due"],
        started_at=d["start"],
        result=None if d["result"] is None else RunResult(d["result"]),
        finished_at=d["end"],
        loss_pct=d["loss"],
        rtt_ms=d["rtt"],
        path_id=d["path"],
    )


def encode_memory(memory: MonitorMemory) -> bytes:
    """The memory as compact JSON."""
    state = memory.path
    document = {
        "v": FORMAT,
        "current": _path(state.current),
        "candidate": _path(state.candidate),
        "candidate_runs": state.candidate_runs,
        "runs": [_run(run) for run in memory.runs],
        # A change's diff is recomputed from its two paths: it is a function of them.
        "history": [
            {"at": entry.at, "old": _path(entry.change.old), "new": _path(entry.change.new)}
            for entry in memory.history
        ],
        "alerts": [[kind.value, since] for kind, since in memory.open_alerts],
        "results": [[result.value, count] for result, count in memory.runs_by_result],
        "changes": memory.path_changes,
        "next_event": memory.next_event_id,
        "spec_version": memory.spec_version,
    }
    return json.dumps(document, separators=(",", ":")).encode()


def decode_memory(data: bytes) -> MonitorMemory:
    """The memory kept as ``data``; raises ValueError on another format."""
    d = json.loads(data)
    if d.get("v") != FORMAT:
        raise ValueError(f"monitor memory format {d.get('v')!r}, not {FORMAT}")
    history = []
    for entry in d["history"]:
        old, new = _path_of(entry["old"]), _path_of(entry["new"])
        assert old is not None
        assert new is not None
        history.append(PathChangeRecord(entry["at"], PathChange(old, new, diff(old, new))))
    return MonitorMemory(
        path=PathState(_path_of(d["current"]), _path_of(d["candidate"]), d["candidate_runs"]),
        runs=tuple(_run_of(run) for run in d["runs"]),
        history=tuple(history),
        open_alerts=tuple((AlertKind(kind), since) for kind, since in d["alerts"]),
        runs_by_result=tuple((RunResult(result), count) for result, count in d["results"]),
        path_changes=d["changes"],
        next_event_id=d["next_event"],
        spec_version=d["spec_version"],
    )
