"""The HTTP edge over the real Klein resource: StubTreq, a fake network, a Clock.

Every response is checked against openapi.yaml (``Client`` validates each one).
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
import pytest_twisted
import treq
from mtrd.tracing.jobs import TraceJobs
from mtrd.tracing.policy import TargetPolicy
from mtrd.tracing.resolution import Resolved
from mtrd.tracing.store import StoreLimits, TraceStore
from mtrd.tracing.tracer import Tracer
from mtrd.web.access import Edge, route_of
from mtrd.web.limits import EdgeLimits
from mtrd.web.metrics import MeteredProber, Metrics
from mtrd.web.report import LOCAL_HOST
from mtrd.web.routes import Api
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from tests.fakes import FakeNetwork
from tests.openapi import validate_response, validate_schema
from tests.test_jobs import ROUTERS, StaticResolver

BASE = "http://mtrd.test"
REPLICA = "mtrd-test-4242-beef"


@attrs.define
class FakePool:
    """Just what the edge reads of a pool."""

    ready_workers: int = 2
    size: int = 2
    queued: int = 0
    queued_by_group: dict[str | None, int] = attrs.Factory(dict)

    def queued_in(self, group: str | None) -> int:
        return self.queued_by_group.get(group, 0)


@attrs.define
class Answer:
    """A response, read whole."""

    code: int
    headers: Any
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return None if not values else values[-1]

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """StubTreq over the real resource; every answer is validated against openapi.yaml."""

    def __init__(
        self,
        *,
        ready: int = 2,
        max_running: int = 8,
        max_traces: int = 100,
        max_queued: int = 100,
        policy: TargetPolicy | None = None,
        limits: EdgeLimits | None = None,
        resolver: StaticResolver | None = None,
    ) -> None:
        self.clock = Clock()
        self.network = FakeNetwork(self.clock, ROUTERS)
        self.pool = FakePool(ready_workers=ready)
        self.store = TraceStore(self.clock, StoreLimits(ttl=600, max_traces=max_traces))
        self.store.startService()
        self.metrics = Metrics()
        tracer = Tracer(
            self.clock,
            MeteredProber(self.network, self.metrics),
            resolver or StaticResolver(),  # type: ignore[arg-type]
            policy=policy or TargetPolicy(),
            vantage="default",
            replica=REPLICA,
        )
        self.jobs = TraceJobs(
            tracer,
            self.store,
            max_running=max_running,
            max_queued=max_queued,
            on_finished=self.metrics.trace_finished,
        )
        self.api = Api(
            pool=self.pool,
            jobs=self.jobs,
            store=self.store,
            clock=self.clock,
            heartbeat=15,
            metrics=self.metrics,
            limits=limits or EdgeLimits(),
            policy=policy or TargetPolicy(),
        )
        self.stub = StubTreq(Edge(self.api.resource(), self.clock, self.metrics))

    async def request(self, method: str, path: str, **kwargs: Any) -> Answer:
        response = await self.stub.request(method, BASE + path, **kwargs)
        body = await response.content()
        answer = Answer(response.code, response.headers, body)
        validate_response(
            method, path.split("?", maxsplit=1)[0], answer.code, answer.header("content-type"), body
        )
        return answer

    async def post_trace(self, body: object, **kwargs: Any) -> Answer:
        return await self.request(
            "POST",
            "/traces",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            **kwargs,
        )

    def run_for(self, seconds: float) -> None:
        for _ in range(int(seconds / 0.05)):
            self.clock.advance(0.05)
            self.stub.flush()


def problem_fields(answer: Answer) -> list[str]:
    assert answer.header("content-type") == "application/problem+json"
    return [e["field"] for e in answer.json().get("errors", [])]


QUICK = {"target": "203.0.113.7", "probes": 2, "interval": 0.5, "max_ttl": 8}


@pytest_twisted.ensureDeferred
async def test_post_starts_a_trace_with_location_and_defaults() -> None:
    """POST answers 202, a Location, and the resource with every default filled in."""
    client = Client()
    answer = await client.post_trace({"target": "203.0.113.7"})
    assert answer.code == 202
    body = answer.json()
    assert answer.header("location") == f"/traces/{body['id']}"
    assert body["request"] == {
        "target": "203.0.113.7",
        "ip_version": None,
        "protocol": "icmp",
        "port": None,
        "first_ttl": 1,
        "max_ttl": 30,
        "probes": 3,
        "interval": 1.0,
        "timeout": 2,
        "size": None,
        "tos": None,
        "mode": "classic",
        "confidence": 95,
        "wait": {"here": 3.0, "near": 10.0},
    }
    assert body["status"] == "running"
    assert body["links"] == {
        "self": f"/traces/{body['id']}",
        "events": f"/traces/{body['id']}/events",
    }


@pytest_twisted.ensureDeferred
async def test_udp_and_tcp_get_their_default_ports() -> None:
    """udp defaults to port 33434 and tcp to 80."""
    client = Client()
    udp = await client.post_trace({"target": "203.0.113.7", "protocol": "udp"})
    tcp = await client.post_trace({"target": "203.0.113.7", "protocol": "tcp"})
    assert (udp.json()["request"]["port"], tcp.json()["request"]["port"]) == (33434, 80)


@pytest_twisted.ensureDeferred
async def test_poll_shows_the_completed_trace() -> None:
    """GET after the run shows completed, the destination reached and its hops."""
    client = Client()
    trace_id = (await client.post_trace(QUICK)).json()["id"]
    client.run_for(3)
    answer = await client.request("GET", f"/traces/{trace_id}")
    body = answer.json()
    assert answer.code == 200
    assert body["status"] == "completed"
    assert body["destination_reached"] is True
    assert [h["responders"][0]["address"] for h in body["hops"]] == [*ROUTERS, "203.0.113.7"]
    assert body["hops"][0]["sent"] == 2
    assert body["finished_at"] is not None
    assert body["expires_at"] is not None


@pytest_twisted.ensureDeferred
async def test_etag_gives_304_until_the_trace_changes() -> None:
    """If-None-Match with the current ETag is 304; after a change it is 200 again."""
    client = Client()
    trace_id = (await client.post_trace(QUICK)).json()["id"]
    first = await client.request("GET", f"/traces/{trace_id}")
    etag = first.header("etag")
    assert etag
    same = await client.request("GET", f"/traces/{trace_id}", headers={"If-None-Match": etag})
    assert (same.code, same.body) == (304, b"")
    client.run_for(1)
    changed = await client.request("GET", f"/traces/{trace_id}", headers={"If-None-Match": etag})
    assert changed.code == 200


@pytest_twisted.ensureDeferred
async def test_etag_changes_when_a_hostname_resolves() -> None:
    """Resolving the target changes the trace without an event: the ETag changes too."""
    resolver = StaticResolver(pending=True)
    client = Client(resolver=resolver)
    trace_id = (await client.post_trace({**QUICK, "target": "router.example"})).json()["id"]
    resolving = await client.request("GET", f"/traces/{trace_id}")
    assert resolving.json()["target"]["address"] is None
    assert resolver.pending is not None
    resolver.pending.callback(Resolved("203.0.113.7", 4))
    resolved = await client.request(
        "GET", f"/traces/{trace_id}", headers={"If-None-Match": resolving.header("etag")}
    )
    assert resolved.code == 200
    assert resolved.json()["target"]["address"] == "203.0.113.7"


@pytest_twisted.ensureDeferred
async def test_text_report_on_accept_text_plain() -> None:
    """Accept: text/plain gives the mtr-like report table."""
    client = Client()
    trace_id = (await client.post_trace(QUICK)).json()["id"]
    client.run_for(3)
    answer = await client.request("GET", f"/traces/{trace_id}", headers={"Accept": "text/plain"})
    text = answer.body.decode()
    assert answer.header("content-type").startswith("text/plain")
    assert "Loss%" in text
    assert "198.51.100.1" in text
    assert f"\nHOST: {LOCAL_HOST} " in text


@pytest_twisted.ensureDeferred
async def test_delete_cancels_then_removes() -> None:
    """DELETE cancels a running trace (200, cancelled), then removes it (204), then 404."""
    client = Client()
    trace_id = (await client.post_trace(QUICK)).json()["id"]
    cancelled = await client.request("DELETE", f"/traces/{trace_id}")
    assert (cancelled.code, cancelled.json()["status"]) == (200, "cancelled")
    removed = await client.request("DELETE", f"/traces/{trace_id}")
    assert removed.code == 204
    gone = await client.request("GET", f"/traces/{trace_id}")
    assert gone.code == 404


@pytest_twisted.ensureDeferred
async def test_listing_newest_first_with_status_filter_and_cursor() -> None:
    """GET /traces pages newest first and filters by status."""
    client = Client()
    ids = [(await client.post_trace(QUICK)).json()["id"] for _ in range(3)]
    await client.request("DELETE", f"/traces/{ids[1]}")
    page = (await client.request("GET", "/traces?limit=2")).json()
    assert [t["id"] for t in page["traces"]] == [ids[2], ids[1]]
    rest = (await client.request("GET", f"/traces?limit=2&cursor={page['next_cursor']}")).json()
    assert ([t["id"] for t in rest["traces"]], rest["next_cursor"]) == ([ids[0]], None)
    cancelled = (await client.request("GET", "/traces?status=cancelled")).json()
    assert [t["id"] for t in cancelled["traces"]] == [ids[1]]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=done", "status"),
        ("limit=0", "limit"),
        ("limit=x", "limit"),
        ("cursor=zz", "cursor"),
        ("cursor=-3", "cursor"),
        ("sort=asc", "sort"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_listing_rejects_bad_parameters(query: str, field: str) -> None:
    """Bad query parameters are 422 naming the parameter."""
    answer = await Client().request("GET", f"/traces?{query}")
    assert answer.code == 422
    assert problem_fields(answer) == [field]


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, ["target"]),
        ({"target": 7}, ["target"]),
        ({"target": "not a host!"}, ["target"]),
        ({"target": "203.0.113.7", "ip_version": 6}, ["ip_version"]),
        ({"target": "203.0.113.7", "protocol": "sctp"}, ["protocol"]),
        ({"target": "203.0.113.7", "port": 80}, ["port"]),
        ({"target": "203.0.113.7", "protocol": "udp", "port": 0}, ["port"]),
        ({"target": "203.0.113.7", "first_ttl": 10, "max_ttl": 5}, ["max_ttl"]),
        ({"target": "203.0.113.7", "max_ttl": 256}, ["max_ttl"]),
        ({"target": "203.0.113.7", "probes": "3"}, ["probes"]),
        ({"target": "203.0.113.7", "probes": True}, ["probes"]),
        ({"target": "203.0.113.7", "interval": -1}, ["interval"]),
        ({"target": "203.0.113.7", "timeout": 1.5}, ["timeout"]),
        ({"target": "203.0.113.7", "timeout": None}, ["timeout"]),
        ({"target": "203.0.113.7", "interval": None}, ["interval"]),
        ({"target": "203.0.113.7", "protocol": ["udp"]}, ["protocol"]),
        ({"target": "fe80::1%eth0"}, ["target"]),
        ({"target": "203.0.113.7", "tos": 300}, ["tos"]),
        ({"target": "203.0.113.7", "colour": "red"}, ["colour"]),
        ({"target": "203.0.113.7", "probes": 0, "timeout": 0}, ["probes", "timeout"]),
        ([1, 2], [""]),
        ({"target": "203.0.113.7", "wait": None}, ["wait"]),
        ({"target": "203.0.113.7", "wait": 3}, ["wait"]),
        ({"target": "203.0.113.7", "wait": {"here": -1, "near": 10}}, ["wait.here"]),
        ({"target": "203.0.113.7", "wait": {"here": 3}}, ["wait.near"]),
        ({"target": "203.0.113.7", "wait": {"here": 3, "near": 10, "max": 5}}, ["wait.max"]),
    ],
)
@pytest_twisted.ensureDeferred
async def test_invalid_fields_are_422_naming_each_field(body: object, fields: list[str]) -> None:
    """Every field at fault is named; no trace is created."""
    client = Client()
    answer = await client.post_trace(body)
    assert answer.code == 422
    assert sorted(problem_fields(answer)) == sorted(fields)
    assert len(client.store) == 0


@pytest_twisted.ensureDeferred
async def test_a_wait_rule_in_the_request_is_kept() -> None:
    """ "wait": {"here": 0, "near": 0} (adaptive wait off) is accepted and shown as given."""
    client = Client()
    answer = await client.post_trace({"target": "203.0.113.7", "wait": {"here": 0, "near": 0}})
    assert answer.code == 202
    assert json.loads(answer.body)["request"]["wait"] == {"here": 0.0, "near": 0.0}


@pytest_twisted.ensureDeferred
async def test_malformed_json_is_400() -> None:
    """A body that is not JSON is a 400 problem."""
    client = Client()
    answer = await client.request(
        "POST", "/traces", data=b"{target:", headers={"Content-Type": "application/json"}
    )
    assert answer.code == 400
    assert answer.json()["type"] == "urn:mtrd:problem:malformed-json"


@pytest_twisted.ensureDeferred
async def test_wrong_content_type_is_415() -> None:
    """A body that is not declared JSON is a 415 problem."""
    answer = await Client().request(
        "POST", "/traces", data=b"target=x", headers={"Content-Type": "text/plain"}
    )
    assert answer.code == 415


@pytest_twisted.ensureDeferred
async def test_wrong_method_is_405_with_allow() -> None:
    """PUT on a trace is a 405 problem listing the allowed methods."""
    answer = await Client().request("PUT", "/traces/abcdefghijklmnopqrstuv")
    assert answer.code == 405
    assert answer.header("allow") == "DELETE, GET, HEAD"


@pytest_twisted.ensureDeferred
async def test_unknown_trace_is_404_problem() -> None:
    """An unknown id is a 404 problem."""
    answer = await Client().request("GET", "/traces/abcdefghijklmnopqrstuv")
    assert answer.code == 404
    assert answer.json()["status"] == 404
    assert answer.json()["detail"] == ("trace abcdefghijklmnopqrstuv does not exist or has expired")


@pytest_twisted.ensureDeferred
async def test_unknown_route_is_404_saying_so() -> None:
    """A path mtrd does not serve is a 404 problem saying there is no such route."""
    # Not through Client.request: the path is, on purpose, not in openapi.yaml.
    response = await Client().stub.request("GET", BASE + "/trace")
    body = json.loads(await response.content())
    assert response.code == 404
    assert response.headers.getRawHeaders("content-type") == ["application/problem+json"]
    assert (body["status"], body["detail"]) == (404, "no route /trace")


@pytest_twisted.ensureDeferred
async def test_expired_trace_is_404() -> None:
    """A finished trace is gone after the store's ttl."""
    client = Client()
    trace_id = (await client.post_trace(QUICK)).json()["id"]
    client.run_for(3)
    client.clock.advance(600)
    answer = await client.request("GET", f"/traces/{trace_id}")
    assert answer.code == 404


