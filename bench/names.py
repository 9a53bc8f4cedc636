"""Figure 8: what annotations cost end to end, with a warm name cache.

Two servers run the e2e workload (:mod:`bench.e2e`): one with ``--reverse-dns off`` and no
databases, one with reverse DNS through a loopback DNS server that names every lab address,
an ASN and a country database (built for the lab's documentation networks, as the tests
build them). Each gets the same warm-up (which fills the name cache), then their batches
alternate, ``rounds`` each (which one goes first alternating too), so the machine's drift
falls on both. Two ratios come out: of the median rates, and of mtrd's CPU per trace over
all batches (off / on). mtrd is CPU-bound in this workload (one Python core, figure 2),
so its rate follows its CPU per trace; on a machine shared with other work the rates of
single batches swing by a factor of two or more while the CPU per trace holds, so the
CPU ratio is the figure and the rate ratio is shown beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import e2e
from bench.common import ROOT, mtrd
from tests.mmdb import write_asn_db, write_country_db


@contextlib.contextmanager
def dns_server(names: dict[str, str]) -> Iterator[int]:
    """The loopback DNS server in a process of its own; yields its port."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.names_dns", json.dumps(names)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        yield int(process.stdout.readline())
    finally:
        process.terminate()
        process.wait(timeout=10)


def _median(batches: list[dict[str, Any]]) -> dict[str, Any]:
    return sorted(batches, key=lambda b: b["traces_per_s"])[len(batches) // 2]


def run(lab: Any, count: int, connections: int = 8, rounds: int = 5) -> dict[str, Any]:
    """Median traces/s without and with annotations, and their ratio."""
    targets = list(lab.targets(4)[:100])
    routers = {"198.51.100.1", "198.51.100.6", "198.51.100.10", lab.r3_address(4)}
    names = {a: f"h{i}.lab.example" for i, a in enumerate([*sorted(routers), *targets])}
    warm_up = max(len(targets), count // 5)  # every target once: the name cache is warm
    flags = e2e.server_flags(rounds * count + warm_up)
    with tempfile.TemporaryDirectory() as folder, dns_server(names) as port:
        asn_db = write_asn_db(Path(folder) / "asn.mmdb")
        geo_db = write_country_db(Path(folder) / "geo.mmdb")
        annotated = [
            "--dns-servers", f"127.0.0.1:{port}", "--asn-db", str(asn_db),
            "--geo-db", str(geo_db),
        ]  # fmt: skip
        with (
            mtrd(lab.netns_exec("c"), "names-off", *flags, "--reverse-dns", "off") as bare,
            mtrd(lab.netns_exec("c"), "names-on", *flags, *annotated) as named,
        ):
            for server in (bare, named):
                asyncio.run(e2e.submit(server, targets, warm_up, connections))
                asyncio.run(e2e.wait_idle(server, limit=60 + warm_up / 10))
            off: list[dict[str, Any]] = []
            on: list[dict[str, Any]] = []
            for i in range(rounds):
                # Which goes first alternates: a drift within a round falls on both.
                pair = [(bare, off), (named, on)]
                for server, batches in pair if i % 2 == 0 else reversed(pair):
                    batches.append(e2e._batch(server, targets, count, connections))
    without, with_names = _median(off), _median(on)
    cpu_off = sum(b["server_cpu_s"] for b in off) / (rounds * count)
    cpu_on = sum(b["server_cpu_s"] for b in on) / (rounds * count)
    return {
        "request": e2e.REQUEST,
        "traces": count,
        "rounds": rounds,
        "off_traces_per_s": without["traces_per_s"],
        "on_traces_per_s": with_names["traces_per_s"],
        "off_cpu_s_per_trace": cpu_off,
        "on_cpu_s_per_trace": cpu_on,
        "cpu_ratio": cpu_off / cpu_on,
        "rate_ratio": with_names["traces_per_s"] / without["traces_per_s"],
        "rounds_off": [round(b["traces_per_s"], 1) for b in off],
        "rounds_on": [round(b["traces_per_s"], 1) for b in on],
        "statuses_on": with_names["statuses"],
    }
