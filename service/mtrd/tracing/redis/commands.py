"""What the Redis modules share: the commands they need of a connection, and Lua scripts."""

from __future__ import annotations

import hashlib
from collections.abc import Coroutine, Sequence
from typing import Any, Protocol

import attrs
from twisted.internet.defer import Deferred

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

    async def run_then(
        self,
        redis: RedisCommands,
        keys: Sequence[str],
        args: Sequence[Argument],
        then: Sequence[Command],
    ) -> Any:
        """The script's reply, with ``then`` sent behind it in the same call (one write,
        one deadline; their replies are dropped). ``then`` runs again when the script has
        to be sent whole: it must be safe to repeat."""
        try:
            replies = await redis.pipeline([("EVALSHA", self.sha, len(keys), *keys, *args), *then])
        except RedisCommandError as e:
            if "NOSCRIPT" not in str(e):
                raise
            replies = await redis.pipeline([self.source_command(keys, args), *then])
        return replies[0]

    def source_command(self, keys: Sequence[str], args: Sequence[Argument]) -> Command:
        """The script as one command of a pipeline, sent whole (``EVAL``): it runs where it
        stands among the pipeline's commands even on a Redis that forgot its scripts."""
        return ("EVAL", self.source, len(keys), *keys, *args)


def as_text(value: bytes | str | None) -> str:
    """A reply as text ('' for nil)."""
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


async def together(*calls: Coroutine[Any, Any, Any]) -> list[Any]:
    """Run calls side by side and return their results in order.

    Each call runs up to its first reply wait at once, so commands of calls that send one
    each leave together (one socket write on one connection, in this order). Every call
    is awaited; the first failure is raised then.
    """
    started = [Deferred.fromCoroutine(call) for call in calls]
    results: list[Any] = []
    failure: Exception | None = None
    for call in started:
        try:
            results.append(await call)
        except Exception as e:
            failure = failure or e
            results.append(None)
    if failure is not None:
        raise failure
    return results