@pytest_twisted.ensureDeferred
async def test_store_full_of_active_traces_is_429_with_retry_after() -> None:
    """When every stored trace is still active, a new POST is 429 with Retry-After."""
    client = Client(max_traces=2, max_running=1)
    await client.post_trace(QUICK)
    await client.post_trace(QUICK)
    answer = await client.post_trace(QUICK)
    assert answer.code == 429
    assert int(answer.header("retry-after") or 0) >= 1


@pytest_twisted.ensureDeferred
async def test_not_ready_is_503() -> None:
    """With no mtr-packet worker ready, POST is a 503 problem with Retry-After."""
    answer = await Client(ready=0).post_trace(QUICK)
    assert answer.code == 503
    assert answer.header("retry-after") == "1"


@pytest_twisted.ensureDeferred
async def test_openapi_is_served() -> None:
    """GET /openapi.yaml serves the document."""
    answer = await Client().request("GET", "/openapi.yaml")
    assert answer.code == 200
    assert answer.body.startswith(b"openapi: 3.1")


@pytest_twisted.ensureDeferred
async def test_health_and_readiness() -> None:
    """/healthz is 200; /readyz follows the pool."""
    assert (await Client().request("GET", "/healthz")).code == 200
    assert (await Client(ready=0).request("GET", "/readyz")).code == 503
    ready = await Client(ready=1).request("GET", "/readyz")
    assert ready.json() == {"status": "ready", "workers": {"ready": 1, "size": 2}}


