"""The wire format: commands from requests, replies from lines."""

from __future__ import annotations

import ipaddress

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mtrd.engine.codec import BURN_COMMAND, VERSION_COMMAND, format_probe, parse_reply
from mtrd.engine.probe import MplsLabel, ProbeReply, ProbeRequest, Protocol, ReplyKind

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)


@st.composite
def requests(draw: st.DrawFn) -> ProbeRequest:
    """Any valid probe request."""
    protocol = draw(st.sampled_from(Protocol))
    version = draw(st.sampled_from([4, 6]))
    address = ipv4 if version == 4 else ipv6
    port = None if protocol is Protocol.ICMP else draw(st.none() | st.integers(1, 65535))
    local_port = draw(st.none() | st.integers(1024, 65535)) if protocol is Protocol.UDP else None
    if version == 6 and port is not None:
        local_port = None  # refused for IPv6: the kernel owns the udp checksum
    return ProbeRequest(
        target=draw(address),
        ttl=draw(st.integers(1, 255)),
        protocol=protocol,
        port=port,
        local_port=local_port,
        source=draw(st.none() | address),
        timeout=draw(st.integers(1, 3600)),
        size=draw(st.none() | st.integers(0, 9000)),
        tos=draw(st.none() | st.integers(0, 255)),
    )


def read_command(line: bytes) -> tuple[int, dict[str, str]]:
    """Read a send-probe line back the way mtr-packet does: token, then name/value pairs."""
    assert line.endswith(b"\n")
    words = line.decode("ascii").split()
    assert words[1] == "send-probe"
    assert len(words[2:]) % 2 == 0
    return int(words[0]), dict(zip(words[2::2], words[3::2], strict=True))


@given(st.integers(2, 2**31 - 1), requests())
def test_format_probe_round_trips(token: int, request: ProbeRequest) -> None:
    """Every field of a request comes back from its command line."""
    line = format_probe(token, request)
    read_token, arguments = read_command(line)
    family = f"ip-{request.ip_version}"
    assert read_token == token
    assert arguments[family] == request.target
    assert int(arguments["ttl"]) == request.ttl
    assert int(arguments["timeout"]) == request.timeout
    assert arguments.get("protocol", "icmp") == request.protocol.value
    assert arguments.get("local-" + family) == request.source
    for name, value in [
        ("port", request.port),
        ("local-port", request.local_port),
        ("size", request.size),
        ("tos", request.tos),
    ]:
        assert arguments.get(name) == (None if value is None else str(value))
    assert len(line) < 4096
    assert len(arguments) <= 16


def test_format_probe_refuses_token_zero() -> None:
    """Token 0 is what mtr-packet uses for framing errors, so a probe never gets it."""
    with pytest.raises(ValueError, match="start at 1"):
        format_probe(0, ProbeRequest("203.0.113.7"))


