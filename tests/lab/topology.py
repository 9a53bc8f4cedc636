"""A network-namespace lab: a small dual-stack routed network to trace through.

::

    c ── r1 ──┬── r2a ──┬── r3 ── d
              └── r2b ──┘
                   │
                   v

``c`` is the client (run mtr-packet there), ``r1`` spreads flows over ``r2a`` and ``r2b`` (ECMP,
per-flow hashing), ``r3`` is the last router and ``d`` holds many target addresses on ``lo`` plus a
TCP listener. ``v`` is a second vantage point: probes from it reach d through r2b and r3 only
(r2b at TTL 1, r3 at TTL 2, the target at TTL 3). ``r3`` also has a blackhole route (silent
loss) and an unreachable route (ICMP unreachable from ``r3``). Any router can be made silent
(:meth:`Lab.silent`) or slow to answer (:meth:`Lab.delayed`: this kernel has no netem, so an
``NFQUEUE`` rule (iptables: this kernel has xt_NFQUEUE but not nft_queue) hands the router's
time-exceeded errors to a small Python process in
its namespace, ``delay.py``, that reads the queue over netlink and lets each one go after the
delay). Only documentation addresses
are used, and only inside the namespaces the lab creates; every namespace is deleted by
:meth:`Lab.teardown`.

Addresses (segment ``n`` uses 2001:db8:n::/64; its members hold host addresses 1, 2, 3 in the
order listed; segment 4 is a LAN bridged inside r3's namespace)::

    1  r1 c          198.51.100.0/30    2001:db8:1::/64
    2  r1 r2a        198.51.100.4/30    2001:db8:2::/64
    3  r1 r2b        198.51.100.8/30    2001:db8:3::/64
    4  r3 r2a r2b    198.51.100.16/29   2001:db8:4::/64
    5  r3 d          198.51.100.24/30   2001:db8:5::/64
    6  r2b v         198.51.100.32/30   2001:db8:6::/64
    targets on d's lo       203.0.113.0/25     2001:db8:ff::/64  (.1-.126, ::1-::7e)
    blackhole route on r3   203.0.113.128/26   2001:db8:bb::/64
    rejected by r3          203.0.113.192/26   2001:db8:ee::/64  (ICMP net unreachable / no route)

Who answers: r1 at TTL 1 (198.51.100.1, 2001:db8:1::1), r2a or r2b at TTL 2 (198.51.100.6 /
.10, 2001:db8:2::2 / 2001:db8:3::2), r3 at TTL 3 from its LAN address (198.51.100.17,
2001:db8:4::1), the target from TTL 4 on. r3 has a single upstream interface on purpose: IPv6
answers from the interface a probe came in on, IPv4 from the interface of the route back, so
with two point-to-point links r3 would answer from either address.

Building and teardown run ``ip`` synchronously: this is for test fixtures, not for a reactor.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import attrs

Family = Literal[4, 6]
Node = Literal["c", "r1", "r2a", "r2b", "r3", "d", "v"]

NODES: tuple[Node, ...] = ("c", "r1", "r2a", "r2b", "r3", "d", "v")
ROUTERS: tuple[Node, ...] = ("r1", "r2a", "r2b", "r3")
OPEN_TCP_PORT = 8080
CLOSED_TCP_PORT = 8081
TARGET_COUNT = 126

_HERE = Path(__file__).resolve().parent
_PROBE_SCRIPT = _HERE / "icmp_probe.py"
_LISTENER_SCRIPT = _HERE / "listener.py"
_OWNERS_DIR = Path("/run/mtrd-lab")
_NFT_SILENT = "mtrd_silent"
_NFT_UNREACHABLE = "mtrd_unreachable"
_DELAY_SCRIPT = _HERE / "delay.py"
_DELAY_QUEUE = 7
_NETNS_PREFIX = "mtrd-"


class LabError(RuntimeError):
    """Building, changing or tearing down the lab failed."""


class LabUnavailable(LabError):
    """The lab cannot run on this machine; the message says why."""


def family_of(family: int) -> Family:
    """Accept 4 / 6 as well as socket.AF_INET / socket.AF_INET6."""
    if family in (4, socket.AF_INET):
        return 4
    if family in (6, socket.AF_INET6):
        return 6
    raise ValueError(f"family must be 4, 6, AF_INET or AF_INET6, not {family!r}")


@attrs.frozen
class Segment:
    """A network segment: a veth pair, or a LAN bridged in the namespace of its first member.

    Member ``i`` (from 0) holds host address ``i + 1`` of the segment's subnets.
    """

    index: int
    ipv4_subnet: str
    members: tuple[Node, ...]

    @property
    def is_lan(self) -> bool:
        return len(self.members) > 2

    def subnet(self, family: Family) -> str:
        return self.ipv4_subnet if family == 4 else f"2001:db8:{self.index:x}::/64"

    def address(self, node: Node, family: Family) -> str:
        network = ipaddress.ip_network(self.subnet(family))
        return str(network.network_address + self.members.index(node) + 1)

    def prefix_length(self, family: Family) -> int:
        return ipaddress.ip_network(self.subnet(family)).prefixlen

    def interface(self, node: Node) -> str:
        """Name, inside ``node``'s namespace, of the interface holding its address here."""
        owner = self.members[0]
        if self.is_lan:
            return "lan" if node == owner else f"to-{owner}"
        return f"to-{self.members[1] if node == owner else owner}"

    def veths(self) -> list[tuple[Node, str, Node, str]]:
        """The veth pairs to create: (node, interface name, peer node, peer interface name)."""
        owner = self.members[0]
        return [(owner, f"to-{m}", m, f"to-{owner}") for m in self.members[1:]]


