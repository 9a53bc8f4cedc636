"""``python -m bench --mode full|small``: one lab, every figure, one report.

Builds the namespace lab, runs each part (engine, e2e, latency, sse, memory, http, redis) in
turn, tears the lab down whatever happens, and writes ``bench/results/<name>.json`` and
``.md`` (``latest`` for full, ``small`` for small). Missing a target is a finding, not a
failure: the exit status is non-zero only when a part itself broke (an exception).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import e2e, http, latency, monitors, names, peers, replicas, sse
from bench.common import RESULTS, ROOT

MODES: dict[str, dict[str, Any]] = {
    "small": {
        "engine_probes": 2000,
        "engine_rounds": 10,
        "e2e_traces": 50,
        "latency_samples": 10,
        "sse_subscribers": 50,
        "sse_probes": 3,
        "memory_traces": 500,
        "http_stored": 10,
        "http_seconds": 2,
        "redis_traces": 50,
        "monitors": 20,
        "monitors_seconds": 10,
        "multipath_runs": 0,  # scamper's tracelb takes ~80 s a run here: full mode only
        "names_traces": 50,
        "peers_samples": 3,
        "peers_traces": 128,
        "profile": False,
    },
    "full": {
        "engine_probes": 40000,
        "engine_rounds": 200,
        "e2e_traces": 1000,
        "latency_samples": 200,
        "sse_subscribers": 1000,
        "sse_probes": 5,
        "memory_traces": 10000,
        "http_stored": 100,
        "http_seconds": 20,
        "redis_traces": 1000,
        "monitors": 200,
        "monitors_seconds": 60,
        "multipath_runs": 5,
        "names_traces": 1000,
        "peers_samples": 15,
        "peers_traces": 1024,
        "profile": True,
    },
}
WINDOW = 512
ON_REQUEST = {"redis_7a"}  # parts that run only when --parts names them


def machine() -> dict[str, Any]:
    """The facts a figure depends on."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    version = subprocess.run(
        ["mtr-packet"],
        input="1 check-support feature version\n",
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    ).stdout.split()
    load = Path("/proc/loadavg").read_text().split()[:3]
    return {
        "nproc": len(__import__("os").sched_getaffinity(0)),
        "cpu": cpu,
        "python": platform.python_version(),
        "mtr_packet": version[-1] if version else None,
        "kernel": platform.release(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "loadavg_at_start": load,
    }


def subprocess_json(module: str, arg: str, timeout: float) -> dict[str, Any]:
    """Run ``python -m module arg`` and read its JSON answer."""
    done = subprocess.run(
        [sys.executable, "-m", module, arg],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{module} failed ({done.returncode}): {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def run_parts(
    lab: Any, p: dict[str, Any], only: set[str] | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}

    def engine() -> dict[str, Any]:
        args = {
            "netns_exec": lab.netns_exec("c"),
            "targets": list(lab.targets(4)[:32]),
            "probes": p["engine_probes"],
            "window": WINDOW,
            "workers": [1, 2],
            "rounds": p["engine_rounds"],
        }
        return subprocess_json("bench.engine", json.dumps(args), timeout=400)

    def network_ms() -> float | None:
        return results.get("engine", {}).get("network_round_ms", {}).get("median")

    parts: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("engine", engine),
        ("e2e", lambda: e2e.run(lab, p["e2e_traces"], profile=p["profile"])),
        ("latency", lambda: latency.run(lab, p["latency_samples"], network_ms())),
        (
            "sse",
            lambda: sse.run(lab, p["sse_subscribers"], p["sse_probes"], 0.2, profile=p["profile"]),
        ),
        ("memory", lambda: subprocess_json("bench.memory", str(p["memory_traces"]), timeout=600)),
        ("http", lambda: http.run(lab, p["http_stored"], p["http_seconds"], profile=p["profile"])),
        ("redis", lambda: replicas.run(lab, p["redis_traces"])),
        # 7a alone (no 7b), for a quick re-run: only when named in --parts.
        ("redis_7a", lambda: replicas.run(lab, p["redis_traces"], scaling=False)),
        ("monitors", lambda: monitors.run(lab, p["monitors"], p["monitors_seconds"])),
        ("names", lambda: names.run(lab, p["names_traces"])),
        ("peers_silent", lambda: peers.silent_hop(lab, p["peers_samples"])),
        ("peers_e2e", lambda: peers.against_scamper(lab, p["peers_traces"])),
    ]
    if p["multipath_runs"]:
        # Its own lab (tests/lab/multipath.py), built and torn down by the part.
        parts.append(
            (
                "multipath",
                lambda: subprocess_json(
                    "bench.multipath", json.dumps({"runs": p["multipath_runs"]}), timeout=3600
                ),
            )
        )
    for name, part in parts:
        if (only is not None and name not in only) or (only is None and name in ON_REQUEST):
            continue
        started = time.monotonic()
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        try:
            results[name] = part()
            results[name]["bench_seconds"] = round(time.monotonic() - started, 1)
        except Exception:
            errors[name] = traceback.format_exc()
            print(f"bench: {name} broke:\n{errors[name]}", file=sys.stderr, flush=True)
    return results, errors


def figures(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Each figure against its target."""
    rows = []

    def row(name: str, measured: str, target: str, met: bool | None, bound: str) -> None:
        rows.append(
            {"figure": name, "measured": measured, "target": target, "met": met, "bound": bound}
        )

    if "engine" in r:
        e = r["engine"]
        bare, one, two = (
            e["bare"]["probes_per_s"],
            e["pool_1"]["probes_per_s"],
            e["pool_2"]["probes_per_s"],
        )
        row(
            "1. engine: pool / bare mtr-packet pipe (same probes, window)",
            f"{one:,.0f} vs {bare:,.0f} probes/s = {one / bare:.2f} (1 worker); "
            f"2 workers {two:,.0f} probes/s = {two / bare:.2f}",
            ">= 0.8",
            one / bare >= 0.8,
            BOUNDS["engine"],
        )
    if "e2e" in r:
        x = r["e2e"]
        row(
            "2a. end to end: traces/s (1000 x icmp, 3 probes/hop, 4 hops)"
            if x["traces"] >= 1000
            else f"2a. end to end: traces/s ({x['traces']} traces)",
            f"{x['traces_per_s']:,.0f} traces/s ({x['statuses']}; median of "
            f"{x.get('rounds', 1)} batches: "
            f"{', '.join(f'{v:,.0f}' for v in x.get('rounds_traces_per_s', [x['traces_per_s']]))})",
            ">= 1000",
            x["traces_per_s"] >= 1000,
            BOUNDS["e2e"],
        )
        row(
            "2b. end to end: server CPU per trace",
            f"{x['cpu_s_per_trace'] * 1000:.2f} ms"
            + (
                f"; mtr-packet workers meanwhile {x['engine_cpu_share']:.2f} of a core"
                if "engine_cpu_share" in x
                else ""
            ),
            "(report)",
            None,
            "mtrd process utime+stime; the mtr-packet workers' own CPU is counted apart",
        )
    if "latency" in r:
        x = r["latency"]
        over = x["over_network_ms"]
        row(
            "3. single-trace latency, POST -> done (1 probe/hop)",
            f"median {x['median_ms']:.1f} ms, p99 {x['p99_ms']:.1f} ms; network "
            f"{x['network_ms']:.2f} ms -> +{over:.1f} ms"
            if over is not None
            else f"median {x['median_ms']:.1f} ms",
            "within 20 ms of network",
            None if over is None else over <= 20,
            BOUNDS["latency"],
        )
    if "sse" in r:
        x = r["sse"]
        p99 = x["last_ms"]["p99"]
        row(
            f"4. SSE fan-out, {x['subscribers']} subscribers: reply -> last subscriber",
            f"p50 {x['last_ms']['p50']:.1f} ms, p99 {p99:.1f} ms (first->last spread p50 "
            f"{x['spread_ms']['p50']:.1f} ms)",
            "p99 < 100 ms",
            None if math.isnan(p99) else p99 < 100,
            BOUNDS["sse"],
        )
    if "memory" in r:
        x = r["memory"]
        per = x["rss_bytes_per_trace"]
        row(
            f"5. memory per stored trace (30 hops x 10 probes, {x['stored']:,} stored)",
            f"{per / 1000:.1f} KB RSS "
            f"({x['tracemalloc_bytes_per_trace'] / 1000:.1f} KB tracemalloc)",
            "<= 20 KB",
            per <= 20_000,
            BOUNDS["memory"],
        )
    if "http" in r:
        x = r["http"]
        row(
            "6. GET /traces/{id} vs minimal Klein route (keep-alive, same body)",
            f"{x['mtrd']['requests_per_s']:,.0f} vs {x['klein_min']['requests_per_s']:,.0f} req/s "
            f"= {x['ratio']:.2f} (median of {x['rounds']} interleaved rounds: "
            f"{', '.join(f'{v:.2f}' for v in x['round_ratios'])})",
            ">= 0.7",
            x["ratio"] >= 0.7,
            BOUNDS["http"],
        )
    if "redis" in r or "redis_7a" in r:
        x = r.get("redis") or r["redis_7a"]
        batches = ", ".join(f"{v:.2f}" for v in x["round_ratios"])
        row(
            f"7a. end to end on the Redis store vs the memory store ({x['traces']} traces)",
            f"{x['redis']['traces_per_s']:,.0f} vs {x['memory']['traces_per_s']:,.0f} traces/s "
            f"= {x['ratio']:.2f} (medians of {x['rounds']} alternating batches; per pair: "
            f"{batches}){_cpu_and_posts(x)}",
            ">= 0.7",
            x["ratio"] >= 0.7,
            BOUNDS["redis"],
        )
    if "redis" in r:
        x = r["redis"]
        one, two = x["one_replica"], x["two_replicas"]
        row(
            "7b. two replicas of one vantage vs one (Redis store, "
            f"--max-running {x['spread_max_running']})",
            f"{two['traces_per_s']:,.0f} vs {one['traces_per_s']:,.0f} traces/s "
            f"= {x['scaling']:.2f} (traces per replica: {two['traces_per_replica']})",
            "(report)",
            None,
            BOUNDS["replicas"],
        )
    if "monitors" in r:
        x = r["monitors"]
        late = x["lateness_ms"]
        row(
            f"10. {x['monitors']} monitors every second for {x['seconds']:.0f} s: run lateness",
            f"p50 {late['p50']:.1f} ms, p99 {late['p99']:.1f} ms (max {late['max']:.1f}); "
            f"{x['runs_seen']:,} runs, {x['skipped']} skipped; mtrd CPU "
            f"{x['cpu_share']:.2f} of a core ({x['cpu_ms_per_run']:.2f} ms per run), "
            f"mtr-packet {x['workers_cpu_share']:.2f}",
            "no run skipped",
            x["skipped"] == 0,
            BOUNDS["monitors"],
        )
    if "multipath" in r:
        x = r["multipath"]
        for confidence in ("95", "99"):
            c = x[confidence]
            sc, mt = c["scamper"], c["mtrd"]
            row(
                f"11. multipath at {confidence}%: mtrd vs scamper tracelb "
                f"({x['runs']} runs each, {x['topology_interfaces']} interfaces)",
                f"probes median {mt['probes_median']} vs {sc['probes_median']}; seconds median "
                f"{mt['seconds_median']} vs {sc['seconds_median']}; every interface found in "
                f"{mt['runs_with_every_interface']} vs {sc['runs_with_every_interface']} runs; "
                f"mtrd found all scamper found in {c['mtrd_runs_with_all_scamper_found']} runs",
                "all scamper finds, probes <= scamper",
                c["mtrd_runs_with_all_scamper_found"] == x["runs"]
                and mt["probes_median"] <= sc["probes_median"],
                BOUNDS["multipath"],
            )
    if "names" in r:
        x = r["names"]
        row(
            f"9. annotations on / off, end to end, warm name cache ({x['traces']} traces)",
            f"CPU per trace {x['off_cpu_s_per_trace'] * 1000:.2f} off / "
            f"{x['on_cpu_s_per_trace'] * 1000:.2f} ms on = {x['cpu_ratio']:.2f} of the "
            f"throughput; median rates {x['on_traces_per_s']:,.0f} on vs "
            f"{x['off_traces_per_s']:,.0f} off = {x['rate_ratio']:.2f} (batches on "
            f"{x['rounds_on']}, off {x['rounds_off']})",
            ">= 0.90",
            x["cpu_ratio"] >= 0.9,
            BOUNDS["names"],
        )
    if "peers_silent" in r:
        x = r["peers_silent"]
        row(
            "8a. silent hop (r3 silent, 1 probe/hop, interval 0): POST -> finished",
            f"mtrd {x['mtrd_s'] * 1000:.1f} ms (trace {x['mtrd_trace_s'] * 1000:.1f} ms, HTTP "
            f"{x['mtrd_http_s'] * 1000:.1f} ms) vs traceroute -n -q1 "
            f"{x['traceroute_s'] * 1000:.1f} ms, scamper -q 1 -w 1 {x['scamper_s'] * 1000:.0f} ms "
            f"(medians of {x['samples']})",
            f"<= 1.5 x traceroute + HTTP = {x['target_s'] * 1000:.1f} ms",
            x["met"],
            BOUNDS["peers_silent"],
        )
    if "peers_e2e" in r:
        x = r["peers_e2e"]
        row(
            f"8b. end to end vs scamper ({x['traces']} traces, {x['clients']} polling clients)",
            f"mtrd {x['mtrd']['traces_per_s']:,.0f} vs scamper {x['scamper_traces_per_s']:,.0f} "
            f"traces/s = {x['ratio']:.2f}; CPU per trace mtrd {x['mtrd_cpu_ms_per_trace']:.2f} ms "
            f"(with mtr-packet) vs scamper {x['scamper_cpu_ms_per_trace']:.2f} ms",
            ">= 0.5",
            x["met"],
            BOUNDS["peers_e2e"],
        )
    return rows


# What bounds each figure: from the py-spy profiles of the full run (bench/results/latest.json
# keeps the top frames). Written by hand from that evidence; see the report.
BOUNDS = {
    "multipath": "probes: MDA-Lite's hop-level stopping reuses flows across hops where scamper "
    "applies MDA per vertex with node control; time: scamper waits between probes (its "
    "tracelb -W default), mtrd spaces a batch's probes 5 ms apart and waits only for the "
    "batch's replies",
    "engine": "1 worker: mtr-packet itself (its select loop and raw socket); the pool's work "
    "per probe (ledger, framing, one Deferred, a deadline heap instead of a timer per probe) "
    "keeps up with it. 2 workers are slower here: both raw sockets see every ICMP reply, and "
    "probes lost to the 1 s no-reply wait end the run late",
    "e2e": "one Python core: mtrd's CPU ~= wall time (1 POST, 16 probes, 16 hop updates, "
    "one final render per trace); mtr-packet takes under half of the other core (2b), the "
    "client a little. py-spy self time: socket and pipe writes, Deferred callbacks ~10%, the "
    "rest spread thin. Tried and dropped, measured A/B in one sitting: a plain callback "
    "object instead of a Deferred per probe (0.92-0.98 vs 0.85-0.88 ms CPU per trace), "
    "coalescing writes to mtr-packet (no measurable change). The machine's "
    "speed drifts by up to 20% between runs (0.8-1.35 ms CPU per trace for the same code), "
    "hence the median of 3 batches. Fixed on the way from 477/s: interval-0 "
    "rounds overlapped (24 probes per trace, now 8+4+4), a Trace value rebuilt per reply (hops "
    "now live in the channel and are snapshotted when read), prometheus_client's lock per "
    "count, a timer per probe, probes spread over both workers (now packed into the first: "
    "fewer wake-ups, burns off the hot path), an access-log write per request. Collecting "
    "young cycles every 50,000 allocations instead of 700 saved ~8% more but let memory "
    "grow in the soak test: not kept",
    "latency": "lab network ~0.2 ms; the rest is HTTP POST + SSE connect + reactor turns",
    "sse": "one socket write per subscriber (untilConcludes ~36% self); each event is "
    "encoded once for all subscribers (was 1000 encodes per event)",
    "memory": "the store keeps finished traces as frozen values (Hop, RttStats, JitterStats, "
    "Responders, boxed floats: ~590 bytes a hop), no longer as their rendered JSON (12.0 KB); "
    "responder addresses are interned and hop values have no weakref slot (26.9 KB before "
    "those). Flattening the hop's figures into Hop and expiring without a timer per trace "
    "would save about 2.3 KB; a packed form of finished hops more",
    "redis": "CPU: traces/s = CPU share / CPU per trace. Both replicas get about the same "
    "share of a core now (0.65-0.85, what the client, mtr-packet and redis-server leave on 2 "
    "cores); the Redis replica spends about 1.4x the memory store's CPU per trace (0.87 "
    "against 0.63 ms: socket writes to redis-server, txredisapi's per-command Deferreds, the "
    "trace codec; commands are packed by hiredis since the fifth session). Before "
    "2026-12-01 (third session) the runner started a 100 ms tick's claims at once and the "
    "probe workers' raw sockets dropped a round of replies (traces waiting out their 1 s "
    "timeout). See bench/results/redis-throughput.md",
    "replicas": "two Python processes on a 2-core machine that also runs mtr-packet, "
    "redis-server and the client: more than 2x is not possible here",
    "monitors": "not profiled yet; each run is a whole trace (8 probes, a stored trace, its "
    "events) plus the monitor's bookkeeping, and a run starts late when its timer waits "
    "behind the reactor's other work (bench/results/monitors.md: a first measurement)",
    "names": "per new address of a trace: a cache lookup and two in-memory MaxMind DB "
    "lookups; per responder in every render: five more JSON fields. The warm cache sends "
    "no DNS query",
    "peers_silent": "the adaptive wait gives r3's probe up 10 x the destination's round trip "
    "after the destination answered (the 5 ms floor here): the trace takes a few ms; the "
    "rest is the POST and the poll. Before it, one silent hop cost the 2 s timeout",
    "peers_e2e": "CPU in one Python process, which it fills: about 0.75 ms per trace "
    "(mtr-packet's replies and what they set off ~50 % of the samples, the HTTP requests "
    "~30 % with the trace's start inside the POST) against scamper's 0.04; 64 traces probe "
    "at once so that their probes fit one mtr-packet (two at once overflowed each other's "
    "raw sockets: lost rounds, 1 s tails). Details: bench/results/peers.md",
    "http": "twisted.web's request machinery and werkzeug routing, shared with the baseline; "
    "mtrd adds per request the access-log line (held and written in batches: a write per "
    "request to unbuffered stdout cost ~15%), request metrics, ETag and Vary headers. Single "
    "runs on this shared machine vary by +-0.05, hence the median of interleaved rounds",
}


def markdown(
    facts: dict[str, Any], rows: list[dict[str, Any]], errors: dict[str, str], mode: str
) -> str:
    lines = [
        f"# mtrd benchmark ({mode})",
        "",
        f"{facts['date']} · {facts['nproc']} CPUs ({facts['cpu']}) · Python {facts['python']} · "
        f"mtr-packet {facts['mtr_packet']} · kernel {facts['kernel']} · load average at start "
        f"{' '.join(facts['loadavg_at_start'])}",
        "",
        "All figures come from this one run (same lab, same machine); ratios are measured side "
        "by side in it. Details, profiles and requests: the JSON next to this file.",
        "",
        "| figure | measured | target | met? | what bounds it |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        met = {True: "yes", False: "**no**", None: "-"}[row["met"]]
        lines.append(
            f"| {row['figure']} | {row['measured']} | {row['target']} | {met} | {row['bound']} |"
        )
    for name, error in errors.items():
        lines.append(f"| {name} | broke: {error.strip().splitlines()[-1]} | | | |")
    return "\n".join(lines) + "\n"


def _cpu_and_posts(x: dict[str, Any]) -> str:
    """CPU per trace, CPU share and POST p50 of the median batches (older results lack
    the last two)."""
    parts = []
    for store in ("redis", "memory"):
        b = x[store]
        text = f"{store}: {1000 * b['servers_cpu_s_per_trace']:.2f} ms CPU a trace"
        if "servers_cpu_share" in b:
            text += f" at {b['servers_cpu_share']:.2f} of a core"
        if b.get("post_server_ms"):
            text += f", POST p50 {b['post_server_ms']['p50']:g} ms"
        parts.append(text)
    return "; " + "; ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--mode", choices=sorted(MODES), default="small")
    parser.add_argument("--no-profile", action="store_true", help="skip py-spy in full mode")
    parser.add_argument(
        "--parts",
        help="run only these parts (comma-separated, e.g. peers_silent,peers_e2e); the "
        "report is then bench/results/<mode>-parts.json and .md",
    )
    parser.add_argument(
        "--render-only", action="store_true", help="rewrite the .md from the mode's JSON; no run"
    )
    args = parser.parse_args()
    name = "latest" if args.mode == "full" else "small"
    only = None if args.parts is None else set(args.parts.split(","))
    if only is not None:
        name = f"{args.mode}-parts"
    if args.render_only:
        saved = json.loads((RESULTS / f"{name}.json").read_text())
        saved["figures"] = figures(saved["results"])
        (RESULTS / f"{name}.json").write_text(json.dumps(saved, indent=1) + "\n")
        text = markdown(saved["machine"], saved["figures"], saved["errors"], args.mode)
        (RESULTS / f"{name}.md").write_text(text)
        print(text)
        return 0
    params = dict(MODES[args.mode])
    if args.no_profile:
        params["profile"] = False
    sys.path.insert(0, str(ROOT))
    from tests.lab import Lab  # noqa: PLC0415

    facts = machine()
    started = time.monotonic()
    lab = Lab()
    try:
        lab.build()
        results, errors = run_parts(lab, params, only)
    finally:
        lab.teardown()
    rows = figures(results)
    report = {
        "mode": args.mode,
        "machine": facts,
        "params": params,
        "figures": rows,
        "results": results,
        "errors": errors,
        "seconds": round(time.monotonic() - started, 1),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(facts, rows, errors, args.mode))
    print((RESULTS / f"{name}.md").read_text())
    print(f"bench: {report['seconds']} s; wrote bench/results/{name}.json and .md", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
