"""Redis mode's monitors on a real redis-server: kept settings, one runner per monitor, failover."""

from __future__ import annotations

import json
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import pytest
import pytest_twisted
import treq
from mtrd.monitors.model import Alerts, MonitorSpec
from mtrd.monitors.service import MonitorNameTaken, MonitorService, TooManyMonitors
from mtrd.monitors.shared import MonitorDirector, SharedMonitors
from mtrd.tracing.jobs import TraceJobs
from mtrd.tracing.model import Trace, TraceRequest
from mtrd.tracing.redis.connection import RedisConnection
from mtrd.tracing.store import TraceStore
from mtrd.tracing.tracer import Tracer
from mtrd.web.monitor_intake import decode_spec, encode_spec
from mtrd.web.monitor_memory import decode_memory, encode_memory
from mtrd.web.monitor_render import encode_event, monitor_bytes
from mtrd.web.routes import Api
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from tests.monitor_values import run_trace
from tests.openapi import validate_response
from tests.redis_server import RedisServer
from tests.redis_support import connected, sleep, wait_until
from tests.test_http import BASE, Answer, FakePool

pytestmark = pytest.mark.redis
REQUEST = TraceRequest("203.0.113.7", probes=1, timeout=1)
HOP = "198.51.100.1"


class NoRuns:
    """A starter that refuses every run: these tests are about who runs a monitor."""

    def start(
        self,
        request: TraceRequest,
        vantage: str | None,
        on_done: Callable[[Trace], None],
        on_refused: Callable[[str], None],
        owner: str | None = None,
    ) -> None:
        on_refused("not in this test")


@pytest_twisted.async_yield_fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[RedisConnection]:
    connection = await connected(redis_server)
    yield connection
    await connection.stopService()


def shared(redis: RedisConnection, cap: int = 10) -> SharedMonitors:
    return SharedMonitors(redis, encode=encode_spec, decode=decode_spec, max_monitors=cap)


def replica(redis: RedisConnection, name: str, vantage: str = "default") -> MonitorDirector:
    monitors = MonitorService(reactor, NoRuns(), rng=random.Random(1))  # type: ignore[arg-type]
    monitors.startService()
    return MonitorDirector(
        reactor,  # type: ignore[arg-type]
        shared(redis),
        monitors,
        replica=name,
        vantage=vantage,
        render=monitor_bytes,
        lease=1.0,
        sync_every=0.1,
    )


def spec(name: str = "gw") -> MonitorSpec:
    return MonitorSpec(name, REQUEST, every=60.0, jitter=0.0)


@pytest_twisted.ensureDeferred
async def test_settings_round_trip(redis: RedisConnection) -> None:
    """A kept monitor reads back with the same settings, owner and vantage."""
    kept = shared(redis)
    stored = await kept.create(spec(), "red", "fra", 1000.0)
    again = await kept.get(stored.id)
    assert again == stored
    assert [m.id for m in await kept.listing()] == [stored.id]


@pytest_twisted.ensureDeferred
async def test_names_are_unique_across_replicas(redis: RedisConnection) -> None:
    """A name taken through one replica is taken for all."""
    await shared(redis).create(spec(), None, "default", 0.0)
    with pytest.raises(MonitorNameTaken):
        await shared(redis).create(spec(), None, "default", 0.0)


@pytest_twisted.ensureDeferred
async def test_the_cap_holds_for_the_deployment(redis: RedisConnection) -> None:
    """Past max_monitors, a new monitor is refused and its name stays free."""
    kept = shared(redis, cap=1)
    await kept.create(spec("a"), None, "default", 0.0)
    with pytest.raises(TooManyMonitors):
        await kept.create(spec("b"), None, "default", 0.0)
    kept.max_monitors = 2
    await kept.create(spec("b"), None, "default", 0.0)


