"""Replicas on a shared Redis in the lab: vantage points, shared work, any replica answering,
and faults (a replica killed, Redis stopped) that lose nothing and leave nothing stuck.

Each replica is ``mtrd serve --store redis://...`` in the host's namespace (so it reaches the
test's redis-server on loopback) with its mtr-packet in a lab node: ``c`` (vantage
``lab-c``) or the second vantage ``v`` (vantage ``lab-v``), whose path is r2b, r3, target.
The contract is docs/redis.md's; the lease is 5 s, renewed every second.
MTRD_REPLICA_SOAK_SECONDS sets the soak's length (default 60).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
import treq
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import deferLater

from tests.lab import Lab
from tests.mtrd_process import Replica, replicas
from tests.redis_server import RedisServer, require_redis_server

pytestmark = pytest.mark.lab
reactor: Any = global_reactor

C, V = "lab-c", "lab-v"
FINAL = ("completed", "failed", "cancelled")
QUICK = {"probes": 3, "interval": 0.2, "timeout": 1, "max_ttl": 8}
SLOW = {"probes": 12, "interval": 0.5, "timeout": 1, "max_ttl": 6}
"""About 6 s of probing: long enough to read part of a stream, cancel, or kill mid-trace."""
LEASE = 5.0
BEAT = 1.0
SLACK = 2.0
"""Polling and a busy two-core machine on top of a documented bound."""
SOAK_SECONDS = float(os.environ.get("MTRD_REPLICA_SOAK_SECONDS", "60"))
# Every accepted trace must survive the Redis restart, so this server writes each command to
# its append-only file before answering (the README's persistence settings, made strict).
DURABLE = ("--appendonly", "yes", "--appendfsync", "always")


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def wait_for(check: Callable[[], Any], limit: float, what: str) -> float:
    """Poll the coroutine function ``check`` until it returns something true; the seconds."""
    started = reactor.seconds()
    while not await check():
        assert reactor.seconds() - started < limit, f"{what} did not happen within {limit} s"
        await sleep(0.05)
    return float(reactor.seconds() - started)


@attrs.frozen
class Event:
    """One server-sent event."""

    id: int | None
    kind: str
    data: Any


def parse_event(block: bytes) -> Event | None:
    """An event from one SSE block; None for a comment or a retry line alone."""
    fields: dict[str, str] = {}
    for line in block.decode().splitlines():
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        fields[name] = value.removeprefix(" ")
    if "data" not in fields:
        return None
    return Event(
        int(fields["id"]) if "id" in fields else None,
        fields.get("event", "message"),
        json.loads(fields["data"]),
    )


async def call(url: str, method: str, path: str, **kwargs: Any) -> tuple[int, Any, bytes]:
    """One request: status, headers, body."""
    response = await treq.request(method, url + path, **kwargs)
    return response.code, response.headers, await response.content()


async def get(url: str, trace_id: str) -> dict[str, Any] | None:
    """The trace as JSON, or None when this replica says 404."""
    code, _, body = await call(url, "GET", f"/traces/{trace_id}")
    if code == 404:
        return None
    assert code == 200, (code, body)
    return dict(json.loads(body))


async def post(url: str, **request: Any) -> str:
    """Start a trace; its id."""
    code, _, body = await call(url, "POST", "/traces", json=request)
    assert code == 202, (code, body)
    return str(json.loads(body)["id"])


async def final(url: str, trace_id: str, limit: float = 30.0) -> dict[str, Any]:
    """Poll until the trace is final (read from ``url``)."""
    started = reactor.seconds()
    while True:
        trace = await get(url, trace_id)
        assert trace is not None, f"trace {trace_id} is gone"
        if trace["status"] in FINAL:
            return trace
        assert reactor.seconds() - started < limit, f"trace still {trace['status']}"
        await sleep(0.1)


async def events(
    url: str, trace_id: str, after: int | None = None, keep: int | None = None, limit: float = 30
) -> list[Event]:
    """The trace's event stream read from ``url`` (after ``Last-Event-ID`` ``after``), to its
    end, or until ``keep`` events with ids were read (then this subscriber goes away)."""
    headers = {"Last-Event-ID": str(after)} if after is not None else {}
    response = await treq.get(f"{url}/traces/{trace_id}/events", headers=headers, unbuffered=True)
    assert response.code == 200, await response.content()
    read: list[Event] = []
    buffer = b""
    enough = False

    def received(chunk: bytes) -> None:
        nonlocal buffer, enough
        buffer += chunk.replace(b"\r\n", b"\n")
        while b"\n\n" in buffer and not enough:
            block, buffer = buffer.split(b"\n\n", 1)
            event = parse_event(block)
            if event is not None:
                read.append(event)
            if keep is not None and sum(e.id is not None for e in read) >= keep:
                enough = True
                response.original._transport.loseConnection()

    collecting = treq.collect(response, received)
    collecting.addTimeout(limit, reactor)
    try:
        await collecting
    except Exception:
        if not enough:
            raise
    return read


async def scrape(url: str, name: str) -> float:
    """The sum of one metric's samples (every label set)."""
    _, _, body = await call(url, "GET", "/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        head = line.split(" ")[0]
        if not line.startswith("#") and (head == name or head.startswith(name + "{")):
            total += float(line.split(" ")[-1])
    return total


async def active(url: str) -> list[str]:
    """Ids of the traces this replica lists as queued or running (across every replica)."""
    ids = []
    for status in ("queued", "running"):
        code, _, body = await call(url, "GET", f"/traces?status={status}&limit=500")
        assert code == 200, body
        ids += [t["id"] for t in json.loads(body)["traces"]]
    return ids


def redis_cli(server: RedisServer, *command: str) -> str:
    """One command through redis-cli (only after the load: it blocks the reactor briefly)."""
    done = subprocess.run(
        ["redis-cli", "-p", str(server.port), "--raw", *command],
        capture_output=True, text=True, timeout=10, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def nothing_pending(server: RedisServer, vantage: str) -> None:
    """No work queued or claimed for ``vantage``, and no replica holds a running trace."""
    queue = f"mtrd:vantage:{{{vantage}}}:queue"
    assert redis_cli(server, "XLEN", queue) in ("0", ""), "work still queued"
    pending = redis_cli(server, "XPENDING", queue, "runners")
    assert pending.splitlines()[:1] in ([], ["0"]), f"claims still pending: {pending}"
    for key in redis_cli(server, "--scan", "--pattern", "mtrd:replica:*:running").split():
        assert redis_cli(server, "SCARD", key) == "0", f"{key} still holds traces"


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server that keeps what it acknowledged across a restart."""
    server = RedisServer(require_redis_server(), options=DURABLE)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def places(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Replica]]:
    """One Redis and two replicas for the read-only tests: vantage lab-c and vantage lab-v."""
    server = RedisServer(require_redis_server())
    server.start()
    try:
        log_dir = tmp_path_factory.mktemp("places")
        with replicas(lab, server.url, log_dir, [(C, "c"), (V, "v")]) as started:
            yield started
    finally:
        server.close()


def assert_hops(trace: dict[str, Any], expected: tuple[frozenset[str], ...]) -> None:
    """The trace reached its target through exactly the expected responders, hop by hop."""
    assert trace["status"] == "completed", trace["error"]
    assert trace["destination_reached"] is True
    assert [hop["ttl"] for hop in trace["hops"]] == list(range(1, len(expected) + 1))
    for hop, allowed in zip(trace["hops"], expected, strict=True):
        addresses = {r["address"] for r in hop["responders"]}
        assert addresses, hop
        assert addresses <= allowed, (hop["ttl"], addresses, allowed)


# -- vantage points ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", [4, 6])
@pytest_twisted.ensureDeferred
async def test_posting_to_one_replica_runs_at_the_vantage_asked(
    lab: Lab, places: list[Replica], family: int
) -> None:
    """POST to the c replica with vantage lab-v traces from v (r2b, r3, target), and back."""
    at_c, at_v = places
    target = lab.targets(family)[40 + family]
    from_v = await final(at_c.url, await post(at_c.url, target=target, vantage=V, **QUICK))
    assert_hops(from_v, lab.vantage_hops(family, target))
    assert from_v["vantage"] == V
    assert at_v.owns(from_v["replica"])
    from_c = await final(at_v.url, await post(at_v.url, target=target, vantage=C, **QUICK))
    assert_hops(from_c, lab.hops(family, target))
    assert from_c["vantage"] == C
    assert at_c.owns(from_c["replica"])


@pytest_twisted.ensureDeferred
async def test_without_vantage_a_trace_runs_at_the_replicas_own(
    lab: Lab, places: list[Replica]
) -> None:
    """A POST with no vantage runs where the replica that took it probes from."""
    _, at_v = places
    target = lab.targets(4)[45]
    trace = await final(at_v.url, await post(at_v.url, target=target, **QUICK))
    assert trace["vantage"] == V
    assert_hops(trace, lab.vantage_hops(4, target))


@pytest_twisted.ensureDeferred
async def test_vantage_points_lists_both_on_every_replica(places: list[Replica]) -> None:
    """GET /vantage-points on either replica lists lab-c and lab-v, one ready replica each."""
    for replica in places:
        code, _, body = await call(replica.url, "GET", "/vantage-points")
        assert code == 200, body
        listed = {p["name"]: p for p in json.loads(body)["vantage_points"]}
        assert set(listed) == {C, V}
        assert all(p["replicas"] == 1 and p["ready"] is True for p in listed.values())
        assert all(p["capacity"] >= 1 for p in listed.values())


@pytest_twisted.ensureDeferred
async def test_vantage_without_a_live_replica_is_refused(lab: Lab, places: list[Replica]) -> None:
    """A vantage nobody probes from gets 422 naming vantage and listing the live ones."""
    code, _, body = await call(
        places[0].url, "POST", "/traces", json={"target": lab.targets(4)[1], "vantage": "mars"}
    )
    assert code == 422, body
    problem = json.loads(body)
    assert "vantage" in {e["field"] for e in problem["errors"]}
    assert C in body.decode()
    assert V in body.decode()


@pytest_twisted.ensureDeferred
async def test_replica_takes_traces_as_soon_as_it_is_ready(
    lab: Lab, redis: RedisServer, tmp_path: Path
) -> None:
    """Once /readyz says 200, a POST for the replica's own vantage is accepted (a load
    balancer sends traffic then: the vantage must already be live)."""
    replica = Replica(lab, redis.url, C, "c", tmp_path / "replica.log")
    try:
        replica.start()
        code, _, body = await call(
            replica.url, "POST", "/traces", json={"target": lab.targets(4)[3], **QUICK}
        )
    finally:
        replica.stop()
    assert code == 202, body


# -- any replica answers every route ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_trace_is_read_on_the_other_replica_with_its_etag(
    lab: Lab, places: list[Replica]
) -> None:
    """A trace POSTed to one replica is read on the other, with an ETag it honours (304)."""
    at_c, at_v = places
    trace_id = await post(at_c.url, target=lab.targets(4)[50], **QUICK)
    trace = await final(at_v.url, trace_id)
    assert trace["id"] == trace_id
    code, headers, _ = await call(at_v.url, "GET", f"/traces/{trace_id}")
    etag = headers.getRawHeaders("etag")[0]
    for replica in places:
        code, _, body = await call(
            replica.url, "GET", f"/traces/{trace_id}", headers={"If-None-Match": etag}
        )
        assert code == 304, body


@pytest_twisted.ensureDeferred
async def test_text_report_on_the_other_replica(lab: Lab, places: list[Replica]) -> None:
    """The text report of a trace run by one replica is served by the other."""
    at_c, at_v = places
    target = lab.targets(4)[51]
    trace_id = await post(at_c.url, target=target, **QUICK)
    await final(at_c.url, trace_id)
    code, headers, body = await call(
        at_v.url, "GET", f"/traces/{trace_id}", headers={"Accept": "text/plain"}
    )
    assert code == 200, body
    assert headers.getRawHeaders("content-type")[0].startswith("text/plain")
    assert f"-- {target} " in body.decode()


@pytest_twisted.ensureDeferred
async def test_list_is_newest_first_across_replicas(lab: Lab, places: list[Replica]) -> None:
    """Traces POSTed to both replicas in turn are listed newest first on each."""
    posted = []
    for i in range(4):
        url = places[i % 2].url
        posted.append(await post(url, target=lab.targets(4)[52 + i], **QUICK))
    for replica in places:
        code, _, body = await call(replica.url, "GET", "/traces?limit=500")
        assert code == 200, body
        listed = [t["id"] for t in json.loads(body)["traces"] if t["id"] in posted]
        assert listed == posted[::-1]


@pytest_twisted.ensureDeferred
async def test_list_pages_with_a_cursor_across_replicas(lab: Lab, places: list[Replica]) -> None:
    """Paging with the cursor of one replica on the other yields every trace once."""
    posted = {
        await post(places[i % 2].url, target=lab.targets(4)[60 + i], **QUICK) for i in range(5)
    }
    seen: list[str] = []
    cursor = ""
    for page in range(100):
        url = places[page % 2].url
        code, _, body = await call(
            url, "GET", f"/traces?limit=2{'&cursor=' + cursor if cursor else ''}"
        )
        assert code == 200, body
        answer = json.loads(body)
        seen += [t["id"] for t in answer["traces"]]
        cursor = answer["next_cursor"] or ""
        if not cursor:
            break
    assert posted <= set(seen)
    assert len(seen) == len(set(seen))


@pytest_twisted.ensureDeferred
async def test_finished_trace_deleted_on_one_replica_is_gone_on_both(
    lab: Lab, places: list[Replica]
) -> None:
    """DELETE of a finished trace on the replica that did not run it removes it everywhere."""
    at_c, at_v = places
    trace_id = await post(at_c.url, target=lab.targets(4)[56], **QUICK)
    await final(at_c.url, trace_id)
    code, _, body = await call(at_v.url, "DELETE", f"/traces/{trace_id}")
    assert code == 204, body
    assert await get(at_c.url, trace_id) is None
    assert await get(at_v.url, trace_id) is None


@pytest.mark.parametrize("first", [0, 1], ids=["runner-first", "other-first"])
@pytest_twisted.ensureDeferred
async def test_event_stream_resumes_on_the_other_replica(
    lab: Lab, places: list[Replica], first: int
) -> None:
    """Part of the stream on one replica, the rest on the other after Last-Event-ID: ids keep
    growing from where the first part stopped, and the stream ends with done."""
    at_c, _ = places
    trace_id = await post(at_c.url, target=lab.targets(4)[57], **SLOW)  # runs on at_c
    head = await events(places[first].url, trace_id, keep=3)
    ids = [e.id for e in head if e.id is not None]
    assert len(ids) == 3
    tail = await events(places[1 - first].url, trace_id, after=ids[-1])
    tail_ids = [e.id for e in tail if e.id is not None]
    assert tail_ids, tail
    assert ids == sorted(set(ids))
    assert tail_ids == sorted(set(tail_ids))
    assert tail_ids[0] > ids[-1]
    assert tail[-1].kind == "done"
    assert (await final(at_c.url, trace_id))["status"] == "completed"


@pytest_twisted.ensureDeferred
async def test_running_trace_is_cancelled_from_the_other_replica(
    lab: Lab, places: list[Replica]
) -> None:
    """DELETE on the replica that does not run a trace cancels it within a second."""
    at_c, at_v = places

    async def running() -> bool:
        trace = await get(at_v.url, trace_id)
        return trace is not None and trace["status"] == "running"

    trace_id = await post(at_c.url, target=lab.targets(4)[58], **SLOW)
    await wait_for(running, 10, "the trace running")
    asked = reactor.seconds()
    code, _, body = await call(at_v.url, "DELETE", f"/traces/{trace_id}")
    assert code == 200, body

    async def cancelled() -> bool:
        trace = await get(at_c.url, trace_id)
        return trace is not None and trace["status"] == "cancelled"

    await wait_for(cancelled, 1.0 + SLACK, "the cancel")
    took = reactor.seconds() - asked
    assert took <= 1.0 + 0.5, f"cancelled {took:.2f} s after DELETE"
    trace = await final(at_c.url, trace_id)
    assert max(hop["sent"] for hop in trace["hops"]) < SLOW["probes"]


# -- one vantage, two replicas ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_two_replicas_of_one_vantage_share_the_work(
    lab: Lab, redis: RedisServer, tmp_path: Path
) -> None:
    """40 traces on two replicas of one vantage: both run some, each completes once, and the
    probes sent add up to the traces' own counts (none ran twice)."""
    with replicas(lab, redis.url, tmp_path, [(C, "c"), (C, "c")], "--max-running", "4") as pair:
        before = [await scrape(r.url, "mtrd_probes_sent_total") for r in pair]
        ids = [await post(pair[i % 2].url, target=lab.targets(4)[i], **QUICK) for i in range(40)]
        traces = [await final(pair[i % 2].url, t, limit=90) for i, t in enumerate(ids)]
        after = [await scrape(r.url, "mtrd_probes_sent_total") for r in pair]
        owners = [[r.owns(t["replica"]) for r in pair] for t in traces]
    assert all(t["status"] == "completed" for t in traces), [t["error"] for t in traces]
    assert all(sum(o) == 1 for o in owners), [t["replica"] for t in traces]
    assert all(sum(o[i] for o in owners) > 0 for i in range(2)), "one replica ran everything"
    assert sum(after) - sum(before) == sum(h["sent"] for t in traces for h in t["hops"])
    assert len(set(ids)) == 40


@pytest_twisted.ensureDeferred
async def test_replica_killed_mid_trace(lab: Lab, redis: RedisServer, tmp_path: Path) -> None:
    """kill -9 of a replica: its started traces end failed/replica_lost within lease + beat,
    the rest run on the other, and a subscriber on the other sees the end."""
    flags = ("--max-running", "3")
    with replicas(lab, redis.url, tmp_path, [(C, "c"), (C, "c")], *flags) as (victim, other):
        ids = [await post(other.url, target=lab.targets(4)[70 + i], **SLOW) for i in range(10)]
        victims: list[str] = []

        async def victim_runs() -> bool:
            victims.clear()
            for trace_id in ids:
                trace = await get(other.url, trace_id)
                if trace and trace["status"] == "running" and victim.owns(trace["replica"]):
                    victims.append(trace_id)
            return bool(victims)

        await wait_for(victim_runs, 15, "the victim running a trace")
        watching = Deferred.fromCoroutine(events(other.url, victims[0], limit=60))
        await sleep(0.5)
        victim.kill()
        killed = reactor.seconds()

        async def lost_ended() -> bool:
            traces = [await get(other.url, t) for t in victims]
            return all(t is not None and t["status"] in FINAL for t in traces)

        await wait_for(lost_ended, LEASE + BEAT + SLACK, "the lost traces ending")
        ended_after = reactor.seconds() - killed
        seen = await watching
        traces = {t: await final(other.url, t, limit=90) for t in ids}
    for trace_id in victims:
        assert traces[trace_id]["status"] == "failed"
        assert traces[trace_id]["error"]["type"] == "replica_lost"
    for trace in traces.values():
        if trace["status"] != "completed":
            assert trace["error"]["type"] == "replica_lost", trace
    rest = [t for t in ids if traces[t]["error"] is None]
    assert rest, "nothing ran on the other replica"
    assert all(other.owns(traces[t]["replica"]) for t in rest)
    assert seen[-1].kind == "done", seen[-3:]
    assert ended_after <= LEASE + BEAT + SLACK


@pytest_twisted.ensureDeferred
async def test_replica_stopped_with_sigterm_hands_its_work_on(
    lab: Lab, redis: RedisServer, tmp_path: Path
) -> None:
    """SIGTERM: the replica's running traces get the grace and end cancelled, none ends
    replica_lost, and everything still queued runs on the other replica."""
    flags = ("--max-running", "2", "--shutdown-grace", "1")
    with replicas(lab, redis.url, tmp_path, [(C, "c"), (C, "c")], *flags) as (leaving, other):
        ids = [await post(other.url, target=lab.targets(4)[100 + i], **SLOW) for i in range(8)]
        mine: list[str] = []

        async def leaving_runs() -> bool:
            mine.clear()
            for trace_id in ids:
                trace = await get(other.url, trace_id)
                if trace and trace["status"] == "running" and leaving.owns(trace["replica"]):
                    mine.append(trace_id)
            return bool(mine)

        await wait_for(leaving_runs, 15, "the leaving replica running a trace")
        leaving.stop()
        traces = {t: await final(other.url, t, limit=90) for t in ids}
    ran_there = [t for t in ids if leaving.owns(traces[t]["replica"])]
    rest = [t for t in ids if t not in ran_there]
    assert set(mine) <= set(ran_there)
    assert all(traces[t]["status"] == "cancelled" for t in ran_there), [traces[t] for t in ids]
    assert rest, "the leaving replica ran everything"
    assert all(traces[t]["status"] == "completed" for t in rest), [traces[t] for t in rest]
    assert all(other.owns(traces[t]["replica"]) for t in rest)


@pytest_twisted.ensureDeferred
async def test_redis_stopped_and_restarted_under_load(
    lab: Lab, redis: RedisServer, tmp_path: Path
) -> None:
    """While Redis is away: /readyz 503 naming the store, POST 503 with Retry-After, no 500,
    no hang; afterwards it recovers by itself and every accepted trace ends final."""
    with replicas(lab, redis.url, tmp_path, [(C, "c"), (C, "c")]) as pair:
        accepted: list[str] = []
        codes: dict[int, int] = {}
        slowest = [0.0]
        stop_at = [reactor.seconds() + 600.0]

        async def lane(n: int) -> None:
            while reactor.seconds() < stop_at[0]:
                url = pair[n % 2].url
                asked = reactor.seconds()
                request = {"target": lab.targets(4)[80 + n], **QUICK, "probes": 2}
                code, headers, body = await call(url, "POST", "/traces", json=request)
                slowest[0] = max(slowest[0], reactor.seconds() - asked)
                codes[code] = codes.get(code, 0) + 1
                if code == 202:
                    accepted.append(json.loads(body)["id"])
                elif code == 503:
                    assert headers.getRawHeaders("retry-after"), body
                await sleep(0.1)

        lanes = DeferredList(
            [Deferred.fromCoroutine(lane(n)) for n in range(4)], consumeErrors=True
        )
        await sleep(3)
        redis.stop()
        gone = reactor.seconds()
        for replica in pair:

            async def not_ready(replica: Replica = replica) -> bool:
                code, _, body = await call(replica.url, "GET", "/readyz")
                return code == 503 and json.loads(body).get("store", {}).get("ready") is False

            await wait_for(not_ready, 5, "/readyz 503 naming the store")
        code, headers, body = await call(
            pair[0].url, "POST", "/traces", json={"target": lab.targets(4)[90], **QUICK}
        )
        assert code == 503, body
        assert headers.getRawHeaders("retry-after")
        assert headers.getRawHeaders("content-type")[0] == "application/problem+json"
        await sleep(max(0.0, 4 - (reactor.seconds() - gone)))
        redis.start()
        for replica in pair:

            async def ready(replica: Replica = replica) -> bool:
                code, _, _ = await call(replica.url, "GET", "/readyz")
                return code == 200

            await wait_for(ready, 15, "/readyz 200 again")
        await sleep(3)
        stop_at[0] = reactor.seconds()
        for ok, failure in await lanes:
            assert ok, failure
        traces = [await final(pair[i % 2].url, t, limit=60) for i, t in enumerate(accepted)]
        assert await active(pair[0].url) == []
    assert codes.get(500, 0) == 0, codes
    assert codes.get(503, 0) > 0, codes
    assert slowest[0] < 5, f"a POST took {slowest[0]:.1f} s"
    assert all(t["status"] in FINAL for t in traces)
    assert sum(t["status"] == "completed" for t in traces) > 0


# -- soak -------------------------------------------------------------------------------------


class ReplicaSoak:
    """Lanes that start traces on a random replica and watch, poll or cancel them on another,
    while a chaos loop SIGKILLs a replica now and then and starts it again."""

    def __init__(self, lab: Lab, pair: list[Replica], seed: int) -> None:
        self.lab = lab
        self.pair = pair
        self.random = random.Random(seed)
        self.accepted: set[str] = set()
        self.deleted: set[str] = set()  # deleted, or maybe (the answer did not say)
        self.counts = {"started": 0, "refused": 0, "unreachable": 0, "kills": 0, "cancelled": 0}
        self.errors: list[str] = []

    def pick(self) -> Replica:
        alive = [r for r in self.pair if r.running] or self.pair
        return self.random.choice(alive)

    async def lane(self, until: float) -> None:
        while reactor.seconds() < until:
            try:
                await self.one()
            except ConnectionError:
                self.counts["unreachable"] += 1
                await sleep(0.1)
            except Exception as e:
                if "refused" in repr(e).lower() or "connection" in repr(e).lower():
                    self.counts["unreachable"] += 1  # the replica picked was just killed
                    await sleep(0.1)
                else:
                    self.errors.append(repr(e))

    async def one(self) -> None:
        r = self.random
        target = r.choice([*self.lab.targets(4)[:40], self.lab.blackhole_target(4)])
        body = {"target": target, "probes": r.randint(1, 3), "interval": r.choice([0, 0.2]),
                "timeout": 1, "max_ttl": 6}  # fmt: skip
        code, _, answer = await call(self.pick().url, "POST", "/traces", json=body)
        if code in (429, 503):
            self.counts["refused"] += 1
            await sleep(0.2)
            return
        assert code == 202, (code, answer)
        trace_id = json.loads(answer)["id"]
        self.accepted.add(trace_id)
        self.counts["started"] += 1
        choice = r.random()
        other = self.pick()
        if choice < 0.2:
            await sleep(r.uniform(0, 0.5))
            try:
                code, _, _ = await call(other.url, "DELETE", f"/traces/{trace_id}")
            except Exception:
                # The replica was killed with the DELETE under way: it may have deleted the
                # (finished) trace before its answer was written.
                self.deleted.add(trace_id)
                raise
            assert code in (200, 204, 404, 503), code
            if code in (204, 503):  # 503: the delete may have got through in part
                self.deleted.add(trace_id)
            self.counts["cancelled"] += 1
        elif choice < 0.5:
            await events(other.url, trace_id, keep=r.choice([1, None]), limit=30)
        else:
            for _ in range(100):
                trace = await get(other.url, trace_id)
                if trace is None or trace["status"] in FINAL:
                    return
                await sleep(0.2)

    async def chaos(self, until: float) -> None:
        while reactor.seconds() < until - 8:
            await sleep(self.random.uniform(6, 12))
            victim = self.random.choice(self.pair)
            victim.kill()
            self.counts["kills"] += 1
            await sleep(self.random.uniform(1, 3))
            victim.start(ready=False)
            await wait_for(lambda v=victim: self.ready(v), 20, "the restarted replica ready")

    async def ready(self, replica: Replica) -> bool:
        try:
            code, _, _ = await call(replica.url, "GET", "/readyz")
        except Exception:
            return False
        return code == 200


@pytest_twisted.ensureDeferred
async def test_soak_with_random_kills_leaves_nothing_behind(
    lab: Lab, redis: RedisServer, tmp_path: Path
) -> None:
    """Two replicas, load, random SIGKILLs and restarts: afterwards every accepted trace is
    final and readable from every replica, nothing runs, nothing is pending."""
    flags = ("--max-running", "16")
    with replicas(lab, redis.url, tmp_path, [(C, "c"), (C, "c")], *flags) as pair:
        soak = ReplicaSoak(lab, pair, seed=11)
        until = reactor.seconds() + SOAK_SECONDS
        work = [Deferred.fromCoroutine(soak.lane(until)) for _ in range(8)]
        work.append(Deferred.fromCoroutine(soak.chaos(until)))
        for ok, failure in await DeferredList(work, consumeErrors=True):
            assert ok, failure
        for replica in pair:
            if not replica.running:
                replica.start(ready=False)
                await wait_for(lambda r=replica: soak.ready(r), 20, "every replica ready")

        async def settled() -> bool:
            return not await active(pair[0].url) and not await active(pair[1].url)

        await wait_for(settled, LEASE + BEAT + 30, "nothing queued or running")
        unreadable: list[tuple[str, int, Any]] = []
        for trace_id in sorted(soak.accepted - soak.deleted):
            for i, replica in enumerate(pair):
                trace = await get(replica.url, trace_id)
                if trace is None or trace["status"] not in FINAL:
                    unreadable.append((trace_id, i, trace and trace["status"]))
        for replica in pair:
            assert await scrape(replica.url, "mtrd_probes_queued") == 0
            assert await scrape(replica.url, "mtrd_traces_running") == 0
        report = {"seconds": SOAK_SECONDS, **soak.counts, "errors": soak.errors[:10]}
        print("replica soak:", json.dumps(report))
        (tmp_path / "replica-soak.json").write_text(json.dumps(report, indent=2))
        nothing_pending(redis, C)
    assert soak.errors == []
    assert unreadable == []
    assert soak.counts["kills"] >= max(1, int(SOAK_SECONDS // 30))
    assert soak.counts["started"] >= 100 * SOAK_SECONDS / 60
