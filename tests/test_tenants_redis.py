"""Tenants with the Redis store: owners and per-tenant caps hold across replicas.

Two fronts ("replicas") behind the auth guard share one real redis-server; the runner is
simulated by writing to Redis with :class:`RedisTraceStore`, as in test_http_redis.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
import pytest_twisted
from mtrd.tracing.model import TraceStatus
from mtrd.tracing.tenants import TenantLimits
from mtrd.web.auth import BearerAuth, NamedToken

from tests.redis_server import RedisServer
from tests.redis_support import connected
from tests.test_http import Answer
from tests.test_http_redis import QUICK, RUNNER, Front, Pair, _started

pytestmark = pytest.mark.redis  # a real redis-server, started by the test

TOKENS = {
    "alice": b"alice-token-0123456789",
    "bob": b"bob-token-0123456789",
    "root": b"root-token-0123456789",
}
AUTH = BearerAuth([NamedToken(n, t) for n, t in TOKENS.items()], admins={"root"})


async def as_tenant(front: Front, tenant: str, method: str, path: str, **kwargs: Any) -> Answer:
    """A request to ``front`` with ``tenant``'s token."""
    headers = {"Authorization": b"Bearer " + TOKENS[tenant], **kwargs.pop("headers", {})}
    return await front.request(method, path, headers=headers, **kwargs)


async def post(front: Front, tenant: str) -> Answer:
    """POST a quick trace to ``front`` as ``tenant``."""
    return await as_tenant(
        front,
        tenant,
        "POST",
        "/traces",
        data=json.dumps(QUICK).encode(),
        headers={"Content-Type": "application/json"},
    )


async def finish(front: Front, trace_id: str) -> None:
    """What a runner does with a trace, start to end."""
    running = await _started(front, trace_id)
    done = attrs.evolve(running, status=TraceStatus.COMPLETED, finished_at=2.0, expires_at=600.0)
    assert await front.store.save(done, runner=RUNNER)


async def _pair(server: RedisServer, limits: TenantLimits) -> Pair:
    fronts = Pair(
        Front(await connected(server), "front-a", tenant_limits=limits, auth=AUTH),
        Front(await connected(server), "front-b", tenant_limits=limits, auth=AUTH),
        server,
    )
    await fronts.beat()
    return fronts


async def _close(fronts: Pair) -> None:
    for front in (fronts.a, fronts.b):
        front.shared.stopService()
        front.stub.flush()
        await front.connection.stopService()


@pytest_twisted.async_yield_fixture
async def tenants(redis_server: RedisServer) -> AsyncIterator[Pair]:
    """Two authenticated fronts; caps: 1 running + 1 queued, 3 stored per tenant."""
    fronts = await _pair(redis_server, TenantLimits(max_running=1, max_queued=1, max_stored=3))
    yield fronts
    await _close(fronts)


@pytest_twisted.ensureDeferred
async def test_no_replica_shows_a_trace_to_another_tenant(tenants: Pair) -> None:
    """Posted by alice on A: bob gets 404 on B for JSON, text, events and DELETE."""
    trace_id = (await post(tenants.a, "alice")).json()["id"]
    path = f"/traces/{trace_id}"
    for method, where, headers in [
        ("GET", path, {}),
        ("GET", path, {"Accept": "text/plain"}),
        ("GET", f"{path}/events", {}),
        ("DELETE", path, {}),
    ]:
        answer = await as_tenant(tenants.b, "bob", method, where, headers=headers)
        assert answer.code == 404, (method, where, headers)
    mine = await as_tenant(tenants.b, "alice", "GET", path)
    assert (mine.code, mine.json()["status"]) == (200, "queued")


@pytest_twisted.ensureDeferred
async def test_listings_on_every_replica_hold_only_the_callers_traces(tenants: Pair) -> None:
    """Lists are filtered by owner on both replicas; the admin's list holds everyone's."""
    alice = (await post(tenants.a, "alice")).json()["id"]
    bob = (await post(tenants.b, "bob")).json()["id"]

    async def listed(front: Front, tenant: str) -> list[str]:
        answer = await as_tenant(front, tenant, "GET", "/traces")
        return [t["id"] for t in answer.json()["traces"]]

    assert await listed(tenants.b, "alice") == [alice]
    assert await listed(tenants.a, "bob") == [bob]
    assert set(await listed(tenants.a, "root")) == {alice, bob}


