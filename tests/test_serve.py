"""``mtrd serve`` as a real process on a loopback port, driven with a real HTTP client."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater

from tests.openapi import validate_response


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server() -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``python -m service serve`` on a free loopback port; stopped after the test."""
    if shutil.which("mtr-packet") is None:
        if os.environ.get("CI", "").lower() not in ("", "false", "0"):
            pytest.fail("mtr-packet is not installed")
        pytest.skip("mtr-packet is not installed (apt-get install mtr-tiny)")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield f"http://127.0.0.1:{port}", process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


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
        [sys.executable, "-m", "service", "serve", "--mtr-packet", "/nonexistent/mtr-packet"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "'/nonexistent/mtr-packet' not found" in result.stdout + result.stderr
