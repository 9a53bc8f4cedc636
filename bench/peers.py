"""Figure 8: mtrd against the tools people trace with, in the same lab and run.

8a, **silent hop**: r3 sends no time-exceeded; one trace to a target 4 hops away, 1 probe
per hop, interval 0 (timeout 2, max_ttl 30: the defaults): mtrd from writing the POST to
reading the poll that sees it finished (GET /traces/{id} on the same keep-alive connection,
again at once until final), against Debian's ``traceroute -n -q1`` (its adaptive wait,
``-w 5,3,10``) and ``scamper -c "trace -q 1 -w 1"`` run in the client namespace (process
start to exit). Median of ``samples`` runs each. Target: mtrd within 1.5 x traceroute's
time plus the HTTP round trips of that sample's POST and final poll.

8b, **end to end against scamper**: ``count`` traces to lab targets 4 hops away (3 probes
per hop, interval 0, timeout 1, max_ttl 8 as figure 2) POSTed by 32 keep-alive clients, each
of which then polls ``GET /traces/{id}`` of its own traces until every one is final
(a pass over the ones still running, then 20 ms before the next), against scamper tracing
the same targets (``scamper -p 10000 -c "trace -q 3 -w 1"`` on a file of them). Each rate
is traces over wall time, first POST to last final poll for mtrd, process start to exit for
scamper. Target: mtrd/scamper >= 0.5.
"""

from __future__ import annotations

import asyncio
import json
import resource
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import Connection, Server, children_cpu_seconds, cpu_seconds, median, mtrd
from bench.e2e import REQUEST as E2E_REQUEST
from bench.e2e import server_flags

SILENT_REQUEST = {"probes": 1, "interval": 0, "timeout": 2, "max_ttl": 30}
POLL_PAUSE = 0.02
CLIENTS = 32
PEERS = ("traceroute", "scamper")


def _require_peers() -> None:
    missing = [tool for tool in PEERS if shutil.which(tool) is None]
    if missing:
        raise RuntimeError(f"missing {', '.join(missing)}: make os-deps-bench installs them")


async def _one_silent(server: Server, target: str) -> dict[str, float]:
    connection = await Connection.open(server.port)
    try:
        body = json.dumps({"target": target, **SILENT_REQUEST}).encode()
        started = time.monotonic()
        status, _, answer = await connection.request("POST", "/traces", body)
        posted = time.monotonic()
        if status != 202:
            raise RuntimeError(f"POST answered {status}: {answer[:200]!r}")
        trace_id = json.loads(answer)["id"]
        while True:
            asked = time.monotonic()
            status, _, answer = await connection.request("GET", f"/traces/{trace_id}")
            trace = json.loads(answer)
            if trace["status"] in ("completed", "failed", "cancelled"):
                done = time.monotonic()
                break
        if trace["status"] != "completed" or len(trace["hops"]) != 4:
            raise RuntimeError(f"silent-hop trace wrong: {trace['status']}, {trace['hops']}")
        return {
            "seconds": done - started,
            "http_s": (posted - started) + (done - asked),
            "trace_s": trace_seconds(trace),
        }
    finally:
        connection.close()


def trace_seconds(trace: dict[str, Any]) -> float:
    from bench.common import rfc3339_seconds  # noqa: PLC0415

    return rfc3339_seconds(trace["finished_at"]) - rfc3339_seconds(trace["started_at"])


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(argv: list[str], timeout: float = 60) -> tuple[float, str]:
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr[-500:]}")
    return seconds, done.stdout


def silent_hop(lab: Any, samples: int) -> dict[str, Any]:
    """Figure 8a."""
    _require_peers()
    targets = list(lab.targets(4)[100:120])
    inside = lab.netns_exec("c")
    with lab.silent("r3"), mtrd(inside, "peers-silent", "--pool-size", "2") as server:
        asyncio.run(_one_silent(server, targets[-1]))  # warm-up
        mtrd_runs = [asyncio.run(_one_silent(server, targets[i % 20])) for i in range(samples)]
        traceroute = [
            _timed([*inside, "traceroute", "-n", "-q1", targets[i % 20]]) for i in range(samples)
        ]
        scamper_argv = [*inside, "scamper", "-O", "text", "-c", "trace -q 1 -w 1", "-i"]
        scamper = [_timed([*scamper_argv, targets[i % 20]]) for i in range(samples)]
    traceroute_s = median([s for s, _ in traceroute])
    mtrd_s = median([r["seconds"] for r in mtrd_runs])
    http_s = median([r["http_s"] for r in mtrd_runs])
    return {
        "request": SILENT_REQUEST,
        "samples": samples,
        "mtrd_s": mtrd_s,
        "mtrd_http_s": http_s,
        "mtrd_trace_s": median([r["trace_s"] for r in mtrd_runs]),
        "mtrd_runs_s": [round(r["seconds"], 4) for r in mtrd_runs],
        "traceroute_s": traceroute_s,
        "traceroute_output": traceroute[0][1],
        "scamper_s": median([s for s, _ in scamper]),
        "scamper_output": scamper[0][1],
        "target_s": 1.5 * traceroute_s + http_s,
        "met": mtrd_s <= 1.5 * traceroute_s + http_s,
    }


