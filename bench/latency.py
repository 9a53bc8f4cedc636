"""Figure 3: one trace at a time, from POST until its ``done`` event arrives.

Each sample: POST ``{"target": T, "probes": 1, "interval": 0, "timeout": 1, "max_ttl": 8}``
on a keep-alive connection, then GET its /events on a fresh connection and read until
``event: done`` (a subscriber that comes after the end still gets ``done``). The clock runs
from writing the POST to reading ``done``. Compared with the lab's network time: 8 probes
(TTL 1-8) written at once to a bare mtr-packet until the last reply (figure 1 measures it).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from bench.common import Connection, Server, median, mtrd, percentile

REQUEST = {"probes": 1, "interval": 0, "timeout": 1, "max_ttl": 8}


async def until_done(server: Server, trace_id: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(f"GET /traces/{trace_id}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        seen = b""
        while b"event: done" not in seen:
            data = await reader.read(1 << 16)
            if not data:
                raise RuntimeError("event stream ended before done")
            seen = seen[-64:] + data
    finally:
        writer.close()


async def samples(server: Server, targets: list[str], count: int) -> list[float]:
    connection = await Connection.open(server.port)
    times = []
    try:
        for i in range(count):
            body = json.dumps({"target": targets[i % len(targets)], **REQUEST}).encode()
            started = time.monotonic()
            status, _, answer = await connection.request("POST", "/traces", body)
            if status != 202:
                raise RuntimeError(f"POST answered {status}: {answer[:200]!r}")
            await asyncio.wait_for(until_done(server, json.loads(answer)["id"]), 10)
            times.append(time.monotonic() - started)
    finally:
        connection.close()
    return times


def run(lab: Any, count: int, network_ms: float | None) -> dict[str, Any]:
    targets = list(lab.targets(4)[:50])
    with mtrd(lab.netns_exec("c"), "latency", "--pool-size", "2") as server:
        asyncio.run(samples(server, targets, 3))  # warm-up: imports, first allocations
        times = asyncio.run(samples(server, targets, count))
    p50 = median(times) * 1000
    return {
        "request": REQUEST,
        "samples": len(times),
        "median_ms": p50,
        "p99_ms": percentile(times, 0.99) * 1000,
        "network_ms": network_ms,
        "over_network_ms": None if network_ms is None else p50 - network_ms,
    }
