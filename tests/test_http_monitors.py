"""The /monitors routes over the real Klein resource: StubTreq, a fake network, a Clock.

Every answer is checked against openapi.yaml (``Client`` validates each one).
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
import pytest_twisted
import treq
from mtrd.monitors.model import MonitorSource, MonitorSpec
from mtrd.monitors.runs import JobsStarter
from mtrd.monitors.service import MonitorService
from mtrd.tracing.model import TraceRequest
from mtrd.web.access import Edge, route_of
from mtrd.web.metrics import monitor_metrics, webhook_metrics
from mtrd.web.monitor_render import webhook_body
from mtrd.web.routes import Api
from mtrd.webhooks.delivery import WebhookSender
from mtrd.webhooks.notify import MonitorWebhooks
from treq.testing import StubTreq
from twisted.internet.defer import Deferred

from tests.openapi import validate_response, validate_schema
from tests.test_http import BASE, Answer, Client
from tests.test_webhooks import SECRET, Names, Receiver

EVENT_SCHEMAS = {"run": "MonitorRunEvent", "path_change": "PathChangeEvent", "alert": "AlertEvent"}
MONITOR = {"name": "gateway", "target": "203.0.113.7", "probes": 2, "interval": 0.5,
           "max_ttl": 8, "every": 5, "jitter": 0}  # fmt: skip


class MonitorClient(Client):
    """The test client with a monitor service behind /monitors."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.receiver = Receiver()
        self.webhooks = WebhookSender(self.clock, Names(), self.receiver, rng=random.Random(4))
        self.webhooks.startService()
        self.monitors = MonitorService(
            self.clock,
            JobsStarter(self.jobs),
            notifier=MonitorWebhooks(self.webhooks, webhook_body),
            rng=random.Random(5),
            max_monitors=3,
        )
        self.monitors.startService()
        self.api = Api(
            pool=self.pool,
            jobs=self.jobs,
            store=self.store,
            clock=self.clock,
            metrics=self.metrics,
            monitors=self.monitors,
            webhooks=self.webhooks,
        )
        self.stub = StubTreq(Edge(self.api.resource(), self.clock, self.metrics))

    async def post_monitor(self, body: object) -> Answer:
        return await self.send("POST", "/monitors", body)

    async def send(self, method: str, path: str, body: object) -> Answer:
        return await self.request(
            method,
            path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )


@pytest_twisted.ensureDeferred
async def test_create_answers_201_with_location() -> None:
    """POST /monitors answers 201, a Location and the monitor resource."""
    client = MonitorClient()
    answer = await client.post_monitor(MONITOR)
    assert answer.code == 201
    body = answer.json()
    assert answer.header("location") == f"/monitors/{body['id']}"
    assert (body["name"], body["every"], body["source"]) == ("gateway", 5.0, "api")


@pytest_twisted.ensureDeferred
async def test_runs_show_on_the_monitor_with_links_to_their_traces() -> None:
    """After two periods the monitor shows its runs, its path and links to stored traces."""
    client = MonitorClient()
    created = (await client.post_monitor(MONITOR)).json()
    client.run_for(7)
    body = (await client.request("GET", f"/monitors/{created['id']}")).json()
    assert [run["result"] for run in body["runs"]] == ["reached", "reached"]
    assert body["path"]["reached"] is True
    assert [hop["responders"] for hop in body["path"]["hops"]][-1] == ["203.0.113.7"]
    trace = await client.request("GET", body["runs"][0]["links"]["trace"])
    assert trace.code == 200


@pytest_twisted.ensureDeferred
async def test_invalid_fields_are_named() -> None:
    """Bad monitor fields and bad trace fields are named together in one 422."""
    client = MonitorClient()
    answer = await client.post_monitor(
        {"name": "bad name", "target": "203.0.113.7", "every": 0.5, "probes": 0,
         "alerts": {"loss_pct": 200}, "webhook": {"url": "ftp://x", "secret": "plain"}}
    )  # fmt: skip
    assert answer.code == 422
    fields = {e["field"] for e in answer.json()["errors"]}
    assert fields == {"name", "every", "probes", "alerts.loss_pct", "webhook.url", "webhook.secret"}


@pytest_twisted.ensureDeferred
async def test_a_taken_name_is_a_409() -> None:
    """A second monitor with the same name is refused with 409."""
    client = MonitorClient()
    await client.post_monitor(MONITOR)
    answer = await client.post_monitor(MONITOR)
    assert answer.code == 409


