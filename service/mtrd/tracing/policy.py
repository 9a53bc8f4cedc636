"""Which addresses mtrd traces: checked on the resolved address, before any probe.

Some addresses are never a meaningful traceroute target and are always refused:
unspecified, multicast, broadcast and link-local. Beyond those, a deny list wins
over an allow list; an empty allow list allows every other address.

An IPv6 address that carries an IPv4 address (see :func:`embedded_ipv4`) reaches
that IPv4 address on a network that translates, so it is judged as every address
it stands for: an IPv4-mapped address only as its IPv4 address (it is one), the
other forms as the IPv6 address and each embedded IPv4 address. Each of those must
pass the built-in refusals, the deny list and (when there is one) the allow list.
A NAT64 local-use address (64:ff9b:1::/48) does not show where its IPv4 address
sits, so it is refused unless the allow list names it, and then every place the
IPv4 address could sit is judged against the deny list.
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


IPv4_COMPATIBLE = ipaddress.IPv6Network("::/96")
SIIT = ipaddress.IPv6Network("::ffff:0:0:0/96")
SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
TEREDO = ipaddress.IPv6Network("2001::/32")
NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")
# RFC 6052 prefix lengths a local-use NAT64 prefix inside 64:ff9b:1::/48 may have;
# which one a network uses is not visible in the address, so all are judged.
LOCAL_USE_PREFIX_LENGTHS = (48, 56, 64, 96)


def _rfc6052_ipv4(ip: ipaddress.IPv6Address, prefix_length: int) -> ipaddress.IPv4Address:
    # Bits 64..71 (the "u" octet) never carry address bits, so the IPv4 address
    # straddles them for prefixes shorter than /64.
    packed = ip.packed
    if prefix_length == 96:
        return ipaddress.IPv4Address(packed[12:16])
    start = prefix_length // 8
    octets = [i for i in range(start, 16) if i != 8][:4]
    return ipaddress.IPv4Address(bytes(packed[i] for i in octets))


def embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 addresses an IPv6 address carries, other than IPv4-mapped: IPv4-compatible
    ::/96 (but :: and ::1), SIIT ::ffff:0:0:0/96, 6to4 2002::/16, Teredo 2001::/32 (server
    and client, the client's bits inverted), NAT64 64:ff9b::/96 and local-use 64:ff9b:1::/48."""
    found: list[ipaddress.IPv4Address] = []
    if (ip in IPv4_COMPATIBLE and int(ip) > 1) or ip in SIIT or ip in NAT64_WELL_KNOWN:
        found.append(ipaddress.IPv4Address(ip.packed[12:16]))
    elif ip in SIX_TO_FOUR:
        found.append(ipaddress.IPv4Address(ip.packed[2:6]))
    elif ip in TEREDO:
        server, client = ip.teredo or (None, None)
        if server is not None and client is not None:
            found += [server, client]
    elif ip in NAT64_LOCAL_USE:
        found += [_rfc6052_ipv4(ip, length) for length in LOCAL_USE_PREFIX_LENGTHS]
    return tuple(dict.fromkeys(found))


def forms_of(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
    """Every address ``ip`` stands for, as the policy judges them."""
    if isinstance(ip, ipaddress.IPv4Address):
        return (ip,)
    if ip.ipv4_mapped is not None:
        return (ip.ipv4_mapped,)  # ::ffff:a.b.c.d is a.b.c.d
    return (ip, *embedded_ipv4(ip))


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
        written = address_of(address)
        if isinstance(written, ipaddress.IPv6Address) and written in NAT64_LOCAL_USE:
            self._check_local_use(address, written)
            return
        for ip in forms_of(written):
            # ``via`` names the embedded address that was judged, so the refusal says why.
            self._check_one(address, ip, "" if ip == written else f" (embeds {ip})")

    def _check_local_use(self, address: str, ip: ipaddress.IPv6Address) -> None:
        if not any(ip.version == network.version and ip in network for network in self.allow):
            raise TargetRefused(
                address,
                f"NAT64 local-use ({NAT64_LOCAL_USE}) hides where its IPv4 address sits: "
                "refused unless the allow list names it",
            )
        for embedded in embedded_ipv4(ip):
            for network in self.deny:
                if embedded.version == network.version and embedded in network:
                    raise TargetRefused(address, f"deny {network} (may embed {embedded})")

    def _check_one(
        self, address: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, via: str
    ) -> None:
        for name, network in NEVER:
            if ip.version == network.version and ip in network:
                raise TargetRefused(
                    address, f"{name} ({network}) is never a traceroute target{via}"
                )
        for network in self.deny:
            if ip.version == network.version and ip in network:
                raise TargetRefused(address, f"deny {network}{via}")
        if self.allow and not any(
            ip.version == network.version and ip in network for network in self.allow
        ):
            raise TargetRefused(address, f"not in the allow list{via}")
