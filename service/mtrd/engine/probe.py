"""Values that cross the engine's boundary: a probe request and the reply to it.

A :class:`ProbeRequest` checks every value itself, because mtr-packet silently
ignores unknown arguments and does not range-check all of them (an IPv4 TTL of
256 becomes 0). Replies are frozen values built by :mod:`mtrd.engine.codec`.
"""

from __future__ import annotations

import enum
import functools
import ipaddress

import attrs

from mtrd.engine.errors import InvalidProbeRequest

MAX_PACKET_SIZE = 9000
MIN_LOCAL_PORT = 1024


class Protocol(enum.StrEnum):
    """The transport a probe is sent with."""

    ICMP = "icmp"
    UDP = "udp"
    TCP = "tcp"


class ReplyKind(enum.StrEnum):
    """What became of a probe, in mtr-packet's own words (0.93 to 0.96)."""

    REPLY = "reply"  # the destination answered
    TTL_EXPIRED = "ttl-expired"  # a router on the path answered
    NO_REPLY = "no-reply"  # nothing came back within the timeout
    NO_ROUTE = "no-route"  # local send failed, or a router sent unreachable
    NO_ROUTE_NETWORK = "no-route-network"
    NO_ROUTE_HOST = "no-route-host"
    HOST_DOWN = "host-down"
    TCP_RESPONSE_TIMEOUT = "wait-tcp-respone-timeout"  # sic, as 0.96 spells it
    NETWORK_DOWN = "network-down"
    PROBES_EXHAUSTED = "probes-exhausted"
    PERMISSION_DENIED = "permission-denied"
    ADDRESS_IN_USE = "address-in-use"
    ADDRESS_NOT_AVAILABLE = "address-not-available"
    INVALID_ARGUMENT = "invalid-argument"
    UNEXPECTED_ERROR = "unexpected-error"
    UNKNOWN_COMMAND = "unknown-command"
    COMMAND_PARSE_ERROR = "command-parse-error"
    COMMAND_BUFFER_OVERFLOW = "command-buffer-overflow"
    FEATURE_SUPPORT = "feature-support"
    UNKNOWN = "unknown"  # a line this parser does not know; raw text kept


def _check_range(field: str, value: int | None, low: int, high: int) -> None:
    if value is None:
        return
    # bool is an int in Python; a JSON true must not pass as TTL 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidProbeRequest(field, f"must be an integer, got {value!r}")
    if not low <= value <= high:
        raise InvalidProbeRequest(field, f"must be between {low} and {high}, got {value}")


