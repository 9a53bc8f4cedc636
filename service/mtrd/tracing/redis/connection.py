"""The connection to the shared Redis: a service that connects, reconnects, and never hangs.

:class:`RedisConnection` keeps a small pool of txredisapi connections (Deferreds on the
reactor mtrd already runs; see docs/redis.md for why this library). Every call has a
timeout on the injected clock: a Redis that is down fails a call at once with
:class:`RedisUnavailable`, one that is reachable but not answering (a paused server, a
full network buffer) fails it with :class:`RedisTimeout` after ``call_timeout`` seconds.
Lost connections come back on their own with exponential back-off, also after a refused
login or a login that timed out (txredisapi would give up on those for good).

:meth:`RedisConnection.health` says whether Redis answers and the last error, in words
that never contain the password: it is what ``/readyz`` will show.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Sequence
from typing import Any

import attrs
import hiredis
import txredisapi
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mtrd.tracing.redis.errors import RedisCommandError, RedisTimeout, RedisUnavailable
from mtrd.tracing.redis.settings import RedisStore

__all__ = [
    "ConnectionState",
    "RedisCommandError",
    "RedisConnection",
    "RedisHealth",
    "RedisLane",
    "RedisTimeout",
    "RedisTimeouts",
    "RedisUnavailable",
]

log = Logger()

Argument = bytes | str | int | float
Command = Sequence[Argument]


class ConnectionState(enum.Enum):
    """Where the connection is in its life."""

    STOPPED = "stopped"
    CONNECTING = "connecting"  # started, not connected yet
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"  # was connected, lost every connection, retrying


@attrs.frozen
class RedisTimeouts:
    """How long to wait for Redis, and how to back off while it is away."""

    call_timeout: float = 2.0
    connect_timeout: float = 2.0
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    ping_interval: float = 1.0
    pool_size: int = 4

    def __attrs_post_init__(self) -> None:
        if min(self.call_timeout, self.connect_timeout, self.initial_backoff) <= 0:
            raise ValueError("Redis timeouts and back-off must be positive")
        if self.max_backoff < self.initial_backoff:
            raise ValueError("the longest back-off is shorter than the first")
        if self.pool_size < 1:
            raise ValueError("the Redis pool needs at least one connection")


@attrs.frozen
class RedisHealth:
    """What ``/readyz`` needs to know: is Redis usable, and if not, why."""

    state: ConnectionState
    answering: bool
    last_error: str | None

    @property
    def ready(self) -> bool:
        """True when calls can be expected to succeed."""
        return self.state is ConnectionState.CONNECTED and self.answering


class RedisConnection(Service):
    """A pool of connections to one Redis; an ``IService``: start, stop, start again."""

    name = "redis"

    def __init__(
        self,
        store: RedisStore,
        reactor: IReactorTCP,
        clock: IReactorTime,
        timeouts: RedisTimeouts = RedisTimeouts(),
    ) -> None:
        self.store = store
        self.timeouts = timeouts
        self._reactor = reactor
        self._clock = clock
        self._factory: _Factory | None = None
        self._state = ConnectionState.STOPPED
        self._answering = False
        self._last_error: str | None = None
        self._pinger: LoopingCall | None = None
        # Per connection: its calls waiting for a reply, oldest first, with their deadlines,
        # and one timer for the oldest (replies come in order: when the oldest has none by
        # its deadline, the connection is not answering). One timer per connection, not
        # one per call.
        self._waiting: dict[Any, deque[tuple[float, defer.Deferred[Any]]]] = {}
        self._watches: dict[Any, IDelayedCall] = {}

    def __repr__(self) -> str:
        return f"<RedisConnection {self.store.display} {self._state.value}>"

    def health(self) -> RedisHealth:
        """The state now, and the last error without secrets."""
        return RedisHealth(self._state, self._answering, self._last_error)

    def startService(self) -> None:
        """Start connecting; calls fail with :class:`RedisUnavailable` until connected."""
        super().startService()  # type: ignore[no-untyped-call]
        self._factory = _Factory(self)
        self._factory.startConnecting(self._endpoint())
        self._set(ConnectionState.CONNECTING, answering=False)
        self._pinger = LoopingCall(lambda: defer.Deferred.fromCoroutine(self._ping()))
        self._pinger.clock = self._clock
        self._pinger.start(self.timeouts.ping_interval, now=False).addErrback(
            lambda failure: log.failure("the Redis ping loop stopped", failure)
        )

    def stopService(self) -> defer.Deferred[None]:
        """Close every connection; pending calls fail with :class:`RedisUnavailable`."""
        super().stopService()  # type: ignore[no-untyped-call]
        if self._pinger is not None and self._pinger.running:
            self._pinger.stop()
        self._pinger = None
        for watch in self._watches.values():
            watch.cancel()
        self._watches.clear()
        self._waiting.clear()
        factory, self._factory = self._factory, None
        self._set(ConnectionState.STOPPED, answering=False)
        if factory is None:
            return defer.succeed(None)
        stopped: defer.Deferred[Any] = factory.disconnect()
        return stopped.addBoth(lambda _: None)

    async def execute(self, *command: Argument) -> Any:
        """Send one command and return its reply (bytes, int, list or None)."""
        replies = await self.pipeline([command])
        return replies[0]

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        """Send commands back to back on one connection; their replies, in order.

        Not a transaction: another client's commands may run between them. An error
        reply fails the whole call with :class:`RedisCommandError`. Commands sent in one
        reactor turn, by this call or others, leave in one socket write (one connection
        is used while it is up): on loopback each write costs a system call that also
        wakes Redis, which is most of what a command costs the replica.
        """
        return await self._send(commands, 0)

    def lane(self, index: int) -> RedisLane:
        """The same calls on another connection of the pool (the ``index``-th live one,
        counting round): bulk writes sent there do not hold up, on one connection, the
        replies that requests wait for. Health and timeouts are this connection's."""
        return RedisLane(self, index)

    async def _send(self, commands: Sequence[Command], lane: int) -> list[Any]:
        connection = self._connection(lane)
        replies: list[Any] = [None] * len(commands)
        errors: list[BaseException] = []

        def answered(reply: Any, index: int) -> None:
            replies[index] = reply

        def refused(failure: Failure) -> None:
            errors.append(failure.value or Exception("no reply"))

        last: defer.Deferred[Any] | None = None
        try:
            for index, command in enumerate(commands):
                # txredisapi's own reply timer is left out: one deadline (ours, on the
                # injected clock) covers the whole call, and replies come in order.
                if last is not None:
                    last.addErrback(refused)
                last = connection.execute_command(*command, apply_timeout=False)
                last.addCallback(answered, index)
        except Exception as e:
            raise self._translate(e) from None
        if last is None:
            return replies
        try:
            await self._timed(connection, last)
        except (defer.CancelledError, RedisTimeout):
            raise
        except Exception as e:  # the last reply failed: an earlier failure comes first
            raise self._translate(errors[0] if errors else e) from None
        if errors:
            raise self._translate(errors[0])
        return replies

    def _connection(self, lane: int) -> Any:
        factory = self._factory
        if factory is not None and self._state is ConnectionState.CONNECTED:
            # The same live connection for a lane, not a round robin: commands of one
            # reactor turn then share a socket write.
            live = [c for c in factory.pool if c.connected and c.transport is not None]
            if live:
                return live[lane % len(live)]
        reason = self._last_error or f"the connection is {self._state.value}"
        raise RedisUnavailable(f"Redis is not connected ({reason})")

    async def _timed(self, connection: Any, reply: defer.Deferred[Any]) -> None:
        waiting = self._waiting.get(connection)
        if waiting is None:
            waiting = self._waiting[connection] = deque()
        limit = self.timeouts.call_timeout
        waiting.append((self._clock.seconds() + limit, reply))
        if connection not in self._watches:
            self._watches[connection] = self._clock.callLater(limit, self._watch, connection)
        try:
            # Cancelling a reply's Deferred is safe: the reply that comes later is dropped
            # (txredisapi checks whether its Deferred has fired).
            await reply
        finally:
            while waiting and waiting[0][1].called:
                waiting.popleft()
        if not self._answering:
            self._set(self._state, answering=True)

    def _watch(self, connection: Any) -> None:
        """The timer of one connection: fail its calls if the oldest is past its deadline,
        else wait for that deadline."""
        self._watches.pop(connection, None)
        waiting = self._waiting.get(connection)
        while waiting and waiting[0][1].called:
            waiting.popleft()
        if not waiting:
            self._waiting.pop(connection, None)
            return
        now = self._clock.seconds()
        deadline = waiting[0][0]
        if deadline > now:
            self._watches[connection] = self._clock.callLater(
                deadline - now, self._watch, connection
            )
            return
        del self._waiting[connection]
        pending = list(waiting)
        waiting.clear()
        limit = self.timeouts.call_timeout
        self._failed(f"no answer within {limit:g} s", answering=False)
        for _, reply in pending:
            if not reply.called:
                reply.errback(RedisTimeout(f"Redis did not answer within {limit:g} s"))
        # As txredisapi does on its own timeout: a connection that does not answer is
        # dropped, and comes back by the factory's reconnect with back-off.
        transport = getattr(connection, "transport", None)
        if transport is not None:
            transport.abortConnection()

    def _translate(self, error: BaseException) -> Exception:
        if isinstance(error, txredisapi.TimeoutError):
            limit = self.timeouts.call_timeout
            self._failed(f"no answer within {limit:g} s", answering=False)
            return RedisTimeout(f"Redis did not answer within {limit:g} s")
        if isinstance(error, txredisapi.ResponseError):
            return RedisCommandError(self._scrub(str(error)))
        message = self._describe(error)
        self._failed(message, answering=False)
        return RedisUnavailable(f"Redis is unavailable ({message})")

    async def _ping(self) -> None:
        # Keeps health() true to what Redis does now, even when no request calls it.
        try:
            await self.execute("PING")
        except (RedisUnavailable, RedisCommandError):
            pass  # already recorded as the last error
        except Exception:  # a bug must not stop the loop
            log.failure("Redis ping failed unexpectedly")

    def _endpoint(self) -> IStreamClientEndpoint:
        host, port, limit = self.store.host, self.store.port, self.timeouts.connect_timeout
        endpoint: IStreamClientEndpoint
        if _is_ipv4(host):
            endpoint = TCP4ClientEndpoint(self._reactor, host, port, timeout=limit)
        elif ":" in host:
            endpoint = TCP6ClientEndpoint(  # type: ignore[no-untyped-call]
                self._reactor, host, port, timeout=limit
            )
        else:
            endpoint = HostnameEndpoint(self._reactor, host, port, timeout=limit)
        if self.store.tls:
            endpoint = wrapClientTLS(optionsForClientTLS(host), endpoint)
        return _WatchedEndpoint(endpoint, self)

    # Called by the factory and the endpoint as connections come and go.

    def _connection_added(self) -> None:
        self._last_error = None
        self._set(ConnectionState.CONNECTED, answering=True)

    def _connection_removed(self, remaining: int) -> None:
        if remaining == 0 and self._state is ConnectionState.CONNECTED:
            self._failed("connection lost", answering=False)
            self._set(ConnectionState.DISCONNECTED, answering=False)

    def _connect_failed(self, error: BaseException) -> None:
        self._failed(self._describe(error), answering=False)

    def _login_refused(self, why: str) -> None:
        self._failed(self._scrub(why.removeprefix("Redis error: ")), answering=False)

    def _failed(self, message: str, answering: bool) -> None:
        if message != self._last_error:
            log.warn("Redis at {store}: {error}", store=self.store.display, error=message)
        self._last_error = message
        self._set(self._state, answering=answering)

    def _set(self, state: ConnectionState, answering: bool) -> None:
        self._state, self._answering = state, answering

    def _describe(self, error: BaseException) -> str:
        text = str(error) or type(error).__name__
        return self._scrub(f"{type(error).__name__}: {text}")

    def _scrub(self, text: str) -> str:
        # Belt and braces: no library message is known to echo the password, but an
        # error message is the one place a secret would otherwise leak unnoticed.
        password = self.store.password
        if password is not None and password.value:
            text = text.replace(password.value, "***")
        return text