SEGMENTS: tuple[Segment, ...] = (
    Segment(1, "198.51.100.0/30", ("r1", "c")),
    Segment(2, "198.51.100.4/30", ("r1", "r2a")),
    Segment(3, "198.51.100.8/30", ("r1", "r2b")),
    Segment(4, "198.51.100.16/29", ("r3", "r2a", "r2b")),
    Segment(5, "198.51.100.24/30", ("r3", "d")),
    Segment(6, "198.51.100.32/30", ("r2b", "v")),
)


def _segment(a: Node, b: Node) -> Segment:
    for segment in SEGMENTS:
        if a in segment.members and b in segment.members:
            return segment
    raise KeyError(f"{a} and {b} share no segment")


@attrs.frozen
class FamilyPlan:
    """The addresses of the lab for one address family."""

    family: Family
    client: str
    hops: tuple[frozenset[str], ...]
    """Who answers a probe to a target at TTL 1, 2 and 3 (r1, r2a or r2b, r3)."""
    vantage: str
    vantage_hops: tuple[frozenset[str], ...]
    """Who answers a probe from ``v`` to a target at TTL 1 and 2 (r2b, r3)."""
    r3: str
    ecmp: frozenset[str]
    targets: tuple[str, ...]
    target_prefix: str
    blackhole_prefix: str
    unreachable_prefix: str
    blackhole_target: str
    unreachable_target: str


@attrs.frozen
class AddressPlan:
    ipv4: FamilyPlan
    ipv6: FamilyPlan

    def family(self, family: int) -> FamilyPlan:
        return self.ipv4 if family_of(family) == 4 else self.ipv6


