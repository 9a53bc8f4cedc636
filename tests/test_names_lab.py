"""Names and AS numbers of the lab's routers, end to end: ``mtrd serve`` with the tests' DNS
server answering PTR queries (a hostile name for r3, none at all for r2a and r2b over IPv4;
over IPv6 r2a and r2b have names and r3 the hostile one) and MaxMind DB files built for the
lab's documentation addresses."""

from __future__ import annotations

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
from twisted.internet import reactor as global_reactor
from twisted.internet.task import deferLater

from tests.dns_server import Zone, listen
from tests.lab import Lab
from tests.mmdb import write_asn_db, write_country_db
from tests.mtrd_process import lab_mtrd
from tests.openapi import validate_response, validate_schema

pytestmark = pytest.mark.lab
reactor: Any = global_reactor
QUICK = {"probes": 3, "interval": 0.2, "timeout": 1, "max_ttl": 8}
HOSTILE = "<script>alert(1)</script>\x1b[2J.lab.example"
GRACE = 0.5
# PTR names of the lab's IPv6 routers (tests/lab/topology.py): r1, r2a and r2b.
IPV6_NAMES = {
    "2001:db8:1::1": "r1-v6.lab.example.",
    "2001:db8:2::2": "r2a-v6.lab.example.",
    "2001:db8:3::2": "r2b-v6.lab.example.",
}
SILENT_TIMEOUT = 3.0


@attrs.frozen
class Server:
    url: str
    process: subprocess.Popen[str]
    asn_db: Path


