"""What the Redis modules share: the commands they need of a connection, and Lua scripts."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Protocol

import attrs

from mtrd.tracing.redis.connection import Argument, Command, RedisCommandError


class RedisCommands(Protocol):
    """What the store needs of a connection (:class:`RedisConnection` gives it)."""

    async def execute(self, *command: Argument) -> Any:
        """One command, its reply."""
        ...

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        """Commands in one write, their replies in order."""
        ...


@attrs.frozen
class Script:
    """A Lua script run by its SHA1, sent again when the server does not know it (a
    restarted Redis, ``SCRIPT FLUSH``)."""

    source: str
    sha: str = attrs.field(init=False)

    @sha.default
    def _sha(self) -> str:
        return hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()

    async def run(self, redis: RedisCommands, keys: Sequence[str], args: Sequence[Argument]) -> Any:
        """The script's reply."""
        try:
            return await redis.execute("EVALSHA", self.sha, len(keys), *keys, *args)
        except RedisCommandError as e:
            if "NOSCRIPT" not in str(e):
                raise
            return await redis.execute("EVAL", self.source, len(keys), *keys, *args)


def as_text(value: bytes | str | None) -> str:
    """A reply as text ('' for nil)."""
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value