@pytest_twisted.ensureDeferred
async def test_each_monitor_runs_on_one_replica_of_its_vantage(redis: RedisConnection) -> None:
    """Of two replicas of a vantage, exactly one runs each monitor; other vantages none."""
    for n in range(4):
        await shared(redis).create(spec(f"m{n}"), None, "default", 0.0)
    one, two, elsewhere = replica(redis, "a"), replica(redis, "b"), replica(redis, "x", "fra")
    for director in (one, two, elsewhere):
        director.startService()
    try:
        await wait_until(lambda: len(one.held) + len(two.held) == 4)
        assert not set(one.held) & set(two.held)
        assert elsewhere.held == []
    finally:
        for director in (one, two, elsewhere):
            await director.stopService()


@pytest_twisted.ensureDeferred
async def test_a_dead_replicas_monitors_move_within_a_lease(redis: RedisConnection) -> None:
    """When the replica running a monitor stops renewing, another takes it after its lease."""
    stored = await shared(redis).create(spec(), None, "default", 0.0)
    first = replica(redis, "a")
    first.startService()
    await wait_until(lambda: first.held == [stored.id])
    second = replica(redis, "b")
    second.startService()
    try:
        first._loop.stop()  # dies: no more renewals, nothing handed on
        await wait_until(lambda: second.held == [stored.id], seconds=3.0)
        published = await shared(redis).states([stored.id])
        assert published[0] is not None
    finally:
        await second.stopService()


@pytest_twisted.ensureDeferred
async def test_a_stopping_replica_hands_its_monitors_on_at_once(redis: RedisConnection) -> None:
    """A replica that stops drops its leases: another takes the monitor at its next sync."""
    stored = await shared(redis).create(spec(), None, "default", 0.0)
    first = replica(redis, "a")
    first.startService()
    await wait_until(lambda: first.held == [stored.id])
    second = replica(redis, "b")
    second.startService()
    try:
        await first.stopService()
        await wait_until(lambda: second.held == [stored.id], seconds=0.8)  # < the lease
    finally:
        await second.stopService()


@pytest_twisted.ensureDeferred
async def test_changes_and_deletions_reach_the_runner(redis: RedisConnection) -> None:
    """A PATCH reaches the replica that runs the monitor; a DELETE stops it there."""
    kept = shared(redis)
    stored = await kept.create(spec(), None, "default", 0.0)
    runner = replica(redis, "a")
    runner.startService()
    try:
        await wait_until(lambda: runner.held == [stored.id])
        local = runner._monitors
        await kept.update(stored, MonitorSpec("gw", REQUEST, every=5.0, jitter=0.0))
        await wait_until(lambda: local.get(stored.id).spec.every == 5.0)
        await kept.delete(await kept.get(stored.id))  # type: ignore[arg-type]
        await wait_until(lambda: runner.held == [] and len(local) == 0)
    finally:
        await runner.stopService()


class Edge:
    """One replica's /monitors routes over StubTreq, on the shared Redis."""

    def __init__(self, redis: RedisConnection, director: MonitorDirector) -> None:
        memory = TraceStore(reactor)  # type: ignore[arg-type]
        unused = Tracer(reactor, None, None)  # type: ignore[arg-type]
        self.api = Api(
            pool=FakePool(),
            jobs=TraceJobs(unused, memory),
            store=memory,
            clock=reactor,  # type: ignore[arg-type]
            monitors=director._monitors,
            shared_monitors=shared(redis),
        )
        self.stub = StubTreq(self.api.resource())

    async def pumped(self, d: Deferred[Any]) -> Any:
        results: list[Any] = []
        d.addBoth(results.append)
        await wait_until(lambda: self.stub.flush() or bool(results))
        if isinstance(results[0], Failure):
            results[0].raiseException()
        return results[0]

    async def request(self, method: str, path: str, body: object = None) -> Answer:
        kwargs: dict[str, Any] = {}
        if body is not None:
            kwargs = {"data": json.dumps(body).encode(),
                      "headers": {"Content-Type": "application/json"}}  # fmt: skip
        response = await self.pumped(self.stub.request(method, BASE + path, **kwargs))
        content = await self.pumped(response.content())
        answer = Answer(response.code, response.headers, content)
        content_type = answer.header("content-type")
        validate_response(method, path, answer.code, content_type, content)
        return answer


