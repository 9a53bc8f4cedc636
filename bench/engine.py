"""Figure 1: probes per second through ``ProbePool`` against a bare mtr-packet pipe.

Run as its own process (``python -m bench.engine JSON``) because it owns a Twisted reactor.
Both sides get the same probe lines (icmp, TTL 1-8 in turn over the lab targets, timeout 1)
and keep the same number in flight (the window); each counts from the first write to the
last reply. The bare side is one mtr-packet in the client namespace driven by a
``selectors`` loop that writes lines and counts newlines: the floor any engine pays.

It also measures the lab's network time for one trace: 8 probes (TTL 1-8) written at once
to a bare mtr-packet, until the last reply, repeated; figure 3 is compared with it.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from bench.common import median, percentile

TTLS = range(1, 9)


def probe_plan(targets: Sequence[str], count: int) -> list[tuple[str, int]]:
    """(target, ttl) of each probe: TTL 1-8 in turn, targets in turn."""
    return [(targets[i % len(targets)], TTLS[i % len(TTLS)]) for i in range(count)]


class BarePipe:
    """One mtr-packet with pipes, driven synchronously."""

    def __init__(self, command: Sequence[str]) -> None:
        self.process = subprocess.Popen(
            list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
        )
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.stdin = self.process.stdin.fileno()
        self.stdout = self.process.stdout.fileno()
        os.set_blocking(self.stdout, False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.stdout, selectors.EVENT_READ)
        self.token = 1
        self.buffer = b""

    def lines(self, deadline: float) -> list[bytes]:
        """Wait for some reply lines (or the deadline)."""
        while time.monotonic() < deadline:
            if not self.selector.select(timeout=max(0.0, deadline - time.monotonic())):
                continue
            data = os.read(self.stdout, 1 << 16)
            if not data:
                raise RuntimeError("mtr-packet closed its stdout")
            self.buffer += data
            *lines, self.buffer = self.buffer.split(b"\n")
            if lines:
                return lines
        raise TimeoutError("mtr-packet did not answer in time")

    def command(self, target: str, ttl: int) -> bytes:
        self.token += 1
        return f"{self.token} send-probe ip-4 {target} ttl {ttl} timeout 1\n".encode()

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.stdin, view)
            view = view[written:]

    def run(self, plan: list[tuple[str, int]], window: int, limit: float) -> dict[str, Any]:
        """Keep ``window`` probes in flight until every probe of ``plan`` is answered."""
        deadline = time.monotonic() + limit
        kinds: Counter[str] = Counter()
        sent = done = 0
        started = time.monotonic()
        while done < len(plan):
            room = min(window - (sent - done), len(plan) - sent)
            if room > 0:
                self.write(b"".join(self.command(*plan[sent + i]) for i in range(room)))
                sent += room
            for line in self.lines(deadline):
                kinds[line.split(b" ", 2)[1].decode()] += 1
                done += 1
        elapsed = time.monotonic() - started
        return {
            "probes": len(plan),
            "seconds": elapsed,
            "probes_per_s": len(plan) / elapsed,
            "kinds": dict(kinds),
        }

    def round_trips(self, target: str, rounds: int) -> list[float]:
        """Seconds from writing TTL 1-8 at once to the last of their replies, ``rounds`` times."""
        times = []
        for _ in range(rounds):
            started = time.monotonic()
            self.write(b"".join(self.command(target, ttl) for ttl in TTLS))
            got = 0
            while got < len(TTLS):
                got += len(self.lines(time.monotonic() + 5))
            times.append(time.monotonic() - started)
        return times

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def pool_run(
    reactor: Any, command: Sequence[str], workers: int, plan: list[tuple[str, int]], window: int
) -> dict[str, Any]:
    """The same probes through ``ProbePool`` with ``workers`` processes."""
    from mtrd.engine.pool import PoolConfig, ProbePool  # noqa: PLC0415
    from mtrd.engine.probe import ProbeRequest  # noqa: PLC0415
    from twisted.internet.defer import Deferred  # noqa: PLC0415
    from twisted.internet.task import deferLater  # noqa: PLC0415

    pool = ProbePool(reactor, PoolConfig(size=workers, command=tuple(command)))
    await pool.start()
    try:
        for _ in range(250):
            if pool.ready_workers == workers:
                break
            await deferLater(reactor, 0.02, lambda: None)
        requests = [ProbeRequest(target, ttl=ttl, timeout=1) for target, ttl in plan]
        finished: Deferred[None] = Deferred()
        kinds: Counter[str] = Counter()
        state = {"sent": 0, "done": 0}

        def answered(reply: Any) -> None:
            kinds[reply.kind.value] += 1
            settled()

        def failed(failure: Any) -> None:
            kinds["error:" + type(failure.value).__name__] += 1
            settled()

        def settled() -> None:
            state["done"] += 1
            if state["sent"] < len(requests):
                send()
            elif state["done"] == len(requests) and not finished.called:
                finished.callback(None)

        def send() -> None:
            request = requests[state["sent"]]
            state["sent"] += 1
            pool.probe(request).addCallbacks(answered, failed)

        started = reactor.seconds()
        timeout = reactor.callLater(120, finished.cancel)
        for _ in range(min(window, len(requests))):
            send()
        await finished
        elapsed = reactor.seconds() - started
        if timeout.active():
            timeout.cancel()
        return {
            "workers": workers,
            "probes": len(requests),
            "seconds": elapsed,
            "probes_per_s": len(requests) / elapsed,
            "kinds": dict(kinds),
            "restarts": pool.restarts,
        }
    finally:
        await pool.stop()


def main(args: dict[str, Any]) -> dict[str, Any]:
    command = [*args["netns_exec"], "mtr-packet"]
    plan = probe_plan(args["targets"], args["probes"])
    window = args["window"]
    result: dict[str, Any] = {"window": window, "probes": args["probes"]}
    bare = BarePipe(command)
    try:
        bare.write(b"1 check-support feature version\n")
        bare.lines(time.monotonic() + 5)
        trips = bare.round_trips(args["targets"][0], args["rounds"])
        result["network_round_ms"] = {
            "median": median(trips) * 1000,
            "p99": percentile(trips, 0.99) * 1000,
            "n": len(trips),
        }
        result["bare"] = bare.run(plan, window, limit=120)
    finally:
        bare.close()

    from twisted.internet import task  # noqa: PLC0415
    from twisted.internet.defer import Deferred  # noqa: PLC0415

    async def pools(reactor: Any) -> None:
        for workers in args["workers"]:
            result[f"pool_{workers}"] = await pool_run(reactor, command, workers, plan, window)

    try:
        task.react(lambda reactor: Deferred.fromCoroutine(pools(reactor)))
    except SystemExit as e:
        if e.code:
            raise
    return result


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
