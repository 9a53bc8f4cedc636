"""Monitors end to end: ``mtrd serve`` with its mtr-packet in the lab, a real webhook receiver.

A monitor every second follows the lab's path; the lab's routing changes mid-run and the
monitor reports one path change with the right diff, delivered as a webhook that the
``standardwebhooks`` library (not mtrd's code) verifies. A receiver that is down, then up,
still gets every event. The monitors file is loaded at start and reloaded on SIGHUP. With
Redis, the replica running a monitor is killed and the monitor goes on on the other one.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
import treq
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from twisted.internet import reactor as global_reactor
from twisted.internet.task import deferLater
from twisted.web.resource import Resource
from twisted.web.server import Site

from tests.lab import Lab
from tests.mtrd_process import free_port, lab_mtrd, replicas
from tests.openapi import validate_response, validate_schema
from tests.redis_server import RedisServer, require_redis_server

pytestmark = pytest.mark.lab
reactor: Any = global_reactor
SECRET = "whsec_" + base64.b64encode(b"lab-secret-of-32-bytes-for-hmac!").decode()
QUICK = {"probes": 2, "interval": 0.2, "timeout": 1, "max_ttl": 6, "every": 1, "jitter": 0}
# r1's next hops towards r3 (see tests/lab/topology.py): the second TTL of every path.
R1_NEXT_HOPS = {"198.51.100.6": "to-r2a", "198.51.100.10": "to-r2b"}
FILE = "monitors:\n  - {name: from-file, target: %s, every: 2, probes: 1, timeout: 1}\n"


class Receiver(Resource):
    """A webhook receiver: verifies each delivery with standardwebhooks, keeps it by id."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.events: dict[str, dict[str, Any]] = {}
        self.deliveries = 0
        self.bad = 0

    def render_POST(self, request: Any) -> bytes:  # noqa: N802  # twisted.web's name
        body = request.content.read()
        headers = {
            k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()
        }
        try:
            payload = Webhook(SECRET).verify(body, headers)
        except WebhookVerificationError:
            self.bad += 1
            request.setResponseCode(400)
            return b""
        self.deliveries += 1
        self.events.setdefault(headers["webhook-id"], payload)
        request.setResponseCode(204)
        return b""


@attrs.define
class Hooks:
    """The receiver and its port: it can be started and stopped."""

    receiver: Receiver
    port_number: int
    port: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port_number}/hook"

    def up(self) -> None:
        self.port = reactor.listenTCP(self.port_number, Site(self.receiver), interface="127.0.0.1")

    async def down(self) -> None:
        if self.port is not None:
            await self.port.stopListening()
            self.port = None


@attrs.frozen
class Server:
    url: str
    process: subprocess.Popen[str]
    monitors_file: Path


