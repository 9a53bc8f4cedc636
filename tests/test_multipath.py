"""Multipath discovery: MDA's stopping rule, MDA-Lite and full MDA on simulated networks."""

from __future__ import annotations

import math

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mtrd.tracing.multipath.discovery import FlowProbe, MultipathDiscovery, StopReason
from mtrd.tracing.multipath.stopping import miss_probability, stopping_point

from tests.multipath_network import DESTINATION, Network, chain, diamond, nested, run, unequal

# n_k for k = 1..24 next hops seen: the 95% column as published by Augustin et al.
# (IMC 2006 and their e2emon report), the 99% column as computed for scamper's tracelb
# and libparistraceroute (the same table, shipped in both).
PUBLISHED_95 = [6, 11, 16, 21, 27, 33, 38, 44, 51, 57, 63, 70, 76, 83, 90, 96, 103, 110, 117,
                124, 131, 138, 145, 152]  # fmt: skip
PUBLISHED_99 = [8, 15, 21, 28, 36, 43, 51, 58, 66, 74, 82, 90, 98, 106, 115, 123, 132, 140,
                149, 157, 166, 175, 183, 192]  # fmt: skip
SEEDS = 300


def test_stopping_points_at_95_match_the_published_table() -> None:
    """n_k at 95% is the published table's column for k = 1..24."""
    assert [stopping_point(k, 95) for k in range(1, 25)] == PUBLISHED_95


def test_stopping_points_at_99_match_the_published_table() -> None:
    """n_k at 99% is the published table's column for k = 1..24."""
    assert [stopping_point(k, 99) for k in range(1, 25)] == PUBLISHED_99


@settings(deadline=None)
@given(st.integers(1, 30), st.sampled_from([95, 99]))
def test_stopping_point_is_the_least_that_meets_the_confidence(found: int, confidence: int) -> None:
    """n_k meets the confidence and n_k - 1 does not."""
    n = stopping_point(found, confidence)
    alpha = (100 - confidence) / 100
    assert miss_probability(found + 1, n) <= alpha < miss_probability(found + 1, n - 1)


def test_stopping_point_refuses_other_confidences() -> None:
    """Only 95 and 99 have a rule."""
    with pytest.raises(ValueError, match="confidence"):
        stopping_point(1, 90)


def test_a_single_path_costs_n1_probes_per_hop() -> None:
    """Without load balancing, each hop gets n_1 flows and the trace reaches the destination."""
    network = chain(["r1"], ["r2"])
    discovery = run(network, MultipathDiscovery(), seed=1)
    assert discovery.interfaces() == {1: ("r1",), 2: ("r2",), 3: (DESTINATION,)}
    assert discovery.probes_sent == 3 * stopping_point(1, 95)
    assert discovery.stop_reason is StopReason.DESTINATION


def test_links_follow_the_flows() -> None:
    """Links pair each interface with the next one on the same flow, and only real ones."""
    network = diamond(3)
    discovery = run(network, MultipathDiscovery(), seed=7)
    found = {(link.ttl, link.source, link.to) for link in discovery.links()}
    assert found <= network.links()
    assert {(1, "a", "d0"), (1, "a", "d1"), (1, "a", "d2")} <= found


def test_flows_keep_their_path() -> None:
    """A flow's answers at each TTL are the routers of its path in the network."""
    network = nested(2, 2)
    discovery = run(network, MultipathDiscovery(), seed=3)
    for flow, answers in discovery.flow_answers().items():
        path = network.path(flow, seed=3)
        for ttl, answer in answers.items():
            assert answer is not None
            assert answer.address == path[min(ttl, len(path)) - 1]


def test_mda_lite_spends_fewer_probes_than_full_mda_on_a_uniform_diamond() -> None:
    """Hop-level stopping saves node control's probes on a uniform, unmeshed diamond."""
    network = diamond(8)
    lite = sum(run(network, MultipathDiscovery(), s).probes_sent for s in range(50))
    full = sum(run(network, MultipathDiscovery(lite=False), s).probes_sent for s in range(50))
    assert lite < full


def test_mda_lite_stays_lite_on_an_unmeshed_diamond() -> None:
    """No fallback to full MDA where the diamond is uniform and unmeshed."""
    discovery = run(diamond(4), MultipathDiscovery(), seed=5)
    assert discovery.full_mda_hops == []


def test_mda_lite_falls_back_to_full_mda_on_meshing() -> None:
    """A fully meshed stage makes MDA-Lite switch to full MDA at that hop."""
    network = chain(["m1", "m2"], ["n1", "n2", "n3"])
    fallbacks = [run(network, MultipathDiscovery(), s).full_mda_hops for s in range(40)]
    assert sum(hops == [2] for hops in fallbacks) >= 36


