"""A real Debian ``redis-server`` for tests and benchmarks: a free loopback port, no persistence.

:class:`RedisServer` is the plain helper (the benchmark uses it too); the ``redis_server``
fixture starts one per test and stops it afterwards, also when the test fails. Fault tests
pause it (SIGSTOP: connections stay open but nothing answers), resume it, or stop and
restart it on the same port.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

STARTUP_SECONDS = 10.0


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "false", "0")


def redis_server_binary() -> str | None:
    """The path of redis-server, or None when it is not installed."""
    return shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin:/sbin")


def require_redis_server() -> str:
    """The redis-server path; skips the calling test when missing, and fails it in CI."""
    binary = redis_server_binary()
    if binary is not None:
        return binary
    reason = "redis-server is not installed (apt-get install redis-server)"
    if _in_ci():
        pytest.fail(f"Redis tests cannot run in CI: {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int, password: str | None) -> bool:
    """True when the server on ``port`` replies to PING (a blocking probe, for set-up only)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            if password is not None:
                s.sendall(f"AUTH {password}\r\n".encode())
                if not s.recv(64).startswith(b"+OK"):
                    return False
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process on 127.0.0.1 in its own temp dir, with no persistence unless
    ``options`` turn it on (a restart then reloads what was written)."""

    def __init__(
        self,
        binary: str = "redis-server",
        password: str | None = None,
        options: Sequence[str] = (),
    ) -> None:
        self.binary = binary
        self.password = password
        self.options = tuple(options)
        self.port = _free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="mtrd-redis-"))
        self._process: subprocess.Popen[bytes] | None = None
        self._paused = False

    @property
    def url(self) -> str:
        """The ``--store`` URL of this server, password included."""
        auth = f":{self.password}@" if self.password is not None else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return None if self._process is None else self._process.pid

    def start(self) -> None:
        """Start the server on its port and wait until it answers PING."""
        assert self._process is None, "already running"
        command = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self._dir),
            "--daemonize", "no", "--loglevel", "warning",
        ]  # fmt: skip
        if self.password is not None:
            command += ["--requirepass", self.password]
        command += self.options  # later settings win: e.g. "--appendonly", "yes"
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self._dir
        )
        deadline = time.monotonic() + STARTUP_SECONDS
        while not _answers(self.port, self.password):
            if self._process.poll() is not None:
                stderr = self._process.stderr.read() if self._process.stderr else b""
                self._process = None
                raise RuntimeError(f"redis-server exited at start: {stderr.decode()[-500:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer within {STARTUP_SECONDS} s")
            time.sleep(0.02)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing answers."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Thaw a paused server (SIGCONT)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)
        self._paused = False

    def stop(self) -> None:
        """Stop the server (SIGKILL, nothing to save) and wait for it; idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        process.kill()
        if self._paused:
            process.send_signal(signal.SIGCONT)
            self._paused = False
        process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()

    def restart(self) -> None:
        """Stop the server and start a fresh, empty one on the same port."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh redis-server for one test, stopped after it whatever happens."""
    server = RedisServer(require_redis_server())
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_server_with_password() -> Iterator[RedisServer]:
    """A fresh redis-server that requires a password (``requirepass``)."""
    server = RedisServer(require_redis_server(), password="s3cret-Pa55word")  # noqa: S106
    try:
        server.start()
        yield server
    finally:
        server.close()
