"""mtr-packet's wire format: pure functions, no I/O.

``format_probe`` turns a validated :class:`ProbeRequest` into one command line;
``parse_reply`` turns one reply line into a token and a :class:`ProbeReply`.
The parser knows every reply token of mtr 0.93 to 0.96 and never raises: a
line it cannot read becomes an ``unknown`` reply that carries the raw text.
"""

from __future__ import annotations

import ipaddress
import sys

from mtrd.engine.probe import MplsLabel, ProbeReply, ProbeRequest, Protocol, ReplyKind

CONTROL_TOKEN = 1
"""Token of the version check and of sequence-burning commands (never a probe's)."""

VERSION_COMMAND = f"{CONTROL_TOKEN} check-support feature version\n".encode()

# An address mtr-packet cannot decode: the command allocates a probe (and so a
# sequence number), then fails with invalid-argument before any packet is sent.
BURN_COMMAND = f"{CONTROL_TOKEN} send-probe ip-4 burn\n".encode()

_KINDS = {kind.value: kind for kind in ReplyKind if kind is not ReplyKind.UNKNOWN}
# Kinds whose arguments are name/value pairs (address, round-trip time, mpls).
_ANSWERS = frozenset(
    kind
    for kind in _KINDS.values()
    if kind
    not in (ReplyKind.FEATURE_SUPPORT, ReplyKind.INVALID_ARGUMENT, ReplyKind.UNEXPECTED_ERROR)
)

# Replies repeat the same few responders: each address text is parsed once.
_ADDRESS_CACHE_SIZE = 65536
_addresses: dict[tuple[str, str], str | None] = {}


def _address(family: str, text: str) -> str | None:
    """The canonical form of ``text`` if it is an address of ``family`` (ip-4/ip-6)."""
    key = (family, text)
    try:
        return _addresses[key]
    except KeyError:
        pass
    try:
        parsed = ipaddress.ip_address(text)
    except ValueError:
        canonical = None
    else:
        wanted = 4 if family == "ip-4" else 6
        canonical = sys.intern(str(parsed)) if parsed.version == wanted else None
    if len(_addresses) >= _ADDRESS_CACHE_SIZE:
        _addresses.clear()
    _addresses[key] = canonical
    return canonical


def format_probe(token: int, request: ProbeRequest) -> bytes:
    """Return the ``send-probe`` command line for ``request`` under ``token``."""
    if token < 1:
        raise ValueError("mtr-packet tokens start at 1 (token 0 marks framing errors)")
    family = "ip-4" if request.ip_version == 4 else "ip-6"
    parts = [str(token), "send-probe", family, request.target, "ttl", str(request.ttl)]
    parts += ["timeout", str(request.timeout)]
    if request.protocol is not Protocol.ICMP:
        parts += ["protocol", request.protocol.value]
    if request.source is not None:
        parts += ["local-" + family, request.source]
    optional = {
        "port": request.port,
        "local-port": request.local_port,
        "size": request.size,
        "tos": request.tos,
    }
    for name, value in optional.items():
        if value is not None:
            parts += [name, str(value)]
    return (" ".join(parts) + "\n").encode("ascii")


def _parse_mpls(text: str) -> tuple[MplsLabel, ...] | None:
    fields = text.split(",")
    if len(fields) % 4 != 0:
        return None
    try:
        numbers = [int(field) for field in fields]
    except ValueError:
        return None
    return tuple(
        MplsLabel(
            label=numbers[i],
            traffic_class=numbers[i + 1],
            bottom_of_stack=bool(numbers[i + 2]),
            ttl=numbers[i + 3],
        )
        for i in range(0, len(numbers), 4)
    )


def _unknown(token: int, line: str) -> tuple[int, ProbeReply]:
    return token, ProbeReply(kind=ReplyKind.UNKNOWN, raw=line)


def parse_reply(line: str) -> tuple[int, ProbeReply]:
    """Parse one reply line (without its newline) into ``(token, reply)``.

    Token 0 is returned when the line has no readable token.
    """
    words = line.split()
    if not words:
        return _unknown(0, line)
    try:
        token = int(words[0])
    except ValueError:
        return _unknown(0, line)
    if len(words) < 2 or words[1] not in _KINDS:
        return _unknown(token, line)
    kind = _KINDS[words[1]]
    if len(words) == 6 and words[4] == "round-trip-time" and kind in _ANSWERS:
        # The common shape, "7 ttl-expired ip-4 198.51.100.1 round-trip-time 312": read
        # directly (the general loop below would say the same, more slowly).
        family, value, rtt = words[2], words[3], words[5]
        if family in ("ip-4", "ip-6") and rtt.isascii() and rtt.isdigit():
            responder = _address(family, value)
            if responder is None:
                return _unknown(token, line)
            return token, ProbeReply(
                kind=kind,
                address=responder,
                ip_version=4 if family == "ip-4" else 6,
                rtt_us=int(rtt),
                raw=line,
            )
    arguments = words[2:]
    if kind in (ReplyKind.FEATURE_SUPPORT, ReplyKind.INVALID_ARGUMENT):
        detail = " ".join(arguments[1:] if kind is ReplyKind.FEATURE_SUPPORT else arguments)
        return token, ProbeReply(kind=kind, detail=detail or None, raw=line)
    if kind is ReplyKind.UNEXPECTED_ERROR:
        return token, ProbeReply(kind=kind, detail=" ".join(arguments) or None, raw=line)
    if len(arguments) % 2 != 0:
        return _unknown(token, line)
    address: str | None = None
    version: int | None = None
    rtt_us: int | None = None
    mpls: tuple[MplsLabel, ...] = ()
    for name, value in zip(arguments[::2], arguments[1::2], strict=True):
        if name in ("ip-4", "ip-6"):
            version = 4 if name == "ip-4" else 6
            address = _address(name, value)
            if address is None:
                return _unknown(token, line)
        elif name == "round-trip-time":
            if not (value.isascii() and value.isdigit()):
                return _unknown(token, line)
            rtt_us = int(value)
        elif name == "mpls":
            labels = _parse_mpls(value)
            if labels is None:
                return _unknown(token, line)
            mpls = labels
        # Other names are arguments a newer mtr-packet may add: ignore them.
    return token, ProbeReply(
        kind=kind, address=address, ip_version=version, rtt_us=rtt_us, mpls=mpls, raw=line
    )
