"""Soak: thousands of traces against mtrd in the lab, with cancels and subscribers coming and going.

Afterwards nothing is stuck (no running trace, no pending probe, no subscriber) and the
server's resident memory is back near its baseline. MTRD_SOAK_SECONDS sets the length
(default 180); the figures are written to the test log and to soak-report.json in the
pytest temporary directory.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import deferLater

from tests.lab import Lab
from tests.mtrd_process import lab_mtrd

pytestmark = pytest.mark.lab
reactor: Any = global_reactor
SOAK_SECONDS = float(os.environ.get("MTRD_SOAK_SECONDS", "180"))
LANES = 24
STORE_TTL = 5


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            head = line.split(" ")[0]
            if head == name or head.startswith(name + "{"):
                total += float(line.split(" ")[-1])
    return total


class Soak:
    """The load: lanes that start traces and then poll, watch, or cancel them."""

    def __init__(self, lab: Lab, url: str, seed: int) -> None:
        self.lab = lab
        self.url = url
        self.random = random.Random(seed)
        self.counts = {"started": 0, "cancelled": 0, "watched": 0, "polled": 0, "refused": 0}
        self.errors: list[str] = []

    def request(self) -> dict[str, Any]:
        r = self.random
        family = r.choice([4, 4, 6])
        target = r.choice(
            [*self.lab.targets(family)[:40], self.lab.blackhole_target(family),
             self.lab.unreachable_target(family)]
        )  # fmt: skip
        protocol = r.choice(["icmp", "icmp", "udp", "tcp"])
        body: dict[str, Any] = {
            "target": target,
            "protocol": protocol,
            "probes": r.randint(1, 3),
            "interval": r.choice([0, 0.05, 0.2]),
            "timeout": 1,
            "max_ttl": 8,
        }
        if protocol == "tcp":
            body["port"] = self.lab.open_tcp_port
        return body

    async def lane(self, until: float) -> None:
        while reactor.seconds() < until:
            try:
                await self.one()
            except Exception as e:
                self.errors.append(repr(e))

    async def one(self) -> None:
        response = await treq.post(f"{self.url}/traces", json=self.request())
        body = await response.json()
        if response.code == 429:
            self.counts["refused"] += 1
            await sleep(0.2)
            return
        assert response.code == 202, body
        self.counts["started"] += 1
        trace_id = body["id"]
        choice = self.random.random()
        if choice < 0.2:
            await sleep(self.random.uniform(0, 0.5))
            deleted = await treq.delete(f"{self.url}/traces/{trace_id}")
            await deleted.content()
            assert deleted.code in (200, 204, 404)
            self.counts["cancelled"] += 1
        elif choice < 0.5:
            await self.watch(trace_id, leave_early=self.random.random() < 0.5)
            self.counts["watched"] += 1
        else:
            await self.poll(trace_id)
            self.counts["polled"] += 1

    async def watch(self, trace_id: str, leave_early: bool) -> None:
        stream = await treq.get(f"{self.url}/traces/{trace_id}/events", unbuffered=True)
        if stream.code != 200:
            await stream.content()
            return
        if leave_early:
            await sleep(self.random.uniform(0, 0.3))
            stream.original._transport.loseConnection()  # the subscriber goes away
            return
        await treq.content(stream)

    async def poll(self, trace_id: str) -> None:
        for _ in range(300):
            response = await treq.get(f"{self.url}/traces/{trace_id}")
            body = await response.json()
            if response.code == 404 or body["status"] in ("completed", "failed", "cancelled"):
                return
            await sleep(0.1)
        raise AssertionError(f"trace {trace_id} still {body['status']} after 30 s")


async def scrape(url: str) -> str:
    response = await treq.get(f"{url}/metrics")
    return str((await response.content()).decode())


@pytest_twisted.ensureDeferred
async def test_soak_leaves_nothing_behind(lab: Lab, tmp_path: Path) -> None:
    """Thousands of traces later: nothing stuck, nothing pending, memory near its baseline."""
    flags = ["--store-ttl", str(STORE_TTL), "--max-running", "64"]
    with lab_mtrd(lab, tmp_path / "mtrd.log", *flags) as (url, server):
        warm = Soak(lab, url, seed=1)
        await DeferredList(
            [Deferred.fromCoroutine(warm.lane(reactor.seconds() + 5)) for _ in range(LANES)]
        )
        await sleep(STORE_TTL + 2)
        baseline = rss_kib(server.pid)
        soak = Soak(lab, url, seed=2)
        started = reactor.seconds()
        await DeferredList(
            [Deferred.fromCoroutine(soak.lane(started + SOAK_SECONDS)) for _ in range(LANES)]
        )
        peak = rss_kib(server.pid)
        await sleep(STORE_TTL + 3)  # every finished trace expires
        metrics = await scrape(url)
        listing = await treq.get(f"{url}/traces?limit=500")
        left = (await listing.json())["traces"]
        after = rss_kib(server.pid)
    report = {
        "seconds": SOAK_SECONDS,
        "counts": soak.counts,
        "rss_kib": {"baseline": baseline, "peak": peak, "after": after},
        "errors": soak.errors[:10],
    }
    (tmp_path / "soak-report.json").write_text(json.dumps(report, indent=2))
    print("soak report:", json.dumps(report))
    assert soak.errors == []
    assert soak.counts["started"] >= 2000 * SOAK_SECONDS / 180
    assert left == [], "traces remain after their expiry"
    for name in (
        "mtrd_traces_running",
        "mtrd_traces_queued",
        "mtrd_sse_subscribers",
        "mtrd_probes_queued",
        "mtrd_worker_outstanding_probes",
        "mtrd_traces_stored",
    ):
        assert metric(metrics, name) == 0, name
    assert after - baseline < 20 * 1024, report
