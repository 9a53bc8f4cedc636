"""``mtrd serve`` as a real process for tests: start it, wait until ready, always stop it."""

from __future__ import annotations

import json
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


class Replica:
    """One ``mtrd serve`` replica on a shared Redis store, for the replica lab tests.

    mtrd itself runs in the host's namespace, so it reaches a redis-server listening on the
    host's loopback; only its mtr-packet runs inside the lab node ``node`` (``ip netns exec``
    is part of ``--mtr-packet``, as for :func:`lab_mtrd`). It can be stopped (SIGTERM),
    killed (SIGKILL) and started again on the same port; a new start is a new process and so
    a new replica id.
    """

    def __init__(
        self, lab: Lab, store: str, vantage: str, node: str, log: Path, *flags: str
    ) -> None:
        self.vantage = vantage
        self.node = node
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.argv = [
            sys.executable, "-m", "mtrd", "serve",
            "--listen", f"127.0.0.1:{self.port}",
            "--mtr-packet", " ".join([*lab.netns_exec(node), "mtr-packet"]),
            "--store", store,
            "--vantage", vantage,
            *flags,
        ]  # fmt: skip
        self.process: subprocess.Popen[str] | None = None
        self.starts = 0
        self.last_pid: int | None = None
        """The process id of the latest start, also once it was stopped or killed."""

    @property
    def pid(self) -> int:
        """The process id of the running replica."""
        assert self.process is not None, "not running"
        return self.process.pid

    @property
    def running(self) -> bool:
        """True while the replica's process is alive."""
        return self.process is not None and self.process.poll() is None

    def start(self, ready: bool = True) -> None:
        """Start the process (its log appended to ``log``), by default until /readyz is 200."""
        assert not self.running, "already running"
        self.starts += 1
        with self.log.open("a") as log_file:
            log_file.write(f"--- start {self.starts}\n")
            log_file.flush()
            self.process = subprocess.Popen(
                self.argv, stdout=log_file, stderr=subprocess.STDOUT, text=True
            )
        self.last_pid = self.process.pid
        if ready:
            wait_ready(self.url, self.process, limit=20.0)

    def owns(self, replica_id: str | None) -> bool:
        """True when ``replica_id`` (``{hostname}-{pid}-{hex}``) names the latest process,
        running or not."""
        return replica_id is not None and f"-{self.last_pid}-" in replica_id

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; nothing when it is not running."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL: the replica ends at once, leaving its traces and claims to the others."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()


def wait_registered(
    url: str, expected: dict[str, int], limit: float = 10.0, token: str | None = None
) -> None:
    """Block until ``url``'s GET /vantage-points lists at least ``expected`` live replicas per
    vantage (heartbeats reach Redis a moment after /readyz may say ready); ``token`` is sent
    as the bearer token when auth is on."""
    auth = [] if token is None else ["-H", f"Authorization: Bearer {token}"]
    deadline = time.monotonic() + limit
    listed: dict[str, int] = {}
    while time.monotonic() < deadline:
        result = subprocess.run(
            ["curl", "-s", *auth, f"{url}/vantage-points"],
            capture_output=True,
            text=True,
            check=False,
        )
        try:
            points = json.loads(result.stdout)["vantage_points"]
            listed = {p["name"]: p["replicas"] for p in points}
        except (ValueError, KeyError, TypeError):
            listed = {}
        if all(listed.get(name, 0) >= count for name, count in expected.items()):
            return
        time.sleep(0.1)
    raise AssertionError(f"vantage points {listed}, expected {expected}")


@contextmanager
def replicas(
    lab: Lab,
    store: str,
    log_dir: Path,
    places: list[tuple[str, str]],
    *flags: str,
    token: str | None = None,
) -> Iterator[list[Replica]]:
    """Replicas on ``store``, one per ``(vantage, lab node)`` in ``places``, each on its own
    port, ready and listed by GET /vantage-points; every one is stopped afterwards whatever
    happens (SIGTERM, then SIGKILL).
    """
    started = [
        Replica(lab, store, vantage, node, log_dir / f"replica-{i}.log", *flags)
        for i, (vantage, node) in enumerate(places)
    ]
    try:
        for replica in started:
            replica.start(ready=False)
        for replica in started:
            assert replica.process is not None
            wait_ready(replica.url, replica.process, limit=20.0)
        expected: dict[str, int] = {}
        for vantage, _ in places:
            expected[vantage] = expected.get(vantage, 0) + 1
        wait_registered(started[0].url, expected, token=token)
        yield started
    finally:
        for replica in started:
            if replica.process is not None and replica.process.poll() is None:
                replica.process.terminate()
        for replica in started:
            replica.stop()