async def _client(server: Server, targets: list[str]) -> tuple[Counter[str], int, int]:
    connection = await Connection.open(server.port)
    statuses: Counter[str] = Counter()
    polls = refused = 0
    try:
        pending = []
        for target in targets:
            body = json.dumps({"target": target, **E2E_REQUEST}).encode()
            status, _, answer = await connection.request("POST", "/traces", body)
            while status == 503:
                # No worker ready: the pool is replacing its processes at once (each
                # leaves its band of sequences after ~16,000 probes). Try again shortly.
                refused += 1
                await asyncio.sleep(0.05)
                status, _, answer = await connection.request("POST", "/traces", body)
            if status != 202:
                raise RuntimeError(f"POST answered {status}: {answer[:200]!r}")
            pending.append(json.loads(answer)["id"])
        while pending:
            still = []
            for trace_id in pending:
                _, _, answer = await connection.request("GET", f"/traces/{trace_id}")
                polls += 1
                status = json.loads(answer)["status"]
                if status in ("completed", "failed", "cancelled"):
                    statuses[status] += 1
                else:
                    still.append(trace_id)
            pending = still
            if pending:
                await asyncio.sleep(POLL_PAUSE)
    finally:
        connection.close()
    return statuses, polls, refused


async def _all_clients(server: Server, targets: list[str]) -> dict[str, Any]:
    started = time.monotonic()
    results = await asyncio.gather(*(_client(server, targets[c::CLIENTS]) for c in range(CLIENTS)))
    seconds = time.monotonic() - started
    statuses: Counter[str] = Counter()
    for counted, _, _ in results:
        statuses += counted
    return {
        "seconds": seconds,
        "traces_per_s": len(targets) / seconds,
        "statuses": dict(statuses),
        "polls": sum(polls for _, polls, _ in results),
        "posts_refused_503": sum(refused for _, _, refused in results),
    }


def against_scamper(lab: Any, count: int) -> dict[str, Any]:
    """Figure 8b."""
    _require_peers()
    addresses = list(lab.targets(4))
    targets = [addresses[i % len(addresses)] for i in range(count)]
    inside = lab.netns_exec("c")
    with tempfile.TemporaryDirectory() as scratch:
        listing = Path(scratch) / "targets.txt"
        listing.write_text("".join(f"{t}\n" for t in targets))
        argv = [*inside, "scamper", "-O", "text", "-p", "10000", "-c", "trace -q 3 -w 1"]
        _timed([*argv, "-f", str(listing)], timeout=600)  # warm-up
        scamper_runs = []
        for _ in range(3):
            cpu = _children_cpu()
            seconds, output = _timed([*argv, "-f", str(listing)], timeout=600)
            if output.count("traceroute from") != count:
                raise RuntimeError(f"scamper traced {output.count('traceroute from')} targets")
            scamper_runs.append((seconds, _children_cpu() - cpu))
    with mtrd(inside, "peers-e2e", *server_flags(4 * count)) as server:
        asyncio.run(_all_clients(server, targets[: max(20, count // 5)]))  # warm-up
        runs = []
        for _ in range(3):
            cpu = cpu_seconds(server.pid) + children_cpu_seconds(server.pid)
            run = asyncio.run(_all_clients(server, targets))
            run["cpu_s"] = cpu_seconds(server.pid) + children_cpu_seconds(server.pid) - cpu
            runs.append(run)
    mtrd_run = sorted(runs, key=lambda r: r["traces_per_s"])[1]
    scamper_s = median([seconds for seconds, _ in scamper_runs])
    scamper_cpu = median([cpu for _, cpu in scamper_runs])
    ratio = mtrd_run["traces_per_s"] / (count / scamper_s)
    return {
        "traces": count,
        "clients": CLIENTS,
        "poll_pause_s": POLL_PAUSE,
        "request": E2E_REQUEST,
        "mtrd": mtrd_run,
        "mtrd_rounds_traces_per_s": [round(r["traces_per_s"], 1) for r in runs],
        "scamper_runs_s": [round(s, 3) for s, _ in scamper_runs],
        "scamper_traces_per_s": count / scamper_s,
        # CPU per trace says more than wall time on a machine shared with other work.
        "mtrd_cpu_ms_per_trace": 1000 * mtrd_run["cpu_s"] / count,
        "scamper_cpu_ms_per_trace": 1000 * scamper_cpu / count,
        "ratio": ratio,
        "met": ratio >= 0.5,
    }
