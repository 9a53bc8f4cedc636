"""The network-namespace lab itself, checked with plain tools run inside its namespaces."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.lab import Lab
from tests.lab.fixtures import require_lab

pytestmark = pytest.mark.lab

_CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
except ConnectionRefusedError:
    print("refused")
except OSError as error:
    print(f"error {error}")
else:
    print("open")
"""


def _connect(lab: Lab, address: str, port: int) -> str:
    argv = [sys.executable, "-c", _CONNECT, address, str(port)]
    return lab.run("c", argv).stdout.strip()


def _names(lab: Lab) -> set[str]:
    return {lab.netns(node) for node in ("c", "r1", "r2a", "r2b", "r3", "d", "v")}


def _netns() -> set[str]:
    result = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in result.stdout.splitlines() if line.strip()}


@pytest.mark.parametrize("family", [4, 6])
def test_client_reaches_every_target(lab: Lab, family: int) -> None:
    """Every target answers an echo request from the client."""
    results = lab.probe("c", lab.targets(family))
    assert [r.responder for r in results] == list(lab.targets(family))


@pytest.mark.parametrize("family", [4, 6])
def test_each_ttl_answers_from_the_expected_router(lab: Lab, family: int) -> None:
    """TTL 1 to 4 are answered by r1, r2a or r2b, r3, then the target itself."""
    target = lab.targets(family)[5]
    for ttl in range(1, 5):
        (result,) = lab.probe("c", [target], ttl=ttl)
        assert result.kind == ("reply" if ttl == 4 else "time-exceeded")
        assert result.responder in lab.expected_responders(family, ttl, target)


@pytest.mark.parametrize("family", [4, 6])
def test_the_second_vantage_sees_its_own_path(lab: Lab, family: int) -> None:
    """From v, TTL 1 to 3 are answered by r2b, r3, then the target: not c's path."""
    target = lab.targets(family)[9]
    expected = lab.vantage_hops(family, target)
    for ttl, responders in enumerate(expected, start=1):
        (result,) = lab.probe("v", [target], ttl=ttl)
        assert result.kind == ("reply" if ttl == len(expected) else "time-exceeded")
        assert result.responder in responders
    assert not expected[0] & lab.expected_responders(family, 1, target)


@pytest.mark.parametrize("family", [4, 6])
def test_ecmp_spreads_targets_over_both_branches(lab: Lab, family: int) -> None:
    """At TTL 2 some targets are answered by r2a and others by r2b."""
    results = lab.probe("c", lab.targets(family)[:32], ttl=2)
    assert {r.responder for r in results} == lab.ecmp_responders(family)


@pytest.mark.parametrize("family", [4, 6])
def test_blackhole_target_gets_no_answer(lab: Lab, family: int) -> None:
    """Probes to the blackholed prefix get nothing back."""
    (result,) = lab.probe("c", [lab.blackhole_target(family)], timeout=0.5)
    assert result.kind is None


@pytest.mark.parametrize("family", [4, 6])
def test_unreachable_target_gets_unreachable_from_r3(lab: Lab, family: int) -> None:
    """Probes to the unreachable prefix get ICMP destination unreachable from r3."""
    (result,) = lab.probe("c", [lab.unreachable_target(family)])
    assert (result.kind, result.responder, result.code) == (
        "unreachable",
        lab.r3_address(family),
        0,
    )


@pytest.mark.parametrize("family", [4, 6])
def test_open_tcp_port_accepts(lab: Lab, family: int) -> None:
    """The destination accepts connections on the open port."""
    assert _connect(lab, lab.targets(family)[-1], lab.open_tcp_port) == "open"


@pytest.mark.parametrize("family", [4, 6])
def test_closed_tcp_port_refuses(lab: Lab, family: int) -> None:
    """The destination refuses connections on the closed port."""
    assert _connect(lab, lab.targets(family)[-1], lab.closed_tcp_port) == "refused"


def test_silent_router_sends_no_time_exceeded(lab: Lab) -> None:
    """A silenced r3 leaves TTL 3 unanswered, and answers again afterwards."""
    targets = [lab.targets(4)[0], lab.targets(6)[0]]
    with lab.silent("r3"):
        assert [r.kind for r in lab.probe("c", targets, ttl=3, timeout=0.5)] == [None, None]
    assert [r.kind for r in lab.probe("c", targets, ttl=3)] == ["time-exceeded"] * 2


def test_icmp_rate_limit_drops_a_burst(lab: Lab) -> None:
    """With rate limits on, r1 answers only a few of a burst of TTL-1 probes."""
    burst = [lab.targets(4)[0]] * 100
    with lab.icmp_rate_limited():
        limited = lab.probe("c", burst, ttl=1, timeout=0.5)
    unlimited = lab.probe("c", burst, ttl=1, timeout=0.5)
    assert sum(r.kind is not None for r in limited) < 20
    assert all(r.kind == "time-exceeded" for r in unlimited)


def test_two_labs_get_different_names_and_tear_down() -> None:
    """Two labs built at once use different namespaces and leave none behind."""
    require_lab()
    with Lab() as first, Lab() as second:
        assert first.client_netns != second.client_netns
        assert _names(first) | _names(second) <= _netns()
    assert not (_names(first) | _names(second)) & _netns()
