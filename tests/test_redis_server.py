"""The redis-server helper the Redis tests stand on: start, pause, restart, stop, CI rules."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests import redis_server as helper
from tests.redis_server import RedisServer, require_redis_server

pytestmark = pytest.mark.redis  # a real redis-server, started by the test


def _ping(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16)


def test_restart_keeps_the_port_and_empties_the_server() -> None:
    """A restarted server answers on the same port and holds nothing."""
    with RedisServer(require_redis_server()) as server:
        port = server.port
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"SET k v\r\n")
            assert s.recv(16) == b"+OK\r\n"
        server.restart()
        assert server.port == port
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"EXISTS k\r\n")
            assert s.recv(16) == b":0\r\n"


def test_restart_with_an_append_only_file_keeps_what_was_written() -> None:
    """With appendonly and appendfsync always, a killed and restarted server still holds it."""
    options = ("--appendonly", "yes", "--appendfsync", "always")
    with RedisServer(require_redis_server(), options=options) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=1) as s:
            s.sendall(b"SET k v\r\n")
            assert s.recv(16) == b"+OK\r\n"
        server.restart()
        with socket.create_connection(("127.0.0.1", server.port), timeout=1) as s:
            s.sendall(b"EXISTS k\r\n")
            assert s.recv(16) == b":1\r\n"


def test_paused_server_does_not_answer_until_resumed() -> None:
    """Paused, the server accepts connections but sends nothing; resumed, it answers."""
    with RedisServer(require_redis_server()) as server:
        server.pause()
        with socket.create_connection(("127.0.0.1", server.port), timeout=1) as s:
            s.settimeout(0.3)
            s.sendall(b"PING\r\n")
            with pytest.raises(TimeoutError):
                s.recv(16)
            server.resume()
            s.settimeout(2)
            assert s.recv(16) == b"+PONG\r\n"


def test_close_stops_a_paused_server_and_removes_its_directory() -> None:
    """Closing works on a paused server: the process is gone, and so is its directory."""
    server = RedisServer(require_redis_server())
    server.start()
    pid, directory = server.pid, server._dir
    server.pause()
    server.close()
    assert pid is not None
    assert not Path(f"/proc/{pid}").exists()
    assert not directory.exists()


def test_password_is_required() -> None:
    """With a password, the server refuses commands before AUTH."""
    with RedisServer(require_redis_server(), password="pw-for-test") as server:  # noqa: S106
        assert _ping(server.port).startswith(b"-NOAUTH")
        assert server.url == f"redis://:pw-for-test@127.0.0.1:{server.port}/0"


def test_missing_redis_server_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under CI=true a missing redis-server fails the test instead of skipping it."""
    monkeypatch.setattr(helper, "redis_server_binary", lambda: None)
    monkeypatch.setitem(os.environ, "CI", "true")
    with pytest.raises(pytest.fail.Exception, match="cannot run in CI"):
        require_redis_server()


def test_missing_redis_server_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside CI a missing redis-server skips the test."""
    monkeypatch.setattr(helper, "redis_server_binary", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        require_redis_server()
