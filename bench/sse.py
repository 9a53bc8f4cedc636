"""Figure 4: SSE fan-out: one trace, many subscribers, from the probe reply to each receipt.

mtrd runs with ``--max-running 1``. A blocker trace takes the running slot, so the measured
trace (``probes`` rounds, ``interval`` seconds apart, icmp, max_ttl 8) waits as queued while
``subscribers`` raw sockets open its /events stream; then the blocker is deleted and the
measured trace runs with every subscriber already attached. The subscribers live in this
process on one epoll loop that stamps each read with ``time.time()`` (the cost of the loop
itself is part of the figure, so it is an upper bound).

The probe replies are timed by tcpdump in the client namespace (kernel timestamps on the
client's interface, same wall clock): each ``hop`` event for TTL t with ``received`` n is
the n-th reply at TTL t (requests give seq -> TTL; time-exceeded quotes and echo replies
give seq -> reply time). Reported over the hop events:
``last_ms``: reply -> last subscriber holding the event (p50, p99 over events);
``spread_ms``: first -> last subscriber receipt of each event;
``all_ms``: reply -> receipt over every (event, subscriber) pair.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import select
import socket
import subprocess
import time
from collections import defaultdict
from typing import Any

from bench.common import (
    RESULTS,
    Connection,
    Profiler,
    Server,
    median,
    mtrd,
    percentile,
    raise_nofile,
)

_PACKET = re.compile(r"^(\d+\.\d+) IP \(.*?ttl (\d+),")
_ICMP = re.compile(
    r"ICMP (echo request|echo reply|time exceeded in-transit).*?(?:id (\d+), seq (\d+))?,"
)
_QUOTED = re.compile(r"ICMP echo request, id (\d+), seq (\d+)")


def reply_times(capture: str, target: str) -> dict[int, list[float]]:
    """TTL -> times of the replies to probes sent to ``target`` at that TTL, in order."""
    packets: list[list[str]] = []
    for line in capture.splitlines():
        if _PACKET.match(line):
            packets.append([line])
        elif packets:
            packets[-1].append(line)
    ttl_of: dict[tuple[str, str], int] = {}
    replies: dict[int, list[float]] = defaultdict(list)
    for lines in packets:
        head = _PACKET.match(lines[0])
        assert head is not None
        at, ttl = float(head.group(1)), int(head.group(2))
        text = "\n".join(lines[1:])
        if "time exceeded" in text or "echo reply" in text:
            match = _QUOTED.search(text) or re.search(r"echo reply, id (\d+), seq (\d+)", text)
            if match and (match.group(1), match.group(2)) in ttl_of:
                replies[ttl_of[match.group(1), match.group(2)]].append(at)
        elif "echo request" in text and f"> {target}:" in text:
            match = _QUOTED.search(text)
            if match:
                ttl_of[match.group(1), match.group(2)] = ttl
    return replies


class Subscribers:
    """``count`` raw event-stream readers on one epoll loop."""

    def __init__(self, port: int, trace_id: str, count: int) -> None:
        self.sockets: dict[int, socket.socket] = {}
        self.buffers: dict[int, bytes] = {}
        self.receipts: dict[int, dict[int, float]] = defaultdict(dict)  # event id -> fd -> time
        self.hops: dict[int, dict[str, Any]] = {}
        self.done: set[int] = set()
        self.poller = select.epoll()
        request = f"GET /traces/{trace_id}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(request)
            s.setblocking(False)
            self.sockets[s.fileno()] = s
            self.buffers[s.fileno()] = b""
            self.poller.register(s.fileno(), select.EPOLLIN)

    def pump(self, until: float, stop_when_done: bool = True) -> None:
        """Read whatever arrives until ``until`` (or every stream said ``done``)."""
        while time.monotonic() < until:
            if stop_when_done and len(self.done) == len(self.sockets):
                return
            for fd, _ in self.poller.poll(0.05):
                now = time.time()
                try:
                    data = self.sockets[fd].recv(1 << 16)
                except BlockingIOError:
                    continue
                if not data:
                    self.poller.unregister(fd)
                    self.done.add(fd)
                    continue
                self._parse(fd, self.buffers[fd] + data, now)

    def _parse(self, fd: int, buffer: bytes, now: float) -> None:
        *blocks, self.buffers[fd] = buffer.split(b"\n\n")
        for block in blocks:
            fields = dict(
                line.split(": ", 1) for line in block.decode().split("\n") if ": " in line
            )
            if "event" not in fields or "id" not in fields:
                continue
            event_id = int(fields["id"])
            self.receipts[event_id][fd] = now
            if fields["event"] == "hop" and event_id not in self.hops:
                self.hops[event_id] = json.loads(fields["data"])
            if fields["event"] == "done":
                self.done.add(fd)

    def close(self) -> None:
        self.poller.close()
        for s in self.sockets.values():
            with contextlib.suppress(OSError):
                s.close()


async def _post(server: Server, body: dict[str, Any]) -> str:
    connection = await Connection.open(server.port)
    try:
        status, _, answer = await connection.request("POST", "/traces", json.dumps(body).encode())
        if status != 202:
            raise RuntimeError(f"POST answered {status}: {answer[:200]!r}")
        return str(json.loads(answer)["id"])
    finally:
        connection.close()


async def _delete(server: Server, trace_id: str) -> None:
    connection = await Connection.open(server.port)
    try:
        await connection.request("DELETE", f"/traces/{trace_id}")
    finally:
        connection.close()


def run(
    lab: Any, subscribers: int, probes: int, interval: float, profile: bool = False
) -> dict[str, Any]:
    raise_nofile(subscribers + 1024)
    request = {"probes": probes, "interval": interval, "timeout": 1, "max_ttl": 8}
    flags = [
        "--max-running",
        "1",
        "--max-subscribers",
        str(subscribers + 100),
        "--max-subscribers-per-trace",
        str(subscribers + 100),
        # Every subscriber connects from 127.0.0.1.
        "--max-connections",
        str(subscribers + 100),
        "--max-connections-per-client",
        str(subscribers + 100),
    ]
    capture_path = RESULTS / ".sse.tcpdump"
    with mtrd(lab.netns_exec("c"), "sse", *flags) as server:
        target = lab.targets(4)[60]
        blocker = asyncio.run(
            _post(server, {"target": lab.targets(4)[61], "probes": 100, "interval": 1})
        )
        trace_id = asyncio.run(_post(server, {"target": target, **request}))
        fans = Subscribers(server.port, trace_id, subscribers)
        with capture_path.open("w") as capture_file:
            tcpdump = subprocess.Popen(
                [*lab.netns_exec("c"), "tcpdump", "-i", "to-r1", "-n", "-tt", "-v", "-l", "icmp"],
                stdout=capture_file,
                stderr=subprocess.DEVNULL,
            )
            try:
                fans.pump(time.monotonic() + 1.0, stop_when_done=False)  # everyone attached
                attached = sum(1 for fd in fans.sockets if fd not in fans.done)
                with Profiler(server.pid, RESULTS / ".sse.pyspy", enabled=profile) as profiler:
                    asyncio.run(_delete(server, blocker))
                    fans.pump(time.monotonic() + probes * interval + 15)
                time.sleep(0.3)
            finally:
                tcpdump.terminate()
                tcpdump.wait(timeout=10)
                fans.close()
    replies = reply_times(capture_path.read_text(), target)
    last, spread, every = [], [], []
    matched = 0
    for event_id, hop in sorted(fans.hops.items()):
        times = replies.get(hop["ttl"], [])
        n = hop["received"]
        receipts = list(fans.receipts[event_id].values())
        spread.append(max(receipts) - min(receipts))
        if hop["lost"] == 0 and 1 <= n <= len(times):
            matched += 1
            reply_at = times[n - 1]
            last.append(max(receipts) - reply_at)
            every += [r - reply_at for r in receipts]
    complete = sum(1 for e in fans.hops if len(fans.receipts[e]) == subscribers)
    ms = lambda values, q: percentile(values, q) * 1000  # noqa: E731
    return {
        "request": request,
        "subscribers": subscribers,
        "attached_before_start": attached,
        "hop_events": len(fans.hops),
        "hop_events_every_subscriber_got": complete,
        "hop_events_matched_to_reply": matched,
        "last_ms": {"p50": ms(last, 0.5), "p99": ms(last, 0.99), "max": ms(last, 1.0)},
        "spread_ms": {"p50": ms(spread, 0.5), "p99": ms(spread, 0.99)},
        "all_ms": {"p50": ms(every, 0.5), "p99": ms(every, 0.99)},
        "first_ms": {
            "p50": median([end - gap for end, gap in zip(last, spread, strict=True)]) * 1000
            if last
            else None
        },
        "profile": profiler.top() if profile else None,
    }
