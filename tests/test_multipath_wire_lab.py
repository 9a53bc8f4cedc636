"""On the wire: which protocol and family let mtrd hold a flow (multipath's premise).

A load balancer hashes the addresses and the first four bytes of the transport header
(udp/tcp ports; for icmp, type, code and checksum). A flow holds when those stay the same
for every probe. mtr-packet is driven directly here (not through the pool, which refuses
an IPv6 udp probe with both ports fixed) and tcpdump shows what it sent.
"""

from __future__ import annotations

import subprocess
import time
from collections import defaultdict

import pytest

from tests.lab import Lab

pytestmark = pytest.mark.lab

PROBES_PER_COMBO = 3
# (name, family, send-probe arguments, whether a flow holds)
# tcp goes to the closed port: a refused connection sends nothing after the SYN.
COMBOS = [
    ("ipv4 udp, both ports fixed", 4, "protocol udp port 33434 local-port 20001", True),
    ("ipv4 tcp", 4, "protocol tcp port 8081", False),
    ("ipv4 icmp", 4, "protocol icmp", False),
    ("ipv6 udp, destination port fixed", 6, "protocol udp port 33434", False),
    ("ipv6 udp, source port fixed", 6, "protocol udp local-port 20001", False),
    ("ipv6 tcp", 6, "protocol tcp port 8081", False),
    ("ipv6 icmp", 6, "protocol icmp", False),
]


def _flow_keys(tcpdump_output: str) -> dict[str, list[str]]:
    """The first four transport bytes of each captured packet, by destination address."""
    keys: dict[str, list[str]] = defaultdict(list)
    packets: list[tuple[str, str]] = []
    for line in tcpdump_output.splitlines():
        if line.startswith("\t0x"):
            packets[-1] = (packets[-1][0], packets[-1][1] + "".join(line.split(":", 1)[1].split()))
        elif " > " in line:
            destination = line.split(" > ", 1)[1].split(": ", 1)[0]
            packets.append((destination, ""))
    for destination, data in packets:
        if data.startswith("4"):
            start = int(data[1], 16) * 4 * 2  # IHL, in hex digits
            address = destination.rsplit(".", 1)[0] if destination.count(".") == 4 else destination
        else:
            start = 40 * 2
            address = destination.rsplit(".", 1)[0] if "." in destination else destination
        keys[address].append(data[start : start + 8])
    return keys


def test_only_ipv4_udp_with_both_ports_fixed_holds_a_flow(lab: Lab) -> None:
    """Per combination, the hashed header bytes stay the same only for IPv4 udp with both
    ports fixed; every other combination changes them from probe to probe."""
    targets = {name: lab.targets(family)[40 + i] for i, (name, family, _, _) in enumerate(COMBOS)}
    commands, token = [], 1
    for name, family, arguments, _ in COMBOS:
        for _ in range(PROBES_PER_COMBO):
            commands.append(
                f"{token} send-probe ip-{family} {targets[name]} {arguments} ttl 64 timeout 1"
            )
            token += 1
    expression = " or ".join(f"dst host {t}" for t in targets.values())
    tcpdump = ["tcpdump", "--immediate-mode", "-i", "to-r1", "-n", "-l", "-x"]
    capture = subprocess.Popen(
        [*lab.netns_exec("c"), *tcpdump, "-c", str(len(commands)), expression],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert capture.stderr is not None
        while "listening" not in (line := capture.stderr.readline()):
            assert line, "tcpdump ended before it listened"
        time.sleep(0.5)  # "listening" comes a moment before the capture sees packets
        subprocess.run(
            [*lab.netns_exec("c"), "mtr-packet"],
            input="\n".join(commands) + "\n",
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        # tcpdump ends by itself once it has seen every probe (-c).
        out, _ = capture.communicate(timeout=10)
    finally:
        if capture.poll() is None:
            capture.terminate()
            capture.communicate(timeout=10)
    keys = _flow_keys(out)
    for name, _, _, holds in COMBOS:
        seen = keys[targets[name]]
        assert len(seen) == PROBES_PER_COMBO, (name, seen, out)
        assert (len(set(seen)) == 1) is holds, (name, seen)


def test_ipv6_udp_with_both_ports_fixed_gets_no_matched_reply(lab: Lab) -> None:
    """IPv6 udp with both ports fixed would hold a flow, but no reply finds its probe (the
    kernel writes the checksum the sequence should ride in): mtr-packet says no-reply."""
    target = lab.targets(6)[60]
    done = subprocess.run(
        [*lab.netns_exec("c"), "mtr-packet"],
        input=f"1 send-probe ip-6 {target} protocol udp port 33434 local-port 20001 timeout 1\n"
        f"2 send-probe ip-6 {target} protocol udp port 33434 timeout 1\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    replies = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert replies["1"].startswith("no-reply")
    assert replies["2"].startswith("reply")
