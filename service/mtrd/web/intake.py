"""Reading a trace request from decoded JSON: strict types, every field checked.

Errors are collected per field, so one answer names every field at fault.
"""

from __future__ import annotations

import re
from typing import Any

import attrs

from mtrd.engine.probe import Protocol, address_of
from mtrd.tracing.model import DEFAULT_PORTS, TraceMode, TraceRequest
from mtrd.tracing.redis.settings import parse_vantage
from mtrd.tracing.wait import MAX_FACTOR, WaitRule

MAX_TTL = 255
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_FIELDS = {f.name for f in attrs.fields(TraceRequest)} | {"vantage"}
_WAIT = {f.name for f in attrs.fields(WaitRule)}


class InvalidFields(ValueError):
    """Fields of a request are missing, mistyped or out of range."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{field}: {message}" for field, message in errors))
        self.errors = errors


def _is_int(value: object) -> bool:
    # JSON has one number type: as in JSON Schema, 3.0 is the integer 3 (but "3" is a string).
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def nesting_depth(raw: bytes) -> int:
    """How deeply arrays and objects nest in a JSON text (strings are skipped)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def valid_hostname(name: str) -> bool:
    """True for a syntactically valid DNS name (a trailing dot allowed)."""
    name = name.removesuffix(".")
    return 0 < len(name) <= 253 and all(_LABEL.match(label) for label in name.split("."))


@attrs.define
class _Reader:
    """Reads fields of one JSON object, collecting an error per field at fault."""

    body: dict[str, Any]
    errors: list[tuple[str, str]] = attrs.Factory(list)

    def integer(
        self, name: str, low: int, high: int, default: int | None, *, nullable: bool = False
    ) -> int | None:
        value = self.body.get(name, default)
        if value is None:
            if name in self.body and not nullable:
                self.errors.append((name, "must not be null"))
                return default
            return None
        if not _is_int(value):
            self.errors.append((name, "must be an integer"))
            return default
        if not low <= value <= high:
            self.errors.append((name, f"must be between {low} and {high}"))
            return default
        return int(value)

    def number(self, name: str, low: float, high: float, default: float) -> float:
        value = self.body.get(name, default)
        if value is None:
            self.errors.append((name, "must not be null"))
            return default
        if not _is_number(value):
            self.errors.append((name, "must be a number"))
            return default
        if not low <= value <= high:
            self.errors.append((name, f"must be between {low:g} and {high:g}"))
            return default
        return float(value)

    def target(self) -> tuple[str, int | None]:
        target = self.body.get("target")
        ip_version = self.body.get("ip_version")
        if ip_version is not None and (not _is_int(ip_version) or ip_version not in (4, 6)):
            self.errors.append(("ip_version", "must be 4 or 6"))
            ip_version = None
        if target is None:
            self.errors.append(("target", "is required"))
            return "", ip_version
        if not isinstance(target, str):
            self.errors.append(("target", "must be a string"))
            return "", ip_version
        if "%" in target:
            self.errors.append(("target", "scoped addresses (with a zone index) are not supported"))
            return target, ip_version
        try:
            literal = address_of(target)
        except ValueError:
            if not valid_hostname(target):
                self.errors.append(("target", "must be an IPv4 or IPv6 address or a hostname"))
        else:
            if ip_version is not None and literal.version != ip_version:
                self.errors.append(("ip_version", f"{target} is not an IPv{ip_version} address"))
        return target, ip_version

    def vantage(self) -> str | None:
        value = self.body.get("vantage")
        if value is None:
            if "vantage" in self.body:
                self.errors.append(("vantage", "must not be null"))
            return None
        if not isinstance(value, str):
            self.errors.append(("vantage", "must be a string"))
            return None
        try:
            return parse_vantage(value)
        except ValueError as e:
            self.errors.append(("vantage", str(e)))
            return None

    def wait(self) -> WaitRule:
        value = self.body.get("wait")
        if value is None:
            if "wait" in self.body:
                self.errors.append(("wait", "must not be null"))
            return WaitRule()
        if not isinstance(value, dict):
            self.errors.append(("wait", "must be an object with here and near"))
            return WaitRule()
        inner = _Reader(value)
        inner.errors += [(f"wait.{name}", "unknown field") for name in value if name not in _WAIT]
        inner.errors += [(f"wait.{name}", "is required") for name in _WAIT if name not in value]
        default = WaitRule()
        here = inner.number("here", 0, MAX_FACTOR, default.here)
        near = inner.number("near", 0, MAX_FACTOR, default.near)
        self.errors += [
            (name if name.startswith("wait.") else f"wait.{name}", message)
            for name, message in inner.errors
        ]
        return WaitRule(here=here, near=near)

    def protocol(self) -> tuple[Protocol, int | None]:
        try:
            protocol = Protocol(self.body.get("protocol", "icmp"))
        except (ValueError, TypeError):
            self.errors.append(("protocol", "must be one of icmp, udp, tcp"))
            return Protocol.ICMP, None
        if protocol is Protocol.ICMP:
            if "port" in self.body:
                self.errors.append(("port", "icmp probes have no port"))
            return protocol, None
        return protocol, self.integer("port", 1, 65535, DEFAULT_PORTS[protocol])


