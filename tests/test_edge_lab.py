"""The HTTP edge against a real ``mtrd serve`` and real sockets: a 1 GiB body refused
before it is sent, never spooled, and slow clients at a low descriptor limit while
health checks answer and a killed mtr-packet is replaced."""

from __future__ import annotations

import http.client
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from tests.mtrd_process import free_port, wait_ready
from tests.test_serve import require_mtr_packet

HEAD = b"POST /traces HTTP/1.1\r\nHost: mtrd.test\r\nContent-Type: application/json\r\n"


@contextmanager
def mtrd(
    tmp_path: Path, *flags: str, nofile: int | None = None
) -> Iterator[tuple[int, subprocess.Popen[str], Path]]:
    """``mtrd serve`` on a free loopback port with its own TMPDIR (the spool directory
    twisted.web would use), optionally under a low RLIMIT_NOFILE; stopped afterwards."""
    require_mtr_packet()
    spool = tmp_path / "spool"
    spool.mkdir()
    port = free_port()

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with (tmp_path / "mtrd.log").open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mtrd", "serve", "--listen", f"127.0.0.1:{port}", *flags],
            stdout=log, stderr=subprocess.STDOUT, text=True, preexec_fn=limit,  # noqa: PLW1509
            env={**os.environ, "TMPDIR": str(spool)},
        )  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{port}", process)
        yield port, process, spool
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def spooled(process: subprocess.Popen[str], spool: Path) -> list[str]:
    """The server's open files in the spool directory (twisted.web's temporary files are
    unlinked at once, so they show only among the process's descriptors)."""
    names = []
    for fd in Path(f"/proc/{process.pid}/fd").iterdir():
        with suppress(OSError):
            target = os.readlink(fd)
            if target.startswith(str(spool)):
                names.append(target)
    return names


def send_slowly_until_answered(
    sock: socket.socket, piece: bytes, process: subprocess.Popen[str], spool: Path
) -> tuple[bytes, int, list[str]]:
    """Send ``piece`` every 20 ms until an answer arrives (10 s at most); the answer, the
    bytes sent, and any spooled file seen meanwhile."""
    sock.settimeout(0.02)
    answer, sent, seen = b"", 0, []
    deadline = time.monotonic() + 10
    while b"\r\n\r\n" not in answer and time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        except TimeoutError:
            sock.sendall(piece)
            sent += len(piece)
            seen += spooled(process, spool)
    return answer, sent, seen


@pytest.mark.lab
def test_a_1_gib_content_length_is_answered_before_the_body_and_never_spooled(
    tmp_path: Path,
) -> None:
    """A 1 GiB POST streamed slowly gets 413 before the first body byte is needed; no
    temporary file is opened."""
    with mtrd(tmp_path) as (port, process, spool):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(HEAD + b"Content-Length: %d\r\n\r\n" % (1 << 30))
            answer, sent, seen = send_slowly_until_answered(sock, b"x" * 4096, process, spool)
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
        assert b"application/problem+json" in answer
        assert sent <= 4 * 4096  # answered at once: the body was never waited for
        assert seen == []
        assert list(spool.iterdir()) == []


@pytest.mark.lab
def test_a_chunked_body_streamed_past_the_limit_is_cut_off_at_the_limit(
    tmp_path: Path,
) -> None:
    """A chunked POST sent slowly is answered 413 once past 64 KiB; nothing is spooled."""
    with mtrd(tmp_path) as (port, process, spool):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
            chunk = b"1000\r\n" + b"x" * 4096 + b"\r\n"
            answer, sent, seen = send_slowly_until_answered(sock, chunk, process, spool)
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
        assert 64 * 1024 < sent <= 64 * 1024 + 4 * len(chunk)
        assert seen == []


def health_from(port: int, source: str) -> int:
    """GET /healthz from another loopback address (the slow clients use 127.0.0.1)."""
    connection = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=5, source_address=(source, 0)
    )
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status
    finally:
        connection.close()


