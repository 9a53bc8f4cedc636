"""Hold every packet of one netfilter queue for a while, then let it go (run in a namespace).

This kernel has no netem, so the lab delays a router's ICMP errors in user space: an
nftables rule in the router's namespace sends them to queue ``N`` (``queue num N``), and
this process, started in the same namespace, reads that queue over a plain netlink socket
(nfnetlink_queue, no library needed) and gives each packet its ``accept`` verdict ``delay``
seconds after it arrived. It prints ``ready`` once bound, and runs until killed.

    python delay.py QUEUE DELAY_SECONDS
"""

from __future__ import annotations

import heapq
import select
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
NF_ACCEPT = 1
_NLMSGHDR = struct.Struct("=IHHII")
_NFGENMSG = struct.Struct("=BBH")


def _attribute(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _message(kind: int, queue: int, family: int, attributes: bytes, seq: int) -> bytes:
    body = _NFGENMSG.pack(family, 0, socket.htons(queue)) + attributes
    header = _NLMSGHDR.pack(
        _NLMSGHDR.size + len(body), (NFNL_SUBSYS_QUEUE << 8) | kind, NLM_F_REQUEST, seq, 0
    )
    return header + body


def _packet_ids(data: bytes) -> list[int]:
    """The packet ids of every queued-packet message in one netlink read."""
    ids = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _, _, _ = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            break
        if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            at = offset + _NLMSGHDR.size + _NFGENMSG.size
            end = offset + length
            while at + 4 <= end:
                size, attribute = struct.unpack_from("=HH", data, at)
                if size < 4:
                    break
                if attribute & 0x7FFF == NFQA_PACKET_HDR:
                    ids.append(struct.unpack_from("!I", data, at + 4)[0])
                at += size + (-size % 4)
        offset += length + (-length % 4)
    return ids


def main(queue: int, delay: float) -> None:
    """Bind ``queue`` and accept each of its packets ``delay`` seconds after it came."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.bind((0, 0))
    bind = _attribute(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0, 0))
    params = _attribute(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))
    sock.send(_message(NFQNL_MSG_CONFIG, queue, socket.AF_UNSPEC, bind, 1))
    sock.send(_message(NFQNL_MSG_CONFIG, queue, socket.AF_UNSPEC, params, 2))
    print("ready", flush=True)
    held: list[tuple[float, int]] = []
    seq = 3
    while True:
        timeout = max(0.0, held[0][0] - time.monotonic()) if held else None
        readable, _, _ = select.select([sock], [], [], timeout)
        if readable:
            arrived = time.monotonic()
            for packet_id in _packet_ids(sock.recv(65536)):
                heapq.heappush(held, (arrived + delay, packet_id))
        now = time.monotonic()
        while held and held[0][0] <= now:
            _, packet_id = heapq.heappop(held)
            verdict = _attribute(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, packet_id))
            sock.send(_message(NFQNL_MSG_VERDICT, queue, socket.AF_UNSPEC, verdict, seq))
            seq += 1


if __name__ == "__main__":
    main(int(sys.argv[1]), float(sys.argv[2]))