# -- server-sent events ------------------------------------------------------------------


def parse_events(text: str) -> list[dict[str, Any]]:
    """Split an event stream into events; validate each event's data against openapi.yaml."""
    events = []
    for block in text.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                fields.setdefault("comments", []).append(line)
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if "event" in fields:
            data = json.loads(fields["data"])
            schema = {"status": "StatusEvent", "hop": "Hop", "done": "Trace"}[fields["event"]]
            validate_schema(schema, data)
            events.append({"id": int(fields["id"]), "event": fields["event"], "data": data})
        elif fields.get("comments"):
            events.append({"comment": fields["comments"]})
    return events


class Stream:
    """An open event stream on the stub, collecting what arrives."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.ended = False

    @property
    def text(self) -> str:
        return b"".join(self.chunks).decode()

    def events(self) -> list[dict[str, Any]]:
        return [e for e in parse_events(self.text) if "event" in e]


async def open_stream(
    client: Client, trace_id: str, headers: dict[str, str] | None = None
) -> Stream:
    response = await client.stub.get(f"{BASE}/traces/{trace_id}/events", headers=headers or {})
    assert response.code == 200
    content_type = response.headers.getRawHeaders("content-type")[0]
    validate_response("GET", f"/traces/{trace_id}/events", 200, content_type, b"")
    stream = Stream()
    done = treq.collect(response, stream.chunks.append)
    done.addBoth(lambda _: setattr(stream, "ended", True))
    return stream


@pytest_twisted.ensureDeferred
async def test_events_stream_status_hops_and_done_then_close() -> None:
    """The stream sends status, hop updates and done with increasing ids, then closes."""
    client = Client()
    trace_id = (await client.post_trace(QUICK)).json()["id"]
    stream = await open_stream(client, trace_id)
    client.run_for(3)
    events = stream.events()
    assert stream.ended
    assert events[0]["event"] == "status"
    assert {e["event"] for e in events} == {"status", "hop", "done"}
    assert events[-1]["event"] == "done"
    assert events[-1]["data"]["status"] == "completed"
    ids = [e["id"] for e in events]
    assert ids == sorted(set(ids))


@pytest_twisted.ensureDeferred
async def test_done_event_says_why_the_trace_stopped() -> None:
    """The done event carries the stop reason (the fake network's target answers)."""
    client = Client()
    trace_id = (await client.post_trace(QUICK)).json()["id"]
    stream = await open_stream(client, trace_id)
    client.run_for(3)
    done = stream.events()[-1]
    assert (done["event"], done["data"]["stop_reason"]) == ("done", "destination")
    hop_events = [e["data"] for e in stream.events() if e["event"] == "hop"]
    assert {e["forward_loss_pct"] for e in hop_events} == {None}


@pytest_twisted.ensureDeferred
async def test_late_subscriber_after_the_end_gets_done_at_once() -> None:
    """Subscribing to a finished trace gives its done event and the stream closes."""
    client = Client()
    trace_id = (await client.post_trace(QUICK)).json()["id"]
    client.run_for(3)
    stream = await open_stream(client, trace_id)
    client.stub.flush()
    assert [e["event"] for e in stream.events()] == ["done"]
    assert stream.ended


@pytest_twisted.ensureDeferred
async def test_reconnect_with_last_event_id_resumes_after_it() -> None:
    """A reconnect with Last-Event-ID gets only what changed after that id."""
    client = Client()
    trace_id = (await client.post_trace({**QUICK, "probes": 3, "interval": 1.0})).json()["id"]
    first = await open_stream(client, trace_id)
    client.run_for(0.6)
    seen = first.events()
    last_id = seen[-1]["id"]
    second = await open_stream(client, trace_id, headers={"Last-Event-ID": str(last_id)})
    client.stub.flush()
    assert all(e["id"] > last_id for e in second.events())
    client.run_for(4)
    assert second.events()[-1]["event"] == "done"
    assert {e["id"] for e in second.events()} <= {e["id"] for e in first.events()}


@pytest_twisted.ensureDeferred
async def test_heartbeat_comments_keep_an_idle_stream_open() -> None:
    """A stream with nothing to say sends a comment every heartbeat interval."""
    client = Client()
    client.network.rtt = 100.0  # replies take long: the stream stays idle
    trace_id = (await client.post_trace({**QUICK, "probes": 1, "timeout": 60})).json()["id"]
    stream = await open_stream(client, trace_id)
    client.run_for(31)
    comments = [e for e in parse_events(stream.text) if "comment" in e]
    assert sum(c["comment"].count(": keep-alive") for c in comments) == 2


@pytest_twisted.ensureDeferred
async def test_disconnecting_client_is_unsubscribed_at_once() -> None:
    """When the client goes away, its subscription ends and its heartbeat stops."""
    client = Client()
    trace_id = (await client.post_trace(QUICK)).json()["id"]
    record = client.store.get(trace_id)
    assert record is not None
    response = await client.stub.get(f"{BASE}/traces/{trace_id}/events")
    client.stub.flush()
    assert record.channel.subscribers == 1
    response.original.transport.loseConnection() if hasattr(
        response.original, "transport"
    ) else None
    await _disconnect(response)
    client.stub.flush()
    assert record.channel.subscribers == 0
    assert not [c for c in client.clock.getDelayedCalls() if "LoopingCall" in repr(c)]


async def _disconnect(response: Any) -> None:
    """Drop the stream's connection, as a browser tab closing would."""
    deliver = response.original
    deliver.deliverBody(_Dropper())


class _Dropper:
    def makeConnection(self, transport: Any) -> None:  # noqa: N802 - Twisted's name
        transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Any) -> None:
        pass