@pytest_twisted.ensureDeferred
async def test_the_cap_is_a_429() -> None:
    """Past --max-monitors, a new monitor is refused with 429."""
    client = MonitorClient()
    for n in range(3):
        await client.post_monitor(MONITOR | {"name": f"m{n}"})
    answer = await client.post_monitor(MONITOR | {"name": "m3"})
    assert answer.code == 429


@pytest_twisted.ensureDeferred
async def test_a_refused_target_is_a_403() -> None:
    """A literal target the policy refuses is refused at creation."""
    client = MonitorClient()
    answer = await client.post_monitor(MONITOR | {"target": "169.254.169.254"})
    assert answer.code == 403


@pytest_twisted.ensureDeferred
async def test_the_webhook_secret_is_never_shown() -> None:
    """A monitor's webhook shows its URL, never its secret."""
    client = MonitorClient()
    hook = {"url": "http://198.51.100.9/hook", "secret": SECRET}
    answer = await client.post_monitor(MONITOR | {"webhook": hook})
    assert answer.json()["webhook"] == {"url": "http://198.51.100.9/hook", "every_run": False}
    assert SECRET.removeprefix("whsec_") not in answer.body.decode()


@pytest_twisted.ensureDeferred
async def test_a_link_local_webhook_is_a_403_naming_the_rule() -> None:
    """A webhook URL that resolves to a link-local address is refused at creation."""
    client = MonitorClient()
    hook = {"url": "http://169.254.169.254/latest", "secret": SECRET}
    answer = await client.post_monitor(MONITOR | {"webhook": hook})
    assert answer.code == 403
    assert answer.json()["errors"][0]["field"] == "webhook.url"
    assert "link-local" in answer.json()["errors"][0]["message"]


@pytest_twisted.ensureDeferred
async def test_monitor_webhooks_are_delivered_and_shown_on_the_monitor() -> None:
    """With every_run, each run is delivered, and the deliveries show on the monitor."""
    client = MonitorClient()
    hook = {"url": "http://198.51.100.9/hook", "secret": SECRET, "every_run": True}
    created = (await client.post_monitor(MONITOR | {"webhook": hook})).json()
    client.run_for(7)
    bodies = [json.loads(p["body"]) for p in client.receiver.posts]
    for body in bodies:
        validate_schema("MonitorWebhook", body)
    assert [b["type"] for b in bodies] == ["monitor.run", "monitor.run"]
    assert bodies[0]["data"]["run"]["result"] == "reached"
    monitor = (await client.request("GET", f"/monitors/{created['id']}")).json()
    assert [d["status"] for d in monitor["deliveries"]] == ["delivered", "delivered"]
    assert monitor["deliveries"][0]["event_id"] == f"{created['id']}.2"


@pytest_twisted.ensureDeferred
async def test_metrics_count_webhook_deliveries() -> None:
    """/metrics counts webhook deliveries by result, attempts, and what waits."""
    client = MonitorClient()
    client.metrics.watch(lambda: webhook_metrics(client.webhooks))
    hook = {"url": "http://198.51.100.9/hook", "secret": SECRET, "every_run": True}
    await client.post_monitor(MONITOR | {"webhook": hook})
    client.run_for(7)
    text = (await client.request("GET", "/metrics")).body.decode()
    assert 'mtrd_webhook_deliveries_total{result="delivered"} 2.0' in text
    assert 'mtrd_webhook_deliveries_total{result="dropped"} 0.0' in text
    assert "mtrd_webhook_attempts_total 2.0" in text
    assert "mtrd_webhooks_queued 0.0" in text


@pytest_twisted.ensureDeferred
async def test_a_trace_webhook_is_called_when_it_finishes() -> None:
    """POST /traces with a webhook delivers the final trace once it ends."""
    client = MonitorClient()
    hook = {"url": "http://198.51.100.9/hook", "secret": SECRET}
    body = {"target": "203.0.113.7", "probes": 2, "interval": 0.5, "max_ttl": 8, "webhook": hook}
    created = (await client.send("POST", "/traces", body)).json()
    assert client.receiver.posts == []
    client.run_for(5)
    (post,) = client.receiver.posts
    delivered = json.loads(post["body"])
    validate_schema("TraceWebhook", delivered)
    assert delivered["type"] == "trace.finished"
    assert delivered["data"]["id"] == created["id"]
    assert delivered["data"]["status"] == "completed"
    assert post["headers"]["webhook-id"] == f"{created['id']}.done"


@pytest_twisted.ensureDeferred
async def test_a_bad_trace_webhook_is_named_with_the_other_fields() -> None:
    """A bad webhook on POST /traces is named in the same 422 as the trace's fields."""
    client = MonitorClient()
    body = {"target": "203.0.113.7", "probes": 0, "webhook": {"url": "x", "secret": SECRET}}
    answer = await client.send("POST", "/traces", body)
    assert answer.code == 422
    assert {e["field"] for e in answer.json()["errors"]} == {"probes", "webhook.url"}


