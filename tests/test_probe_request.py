"""A probe request validates every value itself and names the field at fault."""

from __future__ import annotations

from typing import Any

import mtrd
import pytest
from mtrd.engine.codec import format_probe
from mtrd.engine.errors import InvalidProbeRequest
from mtrd.engine.probe import ProbeRequest, Protocol


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"target": "example.org"}, "target"),
        ({"target": "203.0.113.7", "ip_version": 6}, "ip_version"),
        ({"target": "203.0.113.7", "ip_version": 5}, "ip_version"),
        ({"target": "203.0.113.7", "ttl": 0}, "ttl"),
        ({"target": "203.0.113.7", "ttl": 256}, "ttl"),
        ({"target": "203.0.113.7", "ttl": True}, "ttl"),
        ({"target": "203.0.113.7", "ttl": "3"}, "ttl"),
        ({"target": "203.0.113.7", "protocol": "udp", "port": 0}, "port"),
        ({"target": "203.0.113.7", "protocol": "tcp", "port": 65536}, "port"),
        ({"target": "203.0.113.7", "port": 80}, "port"),
        ({"target": "203.0.113.7", "protocol": "udp", "local_port": 1023}, "local_port"),
        ({"target": "203.0.113.7", "protocol": "tcp", "local_port": 40000}, "local_port"),
        (
            {"target": "2001:db8::7", "protocol": "udp", "port": 33434, "local_port": 40000},
            "local_port",
        ),
        ({"target": "203.0.113.7", "timeout": 0}, "timeout"),
        ({"target": "203.0.113.7", "timeout": 1.5}, "timeout"),
        ({"target": "203.0.113.7", "size": 9001}, "size"),
        ({"target": "203.0.113.7", "tos": 256}, "tos"),
        ({"target": "203.0.113.7", "tos": -1}, "tos"),
        ({"target": "203.0.113.7", "source": "2001:db8::1"}, "source"),
        ({"target": "2001:db8::7", "source": "198.51.100.2"}, "source"),
        ({"target": "203.0.113.7", "source": "nowhere"}, "source"),
    ],
)
def test_invalid_values_name_their_field(fields: dict[str, Any], field: str) -> None:
    """Each out-of-range or mistyped value raises an error that names its field."""
    with pytest.raises(InvalidProbeRequest) as caught:
        ProbeRequest(**fields)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_unknown_protocol_is_refused() -> None:
    """A protocol mtr-packet has no name for is refused."""
    with pytest.raises(ValueError, match="sctp"):
        ProbeRequest("203.0.113.7", protocol="sctp")


def test_family_follows_the_target() -> None:
    """ip_version is taken from the target when it is not given."""
    assert ProbeRequest("203.0.113.7").ip_version == 4
    assert ProbeRequest("2001:db8::7").ip_version == 6


def test_addresses_are_written_canonically() -> None:
    """IPv6 targets and sources are normalised, so equal addresses compare equal."""
    request = ProbeRequest("2001:DB8:0::7", source="2001:db8:0:0::2")
    assert (request.target, request.source) == ("2001:db8::7", "2001:db8::2")


def test_defaults_match_mtr_packet() -> None:
    """Defaults are mtr-packet's own: icmp, TTL 255, 10 s."""
    request = ProbeRequest("203.0.113.7")
    assert (request.protocol, request.ttl, request.timeout) == (Protocol.ICMP, 255, 10)


@pytest.mark.parametrize(
    "fields",
    [
        {"target": "::1%lo ttl 3"},
        {"target": "fe80::1%eth0"},
        {"target": "fe80::1%1"},
        {"target": "2001:db8::7", "source": "2001:db8::1%lo"},
        {"target": "2001:db8::7", "source": "2001:db8::1%lo size 9"},
        {"target": "203.0.113.7\n"},
        {"target": " 203.0.113.7"},
        {"target": "2001:db8::7%\tx"},
    ],
)
def test_zone_ids_and_whitespace_are_refused_by_the_library_api(fields: dict[str, Any]) -> None:
    """The public ProbeRequest refuses zone ids and whitespace, whoever builds it."""
    with pytest.raises(mtrd.InvalidProbeRequest) as caught:
        mtrd.ProbeRequest(**fields)
    assert caught.value.field == ("source" if "source" in fields else "target")


@pytest.mark.parametrize(
    "fields",
    [
        {"target": "203.0.113.7"},
        {"target": "2001:db8::7", "protocol": "udp", "port": 33434, "size": 64, "tos": 8},
        {"target": "203.0.113.7", "protocol": "udp", "local_port": 2000, "source": "192.0.2.1"},
    ],
)
def test_at_ttl_is_the_same_request_built_with_that_ttl(fields: dict[str, Any]) -> None:
    """A trace's probe at another TTL equals one built from scratch, and both say their
    own TTL on the wire."""
    first = ProbeRequest(**fields, ttl=1)
    format_probe(7, first)
    other = first.at_ttl(9)
    assert other == ProbeRequest(**fields, ttl=9)
    assert format_probe(7, other) == format_probe(7, ProbeRequest(**fields, ttl=9))
    assert b" ttl 9 " in format_probe(7, other)
    assert format_probe(7, first) == format_probe(7, ProbeRequest(**fields, ttl=1))


@pytest.mark.parametrize("ttl", [0, 256, True])
def test_at_ttl_checks_the_ttl(ttl: int) -> None:
    """The TTL is the one value at_ttl changes: it is checked as the constructor checks it."""
    with pytest.raises(InvalidProbeRequest) as caught:
        ProbeRequest("203.0.113.7").at_ttl(ttl)
    assert caught.value.field == "ttl"
