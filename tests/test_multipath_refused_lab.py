"""Every protocol and family that cannot hold a flow is refused by a real ``mtrd serve``:
one test per combination, each a ``422`` naming the field at fault and saying why."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq

from tests.lab import Lab
from tests.mtrd_process import lab_mtrd
from tests.openapi import validate_response

pytestmark = pytest.mark.lab

TCP_WHY = "tcp probes take their sequence number as source port"
ICMP_WHY = "icmp probes carry their sequence number in the ICMP header"
IPV6_WHY = "multipath traces need IPv4: an IPv6 udp probe cannot fix both ports"


@pytest.fixture(scope="module")
def server(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """mtrd serving on loopback, its mtr-packet in the lab's client namespace."""
    folder: Path = tmp_path_factory.mktemp("refused")
    with lab_mtrd(lab, folder / "mtrd.log") as (url, _process):
        yield url


async def refused(server: str, lab: Lab, protocol: str, family: int) -> dict[str, Any]:
    """POST a multipath trace to a lab target; the problem it is refused with."""
    body = {
        "target": lab.targets(family)[120],
        "mode": "multipath",
        "protocol": protocol,
        "max_ttl": 8,
    }
    response = await treq.post(f"{server}/traces", json=body)
    content = await response.content()
    content_type = (response.headers.getRawHeaders("content-type") or [None])[0]
    validate_response("POST", "/traces", response.code, content_type, content)
    assert response.code == 422, content
    assert content_type == "application/problem+json"
    problem: dict[str, Any] = json.loads(content)
    return problem


def reasons(problem: dict[str, Any]) -> dict[str, str]:
    return {e["field"]: e["message"] for e in problem["errors"]}


@pytest_twisted.ensureDeferred
async def test_ipv4_tcp_is_refused_because_its_source_port_is_the_sequence(
    lab: Lab, server: str
) -> None:
    """IPv4 tcp: 422 on protocol, saying tcp's source port is its sequence."""
    found = reasons(await refused(server, lab, "tcp", 4))
    assert list(found) == ["protocol"]
    assert TCP_WHY in found["protocol"]


@pytest_twisted.ensureDeferred
async def test_ipv4_icmp_is_refused_because_its_sequence_changes_the_checksum(
    lab: Lab, server: str
) -> None:
    """IPv4 icmp: 422 on protocol, saying the sequence changes the ICMP checksum."""
    found = reasons(await refused(server, lab, "icmp", 4))
    assert list(found) == ["protocol"]
    assert ICMP_WHY in found["protocol"]


@pytest_twisted.ensureDeferred
async def test_ipv6_udp_is_refused_because_it_cannot_fix_both_ports(lab: Lab, server: str) -> None:
    """IPv6 udp: 422 on ip_version, saying both ports cannot be fixed."""
    found = reasons(await refused(server, lab, "udp", 6))
    assert list(found) == ["ip_version"]
    assert IPV6_WHY in found["ip_version"]


@pytest_twisted.ensureDeferred
async def test_ipv6_tcp_is_refused_for_its_protocol_and_its_family(lab: Lab, server: str) -> None:
    """IPv6 tcp: 422 naming both protocol and ip_version, each with its reason."""
    found = reasons(await refused(server, lab, "tcp", 6))
    assert sorted(found) == ["ip_version", "protocol"]
    assert TCP_WHY in found["protocol"]
    assert IPV6_WHY in found["ip_version"]


@pytest_twisted.ensureDeferred
async def test_ipv6_icmp_is_refused_for_its_protocol_and_its_family(lab: Lab, server: str) -> None:
    """IPv6 icmp: 422 naming both protocol and ip_version, each with its reason."""
    found = reasons(await refused(server, lab, "icmp", 6))
    assert sorted(found) == ["ip_version", "protocol"]
    assert ICMP_WHY in found["protocol"]
    assert IPV6_WHY in found["ip_version"]
