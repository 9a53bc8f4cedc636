"""End to end: ``mtrd serve`` as a process whose mtr-packet runs in the lab's client namespace.

Driven over real HTTP with treq and with curl; hops are checked against the topology.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import pytest_twisted
import treq
from mtrd.web.render import from_rfc3339
from twisted.internet import reactor as global_reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from tests.dns_server import Zone, listen
from tests.lab import Lab
from tests.mtrd_process import lab_mtrd
from tests.openapi import validate_response, validate_schema

pytestmark = pytest.mark.lab
reactor: Any = global_reactor
STORE_TTL = 4.0
QUICK = {"probes": 3, "interval": 0.2, "timeout": 1, "max_ttl": 12}


@attrs.frozen
class Server:
    url: str
    process: subprocess.Popen[str]
    zone: Zone


@pytest.fixture(scope="module")
def server(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One mtrd for this module: lab mtr-packet, a loopback DNS server, a short store ttl."""
    zone = Zone(
        {
            "target.mtrd.test": ([lab.targets(4)[20]], [lab.targets(6)[20]]),
            "v6only.mtrd.test": ([], [lab.targets(6)[21]]),
        }
    )
    dns_port, dns_number = listen(reactor, zone)
    flags = ["--dns-servers", f"127.0.0.1:{dns_number}", "--store-ttl", str(STORE_TTL)]
    log = tmp_path_factory.mktemp("mtrd") / "mtrd.log"
    try:
        with lab_mtrd(lab, log, *flags) as (url, process):
            yield Server(url, process, zone)
    finally:
        dns_port.stopListening()


async def call(server: Server, method: str, path: str, **kwargs: Any) -> tuple[int, Any, bytes]:
    """One request with treq; the answer is validated against openapi.yaml."""
    response = await treq.request(method, server.url + path, **kwargs)
    body = await response.content()
    content_type = (response.headers.getRawHeaders("content-type") or [None])[0]
    validate_response(method, path.split("?", maxsplit=1)[0], response.code, content_type, body)
    return response.code, response.headers, body


async def start(server: Server, **request: Any) -> str:
    code, _, body = await call(server, "POST", "/traces", json=request)
    assert code == 202, body
    return str(json.loads(body)["id"])


async def finished(server: Server, trace_id: str, limit: float = 30.0) -> dict[str, Any]:
    """Poll until the trace is final."""
    started = reactor.seconds()
    while True:
        code, _, body = await call(server, "GET", f"/traces/{trace_id}")
        assert code == 200, body
        trace = json.loads(body)
        if trace["status"] in ("completed", "failed", "cancelled"):
            return dict(trace)
        assert reactor.seconds() - started < limit, f"trace still {trace['status']}"
        await deferLater(reactor, 0.1, lambda: None)


def assert_path_matches_topology(lab: Lab, trace: dict[str, Any], family: int) -> None:
    target = trace["target"]["address"]
    assert trace["status"] == "completed", trace["error"]
    assert trace["destination_reached"] is True
    assert [hop["ttl"] for hop in trace["hops"]] == [1, 2, 3, 4]
    for hop in trace["hops"]:
        expected = lab.expected_responders(family, hop["ttl"], target)
        addresses = {r["address"] for r in hop["responders"]}
        assert addresses, hop
        assert addresses <= expected, (hop["ttl"], addresses, expected)
    assert trace["hops"][-1]["end"] == "destination"


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("protocol", ["icmp", "udp", "tcp"])
@pytest_twisted.ensureDeferred
async def test_trace_follows_the_topology(
    lab: Lab, server: Server, family: int, protocol: str
) -> None:
    """Each protocol and family traces r1, r2a|r2b, r3 and the destination."""
    extra = {"port": lab.open_tcp_port} if protocol == "tcp" else {}
    target = lab.targets(family)[30 + (protocol == "udp") + 2 * (protocol == "tcp")]
    trace_id = await start(server, target=target, protocol=protocol, **QUICK, **extra)
    trace = await finished(server, trace_id)
    assert_path_matches_topology(lab, trace, family)
    assert all(hop["sent"] == 3 for hop in trace["hops"])