def test_control_commands_use_token_one() -> None:
    """The version check and the burn command share the control token."""
    assert VERSION_COMMAND == b"1 check-support feature version\n"
    assert BURN_COMMAND.startswith(b"1 send-probe ip-4 ")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "7 reply ip-4 203.0.113.7 round-trip-time 1234",
            ProbeReply(ReplyKind.REPLY, "203.0.113.7", 4, 1234),
        ),
        (
            "8 ttl-expired ip-6 2001:db8:1::1 round-trip-time 77",
            ProbeReply(ReplyKind.TTL_EXPIRED, "2001:db8:1::1", 6, 77),
        ),
        ("9 no-reply", ProbeReply(ReplyKind.NO_REPLY)),
        ("10 no-route", ProbeReply(ReplyKind.NO_ROUTE)),
        (
            "11 no-route ip-4 198.51.100.9 round-trip-time 500",
            ProbeReply(ReplyKind.NO_ROUTE, "198.51.100.9", 4, 500),
        ),
        (
            "12 no-route-network ip-4 198.51.100.9 round-trip-time 5",
            ProbeReply(ReplyKind.NO_ROUTE_NETWORK, "198.51.100.9", 4, 5),
        ),
        (
            "13 no-route-host ip-6 2001:db8::9 round-trip-time 5",
            ProbeReply(ReplyKind.NO_ROUTE_HOST, "2001:db8::9", 6, 5),
        ),
        (
            "14 host-down ip-4 198.51.100.9 round-trip-time 5",
            ProbeReply(ReplyKind.HOST_DOWN, "198.51.100.9", 4, 5),
        ),
        ("15 wait-tcp-respone-timeout", ProbeReply(ReplyKind.TCP_RESPONSE_TIMEOUT)),
        ("16 network-down", ProbeReply(ReplyKind.NETWORK_DOWN)),
        ("17 probes-exhausted", ProbeReply(ReplyKind.PROBES_EXHAUSTED)),
        ("18 permission-denied", ProbeReply(ReplyKind.PERMISSION_DENIED)),
        ("19 address-in-use", ProbeReply(ReplyKind.ADDRESS_IN_USE)),
        ("20 address-not-available", ProbeReply(ReplyKind.ADDRESS_NOT_AVAILABLE)),
        ("21 invalid-argument", ProbeReply(ReplyKind.INVALID_ARGUMENT)),
        (
            "22 invalid-argument reason ip-version-not-supported",
            ProbeReply(ReplyKind.INVALID_ARGUMENT, detail="reason ip-version-not-supported"),
        ),
        ("23 unexpected-error errno 97", ProbeReply(ReplyKind.UNEXPECTED_ERROR, detail="errno 97")),
        ("24 unknown-command", ProbeReply(ReplyKind.UNKNOWN_COMMAND)),
        ("0 command-parse-error", ProbeReply(ReplyKind.COMMAND_PARSE_ERROR)),
        ("0 command-buffer-overflow", ProbeReply(ReplyKind.COMMAND_BUFFER_OVERFLOW)),
        ("1 feature-support support 0.95", ProbeReply(ReplyKind.FEATURE_SUPPORT, detail="0.95")),
    ],
)
def test_parse_reply_knows_every_token(line: str, expected: ProbeReply) -> None:
    """Each reply token of mtr 0.93 to 0.96 parses into its kind and arguments."""
    token, reply = parse_reply(line)
    assert token == int(line.split(maxsplit=1)[0])
    assert reply == ProbeReply(
        kind=expected.kind,
        address=expected.address,
        ip_version=expected.ip_version,
        rtt_us=expected.rtt_us,
        detail=expected.detail,
        raw=line,
    )


def test_parse_reply_reads_mpls_labels() -> None:
    """MPLS label stacks come back as labels, four numbers each."""
    _, reply = parse_reply(
        "5 ttl-expired ip-4 198.51.100.1 round-trip-time 10 mpls 16001,0,0,254,16002,5,1,253"
    )
    assert reply.mpls == (MplsLabel(16001, 0, False, 254), MplsLabel(16002, 5, True, 253))


def test_parse_reply_normalises_ipv6() -> None:
    """IPv6 responders are written canonically, whatever the spelling on the wire."""
    _, reply = parse_reply("5 reply ip-6 2001:DB8:0:0::7 round-trip-time 10")
    assert reply.address == "2001:db8::7"


@pytest.mark.parametrize(
    "line",
    [
        "",
        "   ",
        "abc reply",
        "5",
        "5 frobnicate",
        "5 reply ip-4 not-an-address round-trip-time 3",
        "5 reply ip-4 2001:db8::1 round-trip-time 3",
        "5 reply ip-4 203.0.113.7 round-trip-time -3",
        "5 reply ip-4 203.0.113.7 round-trip-time ²",
        "5 reply ip-4 203.0.113.7 round-trip-time",
        "5 reply ip-4 203.0.113.7 mpls 1,2,3",
    ],
)
def test_parse_reply_keeps_unreadable_lines_as_unknown(line: str) -> None:
    """A line the parser cannot read becomes an unknown reply carrying the raw text."""
    _, reply = parse_reply(line)
    assert reply.kind is ReplyKind.UNKNOWN
    assert reply.raw == line


