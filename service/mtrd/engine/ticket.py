"""A probe handed to the pool, as the sender and the pool both hold it.

:meth:`~mtrd.engine.pool.ProbePool.send` takes a :class:`ProbeTicket` and calls its
``deliver`` exactly once, with the reply or the error, unless the sender gave the
probe up first (:meth:`~mtrd.engine.pool.ProbePool.cancel`): then never. The sender
makes the ticket, so an outcome that comes at once (a stopped pool) finds the
sender ready for it. This is the path every trace's probes take; ``probe()`` wraps
it in a Deferred for code that awaits one probe at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall

from mtrd.engine.fairqueue import NO_FLOW, Flow
from mtrd.engine.probe import ProbeReply, ProbeRequest

Outcome = ProbeReply | Exception
Deliver = Callable[["ProbeTicket", Outcome], None]


@attrs.define(eq=False)
class ProbeTicket:
    """One probe: what to send, who hears how it ended, and the pool's notes on it."""

    request: ProbeRequest
    deliver: Deliver | None
    flow: Flow = NO_FLOW
    expiry: IDelayedCall | None = None  # while it waits in the pool's queue
    blocked_on: int | None = None  # the held sequence that is one of its fixed udp ports
    # Told the outcome just before the sender (metrics): one call, no wrapper per probe.
    observe: Callable[[Outcome], None] | None = None

    @property
    def open(self) -> bool:
        """Whether the outcome is still to be delivered (not settled, not given up)."""
        return self.deliver is not None

    def settle(self, outcome: Outcome) -> None:
        """Deliver ``outcome`` unless one was delivered or the sender gave up."""
        deliver = self.deliver
        if deliver is not None:
            self.deliver = None  # once; and what the sender closed over is let go
            observe = self.observe
            if observe is not None:
                observe(outcome)
            deliver(self, outcome)

    def close(self) -> None:
        """The sender gave up: nothing is delivered."""
        self.deliver = None


def deferred_ticket(
    request: ProbeRequest,
    flow: Flow = NO_FLOW,
    cancel: Callable[[ProbeTicket], None] = ProbeTicket.close,
) -> tuple[ProbeTicket, Deferred[ProbeReply]]:
    """A ticket whose outcome fires a Deferred; cancelling the Deferred calls ``cancel``."""
    result: Deferred[ProbeReply] = Deferred(lambda _: cancel(ticket))
    ticket = ProbeTicket(request, lambda _, outcome: _fire(result, outcome), flow)
    return ticket, result


def _fire(result: Deferred[ProbeReply], outcome: Outcome) -> None:
    if isinstance(outcome, Exception):
        result.errback(outcome)
    else:
        result.callback(outcome)
