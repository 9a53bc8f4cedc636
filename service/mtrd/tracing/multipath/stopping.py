"""MDA's stopping rule: how many flows rule out one more next hop.

Augustin, Friedman and Teixeira (IMC 2006, and the e2emon report the table comes
from) model a load balancer as spreading flows uniformly over its K next hops.
Having seen k next hops of a vertex, MDA tests the hypothesis that there are
k + 1: it sends flows through the vertex until n_k of them have been answered at
the next TTL. If there were k + 1 equally likely next hops, n_k flows would all
have been seen with probability at least the confidence, so seeing only k
rejects the hypothesis and the vertex is done. A new next hop found on the way
raises k, and with it the number of flows to reach.

The probability that n flows spread uniformly over K next hops miss at least
one of them is, by inclusion and exclusion,

    sum_{i=1}^{K-1} (-1)^(i+1) C(K, i) ((K - i) / K)^n

and n_k is the least n for which that is at most 1 - confidence with K = k + 1.
It is computed exactly (with fractions) rather than copied, and checked against
the published table in the tests.
"""

from __future__ import annotations

import functools
from fractions import Fraction
from math import comb

CONFIDENCES = (95, 99)


def miss_probability(next_hops: int, flows: int) -> Fraction:
    """The chance that ``flows`` uniform flows miss at least one of ``next_hops``."""
    if next_hops < 1 or flows < 0:
        raise ValueError("next_hops must be at least 1 and flows at least 0")
    total = Fraction(0)
    for i in range(1, next_hops):
        term = comb(next_hops, i) * Fraction(next_hops - i, next_hops) ** flows
        total += term if i % 2 else -term
    return total


@functools.cache
def stopping_point(found: int, confidence: int) -> int:
    """n_k: the flows to see through a vertex with ``found`` next hops to rule out one more."""
    if confidence not in CONFIDENCES:
        raise ValueError(f"confidence must be one of {CONFIDENCES}, got {confidence!r}")
    if found < 1:
        # Nothing seen yet: one answered flow is needed before any hypothesis can be tested.
        return 1
    alpha = Fraction(100 - confidence, 100)
    flows = found + 1
    while miss_probability(found + 1, flows) > alpha:
        flows += 1
    return flows
