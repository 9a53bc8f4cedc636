"""The Redis connection service: calls, timeouts, reconnection and health, on a real server."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import pytest_twisted
import txredisapi
from mtrd.tracing.redis.connection import (
    ConnectionState,
    RedisCommandError,
    RedisConnection,
    RedisTimeout,
    RedisTimeouts,
    RedisUnavailable,
    _Protocol,
)
from mtrd.tracing.redis.settings import RedisStore, Secret
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from zope.interface import provider

from tests.redis_server import RedisServer
from tests.redis_support import FAST, connected, sleep, wait_until

pytestmark = pytest.mark.redis  # a real redis-server, started by the test


@pytest_twisted.async_yield_fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[RedisConnection]:
    """A connection to a fresh server, stopped after the test."""
    connection = await connected(redis_server)
    yield connection
    await connection.stopService()


@pytest_twisted.ensureDeferred
async def test_commands_and_replies(redis: RedisConnection) -> None:
    """A command returns Redis's reply as bytes, integers or lists."""
    assert await redis.execute("SET", "k", b"v\x00\xff") == b"OK"
    assert await redis.execute("GET", "k") == b"v\x00\xff"
    assert await redis.execute("INCRBY", "n", 5) == 5
    assert await redis.execute("GET", "missing") is None


@pytest_twisted.ensureDeferred
async def test_pipeline_returns_replies_in_order(redis: RedisConnection) -> None:
    """A pipeline's replies come back in the order of its commands."""
    replies = await redis.pipeline([("SET", "a", "1"), ("INCR", "a"), ("GET", "a")])
    assert replies == [b"OK", 2, b"2"]


@pytest_twisted.ensureDeferred
async def test_error_reply_is_a_command_error(redis: RedisConnection) -> None:
    """An error reply raises RedisCommandError and leaves the connection usable."""
    await redis.execute("SET", "s", "text")
    with pytest.raises(RedisCommandError, match="WRONGTYPE"):
        await redis.pipeline([("GET", "s"), ("HGET", "s", "f")])
    assert await redis.execute("GET", "s") == b"text"


@pytest_twisted.ensureDeferred
async def test_a_call_the_caller_cancels_is_no_fault(redis: RedisConnection) -> None:
    """A cancelled call raises CancelledError, leaves health alone, and the reply that
    comes later is dropped cleanly (no error logged)."""
    call = Deferred.fromCoroutine(redis.execute("BLPOP", "nothing", "0.2"))
    call.cancel()
    with pytest.raises(CancelledError):
        await call
    await sleep(0.3)
    assert redis.health().ready
    assert redis.health().last_error is None
    assert await redis.execute("PING") == b"PONG"


@pytest_twisted.ensureDeferred
async def test_a_cancelled_call_on_a_paused_server_logs_no_error(
    redis: RedisConnection, redis_server: RedisServer
) -> None:
    """Cancelling a call that Redis never answers leaves nothing to fire twice later."""
    failures: list[str] = []
    observer = provider(ILogObserver)(
        lambda event: failures.append(formatEvent(event)) if "log_failure" in event else None
    )
    globalLogPublisher.addObserver(observer)
    redis_server.pause()
    try:
        call = Deferred.fromCoroutine(redis.execute("GET", "k"))
        call.cancel()
        with pytest.raises(CancelledError):
            await call
        await sleep(0.7)  # past the call timeout: txredisapi's own timer has fired
    finally:
        redis_server.resume()
        globalLogPublisher.removeObserver(observer)
    await wait_until(lambda: redis.health().ready)
    assert failures == []


@pytest_twisted.ensureDeferred
async def test_paused_server_times_out_within_the_limit(
    redis: RedisConnection, redis_server: RedisServer
) -> None:
    """A server that does not answer fails the call with RedisTimeout within the timeout."""
    redis_server.pause()
    started = time.monotonic()
    try:
        with pytest.raises(RedisTimeout, match=r"did not answer within 0.5 s"):
            await redis.execute("GET", "k")
        assert time.monotonic() - started < 0.5 + 1.0  # the timeout, plus a busy machine
        assert not redis.health().ready
    finally:
        redis_server.resume()