@pytest_twisted.ensureDeferred
async def test_patch_pauses_and_keeps_other_fields() -> None:
    """PATCH {"paused": true} pauses the monitor and leaves the rest as it was."""
    client = MonitorClient()
    created = (await client.post_monitor(MONITOR)).json()
    answer = await client.send("PATCH", f"/monitors/{created['id']}", {"paused": True})
    assert answer.code == 200
    body = answer.json()
    assert body["paused"] is True
    assert body["next_run_at"] is None
    assert (body["every"], body["request"]["probes"]) == (5.0, 2)


@pytest_twisted.ensureDeferred
async def test_patch_can_change_the_protocol() -> None:
    """PATCH to tcp gives tcp's default port; the request is read again whole."""
    client = MonitorClient()
    created = (await client.post_monitor(MONITOR)).json()
    answer = await client.send("PATCH", f"/monitors/{created['id']}", {"protocol": "tcp"})
    assert answer.json()["request"]["port"] == 80


@pytest_twisted.ensureDeferred
async def test_patch_merges_the_webhook_object() -> None:
    """PATCH {"webhook": {"every_run": true}} keeps the URL and the secret."""
    client = MonitorClient()
    hook = {"url": "http://198.51.100.9/hook", "secret": SECRET}
    created = (await client.post_monitor(MONITOR | {"webhook": hook})).json()
    answer = await client.send(
        "PATCH", f"/monitors/{created['id']}", {"webhook": {"every_run": True}}
    )
    assert answer.json()["webhook"] == {"url": "http://198.51.100.9/hook", "every_run": True}
    spec = client.monitors.get(created["id"]).spec
    assert spec.webhook is not None
    assert spec.webhook.secret == SECRET


@pytest_twisted.ensureDeferred
async def test_delete_answers_204_then_404() -> None:
    """DELETE removes the monitor; it is then not found."""
    client = MonitorClient()
    created = (await client.post_monitor(MONITOR)).json()
    assert (await client.request("DELETE", f"/monitors/{created['id']}")).code == 204
    assert (await client.request("GET", f"/monitors/{created['id']}")).code == 404


@pytest_twisted.ensureDeferred
async def test_file_monitors_are_read_only_through_the_api() -> None:
    """PATCH and DELETE of a monitor from the monitors file answer 409."""
    client = MonitorClient()
    spec = MonitorSpec("from-file", TraceRequest("203.0.113.7"), every=60.0)
    record = client.monitors.create(spec, source=MonitorSource.FILE)
    patched = await client.send("PATCH", f"/monitors/{record.id}", {"paused": True})
    deleted = await client.request("DELETE", f"/monitors/{record.id}")
    assert (patched.code, deleted.code) == (409, 409)


@pytest_twisted.ensureDeferred
async def test_listing_shows_every_monitor() -> None:
    """GET /monitors lists the monitors, oldest first."""
    client = MonitorClient()
    await client.post_monitor(MONITOR | {"name": "a"})
    await client.post_monitor(MONITOR | {"name": "b"})
    body = (await client.request("GET", "/monitors")).json()
    assert [m["name"] for m in body["monitors"]] == ["a", "b"]


@pytest_twisted.ensureDeferred
async def test_without_monitors_the_routes_are_404() -> None:
    """A process without a monitor service answers 404 on /monitors."""
    client = Client()
    answer = await client.request("GET", "/monitors")
    assert answer.code == 404


def _events(text: str) -> list[dict[str, Any]]:
    events = []
    for block in text.split("\n\n"):
        fields = dict(
            line.partition(": ")[::2] for line in block.splitlines() if not line.startswith(":")
        )
        if "event" in fields:
            data = json.loads(fields["data"])
            validate_schema(EVENT_SCHEMAS[fields["event"]], data)
            events.append({"id": int(fields["id"]), "event": fields["event"], "data": data})
    return events


@pytest_twisted.ensureDeferred
async def test_events_stream_runs_and_resume_after_last_event_id() -> None:
    """The event stream sends run events; Last-Event-ID resumes after that id."""
    client = MonitorClient()
    created = (await client.post_monitor(MONITOR)).json()
    client.run_for(7)
    path = f"/monitors/{created['id']}/events"
    response = await client.stub.get(BASE + path, headers={"Last-Event-ID": "1"})
    validate_response("GET", path, 200, response.headers.getRawHeaders("content-type")[0], b"")
    chunks: list[bytes] = []
    done = treq.collect(response, chunks.append)
    client.run_for(5)
    await client.request("DELETE", f"/monitors/{created['id']}")
    client.stub.flush()
    await done
    events = _events(b"".join(chunks).decode())
    assert [e["id"] for e in events] == [2, 3]
    assert {e["event"] for e in events} == {"run"}
    assert events[0]["data"]["run"]["result"] == "reached"


