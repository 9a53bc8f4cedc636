"""A trace as the service sees it: its request, its status and the hops found so far.

Every value here is frozen: the runner builds new ones as replies arrive and the
store keeps the latest. Times are seconds since the epoch, read from the injected
clock; they become RFC 3339 only at the HTTP edge.
"""

from __future__ import annotations

import enum
from typing import Protocol as TypingProtocol

import attrs

from mtrd.annotations.model import Annotation, Sources
from mtrd.engine.probe import MplsLabel, Protocol
from mtrd.tracing.wait import WaitRule

DEFAULT_PORTS = {Protocol.UDP: 33434, Protocol.TCP: 80}


class TraceStatus(enum.StrEnum):
    """Where a trace is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """True once the trace will not change any more."""
        return self in _FINAL


# A set made once: naming the members on every call costs a class lookup each.
_FINAL = frozenset((TraceStatus.COMPLETED, TraceStatus.FAILED, TraceStatus.CANCELLED))


class HopEnd(enum.StrEnum):
    """How a hop ended the path, where that matters."""

    DESTINATION = "destination"  # the target itself answered here
    UNREACHABLE = "unreachable"  # a router answered ICMP unreachable (no-route)
    HOST_DOWN = "host-down"


class TraceMode(enum.StrEnum):
    """How a trace probes: one flow per TTL (classic), or every load-balanced path."""

    CLASSIC = "classic"
    MULTIPATH = "multipath"


@attrs.frozen
class TraceRequest:
    """A trace request, normalised: every default filled in, every value checked."""

    target: str
    ip_version: int | None = None
    protocol: Protocol = Protocol.ICMP
    port: int | None = None
    first_ttl: int = 1
    max_ttl: int = 30
    probes: int = 3
    interval: float = 1.0
    timeout: int = 2
    size: int | None = None
    tos: int | None = None
    mode: TraceMode = TraceMode.CLASSIC
    confidence: int = 95  # multipath: the chance of finding each interface, in percent
    wait: WaitRule = WaitRule()  # give a probe up before ``timeout`` (traceroute's -w)


class StopReason(enum.StrEnum):
    """Why a finished trace stopped probing."""

    DESTINATION = "destination"  # the target answered
    UNREACHABLE = "unreachable"  # a router (or the target) answered ICMP unreachable
    GAP_LIMIT = "gap_limit"  # a run of silent TTLs past the last that answered
    MAX_TTL = "max_ttl"  # every TTL up to max_ttl was probed and none ended the path
    CANCELLED = "cancelled"
    DEADLINE = "deadline"  # the trace ran out of time
    ERROR = "error"  # any other failure (see the trace's error)
    PROBE_LIMIT = "probe_limit"  # multipath: the trace's probe bound was reached


@attrs.frozen
class Stop:
    """Why a trace stopped; ``unreachable`` is the ICMP kind in mtr-packet's words
    (``no-route``, ``no-route-network``, ``no-route-host``, ``host-down``) when the
    reason is UNREACHABLE."""

    reason: StopReason
    unreachable: str | None = None


@attrs.frozen(weakref_slot=False)
class Responder:
    """An address that answered at one TTL, how often, the MPLS labels it quoted, and
    its name and network once known (None: nothing known, or annotations are off)."""

    address: str
    replies: int
    mpls: tuple[MplsLabel, ...] = ()
    annotation: Annotation | None = None


@attrs.frozen(weakref_slot=False)
class RttStats:
    """Round-trip times of one hop in milliseconds; all None while nothing came back."""

    last: float | None = None
    best: float | None = None
    avg: float | None = None
    worst: float | None = None
    stdev: float | None = None


@attrs.frozen(weakref_slot=False)
class JitterStats:
    """Differences between consecutive round-trip times, in milliseconds (as mtr)."""

    last: float | None = None
    avg: float | None = None
    max: float | None = None


@attrs.frozen(weakref_slot=False)
class Hop:
    """What is known about one TTL of a trace."""

    ttl: int
    responders: tuple[Responder, ...] = ()
    sent: int = 0
    received: int = 0
    lost: int = 0
    rtt_ms: RttStats = RttStats()
    jitter_ms: JitterStats = JitterStats()
    end: HopEnd | None = None
    late: int = 0  # answers that came after their probe was given up (counted in ``lost``)

    @property
    def loss_pct(self) -> float:
        """Share of the probes whose wait is over that got no answer, in percent."""
        done = self.received + self.lost
        return 0.0 if done == 0 else 100.0 * self.lost / done

    def snapshot(self) -> Hop:
        """A hop value is its own snapshot (see :class:`LiveHop`)."""
        return self


class LiveHop(TypingProtocol):
    """A hop whose figures may still change: a :class:`Hop` value, or the running
    figures of a trace in progress (``mtrd.tracing.stats.HopAccumulator``), which are
    turned into a value only when someone asks."""

    @property
    def ttl(self) -> int:
        """The TTL the hop is at."""
        ...

    def snapshot(self) -> Hop:
        """The figures now, as a value."""
        ...


@attrs.frozen
class TraceTarget:
    """What was asked for and what it resolved to."""

    input: str
    address: str | None = None
    ip_version: int | None = None


@attrs.frozen
class TraceError:
    """Why a trace failed: a short machine-readable type and a sentence."""

    type: str
    message: str


@attrs.frozen
class Trace:
    """A snapshot of one trace."""

    id: str
    status: TraceStatus
    request: TraceRequest
    target: TraceTarget
    created_at: float
    source: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    destination_reached: bool = False
    hops: tuple[Hop, ...] = ()
    error: TraceError | None = None
    vantage: str = ""  # where the trace is probed from (--vantage of the replicas there)
    replica: str | None = None  # the process that runs it; None while nobody has taken it
    multipath: MultipathResult | None = None  # what a multipath trace learned beyond its hops
    annotations: Sources = Sources()  # the databases the responders' AS data came from
    # Why the run stopped, kept only where the status does not already say it (see
    # :attr:`stop_reason`): one trace has one value, however it was built or read back.
    stop: Stop | None = None
    # The tenant that asked for it (an opaque name, never rendered); None without auth.
    owner: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.stop is not None and self.stop == self._stop_from_status():
            object.__setattr__(self, "stop", None)

    @property
    def stop_reason(self) -> Stop | None:
        """Why the trace stopped; None until it is final.

        A trace that ended without a run saying why (failed before probing, cancelled
        while queued, lost with its replica) takes the reason from its status.
        """
        if not self.status.is_final:
            return None
        return self.stop if self.stop is not None else self._stop_from_status()

    def _stop_from_status(self) -> Stop:
        if self.status is TraceStatus.CANCELLED:
            return Stop(StopReason.CANCELLED)
        if self.status is TraceStatus.FAILED:
            deadline = self.error is not None and self.error.type == "deadline"
            return Stop(StopReason.DEADLINE if deadline else StopReason.ERROR)
        return Stop(StopReason.DESTINATION if self.destination_reached else StopReason.MAX_TTL)


@attrs.frozen
class PathLink:
    """A responder at ``ttl`` that leads to ``to`` at ``ttl + 1`` on some flow."""

    ttl: int
    source: str
    to: str


@attrs.frozen
class FlowHop:
    """What one flow's probe at ``ttl`` found: a responder and its RTT, or nothing."""

    ttl: int
    address: str | None
    rtt_ms: float | None = None


@attrs.frozen
class FlowPath:
    """One flow of a multipath trace: its source port and its responder per TTL."""

    flow: int
    local_port: int
    hops: tuple[FlowHop, ...]

    @property
    def lost(self) -> int:
        """Probes of this flow that got no answer."""
        return sum(1 for hop in self.hops if hop.address is None)

    @property
    def loss_pct(self) -> float:
        """Share of this flow's probes that got no answer, in percent."""
        return 0.0 if not self.hops else 100.0 * self.lost / len(self.hops)


@attrs.frozen
class MultipathResult:
    """The links and flows a multipath trace learned, and why it stopped."""

    confidence: int
    links: tuple[PathLink, ...] = ()
    flows: tuple[FlowPath, ...] = ()
    probes_sent: int = 0
    stop_reason: str | None = None
    full_mda_hops: tuple[int, ...] = ()  # hops where MDA-Lite fell back to full MDA