def _multipath(reader: _Reader, protocol: Protocol, target: str, ip_version: int | None) -> None:
    """Refuse what cannot hold a flow (see mtrd.tracing.multipath.run), saying why."""
    if protocol is not Protocol.UDP:
        why = (
            "tcp probes take their sequence number as source port, so each probe is a new flow"
            if protocol is Protocol.TCP
            else "icmp probes carry their sequence number in the ICMP header, which changes "
            "the checksum a load balancer may hash, and cannot be given a flow of their own"
        )
        reader.errors.append(("protocol", f"multipath traces need udp: {why}"))
    try:
        literal_version = address_of(target).version
    except ValueError:
        literal_version = None
    if 6 in (ip_version, literal_version):
        reader.errors.append(
            (
                "ip_version",
                "multipath traces need IPv4: an IPv6 udp probe cannot fix both ports (the "
                "sequence would ride in a checksum the kernel writes), so no flow holds",
            )
        )


@attrs.frozen
class Submission:
    """A POSTed trace: the normalised request, and the vantage asked for (None: this one's)."""

    request: TraceRequest
    vantage: str | None = None


def parse_submission(body: object) -> Submission:
    """Read a POSTed trace: the request and the vantage it names, or raise."""
    if not isinstance(body, dict):
        raise InvalidFields([("", "the body must be a JSON object")])
    reader = _Reader(body)
    reader.errors += [(name, "unknown field") for name in body if name not in _FIELDS]
    vantage = reader.vantage()
    target, ip_version = reader.target()
    protocol, port = reader.protocol()
    first_ttl = reader.integer("first_ttl", 1, MAX_TTL, 1)
    # The default reaches at least first_ttl: {"first_ttl": 40} alone is a fine request.
    max_ttl = reader.integer("max_ttl", 1, MAX_TTL, max(30, first_ttl or 1))
    if first_ttl is not None and max_ttl is not None and max_ttl < first_ttl:
        reader.errors.append(("max_ttl", "must be at least first_ttl"))
    mode = TraceMode.CLASSIC
    try:
        mode = TraceMode(body.get("mode", "classic"))
    except (ValueError, TypeError):
        reader.errors.append(("mode", "must be one of classic, multipath"))
    confidence = body.get("confidence", 95)
    if not _is_int(confidence) or confidence not in (95, 99):
        reader.errors.append(("confidence", "must be 95 or 99"))
        confidence = 95
    elif "confidence" in body and mode is not TraceMode.MULTIPATH:
        reader.errors.append(("confidence", "applies to multipath traces only"))
    if mode is TraceMode.MULTIPATH:
        _multipath(reader, protocol, target, ip_version)
    request = TraceRequest(
        target=target,
        ip_version=ip_version,
        protocol=protocol,
        port=port,
        first_ttl=first_ttl or 1,
        max_ttl=max_ttl or 30,
        probes=reader.integer("probes", 1, 100, 3) or 3,
        interval=reader.number("interval", 0, 60, 1.0),
        timeout=reader.integer("timeout", 1, 60, 2) or 2,
        size=reader.integer("size", 0, 9000, None, nullable=True),
        tos=reader.integer("tos", 0, 255, None, nullable=True),
        mode=mode,
        confidence=int(confidence),
        wait=reader.wait(),
    )
    if reader.errors:
        raise InvalidFields(reader.errors)
    return Submission(request, vantage)
