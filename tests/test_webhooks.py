"""Webhook deliveries on a Clock: signatures, retries, back-off, the queue, the policy."""

from __future__ import annotations

import base64
import random
import time
from typing import Any

import pytest
from mtrd.monitors.model import Delivery, DeliveryStatus, WebhookTarget
from mtrd.tracing.policy import parse_networks
from mtrd.tracing.resolution import Resolved
from mtrd.webhooks.delivery import Retries, WebhookSender
from mtrd.webhooks.policy import WebhookPolicy, WebhookRefused
from mtrd.webhooks.signing import BadSecret, secret_key, signed_headers
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
HOOK = WebhookTarget("https://hooks.example/in", SECRET)


class Names:
    """Resolves every name to one address (literals to themselves)."""

    def __init__(self, address: str = "198.51.100.80") -> None:
        self.address = address

    async def resolve(self, target: str, ip_version: int | None) -> Resolved:
        if target[0].isdigit():
            return Resolved(target, 4)
        return Resolved(self.address, 4)


class Receiver:
    """A poster whose answers are scripted: a status code, an exception, or a Deferred."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.posts: list[dict[str, Any]] = []

    def post(
        self, url: str, address: str, headers: dict[str, str], body: bytes, timeout: float
    ) -> Deferred[int]:
        self.posts.append({"url": url, "address": address, "headers": headers, "body": body})
        answer = self.answers.pop(0) if self.answers else 200
        if isinstance(answer, Deferred):
            return answer
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(answer)


def sender(receiver: Receiver, **kwargs: Any) -> tuple[WebhookSender, Clock, list[Delivery]]:
    clock = Clock()
    clock.advance(time.time())  # so that standardwebhooks' 5-minute window accepts it
    hooks = WebhookSender(clock, Names(), receiver, rng=random.Random(2), **kwargs)
    hooks.startService()
    seen: list[Delivery] = []
    return hooks, clock, seen


def test_the_signature_verifies_with_the_standardwebhooks_library() -> None:
    """A delivery's headers and body verify with the standardwebhooks library."""
    receiver = Receiver(200)
    hooks, _, seen = sender(receiver)
    hooks.deliver(HOOK, "m-1.7", "monitor.run", b'{"a":1}', seen.append)
    (post,) = receiver.posts
    assert Webhook(SECRET).verify(post["body"], post["headers"]) == {"a": 1}
    assert post["headers"]["webhook-id"] == "m-1.7"


def test_a_wrong_secret_does_not_verify() -> None:
    """A signature made with another key fails verification."""
    other = "whsec_" + base64.b64encode(b"x" * 32).decode()
    headers = signed_headers(secret_key(other), "m-1.1", int(time.time()), b"{}")
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(b"{}", headers)


@pytest.mark.parametrize("secret", ["plain-secret", "whsec_!!!", "whsec_" + "QUFB"])
def test_secrets_must_be_whsec_base64_keys(secret: str) -> None:
    """A secret that is not whsec_ and the base64 of 24-64 bytes is refused."""
    with pytest.raises(BadSecret):
        secret_key(secret)


def test_a_2xx_is_delivered_in_one_attempt() -> None:
    """A 204 answer ends the delivery as delivered after one attempt."""
    hooks, _, seen = sender(Receiver(204))
    hooks.deliver(HOOK, "m-1.1", "monitor.run", b"{}", seen.append)
    assert [(d.status, d.attempts) for d in seen] == [
        (DeliveryStatus.PENDING, 0),
        (DeliveryStatus.DELIVERED, 1),
    ]


def test_failures_are_retried_with_growing_jittered_delays_and_one_id() -> None:
    """503, refused, then 200: three attempts, delays in [0.5, 1] then [1, 2] s, one id."""
    receiver = Receiver(503, ConnectionRefusedError("refused"), 200)
    hooks, clock, seen = sender(receiver, retries=Retries(first_delay=1.0))
    start = clock.seconds()
    times = []
    receiver_post = receiver.post

    def timed(*args: Any) -> Deferred[int]:
        times.append(clock.seconds() - start)
        return receiver_post(*args)

    receiver.post = timed  # type: ignore[method-assign]
    hooks.deliver(HOOK, "m-1.2", "monitor.alert", b"{}", seen.append)
    clock.pump([0.1] * 40)
    assert len(times) == 3
    assert 0.5 <= times[1] - times[0] <= 1.1
    assert 1.0 <= times[2] - times[1] <= 2.1
    assert {p["headers"]["webhook-id"] for p in receiver.posts} == {"m-1.2"}
    assert seen[-1].status is DeliveryStatus.DELIVERED
    assert seen[-1].attempts == 3


