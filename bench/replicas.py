"""Figure 7: end to end on the Redis store, against the memory store and with two replicas.

7a. The e2e load (bench/e2e.py: ``count`` icmp traces, 3 probes per hop, POSTed over keep-alive
connections, run to completion) on one mtrd with ``--store memory`` and on one with
``--store redis://`` (a redis-server this part starts on a free loopback port, no persistence,
and stops after), in alternating batches, ``rounds`` of each; the figure is the ratio of the
median batches. Same flags otherwise.

7b. The same load, Redis store, on one replica and on two replicas of one vantage sharing
that Redis (the POSTs spread over both), in alternating batches; traces/s of each (median
batch). ``--max-running`` is
64 here so that one replica cannot claim the whole queue at once and the work spreads (a
replica claims only as many traces as it has free running slots).

The rate is ``count`` over the span from the first trace's ``created_at`` to the last one's
``finished_at`` (the servers' own clocks: the replicas share this machine's).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

from bench.common import (
    Connection,
    Server,
    active_traces,
    all_traces,
    cpu_seconds,
    mtrd,
    one_request,
    rfc3339_seconds,
)
from bench.e2e import REQUEST, server_flags

VANTAGE = "bench"
IDLE_POLL = 0.2
SPREAD_RUNNING = 64
"""--max-running for 7b: a replica claims at most its free slots, so the work spreads."""


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A redis-server on a free loopback port for this part; its ``--store`` URL."""
    from tests.redis_server import RedisServer, redis_server_binary  # noqa: PLC0415

    binary = redis_server_binary()
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    with RedisServer(binary) as server:
        yield server.url


async def submit(
    ports: Sequence[int], targets: Sequence[str], count: int, connections: int
) -> dict[str, Any]:
    """POST ``count`` traces over ``connections`` connections spread over ``ports``."""
    codes: Counter[int] = Counter()
    ids: list[str] = []

    async def worker(port: int, indexes: range) -> None:
        connection = await Connection.open(port)
        try:
            for i in indexes:
                body = json.dumps({"target": targets[i % len(targets)], **REQUEST}).encode()
                status, _, answer = await connection.request("POST", "/traces", body)
                codes[status] += 1
                if status == 202:
                    ids.append(json.loads(answer)["id"])
        finally:
            connection.close()

    started = time.monotonic()
    await asyncio.gather(
        *(worker(ports[c % len(ports)], range(c, count, connections)) for c in range(connections))
    )
    elapsed = time.monotonic() - started
    return {"seconds": elapsed, "posts_per_s": count / elapsed, "codes": dict(codes), "ids": ids}


async def wait_idle(port: int, limit: float) -> None:
    """Poll until no trace is queued or running (the listing covers every replica).

    Every 0.2 s, not bench/e2e.py's 0.01 s: the rate comes from the traces' own timestamps,
    and a filtered listing costs the Redis store far more than the memory store (it reads
    trace hashes down the index), which at 100 polls a second took a quarter of the Redis
    replica's CPU in a py-spy profile: the figure would measure the poll.
    """
    connection = await Connection.open(port)
    try:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if await active_traces(connection) == 0:
                return
            await asyncio.sleep(IDLE_POLL)
        raise TimeoutError(f"traces still active after {limit} s")
    finally:
        connection.close()


def wait_registered(server: Server, replicas: int, limit: float = 15) -> None:
    """Poll until GET /vantage-points lists ``replicas`` live replicas of vantage ``bench``
    (a replica's first heartbeat may land after its /readyz says 200)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        status, _, body = asyncio.run(one_request(server.port, "GET", "/vantage-points"))
        if status == 200:
            live = {p["name"]: p["replicas"] for p in json.loads(body)["vantage_points"]}
            if live.get(VANTAGE, 0) >= replicas:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{replicas} replicas of {VANTAGE} not live within {limit} s")


async def runners(port: int, ids: Sequence[str]) -> Counter[str]:
    """How many of ``ids`` each replica ran (the list's summaries do not say: one GET each)."""
    connection = await Connection.open(port)
    ran: Counter[str] = Counter()
    try:
        for trace_id in ids:
            status, _, body = await connection.request("GET", f"/traces/{trace_id}")
            if status == 200:
                ran[str(json.loads(body).get("replica"))] += 1
    finally:
        connection.close()
    return ran


def post_durations(server: Server, offset: int) -> list[float]:
    """The server-side durations (ms) of the POSTs its access log has had since ``offset``
    (bytes): from accepting the request to its answer, what a closed loop waits for."""
    with server.log_path.open("rb") as log:
        log.seek(offset)
        lines = log.read().splitlines()
    durations = []
    for line in lines:
        if b'"POST"' not in line:
            continue
        with contextlib.suppress(ValueError, KeyError):
            durations.append(float(json.loads(line)["duration_ms"]))
    return durations


def percentiles(values: Sequence[float]) -> dict[str, float] | None:
    """p50, p90 and p99 of ``values`` (None when there are none)."""
    if not values:
        return None
    ordered = sorted(values)

    def at(share: float) -> float:
        return round(ordered[round(share * (len(ordered) - 1))], 1)

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99)}


