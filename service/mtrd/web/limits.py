"""What one mtrd takes at once, and the sizes it reads: plain values, no Klein.

``config`` builds :class:`EdgeLimits` from flags, so this module must stay importable
without the web framework.
"""

from __future__ import annotations

import attrs

MAX_BODY = 64 * 1024
MAX_NESTING = 16
MAX_LIST = 500


@attrs.frozen
class EdgeLimits:
    """What one mtrd takes at once before it answers 429."""

    max_subscribers: int = 1000
    max_subscribers_per_trace: int = 100
    max_sse_backlog: int = 256 * 1024
    max_probes_waiting: int = 5000


DEFAULT_LIMITS = EdgeLimits()