@pytest_twisted.ensureDeferred
async def test_each_call_gets_its_whole_limit_and_those_behind_fail_with_the_oldest(
    redis: RedisConnection, redis_server: RedisServer
) -> None:
    """One timer per connection: a call made 0.3 s after another on a paused server is not
    failed before the first call's deadline, and fails with it then (replies come in
    order: nothing behind an unanswered call can be answered first)."""
    redis_server.pause()
    try:
        first = Deferred.fromCoroutine(redis.execute("GET", "a"))
        await sleep(0.3)
        started = time.monotonic()
        second = Deferred.fromCoroutine(redis.execute("GET", "b"))
        with pytest.raises(RedisTimeout):
            await first
        with pytest.raises(RedisTimeout):
            await second
        assert time.monotonic() - started < 0.5 + 1.0  # within the second's own limit
    finally:
        redis_server.resume()
    await wait_until(lambda: redis.health().ready)
    assert await redis.execute("PING") == b"PONG"


@pytest_twisted.ensureDeferred
async def test_a_call_is_not_failed_at_an_earlier_calls_deadline(
    redis: RedisConnection, redis_server: RedisServer
) -> None:
    """A call sent 0.3 s after an answered one, to a server paused since, still gets its
    whole limit (0.5 s) before it fails."""
    assert await redis.execute("PING") == b"PONG"
    await sleep(0.3)
    redis_server.pause()
    try:
        started = time.monotonic()
        with pytest.raises(RedisTimeout):
            await redis.execute("GET", "k")
        assert time.monotonic() - started >= 0.45
    finally:
        redis_server.resume()


@pytest_twisted.ensureDeferred
async def test_health_follows_a_pause_without_calls(
    redis: RedisConnection, redis_server: RedisServer
) -> None:
    """The background ping notices a paused server, and its return, with no calls made."""
    redis_server.pause()
    try:
        await wait_until(lambda: not redis.health().ready)
        assert "no answer within 0.5 s" in (redis.health().last_error or "")
    finally:
        redis_server.resume()
    await wait_until(lambda: redis.health().ready)


@pytest_twisted.ensureDeferred
async def test_answers_again_after_a_pause(
    redis: RedisConnection, redis_server: RedisServer
) -> None:
    """After the server is resumed, calls succeed again without a restart of the service."""
    redis_server.pause()
    with pytest.raises(RedisTimeout):
        await redis.execute("PING")
    redis_server.resume()
    await wait_until(lambda: redis.health().ready)
    assert await redis.execute("PING") == b"PONG"


@pytest_twisted.ensureDeferred
async def test_stopped_server_fails_fast_and_reconnects(
    redis: RedisConnection, redis_server: RedisServer
) -> None:
    """With the server gone calls fail at once; restarted on its port, it is used again."""
    redis_server.stop()
    await wait_until(lambda: redis.health().state is ConnectionState.DISCONNECTED)
    started = time.monotonic()
    with pytest.raises(RedisUnavailable, match="not connected"):
        await redis.execute("PING")
    assert time.monotonic() - started < 0.1
    assert redis.health().last_error is not None
    redis_server.start()
    await wait_until(lambda: redis.health().ready)
    assert await redis.execute("PING") == b"PONG"


@pytest_twisted.ensureDeferred
async def test_password_login(redis_server_with_password: RedisServer) -> None:
    """A password in the URL logs in to a server with requirepass."""
    connection = await connected(redis_server_with_password)
    try:
        assert await connection.execute("PING") == b"PONG"
    finally:
        await connection.stopService()


@pytest_twisted.ensureDeferred
async def test_login_that_timed_out_is_retried(redis_server_with_password: RedisServer) -> None:
    """A login that times out on a paused server is retried: once resumed, calls work.
    (txredisapi alone stops reconnecting for good after a failed login.)"""
    connection = await connected(redis_server_with_password)
    try:
        redis_server_with_password.pause()
        with pytest.raises(RedisTimeout):
            await connection.execute("PING")
        await wait_until(lambda: connection.health().state is ConnectionState.DISCONNECTED)
        await sleep(1.0)  # reconnects to the paused server, whose AUTH times out
        redis_server_with_password.resume()
        await wait_until(lambda: connection.health().ready)
        assert await connection.execute("PING") == b"PONG"
    finally:
        redis_server_with_password.resume()
        await connection.stopService()


