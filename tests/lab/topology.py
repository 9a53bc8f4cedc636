"""A network-namespace lab: a small dual-stack routed network to trace through.

::

    c ── r1 ──┬── r2a ──┬── r3 ── d
              └── r2b ──┘

``c`` is the client (run mtr-packet there), ``r1`` spreads flows over ``r2a`` and ``r2b`` (ECMP,
per-flow hashing), ``r3`` is the last router and ``d`` holds many target addresses on ``lo`` plus a
TCP listener. ``r3`` also has a blackhole route (silent loss) and an unreachable route (ICMP
unreachable from ``r3``). Only documentation addresses are used, and only inside the namespaces the
lab creates; every namespace is deleted by :meth:`Lab.teardown`.

Addresses (link ``n`` uses 198.51.100.(4n-4)/30 and 2001:db8:n::/64; the first node named holds
``.1``/``::1`` of the link, the second ``.2``/``::2``)::

    link 1  r1 -  c    198.51.100.0/30   2001:db8:1::/64
    link 2  r1 -  r2a  198.51.100.4/30   2001:db8:2::/64
    link 3  r1 -  r2b  198.51.100.8/30   2001:db8:3::/64
    link 4  r2a - r3   198.51.100.12/30  2001:db8:4::/64
    link 5  r2b - r3   198.51.100.16/30  2001:db8:5::/64
    link 6  r3 -  d    198.51.100.20/30  2001:db8:6::/64
    targets on d       203.0.113.0/25    2001:db8:ff::/64   (.1-.126, ::1-::7e)
    blackhole on r3    203.0.113.128/26  2001:db8:bb::/64
    unreachable on r3  203.0.113.192/26  2001:db8:ee::/64

A router answers from the address the kernel picks for its route back to the prober. Return
traffic from ``r3`` always goes through ``r2a``, so ``r3`` answers from its link 4 address even
to probes that came in through ``r2b``.

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
Node = Literal["c", "r1", "r2a", "r2b", "r3", "d"]

NODES: tuple[Node, ...] = ("c", "r1", "r2a", "r2b", "r3", "d")
ROUTERS: tuple[Node, ...] = ("r1", "r2a", "r2b", "r3")
OPEN_TCP_PORT = 8080
CLOSED_TCP_PORT = 8081
TARGET_COUNT = 126

_HERE = Path(__file__).resolve().parent
_PROBE_SCRIPT = _HERE / "icmp_probe.py"
_LISTENER_SCRIPT = _HERE / "listener.py"
_OWNERS_DIR = Path("/run/mtrd-lab")
_NFT_TABLE = "mtrd_lab"
_NETNS_PREFIX = "mtrd-"


class LabError(RuntimeError):
    """Building, changing or tearing down the lab failed."""


class LabUnavailable(LabError):  # noqa: N818 (the name says what the caller needs to know)
    """The lab cannot run on this machine; the message says why."""


def family_of(family: int) -> Family:
    """Accept 4 / 6 as well as socket.AF_INET / socket.AF_INET6."""
    if family in (4, socket.AF_INET):
        return 4
    if family in (6, socket.AF_INET6):
        return 6
    raise ValueError(f"family must be 4, 6, AF_INET or AF_INET6, not {family!r}")


@attrs.frozen
class Link:
    """A veth pair between two nodes; ``first`` holds the .1 / ::1 address of the link."""

    index: int
    first: Node
    second: Node

    def subnet(self, family: Family) -> str:
        if family == 4:
            return f"198.51.100.{4 * (self.index - 1)}/30"
        return f"2001:db8:{self.index:x}::/64"

    def address(self, node: Node, family: Family) -> str:
        if node not in (self.first, self.second):
            raise ValueError(f"{node} is not on link {self.index}")
        host = 1 if node == self.first else 2
        network = ipaddress.ip_network(self.subnet(family))
        return str(network.network_address + host)

    def peer(self, node: Node) -> Node:
        return self.second if node == self.first else self.first

    @staticmethod
    def interface(towards: Node) -> str:
        """Name, inside a node's namespace, of the interface facing ``towards``."""
        return f"to-{towards}"


LINKS: tuple[Link, ...] = (
    Link(1, "r1", "c"),
    Link(2, "r1", "r2a"),
    Link(3, "r1", "r2b"),
    Link(4, "r2a", "r3"),
    Link(5, "r2b", "r3"),
    Link(6, "r3", "d"),
)


def _link(a: Node, b: Node) -> Link:
    for link in LINKS:
        if {link.first, link.second} == {a, b}:
            return link
    raise KeyError(f"no link between {a} and {b}")


