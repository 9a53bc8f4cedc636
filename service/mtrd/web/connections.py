"""The HTTP site: connections capped in total and per client address, descriptors kept.

Every open connection holds a file descriptor. Past ``max_connections`` in all, or
``max_connections_per_client`` from one client (an IPv4 address, an IPv6 /64), a new
connection is answered ``503`` and closed at once, so clients can never take the
descriptors that mtr-packet workers (restarted after a crash), the listening socket, DNS
and Redis need: :func:`fit_descriptors` checks at start that the caps leave that reserve
within the process's ``RLIMIT_NOFILE``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.server import Site

from mtrd.web.framing import (
    LINGER,
    OPEN_ADMISSION,
    Admission,
    MtrdRequest,
    ProblemChannel,
    problem_response,
)

MAX_REFUSING = 64
"""Connections being refused (answered 503, closing) at once; beyond, closed unanswered."""


def client_of(host: str) -> str:
    """Whom a connection counts against: its IPv4 address, or its IPv6 /64 (one host is
    given a whole /64 to pick addresses from; an IPv4-mapped address is its IPv4 one)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class ConnectionCounts:
    """Open connections in all and per client address; an address is forgotten when its
    last connection closes, so the map holds at most ``max_connections`` addresses."""

    def __init__(self, max_total: int, max_per_client: int) -> None:
        self.max_total = max_total
        self.max_per_client = max_per_client
        self.total = 0
        self.refused = 0
        self.per_client: dict[str, int] = {}

    def open(self, client: str) -> str | None:
        """Count a new connection from ``client``; or say which cap refuses it."""
        if self.total >= self.max_total:
            self.refused += 1
            return f"mtrd has {self.total} connections open, its limit"
        held = self.per_client.get(client, 0)
        if held >= self.max_per_client:
            self.refused += 1
            return f"this address has {held} connections open, the limit per client"
        self.total += 1
        self.per_client[client] = held + 1
        return None

    def close(self, client: str) -> None:
        """Count a connection from ``client`` gone."""
        self.total -= 1
        held = self.per_client.pop(client) - 1
        if held:
            self.per_client[client] = held


class _Refused(Protocol):
    """Answers 503 to a connection over a cap, then closes it (lingering briefly, as a
    refused request does, so the client can read the answer)."""

    def __init__(self, site: EdgeSite, detail: str) -> None:
        self._site = site
        self._detail = detail
        self._abort: Any = None

    def connectionMade(self) -> None:
        """Answer and close."""
        transport: Any = self.transport
        self._site.refusing += 1
        transport.write(problem_response(503, "too-many-connections", self._detail, retry_after=1))
        close_writing = getattr(transport, "loseWriteConnection", None)
        if close_writing is None:
            transport.loseConnection()
            return
        close_writing()
        self._abort = self._site.clock.callLater(LINGER, transport.abortConnection)

    def dataReceived(self, data: bytes) -> None:
        """What the client sends is dropped."""

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: ARG002
        """Count it gone."""
        self._site.refusing -= 1
        if self._abort is not None and self._abort.active():
            self._abort.cancel()


class _Counted(ProblemChannel):
    """A channel that counts itself gone."""

    client = ""
    site: EdgeSite

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Release the connection's place under the caps."""
        self.site.connections.close(self.client)
        super().connectionLost(reason)


class EdgeSite(Site):
    """The HTTP site: :class:`~mtrd.web.framing.ProblemChannel` channels whose requests keep
    bodies in memory (:class:`~mtrd.web.framing.MtrdRequest`), under the connection caps;
    framing refusals are logged and counted by the resource's ``framing_refused``.

    twisted.web's idle timer (reset by every byte) is off: the channel's deadlines rule.
    """

    noisy = False
    protocol = _Counted  # type: ignore[assignment]  # HTTP/1.1 only: no h2 here

    def __init__(
        self,
        resource: Any,
        *,
        admission: Admission = OPEN_ADMISSION,
        reactor: IReactorTime | None = None,
    ) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            resource,
            requestFactory=MtrdRequest,
            parsePOSTFormSubmission=False,
            timeout=None,
            reactor=reactor,
        )
        self.admission = admission
        self.clock: IReactorTime = self.reactor
        limits = admission.limits
        self.connections = ConnectionCounts(
            limits.max_connections, limits.max_connections_per_client
        )
        self.refusing = 0
        self._framing_refused: Callable[[bytes, bytes, int], None] | None = getattr(
            resource, "framing_refused", None
        )

    def buildProtocol(self, addr: IAddress) -> Protocol | None:  # type: ignore[override]
        """A channel, or a refusal when a connection cap is reached."""
        client = client_of(str(getattr(addr, "host", "")))
        refused = self.connections.open(client)
        if refused is not None:
            if self.refusing >= MAX_REFUSING:
                return None  # closed at once, unanswered: refusals must not hold descriptors
            return _Refused(self, refused)
        channel = super().buildProtocol(addr)  # type: ignore[no-untyped-call]
        assert isinstance(channel, _Counted)
        channel.client = client
        return channel

    def framing_refused(self, method: bytes, path: bytes, status: int) -> None:
        """Log and count a request refused before it was complete."""
        if self._framing_refused is not None:
            self._framing_refused(method, path, status)

    def log(self, request: object) -> None:
        """Leave request logging to the edge."""


def descriptors_needed(max_connections: int, pool_size: int) -> int:
    """Connections at their cap, refusals in progress, and a reserve: each mtr-packet
    worker's pipes (and those of its replacement while it starts), the listening socket,
    the event loop, standard streams, DNS and Redis sockets."""
    return max_connections + MAX_REFUSING + 8 * pool_size + 64


def fit_descriptors(
    needed: int,
    get: Callable[[], tuple[int, int]],
    set_soft: Callable[[int, int], None],
) -> str | None:
    """Raise the soft ``RLIMIT_NOFILE`` to ``needed`` when it is lower and the hard limit
    allows; None when it fits, else the one line saying why it cannot."""
    soft, hard = get()
    infinite = hard < 0
    if soft < 0 or soft >= needed:
        return None
    if not infinite and hard < needed:
        return (
            f"the connection limits need {needed} file descriptors, but RLIMIT_NOFILE allows "
            f"{hard}: lower --max-connections or raise the limit (ulimit -n, LimitNOFILE=)"
        )
    try:
        set_soft(needed, hard)
    except (OSError, ValueError) as e:
        return f"cannot raise RLIMIT_NOFILE from {soft} to {needed}: {e}"
    return None
