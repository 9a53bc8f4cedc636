"""Figure 8: many monitors every second: how late their runs start, what they cost.

``count`` monitors (every 1 s, the first run spread over 1 s of jitter), each run a short
icmp trace (1 probe per TTL, TTLs 1-8, interval 0) to a lab target, for ``seconds``. Every
5 s the bench reads ``GET /monitors`` (each monitor keeps its last 10 runs, so no run is
missed) and keeps each run's lateness (``started_at - scheduled_at``). A run is skipped if
a monitor's scheduled times have a gap of more than one period, or if it was refused.
CPU is mtrd's utime+stime over the window (the readings included), and its mtr-packet
workers' apart.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

from bench.common import (
    Connection,
    children_cpu_seconds,
    cpu_seconds,
    median,
    mtrd,
    percentile,
    rfc3339_seconds,
)

REQUEST = {"probes": 1, "interval": 0, "timeout": 1, "max_ttl": 8, "every": 1, "jitter": 1}
READ_EVERY = 5.0


async def create(connection: Connection, targets: list[str], count: int) -> None:
    for n in range(count):
        body = {"name": f"bench-{n}", "target": targets[n % len(targets)], **REQUEST}
        status, _, answer = await connection.request("POST", "/monitors", json.dumps(body).encode())
        if status != 201:
            raise RuntimeError(f"POST /monitors answered {status}: {answer[:200]!r}")


async def read_runs(connection: Connection, runs: dict[str, dict[str, Any]]) -> None:
    status, _, body = await connection.request("GET", "/monitors")
    if status != 200:
        raise RuntimeError(f"GET /monitors answered {status}")
    for monitor in json.loads(body)["monitors"]:
        for run in monitor["runs"]:
            key = f"{monitor['name']}@{run['scheduled_at']}"
            runs[key] = {"monitor": monitor["name"], **run}


async def measure(
    port: int, pid: int, targets: list[str], count: int, seconds: float
) -> dict[str, Any]:
    connection = await Connection.open(port)
    runs: dict[str, dict[str, Any]] = {}
    try:
        await create(connection, targets, count)
        await asyncio.sleep(2)  # past the jitter: every monitor runs
        cpu, workers = cpu_seconds(pid), children_cpu_seconds(pid)
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            await asyncio.sleep(READ_EVERY)
            await read_runs(connection, runs)
        wall = time.monotonic() - started
        cpu, workers = cpu_seconds(pid) - cpu, children_cpu_seconds(pid) - workers
        await read_runs(connection, runs)
    finally:
        connection.close()
    lateness = [
        rfc3339_seconds(r["started_at"]) - rfc3339_seconds(r["scheduled_at"]) for r in runs.values()
    ]
    late_seconds: dict[int, float] = {}
    for r in runs.values():
        second = int(rfc3339_seconds(r["scheduled_at"]))
        late = rfc3339_seconds(r["started_at"]) - rfc3339_seconds(r["scheduled_at"])
        late_seconds[second] = max(late_seconds.get(second, 0.0), late)
    by_monitor: dict[str, list[float]] = {}
    for run in runs.values():
        by_monitor.setdefault(run["monitor"], []).append(rfc3339_seconds(run["scheduled_at"]))
    gaps = 0
    for times in by_monitor.values():
        ordered = sorted(times)
        gaps += sum(round(b - a) - 1 for a, b in itertools.pairwise(ordered) if b - a > 1.5)
    results: dict[str, int] = {}
    for run in runs.values():
        results[str(run["result"])] = results.get(str(run["result"]), 0) + 1
    return {
        "monitors": count,
        "seconds": round(wall, 1),
        "request": REQUEST,
        "runs_seen": len(runs),
        "results": results,
        "skipped": gaps + results.get("refused", 0),
        "lateness_ms": {
            "p50": median(lateness) * 1000,
            "p99": percentile(lateness, 0.99) * 1000,
            "max": max(lateness, default=float("nan")) * 1000,
        },
        # The seconds (from the first) in which some run started over 250 ms late: spread
        # out, or every READ_EVERY seconds (the readings)?
        "late_seconds": [
            s - min(late_seconds) for s, late in sorted(late_seconds.items()) if late > 0.25
        ],
        "cpu_share": cpu / wall,
        "cpu_ms_per_run": 1000 * cpu / max(1, count * wall),
        "workers_cpu_share": workers / wall,
    }


def run(lab: Any, count: int, seconds: float) -> dict[str, Any]:
    targets = list(lab.targets(4)[:50])
    flags = ("--max-monitors", str(count), "--store-ttl", "30", "--max-running", "64")
    with mtrd(lab.netns_exec("c"), "monitors", *flags) as server:
        return asyncio.run(measure(server.port, server.pid, targets, count, seconds))
