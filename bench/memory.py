"""Figure 5: resident memory per stored completed trace (30 hops, 10 probes per hop).

Run as its own process (``python -m bench.memory COUNT``) so RSS starts clean. Each trace
is built the way mtrd builds it: a queued snapshot added to a ``TraceStore`` (with its
``TraceChannel``), hop figures from ``HopAccumulator`` fed 10 probes per TTL with 1-2
responders (ECMP at TTL 2-29, fresh address strings as the reply parser makes them), the
final snapshot stored with ``update`` (which arms its expiry timer), then ``publish_status``
and ``publish_done`` as ``TraceJobs`` does. RSS from /proc/self/statm before and after
(after a gc), and tracemalloc's count of live Python allocations in a second, smaller pass.
"""

from __future__ import annotations

import gc
import json
import os
import random
import sys
import tracemalloc
from typing import Any

import attrs
from mtrd.tracing.model import Trace, TraceRequest, TraceStatus, TraceTarget
from mtrd.tracing.stats import HopAccumulator
from mtrd.tracing.store import StoreLimits, TraceStore
from mtrd.tracing.tracer import new_trace_id
from twisted.internet.task import Clock

HOPS = 30
PROBES = 10
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def completed_trace(rng: random.Random, index: int) -> Trace:
    target = f"203.0.{113 + index % 2}.{index % 250 + 1}"
    request = TraceRequest(target=target, max_ttl=HOPS, probes=PROBES, interval=1.0)
    hops = []
    for ttl in range(1, HOPS + 1):
        hop = HopAccumulator(ttl=ttl)
        responders = 2 if 1 < ttl < HOPS else 1
        for probe in range(PROBES):
            hop.record_sent()
            address = "".join(["198.51.", str(100 + probe % responders), ".", str(ttl)])
            hop.record_reply(address, rng.randint(100, 90_000))
        hops.append(hop.snapshot())
    now = 1_800_000_000.0 + index
    return Trace(
        id=new_trace_id(),
        status=TraceStatus.QUEUED,
        request=request,
        target=TraceTarget(input=target, address="".join(target), ip_version=4),
        created_at=now,
        started_at=now,
        finished_at=now + 10,
        destination_reached=True,
        hops=tuple(hops),
    )


def fill(count: int) -> TraceStore:
    clock = Clock()
    store = TraceStore(clock, StoreLimits(ttl=3600, max_traces=count + 1))
    store.startService()  # a running store, as in mtrd: every finished trace has its expiry
    rng = random.Random(7)  # noqa: S311 - reproducible figures, not secrets
    for i in range(count):
        built = completed_trace(rng, i)
        record = store.add(attrs.evolve(built, hops=(), finished_at=None), retry_after=lambda: 1)
        final = attrs.evolve(built, status=TraceStatus.COMPLETED, expires_at=clock.seconds() + 3600)
        store.update(record, final)
        record.channel.publish_status(final.status)
        record.channel.publish_done(final, later=record.full_trace)
    return store


def main(count: int) -> dict[str, Any]:
    gc.collect()
    before = rss()
    store = fill(count)
    gc.collect()
    after = rss()
    assert len(store) == count
    sample = max(1, count // 10)
    tracemalloc.start()
    gc.collect()
    snap_before = tracemalloc.get_traced_memory()[0]
    small = fill(sample)
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] - snap_before
    tracemalloc.stop()
    del small
    return {
        "stored": count,
        "hops": HOPS,
        "probes_per_hop": PROBES,
        "rss_before_mb": before / 1e6,
        "rss_after_mb": after / 1e6,
        "rss_bytes_per_trace": (after - before) / count,
        "tracemalloc_bytes_per_trace": traced / sample,
        "tracemalloc_sample": sample,
    }


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]))))