@pytest.fixture(scope="module")
def server(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """mtrd with reverse DNS through the tests' DNS server, an ASN and a country database."""
    r1, r2a, r2b, r3 = ("198.51.100.1", "198.51.100.6", "198.51.100.10", lab.r3_address(4))
    pointers = {r1: "r1.lab.example.", r3: HOSTILE}
    pointers.update(dict.fromkeys(lab.targets(4)[100:110], "d.lab.example."))
    pointers.update(IPV6_NAMES)
    pointers[lab.r3_address(6)] = HOSTILE
    pointers.update(dict.fromkeys(lab.targets(6)[100:110], "d6.lab.example."))
    zone = Zone({}, pointers=pointers, silent=frozenset({r2a, r2b}))
    dns_port, dns_number = listen(reactor, zone)
    folder = tmp_path_factory.mktemp("names")
    flags = [
        "--reverse-dns", "on", "--dns-servers", f"127.0.0.1:{dns_number}",
        "--reverse-dns-timeout", str(SILENT_TIMEOUT),
        "--names-grace", str(GRACE),
        "--asn-db", str(write_asn_db(folder / "asn.mmdb")),
        "--geo-db", str(write_country_db(folder / "geo.mmdb")),
    ]  # fmt: skip
    try:
        with lab_mtrd(lab, folder / "mtrd.log", *flags) as (url, process):
            yield Server(url, process, folder / "asn.mmdb")
    finally:
        dns_port.stopListening()


async def call(server: Server, method: str, path: str, **kwargs: Any) -> tuple[int, bytes]:
    response = await treq.request(method, server.url + path, **kwargs)
    body = await response.content()
    content_type = (response.headers.getRawHeaders("content-type") or [None])[0]
    validate_response(method, path.split("?", maxsplit=1)[0], response.code, content_type, body)
    return response.code, body


async def start(server: Server, target: str) -> str:
    code, body = await call(server, "POST", "/traces", json={"target": target, **QUICK})
    assert code == 202, body
    return str(json.loads(body)["id"])


async def events(server: Server, trace_id: str) -> list[tuple[str, dict[str, Any]]]:
    """Every event of the trace's stream until ``done``, each checked against its schema."""
    response = await treq.get(f"{server.url}/traces/{trace_id}/events", unbuffered=True)
    text = (await response.content()).decode()
    found = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            data = json.loads(fields["data"])
            schema = {"status": "StatusEvent", "hop": "Hop", "done": "Trace"}[fields["event"]]
            validate_schema(schema, data)
            found.append((fields["event"], data))
    return found


def by_address(trace: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["address"]: r for hop in trace["hops"] for r in hop["responders"]}


async def wait_for_silence(server: Server) -> None:
    """Let the silent routers' lookups time out, so the next trace finds them cached."""
    await deferLater(reactor, SILENT_TIMEOUT + 0.5, lambda: None)


@pytest_twisted.ensureDeferred
async def test_names_and_as_numbers_in_json_events_and_report(lab: Lab, server: Server) -> None:
    """r1 and the target have names, all have AS and country; r3's hostile name is dropped."""
    target = lab.targets(4)[100]
    trace_id = await start(server, target)
    stream = await events(server, trace_id)
    kind, final = stream[-1]
    assert kind == "done"
    assert final["status"] == "completed", final["error"]
    responders = by_address(final)
    r1 = responders["198.51.100.1"]
    assert (r1["hostname"], r1["asn"], r1["as_name"], r1["prefix"], r1["country"]) == (
        "r1.lab.example", 64500, "Example Transit", "198.51.100.0/24", "NL",
    )  # fmt: skip
    assert responders[target]["hostname"] == "d.lab.example"
    assert (responders[target]["asn"], responders[target]["country"]) == (64501, "DE")
    assert responders[lab.r3_address(4)]["hostname"] is None
    assert responders[lab.r3_address(4)]["asn"] == 64500
    assert final["annotations"]["asn_db"]["type"] == "GeoLite2-ASN"
    assert final["annotations"]["geo_db"]["type"] == "GeoLite2-Country"
    named_hops = [h for k, h in stream if k == "hop" and h["ttl"] == 1]
    assert named_hops[-1]["responders"][0]["hostname"] == "r1.lab.example"

    code, body = await call(server, "GET", f"/traces/{trace_id}")
    assert code == 200
    assert by_address(json.loads(body))["198.51.100.1"]["hostname"] == "r1.lab.example"

    code, report = await call(
        server, "GET", f"/traces/{trace_id}", headers={"Accept": "text/plain"}
    )
    text = report.decode()
    assert "r1.lab.example (198.51.100.1)" in text
    assert "AS64500" in text
    assert "AS64501" in text
    assert "<script>" not in text
    assert "\x1b" not in text
    code, numeric = await call(
        server, "GET", f"/traces/{trace_id}?hosts=address", headers={"Accept": "text/plain"}
    )
    assert "r1.lab.example" not in numeric.decode()
    await wait_for_silence(server)


@pytest_twisted.ensureDeferred
async def test_ipv6_routers_are_named_in_json_events_and_report(lab: Lab, server: Server) -> None:
    """Over IPv6, r1, r2a/r2b and the target have their PTR names and AS; r3's hostile name
    is dropped."""
    target = lab.targets(6)[100]
    trace_id = await start(server, target)
    stream = await events(server, trace_id)
    kind, final = stream[-1]
    assert kind == "done"
    assert final["status"] == "completed", final["error"]
    assert final["target"]["ip_version"] == 6
    responders = by_address(final)
    r1 = responders["2001:db8:1::1"]
    assert (r1["hostname"], r1["asn"], r1["as_name"], r1["prefix"]) == (
        "r1-v6.lab.example", 64500, "Example Transit", "2001:db8::/32",
    )  # fmt: skip
    second = [r["address"] for r in final["hops"][1]["responders"]]
    assert second
    for address in second:
        assert responders[address]["hostname"] == IPV6_NAMES[address].rstrip(".")
    assert responders[target]["hostname"] == "d6.lab.example"
    assert responders[lab.r3_address(6)]["hostname"] is None
    assert responders[lab.r3_address(6)]["asn"] == 64500
    named_hops = [h for k, h in stream if k == "hop" and h["ttl"] == 1]
    assert named_hops[-1]["responders"][0]["hostname"] == "r1-v6.lab.example"

    code, report = await call(
        server, "GET", f"/traces/{trace_id}", headers={"Accept": "text/plain"}
    )
    assert code == 200
    text = report.decode()
    assert "r1-v6.lab.example (2001:db8:1::1)" in text
    assert "d6.lab.example" in text
    assert "<script>" not in text
    assert "\x1b" not in text


@pytest_twisted.ensureDeferred
async def test_a_multipath_trace_names_every_responder_and_its_graph_nodes(
    lab: Lab, server: Server
) -> None:
    """A multipath trace annotates both load-balanced routers and the rest, and its DOT
    graph labels nodes ``name (address)`` with their AS."""
    target = lab.targets(4)[105]
    body = {"target": target, "mode": "multipath", "protocol": "udp", "max_ttl": 8, "timeout": 1}
    code, answer = await call(server, "POST", "/traces", json=body)
    assert code == 202, answer
    trace_id = str(json.loads(answer)["id"])
    stream = await events(server, trace_id)
    kind, final = stream[-1]
    assert kind == "done"
    assert final["status"] == "completed", final["error"]
    responders = by_address(final)
    assert {"198.51.100.6", "198.51.100.10"} <= set(responders)
    assert responders["198.51.100.1"]["hostname"] == "r1.lab.example"
    assert responders[target]["hostname"] == "d.lab.example"
    for address in ("198.51.100.6", "198.51.100.10", lab.r3_address(4)):
        assert responders[address]["hostname"] is None
        assert responders[address]["asn"] == 64500
    assert responders[target]["asn"] == 64501
    named_hops = [h for k, h in stream if k == "hop" and h["ttl"] == 1]
    assert named_hops[-1]["responders"][0]["hostname"] == "r1.lab.example"

    code, dot = await call(
        server, "GET", f"/traces/{trace_id}", headers={"Accept": "text/vnd.graphviz"}
    )
    assert code == 200
    text = dot.decode()
    assert '[label="r1.lab.example (198.51.100.1)\\nAS64500 Example Transit\\nTTL 1"]' in text
    assert f'[label="d.lab.example ({target})\\nAS64501 Example Hosting\\nTTL 4"]' in text
    assert "<script>" not in text
    assert "\x1b" not in text


@pytest_twisted.ensureDeferred
async def test_the_hostile_name_is_counted(lab: Lab, server: Server) -> None:
    """The dropped PTR answer shows in mtrd_reverse_dns_rejected."""
    await start(server, lab.targets(4)[101])
    await deferLater(reactor, 2.0, lambda: None)
    code, body = await call(server, "GET", "/metrics")
    assert code == 200
    metrics = {
        line.split()[0]: float(line.split()[1])
        for line in body.decode().splitlines()
        if line and not line.startswith("#")
    }
    assert metrics["mtrd_reverse_dns_rejected_total"] >= 1


@pytest_twisted.ensureDeferred
async def test_a_silent_dns_server_does_not_hold_the_trace_past_the_grace(
    lab: Lab, server: Server
) -> None:
    """With r2's lookups unanswered, the trace is final a grace after probing, not after the
    lookup's timeout; r2 has no name."""
    trace_id = await start(server, lab.targets(4)[102])
    stream = await events(server, trace_id)
    final = stream[-1][1]
    duration = final_seconds(final)
    # Probing takes 3 rounds of 0.2 s; waiting for the silent lookups would take 3 s.
    assert duration < 0.6 + GRACE + 1.0, duration
    r2 = final["hops"][1]["responders"][0]
    assert r2["hostname"] is None
    assert r2["asn"] == 64500


def final_seconds(trace: dict[str, Any]) -> float:
    from mtrd.web.render import from_rfc3339  # noqa: PLC0415

    started, finished = from_rfc3339(trace["started_at"]), from_rfc3339(trace["finished_at"])
    assert started is not None
    assert finished is not None
    return finished - started


async def first_hop_asn(server: Server, target: str) -> int:
    stream = await events(server, await start(server, target))
    return int(stream[-1][1]["hops"][0]["responders"][0]["asn"])


@pytest_twisted.ensureDeferred
async def test_sighup_reloads_the_asn_database_and_a_bad_file_keeps_the_old_data(
    lab: Lab, server: Server
) -> None:
    """A corrupt file on SIGHUP changes nothing; a good one is used from the next trace on."""
    server.asn_db.write_bytes(b"corrupt")
    server.process.send_signal(signal.SIGHUP)
    await deferLater(reactor, 0.5, lambda: None)
    assert server.process.poll() is None
    assert await first_hop_asn(server, lab.targets(4)[103]) == 64500
    write_asn_db(server.asn_db, {"198.51.100.0/24": (64999, "Renumbered")})
    server.process.send_signal(signal.SIGHUP)
    await deferLater(reactor, 0.5, lambda: None)
    assert await first_hop_asn(server, lab.targets(4)[104]) == 64999
