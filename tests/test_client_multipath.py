"""``mtrd trace --mode multipath``: every responder per hop, then each flow's path."""

from __future__ import annotations

import io

from mtrd.annotations.model import Annotation
from mtrd.client.display import PlainLines, flow_summary
from mtrd.client.options import parse_args
from mtrd.client.outcome import EXIT_OK, EXIT_REFUSED
from mtrd.tracing.jobs import TraceJobs
from mtrd.tracing.model import (
    FlowHop,
    FlowPath,
    Hop,
    MultipathResult,
    Responder,
    Trace,
    TraceMode,
    TraceRequest,
    TraceStatus,
    TraceTarget,
)
from mtrd.tracing.store import StoreLimits, TraceStore
from mtrd.tracing.tracer import Tracer
from mtrd.web.report import HostDisplay
from mtrd.web.routes import Api
from treq.testing import StubTreq
from twisted.internet.task import Clock

from tests.multipath_network import diamond
from tests.test_client import BASE, QUICK, in_memory_server, start
from tests.test_http import FakePool
from tests.test_jobs import StaticResolver
from tests.test_multipath_run import TARGET, SimulatedProber

MULTIPATH = [TARGET, "--mode", "multipath", "--protocol", "udp", "--max-ttl", "8"]


def _server() -> tuple[Clock, StubTreq, SimulatedProber]:
    """The real Klein resource over a simulated 4-wide diamond, on one Clock."""
    clock = Clock()
    prober = SimulatedProber(clock, diamond(4))
    store = TraceStore(clock, StoreLimits(ttl=600, max_traces=100))
    tracer = Tracer(clock, prober, StaticResolver())  # type: ignore[arg-type]
    jobs = TraceJobs(tracer, store, max_running=8, max_queued=100)
    api = Api(pool=FakePool(), jobs=jobs, store=store, clock=clock)  # type: ignore[arg-type]
    return clock, StubTreq(api.resource()), prober


def _trace(argv: list[str]) -> tuple[int, str, str, SimulatedProber]:
    clock, stub, prober = _server()
    code, out, err = start(clock, stub, [*argv, "--server", BASE]).finish()
    return code, out, err, prober


def test_mode_and_confidence_go_into_the_request_body() -> None:
    """--mode and --confidence are sent as mode and confidence."""
    options = parse_args(["192.0.2.1", "--mode", "multipath", "--confidence", "99"])
    assert options.request_body() == {
        "target": "192.0.2.1",
        "mode": "multipath",
        "confidence": 99,
    }


def test_a_multipath_trace_shows_every_responder_of_the_diamond() -> None:
    """The final table lists all four routers of the diamond's stage."""
    code, out, err, prober = _trace(MULTIPATH)
    assert (code, err) == (EXIT_OK, "")
    table = out[out.index("Target: ") : out.index("Flow paths: ")]
    # Each responder is on a line of its own: the hop's first with the figures, then one each.
    hosts = [
        line.split()[1] if ".|--" in line else line.split()[0] for line in table.splitlines()[2:-1]
    ]
    stage = {prober.addresses[f"d{i}"] for i in range(4)}
    assert stage <= set(hosts)
    assert len(hosts) == len(set(prober.addresses.values()))
    assert "Multipath: 95% confidence" in table


def test_a_multipath_trace_ends_with_one_line_per_flow() -> None:
    """After the table comes a line per flow: its number, source port, loss and path."""
    code, out, _, prober = _trace([*MULTIPATH, "--confidence", "99"])
    assert code == EXIT_OK
    summary = out[out.index("Flow paths: ") :].splitlines()
    count = int(summary[0].split()[2])
    rows = summary[2:]
    assert len(rows) == count
    ports = {p.local_port for p in prober.sent}
    known = set(prober.addresses.values())
    for row in rows:
        _flow, port, loss, _rtt, *path = row.split()
        assert int(port) in ports
        assert loss == "0.0%"
        assert set(path[::2]) <= known
    assert any(row.endswith(f"> {TARGET}") for row in rows)
    assert {row.split()[0] for row in rows} == {str(i) for i in range(count)}


def test_a_classic_trace_shows_no_flows() -> None:
    """A classic trace's output has no flow summary."""
    code, out, _ = in_memory_server().trace(QUICK)
    assert code == EXIT_OK
    assert "Flow paths:" not in out


def test_confidence_on_a_classic_trace_is_refused_by_the_server() -> None:
    """--confidence without --mode multipath: the server's 422 names the field, exit 2."""
    code, _, err, _ = _trace([TARGET, "--confidence", "99"])
    assert code == EXIT_REFUSED
    assert "confidence" in err


SUMMARY_TRACE = Trace(
    id="t",
    status=TraceStatus.COMPLETED,
    request=TraceRequest(TARGET, mode=TraceMode.MULTIPATH),
    target=TraceTarget(TARGET, TARGET, 4),
    created_at=0.0,
    hops=(
        Hop(1, (Responder("198.51.100.1", 1, (), Annotation("gw.example.net")),), 1, 1),
        Hop(2, (), 1, 0, 1),
        Hop(3, (Responder(TARGET, 1),), 1, 1),
    ),
    multipath=MultipathResult(
        confidence=95,
        flows=(
            FlowPath(
                7,
                40007,
                (
                    FlowHop(1, "198.51.100.1", 0.5),
                    FlowHop(2, None),
                    FlowHop(3, TARGET, 1.25),
                ),
            ),
        ),
    ),
)


def test_a_flow_line_shows_loss_the_farthest_rtt_and_stars_for_silence() -> None:
    """A flow's line: number, port, loss, RTT of its farthest answer, ``*`` where silent."""
    lines = flow_summary(SUMMARY_TRACE, HostDisplay.ADDRESS).splitlines()
    assert lines[0] == "Flow paths: 1"
    assert lines[2].split() == ["7", "40007", "33.3%", "1.2", "198.51.100.1", ">", "*", ">", TARGET]


def test_flow_paths_show_names_with_hosts_name() -> None:
    """With --hosts name, a flow's path names the routers whose names are known."""
    line = flow_summary(SUMMARY_TRACE, HostDisplay.NAME).splitlines()[2]
    assert line.endswith(f"gw.example.net > * > {TARGET}")


def test_plain_lines_end_with_the_flows() -> None:
    """The plain display prints the flows after the report table."""
    out = io.StringIO()
    PlainLines(out).finished(SUMMARY_TRACE, "{}")
    text = out.getvalue()
    assert text.index("Multipath: 95% confidence") < text.index("Flow paths: 1")
