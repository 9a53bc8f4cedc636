"""Annotations in a multipath run: responders are annotated when first seen, names never
delay a probe, hops are published again when a name comes, and the end waits a bounded
grace for lookups still out."""

from __future__ import annotations

import pytest
from mtrd.annotations.model import Annotation
from mtrd.engine.probe import Protocol
from mtrd.tracing.model import Hop, TraceMode, TraceRequest
from mtrd.tracing.multipath.run import MultipathOutcome, MultipathRun, MultipathSettings
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogEvent, globalLogPublisher

from tests.multipath_network import diamond
from tests.test_multipath_run import TARGET, SimulatedProber
from tests.test_runner_names import FakeAnnotator

FIRST_PORT = 20000


def start(
    clock: Clock, annotator: FakeAnnotator, hops: list[Hop], grace: float = 1.0
) -> tuple[SimulatedProber, Deferred[MultipathOutcome]]:
    prober = SimulatedProber(clock, diamond(2))
    run = MultipathRun(
        clock=clock,
        prober=prober,
        request=TraceRequest(TARGET, protocol=Protocol.UDP, mode=TraceMode.MULTIPATH),
        address=TARGET,
        first_local_port=FIRST_PORT,
        on_hop=lambda hop: hops.append(hop.snapshot()),
        settings=MultipathSettings(name_grace=grace),
        annotator=annotator,
    )
    return prober, run.start()


def annotations(hop: Hop) -> dict[str, Annotation | None]:
    return {r.address: r.annotation for r in hop.responders}


def test_each_responder_is_annotated_once_when_first_seen() -> None:
    """Every address found is asked about exactly once, however many flows reach it."""
    clock, annotator, hops = Clock(), FakeAnnotator(), []
    prober, _ = start(clock, annotator, hops)
    clock.pump([0.01] * 500)
    assert sorted(annotator.asked) == sorted(set(prober.addresses.values()))
    assert len(prober.sent) > len(annotator.asked)


def test_what_is_known_at_once_comes_with_the_reply() -> None:
    """The AS known at once is in the hop published for a responder's first reply."""
    clock, annotator, hops = Clock(), FakeAnnotator(), []
    start(clock, annotator, hops)
    clock.advance(0.01)
    assert hops
    assert set(annotations(hops[0]).values()) == {Annotation(asn=64500)}


def test_probing_never_waits_for_names() -> None:
    """With every name still out, the discovery sends as many probes as without names."""
    clock, annotator, hops = Clock(), FakeAnnotator(), []
    with_names, _ = start(clock, annotator, hops)
    clock.pump([0.01] * 500)
    plain_clock = Clock()
    plain = SimulatedProber(plain_clock, diamond(2))
    MultipathRun(
        clock=plain_clock,
        prober=plain,
        request=TraceRequest(TARGET, protocol=Protocol.UDP, mode=TraceMode.MULTIPATH),
        address=TARGET,
        first_local_port=FIRST_PORT,
    ).start()
    plain_clock.pump([0.01] * 500)
    assert [(p.ttl, p.local_port) for p in with_names.sent] == [
        (p.ttl, p.local_port) for p in plain.sent
    ]


def test_a_name_that_comes_publishes_the_hop_again() -> None:
    """When a responder's name arrives, its hop is published again with the name."""
    clock, annotator, hops = Clock(), FakeAnnotator(), []
    start(clock, annotator, hops)
    clock.pump([0.01] * 500)
    address = annotations(hops[0]).popitem()[0]
    before = len(hops)
    annotator.name(address, "gw.example.net")
    assert len(hops) == before + 1
    assert annotations(hops[-1])[address] == Annotation(hostname="gw.example.net", asn=64500)


def test_the_end_waits_for_names_within_the_grace() -> None:
    """Discovery over with names out: the outcome waits, then fires once the last one comes."""
    clock, annotator, hops = Clock(), FakeAnnotator(), []
    _, done = start(clock, annotator, hops, grace=5.0)
    clock.pump([0.01] * 300)
    assert not done.called
    for address in list(annotator.pending):
        annotator.name(address, f"n{address.replace('.', '-')}.example")
    assert done.called
    outcome: MultipathOutcome = done.result  # type: ignore[attr-defined]
    named = {r.annotation.hostname for h in outcome.hops for r in h.responders if r.annotation}
    assert "n198-51-100-1.example" in named


def test_the_grace_is_bounded() -> None:
    """A name that never comes holds the end for ``name_grace`` seconds, no more."""
    clock, annotator, hops = Clock(), FakeAnnotator(), []
    last_answer: list[float] = []
    _, done = start(clock, annotator, hops, grace=1.0)
    while not done.called:
        published = len(hops)
        clock.advance(0.01)
        if len(hops) > published:
            last_answer.append(clock.seconds())
    # The discovery ended with its last answer; the outcome came a grace later.
    assert clock.seconds() - last_answer[-1] == pytest.approx(1.0, abs=0.011)
    outcome: MultipathOutcome = done.result  # type: ignore[attr-defined]
    assert outcome.error is None
    assert not outcome.cancelled
    assert all(r.annotation == Annotation(asn=64500) for h in outcome.hops for r in h.responders)


def test_cancelling_during_the_grace_ends_at_once_as_completed() -> None:
    """Cancelling a run that only waits for names fires its outcome at once, not cancelled."""
    clock, annotator, hops = Clock(), FakeAnnotator(), []
    _, done = start(clock, annotator, hops, grace=5.0)
    clock.pump([0.01] * 300)
    assert not done.called
    done.cancel()
    assert done.called
    outcome: MultipathOutcome = done.result  # type: ignore[attr-defined]
    assert not outcome.cancelled
    assert outcome.multipath.stop_reason == "destination"


def test_a_lookup_that_fails_is_logged_and_ends_the_wait() -> None:
    """A lookup failing unexpectedly is logged; the outcome does not wait for it."""
    clock, annotator, hops = Clock(), FakeAnnotator(), []
    logged: list[LogEvent] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        _, done = start(clock, annotator, hops, grace=5.0)
        clock.pump([0.01] * 300)
        assert not done.called
        failing = list(annotator.pending)
        for address in failing[1:]:
            annotator.name(address, None)
        annotator.pending.pop(failing[0]).errback(RuntimeError("resolver broke"))
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert done.called
    failures = [e for e in logged if e.get("log_failure") is not None]
    assert [e["address"] for e in failures] == [failing[0]]
    assert failures[0]["log_failure"].check(RuntimeError)
