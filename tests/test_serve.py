"""``mtrd serve`` as a real process on a loopback port, driven with a real HTTP client."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater

from tests.mtrd_process import free_port
from tests.openapi import validate_response


def require_mtr_packet() -> None:
    """Skip without mtr-packet; in CI, fail instead."""
    if shutil.which("mtr-packet") is None:
        if os.environ.get("CI", "").lower() not in ("", "false", "0"):
            pytest.fail("mtr-packet is not installed")
        pytest.skip("mtr-packet is not installed (apt-get install mtr-tiny)")


def serve(*extra: str, stderr: int) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``python -m mtrd serve`` on a free loopback port; stopped after the test."""
    require_mtr_packet()
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mtrd", "serve", "--listen", f"127.0.0.1:{port}", *extra],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    try:
        yield f"http://127.0.0.1:{port}", process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


@pytest.fixture
def server() -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """mtrd serve on its defaults, stderr mixed into stdout."""
    yield from serve(stderr=subprocess.STDOUT)


async def wait_ready(url: str) -> None:
    for _ in range(100):
        try:
            response = await treq.get(f"{url}/readyz")
            await response.content()
            if response.code == 200:
                return
        except Exception:  # noqa: S110 - not listening yet
            pass
        await deferLater(reactor, 0.05, lambda: None)  # type: ignore[arg-type]
    raise AssertionError("mtrd did not become ready within 5 s")


@pytest_twisted.ensureDeferred
async def test_serve_becomes_ready_and_stops_on_sigterm(
    server: tuple[str, subprocess.Popen[str]],
) -> None:
    """The service answers /healthz and /readyz over HTTP and exits 0 on SIGTERM."""
    url, process = server
    await wait_ready(url)
    response = await treq.get(f"{url}/healthz")
    body = await response.content()
    validate_response("GET", "/healthz", response.code, "application/json", body)
    assert response.code == 200
    assert json.loads(body) == {"status": "ok"}
    process.send_signal(signal.SIGTERM)
    for _ in range(100):
        if process.poll() is not None:
            break
        await deferLater(reactor, 0.05, lambda: None)  # type: ignore[arg-type]
    assert process.returncode == 0


