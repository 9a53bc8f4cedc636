"""Two tenants on the real ``mtrd serve`` with the lab's mtr-packet: one cannot starve the other.

The issue's attack: 27 heavy traces (255 TTLs, 100 probes, timeout 60) into a blackhole,
whose probes hold the workers' slots for a minute each. Another tenant's small trace must
still be accepted and complete promptly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor as global_reactor
from twisted.internet.task import deferLater

from tests.lab import Lab
from tests.mtrd_process import lab_mtrd

pytestmark = pytest.mark.lab
reactor: Any = global_reactor
TOKENS = {"heavy": "heavy-token-0123456789", "light": "light-token-0123456789"}


@pytest.fixture
def server(lab: Lab, tmp_path: Path) -> Iterator[str]:
    """mtrd with two tenants' tokens and a short shutdown grace."""
    tokens = tmp_path / "tokens"
    tokens.write_text("".join(f"{name}:{token}\n" for name, token in TOKENS.items()))
    flags = ["--auth-tokens-file", str(tokens), "--shutdown-grace", "1"]
    with lab_mtrd(lab, tmp_path / "mtrd.log", *flags) as (url, _process):
        yield url


async def call(url: str, tenant: str, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    """One request as ``tenant``; the status and the JSON body."""
    headers = {"Authorization": f"Bearer {TOKENS[tenant]}"}
    response = await treq.request(method, url + path, headers=headers, **kwargs)
    body = await response.content()
    return response.code, json.loads(body) if body else None


@pytest_twisted.ensureDeferred
async def test_a_small_trace_completes_beside_27_heavy_ones(lab: Lab, server: str) -> None:
    """27 heavy traces of one tenant leave another tenant's small trace prompt and complete,
    and that tenant cannot see the heavy ones."""
    heavy = {
        "target": lab.blackhole_target(4),
        "max_ttl": 255,
        "probes": 100,
        "timeout": 60,
    }
    heavy_ids = []
    for _ in range(27):
        code, body = await call(server, "heavy", "POST", "/traces", json=heavy)
        assert code in (202, 429), body
        if code == 202:
            heavy_ids.append(body["id"])
    await deferLater(reactor, 1.0, lambda: None)  # the heavy probes fill the workers
    started = reactor.seconds()
    small = {"target": lab.targets(4)[1], "probes": 3, "interval": 0.2, "timeout": 1}
    code, body = await call(server, "light", "POST", "/traces", json=small)
    assert code == 202, body
    trace_id = body["id"]
    while body["status"] not in ("completed", "failed", "cancelled"):
        assert reactor.seconds() - started < 15, body
        await deferLater(reactor, 0.2, lambda: None)
        code, body = await call(server, "light", "GET", f"/traces/{trace_id}")
    took = reactor.seconds() - started
    print(f"small trace beside {len(heavy_ids)} heavy ones: {body['status']} in {took:.2f} s")
    assert body["status"] == "completed", body
    assert body["destination_reached"] is True
    assert (await call(server, "light", "GET", f"/traces/{heavy_ids[0]}"))[0] == 404
    for heavy_id in heavy_ids:
        await call(server, "heavy", "DELETE", f"/traces/{heavy_id}")