@pytest.mark.parametrize("family", [4, 6])
@pytest_twisted.ensureDeferred
async def test_hostname_target_is_resolved_through_the_configured_dns(
    lab: Lab, server: Server, family: int
) -> None:
    """A hostname is resolved with the configured DNS server, in the asked family."""
    trace_id = await start(server, target="target.mtrd.test", ip_version=family, **QUICK)
    trace = await finished(server, trace_id)
    assert trace["target"] == {
        "input": "target.mtrd.test",
        "address": lab.targets(family)[20],
        "ip_version": family,
    }
    assert_path_matches_topology(lab, trace, family)
    assert "target.mtrd.test" in server.zone.queries


@pytest_twisted.ensureDeferred
async def test_hostname_with_only_aaaa_falls_back_to_ipv6(lab: Lab, server: Server) -> None:
    """Without ip_version, a name with no A record is traced over IPv6."""
    trace = await finished(server, await start(server, target="v6only.mtrd.test", **QUICK))
    assert trace["target"]["ip_version"] == 6
    assert trace["destination_reached"] is True


@pytest_twisted.ensureDeferred
async def test_unknown_hostname_fails_with_the_resolvers_reason(server: Server) -> None:
    """A name the DNS server does not know fails the trace with a dns error."""
    trace = await finished(server, await start(server, target="nowhere.mtrd.test", **QUICK))
    assert trace["status"] == "failed"
    assert trace["error"]["type"] == "dns"
    assert "no such host" in trace["error"]["message"]


@pytest_twisted.ensureDeferred
async def test_silent_hop_shows_as_lost(lab: Lab, server: Server) -> None:
    """A router that sends no time-exceeded is a hop with no responder and 100% loss."""
    with lab.silent("r3"):
        trace = await finished(server, await start(server, target=lab.targets(4)[40], **QUICK))
    hop3 = trace["hops"][2]
    assert (hop3["responders"], hop3["loss_pct"], hop3["lost"]) == ([], 100.0, 3)
    assert trace["destination_reached"] is True


@pytest.mark.parametrize("family", [4, 6])
@pytest_twisted.ensureDeferred
async def test_unreachable_target_ends_at_the_router(lab: Lab, server: Server, family: int) -> None:
    """The unreachable prefix ends at r3, marked unreachable; the trace completes."""
    trace_id = await start(server, target=lab.unreachable_target(family), **QUICK)
    trace = await finished(server, trace_id)
    assert trace["status"] == "completed"
    assert trace["destination_reached"] is False
    last = trace["hops"][-1]
    assert last["end"] == "unreachable"
    assert {r["address"] for r in last["responders"]} == {lab.r3_address(family)}
    assert trace["stop_reason"] == "unreachable"
    assert trace["unreachable_kind"] in ("no-route", "no-route-network", "no-route-host")


@pytest_twisted.ensureDeferred
async def test_blackholed_target_ends_after_max_unknown_silent_hops(
    lab: Lab, server: Server
) -> None:
    """The blackhole: two routers answer, then a short run of silent hops, then the end."""
    trace_id = await start(server, target=lab.blackhole_target(4), **QUICK)
    trace = await finished(server, trace_id)
    assert trace["status"] == "completed"
    assert trace["destination_reached"] is False
    answered = [hop["ttl"] for hop in trace["hops"] if hop["responders"]]
    assert answered == [1, 2]
    assert [hop["ttl"] for hop in trace["hops"]] == [1, 2, 3, 4, 5, 6, 7]
    assert trace["stop_reason"] == "gap_limit"


@pytest_twisted.ensureDeferred
async def test_ecmp_shows_both_responders(lab: Lab, server: Server) -> None:
    """tcp probes vary their source port, so the ECMP hop shows both routers."""
    trace_id = await start(
        server, target=lab.targets(4)[50], protocol="tcp", port=lab.open_tcp_port,
        probes=16, interval=0.05, timeout=1, max_ttl=6,
    )  # fmt: skip
    trace = await finished(server, trace_id)
    hop2 = {r["address"] for r in trace["hops"][1]["responders"]}
    assert hop2 == set(lab.ecmp_responders(4))


