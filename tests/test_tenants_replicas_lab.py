"""A tenant's running cap across two replicas of one vantage on a shared Redis, with the lab's
mtr-packet: the replicas together run at most ``--tenant-max-running`` of its traces, and
another tenant's trace queued behind them still runs at once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor as global_reactor
from twisted.internet.task import deferLater

from tests.lab import Lab
from tests.mtrd_process import replicas
from tests.redis_server import RedisServer, require_redis_server

pytestmark = pytest.mark.lab
reactor: Any = global_reactor

C = "lab-c"
TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789"}
# About 3 s of probing each.
SLOW = {"probes": 6, "interval": 0.5, "timeout": 1, "max_ttl": 6}
QUICK = {"probes": 2, "interval": 0.2, "timeout": 1, "max_ttl": 8}
FINAL = ("completed", "failed", "cancelled")


async def call(url: str, tenant: str, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    """One request as ``tenant``; the status and the JSON body."""
    headers = {"Authorization": f"Bearer {TOKENS[tenant]}"}
    response = await treq.request(method, url + path, headers=headers, **kwargs)
    body = await response.content()
    return response.code, json.loads(body) if body else None


async def statuses(url: str, tenant: str, ids: list[str]) -> list[str]:
    found = []
    for trace_id in ids:
        code, body = await call(url, tenant, "GET", f"/traces/{trace_id}")
        assert code == 200, body
        found.append(body["status"])
    return found


@pytest_twisted.ensureDeferred
async def test_a_tenants_running_cap_holds_across_two_replicas(lab: Lab, tmp_path: Path) -> None:
    """Six of alice's traces posted to two replicas (room for eight): never more than two run
    at once, all complete, and bob's trace posted after them completes while hers wait."""
    tokens = tmp_path / "tokens"
    tokens.write_text("".join(f"{name}:{token}\n" for name, token in TOKENS.items()))
    flags = ("--auth-tokens-file", str(tokens), "--max-running", "4", "--tenant-max-running", "2")
    server = RedisServer(require_redis_server())
    server.start()
    try:
        with replicas(
            lab, server.url, tmp_path, [(C, "c"), (C, "c")], *flags, token=TOKENS["alice"]
        ) as pair:
            urls = [r.url for r in pair]
            ids = []
            for i in range(6):
                request = {"target": lab.targets(4)[i % 4], **SLOW}
                code, body = await call(urls[i % 2], "alice", "POST", "/traces", json=request)
                assert code == 202, body
                ids.append(body["id"])
            code, body = await call(
                urls[1], "bob", "POST", "/traces", json={"target": lab.targets(4)[0], **QUICK}
            )
            assert code == 202, body
            bob = body["id"]
            bob_done_while_alice_waits = False
            most = 0
            started = reactor.seconds()
            while True:
                now = await statuses(urls[0], "alice", ids)
                most = max(most, now.count("running"))
                _, bob_trace = await call(urls[0], "bob", "GET", f"/traces/{bob}")
                if bob_trace["status"] == "completed" and "queued" in now:
                    bob_done_while_alice_waits = True
                if all(s in FINAL for s in now):
                    break
                assert reactor.seconds() - started < 60, now
                await deferLater(reactor, 0.1, lambda: None)
    finally:
        server.close()
    took = reactor.seconds() - started
    print(f"alice's six traces: at most {most} running; all ended in {took:.1f} s")
    assert most == 2
    assert now == ["completed"] * 6
    assert bob_done_while_alice_waits