def render_reply(token: int, reply: ProbeReply) -> str:
    """Write a reply the way mtr-packet does (the test's own formatter)."""
    words = [str(token), reply.kind.value]
    if reply.address is not None:
        words += [f"ip-{reply.ip_version}", reply.address, "round-trip-time", str(reply.rtt_us)]
    if reply.mpls:
        numbers = []
        for label in reply.mpls:
            numbers += [label.label, label.traffic_class, int(label.bottom_of_stack), label.ttl]
        words += ["mpls", ",".join(map(str, numbers))]
    return " ".join(words)


@st.composite
def network_replies(draw: st.DrawFn) -> ProbeReply:
    """A reply that carries a responder."""
    kind = draw(
        st.sampled_from(
            [ReplyKind.REPLY, ReplyKind.TTL_EXPIRED, ReplyKind.NO_ROUTE, ReplyKind.HOST_DOWN]
        )
    )
    version = draw(st.sampled_from([4, 6]))
    address = draw(ipv4 if version == 4 else ipv6)
    labels = draw(
        st.lists(
            st.builds(
                MplsLabel,
                st.integers(0, 2**20 - 1),
                st.integers(0, 7),
                st.booleans(),
                st.integers(0, 255),
            ),
            max_size=4,
        )
    )
    return ProbeReply(
        kind=kind,
        address=str(ipaddress.ip_address(address)),
        ip_version=version,
        rtt_us=draw(st.integers(0, 10**9)),
        mpls=tuple(labels),
    )


@given(st.integers(1, 2**31 - 1), network_replies())
def test_parse_reply_round_trips(token: int, reply: ProbeReply) -> None:
    """A reply rendered as mtr-packet writes it parses back to the same value."""
    line = render_reply(token, reply)
    assert parse_reply(line) == (token, ProbeReply(**{**_fields(reply), "raw": line}))


@given(st.integers(1, 2**31 - 1), network_replies(), st.sampled_from(["", " tos 0"]))
def test_common_reply_shape_reads_as_the_general_form(
    token: int, reply: ProbeReply, extra: str
) -> None:
    """The short cut for "N kind ip-4 A round-trip-time R" says what the general reader says
    (an unknown trailing argument sends the same line down the general path)."""
    plain = attrs.evolve(reply, mpls=())
    line = render_reply(token, plain)
    fast, general = parse_reply(line), parse_reply(line + extra)
    assert fast[0] == general[0] == token
    assert _fields(fast[1]) == _fields(general[1]) == _fields(plain)


def _fields(reply: ProbeReply) -> dict[str, object]:
    return {
        "kind": reply.kind,
        "address": reply.address,
        "ip_version": reply.ip_version,
        "rtt_us": reply.rtt_us,
        "mpls": reply.mpls,
        "detail": reply.detail,
    }


@given(st.binary(max_size=300))
def test_parse_reply_never_raises_on_bytes(data: bytes) -> None:
    """Arbitrary bytes, decoded as the worker decodes them, never make the parser raise."""
    line = data.decode("utf-8", "replace")
    token, reply = parse_reply(line)
    assert isinstance(token, int)
    assert reply.raw == line


@given(
    st.lists(
        st.sampled_from(["1", "0", "-5", "reply", "no-route", "ip-4", "ip-6", "mpls", "1,2,3,4"])
        | st.text(max_size=12),
        max_size=10,
    )
)
def test_parse_reply_never_raises_on_word_soup(words: list[str]) -> None:
    """Lines made of plausible words in any order never make the parser raise."""
    parse_reply(" ".join(words))
