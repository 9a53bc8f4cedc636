"""Multipath discovery through the real mtr-packet, in the multipath namespace lab."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import pytest_twisted
from mtrd.engine.pool import PoolConfig, ProbePool
from mtrd.engine.probe import Protocol
from mtrd.tracing.model import Trace, TraceMode, TraceRequest, TraceStatus
from mtrd.tracing.tracer import Tracer
from twisted.internet import reactor as global_reactor
from twisted.internet.task import deferLater

from tests.lab.fixtures import require_lab
from tests.lab.multipath import TARGET, MultipathLab, expected_hops, expected_links
from tests.test_jobs import StaticResolver

pytestmark = pytest.mark.lab

reactor: Any = global_reactor


@pytest.fixture(scope="module")
def multipath_lab() -> Iterator[MultipathLab]:
    """The multipath lab for this module's tests."""
    require_lab()
    with MultipathLab() as lab:
        yield lab


@asynccontextmanager
async def running_pool(lab: MultipathLab, size: int = 2) -> AsyncIterator[ProbePool]:
    """A pool of mtr-packet processes in the lab's client namespace, spread over all."""
    pool = ProbePool(
        reactor,
        PoolConfig(size=size, command=(*lab.netns_exec("mc"), "mtr-packet"), spread_above=0),
    )
    await pool.start()
    try:
        for _ in range(100):
            if pool.ready_workers == size:
                break
            await deferLater(reactor, 0.02, lambda: None)
        yield pool
    finally:
        await pool.stop()


async def _multipath(lab: MultipathLab, confidence: int) -> Trace:
    async with running_pool(lab) as pool:
        tracer = Tracer(reactor, pool, StaticResolver(TARGET), source_ipv4=lab.client_address)
        request = TraceRequest(
            TARGET,
            protocol=Protocol.UDP,
            mode=TraceMode.MULTIPATH,
            confidence=confidence,
            max_ttl=10,
            timeout=1,
        )
        return await tracer.trace(request)


@pytest_twisted.ensureDeferred
async def test_ipv4_udp_multipath_finds_every_router_of_the_wide_and_nested_stages(
    multipath_lab: MultipathLab,
) -> None:
    """At 99% confidence every router of the 4-wide stage and of the nested diamond is
    found, with every link of the topology, and the trace ends at the destination."""
    trace = await _multipath(multipath_lab, 99)
    assert trace.status is TraceStatus.COMPLETED, trace.error
    found = {hop.ttl: frozenset(r.address for r in hop.responders) for hop in trace.hops}
    assert found == expected_hops()
    assert trace.multipath is not None
    assert {(k.ttl, k.source, k.to) for k in trace.multipath.links} == expected_links()
    assert trace.multipath.stop_reason == "destination"
    assert trace.destination_reached


@pytest_twisted.ensureDeferred
async def test_ipv4_udp_multipath_at_95_finds_only_what_is_there(
    multipath_lab: MultipathLab,
) -> None:
    """At 95% (which may miss an interface now and then, as the rule allows) no interface
    is found that is not in the topology, and the trace ends at the destination. Every link
    found is in the topology too, unless an interface of its hop went unfound: a hop seen
    with one interface is taken to be crossed by every flow, as MDA takes it (the property
    test in tests/test_multipath.py checks the same rule on thousands of simulated runs)."""
    trace = await _multipath(multipath_lab, 95)
    assert trace.status is TraceStatus.COMPLETED, trace.error
    expected = expected_hops()
    found = {hop.ttl: {r.address for r in hop.responders} for hop in trace.hops}
    for ttl, addresses in found.items():
        assert addresses <= expected[ttl]
    assert trace.multipath is not None
    links = {(k.ttl, k.source, k.to) for k in trace.multipath.links}
    for ttl, source, to in links - expected_links():
        assert found[ttl] < expected[ttl], (ttl, source, to)
    assert trace.multipath.stop_reason == "destination"


@pytest_twisted.ensureDeferred
async def test_each_flow_keeps_one_path_through_the_load_balancers(
    multipath_lab: MultipathLab,
) -> None:
    """A flow probed at consecutive TTLs only ever shows links of the topology: no reply
    went to another flow's probe, and no flow changed path."""
    trace = await _multipath(multipath_lab, 95)
    assert trace.multipath is not None
    links = expected_links()
    for flow in trace.multipath.flows:
        answered = [h for h in flow.hops if h.address is not None]
        for before, after in itertools.pairwise(answered):
            if after.ttl == before.ttl + 1 and before.address != TARGET:
                assert (before.ttl, before.address, after.address) in links
