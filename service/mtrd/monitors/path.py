"""A trace's path as a monitor follows it: responders by TTL, an identity, and diffs.

The responders of one TTL are a set (ECMP routers answer in any order). A TTL that
stayed silent in a run is unknown there, not changed: it keeps what earlier runs saw.
A new path replaces the current one only once ``confirm_runs`` runs in a row saw it.
"""

from __future__ import annotations

import hashlib

import attrs

from mtrd.tracing.model import HopEnd, Trace

Responders = frozenset[str]


@attrs.frozen
class Path:
    """Responders by TTL from the first TTL on; None where a TTL stayed silent.

    ``reached`` says the last TTL is the destination's: TTLs beyond it are not on the
    path. Otherwise the path ends at its last TTL that answered, and what lies beyond
    is unknown.
    """

    first_ttl: int
    hops: tuple[Responders | None, ...]
    reached: bool

    @property
    def path_id(self) -> str:
        """A short stable digest of the path: equal paths have equal ids."""
        parts = [
            f"{self.first_ttl + i}=" + ("?" if hop is None else ",".join(sorted(hop)))
            for i, hop in enumerate(self.hops)
        ]
        text = ("reached|" if self.reached else "open|") + ";".join(parts)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def at(self, ttl: int) -> Responders | None:
        """The responders at ``ttl``: None when silent or beyond the path."""
        index = ttl - self.first_ttl
        return self.hops[index] if 0 <= index < len(self.hops) else None

    @property
    def last_ttl(self) -> int:
        """The TTL of the path's last hop."""
        return self.first_ttl + len(self.hops) - 1


def path_of(trace: Trace) -> Path:
    """The path a finished trace saw."""
    hops = sorted(trace.hops, key=lambda h: h.ttl)
    first = trace.request.first_ttl
    by_ttl = {h.ttl: frozenset(r.address for r in h.responders) or None for h in hops}
    end = next((h.ttl for h in hops if h.end is HopEnd.DESTINATION), None)
    reached = end is not None
    if end is None:
        answered = [ttl for ttl, responders in by_ttl.items() if responders]
        end = max(answered, default=first - 1)
    return Path(first, tuple(by_ttl.get(ttl) for ttl in range(first, end + 1)), reached)


def merge(current: Path, seen: Path) -> Path:
    """``seen`` with what it could not tell filled from ``current``: its silent TTLs,
    and the TTLs beyond its end when it did not reach the destination."""
    if current.first_ttl != seen.first_ttl:
        return seen
    length = len(seen.hops) if seen.reached else max(len(seen.hops), len(current.hops))
    hops = []
    for index in range(length):
        ttl = seen.first_ttl + index
        seen_here = seen.at(ttl)
        hops.append(seen_here if seen_here is not None else current.at(ttl))
    reached = seen.reached or (len(seen.hops) < len(current.hops) and current.reached)
    return Path(seen.first_ttl, tuple(hops), reached)


@attrs.frozen
class TtlChange:
    """What changed at one TTL: the responders that left and those that came."""

    ttl: int
    left: tuple[str, ...]
    came: tuple[str, ...]


def diff(old: Path, new: Path) -> tuple[TtlChange, ...]:
    """The TTLs whose responders differ between two paths, in TTL order."""
    changes = []
    first = min(old.first_ttl, new.first_ttl)
    for ttl in range(first, max(old.last_ttl, new.last_ttl) + 1):
        before = old.at(ttl) or frozenset()
        after = new.at(ttl) or frozenset()
        if before != after:
            changes.append(
                TtlChange(ttl, tuple(sorted(before - after)), tuple(sorted(after - before)))
            )
    return tuple(changes)


@attrs.frozen
class PathChange:
    """A confirmed change of path."""

    old: Path
    new: Path
    changes: tuple[TtlChange, ...]


@attrs.frozen
class PathState:
    """What a monitor knows of its path: the current one and a candidate being confirmed."""

    current: Path | None = None
    candidate: Path | None = None
    candidate_runs: int = 0

    def observe(self, seen: Path, confirm_runs: int) -> tuple[PathState, PathChange | None]:
        """The state after a run saw ``seen``, and the change it confirmed, if any."""
        if self.current is None:
            return PathState(current=seen), None
        merged = merge(self.current, seen)
        if merged.path_id == self.current.path_id:
            return PathState(current=self.current), None
        runs = self.candidate_runs + 1 if self._is_candidate(merged) else 1
        if runs < confirm_runs:
            return PathState(self.current, merged, runs), None
        change = PathChange(self.current, merged, diff(self.current, merged))
        return PathState(current=merged), change

    def _is_candidate(self, path: Path) -> bool:
        return self.candidate is not None and self.candidate.path_id == path.path_id
