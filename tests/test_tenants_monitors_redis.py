"""Monitors and tenants with the Redis store: owners and the per-tenant cap hold on every
replica, and a monitor's runs are queued as its owner's traces."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from mtrd.monitors.service import TooManyMonitors
from mtrd.monitors.shared import SharedMonitors, SharedStarter
from mtrd.tracing.model import TraceRequest
from mtrd.tracing.redis.connection import RedisConnection
from mtrd.tracing.tenants import TenantLimits
from mtrd.web.auth import AuthGuard
from mtrd.web.monitor_intake import decode_spec, encode_spec
from treq.testing import StubTreq

from tests.openapi import validate_response
from tests.redis_server import RedisServer
from tests.redis_support import connected, sleep
from tests.test_http import BASE, Answer
from tests.test_http_redis import VANTAGE, Pair
from tests.test_monitors_redis import Edge, replica, spec
from tests.test_tenants_redis import AUTH, TOKENS, _close, _pair, as_tenant

pytestmark = pytest.mark.redis  # a real redis-server, started by the test
BODY = {"target": "203.0.113.7", "every": 30, "jitter": 0}


@pytest_twisted.async_yield_fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[RedisConnection]:
    connection = await connected(redis_server)
    yield connection
    await connection.stopService()


def kept(redis: RedisConnection, per_owner: int | None = 1) -> SharedMonitors:
    return SharedMonitors(redis, encode=encode_spec, decode=decode_spec, max_per_owner=per_owner)


class AuthEdge(Edge):
    """A replica's /monitors routes behind the auth guard (no director runs its monitors)."""

    def __init__(self, redis: RedisConnection, name: str, per_owner: int | None = None) -> None:
        super().__init__(redis, replica(redis, name))
        self.api._shared_monitors = kept(redis, per_owner)
        self.stub = StubTreq(AuthGuard(self.api.resource(), AUTH))

    async def as_(self, tenant: str, method: str, path: str, body: object = None) -> Answer:
        """A request with ``tenant``'s token."""
        headers = {"Authorization": b"Bearer " + TOKENS[tenant]}
        kwargs: dict[str, Any] = {"headers": headers}
        if body is not None:
            kwargs = {"data": json.dumps(body).encode(),
                      "headers": headers | {"Content-Type": b"application/json"}}  # fmt: skip
        response = await self.pumped(self.stub.request(method, BASE + path, **kwargs))
        content = await self.pumped(response.content())
        answer = Answer(response.code, response.headers, content)
        validate_response(method, path, answer.code, answer.header("content-type"), content)
        return answer

    async def create(self, tenant: str, name: str) -> Answer:
        return await self.as_(tenant, "POST", "/monitors", BODY | {"name": name})


@pytest_twisted.ensureDeferred
async def test_the_per_owner_cap_holds_across_replicas(redis: RedisConnection) -> None:
    """Alice's second monitor is refused through another replica; bob's is not."""
    await kept(redis).create(spec("a"), "alice", "default", 0.0)
    with pytest.raises(TooManyMonitors) as refused:
        await kept(redis).create(spec("a2"), "alice", "default", 0.0)
    assert refused.value.owner == "alice"
    await kept(redis).create(spec("b"), "bob", "default", 0.0)


@pytest_twisted.ensureDeferred
async def test_a_refused_monitor_leaves_its_name_and_no_place_taken(redis: RedisConnection) -> None:
    """After a refusal, the name is free and the refused one holds no place under the cap."""
    first = await kept(redis).create(spec("a"), "alice", "default", 0.0)
    with pytest.raises(TooManyMonitors):
        await kept(redis).create(spec("a2"), "alice", "default", 0.0)
    await kept(redis).delete(first)
    await kept(redis).create(spec("a2"), "alice", "default", 0.0)


@pytest_twisted.ensureDeferred
async def test_no_replica_shows_a_monitor_to_another_tenant(redis: RedisConnection) -> None:
    """Created by alice on A: bob gets 404 on B for GET, PATCH and DELETE; alice gets it."""
    a, b = AuthEdge(redis, "a"), AuthEdge(redis, "b")
    monitor_id = (await a.create("alice", "gw")).json()["id"]
    path = f"/monitors/{monitor_id}"
    answers = [
        await b.as_("bob", "GET", path),
        await b.as_("bob", "PATCH", path, {"paused": True}),
        await b.as_("bob", "DELETE", path),
    ]
    assert [answer.code for answer in answers] == [404, 404, 404]
    assert (await b.as_("alice", "GET", path)).code == 200


@pytest_twisted.ensureDeferred
async def test_monitor_listings_are_filtered_on_every_replica(redis: RedisConnection) -> None:
    """Each tenant lists its own monitors on either replica; root lists them all."""
    a, b = AuthEdge(redis, "a"), AuthEdge(redis, "b")
    await a.create("alice", "a")
    await b.create("bob", "b")

    async def listed(edge: AuthEdge, tenant: str) -> list[str]:
        answer = await edge.as_(tenant, "GET", "/monitors")
        return sorted(m["name"] for m in answer.json()["monitors"])

    assert await listed(b, "alice") == ["a"]
    assert await listed(a, "bob") == ["b"]
    assert await listed(a, "root") == ["a", "b"]


@pytest_twisted.ensureDeferred
async def test_a_tenant_at_its_monitor_cap_gets_429_on_any_replica(redis: RedisConnection) -> None:
    """With a cap of 1, alice's second monitor on B is a 429 naming the cap."""
    a, b = AuthEdge(redis, "a", per_owner=1), AuthEdge(redis, "b", per_owner=1)
    assert (await a.create("alice", "a")).code == 201
    refused = await b.create("alice", "a2")
    assert refused.code == 429
    assert refused.json()["type"] == "urn:mtrd:problem:tenant-max-monitors"
    assert (await b.create("bob", "b")).code == 201


@pytest_twisted.ensureDeferred
async def test_a_monitors_run_is_queued_as_its_owners_trace(redis_server: RedisServer) -> None:
    """A run started for alice's monitor is alice's trace: she lists it, bob does not."""
    fronts: Pair = await _pair(redis_server, TenantLimits())
    try:
        refused: list[str] = []
        SharedStarter(fronts.a.shared).start(
            TraceRequest("203.0.113.7", probes=1, timeout=1),
            VANTAGE,
            lambda _: None,
            refused.append,
            "alice",
        )

        async def listed(tenant: str) -> list[str]:
            answer = await as_tenant(fronts.b, tenant, "GET", "/traces")
            return [t["id"] for t in answer.json()["traces"]]

        mine: list[str] = []

        async def read() -> None:
            mine[:] = await listed("alice")

        await wait_until_listed(read, mine)
        assert refused == []
        assert await listed("bob") == []
    finally:
        await _close(fronts)


async def wait_until_listed(read: Any, found: list[str]) -> None:
    """Read until ``found`` holds one id."""
    for _ in range(100):
        await read()
        if len(found) == 1:
            return
        await sleep(0.05)
    raise AssertionError(f"not listed: {found}")