@pytest_twisted.ensureDeferred
async def test_an_admin_cancels_another_tenants_trace_on_any_replica(tenants: Pair) -> None:
    """The admin tenant reads and cancels alice's queued trace through the other replica."""
    trace_id = (await post(tenants.a, "alice")).json()["id"]
    cancelled = await as_tenant(tenants.b, "root", "DELETE", f"/traces/{trace_id}")
    assert (cancelled.code, cancelled.json()["status"]) == (200, "cancelled")


@pytest_twisted.ensureDeferred
async def test_the_queue_cap_counts_a_tenants_traces_on_every_replica(tenants: Pair) -> None:
    """1 running + 1 queued: alice's third trace is refused on B after two on A; bob's is not."""
    assert (await post(tenants.a, "alice")).code == 202
    assert (await post(tenants.a, "alice")).code == 202
    refused = await post(tenants.b, "alice")
    assert refused.code == 429
    assert refused.json()["type"] == "urn:mtrd:problem:tenant-max-queued"
    assert (await post(tenants.b, "bob")).code == 202


@pytest_twisted.ensureDeferred
async def test_a_finished_trace_frees_its_place_in_the_queue_cap(tenants: Pair) -> None:
    """Once one of alice's traces has ended (on some runner), she may start another."""
    first = (await post(tenants.a, "alice")).json()["id"]
    await post(tenants.a, "alice")
    await finish(tenants.a, first)
    assert (await post(tenants.b, "alice")).code == 202


@pytest_twisted.ensureDeferred
async def test_the_store_cap_evicts_the_tenants_own_oldest_finished_trace(
    redis_server: RedisServer,
) -> None:
    """At 2 stored, alice's new trace on B evicts her oldest finished one; bob's stays."""
    fronts = await _pair(redis_server, TenantLimits(max_stored=2))
    try:
        bob = (await post(fronts.a, "bob")).json()["id"]
        await finish(fronts.a, bob)
        first = (await post(fronts.a, "alice")).json()["id"]
        await post(fronts.a, "alice")
        await finish(fronts.a, first)
        assert (await post(fronts.b, "alice")).code == 202
        assert (await as_tenant(fronts.b, "alice", "GET", f"/traces/{first}")).code == 404
        assert (await as_tenant(fronts.b, "bob", "GET", f"/traces/{bob}")).code == 200
    finally:
        await _close(fronts)


@pytest_twisted.ensureDeferred
async def test_the_store_cap_with_nothing_finished_is_429(redis_server: RedisServer) -> None:
    """At 2 stored, none finished, alice's next trace on either replica gets 429."""
    fronts = await _pair(redis_server, TenantLimits(max_stored=2))
    try:
        await post(fronts.a, "alice")
        await post(fronts.b, "alice")
        refused = await post(fronts.a, "alice")
        assert refused.code == 429
        assert refused.json()["type"] == "urn:mtrd:problem:tenant-max-stored"
    finally:
        await _close(fronts)


@pytest_twisted.ensureDeferred
async def test_the_owner_survives_the_store(tenants: Pair) -> None:
    """The owner is kept in Redis with the trace (and not rendered)."""
    posted = await post(tenants.a, "alice")
    stored = await tenants.b.store.get(posted.json()["id"])
    assert stored is not None
    assert stored.trace.owner == "alice"
    assert b"alice" not in posted.body


@pytest_twisted.ensureDeferred
async def test_a_refused_trace_does_not_count_against_its_tenant(tenants: Pair) -> None:
    """Traces refused for a vantage nobody serves leave the tenant's caps as they were."""
    for _ in range(3):
        code = (
            await as_tenant(
                tenants.a,
                "alice",
                "POST",
                "/traces",
                data=json.dumps({**QUICK, "vantage": "nowhere"}).encode(),
                headers={"Content-Type": "application/json"},
            )
        ).code
        assert code == 422
    assert (await post(tenants.a, "alice")).code == 202
    assert (await post(tenants.b, "alice")).code == 202
