"""Fakes for tests without processes, sockets or real time."""

from __future__ import annotations

from typing import Any

from mtrd.engine.codec import parse_reply
from mtrd.engine.ticket import ProbeTicket
from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure


class FakeProcessTransport:
    """Stands in for a running mtr-packet: records what is written, replays replies."""

    def __init__(self, protocol: ProcessProtocol, pid: int, args: list[str]) -> None:
        self.protocol = protocol
        self.pid = pid
        self.args = args
        self.written = bytearray()
        self.stdin_closed = False
        self.signals: list[str] = []
        self.ended = False

    # IProcessTransport, as far as the worker uses it
    def write(self, data: bytes) -> None:
        self.written += data

    def closeStdin(self) -> None:  # noqa: N802 - Twisted's name
        self.stdin_closed = True

    def signalProcess(self, signal: str) -> None:  # noqa: N802 - Twisted's name
        if self.ended:
            raise error.ProcessExitedAlready()
        self.signals.append(signal)

    # test helpers
    def lines(self) -> list[str]:
        """Every command line written so far."""
        return self.written.decode().splitlines()

    def probe_lines(self) -> list[str]:
        """The send-probe commands that are real probes (not burns, not the version check)."""
        return [line for line in self.lines() if " send-probe " in line and " burn" not in line]

    def burns(self) -> int:
        """How many burn commands were written."""
        return sum(1 for line in self.lines() if line.endswith(" burn"))

    def token_of(self, index: int) -> int:
        """The token of the index-th real probe written."""
        return int(self.probe_lines()[index].split()[0])

    def feed(self, text: str) -> None:
        """mtr-packet writes ``text`` to stdout (in one read)."""
        self.protocol.outReceived(text.encode())

    def answer_version(self, version: str = "0.95") -> None:
        """mtr-packet answers the version check."""
        self.feed(f"1 feature-support support {version}\n")

    def exit(self, *, status: int = 0, signal: int | None = None, stderr: str = "") -> None:
        """The process ends with ``status`` or by ``signal``."""
        if stderr:
            self.protocol.errReceived(stderr.encode())
        self.ended = True
        reason: Any
        if signal is not None:
            reason = error.ProcessTerminated(exitCode=None, signal=signal)
        elif status:
            reason = error.ProcessTerminated(exitCode=status)
        else:
            reason = error.ProcessDone(0)
        self.protocol.processEnded(Failure(reason))


class FakeProcessReactor(Clock):
    """A ``Clock`` that also spawns :class:`FakeProcessTransport` processes."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[FakeProcessTransport] = []
        self.next_pid = 4000
        self.spawn_error: OSError | None = None

    def spawnProcess(  # noqa: N802 - Twisted's name
        self, protocol: ProcessProtocol, executable: str, args: list[str], **_: Any
    ) -> FakeProcessTransport:
        """Start a fake process and connect ``protocol`` to it."""
        if self.spawn_error is not None:
            raise self.spawn_error
        transport = FakeProcessTransport(protocol, self.next_pid, args)
        self.next_pid += 1
        self.spawned.append(transport)
        protocol.makeConnection(transport)  # type: ignore[arg-type]
        return transport

    def live(self) -> list[FakeProcessTransport]:
        """Processes that have not ended."""
        return [t for t in self.spawned if not t.ended]


class SendsByProbe:
    """``send`` and ``cancel`` of a prober, for test probers that have only ``probe()``:
    the ticket gets the Deferred's outcome, and a cancelled one gets nothing, as from the
    pool."""

    def probe(self, request: Any, flow: Any = None) -> Deferred[Any]:
        raise NotImplementedError

    def send(self, *tickets: ProbeTicket) -> None:
        for ticket in tickets:
            if ticket.open:
                result = self.probe(ticket.request, ticket.flow)
                self._sent[ticket] = result
                result.addBoth(self._settle, ticket)

    def cancel(self, ticket: ProbeTicket) -> None:
        ticket.close()
        result = self._sent.pop(ticket, None)
        if result is not None:
            result.cancel()

    @property
    def _sent(self) -> dict[ProbeTicket, Deferred[Any]]:
        sent: dict[ProbeTicket, Deferred[Any]] = self.__dict__.setdefault("_sent_by_ticket", {})
        return sent

    def _settle(self, outcome: Any, ticket: ProbeTicket) -> None:
        self._sent.pop(ticket, None)
        ticket.settle(outcome.value if isinstance(outcome, Failure) else outcome)


class FakeNetwork(SendsByProbe):
    """A prober that answers like a small network, on a ``Clock``.

    TTL n < ``destination_ttl`` answers ttl-expired from ``routers[n-1]`` after
    ``rtt`` seconds; from ``destination_ttl`` on the target replies. TTLs in
    ``silent`` and every TTL when ``blackhole`` is set answer no-reply once the
    probe's timeout is over. TTLs in ``slow`` answer after the seconds given there
    instead of ``rtt`` (a router that answers late). Probes at TTLs in ``queued`` wait
    that long before they go out (a busy pool), which their round trip does not count.
    ``unreachable_ttl`` answers
    no-route from its router.
    """

    def __init__(
        self,
        clock: Clock,
        routers: list[str],
        *,
        rtt: float = 0.01,
        silent: frozenset[int] = frozenset(),
        unreachable_ttl: int | None = None,
        blackhole_after: int | None = None,
        local_error: str | None = None,
        slow: dict[int, float] | None = None,
        queued: dict[int, float] | None = None,
    ) -> None:
        self.slow = slow or {}
        self.queued = queued or {}
        self.clock = clock
        self.routers = routers
        self.rtt = rtt
        self.silent = silent
        self.unreachable_ttl = unreachable_ttl
        self.blackhole_after = blackhole_after
        self.local_error = local_error
        self.sent: list[Any] = []
        self.cancelled = 0

    @property
    def destination_ttl(self) -> int:
        return len(self.routers) + 1

    def probe(self, request: Any, flow: Any = None) -> Any:
        self.sent.append(request)
        ttl = request.ttl
        result: Deferred[Any] = Deferred(lambda _: setattr(self, "cancelled", self.cancelled + 1))
        usec = int(self.rtt * 1e6)
        if self.local_error is not None:
            line = f"2 {self.local_error}"
            delay = 0.0
        elif ttl in self.silent or ttl > (self.blackhole_after or 255):
            line, delay = "2 no-reply", float(request.timeout)
        elif self.unreachable_ttl is not None and ttl >= self.unreachable_ttl:
            router = self.routers[self.unreachable_ttl - 1]
            line, delay = f"2 no-route ip-4 {router} round-trip-time {usec}", self.rtt
        elif ttl >= self.destination_ttl:
            line, delay = f"2 reply ip-4 {request.target} round-trip-time {usec}", self.rtt
        else:
            delay = self.slow.get(ttl, self.rtt)
            line = f"2 ttl-expired ip-4 {self.routers[ttl - 1]} round-trip-time {int(delay * 1e6)}"

        def answer() -> None:
            if not result.called:
                result.callback(parse_reply(line)[1])

        self.clock.callLater(delay + self.queued.get(ttl, 0.0), answer)
        return result
