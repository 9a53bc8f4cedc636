"""Delivering webhooks: a bounded queue, a few at a time, retries with back-off and jitter.

Each delivery resolves the URL's host, checks the address against the webhook policy,
and connects to that address (not to a second lookup of the name, which could answer
otherwise), with the URL's host name for ``Host`` and TLS. A delivery that fails is
retried after an exponentially growing, jittered delay until ``give_up_after`` seconds
have passed since it was queued; every attempt carries the same ``webhook-id``, so a
receiver drops the duplicates a lost answer causes. Past ``max_queued`` new deliveries
are dropped and counted, never buffered without bound.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlsplit

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from mtrd.monitors.model import Delivery, DeliveryStatus, WebhookTarget
from mtrd.tracing.resolution import Resolved
from mtrd.webhooks.policy import WebhookPolicy, WebhookRefused, WebhookUnresolved
from mtrd.webhooks.signing import secret_key, signed_headers


class Resolver(Protocol):
    """Turns a host name (or literal) into an address."""

    async def resolve(self, target: str, ip_version: int | None) -> Resolved:
        """The address of ``target``."""
        ...


class Poster(Protocol):
    """Sends one POST to a checked address; fires with the response's status code."""

    def post(
        self, url: str, address: str, headers: dict[str, str], body: bytes, timeout: float
    ) -> Deferred[int]:
        """POST ``body`` to ``url``, connecting to ``address``."""
        ...


@attrs.frozen
class Retries:
    """How deliveries are retried and timed out."""

    timeout: float = 10.0  # seconds per attempt
    first_delay: float = 1.0
    max_delay: float = 300.0
    give_up_after: float = 3600.0  # seconds after queueing; then the delivery has failed


@attrs.define(eq=False)
class _Message:
    target: WebhookTarget
    message_id: str
    kind: str
    body: bytes
    on_status: Callable[[Delivery], None]
    queued_at: float
    attempts: int = 0
    timer: IDelayedCall | None = None


def _retryable(status: int) -> bool:
    # A receiver's other 4xx says the delivery itself is wrong: sending it again will not help.
    return status >= 500 or status in (408, 425, 429)


class WebhookSender(Service):
    """Delivers webhooks; see the module docstring."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        resolver: Resolver,
        poster: Poster,
        *,
        policy: WebhookPolicy = WebhookPolicy(),
        retries: Retries = Retries(),
        max_queued: int = 1000,
        max_in_flight: int = 8,
        rng: random.Random | None = None,
    ) -> None:
        self._clock = clock
        self._resolver = resolver
        self._poster = poster
        self.policy = policy
        self.retries = retries
        self.max_queued = max_queued
        self.max_in_flight = max_in_flight
        self._rng = rng or random.Random()  # noqa: S311  # spreads retries; not a secret
        self._queue: deque[_Message] = deque()
        self._waiting: set[_Message] = set()  # between attempts
        self._in_flight = 0
        self.outcomes: dict[DeliveryStatus, int] = {}
        self.attempts = 0

    @property
    def queued(self) -> int:
        """Deliveries waiting for their next attempt (queued or between retries)."""
        return len(self._queue) + len(self._waiting)

    async def check(self, url: str) -> str:
        """Resolve ``url``'s host and check its address; raises WebhookRefused or
        WebhookUnresolved. Returns the address."""
        host = urlsplit(url).hostname or ""
        try:
            resolved = await self._resolver.resolve(host, None)
        except Exception as e:
            raise WebhookUnresolved(f"cannot resolve the host of {url}: {e}") from None
        self.policy.check(url, resolved.address)
        return resolved.address

    def deliver(
        self,
        target: WebhookTarget,
        message_id: str,
        kind: str,
        body: bytes,
        on_status: Callable[[Delivery], None] = lambda _: None,
    ) -> None:
        """Queue one delivery; never raises (a full queue drops it, and says so)."""
        message = _Message(target, message_id, kind, body, on_status, self._clock.seconds())
        if len(self._queue) >= self.max_queued:
            self._report(message, DeliveryStatus.DROPPED, "the delivery queue is full")
            return
        self._queue.append(message)
        self._report(message, DeliveryStatus.PENDING, None, count=False)
        self._pump()

    def stopService(self) -> None:
        """Stop retrying: what waits for a retry is given up (memory mode loses it anyway)."""
        super().stopService()  # type: ignore[no-untyped-call]
        for message in list(self._waiting):
            if message.timer is not None and message.timer.active():
                message.timer.cancel()
        self._waiting.clear()

    def _pump(self) -> None:
        while self._queue and self._in_flight < self.max_in_flight:
            message = self._queue.popleft()
            self._in_flight += 1
            attempt = Deferred.fromCoroutine(self._attempt(message))
            attempt.addErrback(self._crashed, message)
            attempt.addBoth(self._settled)

    def _settled(self, _: object) -> None:
        self._in_flight -= 1
        self._pump()

    def _crashed(self, failure: object, message: _Message) -> None:
        self.log.failure("webhook delivery {id} crashed", failure, id=message.message_id)  # type: ignore[arg-type]
        self._report(message, DeliveryStatus.FAILED, "internal error")

    async def _attempt(self, message: _Message) -> None:
        message.attempts += 1
        self.attempts += 1
        url = message.target.url
        try:
            address = await self.check(url)
        except WebhookRefused as e:
            self._report(message, DeliveryStatus.REFUSED, e.rule)
            return
        except WebhookUnresolved as e:
            self._retry_or_fail(message, str(e))
            return
        timestamp = int(self._clock.seconds())
        headers = signed_headers(
            secret_key(message.target.secret), message.message_id, timestamp, message.body
        )
        try:
            status = await self._poster.post(
                url, address, headers, message.body, self.retries.timeout
            )
        except Exception as e:  # connection refused, reset, timed out: try again later
            self._retry_or_fail(message, f"{type(e).__name__}: {e}".rstrip(": "))
            return
        if 200 <= status < 300:
            self._report(message, DeliveryStatus.DELIVERED, f"HTTP {status}")
        elif _retryable(status):
            self._retry_or_fail(message, f"HTTP {status}")
        else:
            self._report(message, DeliveryStatus.FAILED, f"HTTP {status}")

    def _retry_or_fail(self, message: _Message, detail: str) -> None:
        retries = self.retries
        ceiling = min(retries.max_delay, retries.first_delay * 2 ** (message.attempts - 1))
        # Full jitter over the upper half: receivers that come back are not hit in step.
        delay = ceiling * self._rng.uniform(0.5, 1.0)
        waited = self._clock.seconds() - message.queued_at
        if waited + delay > retries.give_up_after or not self.running:
            self._report(message, DeliveryStatus.FAILED, detail)
            return
        self._report(message, DeliveryStatus.PENDING, detail, count=False)
        self._waiting.add(message)
        message.timer = self._clock.callLater(delay, self._again, message)

    def _again(self, message: _Message) -> None:
        self._waiting.discard(message)
        message.timer = None
        self._queue.appendleft(message)  # a retry goes before new deliveries
        self._pump()

    def _report(
        self, message: _Message, status: DeliveryStatus, detail: str | None, *, count: bool = True
    ) -> None:
        if count:
            self.outcomes[status] = self.outcomes.get(status, 0) + 1
        delivery = Delivery(
            message.message_id,
            message.kind,
            status,
            message.attempts,
            self._clock.seconds(),
            detail,
        )
        try:
            message.on_status(delivery)
        except Exception:
            self.log.failure("webhook status listener failed")