def _family_plan(family: Family) -> FamilyPlan:
    if family == 4:
        target_prefix, blackhole, unreachable = (
            "203.0.113.0/25",
            "203.0.113.128/26",
            "203.0.113.192/26",
        )
    else:
        target_prefix, blackhole, unreachable = (
            "2001:db8:ff::/64",
            "2001:db8:bb::/64",
            "2001:db8:ee::/64",
        )
    base = ipaddress.ip_network(target_prefix).network_address
    r2a = _segment("r1", "r2a").address("r2a", family)
    r2b = _segment("r1", "r2b").address("r2b", family)
    r3 = _segment("r2a", "r3").address("r3", family)  # one LAN address: r3 answers from it
    return FamilyPlan(
        family=family,
        client=_segment("r1", "c").address("c", family),
        hops=(
            frozenset({_segment("r1", "c").address("r1", family)}),
            frozenset({r2a, r2b}),
            frozenset({r3}),
        ),
        vantage=_segment("r2b", "v").address("v", family),
        vantage_hops=(frozenset({_segment("r2b", "v").address("r2b", family)}), frozenset({r3})),
        r3=r3,
        ecmp=frozenset({r2a, r2b}),
        targets=tuple(str(base + n) for n in range(1, TARGET_COUNT + 1)),
        target_prefix=target_prefix,
        blackhole_prefix=blackhole,
        unreachable_prefix=unreachable,
        blackhole_target=str(ipaddress.ip_network(blackhole).network_address + 7),
        unreachable_target=str(ipaddress.ip_network(unreachable).network_address + 7),
    )


PLAN = AddressPlan(ipv4=_family_plan(4), ipv6=_family_plan(6))


@attrs.frozen
class ProbeResult:
    """What came back for one ICMP echo request sent by :meth:`Lab.probe`."""

    target: str
    kind: str | None
    """"reply", "time-exceeded", "unreachable", "other", or None when nothing came back."""
    responder: str | None
    icmp_type: int | None
    code: int | None
    rtt_ms: float | None


def _routes(node: Node) -> list[str]:
    """The ``ip route`` commands (batch lines, without ``ip``) that give ``node`` its routes."""
    commands: list[str] = []
    for fam in (4, 6):
        family: Family = 4 if fam == 4 else 6
        plan = PLAN.family(family)
        downstream = (plan.target_prefix, plan.blackhole_prefix, plan.unreachable_prefix)
        whole_lab = ("198.51.100.0/24", "203.0.113.0/24") if family == 4 else ("2001:db8::/32",)

        def nexthop(peer: Node, family: Family = family) -> str:
            segment = _segment(node, peer)
            return f"via {segment.address(peer, family)} dev {segment.interface(node)}"

        def via(peer: Node, prefixes: Iterable[str]) -> list[str]:
            return [f"route add {p} {nexthop(peer)}" for p in prefixes]

        def subnets(*indexes: int, family: Family = family) -> list[str]:
            return [SEGMENTS[i - 1].subnet(family) for i in indexes]

        if node == "c":
            commands += via("r1", whole_lab)
        elif node == "v":
            commands += via("r2b", whole_lab)
        elif node == "d":
            commands += via("r3", whole_lab)
        elif node == "r1":  # ECMP: per-flow hashing over r2a and r2b
            hops = f"nexthop {nexthop('r2a')} nexthop {nexthop('r2b')}"
            commands += [f"route add {p} {hops}" for p in (*subnets(4, 5), *downstream)]
        elif node == "r2a":
            commands += via("r1", subnets(1, 3)) + via("r3", (*subnets(5), *downstream))
        elif node == "r2b":
            commands += via("r1", subnets(1, 2)) + via("r3", (*subnets(5), *downstream))
        elif node == "r3":  # the way back to the client is always through r2a
            commands += via("r2a", subnets(1, 2, 3)) + via("r2b", subnets(6))
            commands += via("d", (plan.target_prefix, plan.unreachable_prefix))
            commands += [f"route add blackhole {plan.blackhole_prefix}"]
    return commands


def _node_setup(node: Node) -> str:
    """An ``ip -batch`` script that brings up ``node``'s links, addresses and routes."""
    lines = ["link set lo up"]
    for segment in SEGMENTS:
        if node not in segment.members:
            continue
        dev = segment.interface(node)
        if segment.is_lan and node == segment.members[0]:
            lines.append(f"link add name {dev} type bridge stp_state 0 mcast_snooping 0")
            for _, port, _, _ in segment.veths():
                lines += [f"link set {port} master {dev}", f"link set {port} up"]
        lines += [
            f"link set {dev} up",
            f"addr add {segment.address(node, 4)}/{segment.prefix_length(4)} dev {dev}",
            f"addr add {segment.address(node, 6)}/{segment.prefix_length(6)} dev {dev} nodad",
        ]
    if node == "d":
        for family, length in ((4, 32), (6, 128)):
            fam: Family = 4 if family == 4 else 6
            flags = " nodad" if fam == 6 else ""
            lines += [f"addr add {t}/{length} dev lo{flags}" for t in PLAN.family(fam).targets]
    lines += _routes(node)
    return "\n".join(lines) + "\n"