@pytest_twisted.ensureDeferred
async def test_metrics_count_traces_requests_and_probes() -> None:
    """/metrics shows finished traces by status, HTTP requests by route, probe outcomes."""
    client = Client()
    trace_id = (await client.post_trace(QUICK)).json()["id"]
    client.run_for(3)
    await client.request("GET", f"/traces/{trace_id}")
    text = (await client.request("GET", "/metrics")).body.decode()
    assert 'mtrd_traces_total{status="completed"} 1.0' in text
    assert 'mtrd_http_requests_total{method="POST",route="/traces",status="202"} 1.0' in text
    assert 'mtrd_http_requests_total{method="GET",route="/traces/{id}",status="200"} 1.0' in text
    assert "mtrd_http_request_duration_seconds_bucket" in text
    assert 'mtrd_probes_sent_total{protocol="icmp"}' in text
    assert 'mtrd_probe_replies_total{kind="reply"}' in text
    assert "mtrd_probe_rtt_seconds_count" in text


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/traces", "/traces"),
        ("/traces/abc", "/traces/{id}"),
        ("/traces/abc/events", "/traces/{id}/events"),
        ("/traces/abc/x", "other"),
        ("/nope", "other"),
        ("/metrics?x=1", "/metrics"),
    ],
)
def test_route_labels_are_bounded(path: str, route: str) -> None:
    """Trace ids never become metric labels: paths map to their route template."""
    assert route_of(path) == route


