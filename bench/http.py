"""Figure 6: ``GET /traces/{id}`` per second against a minimal Klein route, same run.

mtrd (lab mtr-packet) gets ``stored`` completed traces (icmp, 3 probes, max_ttl 8: 4 hops);
``wrk`` (Debian's, 1 thread, ``connections`` keep-alive connections, ``seconds`` long) then
GETs one of them. The same wrk run is pointed at ``bench.klein_min``: one Klein route on a
plain Site answering with the same bytes (the trace as mtrd served it), so the ratio is
mtrd's own per-request work, not the size of what is sent. Both servers are single Python
processes; wrk takes the other core. Without wrk a small asyncio client stands in (and says so).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any

from bench.common import (
    RESULTS,
    ROOT,
    Connection,
    Profiler,
    Server,
    free_port,
    mtrd,
    stop,
    wait_ready,
)
from bench.e2e import submit, wait_idle


def load(port: int, path: str, seconds: float, connections: int) -> dict[str, Any]:
    """Requests per second on ``path`` with keep-alive connections for ``seconds``."""
    wrk = shutil.which("wrk")
    if wrk is not None:
        out = subprocess.run(
            [
                wrk,
                "-t1",
                f"-c{connections}",
                f"-d{seconds:g}s",
                "--latency",
                f"http://127.0.0.1:{port}{path}",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 30,
        ).stdout
        rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        p50 = re.search(r"50%\s+(\S+)", out)
        return {
            "tool": "wrk",
            "requests_per_s": rate,
            "non_2xx": int(errors.group(1)) if errors else 0,
            "p50_latency": p50.group(1) if p50 else None,
        }
    return asyncio.run(_python_load(port, path, seconds, connections))


async def _python_load(port: int, path: str, seconds: float, connections: int) -> dict[str, Any]:
    done = 0
    bad = 0
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done, bad
        connection = await Connection.open(port)
        try:
            while time.monotonic() < deadline:
                status, _, _ = await connection.request("GET", path)
                done += 1
                bad += status != 200
        finally:
            connection.close()

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return {
        "tool": "python asyncio (no wrk)",
        "requests_per_s": done / (time.monotonic() - started),
        "non_2xx": bad,
    }


def run(
    lab: Any,
    stored: int,
    seconds: float,
    *,
    connections: int = 16,
    profile: bool = False,
    rounds: int = 5,
) -> dict[str, Any]:
    """Both servers run side by side; wrk loads them in turn, ``rounds`` times each
    (``seconds`` split between the rounds), so a neighbour's noise on this shared
    machine hits both alike. The ratio is the median of the rounds' ratios."""
    targets = list(lab.targets(4)[:50])
    per_round = max(1.0, seconds / rounds)
    with mtrd(lab.netns_exec("c"), "http", "--max-running", "200") as server:
        posted = asyncio.run(submit(server, targets, stored, 4))
        asyncio.run(wait_idle(server, 60))
        trace_id = posted["ids"][0]
        path = f"/traces/{trace_id}"
        body = asyncio.run(_get(server, path))
        body_file = RESULTS / ".klein_min.body"
        body_file.write_bytes(body)
        port = free_port()
        log = (RESULTS / ".klein_min.log").open("wb")
        klein = subprocess.Popen(
            [sys.executable, "-m", "bench.klein_min", str(port), str(body_file)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_ready(Server(f"http://127.0.0.1:{port}", port, klein, RESULTS / ".klein_min.log"))
            baseline_size = len(asyncio.run(_get_port(port, "/traces/x")))
            mtrd_runs, klein_runs = [], []
            with Profiler(server.pid, RESULTS / ".http.pyspy", enabled=profile) as profiler:
                for _ in range(rounds):
                    mtrd_runs.append(load(server.port, path, per_round, connections))
                    klein_runs.append(load(port, "/traces/x", per_round, connections))
        finally:
            stop(klein)
            log.close()
    ratios = [
        m["requests_per_s"] / k["requests_per_s"]
        for m, k in zip(mtrd_runs, klein_runs, strict=True)
    ]
    return {
        "stored": stored,
        "seconds": seconds,
        "rounds": rounds,
        "connections": connections,
        "mtrd": _summary(mtrd_runs, len(body)),
        "klein_min": _summary(klein_runs, baseline_size),
        "round_ratios": [round(r, 3) for r in ratios],
        "ratio": statistics.median(ratios),
        "profile": profiler.top() if profile else None,
    }


def _summary(runs: list[dict[str, Any]], body_bytes: int) -> dict[str, Any]:
    rates = [r["requests_per_s"] for r in runs]
    return {
        "tool": runs[0]["tool"],
        "requests_per_s": statistics.median(rates),
        "rounds_requests_per_s": rates,
        "non_2xx": sum(r["non_2xx"] for r in runs),
        "p50_latency": [r.get("p50_latency") for r in runs],
        "body_bytes": body_bytes,
    }


async def _get(server: Server, path: str) -> bytes:
    return await _get_port(server.port, path)


async def _get_port(port: int, path: str) -> bytes:
    connection = await Connection.open(port)
    try:
        status, _, body = await connection.request("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path} answered {status}")
        return body
    finally:
        connection.close()


if __name__ == "__main__":
    print(json.dumps({"usage": "run through python -m bench"}), file=sys.stderr)