@pytest_twisted.ensureDeferred
async def test_the_api_answers_from_redis_on_every_replica(redis: RedisConnection) -> None:
    """POST on one replica; the other shows it, once run with what its runner published;
    PATCH and DELETE reach it."""
    runner, other = replica(redis, "a"), replica(redis, "b", "fra")
    runner.startService()
    here, there = Edge(redis, runner), Edge(redis, other)
    try:
        body = {"name": "gw", "target": "203.0.113.7", "every": 30, "jitter": 0}
        created = await there.request("POST", "/monitors", body)
        assert created.code == 201
        monitor_id = created.json()["id"]
        await wait_until(lambda: runner.held == [monitor_id])

        async def published() -> Any:
            return (await there.request("GET", f"/monitors/{monitor_id}")).json()

        await wait_until_async(published, lambda doc: doc["runs"] != [])
        listing = (await there.request("GET", "/monitors")).json()
        assert [m["id"] for m in listing["monitors"]] == [monitor_id]
        patched = await there.request("PATCH", f"/monitors/{monitor_id}", {"every": 10})
        assert patched.json()["every"] == 10.0
        await wait_until(lambda: runner._monitors.get(monitor_id).spec.every == 10.0)
        assert (await there.request("DELETE", f"/monitors/{monitor_id}")).code == 204
        await wait_until(lambda: runner.held == [])
        assert (await here.request("GET", f"/monitors/{monitor_id}")).code == 404
    finally:
        await runner.stopService()


async def wait_until_async(read: Any, check: Callable[[Any], bool], seconds: float = 5.0) -> Any:
    """Read until ``check`` holds on what ``read()`` gives."""
    deadline = time.monotonic() + seconds
    while True:
        value = await read()
        if check(value):
            return value
        assert time.monotonic() < deadline, f"not met in time: {value}"
        await sleep(0.05)


class SamePath:
    """A starter whose runs end at once, each seeing the same path."""

    def start(
        self,
        request: TraceRequest,
        vantage: str | None,
        on_done: Callable[[Trace], None],
        on_refused: Callable[[str], None],
        owner: str | None = None,
    ) -> None:
        trace = attrs.evolve(run_trace(HOP, "203.0.113.7"), request=request)
        reactor.callLater(0, on_done, trace)  # type: ignore[attr-defined]


def remembering(redis: RedisConnection, name: str) -> MonitorDirector:
    """A replica whose runs see one path, keeping what its monitors saw in Redis."""
    monitors = MonitorService(reactor, SamePath(), rng=random.Random(1))  # type: ignore[arg-type]
    monitors.startService()
    return MonitorDirector(
        reactor,  # type: ignore[arg-type]
        shared(redis),
        monitors,
        replica=name,
        vantage="default",
        render=monitor_bytes,
        lease=1.0,
        sync_every=0.1,
        encode_memory=encode_memory,
        decode_memory=decode_memory,
        encode_event=encode_event,
    )


@pytest_twisted.ensureDeferred
async def test_a_moved_monitor_continues_from_what_its_runner_saw(redis: RedisConnection) -> None:
    """A runs the monitor and keeps its memory; after A stops, B continues its path, runs
    and event numbering instead of starting afresh."""
    kept = shared(redis)
    every_second = MonitorSpec("gw", REQUEST, every=1.0, jitter=0.0, alerts=Alerts(loss_pct=1))
    stored = await kept.create(every_second, None, "default", 0.0)
    first, second = remembering(redis, "a"), remembering(redis, "b")
    first.startService()
    try:
        await wait_until(lambda: first.held == [stored.id])

        async def memory() -> Any:
            data = await kept.memory(stored.id)
            return None if data is None else decode_memory(data)

        seen = await wait_until_async(memory, lambda m: m is not None and len(m.runs) >= 1)
        await first.stopService()
        second.startService()
        await wait_until(lambda: second.held == [stored.id])
        record = second._monitors.get(stored.id)
        assert record.path.current is not None
        assert record.path.current.path_id == seen.path.current.path_id
        assert list(record.runs)[: len(seen.runs)] == list(seen.runs)
        assert record.channel.last_id >= seen.next_event_id - 1
    finally:
        await second.stopService()