def test_silent_hops_end_the_trace_at_the_gap_limit() -> None:
    """max_unknown silent hops in a row stop the discovery with gap_limit."""
    network = attrs.evolve(chain(*[[f"r{i}"] for i in range(8)]), silent=frozenset({"r2", "r3"}))
    discovery = run(network, MultipathDiscovery(max_unknown=2), seed=1)
    assert discovery.stop_reason is StopReason.GAP_LIMIT
    assert max(discovery.interfaces()) == 4


def test_a_silent_hop_is_crossed() -> None:
    """A hop where nothing answers is crossed and the routers after it are found."""
    network = attrs.evolve(chain(["r1"], ["q1", "q2"], ["r3"]), silent=frozenset({"q1", "q2"}))
    discovery = run(network, MultipathDiscovery(), seed=2)
    assert discovery.interfaces()[3] == ("r3",)
    assert discovery.stop_reason is StopReason.DESTINATION


def test_max_ttl_stops_the_discovery() -> None:
    """Nothing beyond max_ttl is probed."""
    discovery = run(chain(*[[f"r{i}"] for i in range(8)]), MultipathDiscovery(max_ttl=3), 1)
    assert discovery.stop_reason is StopReason.MAX_TTL
    assert max(discovery.interfaces()) == 3


def test_the_probe_budget_is_never_exceeded() -> None:
    """The discovery stops with probe_limit rather than send more than max_probes."""
    discovery = run(diamond(8), MultipathDiscovery(max_probes=40), seed=1)
    assert discovery.probes_sent == 40
    assert discovery.stop_reason is StopReason.PROBE_LIMIT


def test_a_batch_must_be_recorded_before_the_next() -> None:
    """Asking for a batch with probes still unrecorded is a programming error."""
    discovery = MultipathDiscovery()
    assert discovery.next_batch()
    with pytest.raises(RuntimeError, match="record"):
        discovery.next_batch()


def test_flows_are_distinct_in_a_batch() -> None:
    """No batch probes the same flow at the same TTL twice."""
    network = nested(3, 2)
    discovery = MultipathDiscovery()
    seen: set[FlowProbe] = set()
    while batch := discovery.next_batch():
        assert not seen & set(batch)
        assert len(set(batch)) == len(batch)
        seen.update(batch)
        for probe in batch:
            discovery.record(probe, network.answer(probe, 4))


def _topologies() -> st.SearchStrategy[Network]:
    widths = st.integers(2, 8)
    return st.one_of(
        widths.map(diamond),
        st.tuples(st.integers(2, 4), st.integers(2, 4)).map(lambda w: nested(*w)),
        st.tuples(st.integers(2, 3), st.integers(2, 4)).map(
            lambda w: chain([f"m{i}" for i in range(w[0])], [f"n{i}" for i in range(w[1])])
        ),
        st.just(unequal()),
    )


def _allowed_misses(alpha: float, runs: int) -> float:
    """Misses a rule that holds would exceed only by chance (three standard deviations)."""
    return alpha * runs + 3 * math.sqrt(runs * alpha * (1 - alpha))


@settings(
    max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(_topologies(), st.sampled_from([95, 99]), st.booleans())
def test_every_interface_is_found_as_often_as_the_confidence_promises(
    network: Network, confidence: int, lite: bool
) -> None:
    """Over many seeds, each interface is missed no more often than 1 - confidence allows."""
    misses: dict[tuple[int, str], int] = {}
    for seed in range(SEEDS):
        discovery = run(network, MultipathDiscovery(confidence=confidence, lite=lite), seed)
        found = discovery.interfaces()
        for ttl, routers in network.interfaces().items():
            for router in routers - set(found.get(ttl, ())):
                misses[ttl, router] = misses.get((ttl, router), 0) + 1
    allowed = _allowed_misses((100 - confidence) / 100, SEEDS)
    assert max(misses.values(), default=0) <= allowed, misses


@settings(max_examples=30, deadline=None)
@given(_topologies(), st.integers(0, 2**32))
def test_nothing_is_found_that_is_not_there(network: Network, seed: int) -> None:
    """Every interface found exists in the network, and the trace ends at it. Every link
    found exists too, unless an interface of its hop went unfound: a hop seen with one
    interface is taken to be crossed by every flow, as MDA takes it, which holds with the
    run's confidence (a 95 % run misses an interface now and then, and then links the
    flows first probed after that hop to the one interface it saw)."""
    discovery = run(network, MultipathDiscovery(), seed)
    truth = network.interfaces()
    found = discovery.interfaces()
    for ttl, routers in found.items():
        assert set(routers) <= truth[ttl]
    links = {(link.ttl, link.source, link.to) for link in discovery.links()}
    for ttl, source, to in links - network.links():
        assert set(found[ttl]) < truth[ttl], (ttl, source, to)
    assert discovery.stop_reason is StopReason.DESTINATION