def _unreachable_ruleset() -> str:
    """nftables script for r3: answer ICMP unreachable for the unreachable prefixes.

    An ``unreachable`` route would do this too, but for IPv4 the kernel rate-limits those errors
    with a per-source token bucket (net.ipv4.route.error_cost / error_burst, which exist only in
    the host's namespace): about 5 at once, then one a second. A reject rule is only subject to
    the ICMP rate limits that the lab controls.
    """
    return (
        f"add table inet {_NFT_UNREACHABLE}\n"
        f"add chain inet {_NFT_UNREACHABLE} forward"
        " { type filter hook forward priority 0 ; policy accept ; }\n"
        f"add rule inet {_NFT_UNREACHABLE} forward ip daddr {PLAN.ipv4.unreachable_prefix}"
        " reject with icmp type net-unreachable\n"
        f"add rule inet {_NFT_UNREACHABLE} forward ip6 daddr {PLAN.ipv6.unreachable_prefix}"
        " reject with icmpv6 type no-route\n"
    )


_BASE_SYSCTLS: dict[str, str] = {
    "net.ipv4.conf.all.rp_filter": "0",  # ECMP makes return paths asymmetric
    "net.ipv4.conf.default.rp_filter": "0",
    "net.ipv4.conf.all.send_redirects": "0",
    "net.ipv4.conf.default.send_redirects": "0",
    "net.ipv6.conf.all.accept_dad": "0",
    "net.ipv6.conf.default.accept_dad": "0",
    "net.ipv6.conf.all.accept_ra": "0",
    "net.ipv6.conf.default.accept_ra": "0",
}
_ROUTER_SYSCTLS: dict[str, str] = {
    "net.ipv4.ip_forward": "1",
    "net.ipv6.conf.all.forwarding": "1",
    "net.ipv6.conf.default.forwarding": "1",
}
_ECMP_SYSCTLS: dict[str, str] = {
    "net.ipv4.fib_multipath_hash_policy": "1",
    "net.ipv6.fib_multipath_hash_policy": "1",
}
_RATE_LIMIT_KEYS = (
    "net.ipv4.icmp_ratelimit",
    "net.ipv4.icmp_msgs_per_sec",
    "net.ipv4.icmp_msgs_burst",
    "net.ipv6.icmp.ratelimit",
)
_NO_RATE_LIMIT: dict[str, str] = {
    "net.ipv4.icmp_ratelimit": "0",
    "net.ipv4.icmp_msgs_per_sec": "1000000",
    "net.ipv4.icmp_msgs_burst": "1000000",
    "net.ipv6.icmp.ratelimit": "0",
}
_ICMP_SENDERS: tuple[Node, ...] = (*ROUTERS, "d")
"""Nodes whose ICMP errors the tests count: the routers, and d (port unreachable for udp)."""


