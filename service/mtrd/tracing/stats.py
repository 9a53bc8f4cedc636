"""Hop statistics as mtr keeps them: pure arithmetic over the replies at one TTL.

The figures follow mtr's ``net_process_ping`` (ui/net.c, 0.95) but stay in
floating point milliseconds throughout: mtr truncates its previous mean to whole
microseconds before each update, which biases the mean and the deviation by up
to a microsecond per reply. Best, worst and jitter are kept in integer
microseconds, as they arrive, and converted only in :meth:`HopAccumulator.snapshot`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import attrs

from mtrd.annotations.model import Annotation
from mtrd.engine.probe import MplsLabel
from mtrd.tracing.model import Hop, HopEnd, JitterStats, Responder, RttStats

# How much an end says about the path: the destination answering settles it, an
# unreachable router explains why it stops there, host-down is the weakest claim.
_END_RANK: dict[HopEnd | None, int] = {
    None: 0,
    HopEnd.HOST_DOWN: 1,
    HopEnd.UNREACHABLE: 2,
    HopEnd.DESTINATION: 3,
}


def _ms(microseconds: int) -> float:
    return microseconds / 1000.0


@attrs.define
class HopAccumulator:
    """The running figures of one TTL, updated as probes are sent, answered or lost."""

    ttl: int
    _sent: int = attrs.field(default=0, init=False)
    _received: int = attrs.field(default=0, init=False)
    _lost: int = attrs.field(default=0, init=False)
    _late: int = attrs.field(default=0, init=False)
    # Insertion order is the order of first answer, which the snapshot keeps.
    _responders: dict[str, Responder] = attrs.field(factory=dict, init=False)
    _end: HopEnd | None = attrs.field(default=None, init=False)
    _last_us: int = attrs.field(default=0, init=False)
    _best_us: int = attrs.field(default=0, init=False)
    _worst_us: int = attrs.field(default=0, init=False)
    _avg_ms: float = attrs.field(default=0.0, init=False)
    _ssd: float = attrs.field(default=0.0, init=False)
    _jitter_last_us: int = attrs.field(default=0, init=False)
    _jitter_max_us: int = attrs.field(default=0, init=False)
    _jitter_avg_ms: float = attrs.field(default=0.0, init=False)
    _snapshot: Hop | None = attrs.field(default=None, init=False)  # until the next change

    @property
    def sent(self) -> int:
        """Probes sent at this TTL."""
        return self._sent

    @property
    def received(self) -> int:
        """Probes answered."""
        return self._received

    @property
    def lost(self) -> int:
        """Probes whose wait is over with no answer."""
        return self._lost

    def record_sent(self) -> None:
        """Count a probe sent at this TTL."""
        self._sent += 1
        self._snapshot = None

    def record_reply(
        self,
        address: str,
        rtt_us: int,
        mpls: tuple[MplsLabel, ...] = (),
        end: HopEnd | None = None,
    ) -> None:
        """Count an answer from ``address`` after ``rtt_us`` microseconds.

        ``end`` says whether the answer ended the path here (the destination, an
        ICMP unreachable, host-down). Raises ValueError when no sent probe is left
        to answer.
        """
        self._check_outstanding("reply")
        self._snapshot = None
        self._received += 1
        n = self._received

        known = self._responders.get(address)
        if known is None:
            # The same routers answer trace after trace: stored traces share one string
            # per address instead of one per reply parsed.
            address = sys.intern(address)
            self._responders[address] = Responder(address=address, replies=1, mpls=mpls)
        else:
            self._responders[known.address] = Responder(
                known.address, known.replies + 1, mpls, known.annotation
            )
        if _END_RANK[end] > _END_RANK[self._end]:
            self._end = end

        if n == 1:
            # As mtr: the first reply sets best and worst, and has no jitter.
            self._best_us = self._worst_us = rtt_us
            jitter_us = 0
        else:
            self._best_us = min(self._best_us, rtt_us)
            self._worst_us = max(self._worst_us, rtt_us)
            jitter_us = abs(rtt_us - self._last_us)
        self._last_us = rtt_us

        rtt_ms = _ms(rtt_us)
        old_avg = self._avg_ms
        self._avg_ms += (rtt_ms - old_avg) / n
        self._ssd += (rtt_ms - old_avg) * (rtt_ms - self._avg_ms)

        self._jitter_last_us = jitter_us
        self._jitter_max_us = max(self._jitter_max_us, jitter_us)
        self._jitter_avg_ms += (_ms(jitter_us) - self._jitter_avg_ms) / n

    def annotate(self, address: str, annotation: Annotation) -> bool:
        """Say who ``address`` is; True when that changed the hop (it answered here)."""
        known = self._responders.get(address)
        if known is None or known.annotation is annotation:
            return False
        self._responders[address] = attrs.evolve(known, annotation=annotation)
        self._snapshot = None
        return True

    @property
    def late(self) -> int:
        """Answers that came after their probe was given up."""
        return self._late

    def record_late(
        self, address: str, mpls: tuple[MplsLabel, ...] = (), end: HopEnd | None = None
    ) -> None:
        """Count an answer to a probe already counted lost (given up on).

        The responder becomes visible (with no reply counted to it if it is new); loss
        and round-trip figures stay as they were. Raises ValueError when no probe was
        counted lost.
        """
        if self._late >= self._lost:
            raise ValueError(f"TTL {self.ttl}: a late answer with no probe given up")
        self._snapshot = None
        self._late += 1
        if address not in self._responders:
            self._responders[sys.intern(address)] = Responder(address, replies=0, mpls=mpls)
        if _END_RANK[end] > _END_RANK[self._end]:
            self._end = end

    def record_lost(self) -> None:
        """Count a probe whose wait is over with no answer. Raises ValueError if none is out."""
        self._check_outstanding("loss")
        self._snapshot = None
        self._lost += 1

    def snapshot(self) -> Hop:
        """The hop as a frozen value, figures in milliseconds (made once per change)."""
        if self._snapshot is None:
            self._snapshot = self._make_snapshot()
        return self._snapshot

    def _make_snapshot(self) -> Hop:
        return Hop(
            ttl=self.ttl,
            responders=tuple(self._responders.values()),
            sent=self._sent,
            received=self._received,
            lost=self._lost,
            rtt_ms=self._rtt(),
            jitter_ms=self._jitter(),
            end=self._end,
            late=self._late,
        )

    def _check_outstanding(self, what: str) -> None:
        if self._received + self._lost >= self._sent:
            raise ValueError(
                f"TTL {self.ttl}: a {what} with no probe outstanding "
                f"(sent {self._sent}, received {self._received}, lost {self._lost})"
            )

    def _rtt(self) -> RttStats:
        n = self._received
        if n == 0:
            return RttStats()
        return RttStats(
            last=_ms(self._last_us),
            best=_ms(self._best_us),
            avg=self._avg_ms,
            worst=_ms(self._worst_us),
            # Every Welford term is >= 0 in exact arithmetic; rounding need not keep it so.
            stdev=math.sqrt(max(self._ssd, 0.0) / (n - 1)) if n > 1 else 0.0,
        )

    def _jitter(self) -> JitterStats:
        if self._received == 0:
            return JitterStats()
        return JitterStats(
            last=_ms(self._jitter_last_us),
            avg=self._jitter_avg_ms,
            max=_ms(self._jitter_max_us),
        )


def forward_loss(hops: Sequence[Hop]) -> list[float]:
    """Each hop's loss that carries on to the path beyond it, in percent.

    A router that rate-limits its own replies shows loss that later hops do not: that
    loss is not packet loss. Each hop's forward loss is the lowest loss among itself
    and every later hop that answered (the last hop's is its own loss).
    """
    result = [0.0] * len(hops)
    lowest: float | None = None
    for index in range(len(hops) - 1, -1, -1):
        hop = hops[index]
        own = hop.loss_pct
        result[index] = own if lowest is None else min(own, lowest)
        if hop.received > 0:
            lowest = own if lowest is None else min(own, lowest)
    return result