@pytest_twisted.ensureDeferred
async def test_metrics_show_each_monitor() -> None:
    """/metrics has the runs, destination figures, hop figures and path of a monitor."""
    client = MonitorClient()
    client.metrics.watch(lambda: monitor_metrics(client.monitors.records()))
    await client.post_monitor(MONITOR)
    client.run_for(7)
    path_id = client.monitors.listing()[0].path.current.path_id  # type: ignore[union-attr]
    text = (await client.request("GET", "/metrics")).body.decode()
    assert 'mtrd_monitor_runs_total{monitor="gateway",result="reached"} 2.0' in text
    assert 'mtrd_monitor_destination_reached{monitor="gateway"} 1.0' in text
    assert 'mtrd_monitor_destination_loss_ratio{monitor="gateway"} 0.0' in text
    assert 'mtrd_monitor_destination_rtt_seconds{monitor="gateway"} 0.01' in text
    assert 'mtrd_monitor_hop_loss_ratio{monitor="gateway",ttl="1"} 0.0' in text
    assert f'mtrd_monitor_path_info{{monitor="gateway",path_id="{path_id}"}} 1.0' in text
    assert 'mtrd_monitor_alert_firing{alert="unreachable",monitor="gateway"} 0.0' in text


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/monitors", "/monitors"),
        ("/monitors/m-abcdefgh12345678", "/monitors/{id}"),
        ("/monitors/m-abcdefgh12345678/events", "/monitors/{id}/events"),
        ("/monitors/m-abc/x/y", "other"),
    ],
)
def test_monitor_paths_are_one_metrics_label_each(path: str, route: str) -> None:
    """Monitor ids do not become metric labels: each path maps to its route template."""
    assert route_of(path) == route


@pytest_twisted.ensureDeferred
async def test_a_trace_shows_its_webhook_delivery_without_the_secret() -> None:
    """GET /traces/{id} shows the webhook's URL and delivery state, never its secret."""
    client = MonitorClient()
    hook = {"url": "http://198.51.100.9/hook", "secret": SECRET}
    body = {"target": "203.0.113.7", "probes": 2, "interval": 0.5, "max_ttl": 8, "webhook": hook}
    created = await client.send("POST", "/traces", body)
    assert created.json()["webhook"] == {"url": "http://198.51.100.9/hook", "deliveries": []}
    client.run_for(5)
    shown = await client.request("GET", f"/traces/{created.json()['id']}")
    validate_schema("Trace", shown.json())
    (delivery,) = shown.json()["webhook"]["deliveries"]
    assert delivery["event_id"] == f"{created.json()['id']}.done"
    assert (delivery["status"], delivery["attempts"]) == ("delivered", 1)
    assert SECRET not in shown.body.decode()


@pytest_twisted.ensureDeferred
async def test_a_delivery_that_ends_changes_the_trace_etag() -> None:
    """A delivery pending on a finished trace, once answered, shows with a new ETag."""
    client = MonitorClient()
    answer: Deferred[int] = Deferred()
    client.receiver.answers.append(answer)
    hook = {"url": "http://198.51.100.9/hook", "secret": SECRET}
    body = {"target": "203.0.113.7", "probes": 2, "interval": 0.5, "max_ttl": 8, "webhook": hook}
    trace_id = (await client.send("POST", "/traces", body)).json()["id"]
    client.run_for(5)
    pending = await client.request("GET", f"/traces/{trace_id}")
    assert pending.json()["webhook"]["deliveries"][0]["status"] == "pending"
    answer.callback(200)
    tag = pending.header("etag")
    assert tag is not None
    shown = await client.request("GET", f"/traces/{trace_id}", headers={"If-None-Match": tag})
    assert shown.code == 200
    assert shown.json()["webhook"]["deliveries"][0]["status"] == "delivered"


@pytest_twisted.ensureDeferred
async def test_a_trace_without_webhook_has_no_webhook_field() -> None:
    """A trace POSTed without a webhook shows no webhook member."""
    client = MonitorClient()
    body = {"target": "203.0.113.7", "probes": 2, "interval": 0.5, "max_ttl": 8}
    created = (await client.send("POST", "/traces", body)).json()
    assert "webhook" not in created
