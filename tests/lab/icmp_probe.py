"""Send one ICMP echo request to each address given and say who answered.

Run inside a lab namespace (``ip netns exec NS python3 icmp_probe.py ...``) as root: it uses raw
sockets, so it needs no ``ping`` binary. Prints one JSON object per target, in the order given:
``{"target": ..., "kind": "reply" | "time-exceeded" | "unreachable" | "other" | null,
"responder": ADDR | null, "type": N | null, "code": N | null, "rtt_ms": X | null}``.

Standard library only: this file runs under whatever python3 the namespace is given.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import select
import socket
import struct
import time

ECHO_REQUEST = {4: 8, 6: 128}
ECHO_REPLY = {4: 0, 6: 129}
UNREACHABLE = {4: 3, 6: 1}
TIME_EXCEEDED = {4: 11, 6: 3}


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _echo_request(family: int, ident: int, seq: int) -> bytes:
    payload = b"mtrd-lab-probe"
    header = struct.pack("!BBHHH", ECHO_REQUEST[family], 0, 0, ident, seq)
    if family == 6:  # the kernel fills in the ICMPv6 checksum of raw ICMPv6 sockets
        return header + payload
    checksum = _checksum(header + payload)
    return struct.pack("!BBHHH", ECHO_REQUEST[family], 0, checksum, ident, seq) + payload


def _parse(family: int, packet: bytes, ident: int) -> tuple[int, int, int] | None:
    """Return (sequence, icmp type, icmp code) of an answer to one of our probes, else None."""
    if family == 4:
        packet = packet[(packet[0] & 0x0F) * 4 :]  # raw IPv4 sockets include the IP header
    if len(packet) < 8:
        return None
    icmp_type, code = packet[0], packet[1]
    if icmp_type == ECHO_REPLY[family]:
        got_ident, seq = struct.unpack("!HH", packet[4:8])
        return (seq, icmp_type, code) if got_ident == ident else None
    quoted = packet[8:]
    if family == 4:
        if len(quoted) < 20:
            return None
        quoted = quoted[(quoted[0] & 0x0F) * 4 :]
    else:
        quoted = quoted[40:]
    if len(quoted) < 8 or quoted[0] != ECHO_REQUEST[family]:
        return None
    got_ident, seq = struct.unpack("!HH", quoted[4:8])
    return (seq, icmp_type, code) if got_ident == ident else None


def _kind(family: int, icmp_type: int) -> str:
    if icmp_type == ECHO_REPLY[family]:
        return "reply"
    if icmp_type == TIME_EXCEEDED[family]:
        return "time-exceeded"
    if icmp_type == UNREACHABLE[family]:
        return "unreachable"
    return "other"


def probe(targets: list[str], ttl: int, timeout: float) -> list[dict[str, object]]:
    ident = os.getpid() & 0xFFFF
    sockets: dict[int, socket.socket] = {}
    for family, af, proto, level, option in (
        (4, socket.AF_INET, socket.IPPROTO_ICMP, socket.IPPROTO_IP, socket.IP_TTL),
        (6, socket.AF_INET6, socket.IPPROTO_ICMPV6, socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS),
    ):
        sock = socket.socket(af, socket.SOCK_RAW, proto)
        sock.setsockopt(level, option, ttl)
        sockets[family] = sock
    results: dict[int, dict[str, object]] = {}
    sent_at: dict[int, float] = {}
    for seq, target in enumerate(targets, start=1):
        family = ipaddress.ip_address(target).version
        results[seq] = {"target": target, "kind": None, "responder": None, "type": None,
                        "code": None, "rtt_ms": None}  # fmt: skip
        sent_at[seq] = time.monotonic()
        sockets[family].sendto(_echo_request(family, ident, seq), (target, 0))
    deadline = time.monotonic() + timeout
    pending = set(results)
    while pending and (remaining := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select(list(sockets.values()), [], [], remaining)
        for sock in readable:
            family = 4 if sock.family == socket.AF_INET else 6
            packet, address = sock.recvfrom(65535)
            parsed = _parse(family, packet, ident)
            if parsed is None or parsed[0] not in pending:
                continue
            seq, icmp_type, code = parsed
            pending.discard(seq)
            results[seq].update(
                kind=_kind(family, icmp_type),
                responder=address[0],
                type=icmp_type,
                code=code,
                rtt_ms=round((time.monotonic() - sent_at[seq]) * 1000, 3),
            )
    for sock in sockets.values():
        sock.close()
    return [results[seq] for seq in sorted(results)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ttl", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("targets", nargs="+")
    args = parser.parse_args()
    for result in probe(args.targets, args.ttl, args.timeout):
        print(json.dumps(result))


if __name__ == "__main__":
    main()
