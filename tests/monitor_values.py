"""Traces shaped like monitor runs: a path given as responders by TTL."""

from __future__ import annotations

from mtrd.tracing.model import Hop, HopEnd, Responder, RttStats, Trace, TraceRequest, TraceStatus
from mtrd.tracing.model import TraceTarget as Target

REQUEST = TraceRequest("203.0.113.7", probes=2, interval=0.5, max_ttl=8)


def run_trace(
    *hops: str | tuple[str, ...] | None,
    reached: bool = True,
    loss: int = 0,
    rtt: float = 10.0,
    trace_id: str = "t-1",
    status: TraceStatus = TraceStatus.COMPLETED,
) -> Trace:
    """A finished trace whose TTL n answered from ``hops[n-1]`` (None: silent; a tuple:
    ECMP responders); with ``reached`` the last one is the destination."""
    built = []
    for index, spec in enumerate(hops):
        ttl = index + 1
        names = () if spec is None else (spec,) if isinstance(spec, str) else spec
        last = index == len(hops) - 1
        built.append(
            Hop(
                ttl=ttl,
                responders=tuple(Responder(n, 1) for n in names),
                sent=2,
                received=(2 - loss) if names else 0,
                lost=loss if names else 2,
                rtt_ms=RttStats(rtt, rtt, rtt, rtt, 0.0) if names else RttStats(),
                end=HopEnd.DESTINATION if last and reached and names else None,
            )
        )
    return Trace(
        id=trace_id,
        status=status,
        request=REQUEST,
        target=Target("203.0.113.7", "203.0.113.7", 4),
        created_at=0.0,
        destination_reached=reached,
        hops=tuple(built),
    )
