"""Redis client libraries driven from Twisted, against a real redis-server on loopback.

``python -m bench.redis_client [--writes N] [--gets N] [--samples N] [--seconds S]``
(needs ``pip install redis hiredis``, which mtrd itself does not depend on, and wrk)

Compares txredisapi (Deferreds on the default epoll reactor) with redis-py's asyncio client
(on Twisted's asyncio reactor, which it needs), each in its own process since a process has
one reactor:

- writes: N per-trace writes, each one pipeline of HSET + EXPIRE + XADD, 50 in flight;
- gets: N GETs of a 12 KB document, 50 in flight;
- latency: p50/p99 of single GETs of a small key, one at a time;
- the reactor itself: a trivial Klein GET route on each reactor, loaded with ``wrk``.

Client-process CPU seconds are reported next to wall time: mtrd runs on one core, so the
CPU a library spends per call is what it takes away from probing and HTTP. Figures go to
``bench/results/redis-client.md`` (and ``.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import re
import resource
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.common import RESULTS, ROOT, free_port, percentile

IN_FLIGHT = 50
POOL = 8
DOCUMENT = b"x" * 12 * 1024


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _timed(run: Callable[[], Awaitable[None]]) -> dict[str, float]:
    wall, cpu = time.perf_counter(), _cpu()
    await run()
    return {"seconds": time.perf_counter() - wall, "cpu_seconds": _cpu() - cpu}


async def _in_flight(count: int, one: Callable[[int], Awaitable[Any]]) -> None:
    """Run ``one(i)`` for i < count with at most IN_FLIGHT at once."""
    from twisted.internet import defer

    next_index = 0

    async def lane() -> None:
        nonlocal next_index
        while next_index < count:
            index = next_index
            next_index += 1
            await one(index)

    await defer.gatherResults(
        [defer.Deferred.fromCoroutine(lane()) for _ in range(IN_FLIGHT)], consumeErrors=True
    )


async def _workload(
    write: Callable[[int], Awaitable[Any]],
    get_document: Callable[[], Awaitable[Any]],
    get_small: Callable[[], Awaitable[Any]],
    set_up: Callable[[], Awaitable[Any]],
    options: argparse.Namespace,
) -> dict[str, Any]:
    await set_up()
    for index in range(200):  # warm the connections and the server
        await write(index)
    writes = await _timed(lambda: _in_flight(options.writes, write))

    async def get_one(_index: int) -> None:
        value = await get_document()
        assert len(value) == len(DOCUMENT)

    gets = await _timed(lambda: _in_flight(options.gets, get_one))
    samples = []
    for _ in range(options.samples):
        start = time.perf_counter()
        await get_small()
        samples.append((time.perf_counter() - start) * 1000)
    return {
        "writes": {**writes, "per_second": options.writes / writes["seconds"]},
        "gets": {**gets, "per_second": options.gets / gets["seconds"]},
        "latency_ms": {"p50": percentile(samples, 0.5), "p99": percentile(samples, 0.99)},
    }


def _txredisapi_child(options: argparse.Namespace) -> dict[str, Any]:
    import txredisapi
    from twisted.internet import defer, task

    async def main(_reactor: Any) -> dict[str, Any]:
        redis = await txredisapi.ConnectionPool(
            "127.0.0.1", options.port, poolsize=POOL, charset=None, convertNumbers=False
        )

        async def write(index: int) -> None:
            key = f"bench:{{t{index}}}"
            pipe = await redis.pipeline()
            pipe.execute_command("HSET", key + ":trace", "value", DOCUMENT[:2048], "version", 1)
            pipe.execute_command("EXPIRE", key + ":trace", 3600)
            pipe.execute_command("XADD", key + ":events", "*", "e", b"hop")
            await pipe.execute_pipeline()

        async def set_up() -> None:
            await redis.execute_command("SET", "bench:doc", DOCUMENT)
            await redis.execute_command("SET", "bench:small", b"1")

        result = await _workload(
            write,
            lambda: redis.execute_command("GET", "bench:doc"),
            lambda: redis.execute_command("GET", "bench:small"),
            set_up,
            options,
        )
        await redis.disconnect()
        return result

    out: dict[str, Any] = {}

    def run(reactor: Any) -> defer.Deferred[None]:
        d = defer.Deferred.fromCoroutine(main(reactor))
        return d.addCallback(out.update)

    with contextlib.suppress(SystemExit):
        task.react(run)
    return out


def _redis_py_child(options: argparse.Namespace) -> dict[str, Any]:
    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    import asyncio

    import redis.asyncio
    from twisted.internet import defer, task

    async def main() -> dict[str, Any]:
        pool = redis.asyncio.BlockingConnectionPool(
            host="127.0.0.1", port=options.port, max_connections=POOL
        )
        client = redis.asyncio.Redis(connection_pool=pool)

        async def write(index: int) -> None:
            key = f"bench:{{t{index}}}"
            async with client.pipeline(transaction=False) as pipe:
                pipe.hset(key + ":trace", mapping={"value": DOCUMENT[:2048], "version": 1})
                pipe.expire(key + ":trace", 3600)
                pipe.xadd(key + ":events", {"e": b"hop"})
                await pipe.execute()

        async def set_up() -> None:
            await client.set("bench:doc", DOCUMENT)
            await client.set("bench:small", b"1")

        def wrap(make: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
            # Each call goes through a Deferred, as mtrd's code on this reactor would.
            return lambda: defer.Deferred.fromFuture(asyncio.ensure_future(make()))

        def wrap_write(index: int) -> Awaitable[Any]:
            return defer.Deferred.fromFuture(asyncio.ensure_future(write(index)))

        result = await _workload(
            wrap_write,
            wrap(lambda: client.get("bench:doc")),
            wrap(lambda: client.get("bench:small")),
            wrap(set_up),
            options,
        )
        await defer.Deferred.fromFuture(asyncio.ensure_future(client.aclose()))
        return result

    out: dict[str, Any] = {}

    def run(_reactor: Any) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(main()).addCallback(out.update)

    with contextlib.suppress(SystemExit):
        task.react(run)
    return out


def _serve(kind: str, port: int) -> None:
    """A trivial Klein GET route on the given reactor, until killed."""
    if kind == "asyncio":
        from twisted.internet import asyncioreactor

        asyncioreactor.install()
    from klein import Klein
    from twisted.internet import endpoints, reactor
    from twisted.web.server import Site

    app = Klein()

    @app.route("/ping", methods=["GET"])
    def ping(request: Any) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        return b'{"ok":true}'

    site = Site(app.resource())
    site.noisy = False
    site.log = lambda _request: None  # type: ignore[method-assign]
    endpoints.TCP4ServerEndpoint(reactor, port, interface="127.0.0.1").listen(site)
    print(type(reactor).__name__, flush=True)
    reactor.run()  # type: ignore[attr-defined]


def _wrk(port: int, seconds: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", "-c32", f"-d{seconds}s", "--latency", f"http://127.0.0.1:{port}/ping"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    result = {"requests_per_second": rate}
    for label in ("50%", "99%"):
        match = re.search(rf"{label}\s+([\d.]+)(us|ms|s)\b", out)
        if match:
            scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]
            result[f"p{label[:-1]}_ms"] = float(match.group(1)) * scale
    return result


def _reactor_cost(seconds: int, rounds: int) -> dict[str, Any]:
    results: dict[str, list[dict[str, float]]] = {"epoll": [], "asyncio": []}
    for _ in range(rounds):
        for kind in ("epoll", "asyncio"):
            port = free_port()
            server = subprocess.Popen(
                [sys.executable, "-m", "bench.redis_client", "--serve", kind, "--port", str(port)],
                cwd=ROOT, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            try:
                assert server.stdout is not None
                name = server.stdout.readline().strip()
                time.sleep(0.3)
                run = _wrk(port, seconds)
                run["reactor"] = name  # type: ignore[assignment]
                results[kind].append(run)
            finally:
                server.kill()
                server.wait()
    return results


def _child(client: str, port: int, options: argparse.Namespace) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "bench.redis_client", "--child", client, "--port", str(port),
        "--writes", str(options.writes), "--gets", str(options.gets),
        "--samples", str(options.samples),
    ]  # fmt: skip
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    found = {name: version(name) for name in ("txredisapi", "redis", "hiredis", "twisted")}
    server = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=True
    )
    found["redis-server"] = server.stdout.split()[2].removeprefix("v=")
    return found


def _report(data: dict[str, Any]) -> str:
    lines = [
        "# Redis client libraries from Twisted",
        "",
        f"Run {data['when']} on {data['machine']}; {data['versions']}.",
        f"Each client in its own process against one redis-server on loopback; {IN_FLIGHT} "
        f"calls in flight over a pool of {POOL} connections; best of {data['rounds']} runs "
        "(by wall time). CPU is the client process's user+system time.",
        "",
        "| client (reactor) | writes/s (HSET+EXPIRE+XADD pipeline) | CPU s per 10k writes "
        "| 12 KB GETs/s | CPU s per 10k GETs | single GET p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for client, label in (
        ("txredisapi", "txredisapi (epoll)"),
        ("redis-py", "redis-py asyncio (asyncioreactor)"),
    ):
        best = data["clients"][client]
        w, g, lat = best["writes"], best["gets"], best["latency_ms"]
        lines.append(
            f"| {label} | {w['per_second']:,.0f} | {w['cpu_seconds'] * 1e4 / data['writes']:.2f}"
            f" | {g['per_second']:,.0f} | {g['cpu_seconds'] * 1e4 / data['gets']:.2f}"
            f" | {lat['p50']:.3f} | {lat['p99']:.3f} |"
        )
    lines += [
        "",
        f"Reactor switch: a trivial Klein GET route, `wrk -t1 -c32 -d{data['seconds']}s`, "
        f"{data['rounds']} alternating runs each (median):",
        "",
        "| reactor | requests/s | p50 ms | p99 ms |",
        "|---|---|---|---|",
    ]
    for kind, runs in data["reactor"].items():
        ordered = sorted(runs, key=lambda r: r["requests_per_second"])
        mid = ordered[len(ordered) // 2]
        lines.append(
            f"| {kind} ({mid['reactor']}) | {mid['requests_per_second']:,.0f} "
            f"| {mid.get('p50_ms', float('nan')):.2f} | {mid.get('p99_ms', float('nan')):.2f} |"
        )
    lines += ["", "Every run's figures are in redis-client.json.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=20_000)
    parser.add_argument("--gets", type=int, default=20_000)
    parser.add_argument("--samples", type=int, default=2_000)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=("txredisapi", "redis-py"))
    parser.add_argument("--serve", choices=("epoll", "asyncio"))
    parser.add_argument("--port", type=int)
    options = parser.parse_args()
    if options.serve:
        _serve(options.serve, options.port)
        return
    if options.child:
        run = _txredisapi_child if options.child == "txredisapi" else _redis_py_child
        print(json.dumps(run(options)))
        return

    from tests.redis_server import RedisServer

    runs: dict[str, list[dict[str, Any]]] = {"txredisapi": [], "redis-py": []}
    with RedisServer() as server:
        for _ in range(options.rounds):
            for client, results in runs.items():
                results.append(_child(client, server.port, options))
                subprocess.run(
                    ["redis-cli", "-p", str(server.port), "FLUSHALL"],
                    check=False, capture_output=True,
                )  # fmt: skip
    data = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "versions": ", ".join(f"{k} {v}" for k, v in _versions().items()),
        "writes": options.writes,
        "gets": options.gets,
        "rounds": options.rounds,
        "seconds": options.seconds,
        "runs": runs,
        "clients": {
            client: min(results, key=lambda r: r["writes"]["seconds"] + r["gets"]["seconds"])
            for client, results in runs.items()
        },
        "reactor": _reactor_cost(options.seconds, options.rounds),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "redis-client.json").write_text(json.dumps(data, indent=2) + "\n")
    report = _report(data)
    (RESULTS / "redis-client.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
