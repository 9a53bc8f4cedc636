"""Figure 2: traces per second end to end, and the server's CPU seconds per trace.

``count`` traces (icmp to lab targets 4 hops away, 3 probes per hop, interval 0 so each
round starts as soon as the previous one settled, timeout 1, max_ttl 8: 8 + 4 + 4 probes
per trace) are POSTed over ``connections`` keep-alive connections as fast as mtrd
answers, after an unmeasured warm-up of a fifth as many; then GET
/traces?status=queued|running is polled until nothing is active. Three such batches run
on one server and the median one is the figure (all three are reported). The rate is ``count``
over the span from the first measured trace's ``created_at`` to the last one's
``finished_at`` (the server's own clock, ms precision). CPU is utime+stime of the mtrd
process over the batch; the mtr-packet workers' CPU is reported apart. The client's own
CPU time is reported to show it is not the bottleneck.
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
    children_cpu_seconds,
    cpu_seconds,
    mtrd,
    rfc3339_seconds,
)

REQUEST = {"probes": 3, "interval": 0, "timeout": 1, "max_ttl": 8}


RUNNING = 64
"""Traces probing at once: enough to keep mtrd's core busy, few enough that their probes
(8 TTLs each in a first round) fit the first mtr-packet process. With 1000, as until
2026-12-01, the second process sent too and the two overflowed each other's raw socket
buffers: whole rounds lost, traces waiting out their timeout (bench/results/peers.md)."""


def server_flags(count: int) -> list[str]:
    """Room in the queue for every trace: nothing is refused with 429 during the run."""
    return [
        "--pool-size",
        "2",
        "--max-running",
        str(RUNNING),
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


def run(
    lab: Any, count: int, connections: int = 8, profile: bool = False, rounds: int = 3
) -> dict[str, Any]:
    """A warm-up, then ``rounds`` measured batches of ``count`` traces on one server; the
    figure is the median batch (this shared machine's speed drifts from second to second)."""
    targets = list(lab.targets(4)[:100])
    warm_up = max(20, count // 5)
    flags = server_flags(rounds * count + warm_up)
    with mtrd(lab.netns_exec("c"), "e2e", *flags) as server:
        # Unmeasured: the first traces of a fresh process pay for cold caches.
        asyncio.run(submit(server, targets, warm_up, connections))
        asyncio.run(wait_idle(server, limit=60 + warm_up / 10))
        batches = [_batch(server, targets, count, connections) for _ in range(rounds)]
    middle = sorted(batches, key=lambda b: b["traces_per_s"])[rounds // 2]
    return {
        "request": REQUEST,
        "traces": count,
        "rounds": rounds,
        "warm_up_traces": warm_up,
        **middle,
        "rounds_traces_per_s": [round(b["traces_per_s"], 1) for b in batches],
        "server_flags": flags,
        "profile": profiled(lab, targets, 3 * count, connections) if profile else None,
    }


def _batch(server: Server, targets: list[str], count: int, connections: int) -> dict[str, Any]:
    """One measured batch: ``count`` traces POSTed and run to completion."""
    cpu_before = cpu_seconds(server.pid)
    engine_before = children_cpu_seconds(server.pid)
    wall = time.monotonic()
    posted = asyncio.run(submit(server, targets, count, connections))
    idle_at = asyncio.run(wait_idle(server, limit=60 + count / 10))
    cpu = cpu_seconds(server.pid) - cpu_before
    engine_cpu = children_cpu_seconds(server.pid) - engine_before
    measured = set(posted.pop("ids"))
    traces = [t for t in asyncio.run(all_traces(server.port)) if t["id"] in measured]
    first = min(rfc3339_seconds(t["created_at"]) for t in traces)
    last = max(rfc3339_seconds(t["finished_at"]) for t in traces if t["finished_at"])
    return {
        "statuses": dict(Counter(t["status"] for t in traces)),
        "destination_reached": sum(t["destination_reached"] for t in traces),
        "span_s": last - first,
        "traces_per_s": count / (last - first),
        "wall_s_until_idle_seen": idle_at - wall,
        "server_cpu_s": cpu,
        "cpu_s_per_trace": cpu / count,
        "engine_cpu_s": engine_cpu,
        "engine_cpu_share": engine_cpu / (idle_at - wall),
        "post": posted,
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
