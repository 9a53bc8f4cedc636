"""A second, separate namespace lab for multipath discovery: wide and nested load balancing.

::

                 ┌─ w1 ─┐                 ┌─ q1 ─┐
                 ├─ w2 ─┤         ┌─ p1 ──┤      │
    mc ── a ─────┤      ├── j ────┤       └─ q2 ─┤
                 ├─ w3 ─┤         └─ p2 ──┬─ q3 ─┼── k ── md
                 └─ w4 ─┘                 └─ q4 ─┘

``a`` spreads flows over four parallel routers (a 4-wide stage), ``j`` joins them and
opens a nested diamond: ``p1`` and ``p2`` each spread over two routers of their own,
which ``k`` joins. ``md`` holds the target on ``lo``. The classic lab (``topology.py``)
is left as it is: this one has namespaces, addresses and routes of its own.

Every load-balancing router hashes the udp 5-tuple (fib_multipath_hash_policy 1) with a
hash seed of its own (fib_multipath_hash_seed): with one seed everywhere, Linux would
pick the next hop at ``p1`` from the same hash range that already chose ``p1`` at ``j``
and never use ``q2``. Each router answers from its interface on the route back to
``mc`` (one such route each), so every router has one address in a trace:

    TTL 1 a, 2 w1..w4, 3 j, 4 p1 p2, 5 q1..q4, 6 k, 7 the target.

Links are /31s out of 198.51.100.64/26; the target is 203.0.113.250. IPv4 only: no
other family holds a flow for mtr-packet. Building runs ``ip`` synchronously: this is
for test fixtures, not for a reactor.
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import secrets
import time
from collections.abc import Sequence

from tests.lab.topology import (
    _NETNS_PREFIX,
    _OWNERS_DIR,
    LabError,
    LabUnavailable,
    _delete_netns,
    _run,
    _run_all,
    lab_unavailable_reason,
    reap_stale_labs,
)

NODES = ("mc", "a", "w1", "w2", "w3", "w4", "j", "p1", "p2", "q1", "q2", "q3", "q4", "k", "md")
TARGET = "203.0.113.250"
LINK_SPACE = "198.51.100.64/26"
# (a, b): a link, in the order its /31 is handed out; b is downstream of a.
LINKS: tuple[tuple[str, str], ...] = (
    ("mc", "a"),
    *(("a", w) for w in ("w1", "w2", "w3", "w4")),
    *((w, "j") for w in ("w1", "w2", "w3", "w4")),
    ("j", "p1"),
    ("j", "p2"),
    ("p1", "q1"),
    ("p1", "q2"),
    ("p2", "q3"),
    ("p2", "q4"),
    *((q, "k") for q in ("q1", "q2", "q3", "q4")),
    ("k", "md"),
)
# Where each router sends packets towards the target (several: ECMP) and back to mc.
DOWNSTREAM: dict[str, tuple[str, ...]] = {
    "mc": ("a",),
    "a": ("w1", "w2", "w3", "w4"),
    **dict.fromkeys(("w1", "w2", "w3", "w4"), ("j",)),
    "j": ("p1", "p2"),
    "p1": ("q1", "q2"),
    "p2": ("q3", "q4"),
    **dict.fromkeys(("q1", "q2", "q3", "q4"), ("k",)),
    "k": ("md",),
}
UPSTREAM: dict[str, str] = {
    "a": "mc",
    **dict.fromkeys(("w1", "w2", "w3", "w4"), "a"),
    "j": "w1",
    "p1": "j",
    "p2": "j",
    "q1": "p1",
    "q2": "p1",
    "q3": "p2",
    "q4": "p2",
    "k": "q1",
    "md": "k",
}
ROUTERS = tuple(n for n in NODES if n not in ("mc", "md"))
_SYSCTLS = {
    "net.ipv4.conf.all.rp_filter": "0",
    "net.ipv4.conf.default.rp_filter": "0",
    "net.ipv4.conf.all.send_redirects": "0",
    "net.ipv4.icmp_ratelimit": "0",
    "net.ipv4.icmp_msgs_per_sec": "1000000",
    "net.ipv4.icmp_msgs_burst": "1000000",
}


def _link_addresses() -> dict[tuple[str, str], tuple[str, str]]:
    subnets = ipaddress.ip_network(LINK_SPACE).subnets(new_prefix=31)
    return {
        link: (str(net.network_address), str(net.network_address + 1))
        for link, net in zip(LINKS, subnets, strict=False)
    }


ADDRESSES = _link_addresses()


def address(node: str, peer: str) -> str:
    """``node``'s address on its link to ``peer``."""
    if (node, peer) in ADDRESSES:
        return ADDRESSES[node, peer][0]
    return ADDRESSES[peer, node][1]


def responder(node: str) -> str:
    """The address ``node`` answers a trace from mc with: its side of the route back."""
    return address(node, UPSTREAM[node])


def expected_hops() -> dict[int, frozenset[str]]:
    """Every responder at each TTL of a trace from mc to the target."""
    hops: dict[int, frozenset[str]] = {}
    frontier, ttl = ["a"], 1
    while frontier != ["md"]:
        hops[ttl] = frozenset(responder(n) for n in frontier)
        frontier = sorted({n for f in frontier for n in DOWNSTREAM[f]})
        ttl += 1
    hops[ttl] = frozenset({TARGET})
    return hops