@attrs.frozen
class RedisLane:
    """Calls of a :class:`RedisConnection` on one of its other connections."""

    owner: RedisConnection
    index: int

    async def execute(self, *command: Argument) -> Any:
        """Send one command and return its reply."""
        replies = await self.owner._send([command], self.index)
        return replies[0]

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        """As :meth:`RedisConnection.pipeline`, on this lane's connection."""
        return await self.owner._send(commands, self.index)


def _is_ipv4(host: str) -> bool:
    parts = host.split(".")
    return len(parts) == 4 and all(p.isdigit() and int(p) < 256 for p in parts)


@implementer(IStreamClientEndpoint)
@attrs.frozen
class _WatchedEndpoint:
    """An endpoint that tells the connection why an attempt failed (txredisapi only logs it)."""

    endpoint: IStreamClientEndpoint
    owner: RedisConnection

    def connect(self, protocol_factory: Any) -> defer.Deferred[Any]:
        def failed(failure: Failure) -> Failure:
            if not failure.check(defer.CancelledError):  # type: ignore[no-untyped-call]
                self.owner._connect_failed(failure.value or Exception("connect failed"))
            return failure

        return self.endpoint.connect(protocol_factory).addErrback(failed)


class _Protocol(txredisapi.RedisProtocol):  # type: ignore[misc]
    """txredisapi's protocol, its commands packed by hiredis (in C) rather than in Python,
    where a replica spent a large share of its CPU (bench/results/redis-throughput.md).
    Floats are written as txredisapi writes them (six decimals), the rest as hiredis does:
    text as UTF-8 (txredisapi's charset is off here), numbers in decimal."""

    def _build_command(self, *args: Any, **_: Any) -> bytes:
        # The stub types the tuple as one element long.
        packed = tuple(format(a, "f") if type(a) is float else a for a in args)
        return hiredis.pack_command(packed)  # type: ignore[arg-type,no-any-return]