@pytest_twisted.ensureDeferred
async def test_wrong_password_is_reported_without_the_password(
    redis_server_with_password: RedisServer,
) -> None:
    """A refused login shows in health and the log, as an error without the password."""
    store = RedisStore(
        "127.0.0.1", redis_server_with_password.port, password=Secret("not-the-Password-9")
    )
    connection = RedisConnection(store, reactor, reactor, FAST)  # type: ignore[arg-type]
    logged: list[str] = []
    observer = provider(ILogObserver)(lambda event: logged.append(formatEvent(event) or ""))
    globalLogPublisher.addObserver(observer)
    connection.startService()
    try:
        await wait_until(lambda: connection.health().last_error is not None)
        health = connection.health()
        assert not health.ready
        assert "auth" in (health.last_error or "")
        assert "not-the-Password-9" not in repr(health)
        assert "not-the-Password-9" not in repr(connection)
        with pytest.raises(RedisUnavailable) as raised:
            await connection.execute("PING")
        assert "not-the-Password-9" not in str(raised.value)
        assert any("auth" in line for line in logged)
        assert not [line for line in logged if "not-the-Password-9" in line]
    finally:
        globalLogPublisher.removeObserver(observer)
        await connection.stopService()


@pytest_twisted.ensureDeferred
async def test_stop_and_start_again(redis: RedisConnection) -> None:
    """The service can be stopped and started again."""
    await redis.stopService()
    assert redis.health().state is ConnectionState.STOPPED
    with pytest.raises(RedisUnavailable):
        await redis.execute("PING")
    redis.startService()
    await wait_until(lambda: redis.health().ready)
    assert await redis.execute("PING") == b"PONG"


def test_never_connected_reports_connecting_and_fails_calls_at_once() -> None:
    """Without a socket: while the first connection attempt is pending, the service says
    it is connecting and a call fails at once with RedisUnavailable instead of waiting."""
    memory = MemoryReactorClock()
    connection = RedisConnection(RedisStore("198.51.100.9"), memory, memory, FAST)
    connection.startService()
    try:
        assert memory.tcpClients[0][:2] == ("198.51.100.9", 6379)
        assert connection.health().state is ConnectionState.CONNECTING
        outcome: list[object] = []
        Deferred.fromCoroutine(connection.execute("PING")).addErrback(
            lambda failure: failure.value
        ).addBoth(outcome.append)
        assert len(outcome) == 1
        assert isinstance(outcome[0], RedisUnavailable)
        assert "connecting" in str(outcome[0])
    finally:
        connection.stopService()


def test_timeouts_are_checked() -> None:
    """Non-positive timeouts and an inverted back-off range are refused."""
    with pytest.raises(ValueError, match="positive"):
        RedisTimeouts(call_timeout=0)
    with pytest.raises(ValueError, match="shorter"):
        RedisTimeouts(initial_backoff=2, max_backoff=1)


@pytest_twisted.ensureDeferred
async def test_an_error_reply_amid_a_pipeline_leaves_the_connection_in_step(
    redis: RedisConnection,
) -> None:
    """An error reply fails the call, and every later call still gets its own reply."""
    await redis.execute("SET", "s", "text")
    with pytest.raises(RedisCommandError, match="WRONGTYPE"):
        await redis.pipeline([("INCR", "n"), ("HGET", "s", "f"), ("INCR", "n")])
    assert await redis.execute("GET", "n") == b"2"
    assert await redis.execute("GET", "s") == b"text"


@pytest_twisted.ensureDeferred
async def test_a_lane_sends_on_another_connection(redis: RedisConnection) -> None:
    """Calls on lane 1 go on another connection of the pool than the plain calls."""
    await wait_until(lambda: redis._factory is not None and redis._factory.size >= 2)
    mine = await redis.execute("CLIENT", "ID")
    assert await redis.execute("CLIENT", "ID") == mine
    assert await redis.lane(1).execute("CLIENT", "ID") != mine
    assert await redis.lane(1).pipeline([("PING",)]) == [b"PONG"]


@pytest.mark.parametrize(
    "command",
    [
        ("SET", "trace:abc", b"\x00\xffbytes"),
        ("ZADD", "queue", 1733050000.123456, "id-1", 3, "id-2"),
        ("HSET", "t", "target", "r\u00e9seau.example", "ttl", 30),
        ("EVALSHA", "a" * 40, 0),
        ("PEXPIRE", "k", 0.5),
    ],
)
def test_commands_are_packed_as_txredisapi_packs_them(command: tuple[object, ...]) -> None:
    """hiredis packs each command to the same bytes txredisapi's own builder makes (with
    its charset off, as the factory sets it)."""
    ours = _Protocol(charset=None)
    theirs = txredisapi.RedisProtocol(charset=None)
    assert ours._build_command(*command) == theirs._build_command(*command)