def batch(
    servers: Sequence[Server], targets: list[str], count: int, connections: int
) -> dict[str, Any]:
    """One measured batch on ``servers``: ``count`` traces POSTed and run to completion."""
    ports = [s.port for s in servers]
    logged = [s.log_path.stat().st_size for s in servers]
    cpu_before = sum(cpu_seconds(s.pid) for s in servers)
    started = time.monotonic()
    posted = asyncio.run(submit(ports, targets, count, connections))
    asyncio.run(wait_idle(ports[0], limit=60 + count / 10))
    cpu = sum(cpu_seconds(s.pid) for s in servers) - cpu_before
    wall = time.monotonic() - started
    durations = [d for s, at in zip(servers, logged, strict=True) for d in post_durations(s, at)]
    measured = set(posted.pop("ids"))
    traces = [t for t in asyncio.run(all_traces(ports[0])) if t["id"] in measured]
    if not traces:
        raise RuntimeError(f"no trace was accepted: {posted['codes']}")
    first = min(rfc3339_seconds(t["created_at"]) for t in traces)
    last = max(rfc3339_seconds(t["finished_at"]) for t in traces if t["finished_at"])
    ran = asyncio.run(runners(ports[0], [t["id"] for t in traces])) if len(servers) > 1 else None
    return {
        "statuses": dict(Counter(t["status"] for t in traces)),
        "traces_per_s": len(traces) / (last - first),
        "span_s": last - first,
        "servers_cpu_s_per_trace": cpu / len(traces),
        # CPU seconds per second of the batch (POSTs to idle): near what the scheduler gives
        # one process on a loaded machine, both stores are bound by CPU per trace.
        "servers_cpu_share": cpu / wall,
        "post_server_ms": percentiles(durations),
        "traces_per_replica": sorted(ran.values(), reverse=True) if ran else [len(traces)],
        "post": posted,
    }


def median_batch(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """The batch with the median rate, with every batch's rate beside it."""
    middle = sorted(batches, key=lambda b: b["traces_per_s"])[len(batches) // 2]
    return {**middle, "rounds_traces_per_s": [round(b["traces_per_s"], 1) for b in batches]}


def run(
    lab: Any, count: int, connections: int = 8, rounds: int = 3, *, scaling: bool = True
) -> dict[str, Any]:
    """7a (Redis against memory, alternating batches) and, with ``scaling``, 7b (two
    replicas against one)."""
    targets = list(lab.targets(4)[:100])
    netns = lab.netns_exec("c")
    warm_up = max(20, count // 5)
    flags = server_flags(2 * rounds * count + warm_up)
    memory_batches: list[dict[str, Any]] = []
    redis_batches: list[dict[str, Any]] = []
    with (
        redis_server() as store,
        mtrd(netns, "e2e-memory", *flags) as memory,
        mtrd(netns, "e2e-redis", *flags, "--store", store, "--vantage", VANTAGE) as redis,
    ):
        wait_registered(redis, 1)
        for server in (memory, redis):  # unmeasured: cold caches, first connections
            batch([server], targets, warm_up, connections)
        for _ in range(rounds):
            memory_batches.append(batch([memory], targets, count, connections))
            redis_batches.append(batch([redis], targets, count, connections))
    memory_median = median_batch(memory_batches)
    redis_median = median_batch(redis_batches)
    figure_7a = {
        "request": REQUEST,
        "traces": count,
        "rounds": rounds,
        "connections": connections,
        "server_flags": flags,
        "memory": memory_median,
        "redis": redis_median,
        "ratio": redis_median["traces_per_s"] / memory_median["traces_per_s"],
        "round_ratios": [
            round(r["traces_per_s"] / m["traces_per_s"], 2)
            for m, r in zip(memory_batches, redis_batches, strict=True)
        ],
        "median_round_ratio": statistics.median(
            r["traces_per_s"] / m["traces_per_s"]
            for m, r in zip(memory_batches, redis_batches, strict=True)
        ),
    }
    if not scaling:
        return figure_7a
    spread = [*flags, "--max-running", str(SPREAD_RUNNING)]
    one_batches: list[dict[str, Any]] = []
    two_batches: list[dict[str, Any]] = []
    with redis_server() as store:
        replica = ("--store", store, "--vantage", VANTAGE)
        with mtrd(netns, "replica-1", *spread, *replica) as first:
            wait_registered(first, 1)
            batch([first], targets, warm_up, connections)
            for _ in range(rounds):
                # Alternating, as in 7a: the second replica lives only for its batches (an
                # idle second replica would claim work too).
                one_batches.append(batch([first], targets, count, connections))
                with mtrd(netns, "replica-2", *spread, *replica) as second:
                    wait_registered(second, 2)
                    two_batches.append(batch([first, second], targets, count, connections))
    one, two = median_batch(one_batches), median_batch(two_batches)
    return {
        **figure_7a,
        "spread_max_running": SPREAD_RUNNING,
        "one_replica": one,
        "two_replicas": two,
        "scaling": two["traces_per_s"] / one["traces_per_s"],
    }
