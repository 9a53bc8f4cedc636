"""How long to wait for a probe's answer: traceroute's adaptive wait (``-w MAX,HERE,NEAR``).

mtr-packet waits a whole ``timeout`` for every probe. A trace need not: once it knows
how long answers take on this path, a probe still unanswered after several times that
is given up (counted lost) so the round can move on. mtr-packet still owns the probe's
sequence until its own timeout, and an answer that arrives after the give-up is a
*late* reply: counted apart, not in loss or round-trip figures.

The rule, as traceroute's (the caller says when the wait starts: a round-based prober
whose probes may be held in a queue starts it once the probe surely went out):

* ``here``: this TTL answered before with round-trip time r: wait ``here x r``;
* ``near``: otherwise, a probe at a higher TTL of this trace (sent with this one or
  earlier) answered with round-trip time r: wait ``near x r``;
* never longer than ``timeout``, never shorter than a floor: :data:`WAIT_FLOOR`, raised
  by :class:`WaitFloor` while answers come late (a busy host reads them late);
* 0 turns a factor off; with both off every probe waits its whole ``timeout``.

The rule is a value and a pure function, so any round-based prober (multipath too)
can use it.
"""

from __future__ import annotations

import attrs

# The shortest wait: a reply that has already arrived must still be read from
# mtr-packet's pipe (which can lag behind by a reactor turn or a batch of lines)
# before its probe is given up.
WAIT_FLOOR = 0.005
DEFAULT_HERE = 3.0
DEFAULT_NEAR = 10.0
MAX_FACTOR = 100.0


@attrs.frozen
class WaitRule:
    """traceroute's HERE and NEAR factors; 0 turns one off."""

    here: float = DEFAULT_HERE
    near: float = DEFAULT_NEAR

    @property
    def adaptive(self) -> bool:
        """Whether the rule ever waits less than the timeout."""
        return self.here > 0 or self.near > 0

    def wait(
        self,
        timeout: float,
        *,
        here_rtt: float | None,
        near_rtt: float | None,
        floor: float = WAIT_FLOOR,
    ) -> float:
        """Seconds to wait for a probe from its send time.

        ``here_rtt`` is the last round-trip time (seconds) at the probe's own TTL,
        ``near_rtt`` that of the nearest higher TTL that answered; None when unknown.
        """
        if self.here > 0 and here_rtt is not None:
            seconds = self.here * here_rtt
        elif self.near > 0 and near_rtt is not None:
            seconds = self.near * near_rtt
        else:
            return float(timeout)
        return min(float(timeout), max(floor, seconds))


@attrs.define
class WaitFloor:
    """The shortest wait now, shared by the traces of one process.

    Round-trip times are measured by mtr-packet, but its answers reach mtrd only when
    both processes get the CPU: on a busy host an answer can sit in a pipe for tens of
    milliseconds, longer than a few times a lab's round trip. Each late answer shows
    that: the floor rises to twice the time that answer took, then halves every
    ``half_life`` seconds without another, back to ``base`` (as TCP backs its
    retransmission timer off after a spurious retransmission).
    """

    base: float = WAIT_FLOOR
    half_life: float = 10.0
    _raised: float = attrs.field(default=0.0, init=False)
    _at: float = attrs.field(default=0.0, init=False)

    def seconds(self, now: float) -> float:
        """The floor at ``now``."""
        if self._raised <= self.base:
            return self.base
        decay: float = 0.5 ** ((now - self._at) / self.half_life)
        return max(self.base, self._raised * decay)

    def late(self, waited: float, now: float) -> None:
        """An answer came ``waited`` seconds after its probe's wait started."""
        self._raised = max(self.seconds(now), 2 * waited)
        self._at = now
