"""Figure 8: multipath discovery, mtrd against scamper's ``tracelb`` on the same lab.

``python -m bench.multipath '{"runs": N}'`` builds the multipath lab (tests/lab/multipath.py:
a 4-wide stage and a nested diamond), then, per confidence (95, 99), alternates ``runs``
scamper ``tracelb -P udp-sport`` runs (Debian's scamper, in the client namespace) with
``runs`` mtrd multipath traces (the library Tracer over a 2-worker ProbePool there).
For each run: the interfaces found, the probes sent, the seconds taken. The figure holds
when every mtrd run found every interface that any scamper run found and mtrd's median
probe count is at most scamper's. Prints one JSON line.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import time
from typing import Any

from mtrd.engine.pool import PoolConfig, ProbePool
from mtrd.engine.probe import Protocol
from mtrd.tracing.model import TraceMode, TraceRequest
from mtrd.tracing.tracer import Tracer
from twisted.internet import task
from twisted.internet.defer import Deferred

from tests.lab.multipath import TARGET, MultipathLab, expected_hops
from tests.test_jobs import StaticResolver

_ADDRESS = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b")
_PROBES = re.compile(r"(\d+) probes")


def scamper(lab: MultipathLab, confidence: int) -> dict[str, Any]:
    """One ``tracelb`` run: interfaces (the source left out), probes, seconds."""
    started = time.monotonic()
    done = subprocess.run(
        [
            *lab.netns_exec("mc"),
            "scamper",
            "-c",
            f"tracelb -P udp-sport -c {confidence}",
            "-O",
            "text",
            "-i",
            TARGET,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    seconds = time.monotonic() - started
    header, *body = done.stdout.splitlines()
    probes = _PROBES.search(header)
    found = {a for line in body for a in _ADDRESS.findall(line)}
    return {
        "interfaces": sorted(found),
        "probes": int(probes.group(1)) if probes else None,
        "seconds": round(seconds, 2),
    }


async def _mtrd(reactor: Any, lab: MultipathLab, confidence: int) -> dict[str, Any]:
    pool = ProbePool(
        reactor,
        PoolConfig(size=2, command=(*lab.netns_exec("mc"), "mtr-packet"), spread_above=0),
    )
    await pool.start()
    try:
        tracer = Tracer(reactor, pool, StaticResolver(TARGET), source_ipv4=lab.client_address)
        request = TraceRequest(
            TARGET,
            protocol=Protocol.UDP,
            mode=TraceMode.MULTIPATH,
            confidence=confidence,
            max_ttl=10,
            timeout=1,
        )
        started = time.monotonic()
        trace = await tracer.trace(request)
        seconds = time.monotonic() - started
    finally:
        await pool.stop()
    assert trace.multipath is not None
    return {
        "interfaces": sorted({r.address for hop in trace.hops for r in hop.responders}),
        "probes": trace.multipath.probes_sent,
        "seconds": round(seconds, 2),
        "stop_reason": trace.multipath.stop_reason,
    }


def mtrd(lab: MultipathLab, confidence: int) -> dict[str, Any]:
    """One mtrd multipath trace, on a reactor of its own run."""
    out: dict[str, Any] = {}

    def main(reactor: Any) -> Deferred[None]:
        async def go() -> None:
            out.update(await _mtrd(reactor, lab, confidence))

        return Deferred.fromCoroutine(go())

    try:
        task.react(main)
    except SystemExit as e:
        if e.code:
            raise
    return out


def run(runs: int) -> dict[str, Any]:
    """Both tools, ``runs`` times each per confidence, alternating; see the docstring."""
    truth = sorted(a for addresses in expected_hops().values() for a in addresses)
    result: dict[str, Any] = {"runs": runs, "topology_interfaces": len(truth)}
    with MultipathLab() as lab:
        for confidence in (95, 99):
            by_tool: dict[str, list[dict[str, Any]]] = {"scamper": [], "mtrd": []}
            for _ in range(runs):
                by_tool["scamper"].append(scamper(lab, confidence))
                by_tool["mtrd"].append(_in_subprocess(confidence, lab))
            scamper_found = set().union(*(set(r["interfaces"]) for r in by_tool["scamper"]))
            result[str(confidence)] = {
                "scamper": _summary(by_tool["scamper"], truth),
                "mtrd": _summary(by_tool["mtrd"], truth),
                "mtrd_runs_with_all_scamper_found": sum(
                    scamper_found <= set(r["interfaces"]) for r in by_tool["mtrd"]
                ),
                "runs_detail": by_tool,
            }
    return result


def _in_subprocess(confidence: int, lab: MultipathLab) -> dict[str, Any]:
    """A reactor runs once per process: each mtrd trace gets a process of its own."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.multipath", "--one", str(confidence), lab.prefix],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _summary(runs: list[dict[str, Any]], truth: list[str]) -> dict[str, Any]:
    return {
        "probes_median": statistics.median(r["probes"] for r in runs),
        "probes": [r["probes"] for r in runs],
        "seconds_median": statistics.median(r["seconds"] for r in runs),
        "runs_with_every_interface": sum(set(truth) <= set(r["interfaces"]) for r in runs),
    }


if __name__ == "__main__":
    if sys.argv[1] == "--one":
        existing = MultipathLab()
        existing.prefix = sys.argv[3]
        print(json.dumps(mtrd(existing, int(sys.argv[2]))))
    else:
        print(json.dumps(run(int(json.loads(sys.argv[1])["runs"]))))
