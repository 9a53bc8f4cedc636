"""Which flows to probe at which TTL to find every interface of a multipath route.

The discovery is pure logic: it hands out batches of (flow, TTL) probes, is told
what each one found, and decides the next batch from that alone. It explores one
TTL (a *hop*) at a time; the hop before it is the *previous* hop (for the first
TTL, a virtual source that every flow reaches). Three rules decide how many
flows a hop gets:

* **Hop-level stopping (MDA-Lite).** With k interfaces seen at the hop, it
  gets n_k answered-or-lost flows in all (:func:`~.stopping.stopping_point`),
  reusing flows already known at the previous hop before drawing new ones.
  This is exact when the diamond is uniform and unmeshed.
* **Meshing and uniformity test (MDA-Lite).** When both hops are wider than
  one, each vertex of the previous hop must have ``meshing_flows`` flows traced
  through it. If one vertex then shows several successors while some interface
  of the hop shows several predecessors (meshing), or the vertices of the
  previous hop show different numbers of successors (a non-uniform split), the
  hop falls back to full MDA.
* **Vertex-level stopping with node control (full MDA).** Every vertex u of
  the previous hop with k known successors gets n_k flows that reach u traced
  at the hop. Flows known to reach u are reused first; when there are too few,
  new flows are probed at the previous hop until enough of them land on u.

A hop whose probes all go unanswered is *silent*: every flow crosses it through
one anonymous vertex, so node control can carry on past it. Exploration stops
once every interface of a hop ends the path (the destination, or a router that
answered unreachable), at ``max_ttl``, after ``max_unknown`` silent hops in a
row, or when the probe budget is spent.
"""

from __future__ import annotations

import enum
import math
from collections import defaultdict
from collections.abc import Callable, Iterable

import attrs

from mtrd.tracing.model import HopEnd
from mtrd.tracing.multipath.stopping import stopping_point

SOURCE = ""  # the vertex before the first TTL: every flow starts there
SILENT = "*"  # the one vertex of a hop where nothing answered
DEFAULT_MESHING_FLOWS = 2


class StopReason(enum.StrEnum):
    """Why the discovery stopped (the classic trace's reasons, plus the budget)."""

    DESTINATION = "destination"
    UNREACHABLE = "unreachable"
    GAP_LIMIT = "gap_limit"
    MAX_TTL = "max_ttl"
    PROBE_LIMIT = "probe_limit"


@attrs.frozen
class FlowProbe:
    """One probe to send: the flow it belongs to and its TTL."""

    flow: int
    ttl: int


@attrs.frozen
class Answer:
    """What a probe found: the interface that answered, and whether it ends the path."""

    address: str
    end: HopEnd | None = None


@attrs.frozen
class Link:
    """An interface at ``ttl`` that leads to ``to`` at ``ttl + 1`` (seen on some flow)."""

    ttl: int
    source: str
    to: str


class _Phase(enum.Enum):
    LITE = "lite"
    MESHING = "meshing"
    FULL = "full"


