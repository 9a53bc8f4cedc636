"""The library entry point: a trace end to end over a fake network, hops as values."""

from __future__ import annotations

from typing import Any

from mtrd.tracing.model import Hop, LiveHop, Trace, TraceRequest, TraceStatus
from mtrd.tracing.policy import TargetPolicy, parse_networks
from mtrd.tracing.resolution import TargetResolver
from mtrd.tracing.tracer import Tracer
from twisted.internet.task import Clock

from tests.fakes import FakeNetwork
from tests.test_http import StaticResolver
from tests.test_resolve import FakeNames

ROUTERS = ["198.51.100.1", "198.51.100.6"]


def test_library_callers_get_hop_values_and_the_service_gets_live_hops() -> None:
    """``on_hop`` gets frozen values (safe to keep); ``on_live_hop`` the live figures."""
    clock = Clock()
    tracer = Tracer(clock, FakeNetwork(clock, ROUTERS), StaticResolver())  # type: ignore[arg-type]
    values: list[Hop] = []
    live: list[LiveHop] = []
    done: list[Any] = []
    d = tracer.trace(
        TraceRequest("203.0.113.7", probes=2, interval=0.0, max_ttl=4),
        on_hop=values.append,
        on_live_hop=live.append,
    )
    d.addCallback(done.append)
    clock.pump([0.01] * 10)
    trace = done[0]
    assert isinstance(trace, Trace)
    assert trace.status is TraceStatus.COMPLETED
    assert len(values) == len(live) > 0
    assert all(isinstance(v, Hop) for v in values)
    first_ttl3 = next(v for v in values if v.ttl == 3)
    assert first_ttl3.received == 1  # a value keeps the figures of its moment
    assert next(h for h in trace.hops if h.ttl == 3).received == 2


def test_dns_answer_embedding_a_denied_ipv4_address_is_refused() -> None:
    """An AAAA answer in NAT64 form is judged by the IPv4 address it carries."""
    clock = Clock()
    names = FakeNames(aaaa=["64:ff9b::198.51.100.9"])
    tracer = Tracer(
        clock,
        FakeNetwork(clock, ROUTERS),  # type: ignore[arg-type]
        TargetResolver(names),  # type: ignore[arg-type]
        policy=TargetPolicy(deny=parse_networks("198.51.100.0/24")),
    )
    done: list[Any] = []
    tracer.trace(TraceRequest("nat64.test", ip_version=6, probes=1, max_ttl=2)).addCallback(
        done.append
    )
    clock.pump([0.01] * 5)
    trace = done[0]
    assert trace.status is TraceStatus.FAILED
    assert trace.error.type == "forbidden-target"
    assert "deny 198.51.100.0/24 (embeds 198.51.100.9)" in trace.error.message
