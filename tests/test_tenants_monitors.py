"""Monitors and tenants in memory mode: each tenant sees and changes only its own monitors,
their runs are its traces, and a per-tenant cap bounds how many it keeps."""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
from mtrd.monitors.model import MonitorSource, MonitorSpec
from mtrd.tracing.model import TraceRequest
from mtrd.web.access import Edge
from mtrd.web.auth import AuthGuard, BearerAuth, NamedToken
from treq.testing import StubTreq

from tests.test_http import Answer
from tests.test_http_monitors import MONITOR, MonitorClient
from tests.test_tenants import TOKENS


class MonitorTenants:
    """A monitor client behind the auth guard, a bearer token per tenant; root is admin."""

    def __init__(self, max_per_owner: int | None = None) -> None:
        self.client = MonitorClient()
        self.client.monitors.max_per_owner = max_per_owner
        auth = BearerAuth(
            [NamedToken(name, token) for name, token in TOKENS.items()], admins={"root"}
        )
        self.client.stub = StubTreq(
            Edge(
                AuthGuard(self.client.api.resource(), auth),
                self.client.clock,
                self.client.metrics,
            )
        )

    async def request(self, tenant: str, method: str, path: str, **kwargs: Any) -> Answer:
        headers = {"Authorization": b"Bearer " + TOKENS[tenant], **kwargs.pop("headers", {})}
        return await self.client.request(method, path, headers=headers, **kwargs)

    async def send(self, tenant: str, method: str, path: str, body: object) -> Answer:
        return await self.request(
            tenant,
            method,
            path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )

    async def create(self, tenant: str, name: str = "gateway") -> str:
        answer = await self.send(tenant, "POST", "/monitors", MONITOR | {"name": name})
        assert answer.code == 201, answer.body
        monitor_id: str = answer.json()["id"]
        return monitor_id

    async def listed(self, tenant: str) -> list[str]:
        answer = await self.request(tenant, "GET", "/monitors")
        return [m["name"] for m in answer.json()["monitors"]]


@pytest_twisted.ensureDeferred
async def test_another_tenants_monitor_is_404_on_every_route() -> None:
    """Bob gets 404 on alice's monitor for GET, PATCH, events and DELETE; alice gets it."""
    tenants = MonitorTenants()
    monitor_id = await tenants.create("alice")
    path = f"/monitors/{monitor_id}"
    answers = [
        await tenants.request("bob", "GET", path),
        await tenants.send("bob", "PATCH", path, {"paused": True}),
        await tenants.request("bob", "GET", f"{path}/events"),
        await tenants.request("bob", "DELETE", path),
    ]
    assert [a.code for a in answers] == [404, 404, 404, 404]
    assert answers[0].json()["type"] == "urn:mtrd:problem:not-found"
    mine = await tenants.request("alice", "GET", path)
    assert (mine.code, mine.json()["paused"]) == (200, False)


@pytest_twisted.ensureDeferred
async def test_monitor_listings_hold_only_the_callers_and_the_admin_sees_all() -> None:
    """GET /monitors lists each tenant's own monitors; root's list holds every one."""
    tenants = MonitorTenants()
    await tenants.create("alice", "a")
    await tenants.create("bob", "b")
    assert await tenants.listed("alice") == ["a"]
    assert await tenants.listed("bob") == ["b"]
    assert await tenants.listed("root") == ["a", "b"]


@pytest_twisted.ensureDeferred
async def test_an_admin_changes_and_deletes_another_tenants_monitor() -> None:
    """Root pauses, then deletes, alice's monitor."""
    tenants = MonitorTenants()
    path = f"/monitors/{await tenants.create('alice')}"
    paused = await tenants.send("root", "PATCH", path, {"paused": True})
    assert (paused.code, paused.json()["paused"]) == (200, True)
    assert (await tenants.request("root", "DELETE", path)).code == 204


@pytest_twisted.ensureDeferred
async def test_a_monitors_runs_are_its_owners_traces() -> None:
    """Alice opens her monitor's run links; bob gets 404 on them and does not list them."""
    tenants = MonitorTenants()
    monitor_id = await tenants.create("alice")
    tenants.client.run_for(7)
    body = (await tenants.request("alice", "GET", f"/monitors/{monitor_id}")).json()
    links = [run["links"]["trace"] for run in body["runs"]]
    assert len(links) == 2
    assert [(await tenants.request("alice", "GET", link)).code for link in links] == [200, 200]
    assert [(await tenants.request("bob", "GET", link)).code for link in links] == [404, 404]
    bobs = (await tenants.request("bob", "GET", "/traces")).json()["traces"]
    assert bobs == []


@pytest_twisted.ensureDeferred
async def test_a_tenant_at_its_monitor_cap_gets_429_naming_it() -> None:
    """With a cap of 1, alice's second monitor is refused naming the cap; bob's first is not."""
    tenants = MonitorTenants(max_per_owner=1)
    await tenants.create("alice", "a")
    refused = await tenants.send("alice", "POST", "/monitors", MONITOR | {"name": "a2"})
    assert refused.code == 429
    assert refused.json()["type"] == "urn:mtrd:problem:tenant-max-monitors"
    assert "--tenant-max-monitors 1" in refused.json()["detail"]
    await tenants.create("bob", "b")


@pytest_twisted.ensureDeferred
async def test_a_deleted_monitor_frees_its_place_under_the_cap() -> None:
    """Once alice deletes her monitor, she may create another."""
    tenants = MonitorTenants(max_per_owner=1)
    monitor_id = await tenants.create("alice", "a")
    assert (await tenants.request("alice", "DELETE", f"/monitors/{monitor_id}")).code == 204
    await tenants.create("alice", "a2")


@pytest_twisted.ensureDeferred
async def test_the_operators_file_monitors_show_only_to_admins() -> None:
    """A file monitor has no owner: tenants do not see it (nor its runs), root does."""
    tenants = MonitorTenants()
    spec = MonitorSpec("from-file", TraceRequest("203.0.113.7"), every=60.0)
    record = tenants.client.monitors.create(spec, source=MonitorSource.FILE)
    assert (await tenants.request("alice", "GET", f"/monitors/{record.id}")).code == 404
    assert await tenants.listed("alice") == []
    assert await tenants.listed("root") == ["from-file"]


@pytest_twisted.ensureDeferred
async def test_without_auth_every_monitor_shows_and_no_tenant_cap_applies() -> None:
    """Without auth, monitors have no owner and the per-tenant cap does not count them."""
    client = MonitorClient()
    client.monitors.max_per_owner = 1
    assert (await client.post_monitor(MONITOR | {"name": "a"})).code == 201
    second = await client.post_monitor(MONITOR | {"name": "b"})
    assert (second.code, second.json()["owner"]) == (201, None)
