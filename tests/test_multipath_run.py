"""A multipath trace over the probe pool's interface, against a simulated network."""

from __future__ import annotations

from typing import Any

from mtrd.engine.probe import ProbeReply, ProbeRequest, Protocol, ReplyKind
from mtrd.tracing.model import (
    Hop,
    Stop,
    StopReason,
    Trace,
    TraceMode,
    TraceRequest,
    TraceStatus,
)
from mtrd.tracing.multipath.discovery import FlowProbe
from mtrd.tracing.tracer import LOCAL_PORT_RANGE, Tracer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from tests.multipath_network import DESTINATION, Network, diamond, nested
from tests.test_jobs import StaticResolver

TARGET = "203.0.113.7"


class SimulatedProber:
    """Answers udp probes as ``network`` would route them, the flow being the source port."""

    def __init__(self, clock: Clock, network: Network, *, silent: bool = False) -> None:
        self.clock = clock
        self.network = network
        self.silent = silent  # never answer at all
        self.sent: list[ProbeRequest] = []
        self.first_port: int | None = None
        names = sorted({r for rs in network.interfaces().values() for r in rs} - {DESTINATION})
        self.addresses = {name: f"198.51.100.{i + 1}" for i, name in enumerate(names)}
        self.addresses[DESTINATION] = TARGET

    def probe(self, request: ProbeRequest) -> Deferred[ProbeReply]:
        self.sent.append(request)
        result: Deferred[ProbeReply] = Deferred()
        if self.silent:
            return result
        assert request.local_port is not None
        # Flows are numbered from the trace's first source port (flow 0 goes first), so
        # the routes do not depend on which block of ports the tracer drew.
        if self.first_port is None:
            self.first_port = request.local_port
        flow = request.local_port - self.first_port
        answer = self.network.answer(FlowProbe(flow, request.ttl), seed=11)
        assert answer is not None
        kind = ReplyKind.REPLY if answer.address == DESTINATION else ReplyKind.TTL_EXPIRED
        reply = ProbeReply(kind, self.addresses[answer.address], 4, 1500)
        self.clock.callLater(0.002, result.callback, reply)
        return result

    def address_links(self) -> set[tuple[int, str, str]]:
        return {(t, self.addresses[a], self.addresses[b]) for t, a, b in self.network.links()}


def _trace(prober: SimulatedProber, clock: Clock, **request: Any) -> tuple[Trace, list[Hop]]:
    tracer = Tracer(clock, prober, StaticResolver())  # type: ignore[arg-type]
    hops: list[Hop] = []
    done: list[Trace] = []
    tracer.trace(
        TraceRequest(TARGET, protocol=Protocol.UDP, mode=TraceMode.MULTIPATH, **request),
        on_hop=hops.append,
    ).addCallback(done.append)
    clock.pump([0.01] * 2000)
    return done[0], hops


def test_a_multipath_trace_finds_every_router_of_a_nested_diamond() -> None:
    """Every interface of the network shows in the hops, and the trace completes."""
    clock = Clock()
    prober = SimulatedProber(clock, nested(2, 2))
    trace, _ = _trace(prober, clock)
    assert trace.status is TraceStatus.COMPLETED
    found = {hop.ttl: {r.address for r in hop.responders} for hop in trace.hops}
    expected = {
        ttl: {prober.addresses[r] for r in routers}
        for ttl, routers in prober.network.interfaces().items()
    }
    assert found == expected
    assert trace.destination_reached


def test_links_of_a_multipath_trace_match_the_network() -> None:
    """The links learned from flows are links of the network, every one of them."""
    clock = Clock()
    prober = SimulatedProber(clock, diamond(4))
    trace, _ = _trace(prober, clock)
    assert trace.multipath is not None
    links = {(link.ttl, link.source, link.to) for link in trace.multipath.links}
    assert links == prober.address_links()
    assert trace.multipath.stop_reason == "destination"
    assert trace.stop_reason == Stop(StopReason.DESTINATION)


def test_every_flow_keeps_its_udp_ports() -> None:
    """All probes are IPv4 udp to one port, each flow's source port fixed and below the
    sequence range."""
    clock = Clock()
    prober = SimulatedProber(clock, diamond(3))
    trace, _ = _trace(prober, clock)
    assert {(p.protocol, p.port, p.ip_version) for p in prober.sent} == {(Protocol.UDP, 33434, 4)}
    low, high = LOCAL_PORT_RANGE
    assert all(p.local_port is not None and low <= p.local_port <= high for p in prober.sent)
    assert trace.multipath is not None
    for flow in trace.multipath.flows:
        ports = {p.local_port for p in prober.sent if p.local_port == flow.local_port}
        assert len(ports) == 1
    assert len({f.local_port for f in trace.multipath.flows}) == len(trace.multipath.flows)
    assert trace.multipath.probes_sent == len(prober.sent)


def test_hop_events_stream_as_interfaces_are_found() -> None:
    """on_hop sees each interface of a diamond before the trace ends."""
    clock = Clock()
    prober = SimulatedProber(clock, diamond(4))
    trace, hops = _trace(prober, clock)
    seen = {r.address for hop in hops for r in hop.responders}
    assert seen == {r.address for hop in trace.hops for r in hop.responders}
    assert len(hops) == len(prober.sent)


def test_a_multipath_trace_without_answers_ends_at_its_deadline() -> None:
    """A pool that never answers makes the trace fail with a deadline error."""
    clock = Clock()
    prober = SimulatedProber(clock, diamond(2), silent=True)
    tracer = Tracer(clock, prober, StaticResolver())  # type: ignore[arg-type]
    done: list[Trace] = []
    tracer.trace(TraceRequest(TARGET, protocol=Protocol.UDP, mode=TraceMode.MULTIPATH)).addCallback(
        done.append
    )
    clock.pump([1.0] * 600)
    assert done[0].status is TraceStatus.FAILED
    assert done[0].error is not None
    assert done[0].error.type == "deadline"
    assert done[0].multipath is not None
    assert done[0].multipath.stop_reason == "deadline"


def test_cancelling_a_multipath_trace_keeps_what_it_found() -> None:
    """A cancelled multipath trace ends cancelled, with stop_reason cancelled."""
    clock = Clock()
    prober = SimulatedProber(clock, diamond(4))
    tracer = Tracer(clock, prober, StaticResolver())  # type: ignore[arg-type]
    done: list[Trace] = []
    running = tracer.trace(TraceRequest(TARGET, protocol=Protocol.UDP, mode=TraceMode.MULTIPATH))
    running.addCallback(done.append)
    clock.pump([0.01] * 5)
    running.cancel()
    assert done[0].status is TraceStatus.CANCELLED
    assert done[0].multipath is not None
    assert done[0].multipath.stop_reason == "cancelled"
    assert done[0].hops