@pytest_twisted.ensureDeferred
async def test_cancel_stops_a_running_trace(lab: Lab, server: Server) -> None:
    """DELETE cancels a running trace: status cancelled, no more probes."""
    trace_id = await start(server, target=lab.targets(4)[60], probes=50, interval=1.0)
    await deferLater(reactor, 0.5, lambda: None)
    code, _, body = await call(server, "DELETE", f"/traces/{trace_id}")
    assert (code, json.loads(body)["status"]) == (200, "cancelled")
    trace = await finished(server, trace_id)
    sent = trace["hops"][0]["sent"]
    await deferLater(reactor, 1.5, lambda: None)
    code, _, body = await call(server, "GET", f"/traces/{trace_id}")
    assert json.loads(body)["hops"][0]["sent"] == sent


@pytest_twisted.ensureDeferred
async def test_finished_trace_expires(lab: Lab, server: Server) -> None:
    """After the store ttl, a finished trace is 404."""
    trace_id = await start(server, target=lab.targets(4)[61], probes=1, interval=0, timeout=1)
    await finished(server, trace_id)
    await deferLater(reactor, STORE_TTL + 0.5, lambda: None)
    code, _, _ = await call(server, "GET", f"/traces/{trace_id}")
    assert code == 404


def curl(*args: str) -> str:
    result = subprocess.run(
        ["curl", "-sS", *args], capture_output=True, text=True, check=True, timeout=30
    )
    return result.stdout


@pytest_twisted.ensureDeferred
async def test_curl_post_poll_and_text_report(lab: Lab, server: Server) -> None:
    """The README's curl commands work: POST, poll JSON, and the text report."""
    target = lab.targets(4)[62]
    body = json.dumps({"target": target, **QUICK})
    post = [
        "-X",
        "POST",
        f"{server.url}/traces",
        "-H",
        "Content-Type: application/json",
        "-d",
        body,
    ]
    created = json.loads(await _in_thread(curl, *post))
    await finished(server, created["id"])
    report = await _in_thread(
        curl, "-H", "Accept: text/plain", f"{server.url}/traces/{created['id']}"
    )
    assert "Loss%" in report
    assert target in report
    assert lab.r3_address(4) in report


@pytest_twisted.ensureDeferred
async def test_curl_follows_the_event_stream_to_done(lab: Lab, server: Server) -> None:
    """curl -N on the events shows status, hops and done, then the stream ends."""
    trace_id = await start(server, target=lab.targets(4)[63], **QUICK)
    text = await _in_thread(curl, "-N", f"{server.url}/traces/{trace_id}/events")
    events = [line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("event: ")]
    assert events[-1] == "done"
    assert "hop" in events


@pytest_twisted.ensureDeferred
async def test_sse_reconnect_with_last_event_id(lab: Lab, server: Server) -> None:
    """A client that drops the stream and reconnects with Last-Event-ID misses nothing."""
    trace_id = await start(server, target=lab.targets(4)[64], probes=6, interval=0.3, timeout=1)
    first = await _read_events(server, trace_id, count=6)
    last_id = first[-1]["id"]
    rest = await _read_events(server, trace_id, headers={"Last-Event-ID": str(last_id)})
    assert rest[-1]["event"] == "done"
    assert all(event["id"] > last_id for event in rest)
    final = rest[-1]["data"]
    assert final["status"] == "completed"
    assert all(hop["sent"] == 6 for hop in final["hops"])