@functools.lru_cache(maxsize=4096)
def address_of(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``ipaddress.ip_address``, each text parsed once: a trace's target is read at intake,
    resolution and policy, and every probe names it and its source (raises ValueError)."""
    return ipaddress.ip_address(value)


@functools.lru_cache(maxsize=4096)
def _canonical(value: str) -> str:
    return str(address_of(value))


def _plain_address(field: str, value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    # Python reads "::1%lo ttl 3" as an address with a zone id; written to
    # mtr-packet, everything after the space would become arguments of its own.
    if not isinstance(value, str) or any(c.isspace() or not c.isprintable() for c in value):
        raise InvalidProbeRequest(field, f"not an IP address: {value!r}")
    try:
        address = address_of(value)
    except ValueError:
        raise InvalidProbeRequest(field, f"not an IP address: {value!r}") from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        raise InvalidProbeRequest(field, f"zone ids are not supported: {value!r}")
    return address


def _check_address(field: str, value: str | None, version: int) -> None:
    if value is None:
        return
    address = _plain_address(field, value)
    if address.version != version:
        raise InvalidProbeRequest(field, f"{value} is not an IPv{version} address")


def _normalise_address(value: str) -> str:
    try:
        return _canonical(value)
    except ValueError:
        return value


def _protocol(value: str) -> Protocol:
    # Protocol(value) costs an Enum lookup even when value already is one.
    return value if isinstance(value, Protocol) else Protocol(value)


def _normalise_optional_address(value: str | None) -> str | None:
    return None if value is None else _normalise_address(value)


@attrs.frozen
class ProbeRequest:
    """One probe: where to, how, and how long to wait. Every value is validated.

    ``ip_version`` is taken from ``target`` when omitted and must agree with it.
    Addresses with a zone id (``fe80::1%eth0``) or any whitespace are refused.
    ``port`` is the udp/tcp destination port (tcp defaults to 80 in mtr-packet);
    ``local_port`` fixes the udp source port (>= 1024). With both set, every
    udp probe keeps one 5-tuple, which keeps a trace on one ECMP path.
    """

    target: str = attrs.field(converter=_normalise_address)
    ttl: int = 255
    protocol: Protocol = attrs.field(default=Protocol.ICMP, converter=_protocol)
    port: int | None = None
    local_port: int | None = None
    source: str | None = attrs.field(default=None, converter=_normalise_optional_address)
    timeout: int = 10
    size: int | None = None
    tos: int | None = None
    ip_version: int = attrs.field(default=0)

    def __attrs_post_init__(self) -> None:
        address = _plain_address("target", self.target)
        if self.ip_version == 0:
            object.__setattr__(self, "ip_version", address.version)
        elif self.ip_version not in (4, 6):
            raise InvalidProbeRequest("ip_version", f"must be 4 or 6, got {self.ip_version!r}")
        elif self.ip_version != address.version:
            raise InvalidProbeRequest(
                "ip_version", f"{self.target} is not an IPv{self.ip_version} address"
            )
        _check_address("source", self.source, self.ip_version)
        _check_range("ttl", self.ttl, 1, 255)
        _check_range("port", self.port, 1, 65535)
        _check_range("local_port", self.local_port, MIN_LOCAL_PORT, 65535)
        _check_range("timeout", self.timeout, 1, 3600)
        _check_range("size", self.size, 0, MAX_PACKET_SIZE)
        _check_range("tos", self.tos, 0, 255)
        if self.protocol is Protocol.ICMP and self.port is not None:
            raise InvalidProbeRequest("port", "icmp probes have no port")
        if self.protocol is not Protocol.UDP and self.local_port is not None:
            raise InvalidProbeRequest("local_port", "only udp probes take a local port")
        if (
            self.ip_version == 6
            and self.protocol is Protocol.UDP
            and self.port is not None
            and self.local_port is not None
        ):
            # mtr-packet would carry the sequence in the udp checksum, but for IPv6
            # the kernel writes that checksum itself: no reply could be matched.
            raise InvalidProbeRequest(
                "local_port", "IPv6 udp probes cannot fix both port and local_port"
            )

    def at_ttl(self, ttl: int) -> ProbeRequest:
        """This probe sent with ``ttl``: a trace's probes differ in nothing else, and
        everything but the TTL is already checked."""
        _check_range("ttl", ttl, 1, 255)
        copy = object.__new__(ProbeRequest)
        for name in _FIELDS:
            object.__setattr__(copy, name, getattr(self, name))
        object.__setattr__(copy, "ttl", ttl)
        return copy


_FIELDS = tuple(field.name for field in attrs.fields(ProbeRequest))


@attrs.frozen
class MplsLabel:
    """One MPLS label stack entry quoted in an ICMP extension."""

    label: int
    traffic_class: int
    bottom_of_stack: bool
    ttl: int


@attrs.frozen
class ProbeReply:
    """What mtr-packet said about one probe.

    ``address`` is the responder (router or destination) when there is one,
    ``rtt_us`` the round-trip time in microseconds, ``raw`` the line as read.
    """

    kind: ReplyKind
    address: str | None = None
    ip_version: int | None = None
    rtt_us: int | None = None
    mpls: tuple[MplsLabel, ...] = ()
    detail: str | None = None
    raw: str = ""

    @property
    def rtt_ms(self) -> float | None:
        """Round-trip time in milliseconds, or None when nothing came back."""
        return None if self.rtt_us is None else self.rtt_us / 1000.0
