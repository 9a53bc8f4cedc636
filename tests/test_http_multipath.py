"""POST /traces with mode multipath: what it accepts, refuses, and how it answers."""

from __future__ import annotations

import itertools

import pytest
import pytest_twisted

from tests.test_http import ROUTERS, Client, problem_fields

MULTIPATH = {"target": "203.0.113.7", "mode": "multipath", "protocol": "udp", "max_ttl": 8}


async def _finished(client: Client, body: dict[str, object]) -> str:
    trace_id: str = (await client.post_trace(body)).json()["id"]
    client.run_for(20)
    return trace_id


@pytest_twisted.ensureDeferred
async def test_a_multipath_trace_answers_with_links_and_flows() -> None:
    """A finished multipath trace has every hop, its links, its flows and a stop_reason."""
    client = Client()
    trace_id = await _finished(client, MULTIPATH)
    body = (await client.request("GET", f"/traces/{trace_id}")).json()
    assert body["status"] == "completed"
    assert body["request"]["mode"] == "multipath"
    assert body["request"]["confidence"] == 95
    path = [h["responders"][0]["address"] for h in body["hops"]]
    assert path == [*ROUTERS, "203.0.113.7"]
    multipath = body["multipath"]
    assert multipath["stop_reason"] == body["stop_reason"] == "destination"
    assert {(k["ttl"], k["from"], k["to"]) for k in multipath["links"]} == {
        (ttl, a, b) for ttl, (a, b) in enumerate(itertools.pairwise(path), start=1)
    }
    assert multipath["flows"]
    assert multipath["probes_sent"] == sum(h["sent"] for h in body["hops"])


@pytest_twisted.ensureDeferred
async def test_a_classic_trace_has_no_multipath_result() -> None:
    """Classic traces say multipath null."""
    client = Client()
    trace_id = await _finished(client, {"target": "203.0.113.7", "max_ttl": 4})
    body = (await client.request("GET", f"/traces/{trace_id}")).json()
    assert body["multipath"] is None


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"protocol": "tcp"}, "protocol", "source port"),
        ({"protocol": "icmp"}, "protocol", "checksum"),
        ({"protocol": None}, "protocol", "checksum"),
        ({"target": "2001:db8::7"}, "ip_version", "IPv6"),
        ({"ip_version": 6, "target": "router.example"}, "ip_version", "IPv6"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_combination_that_cannot_hold_a_flow_is_422_with_the_reason(
    change: dict[str, object], field: str, reason: str
) -> None:
    """tcp, icmp and IPv6 cannot hold a flow: 422 naming the field and saying why."""
    client = Client()
    body = {k: v for k, v in {**MULTIPATH, **change}.items() if v is not None}
    answer = await client.post_trace(body)
    assert answer.code == 422
    assert field in problem_fields(answer)
    assert reason in answer.body.decode()


@pytest.mark.parametrize(
    "body",
    [
        {**MULTIPATH, "confidence": 90},
        {**MULTIPATH, "confidence": "95"},
        {"target": "203.0.113.7", "confidence": 99},
    ],
)
@pytest_twisted.ensureDeferred
async def test_confidence_is_95_or_99_and_for_multipath_only(body: dict[str, object]) -> None:
    """Another confidence, or one on a classic trace, is 422 naming confidence."""
    answer = await Client().post_trace(body)
    assert answer.code == 422
    assert problem_fields(answer) == ["confidence"]


@pytest_twisted.ensureDeferred
async def test_an_unknown_mode_is_422() -> None:
    """mode is classic or multipath."""
    answer = await Client().post_trace({**MULTIPATH, "mode": "paris"})
    assert answer.code == 422
    assert "mode" in problem_fields(answer)


@pytest_twisted.ensureDeferred
async def test_accept_graphviz_gives_the_path_graph_in_dot() -> None:
    """Accept: text/vnd.graphviz answers DOT with the links the flows showed."""
    client = Client()
    trace_id = await _finished(client, MULTIPATH)
    answer = await client.request(
        "GET", f"/traces/{trace_id}", headers={"Accept": "text/vnd.graphviz"}
    )
    text = answer.body.decode()
    assert answer.header("content-type").startswith("text/vnd.graphviz")
    assert text.startswith("digraph ")
    assert f'"1 {ROUTERS[0]}" -> "2 {ROUTERS[1]}";' in text


@pytest_twisted.ensureDeferred
async def test_the_text_report_of_a_multipath_trace_says_how_it_stopped() -> None:
    """The report adds a Multipath line with the confidence, probes and stop reason."""
    client = Client()
    trace_id = await _finished(client, {**MULTIPATH, "confidence": 99})
    answer = await client.request("GET", f"/traces/{trace_id}", headers={"Accept": "text/plain"})
    text = answer.body.decode()
    assert "Multipath: 99% confidence" in text
    assert "Stop: destination" in text
