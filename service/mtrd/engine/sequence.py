"""Sequence numbers: how the pool makes sure no reply goes to the wrong probe.

mtr-packet tells its probes apart by a sequence number that it carries in the
packet (ICMP sequence, udp/tcp port or udp checksum). Each process counts it
from ``low`` (33000; 33434 from 0.96), one per ``send-probe`` it allocates,
wrapping after 65535. Every mtr-packet process on a host receives every ICMP
error, and matches it to its own probes like this:

* quoted ICMP: the ICMP id must equal the process id (16 bits), then the sequence;
* quoted udp: the first probe whose sequence equals the destination port, else
  the source port, else the checksum; then ports and addresses must match;
* quoted tcp: the first probe, of any protocol, whose sequence equals the
  quoted source port. Nothing else is checked.

So a reply goes to the wrong probe when two outstanding probes -- in one
process or in two -- share a sequence number, or when a udp probe's fixed port
equals another probe's sequence. The pool rules both out:

1. **Bands.** The sequence ring is cut into one band per pool slot. A process
   starts at ``low`` and, as soon as it is ready, is moved to its slot's band by
   *burning* sequence numbers: a ``send-probe`` with an address mtr-packet cannot decode allocates
   a sequence and fails before sending anything, so a burn costs no packet and no
   wait. Processes of different slots therefore count in disjoint
   ranges.
2. **Retirement instead of wrapping.** Each band ends in a guard. Before a
   process's counter reaches the guard it is retired: it gets no new probe,
   its stdin is closed, it finishes what it holds and exits, and a fresh
   process takes over the slot. A counter never wraps, so a process never
   reuses a sequence that is still outstanding.
3. **The ledger.** The pool mirrors every process's counter (one per probe
   written, one per burn) and records the sequence of every outstanding probe
   and every fixed udp header value (destination port, source port, or the
   process id used as source port) that lies in the sequence range. A process
   is only given a sequence that nobody holds and that is no outstanding udp
   probe's fixed port; a taken one is burned. A udp probe whose fixed port is
   some outstanding probe's sequence waits until that probe ends. This also
   covers a retired process still draining while its successor counts through
   the same band.
4. **ICMP ids.** Two live processes whose process ids agree in their low 16
   bits would accept each other's ICMP probes; the pool replaces a new process
   whose id collides.

The mirror is exact except for one case: a tcp probe whose port is already
bound by some other socket on the host makes mtr-packet skip to the next
sequence. That moves the real counter ahead of the mirror, at most once per
port bound elsewhere in the band; the guard absorbs it. Any reply that says the
mirror may be wrong (``probes-exhausted``, ``invalid-argument`` or an unknown
line for a probe) retires the process at once.
"""

from __future__ import annotations

import enum
from collections import Counter

import attrs

from mtrd.engine.probe import ProbeRequest, Protocol

MAX_GUARD = 1024


@attrs.frozen
class SequenceSpace:
    """The inclusive range mtr-packet counts sequence numbers in."""

    low: int
    high: int

    @classmethod
    def for_version(cls, version: str) -> SequenceSpace:
        """The range used by the given mtr-packet version string (e.g. "0.95")."""
        return cls(low=33434 if _version_tuple(version) >= (0, 96) else 33000, high=65535)

    @property
    def size(self) -> int:
        """How many sequence numbers the ring holds."""
        return self.high - self.low + 1

    def bands(self, count: int) -> tuple[Band, ...]:
        """Cut the ring into ``count`` disjoint bands, each ending in a guard."""
        if count < 1:
            raise ValueError("at least one band")
        width = self.size // count
        guard = min(MAX_GUARD, width // 4)
        return tuple(
            Band(start=self.low + i * width, stop=self.low + (i + 1) * width - guard)
            for i in range(count)
        )


def _version_tuple(version: str) -> tuple[int, ...]:
    numbers = []
    for part in version.strip().split("."):
        digits = "".join(c for c in part if c.isascii() and c.isdigit())
        if not digits:
            break
        numbers.append(int(digits))
    return tuple(numbers)


@attrs.frozen
class Band:
    """The sequence numbers ``start <= s < stop`` one slot's process may use."""

    start: int
    stop: int

    @property
    def usable(self) -> int:
        """How many probes (and burns) one process can take from this band."""
        return self.stop - self.start


def fixed_udp_values(request: ProbeRequest, process_id: int) -> tuple[int, ...]:
    """The udp header values of ``request`` that mtr-packet will look sequences up in.

    The sequence itself goes into whichever of destination port, source port
    and checksum is not fixed; the fixed ones are returned here.
    """
    if request.protocol is not Protocol.UDP:
        return ()
    if request.port is not None:
        if request.local_port is not None:
            return (request.port, request.local_port)
        return (request.port,)
    if request.local_port is not None:
        return (request.local_port,)
    return (process_id & 0xFFFF,)


class Plan(enum.Enum):
    """Why a probe cannot be given a sequence right now."""

    WAIT = "wait"  # a fixed udp port is some outstanding probe's sequence
    EXHAUSTED = "exhausted"  # the process reached the end of its band


@attrs.frozen
class Allocation:
    """Send ``burns`` burn commands, then the probe: it gets ``sequence``."""

    burns: int
    sequence: int


@attrs.define
class SequenceLedger:
    """Pool-wide record of the sequence numbers and udp ports outstanding probes hold."""

    space: SequenceSpace
    _held: set[int] = attrs.field(factory=set)
    _udp_ports: Counter[int] = attrs.field(factory=Counter)

    def allocate(
        self, next_sequence: int, band: Band, udp_ports: tuple[int, ...]
    ) -> Allocation | Plan:
        """Find the first usable sequence from ``next_sequence`` within ``band``."""
        held = self._held
        if udp_ports and any(port in held for port in udp_ports):
            return Plan.WAIT
        sequence = max(next_sequence, band.start)
        while sequence < band.stop:
            taken = sequence in held or sequence in self._udp_ports or sequence in udp_ports
            if not taken:
                return Allocation(burns=sequence - next_sequence, sequence=sequence)
            sequence += 1
        return Plan.EXHAUSTED

    def blocking(self, udp_ports: tuple[int, ...]) -> int | None:
        """The first of ``udp_ports`` that an outstanding probe holds as its sequence."""
        return next((port for port in udp_ports if port in self._held), None)

    def hold(self, sequence: int, udp_ports: tuple[int, ...]) -> None:
        """Record that a probe now holds ``sequence`` and these fixed udp values."""
        if sequence in self._held:
            raise AssertionError(f"sequence {sequence} is already held")
        self._held.add(sequence)
        for port in udp_ports:
            if self.space.low <= port <= self.space.high:
                self._udp_ports[port] += 1

    def release(self, sequence: int, udp_ports: tuple[int, ...]) -> None:
        """Forget a probe that ended: its sequence and ports are free again."""
        self._held.discard(sequence)
        for port in udp_ports:
            if self.space.low <= port <= self.space.high:
                self._udp_ports[port] -= 1
                if self._udp_ports[port] <= 0:
                    del self._udp_ports[port]

    @property
    def outstanding(self) -> int:
        """How many probes hold a sequence now."""
        return len(self._held)