def test_serve_with_missing_mtr_packet_exits_with_the_reason() -> None:
    """A missing mtr-packet stops mtrd at once with status 1 and a one-line reason."""
    result = subprocess.run(
        [sys.executable, "-m", "mtrd", "serve", "--mtr-packet", "/nonexistent/mtr-packet"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "'/nonexistent/mtr-packet' not found" in result.stdout + result.stderr


@pytest.fixture
def graceful_server() -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """mtrd serve with a short shutdown grace and JSON logs alone on stdout."""
    yield from serve("--shutdown-grace", "1.5", stderr=subprocess.PIPE)


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)  # type: ignore[arg-type]


@pytest_twisted.ensureDeferred
async def test_sigterm_drains_cancels_after_grace_ends_streams_and_exits_0(
    graceful_server: tuple[str, subprocess.Popen[str]],
) -> None:
    """SIGTERM: readiness 503, POST 503, running traces cancelled after the grace, exit 0."""
    url, process = graceful_server
    await wait_ready(url)
    created = await treq.post(
        f"{url}/traces", json={"target": "127.0.0.1", "probes": 60, "interval": 0.5}
    )
    trace_id = (await created.json())["id"]
    stream = await treq.get(f"{url}/traces/{trace_id}/events", unbuffered=True)
    chunks: list[bytes] = []
    stream_done = treq.collect(stream, chunks.append)
    await sleep(0.3)
    process.send_signal(signal.SIGTERM)
    await sleep(0.3)
    ready = await treq.get(f"{url}/readyz")
    ready_body = await ready.content()
    validate_response("GET", "/readyz", ready.code, "application/json", ready_body)
    assert (ready.code, json.loads(ready_body)["status"]) == (503, "draining")
    refused = await treq.post(f"{url}/traces", json={"target": "127.0.0.1"})
    refused_body = await refused.content()
    validate_response("POST", "/traces", refused.code, "application/problem+json", refused_body)
    assert refused.code == 503
    await stream_done
    events = b"".join(chunks).decode()
    assert "event: done" in events
    assert '"status":"cancelled"' in events
    for _ in range(100):
        if process.poll() is not None:
            break
        await sleep(0.05)
    assert process.returncode == 0
    out, _ = process.communicate(timeout=5)
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert any(r["message"] == "mtrd stopped" for r in records)
    assert any(r.get("trace_id") == trace_id and r.get("method") == "POST" for r in records)
    # Every request is in the access log, the last ones too (flushed at shutdown).
    assert any(r.get("method") == "POST" and r.get("status") == 503 for r in records)
    assert any(r.get("path") == "/readyz" and r.get("status") == 503 for r in records)


def test_serve_on_a_port_in_use_says_so_and_starts_no_mtr_packet(tmp_path: Path) -> None:
    """A bound port: one line on stderr, exit 1, and no mtr-packet was ever started."""
    marker = tmp_path / "started"
    fake_mtr_packet = tmp_path / "mtr-packet"
    fake_mtr_packet.write_text(f"#!/bin/sh\ntouch {marker}\nexec cat >/dev/null\n")
    fake_mtr_packet.chmod(0o755)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "mtrd", "serve", "--listen", f"127.0.0.1:{port}",
             "--mtr-packet", str(fake_mtr_packet)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr == f"mtrd: cannot listen on 127.0.0.1:{port}: address in use\n"
    assert "Traceback" not in result.stdout
    assert not marker.exists()


def require_root_tools() -> None:
    """Skip unless root with setpriv and ip (the permission tests drop rights on purpose)."""
    require_mtr_packet()
    if os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("ip"):
        pytest.skip("needs root, setpriv and ip")


@contextmanager
def namespace_without_ping_sockets() -> Iterator[str]:
    """A throwaway network namespace where no group may open unprivileged ICMP sockets."""
    name = f"mtrd-perm-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(
            ["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv4.ping_group_range=1 0"],
            check=True,
        )
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.mark.lab
def test_serve_where_mtr_packet_may_not_open_raw_sockets_says_how_to_grant_it() -> None:
    """mtr-packet without CAP_NET_RAW as nobody: exit 1, its own words, and what to do."""
    require_root_tools()
    folder = Path(tempfile.mkdtemp(prefix="mtrd-perm-"))
    try:
        folder.chmod(0o755)
        copy = folder / "mtr-packet"  # a copy carries no file capabilities
        shutil.copy(str(shutil.which("mtr-packet")), copy)
        with namespace_without_ping_sockets() as namespace:
            command = f"ip netns exec {namespace} setpriv --reuid=nobody --regid=nogroup "
            command += f"--clear-groups {copy}"
            result = subprocess.run(
                [sys.executable, "-m", "mtrd", "serve", "--listen", f"127.0.0.1:{free_port()}",
                 "--mtr-packet", command],
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
    finally:
        shutil.rmtree(folder)
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert "Failure to open IPv4 sockets: Permission denied" in message
    assert "setcap cap_net_raw+ep $(command -v mtr-packet)" in message
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.lab
def test_serve_without_net_raw_in_the_bounding_set_says_add_net_raw() -> None:
    """As in a container without NET_RAW: mtr-packet cannot be run; exit 1 saying add it."""
    require_root_tools()
    caps = subprocess.run(
        ["getcap", str(shutil.which("mtr-packet"))], capture_output=True, text=True, check=False
    )
    if "cap_net_raw" not in caps.stdout:
        pytest.skip("mtr-packet carries no file capability here")
    result = subprocess.run(
        ["setpriv", "--inh-caps=-net_raw", "--bounding-set=-net_raw",
         sys.executable, "-m", "mtrd", "serve", "--listen", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert "Operation not permitted" in message
    assert "--cap-add NET_RAW" in message
