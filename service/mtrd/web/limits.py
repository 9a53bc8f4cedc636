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
    """What one mtrd takes at once before it answers 429 (or 503, for connections), and how
    long a client may take to send a request.

    ``idle_timeout``: a connection with no request begun (new, or between two requests)
    is closed after it. ``header_timeout``: once a request has begun, all its headers
    must be in within it. ``body_timeout``: the body must be in within it from the end
    of the headers. Each is a total deadline, not an idle timer that each byte resets.
    """

    max_subscribers: int = 1000
    max_subscribers_per_trace: int = 100
    max_sse_backlog: int = 256 * 1024
    max_probes_waiting: int = 5000
    max_connections: int = 1024
    max_connections_per_client: int = 256
    idle_timeout: float = 30.0
    header_timeout: float = 10.0
    body_timeout: float = 10.0


DEFAULT_LIMITS = EdgeLimits()
