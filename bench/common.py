"""What the benchmark parts share: the mtrd subprocess, a tiny HTTP client, statistics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    """A loopback TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0-1) by the nearest-rank method; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q * len(ordered) + 0.5) - 1))
    return ordered[rank]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children_cpu_seconds(pid: int) -> float:
    """utime + stime of the children of ``pid`` (mtrd's mtr-packet workers): the live ones,
    plus those that exited and were reaped (cutime + cstime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = (int(fields[13]) + int(fields[14])) / CLK_TCK
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                total += cpu_seconds(int(child))
            except (FileNotFoundError, ProcessLookupError):
                continue  # it exited meanwhile
    return total


def raise_nofile(want: int) -> None:
    """Raise RLIMIT_NOFILE (soft) towards ``want`` for this process and its children."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, want), hard) if hard != resource.RLIM_INFINITY else max(soft, want)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


@attrs.define
class Server:
    """A running ``mtrd serve`` whose mtr-packet runs in the lab's client namespace."""

    url: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid


@contextlib.contextmanager
def mtrd(netns_exec: Sequence[str], log_name: str, *extra: str) -> Iterator[Server]:
    """Start mtrd (as tests/test_service_lab.py does), wait until ready, stop it after."""
    port = free_port()
    log_path = RESULTS / f".{log_name}.log"
    log_file = log_path.open("wb")
    raise_nofile(8192)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mtrd",
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--mtr-packet",
            " ".join([*netns_exec, "mtr-packet"]),
            "--log-format",
            "json",
            # The host's resolver is not the bench's to ask: names only from a bench server.
            *(extra if "--dns-servers" in extra else (*extra, "--reverse-dns", "off")),
        ],
        cwd=ROOT,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    server = Server(f"http://127.0.0.1:{port}", port, process, log_path)
    try:
        wait_ready(server)
        yield server
    finally:
        stop(process)
        log_file.close()


def stop(process: subprocess.Popen[Any], grace: float = 15) -> None:
    """Terminate a child we started; kill it if it does not go."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_ready(server: Server, path: str = "/readyz", limit: float = 15) -> None:
    """Poll until ``path`` answers 200."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"server exited with {server.process.returncode}: see {server.log_path}"
            )
        with contextlib.suppress(OSError):
            status, _, _ = asyncio.run(one_request(server.port, "GET", path))
            if status == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"server not ready within {limit} s")


# -- a minimal HTTP/1.1 client: keep-alive, Content-Length or chunked bodies ----------------


class Connection:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
        return cls(reader, writer)

    async def request(
        self, method: str, path: str, body: bytes | None = None, headers: str = ""
    ) -> tuple[int, dict[str, str], bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + (body or b""))
        return await self.response()

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        status_line = await self.reader.readuntil(b"\r\n")
        status = int(status_line.split()[1])
        raw = await self.reader.readuntil(b"\r\n\r\n")
        headers = {}
        for line in raw.decode("latin-1").split("\r\n"):
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(chunk[:-2])
            body = b"".join(parts)
        else:
            body = b""
        return status, headers, body

    def close(self) -> None:
        self.writer.close()


async def one_request(
    port: int, method: str, path: str, body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection."""
    connection = await Connection.open(port)
    try:
        return await asyncio.wait_for(connection.request(method, path, body), 10)
    finally:
        connection.close()


async def all_traces(port: int) -> list[dict[str, Any]]:
    """Every stored trace summary, paging through GET /traces."""
    connection = await Connection.open(port)
    traces: list[dict[str, Any]] = []
    cursor = ""
    try:
        for _ in range(1000):
            status, _, body = await connection.request(
                "GET", f"/traces?limit=500{'&cursor=' + cursor if cursor else ''}"
            )
            if status != 200:
                raise RuntimeError(f"GET /traces answered {status}: {body[:200]!r}")
            page = json.loads(body)
            traces += page["traces"]
            if not page["next_cursor"]:
                break
            cursor = page["next_cursor"]
    finally:
        connection.close()
    return traces


async def active_traces(connection: Connection) -> int:
    """Traces still queued or running (0 or more; 1 is enough to say 'not yet')."""
    total = 0
    for status in ("queued", "running"):
        code, _, body = await connection.request("GET", f"/traces?status={status}&limit=1")
        if code != 200:
            raise RuntimeError(f"GET /traces answered {code}")
        total += len(json.loads(body)["traces"])
    return total


def rfc3339_seconds(text: str) -> float:
    """Seconds since the epoch of mtrd's RFC 3339 times (UTC, milliseconds)."""
    from datetime import datetime  # noqa: PLC0415

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Profiler:
    """``py-spy record`` of a process while a block runs; ``top()`` gives the hottest frames."""

    def __init__(self, pid: int, out: Path, enabled: bool = True, rate: int = 100) -> None:
        self.pid = pid
        self.out = out
        py_spy = Path(sys.executable).parent / "py-spy"
        self.enabled = enabled and py_spy.exists()
        self._argv = [
            str(py_spy),
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--output",
            str(out),
            "--rate",
            str(rate),
            "--nonblocking",
        ]
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Profiler:
        if self.enabled:
            self.out.unlink(missing_ok=True)
            self._process = subprocess.Popen(
                self._argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            time.sleep(0.3)  # let it attach
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._process is not None:
            self._process.send_signal(2)  # SIGINT: py-spy writes what it has
            try:
                self._process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def top(self, n: int = 12) -> dict[str, list[list[Any]]]:
        """Share of samples per frame: ``self`` (leaf) and ``inclusive`` (anywhere in the stack)."""
        if not self.out.exists():
            return {}
        leaf: dict[str, int] = {}
        inclusive: dict[str, int] = {}
        total = 0
        for line in self.out.read_text(errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [_short(f) for f in stack.split(";") if f]
            frames = [f for f in frames if not f.startswith("process ")]
            if not frames:
                continue
            total += count
            leaf[frames[-1]] = leaf.get(frames[-1], 0) + count
            for frame in set(frames):
                inclusive[frame] = inclusive.get(frame, 0) + count

        def ranked(table: dict[str, int]) -> list[list[Any]]:
            best = sorted(table.items(), key=lambda kv: -kv[1])[:n]
            return [[name, round(100 * c / total, 1)] for name, c in best]

        return {"samples": [[total]], "self": ranked(leaf), "inclusive": ranked(inclusive)}


def _short(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/module.py:123)".
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path, _, _line = where.rpartition(":")
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})" if path else name