class _Factory(txredisapi.RedisFactory):  # type: ignore[misc]
    """txredisapi's pool, reporting to the connection and never giving up for good."""

    protocol = _Protocol

    def __init__(self, owner: RedisConnection) -> None:
        store, timeouts = owner.store, owner.timeouts
        super().__init__(
            f"{store.host}:{store.port}",
            store.db,
            timeouts.pool_size,
            isLazy=True,
            charset=None,
            password=None if store.password is None else store.password.value,
            replyTimeout=timeouts.call_timeout,
            convertNumbers=False,
            username=store.username,
        )
        self.initialDelay = timeouts.initial_backoff
        self.maxDelay = timeouts.max_backoff
        self._owner = owner

    def addConnection(self, conn: Any) -> None:
        """A connection logged in and selected its database."""
        # Commands of different reactor turns follow each other before the replies come:
        # with Nagle's algorithm the second would wait for the first one's reply.
        transport = getattr(conn, "transport", None)
        if transport is not None and hasattr(transport, "setTcpNoDelay"):
            transport.setTcpNoDelay(True)
        super().addConnection(conn)
        if conn in self.pool:
            self._owner._connection_added()

    def delConnection(self, conn: Any) -> None:
        """A connection was lost."""
        super().delConnection(conn)
        self._owner._connection_removed(self.size)

    def stopTrying(self) -> defer.Deferred[Any]:
        """txredisapi stops reconnecting for good when a login fails or times out (a paused
        server, a password being rotated): keep retrying with back-off instead.
        :meth:`disconnect` still stops everything."""
        return defer.succeed(None)

    def connectionError(self, why: str) -> None:
        """A login failed: record why (the base class would errback a Deferred nobody holds)."""
        self._owner._login_refused(why)
