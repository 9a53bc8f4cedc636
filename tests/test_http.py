"""The HTTP edge over a fake pool, with StubTreq and no sockets."""

from __future__ import annotations

import json

import pytest_twisted
from treq.testing import StubTreq

from service.http import Api


class FakePool:
    """Just what the edge reads of a pool."""

    def __init__(self, ready: int, size: int = 2) -> None:
        self.ready_workers = ready
        self.size = size


def client(ready: int) -> StubTreq:
    return StubTreq(Api(FakePool(ready)).app.resource())  # type: ignore[arg-type]


@pytest_twisted.ensureDeferred
async def test_healthz_answers_while_the_process_serves() -> None:
    """/healthz is 200 whatever the pool's state."""
    response = await client(ready=0).get("http://mtrd/healthz")
    assert response.code == 200
    assert json.loads(await response.content()) == {"status": "ok"}


@pytest_twisted.ensureDeferred
async def test_readyz_is_503_until_a_worker_is_ready() -> None:
    """/readyz is 503 while no mtr-packet worker answered its version check."""
    response = await client(ready=0).get("http://mtrd/readyz")
    assert response.code == 503
    body = json.loads(await response.content())
    assert body == {"status": "not ready", "workers": {"ready": 0, "size": 2}}


@pytest_twisted.ensureDeferred
async def test_readyz_is_200_with_a_ready_worker() -> None:
    """/readyz is 200 once one worker is ready, and says how many."""
    response = await client(ready=1).get("http://mtrd/readyz")
    assert response.code == 200
    assert json.loads(await response.content())["workers"] == {"ready": 1, "size": 2}
