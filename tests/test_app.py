"""The composition root: services start in order and stop one at a time, in reverse."""

from __future__ import annotations

import errno
import os
import re
import socket
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import pytest
from mtrd.app import Listener, MtrdService, build, cannot_listen, replica_id
from mtrd.config import ServeConfig
from mtrd.tracing.redis.settings import parse_store
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor, MemoryReactorClock


class Step(Service):
    """A service that records its start and stop, and stops when told to."""

    def __init__(self, name: str, journal: list[str], api: Any) -> None:
        self.setName(name)
        self.journal = journal
        self.api = api
        self.stopping: Deferred[None] = Deferred()

    def startService(self) -> None:
        super().startService()
        self.journal.append(f"start {self.name}")

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.journal.append(f"stop {self.name} draining={self.api.draining}")
        return self.stopping


def test_services_stop_one_at_a_time_in_reverse_order_after_draining_starts() -> None:
    """Each service stops only once the one started after it has stopped; draining comes first."""
    journal: list[str] = []
    api = SimpleNamespace(draining=False)
    flushed: list[bool] = []
    jobs = SimpleNamespace(running_traces=0, stop_grace=1.0)
    services = MtrdService(api, jobs, SimpleNamespace(flush=lambda: flushed.append(True)))  # type: ignore[arg-type]
    steps = [Step(name, journal, api) for name in ("listener", "pool", "jobs")]
    for step in steps:
        step.setServiceParent(services)
    services.startService()
    stopped = services.stopService()
    assert journal == ["start listener", "start pool", "start jobs", "stop jobs draining=True"]
    steps[2].stopping.callback(None)
    assert journal[-1] == "stop pool draining=True"
    steps[1].stopping.callback(None)
    assert journal[-1] == "stop listener draining=True"
    assert not stopped.called
    steps[0].stopping.callback(None)
    assert stopped.called
    assert flushed == [True]


def test_a_port_in_use_is_one_short_line() -> None:
    """EADDRINUSE reads 'address in use', with the host and port the user gave."""
    error = CannotListenError("127.0.0.1", 8080, OSError(errno.EADDRINUSE, "Address in use"))
    assert cannot_listen("127.0.0.1", 8080, error) == (
        "mtrd: cannot listen on 127.0.0.1:8080: address in use"
    )


def test_an_ipv6_listen_address_is_bracketed() -> None:
    """An IPv6 host is written [host]:port."""
    error = CannotListenError("::1", 80, OSError(errno.EACCES, "Permission denied"))
    assert cannot_listen("::1", 80, error).startswith(
        "mtrd: cannot listen on [::1]:80: permission denied"
    )


def test_the_listener_listens_again_after_a_stop() -> None:
    """start, stop and start again: the listener binds twice and is listening at the end."""
    reactor = MemoryReactor()
    listener = Listener(TCP4ServerEndpoint(reactor, 8080, interface="127.0.0.1"), Factory())
    listener.startService()
    assert listener.stopService().called
    listener.startService()
    assert [(port, interface) for port, _, _, interface in reactor.tcpServers] == [
        (8080, "127.0.0.1"),
        (8080, "127.0.0.1"),
    ]
    assert listener.running


class RefusingEndpoint:
    """An endpoint whose port is taken."""

    def listen(self, factory: object) -> Deferred[None]:
        return fail(CannotListenError("127.0.0.1", 8080, OSError(errno.EADDRINUSE, "in use")))


def test_a_refused_bind_raises_from_start_and_stops_what_comes_after() -> None:
    """A port in use raises from startService, so later services in the parent never start."""
    journal: list[str] = []
    parent = MtrdService(SimpleNamespace(draining=False), None, None)  # type: ignore[arg-type]
    Listener(RefusingEndpoint(), Factory()).setServiceParent(parent)  # type: ignore[arg-type]
    Step("pool", journal, SimpleNamespace(draining=False)).setServiceParent(parent)
    with pytest.raises(CannotListenError):
        parent.startService()
    assert journal == []


def test_memory_mode_loads_no_redis_client() -> None:
    """Importing the composition root loads neither txredisapi nor the Redis store modules."""
    code = (
        "import sys, mtrd.app; "
        "print(sorted(m for m in sys.modules if 'txredisapi' in m or m in "
        "('mtrd.tracing.redis.connection', 'mtrd.tracing.redis.store', "
        "'mtrd.tracing.redis.front')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_replica_ids_are_host_pid_and_four_hex_digits() -> None:
    """A replica id is {hostname}-{pid}-{4 hex}, different on each call."""
    first, second = replica_id(), replica_id()
    assert first.startswith(f"{socket.gethostname()}-{os.getpid()}-")
    assert re.fullmatch(r"[0-9a-f]{4}", first.rsplit("-", 1)[1])
    assert first != second or len({replica_id() for _ in range(20)}) > 1


def test_redis_mode_builds_the_shared_services_in_stopping_order() -> None:
    """With --store redis:// the tree is listener, pool, connection, front, runner, then the
    webhook sender, the monitors and their director; the password is in none of their reprs."""
    pytest.importorskip("mtrd.tracing.redis.runner")
    config = ServeConfig(backend=parse_store("redis://:hunter2-secret@127.0.0.1:6399/0"))
    services, _pool = build(MemoryReactorClock(), config)
    kinds = [type(service).__name__ for service in services]
    assert kinds == [
        "Listener", "ProbePool", "RedisConnection", "SharedTraces", "RedisRunner",
        "WebhookSender", "MonitorService", "MonitorDirector",
    ]  # fmt: skip
    assert not any("hunter2" in repr(service) for service in services)