@pytest.fixture(scope="module")
def server(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One mtrd for this module, with a monitors file."""
    folder = tmp_path_factory.mktemp("monitors")
    monitors_file = folder / "monitors.yaml"
    monitors_file.write_text(FILE % lab.targets(4)[40])
    with lab_mtrd(lab, folder / "mtrd.log", "--monitors-file", str(monitors_file)) as (
        url,
        process,
    ):
        yield Server(url, process, monitors_file)


async def call(server: Server, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    """One request; the answer is validated against openapi.yaml."""
    response = await treq.request(method, server.url + path, **kwargs)
    body = await response.content()
    content_type = (response.headers.getRawHeaders("content-type") or [None])[0]
    validate_response(method, path.split("?", maxsplit=1)[0], response.code, content_type, body)
    return response.code, json.loads(body) if body else None


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def wait_for(what: Any, limit: float, step: float = 0.25) -> Any:
    """Poll the coroutine function ``what`` until it returns something true."""
    waited = 0.0
    while waited < limit:
        found = await what()
        if found:
            return found
        await sleep(step)
        waited += step
    raise AssertionError(f"nothing after {limit} s")


def pin_route(lab: Lab, target: str, next_hop: str) -> None:
    """Send r1's traffic to ``target`` through one next hop only (no ECMP choice left)."""
    device = R1_NEXT_HOPS[next_hop]
    lab.run("r1", ["ip", "route", "replace", f"{target}/32", "via", next_hop, "dev", device])


def unpin_route(lab: Lab, target: str) -> None:
    lab.run("r1", ["ip", "route", "del", f"{target}/32"], check=False)


@pytest_twisted.ensureDeferred
async def test_a_routing_change_is_one_path_change_with_its_diff_and_webhook(
    lab: Lab, server: Server
) -> None:
    """Moving r1's route to the other r2 gives one path_change (TTL 2: old left, new came),
    a verified webhook, and metrics that follow."""
    hooks = Hooks(Receiver(), free_port())
    hooks.up()
    target = lab.targets(4)[41]
    hook = {"url": hooks.url, "secret": SECRET}
    body = {"name": "lab-path", "target": target, **QUICK, "confirm_runs": 2,
            "alerts": {"path_change": True}, "webhook": hook}  # fmt: skip
    try:
        code, monitor = await call(server, "POST", "/monitors", json=body)
        assert code == 201, monitor
        path = f"/monitors/{monitor['id']}"

        async def settled_path() -> Any:
            _, shown = await call(server, "GET", path)
            return shown["path"] if len(shown["runs"]) >= 2 else None

        before = await wait_for(settled_path, 15)
        old = before["hops"][1]["responders"]
        assert len(old) == 1
        (new,) = set(R1_NEXT_HOPS) - set(old)
        pin_route(lab, target, new)

        async def changed() -> Any:
            _, shown = await call(server, "GET", path)
            return shown if shown["path_changes"] else None

        shown = await wait_for(changed, 20)
        await sleep(3)  # a few more runs on the new path: still one change
        _, shown = await call(server, "GET", path)
        assert len(shown["path_changes"]) == 1
        change = shown["path_changes"][0]["change"]
        assert change["diff"] == [{"ttl": 2, "left": old, "came": [new]}]
        assert change["from_path_id"] == before["path_id"]
        assert shown["path"]["path_id"] == change["to_path_id"]

        async def hooked() -> Any:
            kinds = [e["type"] for e in hooks.receiver.events.values()]
            return kinds if "monitor.path_change" in kinds else None

        await wait_for(hooked, 10)
        delivered = next(
            e for e in hooks.receiver.events.values() if e["type"] == "monitor.path_change"
        )
        validate_schema("MonitorWebhook", delivered)
        assert delivered["data"]["change"]["diff"] == change["diff"]
        assert hooks.receiver.bad == 0

        response = await treq.get(server.url + "/metrics")
        metrics = (await response.content()).decode()
        assert 'mtrd_monitor_path_changes_total{monitor="lab-path"} 1.0' in metrics
        info = f'mtrd_monitor_path_info{{monitor="lab-path",path_id="{change["to_path_id"]}"}} 1.0'
        assert info in metrics
        await call(server, "DELETE", path)
    finally:
        unpin_route(lab, target)
        await hooks.down()


@pytest_twisted.ensureDeferred
async def test_a_receiver_down_then_up_gets_every_event_once(lab: Lab, server: Server) -> None:
    """Events sent while the receiver is down arrive, each id once, after it comes up."""
    hooks = Hooks(Receiver(), free_port())  # not listening yet: connections are refused
    hook = {"url": hooks.url, "secret": SECRET, "every_run": True}
    body = {"name": "lab-down", "target": lab.targets(4)[42], **QUICK, "webhook": hook}
    code, monitor = await call(server, "POST", "/monitors", json=body)
    assert code == 201, monitor
    path = f"/monitors/{monitor['id']}"
    try:
        await sleep(3)
        hooks.up()
        await sleep(3)
        code, _ = await call(server, "PATCH", path, json={"paused": True})
        assert code == 200

        async def all_delivered() -> Any:
            _, shown = await call(server, "GET", path)
            statuses = {d["status"] for d in shown["deliveries"]}
            return shown if statuses == {"delivered"} else None

        shown = await wait_for(all_delivered, 40)
        runs = len([k for k in hooks.receiver.events if k.startswith(monitor["id"])])
        # Every run event the monitor published reached the receiver, once per id.
        ids = {d["event_id"] for d in shown["deliveries"]}
        assert ids <= set(hooks.receiver.events)
        assert runs == sum(1 for e in hooks.receiver.events.values() if e["type"] == "monitor.run")
        assert runs >= 5
        assert max(d["attempts"] for d in shown["deliveries"]) > 1  # some were retried
        assert hooks.receiver.bad == 0
    finally:
        await call(server, "DELETE", path)
        await hooks.down()


@pytest_twisted.ensureDeferred
async def test_the_monitors_file_is_loaded_read_only_and_reloaded_on_sighup(
    lab: Lab, server: Server
) -> None:
    """The file's monitor runs and is read-only; after SIGHUP the new file's monitors replace it."""
    _, listing = await call(server, "GET", "/monitors")
    (from_file,) = [m for m in listing["monitors"] if m["name"] == "from-file"]
    assert from_file["source"] == "file"
    code, _ = await call(server, "PATCH", f"/monitors/{from_file['id']}", json={"paused": True})
    assert code == 409

    async def ran() -> Any:
        _, shown = await call(server, "GET", f"/monitors/{from_file['id']}")
        return shown["runs"]

    runs = await wait_for(ran, 10)
    assert runs[0]["result"] == "reached"
    server.monitors_file.write_text(FILE.replace("from-file", "reloaded") % lab.targets(4)[43])
    server.process.send_signal(signal.SIGHUP)

    async def reloaded() -> Any:
        _, listing = await call(server, "GET", "/monitors")
        names = {m["name"] for m in listing["monitors"] if m["source"] == "file"}
        return names == {"reloaded"}

    await wait_for(reloaded, 10)


async def runs_here(url: str, name: str) -> float:
    """The runs this replica counted for monitor ``name`` (0 if it never ran it)."""
    response = await treq.get(url + "/metrics")
    text = (await response.content()).decode()
    prefix = f'mtrd_monitor_runs_total{{monitor="{name}",result="reached"}} '
    line = next((line for line in text.splitlines() if line.startswith(prefix)), None)
    return 0.0 if line is None else float(line.removeprefix(prefix))


@pytest_twisted.ensureDeferred
async def test_with_redis_a_killed_replicas_monitor_goes_on_elsewhere(
    lab: Lab, tmp_path: Path
) -> None:
    """Two replicas of one vantage: one runs the monitor; SIGKILL it and the other takes the
    monitor within the lease (5 s) and a sync, and its runs go on after those the first
    replica kept in Redis (not afresh)."""
    redis = RedisServer(require_redis_server())
    redis.start()
    try:
        with replicas(lab, redis.url, tmp_path, [("lab-c", "c"), ("lab-c", "c")]) as pair:
            first = Server(pair[0].url, pair[0].process, tmp_path)  # type: ignore[arg-type]
            body = {"name": "lab-moves", "target": lab.targets(4)[44], **QUICK}
            code, monitor = await call(first, "POST", "/monitors", json=body)
            assert code == 201, monitor

            async def runner() -> Any:
                counts = [await runs_here(r.url, "lab-moves") for r in pair]
                running = [r for r, n in zip(pair, counts, strict=True) if n >= 2]
                return running[0] if running else None

            victim = await wait_for(runner, 20)
            (survivor,) = [r for r in pair if r is not victim]
            before = await runs_here(victim.url, "lab-moves")
            victim.kill()
            killed_at = reactor.seconds()

            async def moved() -> Any:
                return await runs_here(survivor.url, "lab-moves") >= 1

            await wait_for(moved, 20)
            assert reactor.seconds() - killed_at < 5.0 + 1.0 + 4.0  # lease + sync + slack
            # The counts carried over (the first replica keeps them after each run, so at
            # most the run of its last second is missing); then new runs add to them.
            assert await runs_here(survivor.url, "lab-moves") >= before - 1

            async def went_on() -> Any:
                return await runs_here(survivor.url, "lab-moves") >= before + 2

            await wait_for(went_on, 20)
            code, shown = await call(
                Server(survivor.url, survivor.process, tmp_path),  # type: ignore[arg-type]
                "GET",
                f"/monitors/{monitor['id']}",
            )
            assert code == 200
            assert [run["result"] for run in shown["runs"]][:2] == ["reached", "reached"]
    finally:
        redis.close()


@pytest_twisted.ensureDeferred
async def test_with_redis_a_monitors_file_runs_once_across_replicas(
    lab: Lab, tmp_path: Path
) -> None:
    """Two replicas of one vantage load one monitors file: its monitor is kept once in
    Redis, read-only on both, and runs on one replica only."""
    redis = RedisServer(require_redis_server())
    redis.start()
    monitors_file = tmp_path / "monitors.yaml"
    monitors_file.write_text(FILE % lab.targets(4)[45])
    try:
        places = [("lab-c", "c"), ("lab-c", "c")]
        flags = ("--monitors-file", str(monitors_file))
        with replicas(lab, redis.url, tmp_path, places, *flags) as pair:
            servers = [Server(r.url, r.process, tmp_path) for r in pair]  # type: ignore[arg-type]

            async def ran() -> Any:
                counts = [await runs_here(r.url, "from-file") for r in pair]
                return counts if max(counts) >= 2 else None

            counts = await wait_for(ran, 20)
            assert sorted(counts)[0] == 0  # the other replica never ran it
            for server in servers:
                _, listing = await call(server, "GET", "/monitors")
                assert [m["source"] for m in listing["monitors"]] == ["file"]
                monitor_id = listing["monitors"][0]["id"]
                code, _ = await call(server, "DELETE", f"/monitors/{monitor_id}")
                assert code == 409
    finally:
        redis.close()
