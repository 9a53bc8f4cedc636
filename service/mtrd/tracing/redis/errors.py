"""The errors of the shared (Redis) store, importable without the Redis client library.

The HTTP edge maps them to answers in memory mode too (where they never happen), so
they live apart from :mod:`mtrd.tracing.redis.connection`, which loads txredisapi.
"""

from __future__ import annotations

from collections.abc import Sequence


class RedisUnavailable(Exception):
    """Redis cannot be used now (not connected, connection lost, or no answer in time)."""


class RedisTimeout(RedisUnavailable):
    """Redis took longer than the call timeout to answer."""


class RedisCommandError(Exception):
    """Redis answered a command with an error (a bug here, or a server that refuses)."""


class NoLiveVantage(Exception):
    """A trace was asked of a vantage no live replica serves."""

    def __init__(self, vantage: str, live: Sequence[str]) -> None:
        super().__init__(f"no live replica probes from {vantage}")
        self.vantage = vantage
        self.live = tuple(live)
