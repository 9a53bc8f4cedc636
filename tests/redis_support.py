"""Helpers for tests that talk to a real redis-server through mtrd's connection service."""

from __future__ import annotations

import time
from collections.abc import Callable

from mtrd.tracing.redis.connection import RedisConnection, RedisTimeouts
from mtrd.tracing.redis.settings import RedisStore, parse_store
from twisted.internet import reactor
from twisted.internet.task import deferLater

from tests.redis_server import RedisServer

FAST = RedisTimeouts(call_timeout=0.5, initial_backoff=0.05, max_backoff=0.3, ping_interval=0.2)


async def wait_until(check: Callable[[], bool], seconds: float = 5.0) -> None:
    """Let the reactor run until ``check()`` holds; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await sleep(0.02)


async def sleep(seconds: float) -> None:
    """Let the real reactor run for ``seconds``."""
    await deferLater(reactor, seconds, lambda: None)  # type: ignore[arg-type]


async def connected(server: RedisServer, timeouts: RedisTimeouts = FAST) -> RedisConnection:
    """A started connection to ``server``, once it is connected."""
    store = parse_store(server.url)
    assert isinstance(store, RedisStore)
    connection = RedisConnection(store, reactor, reactor, timeouts)  # type: ignore[arg-type]
    connection.startService()
    await wait_until(lambda: connection.health().ready)
    return connection
