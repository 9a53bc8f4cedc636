"""Probe tickets: one outcome delivered at most once, nothing after the sender gave up."""

from __future__ import annotations

import gc
import weakref

from mtrd.engine.errors import PoolStopped
from mtrd.engine.pool import PoolConfig, ProbePool
from mtrd.engine.probe import ProbeReply, ProbeRequest, ReplyKind
from mtrd.engine.ticket import Outcome, ProbeTicket, deferred_ticket
from twisted.internet.defer import CancelledError

from tests.fakes import FakeProcessReactor

REQUEST = ProbeRequest("203.0.113.7", ttl=3)
REPLY = ProbeReply(kind=ReplyKind.REPLY, address="203.0.113.7", rtt_us=100, raw="")


def recording() -> tuple[ProbeTicket, list[Outcome]]:
    got: list[Outcome] = []
    return ProbeTicket(REQUEST, lambda _, outcome: got.append(outcome)), got


def test_an_outcome_is_delivered_once() -> None:
    """A second settle (a reply after a worker's death was delivered) changes nothing."""
    ticket, got = recording()
    ticket.settle(REPLY)
    ticket.settle(PoolStopped("late"))
    assert got == [REPLY]
    assert not ticket.open


def test_nothing_is_delivered_after_the_sender_gave_up() -> None:
    ticket, got = recording()
    ticket.close()
    ticket.settle(REPLY)
    assert got == []


def test_the_observer_hears_the_outcome_before_the_sender_and_only_then() -> None:
    """Metrics observe a ticket: told once, just before the sender; not after a give-up."""
    heard: list[str] = []
    ticket = ProbeTicket(REQUEST, lambda _, outcome: heard.append(f"sender {outcome!r}"))
    ticket.observe = lambda outcome: heard.append(f"observer {outcome!r}")
    ticket.settle(REPLY)
    ticket.settle(REPLY)
    assert heard == [f"observer {REPLY!r}", f"sender {REPLY!r}"]
    given_up = ProbeTicket(REQUEST, lambda _, __: heard.append("sender"))
    given_up.observe = lambda _: heard.append("observer")
    given_up.close()
    given_up.settle(REPLY)
    assert len(heard) == 2


def test_a_deferred_ticket_fires_and_cancels_through_the_ticket() -> None:
    """The Deferred gets the reply or the error; cancelling it gives up the ticket."""
    ticket, result = deferred_ticket(REQUEST)
    ticket.settle(REPLY)
    assert result.result is REPLY  # type: ignore[attr-defined]

    ticket, result = deferred_ticket(REQUEST)
    ticket.settle(PoolStopped("stopped"))
    assert result.result.check(PoolStopped)  # type: ignore[attr-defined]
    result.addErrback(lambda _: None)

    cancelled: list[ProbeTicket] = []
    ticket, result = deferred_ticket(REQUEST, cancel=cancelled.append)
    result.cancel()
    assert cancelled == [ticket]
    assert result.result.check(CancelledError)  # type: ignore[attr-defined]
    result.addErrback(lambda _: None)


def test_a_settled_deferred_ticket_leaves_no_cycle() -> None:
    """The ticket and its Deferred refer to each other only until the outcome is in."""
    gc.collect()
    gc.disable()
    try:
        ticket, result = deferred_ticket(REQUEST)
        gone = weakref.ref(ticket)
        ticket.settle(REPLY)
        del ticket, result
        assert gone() is None
    finally:
        gc.enable()


def test_a_stopped_pool_delivers_at_once() -> None:
    """send() never raises: a pool that is not running delivers PoolStopped before it
    returns, to a sender that made the ticket and so is ready for it."""
    pool = ProbePool(FakeProcessReactor(), PoolConfig(size=1, command=("mtr-packet",)))
    ticket, got = recording()
    pool.send(ticket)
    assert len(got) == 1
    assert isinstance(got[0], PoolStopped)