@pytest_twisted.ensureDeferred
async def test_every_request_is_logged_once_with_its_trace_id() -> None:
    """The edge writes one log event per request: method, path, status, duration, trace id."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        client = Client()
        trace_id = (await client.post_trace(QUICK)).json()["id"]
        await client.request("GET", f"/traces/{trace_id}")
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [e for e in events if e.get("log_namespace") == "mtrd.http"]
    assert [(e["method"], e["status"], e["trace_id"]) for e in lines] == [
        ("POST", 202, trace_id),
        ("GET", 200, trace_id),
    ]
    assert all(e["duration_ms"] >= 0 for e in lines)


@pytest_twisted.ensureDeferred
async def test_draining_refuses_new_traces_and_is_not_ready() -> None:
    """While shutting down, POST is 503 and /readyz says draining."""
    client = Client()
    client.api.draining = True
    answer = await client.post_trace(QUICK)
    assert (answer.code, answer.json()["type"]) == (503, "urn:mtrd:problem:shutting-down")
    ready = await client.request("GET", "/readyz")
    assert (ready.code, ready.json()["status"]) == (503, "draining")


@pytest_twisted.ensureDeferred
async def test_sse_subscribers_are_counted() -> None:
    """Open event streams are counted, and uncounted when they end."""
    client = Client()
    trace_id = (await client.post_trace(QUICK)).json()["id"]
    await open_stream(client, trace_id)
    assert client.api.sse_subscribers == 1
    client.run_for(3)
    assert client.api.sse_subscribers == 0


@pytest_twisted.ensureDeferred
async def test_trace_says_its_vantage_and_replica() -> None:
    """In memory mode a trace names this process's vantage and replica id."""
    client = Client()
    body = (await client.post_trace(QUICK)).json()
    assert (body["vantage"], body["replica"]) == ("default", REPLICA)