class MultipathDiscovery:
    """MDA / MDA-Lite over one path; see the module docstring.

    Call :meth:`next_batch`, probe every :class:`FlowProbe` it returns, report each
    with :meth:`record` (an :class:`Answer`, or None when it was lost), and repeat
    until it returns an empty batch; :attr:`stop_reason` then says why.
    """

    def __init__(
        self,
        *,
        confidence: int = 95,
        first_ttl: int = 1,
        max_ttl: int = 30,
        lite: bool = True,
        max_flows: int = 1024,
        max_probes: int = 4096,
        max_unknown: int = 5,
        meshing_flows: int = DEFAULT_MESHING_FLOWS,
    ) -> None:
        stopping_point(1, confidence)  # validates the confidence
        if not 1 <= first_ttl <= max_ttl:
            raise ValueError("first_ttl must be between 1 and max_ttl")
        self.confidence = confidence
        self.first_ttl = first_ttl
        self.max_ttl = max_ttl
        self.lite = lite
        self.max_flows = max_flows
        self.max_probes = max_probes
        self.max_unknown = max_unknown
        self.meshing_flows = meshing_flows
        self._answers: dict[int, dict[int, Answer | None]] = defaultdict(dict)
        self._pending: set[FlowProbe] = set()
        self._silent: set[int] = set()
        self._next_flow = 0
        self.probes_sent = 0
        self.hop = first_ttl
        self._phase = _Phase.LITE if lite else _Phase.FULL
        self.full_mda_hops: list[int] = []  # hops where MDA-Lite fell back to full MDA
        self.stop_reason: StopReason | None = None

    # -- the loop -------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """True once nothing more will be probed."""
        return self.stop_reason is not None

    def next_batch(self) -> list[FlowProbe]:
        """The probes to send now; empty once the discovery is over.

        Every probe of the previous batch must have been recorded first.
        """
        if self._pending:
            raise RuntimeError("record every probe of a batch before asking for the next")
        while not self.done:
            batch = self._hop_batch(self.hop)
            if batch:
                room = self.max_probes - self.probes_sent
                if room <= 0:
                    self.stop_reason = StopReason.PROBE_LIMIT
                    return []
                batch = batch[:room]
                self._pending.update(batch)
                self.probes_sent += len(batch)
                return batch
            self._hop_complete(self.hop)
        return []

    def record(self, probe: FlowProbe, answer: Answer | None) -> None:
        """What ``probe`` found: an answer, or None when nothing came back."""
        self._pending.remove(probe)
        self._answers[probe.ttl][probe.flow] = answer

    # -- what was found -------------------------------------------------------------------

    def interfaces(self) -> dict[int, tuple[str, ...]]:
        """Every interface that answered, by TTL (in the order first seen)."""
        found: dict[int, tuple[str, ...]] = {}
        for ttl in sorted(self._answers):
            addresses = dict.fromkeys(a.address for a in self._answers[ttl].values() if a)
            found[ttl] = tuple(addresses)
        return found

    def links(self) -> tuple[Link, ...]:
        """Links seen on some flow that answered at both ends, ordered by TTL."""
        seen: dict[Link, None] = {}
        for ttl in sorted(self._answers):
            later = self._answers.get(ttl + 1)
            if not later:
                continue
            here = self._answers[ttl]
            for flow, answer in here.items():
                after = later.get(flow)
                if answer is not None and after is not None and answer.end is None:
                    seen[Link(ttl, answer.address, after.address)] = None
            # A hop with one interface, where no path ends, is crossed by every flow:
            # flows first probed after it still show where it leads. (MDA's own inference:
            # should the confidence have let an interface of this hop go unfound, the
            # links of the flows that crossed it show as the found one's.)
            only = {a.address for a in here.values() if a}
            if len(only) == 1 and not self._ends(ttl) and ttl not in self._silent:
                (address,) = only
                for after in later.values():
                    if after is not None:
                        seen[Link(ttl, address, after.address)] = None
        return tuple(seen)

    def flow_answers(self) -> dict[int, dict[int, Answer | None]]:
        """Each flow's answer (or None when lost) at every TTL it was probed at."""
        flows: dict[int, dict[int, Answer | None]] = defaultdict(dict)
        for ttl in sorted(self._answers):
            for flow, answer in self._answers[ttl].items():
                flows[flow][ttl] = answer
        return {flow: flows[flow] for flow in sorted(flows)}

    # -- one hop --------------------------------------------------------------------------

    def _vertex(self, flow: int, ttl: int) -> str | None:
        """The vertex ``flow`` crosses at ``ttl``; None when that is not known."""
        if ttl < self.first_ttl:
            return SOURCE
        answer = self._answers[ttl].get(flow, False) if ttl in self._answers else False
        if answer is False:
            return None
        if answer is None:
            return SILENT if ttl in self._silent else None
        assert isinstance(answer, Answer)
        return answer.address

    def _ends(self, ttl: int) -> set[str]:
        return {a.address for a in self._answers[ttl].values() if a and a.end is not None}

    def _through(self, ttl: int) -> dict[str, list[int]]:
        """Flows known to reach each vertex at ``ttl`` that does not end the path."""
        if ttl < self.first_ttl:
            return {SOURCE: []}
        ends = self._ends(ttl)
        through: dict[str, list[int]] = defaultdict(list)
        for flow in self._answers[ttl]:
            vertex = self._vertex(flow, ttl)
            if vertex is not None and vertex not in ends:
                through[vertex].append(flow)
        return through

    def _hop_batch(self, hop: int) -> list[FlowProbe]:
        at_hop = self._answers[hop]
        found = {a.address for a in at_hop.values() if a}
        previous = self._through(hop - 1)
        if self._phase is _Phase.LITE:
            # A hop where nothing answered yet gets n_1 flows before it counts as silent.
            wanted = stopping_point(max(len(found), 1), self.confidence) - len(at_hop)
            if wanted > 0:
                return self._spread(hop, previous, wanted)
            if not found:
                return []
            self._phase = _Phase.MESHING
        if hop == self.first_ttl:
            # Every flow starts at the source: hop-level stopping is vertex-level here.
            wanted = stopping_point(max(len(found), 1), self.confidence) - len(at_hop)
            return self._spread(hop, previous, wanted) if wanted > 0 else []
        if self._phase is _Phase.MESHING:
            if len(previous) < 2 or len(found) < 2:
                return []
            batch = self._node_control(hop, previous, lambda _: self.meshing_flows)
            if batch:
                return batch
            if not self._meshed_or_uneven(hop, previous):
                return []
            self._phase = _Phase.FULL
            self.full_mda_hops.append(hop)

        def needed(vertex: str) -> int:
            successors = {
                a.address for flow in previous[vertex] if (a := at_hop.get(flow)) is not None
            }
            return stopping_point(max(len(successors), 1), self.confidence)

        return self._node_control(hop, previous, needed)

    def _spread(self, hop: int, previous: dict[str, list[int]], wanted: int) -> list[FlowProbe]:
        """``wanted`` flows at ``hop``: known ones first, round robin over the vertices
        before it, then new ones."""
        at_hop = self._answers[hop]
        queues = [[f for f in flows if f not in at_hop] for flows in previous.values()]
        chosen: list[int] = []
        while len(chosen) < wanted and any(queues):
            for queue in queues:
                if queue and len(chosen) < wanted:
                    chosen.append(queue.pop(0))
        chosen.extend(self._new_flows(wanted - len(chosen)))
        return [FlowProbe(flow, hop) for flow in chosen]

    def _node_control(
        self, hop: int, previous: dict[str, list[int]], needed: Callable[[str], int]
    ) -> list[FlowProbe]:
        """For each vertex before ``hop``, enough flows through it traced at ``hop``."""
        at_hop = self._answers[hop]
        before = self._answers[hop - 1]
        batch: list[FlowProbe] = []
        scouts = 0
        for vertex, flows in previous.items():
            missing = needed(vertex) - sum(1 for f in flows if f in at_hop)
            if missing <= 0:
                continue
            unused = [f for f in flows if f not in at_hop]
            batch.extend(FlowProbe(f, hop) for f in unused[:missing])
            missing -= len(unused[:missing])
            if missing > 0:
                # Node control: new flows land on this vertex in proportion to its share.
                share = max(len(flows), 1) / max(len(before), 1)
                scouts = max(scouts, math.ceil(missing / share))
        if scouts:
            batch.extend(FlowProbe(f, hop - 1) for f in self._new_flows(scouts))
        return batch

    def _new_flows(self, count: int) -> Iterable[int]:
        count = max(0, min(count, self.max_flows - self._next_flow))
        start = self._next_flow
        self._next_flow += count
        return range(start, start + count)

    def _meshed_or_uneven(self, hop: int, previous: dict[str, list[int]]) -> bool:
        at_hop = self._answers[hop]
        successors: dict[str, set[str]] = defaultdict(set)
        predecessors: dict[str, set[str]] = defaultdict(set)
        for vertex, flows in previous.items():
            for flow in flows:
                answer = at_hop.get(flow)
                if answer is not None:
                    successors[vertex].add(answer.address)
                    predecessors[answer.address].add(vertex)
        meshed = any(len(s) > 1 for s in successors.values()) and any(
            len(p) > 1 for p in predecessors.values()
        )
        uneven = len({len(successors[vertex]) for vertex in previous}) > 1
        return meshed or uneven

    def _hop_complete(self, hop: int) -> None:
        answers = self._answers[hop]
        found = {a.address for a in answers.values() if a}
        ends = self._ends(hop)
        if not found:
            self._silent.add(hop)
        silent_run = 0
        ttl = hop
        while ttl in self._silent:
            silent_run += 1
            ttl -= 1
        if found and found == ends:
            destination = any(a and a.end is HopEnd.DESTINATION for a in answers.values())
            self.stop_reason = StopReason.DESTINATION if destination else StopReason.UNREACHABLE
        elif silent_run >= self.max_unknown:
            self.stop_reason = StopReason.GAP_LIMIT
        elif hop >= self.max_ttl:
            self.stop_reason = StopReason.MAX_TTL
        elif not self._through(hop) and hop in self._silent and not answers:
            self.stop_reason = StopReason.PROBE_LIMIT  # no flow left to carry on with
        else:
            self.hop = hop + 1
            self._phase = _Phase.LITE if self.lite else _Phase.FULL
