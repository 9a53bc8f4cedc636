"""The target policy: built-in refusals, deny over allow, an empty allow list allows all."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mtrd.tracing.policy import TargetPolicy, TargetRefused, embedded_ipv4, parse_networks


@pytest.mark.parametrize(
    ("address", "rule"),
    [
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("169.254.10.1", "link-local"),
        ("fe80::1", "link-local"),
        ("::ffff:224.0.0.1", "multicast"),
    ],
)
def test_never_meaningful_targets_are_refused_by_default(address: str, rule: str) -> None:
    """Unspecified, multicast, broadcast and link-local addresses are always refused."""
    with pytest.raises(TargetRefused) as refused:
        TargetPolicy().check(address)
    assert rule in refused.value.rule


@pytest.mark.parametrize("address", ["203.0.113.7", "2001:db8::7", "127.0.0.1", "::1"])
def test_ordinary_targets_pass_the_default_policy(address: str) -> None:
    """With no lists, any other address may be traced."""
    TargetPolicy().check(address)


def test_allow_list_limits_targets_to_its_networks() -> None:
    """With an allow list, an address outside it is refused, naming the rule."""
    policy = TargetPolicy(allow=parse_networks("203.0.113.0/24, 2001:db8::/32"))
    policy.check("203.0.113.200")
    policy.check("2001:db8:ff::1")
    with pytest.raises(TargetRefused, match="not in the allow list"):
        policy.check("198.51.100.1")


def test_deny_wins_over_allow() -> None:
    """An address in both lists is refused by the deny rule."""
    policy = TargetPolicy(
        allow=parse_networks("203.0.113.0/24"), deny=parse_networks("203.0.113.128/25")
    )
    with pytest.raises(TargetRefused, match=r"deny 203\.0\.113\.128/25"):
        policy.check("203.0.113.200")


def test_bad_cidr_is_refused_with_its_text() -> None:
    """A list entry that is not a network is reported."""
    with pytest.raises(ValueError, match="not a CIDR: 'nope'"):
        parse_networks("203.0.113.0/24,nope")


DENY_198 = TargetPolicy(deny=parse_networks("198.51.100.0/24"))


@pytest.mark.parametrize(
    ("address", "form"),
    [
        ("::ffff:198.51.100.1", "IPv4-mapped"),
        ("::198.51.100.1", "IPv4-compatible"),
        ("::ffff:0:198.51.100.1", "SIIT"),
        ("2002:c633:6401::1", "6to4"),
        ("2001:0:cb00:7101:0:ffff:39cc:9bfe", "Teredo client, bits inverted"),
        ("2001:0:c633:6401:0:ffff:1234:5678", "Teredo server"),
        ("64:ff9b::198.51.100.1", "NAT64 well-known"),
    ],
)
def test_deny_list_judges_an_ipv4_address_embedded_in_ipv6(address: str, form: str) -> None:
    """Every IPv4-in-IPv6 form is refused by a deny rule naming its IPv4 address."""
    with pytest.raises(TargetRefused, match=r"deny 198\.51\.100\.0/24") as refused:
        DENY_198.check(address)
    assert "198.51.100." in refused.value.rule, form


@pytest.mark.parametrize(
    "address",
    [
        "::203.0.113.1",
        "::ffff:0:203.0.113.1",
        "2002:cb00:7101::1",
        "2001:0:cb00:7101:0:ffff:34cc:9bfe",
        "64:ff9b::203.0.113.1",
    ],
)
def test_embedded_ipv4_outside_the_deny_list_passes(address: str) -> None:
    """An embedded IPv4 address the deny list does not name may be traced."""
    DENY_198.check(address)


def test_embedded_ipv4_is_held_to_the_never_rules() -> None:
    """A 6to4 address of a multicast group is refused as multicast."""
    with pytest.raises(TargetRefused, match=r"multicast .*embeds 224\.0\.0\.1"):
        TargetPolicy().check("2002:e000:1::1")


def test_embedded_ipv4_must_be_in_the_allow_list_too() -> None:
    """Allowing the NAT64 prefix does not allow an IPv4 address outside the allow list."""
    policy = TargetPolicy(allow=parse_networks("64:ff9b::/96, 203.0.113.0/24"))
    policy.check("64:ff9b::203.0.113.9")
    with pytest.raises(TargetRefused, match=r"not in the allow list \(embeds 198\.51\.100\.9\)"):
        policy.check("64:ff9b::198.51.100.9")


def test_loopback_is_not_read_as_ipv4_compatible() -> None:
    """::1 is loopback, not the IPv4-compatible form of 0.0.0.1."""
    TargetPolicy(deny=parse_networks("0.0.0.0/8")).check("::1")


def test_nat64_local_use_is_refused_unless_allowed() -> None:
    """A local-use NAT64 address hides its IPv4 position, so only an allow rule admits it."""
    with pytest.raises(TargetRefused, match="local-use"):
        TargetPolicy().check("64:ff9b:1:cb00:71:900::")
    TargetPolicy(allow=parse_networks("64:ff9b:1::/48")).check("64:ff9b:1:cb00:71:900::")


def test_nat64_local_use_judges_every_possible_position_against_the_deny_list() -> None:
    """An allowed local-use address is refused if any RFC 6052 position holds a denied IPv4."""
    policy = TargetPolicy(
        allow=parse_networks("64:ff9b:1::/48"), deny=parse_networks("198.51.100.0/24")
    )
    # The /56 layout: prefix 64:ff9b:1:00, IPv4 in bytes 7, 9, 10, 11.
    with pytest.raises(TargetRefused, match=r"198\.51\.100\.0/24 \(may embed 198\.51\.100\.1\)"):
        policy.check("64:ff9b:1:c6:33:6401::")
    policy.check("64:ff9b:1:cb:71:901::")


def _embeddings(v4: ipaddress.IPv4Address) -> list[ipaddress.IPv6Address]:
    """The IPv6 forms that carry ``v4``: compatible, SIIT, 6to4, NAT64 and Teredo (client)."""
    bits = int(v4)
    return [
        ipaddress.IPv6Address(bits),
        ipaddress.IPv6Address((0xFFFF << 32 << 16) | bits),
        ipaddress.IPv6Address((0x2002 << 112) | (bits << 80) | 1),
        ipaddress.IPv6Address((0x0064FF9B << 96) | bits),
        ipaddress.IPv6Address((0x20010000 << 96) | (0xCB007101 << 64) | (bits ^ 0xFFFFFFFF)),
    ]


@given(st.integers(min_value=2, max_value=2**32 - 1).map(ipaddress.IPv4Address))
def test_every_embedding_of_an_ipv4_address_yields_it(v4: ipaddress.IPv4Address) -> None:
    """Whatever the IPv4 address, each IPv6 form that carries it gives it back."""
    for v6 in _embeddings(v4):
        assert v4 in embedded_ipv4(v6), v6