@pytest_twisted.ensureDeferred
async def test_listing_says_each_traces_vantage_and_replica() -> None:
    """A trace in GET /traces names its vantage and replica, as the trace resource does."""
    client = Client()
    await client.post_trace(QUICK)
    listed = (await client.request("GET", "/traces")).json()["traces"]
    assert [(t["vantage"], t["replica"]) for t in listed] == [("default", REPLICA)]


@pytest_twisted.ensureDeferred
async def test_post_to_this_vantage_by_name_is_accepted() -> None:
    """A POST naming this process's vantage is taken like one naming none."""
    answer = await Client().post_trace({**QUICK, "vantage": "default"})
    assert answer.code == 202
    assert answer.json()["vantage"] == "default"


@pytest_twisted.ensureDeferred
async def test_post_to_another_vantage_is_422_listing_the_live_ones() -> None:
    """A vantage no live process serves is 422 naming vantage and listing the live ones."""
    answer = await Client().post_trace({**QUICK, "vantage": "elsewhere"})
    assert answer.code == 422
    assert problem_fields(answer) == ["vantage"]
    assert "live vantage points: default" in answer.json()["errors"][0]["message"]


@pytest.mark.parametrize("vantage", [None, 7, "", "-x", "a b"])
@pytest_twisted.ensureDeferred
async def test_malformed_vantage_is_422(vantage: object) -> None:
    """A vantage that is not a vantage name is 422 naming vantage."""
    answer = await Client().post_trace({**QUICK, "vantage": vantage})
    assert answer.code == 422
    assert problem_fields(answer) == ["vantage"]


