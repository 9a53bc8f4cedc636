"""Which addresses mtrd traces: checked on the resolved address, before any probe.

Some addresses are never a meaningful traceroute target and are always refused:
unspecified, multicast, broadcast and link-local. Beyond those, a deny list wins
over an allow list; an empty allow list allows every other address.
"""

from __future__ import annotations

import ipaddress

import attrs

from mtrd.engine.probe import address_of

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

NEVER: tuple[tuple[str, Network], ...] = (
    ("unspecified", ipaddress.ip_network("0.0.0.0/32")),
    ("unspecified", ipaddress.ip_network("::/128")),
    ("multicast", ipaddress.ip_network("224.0.0.0/4")),
    ("multicast", ipaddress.ip_network("ff00::/8")),
    ("broadcast", ipaddress.ip_network("255.255.255.255/32")),
    ("link-local", ipaddress.ip_network("169.254.0.0/16")),
    ("link-local", ipaddress.ip_network("fe80::/10")),
)


class TargetRefused(Exception):
    """The policy refuses this address; ``rule`` names the rule that did."""

    def __init__(self, address: str, rule: str) -> None:
        super().__init__(f"{address} is refused by the target policy: {rule}")
        self.address = address
        self.rule = rule


def parse_networks(text: str) -> tuple[Network, ...]:
    """Comma-separated CIDRs (a bare address is its own /32 or /128)."""
    networks = []
    for raw in text.split(","):
        item = raw.strip()
        if item:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"not a CIDR: {item!r}") from None
    return tuple(networks)


@attrs.frozen
class TargetPolicy:
    """Allow and deny lists of networks, on top of the built-in refusals."""

    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()

    def check(self, address: str) -> None:
        """Raise :class:`TargetRefused` naming the rule unless ``address`` may be traced."""
        ip = address_of(address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:a.b.c.d is judged as a.b.c.d
        for name, network in NEVER:
            if ip.version == network.version and ip in network:
                raise TargetRefused(address, f"{name} ({network}) is never a traceroute target")
        for network in self.deny:
            if ip.version == network.version and ip in network:
                raise TargetRefused(address, f"deny {network}")
        if self.allow and not any(
            ip.version == network.version and ip in network for network in self.allow
        ):
            raise TargetRefused(address, "not in the allow list")
