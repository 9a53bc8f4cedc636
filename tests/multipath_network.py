"""A simulated load-balanced network for multipath discovery: flows routed by a hash.

Each router forwards a flow to one of its next hops, chosen by a hash of
(seed, router, flow), as a per-flow ECMP router does: the same flow always takes
the same way, different flows spread evenly. A probe with TTL t is answered by
the router the flow reaches after t hops, or by the destination if the flow got
there first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import attrs
from mtrd.tracing.model import HopEnd
from mtrd.tracing.multipath.discovery import Answer, FlowProbe, MultipathDiscovery

DESTINATION = "dst"


@attrs.frozen
class Network:
    """Routers and their next hops; ``start`` is what the source sends to."""

    start: tuple[str, ...]
    next_hops: Mapping[str, tuple[str, ...]]
    destination: str = DESTINATION
    silent: frozenset[str] = frozenset()  # routers that never answer

    def path(self, flow: int, seed: int) -> list[str]:
        """Every router ``flow`` crosses, ending with the destination."""
        hops = [self._pick(self.start, "source", flow, seed)]
        while hops[-1] != self.destination:
            hops.append(self._pick(self.next_hops[hops[-1]], hops[-1], flow, seed))
        return hops

    def answer(self, probe: FlowProbe, seed: int) -> Answer | None:
        """What a probe of ``probe.flow`` with ``probe.ttl`` hears back (None: nothing)."""
        path = self.path(probe.flow, seed)
        if probe.ttl >= len(path):
            return Answer(self.destination, HopEnd.DESTINATION)
        router = path[probe.ttl - 1]
        return None if router in self.silent else Answer(router)

    def interfaces(self) -> dict[int, set[str]]:
        """Every interface at each TTL that some flow can reach."""
        found: dict[int, set[str]] = {}
        frontier = set(self.start)
        ttl = 1
        while frontier:
            found[ttl] = set(frontier)
            frontier = {n for r in frontier if r != self.destination for n in self.next_hops[r]}
            ttl += 1
        return found

    def links(self) -> set[tuple[int, str, str]]:
        """Every (TTL, router, next hop) some flow can take."""
        links = set()
        for ttl, routers in self.interfaces().items():
            for router in routers - {self.destination}:
                links.update((ttl, router, n) for n in self.next_hops[router])
        return links

    @staticmethod
    def _pick(choices: tuple[str, ...], router: str, flow: int, seed: int) -> str:
        if len(choices) == 1:
            return choices[0]
        digest = hashlib.blake2b(f"{seed}/{router}/{flow}".encode(), digest_size=8).digest()
        return choices[int.from_bytes(digest) % len(choices)]


def chain(*stages: Iterable[str]) -> Network:
    """A network of stages in a row, where every router of a stage leads to every router
    of the next (one router per stage: a plain path; several: a meshed stage)."""
    levels = [tuple(stage) for stage in stages] + [(DESTINATION,)]
    next_hops = {router: levels[i + 1] for i, level in enumerate(levels[:-1]) for router in level}
    return Network(start=levels[0], next_hops=next_hops)


def diamond(width: int, *, prefix: str = "d") -> Network:
    """a -> ``width`` parallel routers -> b -> destination: one unmeshed diamond."""
    middle = tuple(f"{prefix}{i}" for i in range(width))
    next_hops = {"a": middle, **dict.fromkeys(middle, ("b",)), "b": (DESTINATION,)}
    return Network(start=("a",), next_hops=next_hops)


def nested(outer: int, inner: int) -> Network:
    """a -> ``outer`` routers, each -> its own ``inner`` routers -> b -> destination."""
    next_hops: dict[str, tuple[str, ...]] = {"a": tuple(f"o{i}" for i in range(outer))}
    for i in range(outer):
        leaves = tuple(f"o{i}i{j}" for j in range(inner))
        next_hops[f"o{i}"] = leaves
        next_hops.update(dict.fromkeys(leaves, ("b",)))
    next_hops["b"] = (DESTINATION,)
    return Network(start=("a",), next_hops=next_hops)


def unequal() -> Network:
    """Uneven split and branches of different lengths: a -> {s, l1}; s -> b; l1 -> l2 ->
    {b, x}; x -> b; and a second level that splits one branch only (uneven)."""
    next_hops = {
        "a": ("s", "l1"),
        "s": ("b",),
        "l1": ("l2a", "l2b", "l2c"),
        "l2a": ("b",),
        "l2b": ("b",),
        "l2c": ("x",),
        "x": ("b",),
        "b": (DESTINATION,),
    }
    return Network(start=("a",), next_hops=next_hops)


def run(network: Network, discovery: MultipathDiscovery, seed: int) -> MultipathDiscovery:
    """Drive ``discovery`` over ``network`` until it stops."""
    while batch := discovery.next_batch():
        for probe in batch:
            discovery.record(probe, network.answer(probe, seed))
    return discovery
