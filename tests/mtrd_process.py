"""``mtrd serve`` as a real process for tests: start it, wait until ready, always stop it."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.lab import Lab


def free_port() -> int:
    """A loopback TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[str], limit: float = 10.0) -> None:
    """Block until ``url``'s /readyz answers 200 (curl, so no reactor is needed)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"mtrd exited with status {process.returncode}")
        result = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"{url}/readyz"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.stdout == "200":
            return
        time.sleep(0.05)
    raise AssertionError("mtrd did not become ready")


@contextmanager
def lab_mtrd(lab: Lab, log: Path, *flags: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """mtrd on a free loopback port, its mtr-packet in the lab's client namespace.

    It logs to ``log`` (a pipe nobody reads would fill and block the server) and is
    stopped with SIGTERM (SIGKILL after 15 s) whatever happens.
    """
    port = free_port()
    with log.open("w") as log_file:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "mtrd", "serve",
                "--listen", f"127.0.0.1:{port}",
                "--mtr-packet", " ".join([*lab.netns_exec("c"), "mtr-packet"]),
                *flags,
            ],
            stdout=log_file, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, process)
            yield url, process
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