def metric(port: int, name: str) -> float:
    connection = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=5, source_address=("127.0.0.3", 0)
    )
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


def mtr_packets(pid: int) -> list[int]:
    result = subprocess.run(
        ["pgrep", "-P", str(pid), "mtr-packet"], capture_output=True, text=True, check=False
    )
    return [int(p) for p in result.stdout.split()]


class Slowloris:
    """Connections from 127.0.0.1 that each send a header byte now and then, reconnecting
    whenever mtrd closes one: they never finish a request."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.count = count
        self.open: list[socket.socket] = []
        self.refused = 0
        self.closed = 0

    def top_up(self, at_most: int | None = None) -> None:
        """Open connections up to ``count`` (at most ``at_most`` new ones)."""
        wanted = self.count - len(self.open)
        for _ in range(wanted if at_most is None else min(wanted, at_most)):
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=2)
            sock.setblocking(False)
            with suppress(OSError):
                sock.send(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
            self.open.append(sock)

    def trickle(self) -> None:
        """One byte on every connection; those mtrd answered or closed are replaced."""
        still = []
        for sock in self.open:
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                data = None
            except OSError:
                data = b""
            if data is not None:
                self.refused += data.startswith(b"HTTP/1.1 503 ")
                self.closed += 1
                sock.close()
                continue
            try:
                sock.send(b"a")
            except OSError:
                self.closed += 1
                sock.close()
                continue
            still.append(sock)
        self.open = still
        self.top_up(at_most=50)

    def close(self) -> None:
        for sock in self.open:
            sock.close()


@pytest.mark.lab
def test_slow_clients_at_a_low_fd_limit_leave_health_and_worker_restarts_working(
    tmp_path: Path,
) -> None:
    """300 slow connections against mtrd under a 300-descriptor limit: health checks
    from elsewhere answer, a killed mtr-packet is replaced, and the slow ones are cut off
    at the caps and deadlines."""
    flags = (
        "--max-connections", "100", "--max-connections-per-client", "50",
        "--header-timeout", "2", "--idle-timeout", "2",
    )  # fmt: skip
    with mtrd(tmp_path, *flags, nofile=300) as (port, process, _):
        attack = Slowloris(port, 300)
        try:
            attack.top_up()
            statuses = []
            for _ in range(6):
                time.sleep(0.5)
                attack.trickle()
                statuses.append(health_from(port, "127.0.0.2"))
            workers = mtr_packets(process.pid)
            assert workers
            os.kill(workers[0], signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                attack.trickle()
                if metric(port, "mtrd_worker_restarts_total") >= 1 and (
                    metric(port, "mtrd_workers_ready") == 2
                ):
                    break
                time.sleep(0.2)
            restarts = metric(port, "mtrd_worker_restarts_total")
            ready = metric(port, "mtrd_workers_ready")
            statuses.append(health_from(port, "127.0.0.2"))
            held = metric(port, "mtrd_http_connections")
        finally:
            attack.close()
        assert statuses == [200] * len(statuses)
        assert (restarts, ready) == (1, 2)
        assert attack.refused > 0  # the per-client cap turned connections away with 503
        assert held <= 100
        assert process.poll() is None
    log = (tmp_path / "mtrd.log").read_text()
    assert "Too many open files" not in log
    assert "Traceback" not in log


def test_caps_that_do_not_fit_the_descriptor_limit_stop_mtrd_with_one_line() -> None:
    """--max-connections beyond RLIMIT_NOFILE's hard limit: exit 1, one line saying so."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    result = subprocess.run(
        [sys.executable, "-m", "mtrd", "serve", "--listen", f"127.0.0.1:{free_port()}",
         "--max-connections", "1000", "--mtr-packet", "/nonexistent/mtr-packet"],
        capture_output=True, text=True, timeout=30, check=False, preexec_fn=limit,
    )  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "RLIMIT_NOFILE allows 256" in lines[0]
    assert "--max-connections" in lines[0]
    assert json.dumps(lines)  # plain text, one line
