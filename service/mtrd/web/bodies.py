"""Rendered trace bodies, kept for the traces people read most.

The store keeps values; rendering the same trace for every poll is most of a GET's
cost, so the edge keeps the JSON of recently read traces, keyed by the record's
version: any change of the trace (a hop, a status, a resolved address) makes a new one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from mtrd.tracing.model import Trace
from mtrd.tracing.store import TraceRecord
from mtrd.web.render import trace_bytes

DEFAULT_BODIES = 2048


class BodyCache:
    """The latest JSON of at most ``size`` traces, least recently read dropped first."""

    def __init__(self, size: int = DEFAULT_BODIES) -> None:
        if size < 1:
            raise ValueError("the body cache holds at least one body")
        self._size = size
        self._bodies: OrderedDict[str, tuple[int, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._bodies)

    def body(self, record: TraceRecord) -> bytes:
        """The trace resource of ``record`` as JSON, rendered at most once per version."""
        return self.rendered(record.trace.id, record.version, record.full_trace)

    def rendered(self, trace_id: str, version: int, trace: Callable[[], Trace]) -> bytes:
        """The JSON of version ``version`` of a trace; ``trace`` gives the value when this
        version was not rendered yet."""
        cached = self._bodies.get(trace_id)
        if cached is not None and cached[0] == version:
            self._bodies.move_to_end(trace_id)
            return cached[1]
        body = trace_bytes(trace())
        self._bodies[trace_id] = (version, body)
        self._bodies.move_to_end(trace_id)
        if len(self._bodies) > self._size:
            self._bodies.popitem(last=False)
        return body

    def forget(self, trace_id: str) -> None:
        """Drop the body of a trace that is gone."""
        self._bodies.pop(trace_id, None)