@attrs.frozen
class FamilyPlan:
    """The addresses of the lab for one address family."""

    family: Family
    client: str
    hops: tuple[frozenset[str], ...]
    """Who answers a probe to a target at TTL 1, 2 and 3 (r1, r2a or r2b, r3)."""
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
    r2a, r2b = _link("r1", "r2a").address("r2a", family), _link("r1", "r2b").address("r2b", family)
    r3 = _link("r2a", "r3").address("r3", family)  # r3's route back to the client is via r2a
    return FamilyPlan(
        family=family,
        client=_link("r1", "c").address("c", family),
        hops=(
            frozenset({_link("r1", "c").address("r1", family)}),
            frozenset({r2a, r2b}),
            frozenset({r3}),
        ),
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
    """The ``ip route`` commands (without ``ip``) that give ``node`` its routes."""
    commands: list[str] = []
    for family in (4, 6):
        fam: Family = family  # type: ignore[assignment]
        plan = PLAN.family(fam)
        downstream = (plan.target_prefix, plan.blackhole_prefix, plan.unreachable_prefix)

        def via(peer: Node, prefixes: Iterable[str], fam: Family = fam) -> list[str]:
            gateway = _link(node, peer).address(peer, fam)
            dev = Link.interface(peer)
            return [f"-{fam} route add {p} via {gateway} dev {dev}" for p in prefixes]

        def subnets(*indexes: int, fam: Family = fam) -> list[str]:
            return [LINKS[i - 1].subnet(fam) for i in indexes]

        if node == "c":
            lab = ("198.51.100.0/24", "203.0.113.0/24") if fam == 4 else ("2001:db8::/32",)
            commands += via("r1", lab)
        elif node == "d":
            lab = ("198.51.100.0/24", "203.0.113.0/24") if fam == 4 else ("2001:db8::/32",)
            commands += via("r3", lab)
        elif node == "r1":
            hops = " ".join(
                f"nexthop via {_link('r1', peer).address(peer, fam)} dev {Link.interface(peer)}"
                for peer in ("r2a", "r2b")
            )
            commands += [
                f"-{fam} route add {p} {hops}" for p in (*subnets(4, 5, 6), *downstream)
            ]
        elif node == "r2a":
            commands += via("r1", subnets(1, 3)) + via("r3", (*subnets(5, 6), *downstream))
        elif node == "r2b":
            commands += via("r1", subnets(1, 2)) + via("r3", (*subnets(4, 6), *downstream))
        elif node == "r3":
            commands += via("r2a", subnets(1, 2, 3)) + via("d", (plan.target_prefix,))
            commands += [
                f"-{fam} route add blackhole {plan.blackhole_prefix}",
                f"-{fam} route add unreachable {plan.unreachable_prefix}",
            ]
    return commands


def _node_setup(node: Node) -> str:
    """An ``ip -batch`` script that brings up ``node``'s links, addresses and routes."""
    lines = ["link set lo up"]
    for link in LINKS:
        if node not in (link.first, link.second):
            continue
        dev = Link.interface(link.peer(node))
        lines += [
            f"addr add {link.address(node, 4)}/30 dev {dev}",
            f"addr add {link.address(node, 6)}/64 dev {dev} nodad",
            f"link set {dev} up",
        ]
    if node == "d":
        for family, length in ((4, 32), (6, 128)):
            fam: Family = family  # type: ignore[assignment]
            flags = " nodad" if fam == 6 else ""
            lines += [f"addr add {t}/{length} dev lo{flags}" for t in PLAN.family(fam).targets]
    lines += _routes(node)
    return "\n".join(lines) + "\n"


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
            ["ip", "-n", name, "link", "add", "a", "type", "veth", "peer", "name", "b"],
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
                f"link add {Link.interface(link.second)} netns {self.netns(link.first)} type veth"
                f" peer name {Link.interface(link.first)} netns {self.netns(link.second)}\n"
                for link in LINKS
            ),
        )
        _run_all([(["ip", "-n", self.netns(n), "-batch", "-"], _node_setup(n)) for n in NODES])
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
                link.address(link.peer(node), family)
                for link in LINKS
                if node in (link.first, link.second)
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
                f"add table inet {_NFT_TABLE}\n"
                f"flush table inet {_NFT_TABLE}\n"
                f"add chain inet {_NFT_TABLE} output"
                " { type filter hook output priority 0 ; policy accept ; }\n"
                f"add rule inet {_NFT_TABLE} output icmp type time-exceeded drop\n"
                f"add rule inet {_NFT_TABLE} output icmpv6 type time-exceeded drop\n"
            )
            self.run(node, ["nft", "-f", "-"], check=False)  # nothing: keeps argv simple
            _run([*self.netns_exec(node), "nft", "-f", "-"], stdin=script)
            self._silent.add(node)
        else:
            tables = self.run(node, ["nft", "list", "tables"]).stdout
            if f"table inet {_NFT_TABLE}" in tables:
                self.run(node, ["nft", "delete", "table", "inet", _NFT_TABLE])
            self._silent.discard(node)

    @contextlib.contextmanager
    def silent(self, router: str) -> Iterator[None]:
        """``router`` sends no time-exceeded inside the block."""
        self.set_silent(router, True)
        try:
            yield
        finally:
            self.set_silent(router, False)

    @property
    def silent_routers(self) -> frozenset[str]:
        return frozenset(self._silent)