async def _read_events(
    server: Server,
    trace_id: str,
    *,
    count: int | None = None,
    headers: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Read events until ``count`` arrived (then drop the connection) or the stream ends."""
    response = await treq.get(
        f"{server.url}/traces/{trace_id}/events", headers=headers or {}, unbuffered=True
    )
    assert response.code == 200
    events: list[dict[str, Any]] = []
    buffer = [""]
    enough = [False]

    def collect(data: bytes) -> None:
        buffer[0] += data.decode()
        *blocks, buffer[0] = buffer[0].split("\n\n")
        for block in blocks:
            fields = dict(
                line.split(": ", 1) for line in block.splitlines() if not line.startswith(":")
            )
            if "event" in fields:
                data_json = json.loads(fields["data"])
                validate_schema(
                    {"status": "StatusEvent", "hop": "Hop", "done": "Trace"}[fields["event"]],
                    data_json,
                )
                events.append(
                    {"id": int(fields["id"]), "event": fields["event"], "data": data_json}
                )
        if count is not None and len(events) >= count and not enough[0]:
            enough[0] = True
            response.original._transport.loseConnection()  # the client goes away

    try:
        await treq.collect(response, collect)
    except Exception:
        if not enough[0]:
            raise
    return events


async def _in_thread(f: Any, *args: Any) -> str:
    return str(await deferToThread(f, *args))


def seconds_taken(trace: dict[str, Any]) -> float:
    """From the trace's start to its end, by the server's clock."""
    return float(from_rfc3339(trace["finished_at"]) - from_rfc3339(trace["started_at"]))


@pytest.mark.parametrize("probes", [1, 3])
@pytest_twisted.ensureDeferred
async def test_a_silent_router_costs_no_timeout(lab: Lab, server: Server, probes: int) -> None:
    """With r3 silent and interval 0 the trace takes milliseconds, not probes x timeout (2 s):
    r3's probes are given up after 10 x the destination's round trip (the 5 ms floor here)."""
    with lab.silent("r3"):
        request = {"probes": probes, "interval": 0, "timeout": 2, "max_ttl": 12}
        trace = await finished(server, await start(server, target=lab.targets(4)[41], **request))
    assert_path_matches_topology_but_silent(lab, trace, silent_ttl=3)
    assert trace["hops"][2]["lost"] == probes
    assert trace["stop_reason"] == "destination"
    assert seconds_taken(trace) < 0.5


def assert_path_matches_topology_but_silent(
    lab: Lab, trace: dict[str, Any], silent_ttl: int
) -> None:
    target = trace["target"]["address"]
    assert trace["status"] == "completed", trace["error"]
    assert [hop["ttl"] for hop in trace["hops"]] == [1, 2, 3, 4]
    for hop in trace["hops"]:
        addresses = {r["address"] for r in hop["responders"]}
        if hop["ttl"] == silent_ttl:
            assert addresses == set()
        else:
            assert addresses <= lab.expected_responders(4, hop["ttl"], target)
            assert addresses


@pytest.fixture
def fresh_server(lab: Lab, tmp_path: Any) -> Iterator[Server]:
    """An mtrd of its own: no late answers from earlier tests have raised its wait floor."""
    with lab_mtrd(lab, tmp_path / "mtrd.log") as (url, process):
        yield Server(url, process, Zone({}))


@pytest_twisted.ensureDeferred
async def test_a_slow_router_answers_late(lab: Lab, fresh_server: Server) -> None:
    """r3 answers 600 ms late (its time-exceeded held in a netfilter queue): its first probe
    is given up after 10 x the destination's round trip and its answer counts as late; that
    raises the wait's floor, so the second probe's answer is received.

    On a server of its own: late answers of earlier tests (a busy host) would have raised
    the shared wait floor above the delay, and the first answer would not be late.
    """
    server = fresh_server
    with lab.delayed("r3", 0.6):
        request = {"probes": 2, "interval": 0.5, "timeout": 2, "max_ttl": 12}
        trace = await finished(server, await start(server, target=lab.targets(4)[42], **request))
    hop3 = trace["hops"][2]
    assert (hop3["received"], hop3["lost"], hop3["late"], hop3["loss_pct"]) == (1, 1, 1, 50.0)
    assert {r["address"] for r in hop3["responders"]} == {lab.r3_address(4)}
    assert hop3["rtt_ms"]["avg"] > 500  # the received answer's; the late one is not counted
    assert trace["hops"][2]["forward_loss_pct"] == 0.0
    assert trace["stop_reason"] == "destination"


@pytest_twisted.ensureDeferred
async def test_a_trace_below_the_target_stops_at_max_ttl(lab: Lab, server: Server) -> None:
    """max_ttl 2 ends the trace at TTL 2 with stop reason max_ttl."""
    request = {"probes": 1, "interval": 0, "timeout": 1, "max_ttl": 2}
    trace = await finished(server, await start(server, target=lab.targets(4)[43], **request))
    assert [hop["ttl"] for hop in trace["hops"]] == [1, 2]
    assert trace["stop_reason"] == "max_ttl"