@pytest_twisted.ensureDeferred
async def test_vantage_points_in_memory_mode_list_this_process() -> None:
    """GET /vantage-points lists this one process: capacity, running, ready."""
    client = Client(max_running=3)
    await client.post_trace(QUICK)
    answer = await client.request("GET", "/vantage-points")
    assert answer.code == 200
    assert answer.json() == {
        "vantage_points": [
            {"name": "default", "replicas": 1, "capacity": 3, "running": 1, "ready": True}
        ]
    }


@pytest_twisted.ensureDeferred
async def test_vantage_points_say_not_ready_without_workers() -> None:
    """With no ready worker the one vantage point is listed as not ready."""
    answer = await Client(ready=0).request("GET", "/vantage-points")
    assert answer.json()["vantage_points"][0]["ready"] is False


@pytest_twisted.ensureDeferred
async def test_report_hosts_option_must_be_known() -> None:
    """``?hosts=`` other than both, address or name is a 422 naming the parameter."""
    client = Client()
    trace_id = (await client.post_trace(QUICK)).json()["id"]
    answer = await client.request(
        "GET", f"/traces/{trace_id}?hosts=fancy", headers={"Accept": "text/plain"}
    )
    assert answer.code == 422
    assert answer.json()["errors"][0]["field"] == "hosts"


@pytest_twisted.ensureDeferred
async def test_hosts_option_is_checked_on_json_answers_too() -> None:
    """A bad ``?hosts=`` is a 422 also when the answer would be JSON (it is input all the same)."""
    client = Client()
    trace_id = (await client.post_trace(QUICK)).json()["id"]
    answer = await client.request("GET", f"/traces/{trace_id}?hosts=fancy")
    assert answer.code == 422
    assert answer.json()["errors"][0]["field"] == "hosts"
