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
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from tests.redis_support import wait_until
from tests.test_jobs import ROUTERS
from tests.test_redis_runner import SHORT, redis, runner, submit, wait_for  # noqa: F401

pytestmark = pytest.mark.redis


class SlowNames:
    """Each address's AS at once, its name 20 ms later."""

    def annotate(self, address: str) -> tuple[Annotation, Deferred[Annotation]]:
        later = deferLater(
            reactor,  # type: ignore[arg-type]
            0.02,
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
