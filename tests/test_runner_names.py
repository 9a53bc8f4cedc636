"""Annotations in a trace run: names never delay probes, hops are published again when a
name comes, and the end waits a bounded grace for lookups still out."""

from __future__ import annotations

import gc
import weakref
from typing import Any

from mtrd.annotations.model import Annotation, Sources
from mtrd.tracing.jobs import TraceJobs
from mtrd.tracing.model import Hop, Responder, Trace, TraceRequest, TraceStatus, TraceTarget
from mtrd.tracing.rounds import RunOutcome, RunSettings, TraceRun
from mtrd.tracing.store import TraceStore
from mtrd.tracing.tracer import Tracer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from tests.fakes import FakeNetwork
from tests.test_jobs import StaticResolver

ROUTERS = ["198.51.100.1", "198.51.100.6"]
TARGET = "203.0.113.7"


class FakeAnnotator:
    """Knows each address's AS at once; its name comes when the test says."""

    def __init__(self) -> None:
        self.pending: dict[str, Deferred[Annotation]] = {}
        self.asked: list[str] = []

    def annotate(self, address: str) -> tuple[Annotation, Deferred[Annotation] | None]:
        self.asked.append(address)
        later: Deferred[Annotation] = Deferred()
        self.pending[address] = later
        return Annotation(asn=64500), later

    def name(self, address: str, hostname: str | None) -> None:
        self.pending.pop(address).callback(Annotation(hostname=hostname, asn=64500))


def start(
    clock: Clock, annotator: FakeAnnotator, hops: list[Any], grace: float = 1.0
) -> tuple[FakeNetwork, Deferred[RunOutcome]]:
    network = FakeNetwork(clock, ROUTERS)
    run = TraceRun(
        clock=clock,
        prober=network,
        request=TraceRequest(TARGET, probes=2, interval=1.0, timeout=2),
        address=TARGET,
        on_hop=lambda hop: hops.append(hop.snapshot()),
        settings=RunSettings(name_grace=grace),
        annotator=annotator,
    )
    return network, run.start()


def responder(hop: Hop) -> Responder:
    return hop.responders[0]


def test_each_address_is_annotated_once_when_first_seen() -> None:
    """Every reply from a known address reuses its annotation: one ask per address."""
    clock, annotator, hops = Clock(), FakeAnnotator(), []
    start(clock, annotator, hops)
    clock.pump([0.05] * 60)
    assert sorted(annotator.asked) == sorted([*ROUTERS, TARGET])


def test_what_is_known_at_once_comes_with_the_reply() -> None:
    """The AS known at once is in the hop published for the first reply."""
    clock, annotator, hops = Clock(), FakeAnnotator(), []
    start(clock, annotator, hops)
    clock.advance(0.01)
    assert hops
    first = hops[0]
    assert responder(first).annotation == Annotation(asn=64500)


def test_probing_never_waits_for_names() -> None:
    """With every name still out, all rounds are sent on time."""
    clock, annotator, hops = Clock(), FakeAnnotator(), []
    network, _ = start(clock, annotator, hops)
    clock.pump([0.05] * 30)
    assert len(network.sent) == 2 * 3


def test_a_name_that_comes_publishes_the_hop_again() -> None:
    """When a router's name arrives, its hop is published again with the name."""
    clock, annotator, hops = Clock(), FakeAnnotator(), []
    start(clock, annotator, hops)
    clock.advance(0.5)
    before = len(hops)
    annotator.name(ROUTERS[0], "gw.example.net")
    assert len(hops) == before + 1
    named = hops[-1]
    assert named.ttl == 1
    assert responder(named).annotation == Annotation(hostname="gw.example.net", asn=64500)


def test_the_end_waits_for_names_still_out_within_the_grace() -> None:
    """Probing over with names out: the outcome waits, then fires with them as they come."""
    clock, annotator, hops = Clock(), FakeAnnotator(), []
    _, done = start(clock, annotator, hops, grace=1.0)
    clock.pump([0.05] * 40)  # both rounds answered by 1.68 s
    assert not done.called
    for address in [*ROUTERS, TARGET]:
        annotator.name(address, f"n{address.replace('.', '-')}.example")
    assert done.called
    outcome: RunOutcome = done.result  # type: ignore[attr-defined]
    assert responder(outcome.hops[0]).annotation is not None
    assert responder(outcome.hops[0]).annotation.hostname == "n198-51-100-1.example"  # type: ignore[union-attr]


def test_the_grace_is_bounded() -> None:
    """A name that never comes holds the end for ``name_grace`` seconds, no more."""
    clock, annotator, hops = Clock(), FakeAnnotator(), []
    _, done = start(clock, annotator, hops, grace=1.0)
    clock.pump([0.05] * 40)  # the last reply came at 1.68 s: probing is over
    assert not done.called
    clock.advance(1.0)
    assert done.called
    outcome: RunOutcome = done.result  # type: ignore[attr-defined]
    assert responder(outcome.hops[0]).annotation == Annotation(asn=64500)


def test_cancelling_during_the_grace_ends_at_once() -> None:
    """Cancelling a run that only waits for names fires its outcome at once."""
    clock, annotator, hops = Clock(), FakeAnnotator(), []
    _, done = start(clock, annotator, hops, grace=5.0)
    clock.pump([0.05] * 40)
    done.cancel()
    assert done.called
    outcome: RunOutcome = done.result  # type: ignore[attr-defined]
    assert not outcome.cancelled  # probing had completed


