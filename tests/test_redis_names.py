"""Annotations in Redis mode: a name that comes after a hop's figures goes through the
write-behind like any hop change, on a real redis-server."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from mtrd.annotations.model import Annotation, Sources
from mtrd.tracing.model import TraceStatus
from mtrd.tracing.redis.runner import RedisRunner
from mtrd.tracing.redis.store import RedisTraceStore
from mtrd.tracing.rounds import RunSettings
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from tests.redis_support import wait_until
from tests.test_jobs import ROUTERS
from tests.test_redis_runner import SHORT, redis, runner, submit, wait_for  # noqa: F401

pytestmark = pytest.mark.redis


class SlowNames:
    """Each address's AS at once, its name ``delay`` seconds later (20 ms unless told)."""

    def __init__(self, delay: float = 0.02) -> None:
        self.delay = delay

    def annotate(self, address: str) -> tuple[Annotation, Deferred[Annotation]]:
        later = deferLater(
            reactor,  # type: ignore[arg-type]
            self.delay,
            lambda: Annotation(hostname=f"h{address.replace('.', '-')}.example", asn=64500),
        )
        return Annotation(asn=64500), later

    def sources(self) -> Sources:
        return Sources()


@pytest_twisted.ensureDeferred
async def test_names_reach_redis_in_hop_events_and_the_final_trace(redis: Any) -> None:  # noqa: F811
    """The stored trace and its hop events carry the names that came after the figures."""
    r1: RedisRunner = runner(redis, "r1")
    r1._tracer.annotator = SlowNames()  # type: ignore[assignment]
    r1.startService()
    trace_id = await submit(redis, SHORT)
    final = await wait_for(redis, trace_id, TraceStatus.COMPLETED, 10)
    await wait_until(lambda: r1.running_traces == 0)
    await r1.stopService()
    first = final.hops[0].responders[0]
    assert first.address == ROUTERS[0]
    assert first.annotation == Annotation(hostname="h198-51-100-1.example", asn=64500)
    page = await RedisTraceStore(redis, reactor).events_after(trace_id, 0)  # type: ignore[arg-type]
    named = [
        e.value
        for e in page.events
        if e.kind == "hop"
        and any(r.annotation and r.annotation.hostname for r in e.value.responders)  # type: ignore[union-attr]
    ]
    assert named


@pytest_twisted.ensureDeferred
async def test_a_name_after_the_final_write_updates_the_stored_trace(redis: Any) -> None:  # noqa: F811
    """A name that comes after the end is in Redis rewrites the stored trace, a new version."""
    r1: RedisRunner = runner(redis, "r1")
    r1._tracer.annotator = SlowNames(delay=0.6)  # type: ignore[assignment]
    r1._tracer._settings = RunSettings(name_grace=0.05)
    r1.startService()
    store = RedisTraceStore(redis, reactor)  # type: ignore[arg-type]
    trace_id = await submit(redis, SHORT)
    final = await wait_for(redis, trace_id, TraceStatus.COMPLETED, 10)
    await wait_until(lambda: r1.running_traces == 0)
    assert final.hops[0].responders[0].annotation == Annotation(asn=64500)
    ended = await store.get(trace_id)
    assert ended is not None

    async def named() -> bool:
        stored = await store.get(trace_id)
        assert stored is not None
        return stored.trace.hops[0].responders[0].annotation == Annotation(
            hostname="h198-51-100-1.example", asn=64500
        )

    for _ in range(100):
        if await named():
            break
        await deferLater(reactor, 0.02, lambda: None)  # type: ignore[arg-type]
    await r1.stopService()
    late = await store.get(trace_id)
    assert late is not None
    assert await named()
    assert late.version > ended.version
    assert (late.trace.status, late.replica) == (TraceStatus.COMPLETED, "r1")