def expected_links() -> frozenset[tuple[int, str, str]]:
    """Every (TTL, responder, next responder) a flow can show."""
    links: set[tuple[int, str, str]] = set()
    frontier, ttl = {"a"}, 1
    while frontier != {"md"}:
        following: set[str] = set()
        for node in frontier:
            for nxt in DOWNSTREAM[node]:
                to = TARGET if nxt == "md" else responder(nxt)
                links.add((ttl, responder(node), to))
                following.add(nxt)
        frontier, ttl = following, ttl + 1
    return frozenset(links)


class MultipathLab:
    """The multipath lab: ``with MultipathLab() as lab: ...``."""

    def __init__(self) -> None:
        self.prefix = f"{_NETNS_PREFIX}{secrets.token_hex(2)}m"
        self._built = False
        self.build_seconds: float | None = None

    def netns(self, node: str) -> str:
        """The namespace name of ``node``."""
        if node not in NODES:
            raise ValueError(f"unknown node {node!r}")
        return f"{self.prefix}{node}"

    def netns_exec(self, node: str) -> list[str]:
        """The argv prefix that runs a command in ``node``'s namespace."""
        return ["ip", "netns", "exec", self.netns(node)]

    @property
    def client_address(self) -> str:
        """The source address of traces from mc."""
        return address("mc", "a")

    def build(self) -> MultipathLab:
        """Create the namespaces, links, addresses and routes; check the target answers."""
        reason = lab_unavailable_reason()
        if reason is not None:
            raise LabUnavailable(reason)
        reap_stale_labs()
        started = time.monotonic()
        atexit.register(self.teardown)
        _OWNERS_DIR.mkdir(parents=True, exist_ok=True)
        (_OWNERS_DIR / self.prefix).write_text(f"{os.getpid()}\n")
        try:
            self._build()
        except BaseException:
            self.teardown()
            raise
        self._built = True
        self.build_seconds = time.monotonic() - started
        return self

    def teardown(self) -> None:
        """Delete the lab's namespaces. Safe to call at any time."""
        atexit.unregister(self.teardown)
        self._built = False
        _delete_netns(self.netns(n) for n in NODES)
        (_OWNERS_DIR / self.prefix).unlink(missing_ok=True)

    def __enter__(self) -> MultipathLab:
        return self.build()

    def __exit__(self, *exc_info: object) -> None:
        self.teardown()

    def _build(self) -> None:
        _run(["ip", "-batch", "-"], stdin="".join(f"netns add {self.netns(n)}\n" for n in NODES))
        veths = "".join(
            f"link add name to-{b} netns {self.netns(a)} type veth"
            f" peer name to-{a} netns {self.netns(b)}\n"
            for a, b in LINKS
        )
        _run(["ip", "-batch", "-"], stdin=veths)
        jobs: list[tuple[Sequence[str], str | None]] = []
        for seed, node in enumerate(NODES, start=1):
            settings = dict(_SYSCTLS)
            if node in ROUTERS:
                settings["net.ipv4.ip_forward"] = "1"
            if len(DOWNSTREAM.get(node, ())) > 1:
                settings["net.ipv4.fib_multipath_hash_policy"] = "1"
                settings["net.ipv4.fib_multipath_hash_seed"] = str(seed * 7919)
            argv = [*self.netns_exec(node), "sysctl", "-q", "-w"]
            jobs.append(([*argv, *(f"{k}={v}" for k, v in settings.items())], None))
            jobs.append((["ip", "-n", self.netns(node), "-batch", "-"], self._setup(node)))
        _run_all(jobs)
        self._check()

    def _setup(self, node: str) -> str:
        lines = ["link set lo up"]
        for a, b in LINKS:
            if node in (a, b):
                peer = b if node == a else a
                lines += [
                    f"link set to-{peer} up",
                    f"addr add {address(node, peer)}/31 dev to-{peer}",
                ]
        if node == "md":
            lines.append(f"addr add {TARGET}/32 dev lo")
            lines.append(f"route add {LINK_SPACE} via {address('k', 'md')}")
            return "\n".join(lines) + "\n"
        downstream = DOWNSTREAM[node]
        if len(downstream) == 1:
            lines.append(f"route add {TARGET}/32 via {address(downstream[0], node)}")
        else:
            hops = " ".join(f"nexthop via {address(n, node)}" for n in downstream)
            lines.append(f"route add {TARGET}/32 {hops}")
        if node != "mc":
            back = UPSTREAM[node]
            lines.append(f"route add {self.client_address}/32 via {address(back, node)}")
        return "\n".join(lines) + "\n"

    def _check(self) -> None:
        """The target answers from mc (which also resolves every neighbour on the way)."""
        deadline = time.monotonic() + 10
        while True:
            result = _run(
                [*self.netns_exec("mc"), "mtr-packet"],
                stdin=f"1 send-probe ip-4 {TARGET} timeout 1\n",
                check=False,
            )
            if " reply " in result.stdout:
                return
            if time.monotonic() > deadline:
                raise LabError(f"multipath lab built but {TARGET} does not answer")