def test_a_name_after_the_end_is_still_published() -> None:
    """A name that comes after the grace still reaches ``on_hop``."""
    clock, annotator, hops = Clock(), FakeAnnotator(), []
    _, done = start(clock, annotator, hops, grace=0.5)
    clock.pump([0.05] * 60)
    assert done.called
    annotator.name(ROUTERS[1], "late.example")
    assert responder(hops[-1]).annotation == Annotation(hostname="late.example", asn=64500)


def test_no_annotator_leaves_responders_bare() -> None:
    """Without an annotator, responders carry no annotation and nothing waits."""
    clock = Clock()
    network = FakeNetwork(clock, ROUTERS)
    run = TraceRun(
        clock=clock,
        prober=network,
        request=TraceRequest(TARGET, probes=1, interval=1.0),
        address=TARGET,
    )
    done = run.start()
    clock.pump([0.05] * 20)
    outcome: RunOutcome = done.result  # type: ignore[attr-defined]
    assert all(r.annotation is None for h in outcome.hops for r in h.responders)


def test_a_late_name_updates_the_stored_final_trace_and_its_version() -> None:
    """The memory store's final trace takes a late name, and its version (ETag) moves."""
    clock = Clock()
    store = TraceStore(clock)
    record = store.add(
        Trace("t", TraceStatus.COMPLETED, TraceRequest(TARGET), TraceTarget(TARGET, TARGET, 4), 0.0,
              hops=(Hop(1, (Responder(ROUTERS[0], 1, (), Annotation(asn=64500)),), 1, 1),)),
        retry_after=lambda: 1,
    )  # fmt: skip
    jobs = TraceJobs(None, store)  # type: ignore[arg-type]
    version = record.version
    named = Hop(1, (Responder(ROUTERS[0], 1, (), Annotation("gw.example.net", asn=64500)),), 1, 1)
    jobs._late_hop(weakref.ref(record), named)
    assert record.trace.hops[0] == named
    assert record.version > version


class SourcedAnnotator(FakeAnnotator):
    """A FakeAnnotator that also says which databases it reads (none), as the tracer asks."""

    def sources(self) -> Sources:
        return Sources()


def test_a_name_after_the_end_reaches_the_stored_trace_through_the_jobs() -> None:
    """A name that comes after the grace goes into the stored final trace: its version
    moves, and a subscriber who comes after the end gets it."""
    clock, annotator = Clock(), SourcedAnnotator()
    tracer = Tracer(
        clock,
        FakeNetwork(clock, ROUTERS),  # type: ignore[arg-type]
        StaticResolver(),  # type: ignore[arg-type]
        settings=RunSettings(name_grace=0.5),
        annotator=annotator,  # type: ignore[arg-type]
    )
    store = TraceStore(clock)
    record = TraceJobs(tracer, store).submit(TraceRequest(TARGET, probes=1, interval=0))
    clock.pump([0.05] * 40)
    assert record.trace.status is TraceStatus.COMPLETED
    version = record.version
    annotator.name(ROUTERS[0], "gw.example.net")
    assert responder(record.trace.hops[0]).annotation == Annotation("gw.example.net", asn=64500)
    assert record.version > version
    (done,) = record.channel.replay(None)
    assert done.value.hops[0] == record.trace.hops[0]  # type: ignore[union-attr]


def test_a_failing_annotation_does_not_hold_the_end() -> None:
    """A lookup Deferred that fails is logged and no longer waited for."""
    clock, annotator, hops = Clock(), FakeAnnotator(), []
    _, done = start(clock, annotator, hops, grace=5.0)
    clock.pump([0.05] * 40)
    for address in [*ROUTERS, TARGET]:
        annotator.pending.pop(address).errback(RuntimeError("annotator bug"))
    assert done.called


def _freed_without_collection(grace: float, name_after: bool) -> bool:
    """Whether the run is gone once nothing outside holds it, with collection off: a run
    that held a cycle through its lookups would wait for a full collection, and under
    load those runs were most of what collections found."""
    clock, annotator = Clock(), FakeAnnotator()
    gc.collect()
    gc.disable()
    try:
        network = FakeNetwork(clock, ROUTERS)
        run = TraceRun(
            clock=clock,
            prober=network,
            request=TraceRequest(TARGET, probes=1, interval=0, timeout=2),
            address=TARGET,
            settings=RunSettings(name_grace=grace),
            annotator=annotator,
        )
        gone = weakref.ref(run)
        done = run.start()
        del run
        clock.pump([0.05] * 10)
        if not name_after:
            for address in list(annotator.pending):
                annotator.name(address, None)
        clock.pump([0.5] * 4)
        assert done.called
        if name_after:
            for address in list(annotator.pending):
                annotator.name(address, None)
        del done
        return gone() is None
    finally:
        gc.enable()


def test_a_finished_run_leaves_no_cycle() -> None:
    """Names in before the end, or after the grace: either way the run is freed at once."""
    assert _freed_without_collection(grace=1.0, name_after=False)
    assert _freed_without_collection(grace=0.5, name_after=True)