def test_retries_end_after_the_give_up_time() -> None:
    """A receiver that keeps failing gets retries until give_up_after, then failed."""
    receiver = Receiver(*([500] * 100))
    hooks, clock, seen = sender(receiver, retries=Retries(first_delay=1.0, give_up_after=30.0))
    hooks.deliver(HOOK, "m-1.3", "monitor.run", b"{}", seen.append)
    clock.pump([1.0] * 60)
    assert seen[-1].status is DeliveryStatus.FAILED
    assert 4 <= len(receiver.posts) <= 6  # 1 + delays of ~1, 2, 4, 8, 16 s within 30 s
    assert hooks.outcomes == {DeliveryStatus.FAILED: 1}


def test_a_client_error_is_not_retried() -> None:
    """A 400 answer fails the delivery at once."""
    receiver = Receiver(400)
    hooks, clock, seen = sender(receiver)
    hooks.deliver(HOOK, "m-1.4", "monitor.run", b"{}", seen.append)
    clock.pump([1.0] * 10)
    assert len(receiver.posts) == 1
    assert seen[-1].status is DeliveryStatus.FAILED


def test_a_full_queue_drops_and_counts() -> None:
    """Past max_queued, a new delivery is dropped, said so, and counted."""
    hanging: Deferred[int] = Deferred()
    hooks, _, seen = sender(Receiver(hanging), max_queued=1, max_in_flight=1)
    hooks.deliver(HOOK, "a", "monitor.run", b"{}")  # in flight
    hooks.deliver(HOOK, "b", "monitor.run", b"{}")  # queued
    hooks.deliver(HOOK, "c", "monitor.run", b"{}", seen.append)
    assert [d.status for d in seen] == [DeliveryStatus.DROPPED]
    assert hooks.outcomes[DeliveryStatus.DROPPED] == 1
    hanging.callback(200)


def test_at_most_max_in_flight_at_once() -> None:
    """Deliveries beyond max_in_flight wait until one ends."""
    first: Deferred[int] = Deferred()
    receiver = Receiver(first, 200)
    hooks, _, _ = sender(receiver, max_in_flight=1)
    hooks.deliver(HOOK, "a", "monitor.run", b"{}")
    hooks.deliver(HOOK, "b", "monitor.run", b"{}")
    assert len(receiver.posts) == 1
    first.callback(200)
    assert len(receiver.posts) == 2


def test_the_checked_address_is_the_one_posted_to() -> None:
    """The poster connects to the address resolution gave and the policy passed."""
    receiver = Receiver(200)
    hooks, _, _ = sender(receiver)
    hooks.deliver(HOOK, "a", "monitor.run", b"{}")
    assert receiver.posts[0]["address"] == "198.51.100.80"
    assert receiver.posts[0]["url"] == HOOK.url


def test_a_link_local_receiver_is_refused_without_a_post() -> None:
    """A URL resolving to a link-local address (cloud metadata) is refused, never posted."""
    receiver = Receiver(200)
    hooks, _, seen = sender(receiver)
    hooks.deliver(WebhookTarget("http://169.254.169.254/", SECRET), "a", "x", b"{}", seen.append)
    assert receiver.posts == []
    assert seen[-1].status is DeliveryStatus.REFUSED


def test_the_deny_list_names_its_rule() -> None:
    """The policy refuses a denied network, naming it."""
    policy = WebhookPolicy(deny=parse_networks("198.51.100.0/24"))
    with pytest.raises(WebhookRefused, match=r"deny 198\.51\.100\.0/24"):
        policy.check("http://hooks.example/", "198.51.100.80")


def test_an_allow_list_refuses_the_rest() -> None:
    """With an allow list, an address outside it is refused."""
    policy = WebhookPolicy(allow=parse_networks("203.0.113.0/24"))
    with pytest.raises(WebhookRefused, match="not in the allow list"):
        policy.check("http://hooks.example/", "198.51.100.80")