def _run(
    argv: Sequence[str], *, stdin: str | None = None, check: bool = True, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _run_all(jobs: Sequence[tuple[Sequence[str], str | None]], timeout: float = 30) -> None:
    """Run several commands at once and fail if any fails."""
    procs = [
        (
            argv,
            subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
            stdin,
        )
        for argv, stdin in jobs
    ]
    errors = []
    for argv, proc, stdin in procs:
        try:
            _, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            errors.append(f"{' '.join(argv)} timed out")
            continue
        if proc.returncode != 0:
            errors.append(f"{' '.join(argv)} failed ({proc.returncode}): {err.strip()}")
    if errors:
        raise LabError("; ".join(errors))


def _netns_list() -> set[str]:
    result = _run(["ip", "netns", "list"], check=False)
    return {line.split()[0] for line in result.stdout.splitlines() if line.strip()}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_netns_processes(netns: str) -> None:
    """Stop every process inside ``netns``: TERM, then KILL after a short wait."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [int(p) for p in _run(["ip", "netns", "pids", netns], check=False).stdout.split()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
            time.sleep(0.01)


def _delete_netns(names: Iterable[str]) -> None:
    existing = _netns_list()
    for name in names:
        if name in existing:
            _kill_netns_processes(name)
            _run(["ip", "netns", "del", name], check=False)


def reap_stale_labs() -> None:
    """Delete the namespaces of labs whose owning process died without tearing them down."""
    if not _OWNERS_DIR.is_dir():
        return
    for owner_file in _OWNERS_DIR.iterdir():
        try:
            pid = int(owner_file.read_text().strip())
        except (OSError, ValueError):
            continue
        if _pid_alive(pid):
            continue
        prefix = owner_file.name
        _delete_netns(n for n in _netns_list() if n.startswith(prefix))
        owner_file.unlink(missing_ok=True)


@functools.cache
def lab_unavailable_reason() -> str | None:
    """None when the lab can be built here; otherwise why not."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux, this is {sys.platform}"
    if os.geteuid() != 0:
        return "not root (the lab creates network namespaces)"
    for tool in ("ip", "nft", "mtr-packet"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found"
    name = f"{_NETNS_PREFIX}{secrets.token_hex(3)}-chk"
    try:
        result = _run(["ip", "netns", "add", name], check=False)
        if result.returncode != 0:
            return f"cannot create network namespaces: {result.stderr.strip()}"
        veth = _run(
            ["ip", "-n", name, "link", "add", "name", "v0", "type", "veth", "peer", "name", "v1"],
            check=False,
        )
        if veth.returncode != 0:
            return f"cannot create veth pairs: {veth.stderr.strip()}"
    finally:
        _run(["ip", "netns", "del", name], check=False)
    return None


class Lab:
    """The namespace lab: ``with Lab() as lab: ...`` or ``lab = Lab(); lab.build(); ...``."""

    open_tcp_port: int = OPEN_TCP_PORT
    closed_tcp_port: int = CLOSED_TCP_PORT
    plan: AddressPlan = PLAN

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or f"{_NETNS_PREFIX}{secrets.token_hex(3)}-"
        if len(self.prefix) + max(len(n) for n in NODES) > 15:
            raise ValueError(f"namespace prefix {self.prefix!r} is too long")
        self._built = False
        self._listener: subprocess.Popen[str] | None = None
        self._silent: set[Node] = set()
        self._rate_limit_defaults: dict[str, str] = {}
        self.build_seconds: float | None = None

    # -- life cycle -------------------------------------------------------------------------

    def build(self) -> Lab:
        """Create the namespaces, links, addresses, routes and listener; warm up IPv6."""
        if self._built:
            return self
        reason = lab_unavailable_reason()
        if reason is not None:
            raise LabUnavailable(reason)
        reap_stale_labs()
        started = time.monotonic()
        atexit.register(self.teardown)
        self._claim()
        try:
            self._build()
        except BaseException:
            self.teardown()
            raise
        self._built = True
        self.build_seconds = time.monotonic() - started
        return self

    def teardown(self) -> None:
        """Stop the lab's processes and delete its namespaces. Safe to call at any time."""
        atexit.unregister(self.teardown)
        self._built = False
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                if listener.stdin is not None:
                    listener.stdin.close()
            try:
                listener.wait(timeout=1)
            except subprocess.TimeoutExpired:
                listener.kill()
                listener.wait()
        _delete_netns(self.netns(n) for n in NODES)
        self._silent.clear()
        left = sorted(n for n in _netns_list() if n.startswith(self.prefix))
        if left:
            raise LabError(f"namespaces left behind: {', '.join(left)}")
        (_OWNERS_DIR / self.prefix).unlink(missing_ok=True)

    def __enter__(self) -> Lab:
        return self.build()

    def __exit__(self, *exc_info: object) -> None:
        self.teardown()

    @property
    def built(self) -> bool:
        return self._built

    def _claim(self) -> None:
        _OWNERS_DIR.mkdir(parents=True, exist_ok=True)
        (_OWNERS_DIR / self.prefix).write_text(f"{os.getpid()}\n")

    def _build(self) -> None:
        _run(["ip", "-batch", "-"], stdin="".join(f"netns add {self.netns(n)}\n" for n in NODES))
        r1 = self.netns("r1")
        current = _run(["ip", "netns", "exec", r1, "sysctl", "-n", *_RATE_LIMIT_KEYS]).stdout
        self._rate_limit_defaults = dict(zip(_RATE_LIMIT_KEYS, current.split(), strict=True))
        sysctl_jobs: list[tuple[Sequence[str], str | None]] = []
        for node in NODES:
            settings = dict(_BASE_SYSCTLS)
            if node in ROUTERS:
                settings |= _ROUTER_SYSCTLS
            if node == "r1":
                settings |= _ECMP_SYSCTLS
            if node in _ICMP_SENDERS:
                settings |= _NO_RATE_LIMIT
            sysctl_jobs.append((self._sysctl_argv(node, settings), None))
        _run_all(sysctl_jobs)
        _run(
            ["ip", "-batch", "-"],
            stdin="".join(
                f"link add name {name} netns {self.netns(node)} type veth"
                f" peer name {peer_name} netns {self.netns(peer)}\n"
                for segment in SEGMENTS
                for node, name, peer, peer_name in segment.veths()
            ),
        )
        _run_all([(["ip", "-n", self.netns(n), "-batch", "-"], _node_setup(n)) for n in NODES])
        _run([*self.netns_exec("r3"), "nft", "-f", "-"], stdin=_unreachable_ruleset())
        self._start_listener()
        self._warm_up()

    def _start_listener(self) -> None:
        self._listener = subprocess.Popen(
            [*self.netns_exec("d"), sys.executable, str(_LISTENER_SCRIPT), str(OPEN_TCP_PORT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self._listener.stdout is not None
        line = self._listener.stdout.readline()
        if line.strip() != "ready":
            _, err = self._listener.communicate(timeout=5)
            raise LabError(f"TCP listener did not start: {line.strip()} {err.strip()}")

    def _warm_up(self) -> None:
        """Resolve every neighbour both ways and reach every target once, on both families."""
        jobs: list[tuple[Sequence[str], str | None]] = []
        for node in NODES:
            neighbours = [
                segment.address(member, family)
                for segment in SEGMENTS
                if node in segment.members
                for member in segment.members
                if member != node
                for family in (4, 6)
            ]
            jobs.append((self._probe_argv(node, neighbours, ttl=64, timeout=3), None))
        _run_all(jobs)
        addresses = [
            address
            for plan in (PLAN.ipv4, PLAN.ipv6)
            for address in (*sorted(plan.ecmp), plan.r3, *plan.targets)
        ]
        missing = [r.target for r in self.probe("c", addresses, timeout=3) if r.kind != "reply"]
        missing += [r.target for r in self.probe("d", [PLAN.ipv4.client, PLAN.ipv6.client])
                    if r.kind != "reply"]  # fmt: skip
        vantage_targets = [PLAN.ipv4.targets[0], PLAN.ipv6.targets[0]]
        missing += [r.target for r in self.probe("v", vantage_targets, timeout=3)
                    if r.kind != "reply"]  # fmt: skip
        if missing:
            raise LabError(f"lab built but unreachable: {', '.join(missing)}")

    # -- names and commands -----------------------------------------------------------------

    def netns(self, node: str) -> str:
        """The namespace name of ``node`` (one of c, r1, r2a, r2b, r3, d)."""
        if node not in NODES:
            raise ValueError(f"unknown lab node {node!r}: one of {', '.join(NODES)}")
        return f"{self.prefix}{node}"

    @property
    def client_netns(self) -> str:
        return self.netns("c")

    def netns_exec(self, node: str) -> list[str]:
        """The argv prefix that runs a command in ``node``'s namespace."""
        return ["ip", "netns", "exec", self.netns(node)]

    def run(
        self, node: str, argv: Sequence[str], *, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``node``'s namespace and capture its output."""
        return _run([*self.netns_exec(node), *argv], check=check, timeout=timeout)

    def _sysctl_argv(self, node: str, settings: dict[str, str]) -> list[str]:
        return [*self.netns_exec(node), "sysctl", "-q", "-w"] + [
            f"{key}={value}" for key, value in settings.items()
        ]

    def _probe_argv(
        self, node: str, targets: Sequence[str], *, ttl: int, timeout: float
    ) -> list[str]:
        return [
            *self.netns_exec(node),
            sys.executable,
            str(_PROBE_SCRIPT),
            "--ttl",
            str(ttl),
            "--timeout",
            str(timeout),
            *targets,
        ]

    def probe(
        self, node: str, targets: Sequence[str], *, ttl: int = 64, timeout: float = 1.0
    ) -> list[ProbeResult]:
        """Send one ICMP echo request to each target from ``node``; say what came back."""
        result = self.run(
            node, self._probe_argv(node, targets, ttl=ttl, timeout=timeout), timeout=timeout + 10
        )
        return [
            ProbeResult(
                target=d["target"],
                kind=d["kind"],
                responder=d["responder"],
                icmp_type=d["type"],
                code=d["code"],
                rtt_ms=d["rtt_ms"],
            )
            for d in map(json.loads, result.stdout.splitlines())
        ]

    # -- address facts ----------------------------------------------------------------------

    def client_address(self, family: int) -> str:
        return PLAN.family(family).client

    def targets(self, family: int) -> tuple[str, ...]:
        """Addresses held by the destination; every one answers pings and the open TCP port."""
        return PLAN.family(family).targets

    def blackhole_target(self, family: int) -> str:
        """An address whose probes r3 drops silently."""
        return PLAN.family(family).blackhole_target

    def unreachable_target(self, family: int) -> str:
        """An address for which r3 answers ICMP unreachable (from :meth:`r3_address`)."""
        return PLAN.family(family).unreachable_target

    def r3_address(self, family: int) -> str:
        """The address r3 answers from: time exceeded and unreachable alike."""
        return PLAN.family(family).r3

    @property
    def vantage_netns(self) -> str:
        """The namespace of the second vantage point ``v``."""
        return self.netns("v")

    def vantage_address(self, family: int) -> str:
        """The address of ``v`` (its source for probes)."""
        return PLAN.family(family).vantage

    def vantage_hops(self, family: int, target: str) -> tuple[frozenset[str], ...]:
        """Who answers probes from ``v`` to ``target`` (one of :meth:`targets`), TTL 1 on."""
        return (*PLAN.family(family).vantage_hops, frozenset({target}))

    def ecmp_responders(self, family: int) -> frozenset[str]:
        """The addresses of r2a and r2b, one of which answers at TTL 2."""
        return PLAN.family(family).ecmp

    def expected_responders(
        self, family: int, ttl: int, target: str | None = None
    ) -> frozenset[str]:
        """Who may answer a probe sent from the client at ``ttl``.

        ``target`` defaults to any of :meth:`targets`. For the blackhole target nothing answers
        from TTL 3 on (r3 drops before it checks the TTL); for the unreachable target r3
        answers unreachable from TTL 3 on.
        """
        if ttl < 1:
            raise ValueError(f"ttl must be at least 1, not {ttl}")
        plan = PLAN.family(family)
        if ttl < 3:
            return plan.hops[ttl - 1]
        if target is not None and ipaddress.ip_address(target) in ipaddress.ip_network(
            plan.blackhole_prefix
        ):
            return frozenset()
        if target is not None and ipaddress.ip_address(target) in ipaddress.ip_network(
            plan.unreachable_prefix
        ):
            return frozenset({plan.r3})
        if ttl == 3:
            return plan.hops[2]
        return frozenset({target}) if target is not None else frozenset(plan.targets)

    def hops(self, family: int, target: str | None = None) -> tuple[frozenset[str], ...]:
        """Expected responders for TTL 1 up to the TTL at which ``target`` answers."""
        return tuple(self.expected_responders(family, ttl, target) for ttl in range(1, 5))

    # -- state changes ----------------------------------------------------------------------

    def set_icmp_rate_limit(self, enabled: bool) -> None:
        """Turn the kernel's ICMP rate limits on (kernel defaults) or off, on r1..r3 and d."""
        settings = self._rate_limit_defaults if enabled else _NO_RATE_LIMIT
        _run_all([(self._sysctl_argv(n, settings), None) for n in _ICMP_SENDERS])

    @contextlib.contextmanager
    def icmp_rate_limited(self) -> Iterator[None]:
        """Routers rate-limit their ICMP errors inside the block (as a real network does)."""
        self.set_icmp_rate_limit(True)
        try:
            yield
        finally:
            self.set_icmp_rate_limit(False)

    def set_silent(self, router: str, silent: bool) -> None:
        """Make ``router`` drop the ICMP time-exceeded it sends, or send them again."""
        if router not in ROUTERS:
            raise ValueError(f"unknown router {router!r}: one of {', '.join(ROUTERS)}")
        node: Node = router  # type: ignore[assignment]
        if silent:
            script = (
                f"add table inet {_NFT_SILENT}\n"
                f"flush table inet {_NFT_SILENT}\n"
                f"add chain inet {_NFT_SILENT} output"
                " { type filter hook output priority 0 ; policy accept ; }\n"
                f"add rule inet {_NFT_SILENT} output icmp type time-exceeded drop\n"
                f"add rule inet {_NFT_SILENT} output icmpv6 type time-exceeded drop\n"
            )
            _run([*self.netns_exec(node), "nft", "-f", "-"], stdin=script)
            self._silent.add(node)
        else:
            tables = self.run(node, ["nft", "list", "tables"]).stdout
            if f"table inet {_NFT_SILENT}" in tables:
                self.run(node, ["nft", "delete", "table", "inet", _NFT_SILENT])
            self._silent.discard(node)

    @contextlib.contextmanager
    def silent(self, router: str) -> Iterator[None]:
        """``router`` sends no time-exceeded inside the block."""
        self.set_silent(router, True)
        try:
            yield
        finally:
            self.set_silent(router, False)

    @contextlib.contextmanager
    def delayed(self, router: str, seconds: float) -> Iterator[None]:
        """``router``'s time-exceeded errors leave ``seconds`` late inside the block.

        They go through netfilter queue 7 (an iptables ``NFQUEUE`` rule: this kernel has
        no nft ``queue``) to ``delay.py`` running in the router's namespace (with
        ``--queue-bypass``: should that process die, they pass undelayed, not vanish).
        """
        if router not in ROUTERS:
            raise ValueError(f"unknown router {router!r}: one of {', '.join(ROUTERS)}")
        holder = subprocess.Popen(
            [*self.netns_exec(router), sys.executable, str(_DELAY_SCRIPT), str(_DELAY_QUEUE),
             str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        try:
            assert holder.stdout is not None
            if holder.stdout.readline().strip() != "ready":
                raise LabError(f"delay.py did not start in {router} ({holder.wait()})")
            queue = ["-j", "NFQUEUE", "--queue-num", str(_DELAY_QUEUE), "--queue-bypass"]
            rules = [
                ["iptables", "-p", "icmp", "--icmp-type", "time-exceeded", *queue],
                ["ip6tables", "-p", "icmpv6", "--icmpv6-type", "time-exceeded", *queue],
            ]
            for tool, *rule in rules:
                self.run(router, [tool, "-I", "OUTPUT", *rule])
            try:
                yield
            finally:
                for tool, *rule in rules:
                    self.run(router, [tool, "-D", "OUTPUT", *rule], check=False)
        finally:
            holder.kill()
            holder.wait()

    @property
    def silent_routers(self) -> frozenset[str]:
        return frozenset(self._silent)
