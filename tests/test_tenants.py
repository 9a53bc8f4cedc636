"""Tenants with the in-memory store: each sees only its own traces, and none starves the rest."""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
from mtrd.tracing.tenants import TenantLimits
from mtrd.web.access import Edge
from mtrd.web.auth import AuthGuard, BearerAuth, NamedToken
from treq.testing import StubTreq

from tests.test_http import QUICK, Answer, Client

TOKENS = {
    "alice": b"alice-token-0123456789",
    "bob": b"bob-token-0123456789",
    "root": b"root-token-0123456789",
}
SLOW = {"target": "203.0.113.7", "probes": 50, "interval": 1.0, "max_ttl": 4}


class Tenants:
    """A Client behind the auth guard, with a bearer token per tenant; root is admin."""

    def __init__(self, limits: TenantLimits | None = None, **client: Any) -> None:
        self.client = Client(**client)
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
        if limits is not None:
            self.client.jobs.tenant_limits = limits

    async def request(self, tenant: str, method: str, path: str, **kwargs: Any) -> Answer:
        headers = {"Authorization": b"Bearer " + TOKENS[tenant], **kwargs.pop("headers", {})}
        return await self.client.request(method, path, headers=headers, **kwargs)

    async def post(self, tenant: str, body: object = QUICK) -> Answer:
        return await self.request(
            tenant,
            "POST",
            "/traces",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )

    async def listed(self, tenant: str) -> list[str]:
        return [t["id"] for t in (await self.request(tenant, "GET", "/traces")).json()["traces"]]


@pytest_twisted.ensureDeferred
async def test_another_tenants_trace_is_404() -> None:
    """A trace id of another tenant answers 404, as an unknown id does; its owner gets it."""
    tenants = Tenants()
    trace_id = (await tenants.post("alice")).json()["id"]
    refused = await tenants.request("bob", "GET", f"/traces/{trace_id}")
    assert refused.code == 404
    assert refused.json()["type"] == "urn:mtrd:problem:not-found"
    assert (await tenants.request("alice", "GET", f"/traces/{trace_id}")).code == 200


@pytest_twisted.ensureDeferred
async def test_another_tenants_text_report_is_404() -> None:
    """The text report of another tenant's trace is refused like the JSON."""
    tenants = Tenants()
    trace_id = (await tenants.post("alice")).json()["id"]
    tenants.client.run_for(3)
    text = {"Accept": "text/plain"}
    assert (await tenants.request("bob", "GET", f"/traces/{trace_id}", headers=text)).code == 404
    mine = await tenants.request("alice", "GET", f"/traces/{trace_id}", headers=text)
    assert mine.code == 200
    assert b"203.0.113.7" in mine.body


@pytest_twisted.ensureDeferred
async def test_another_tenants_event_stream_is_404() -> None:
    """Another tenant cannot follow a trace's events."""
    tenants = Tenants()
    trace_id = (await tenants.post("alice")).json()["id"]
    answer = await tenants.request("bob", "GET", f"/traces/{trace_id}/events")
    assert answer.code == 404


@pytest_twisted.ensureDeferred
async def test_another_tenant_cannot_cancel_or_delete() -> None:
    """DELETE of another tenant's trace is 404 and leaves the trace as it was."""
    tenants = Tenants()
    trace_id = (await tenants.post("alice", SLOW)).json()["id"]
    assert (await tenants.request("bob", "DELETE", f"/traces/{trace_id}")).code == 404
    still = await tenants.request("alice", "GET", f"/traces/{trace_id}")
    assert still.json()["status"] == "running"


@pytest_twisted.ensureDeferred
async def test_listings_show_only_the_callers_traces() -> None:
    """Each tenant's list holds its own traces, pages included; the admin's holds all."""
    tenants = Tenants()
    alice = [(await tenants.post("alice")).json()["id"] for _ in range(3)]
    bob = [(await tenants.post("bob")).json()["id"] for _ in range(2)]
    assert await tenants.listed("alice") == alice[::-1]
    assert await tenants.listed("bob") == bob[::-1]
    assert set(await tenants.listed("root")) == {*alice, *bob}
    page = (await tenants.request("alice", "GET", "/traces?limit=2")).json()
    rest = await tenants.request("alice", "GET", f"/traces?limit=2&cursor={page['next_cursor']}")
    assert [t["id"] for t in page["traces"] + rest.json()["traces"]] == alice[::-1]


@pytest_twisted.ensureDeferred
async def test_an_admin_sees_and_cancels_every_tenants_traces() -> None:
    """A token named in the admin tenants reads and cancels another tenant's trace."""
    tenants = Tenants()
    trace_id = (await tenants.post("alice", SLOW)).json()["id"]
    assert (await tenants.request("root", "GET", f"/traces/{trace_id}")).code == 200
    cancelled = await tenants.request("root", "DELETE", f"/traces/{trace_id}")
    assert cancelled.code == 200
    assert cancelled.json()["status"] == "cancelled"


