"""The target policy: built-in refusals, deny over allow, an empty allow list allows all."""

from __future__ import annotations

import pytest
from mtrd.tracing.policy import TargetPolicy, TargetRefused, parse_networks


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
