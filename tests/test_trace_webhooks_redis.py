"""Trace webhooks with the Redis store: the replica that took the POST follows the trace,
wherever it runs, and delivers its end."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator

import attrs
import pytest
import pytest_twisted
from mtrd.tracing.model import TraceStatus
from mtrd.webhooks.delivery import WebhookSender
from twisted.internet import reactor

from tests.redis_server import RedisServer
from tests.redis_support import connected, sleep, wait_until
from tests.test_http_redis import QUICK, RUNNER, Front, Pair, _started
from tests.test_webhooks import Names, Receiver

pytestmark = pytest.mark.redis  # a real redis-server, started by the test
HOOK = {"url": "http://hooks.example/x", "secret": "whsec_" + "A" * 32}


@pytest_twisted.async_yield_fixture
async def front(redis_server: RedisServer) -> AsyncIterator[tuple[Front, Receiver]]:
    """One front with a webhook sender whose receiver is scripted."""
    receiver = Receiver()
    hooks = WebhookSender(reactor, Names(), receiver, rng=random.Random(1))  # type: ignore[arg-type]
    hooks.startService()
    made = Front(await connected(redis_server), "front-a", webhooks=hooks)
    await Pair(made, made, redis_server).beat()
    yield made, receiver
    hooks.stopService()
    made.shared.stopService()
    made.stub.flush()
    await made.connection.stopService()


@pytest_twisted.ensureDeferred
async def test_a_trace_webhook_is_delivered_when_it_ends_on_a_runner(
    front: tuple[Front, Receiver],
) -> None:
    """POST with a webhook on A; a runner ends the trace; A delivers trace.finished."""
    replica, receiver = front
    created = await replica.post_trace(QUICK | {"webhook": HOOK})
    assert created.code == 202
    trace_id = created.json()["id"]
    running = await _started(replica, trace_id)
    final = attrs.evolve(running, status=TraceStatus.COMPLETED, finished_at=2.0)
    await replica.store.save(final, runner=RUNNER)
    await replica.store.append_event(trace_id, "done", final)
    await wait_until(lambda: replica.stub.flush() or bool(receiver.posts), 10.0)
    (post,) = receiver.posts
    body = json.loads(post["body"])
    assert (body["type"], body["data"]["id"]) == ("trace.finished", trace_id)
    assert post["headers"]["webhook-id"] == f"{trace_id}.done"


@pytest_twisted.ensureDeferred
async def test_another_replica_shows_the_trace_webhook_delivery(
    front: tuple[Front, Receiver], redis_server: RedisServer
) -> None:
    """The delivering replica writes the delivery's state; another replica shows it."""
    replica, receiver = front
    trace_id = (await replica.post_trace(QUICK | {"webhook": HOOK})).json()["id"]
    other = Front(await connected(redis_server), "front-b")
    try:
        queued = (await other.request("GET", f"/traces/{trace_id}")).json()
        assert queued["webhook"] == {"url": HOOK["url"], "deliveries": []}
        running = await _started(replica, trace_id)
        final = attrs.evolve(running, status=TraceStatus.COMPLETED, finished_at=2.0)
        await replica.store.save(final, runner=RUNNER)
        await replica.store.append_event(trace_id, "done", final)

        await wait_until(lambda: replica.stub.flush() or bool(receiver.posts), 10.0)
        for _ in range(50):
            shown = await other.request("GET", f"/traces/{trace_id}")
            deliveries = shown.json()["webhook"]["deliveries"]
            if deliveries and deliveries[0]["status"] == "delivered":
                break
            await sleep(0.1)
        (delivery,) = shown.json()["webhook"]["deliveries"]
        assert (delivery["event_id"], delivery["status"]) == (f"{trace_id}.done", "delivered")
        here = await replica.request("GET", f"/traces/{trace_id}")
        assert here.header("etag") == shown.header("etag")
        assert HOOK["secret"] not in shown.body.decode()
    finally:
        other.shared.stopService()
        other.stub.flush()
        await other.connection.stopService()