@pytest_twisted.ensureDeferred
async def test_the_owner_is_not_rendered() -> None:
    """A trace's JSON does not carry its owner's name."""
    tenants = Tenants()
    answer = await tenants.post("alice")
    assert b"alice" not in answer.body
    assert tenants.client.store.get(answer.json()["id"]).trace.owner == "alice"  # type: ignore[union-attr]


@pytest_twisted.ensureDeferred
async def test_a_tenant_at_its_running_cap_waits_while_others_start() -> None:
    """Past its running cap a tenant's trace queues, and another tenant's starts at once."""
    tenants = Tenants(TenantLimits(max_running=2))
    statuses = [(await tenants.post("alice", SLOW)).json()["status"] for _ in range(3)]
    assert statuses == ["running", "running", "queued"]
    assert (await tenants.post("bob", SLOW)).json()["status"] == "running"


@pytest_twisted.ensureDeferred
async def test_a_tenant_at_its_queue_cap_gets_429_naming_it() -> None:
    """Running and queued caps full: 429 tenant-max-queued; another tenant is still served."""
    tenants = Tenants(TenantLimits(max_running=1, max_queued=1))
    await tenants.post("alice", SLOW)
    await tenants.post("alice", SLOW)
    refused = await tenants.post("alice", SLOW)
    assert refused.code == 429
    body = refused.json()
    assert body["type"] == "urn:mtrd:problem:tenant-max-queued"
    assert "--tenant-max-queued 1" in body["detail"]
    assert refused.header("retry-after") is not None
    assert (await tenants.post("bob", SLOW)).code == 202


@pytest_twisted.ensureDeferred
async def test_a_tenant_with_too_many_probes_waiting_gets_429_naming_it() -> None:
    """A tenant whose probes wait past its cap is refused; another tenant is not."""
    tenants = Tenants(TenantLimits(max_probes_waiting=10))
    tenants.client.pool.queued_by_group["alice"] = 10
    refused = await tenants.post("alice")
    assert refused.code == 429
    assert refused.json()["type"] == "urn:mtrd:problem:tenant-max-probes-waiting"
    assert (await tenants.post("bob")).code == 202


@pytest_twisted.ensureDeferred
async def test_a_tenant_at_its_store_cap_evicts_only_its_own_results() -> None:
    """At its stored cap a tenant's oldest finished trace goes; other tenants' stay."""
    tenants = Tenants(TenantLimits(max_stored=2))
    bob = (await tenants.post("bob")).json()["id"]
    first, second = [(await tenants.post("alice")).json()["id"] for _ in range(2)]
    tenants.client.run_for(3)
    third = (await tenants.post("alice")).json()["id"]
    assert await tenants.listed("alice") == [third, second]
    assert (await tenants.request("alice", "GET", f"/traces/{first}")).code == 404
    assert (await tenants.request("bob", "GET", f"/traces/{bob}")).code == 200


@pytest_twisted.ensureDeferred
async def test_a_tenant_at_its_store_cap_with_nothing_finished_gets_429() -> None:
    """A tenant whose stored traces all still run cannot add one: 429 tenant-max-stored."""
    tenants = Tenants(TenantLimits(max_stored=1))
    await tenants.post("alice", SLOW)
    refused = await tenants.post("alice", SLOW)
    assert refused.code == 429
    assert refused.json()["type"] == "urn:mtrd:problem:tenant-max-stored"


@pytest_twisted.ensureDeferred
async def test_a_full_store_evicts_the_submitting_tenants_results_first() -> None:
    """At the store's own cap, a tenant's new trace pushes out its own oldest result."""
    tenants = Tenants(max_traces=3)
    bob = (await tenants.post("bob")).json()["id"]
    alice = [(await tenants.post("alice")).json()["id"] for _ in range(2)]
    tenants.client.run_for(3)
    newest = (await tenants.post("alice")).json()["id"]
    assert await tenants.listed("alice") == [newest, alice[1]]
    assert (await tenants.request("bob", "GET", f"/traces/{bob}")).code == 200


@pytest_twisted.ensureDeferred
async def test_without_auth_caps_do_not_apply() -> None:
    """Without auth there is no tenant: every trace is everyone's and no tenant cap counts."""
    client = Client()
    client.jobs.tenant_limits = TenantLimits(max_running=1, max_queued=0)
    answers = [await client.post_trace(SLOW) for _ in range(3)]
    assert [a.json()["status"] for a in answers] == ["running"] * 3