@pytest_twisted.ensureDeferred
async def test_a_deleted_monitors_memory_goes_with_it(redis: RedisConnection) -> None:
    """DELETE removes the kept memory, and a late runner cannot write it back."""
    kept = shared(redis)
    stored = await kept.create(spec(), None, "default", 0.0)
    assert await kept.put_memory(stored.id, b"{}")
    await kept.delete(stored)
    assert await kept.memory(stored.id) is None
    assert not await kept.put_memory(stored.id, b"{}")
    assert await kept.memory(stored.id) is None


@pytest_twisted.ensureDeferred
async def test_any_replica_streams_a_monitors_events(redis: RedisConnection) -> None:
    """B, which does not run the monitor, streams its events from the log A keeps in
    Redis, resuming after Last-Event-ID, and ends the stream when it is deleted."""
    kept = shared(redis)
    stored = await kept.create(MonitorSpec("gw", REQUEST, every=1.0, jitter=0.0), None,
                               "default", 0.0)  # fmt: skip
    runner = remembering(redis, "a")
    there = Edge(redis, replica(redis, "b", "fra"))
    runner.startService()
    try:
        await wait_until(lambda: runner.held == [stored.id])
        path = f"/monitors/{stored.id}/events"
        response = await there.pumped(
            there.stub.request("GET", BASE + path, headers={"Last-Event-ID": "1"})
        )
        assert response.code == 200
        chunks: list[bytes] = []
        done = treq.collect(response, chunks.append)
        await wait_until(
            lambda: there.stub.flush() or b"".join(chunks).count(b"event: run") >= 2, 10.0
        )
        await kept.delete(stored)
        await there.pumped(done)
        ids = [line for line in b"".join(chunks).split(b"\n") if line.startswith(b"id: ")]
        assert ids[:2] == [b"id: 2", b"id: 3"]
    finally:
        await runner.stopService()


@pytest_twisted.ensureDeferred
async def test_another_replica_answers_404_for_an_unknown_monitors_events(
    redis: RedisConnection,
) -> None:
    """A replica that runs no such monitor answers 404, not a stream."""
    there = Edge(redis, replica(redis, "b"))
    assert (await there.request("GET", "/monitors/m-nothing/events")).code == 404


@pytest_twisted.ensureDeferred
async def test_file_monitors_are_kept_in_redis_and_run_once(redis: RedisConnection) -> None:
    """Two replicas load one file: its monitor is kept once, as a file monitor, and runs on
    one of them; dropped from the file, it is deleted."""
    first, second = replica(redis, "a"), replica(redis, "b")
    wanted = [("m-file-gw-1", spec("gw"))]
    first.file_monitors = second.file_monitors = wanted
    first.startService()
    second.startService()
    try:
        await wait_until(lambda: len(first.held) + len(second.held) == 1)
        (stored,) = await shared(redis).listing()
        assert (stored.id, stored.source.value) == ("m-file-gw-1", "file")
        first.file_monitors = second.file_monitors = []
        await wait_until(lambda: first.held == second.held == [])
        assert await shared(redis).listing() == []
    finally:
        await first.stopService()
        await second.stopService()


@pytest_twisted.ensureDeferred
async def test_file_monitors_are_read_only_on_every_replica(redis: RedisConnection) -> None:
    """PATCH and DELETE of a file monitor kept in Redis answer 409."""
    await shared(redis).keep_file_monitors([("m-file-gw-1", spec("gw"))], "default", 0.0)
    there = Edge(redis, replica(redis, "b"))
    patched = await there.request("PATCH", "/monitors/m-file-gw-1", {"paused": True})
    deleted = await there.request("DELETE", "/monitors/m-file-gw-1")
    assert (patched.code, deleted.code) == (409, 409)
    shown = await there.request("GET", "/monitors/m-file-gw-1")
    assert shown.json()["source"] == "file"


@pytest_twisted.ensureDeferred
async def test_a_file_monitor_does_not_take_an_api_monitors_name(redis: RedisConnection) -> None:
    """A file monitor whose name an API monitor holds is not kept (the API one stays)."""
    kept = shared(redis)
    api = await kept.create(spec("gw"), None, "default", 0.0)
    await kept.keep_file_monitors([("m-file-gw-1", spec("gw"))], "default", 0.0)
    assert [m.id for m in await kept.listing()] == [api.id]
