"""Figure 2: traces per second end to end, and the server's CPU seconds per trace.

``count`` traces (icmp to lab targets 4 hops away, 3 probes per hop, interval 0 so each
round starts as soon as the previous one settled, timeout 1, max_ttl 8: 8 + 4 + 4 probes
per trace) are POSTed over ``connections`` keep-alive
connections as fast as mtrd answers; then GET /traces?status=queued|running is polled
until nothing is active. The rate is ``count`` over the span from the first trace's
``created_at`` to the last one's ``finished_at`` (the server's own clock, ms precision).
CPU is utime+stime of the mtrd process (mtr-packet children excluded) over the whole run.
The client's own CPU time is reported to show it is not the bottleneck.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from bench.common import (
    RESULTS,
    Connection,
    Profiler,
    Server,
    active_traces,
    all_traces,
    cpu_seconds,
    mtrd,
    rfc3339_seconds,
)

REQUEST = {"probes": 3, "interval": 0, "timeout": 1, "max_ttl": 8}


def server_flags(count: int) -> list[str]:
    """Room for every trace at once: nothing is refused with 429 during the run."""
    return [
        "--pool-size",
        "2",
        "--max-running",
        "1000",
        "--store-max",
        "20000",
        "--max-queued",
        str(max(1000, count)),
        "--max-probes-waiting",
        "1000000",
    ]


async def submit(
    server: Server, targets: Sequence[str], count: int, connections: int
) -> dict[str, Any]:
    """POST ``count`` traces over ``connections`` connections; say how it went."""
    codes: Counter[int] = Counter()
    ids: list[str] = []

    async def worker(indexes: range) -> None:
        connection = await Connection.open(server.port)
        try:
            for i in indexes:
                body = json.dumps({"target": targets[i % len(targets)], **REQUEST}).encode()
                status, _, answer = await connection.request("POST", "/traces", body)
                codes[status] += 1
                if status == 202:
                    ids.append(json.loads(answer)["id"])
        finally:
            connection.close()

    cpu = time.process_time()
    started = time.monotonic()
    await asyncio.gather(*(worker(range(c, count, connections)) for c in range(connections)))
    elapsed = time.monotonic() - started
    return {
        "seconds": elapsed,
        "posts_per_s": count / elapsed,
        "codes": dict(codes),
        "client_cpu_s": time.process_time() - cpu,
        "ids": ids,
    }


async def wait_idle(server: Server, limit: float) -> float:
    """Poll until no trace is queued or running; return when that was seen."""
    connection = await Connection.open(server.port)
    try:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if await active_traces(connection) == 0:
                return time.monotonic()
            await asyncio.sleep(0.01)
        raise TimeoutError(f"traces still active after {limit} s")
    finally:
        connection.close()


def run(lab: Any, count: int, connections: int = 8, profile: bool = False) -> dict[str, Any]:
    targets = list(lab.targets(4)[:100])
    with mtrd(lab.netns_exec("c"), "e2e", *server_flags(count)) as server:
        cpu_before = cpu_seconds(server.pid)
        wall = time.monotonic()
        posted = asyncio.run(submit(server, targets, count, connections))
        idle_at = asyncio.run(wait_idle(server, limit=60 + count / 10))
        cpu = cpu_seconds(server.pid) - cpu_before
        traces = asyncio.run(all_traces(server.port))
    statuses = Counter(t["status"] for t in traces)
    reached = sum(t["destination_reached"] for t in traces)
    first = min(rfc3339_seconds(t["created_at"]) for t in traces)
    last = max(rfc3339_seconds(t["finished_at"]) for t in traces if t["finished_at"])
    span = last - first
    posted.pop("ids")
    return {
        "request": REQUEST,
        "traces": count,
        "statuses": dict(statuses),
        "destination_reached": reached,
        "span_s": span,
        "traces_per_s": count / span,
        "wall_s_until_idle_seen": idle_at - wall,
        "server_cpu_s": cpu,
        "cpu_s_per_trace": cpu / count,
        "post": posted,
        "server_flags": server_flags(count),
        "profile": profiled(lab, targets, 3 * count, connections) if profile else None,
    }


def profiled(lab: Any, targets: list[str], count: int, connections: int) -> dict[str, Any]:
    """A second, unmeasured pass under py-spy (1000 samples/s), so the profiler's own
    cost never touches the figures above."""
    with (
        mtrd(lab.netns_exec("c"), "e2e-profiled", *server_flags(count)) as server,
        Profiler(server.pid, RESULTS / ".e2e.pyspy", rate=1000) as profiler,
    ):
        asyncio.run(submit(server, targets, count, connections))
        asyncio.run(wait_idle(server, limit=60 + count / 10))
    return profiler.top()
