"""MaxMind DB files (GeoLite2-ASN, IPinfo Lite, GeoLite2-Country or compatible), offline.

A :class:`NetworkDatabase` is read once at start (a missing or corrupt file is a
:class:`DatabaseError` whose message is one line) and is a Twisted ``IService`` while
mtrd runs: it reloads the file when its modification time, size or inode changes (checked
every ``check_every`` seconds) and when :meth:`reload` is called (on SIGHUP). A reload
reads the file away from the reactor thread; traces go on with the data loaded before
until the new one is complete, and a reload that fails keeps it and logs why.

The whole file is copied into memory of this process's own (a memfd) and looked up there
with the library's C extension: a lookup in the pure-Python reader costs twenty times as
much (bench/results), and mapping the operator's file itself would crash the process on
the next lookup when the file is rewritten in place. Without the C extension, the
pure-Python reader reads the file into memory.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import attrs
import maxminddb
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from mtrd.annotations.model import DatabaseInfo

CHECK_EVERY = 10.0

# How a function is run away from the reactor (threads.deferToThread in the service).
OffReactor = Callable[[Callable[[], "Loaded"]], Deferred["Loaded"]]


class DatabaseError(Exception):
    """A database file that cannot be used; the message is one line naming it."""


@attrs.frozen
class Network:
    """What a database says of one address: its record and the covering prefix."""

    record: dict[str, Any]
    prefix: str


@attrs.frozen(eq=False)
class Loaded:
    """One database file as read, and how to tell when it changed."""

    path: str
    reader: maxminddb.Reader
    info: DatabaseInfo
    stamp: tuple[int, int, int]  # inode, size, modification time (ns)

    def network(self, address: str) -> Network | None:
        """The record covering ``address``, or None when the database has none."""
        try:
            record, prefix_len = self.reader.get_with_prefix_len(address)
        except ValueError:
            return None
        if not isinstance(record, dict) or not record:
            return None
        return Network(record, _prefix(address, prefix_len))


def _prefix(address: str, length: int) -> str:
    """The network of ``length`` bits around ``address``, e.g. 198.51.100.0/24.

    With the socket module's C functions: ``ipaddress`` costs ten lookups' time here.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    packed = socket.inet_pton(family, address)
    host_bits = len(packed) * 8 - length
    network = (int.from_bytes(packed) >> host_bits << host_bits).to_bytes(len(packed))
    return f"{socket.inet_ntop(family, network)}/{length}"


def _stamp(path: str) -> tuple[int, int, int]:
    stat = os.stat(path)
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _open_private(path: str) -> maxminddb.Reader:
    """``path``'s contents, copied into a memfd and opened there (see the module)."""
    with open(path, "rb") as source:
        data = source.read()
    try:
        fd = os.memfd_create("mtrd-mmdb", os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        return maxminddb.open_database(path, maxminddb.MODE_MEMORY)
    try:
        os.write(fd, data)
        try:
            # The mapping outlives the descriptor: closing it below leaves the copy mapped.
            return maxminddb.open_database(f"/proc/self/fd/{fd}", maxminddb.MODE_MMAP_EXT)
        except ValueError as e:
            if "extension" not in str(e).lower():
                raise
            return maxminddb.open_database(path, maxminddb.MODE_MEMORY)
    finally:
        os.close(fd)


def read_database(path: str) -> Loaded:
    """Read ``path`` whole; raises :class:`DatabaseError` when it cannot be used."""
    try:
        stamp = _stamp(path)
        reader = _open_private(path)
    except FileNotFoundError:
        raise DatabaseError(f"{path}: no such file") from None
    except PermissionError:
        raise DatabaseError(f"{path}: permission denied") from None
    except IsADirectoryError:
        raise DatabaseError(f"{path}: is a directory") from None
    except (maxminddb.InvalidDatabaseError, ValueError, OSError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DatabaseError(f"{path}: not a MaxMind DB file ({why})") from None
    metadata = reader.metadata()
    info = DatabaseInfo(metadata.database_type, float(metadata.build_epoch))
    return Loaded(path, reader, info, stamp)


def _in_place(load: Callable[[], Loaded]) -> Deferred[Loaded]:
    return succeed(load())


class NetworkDatabase(Service):
    """One database file, reloaded when it changes; see the module docstring."""

    log = Logger()

    def __init__(
        self,
        loaded: Loaded,
        clock: IReactorTime,
        *,
        off_reactor: OffReactor = _in_place,
        check_every: float = CHECK_EVERY,
    ) -> None:
        """Watch the file ``loaded`` was read from (:func:`read_database`, at start)."""
        self.path = loaded.path
        self._clock = clock
        self._off_reactor = off_reactor
        self.check_every = check_every
        self.loaded = loaded
        self.reloads = 0
        self.failed_reloads = 0
        self._check: LoopingCall | None = None
        self._reloading: Deferred[None] | None = None
        self._refused: tuple[int, int, int] | None = None  # said once, not every check

    @property
    def info(self) -> DatabaseInfo:
        """The type and build time of the data in use."""
        return self.loaded.info

    def network(self, address: str) -> Network | None:
        """What the data in use says of ``address``."""
        return self.loaded.network(address)

    def startService(self) -> None:
        """Watch the file for changes."""
        super().startService()  # type: ignore[no-untyped-call]
        self._check = LoopingCall(self._changed)
        self._check.clock = self._clock
        self._check.start(self.check_every, now=False).addErrback(
            lambda f: self.log.failure("the watch on {path} stopped", f, path=self.path)
        )

    def stopService(self) -> None:
        """Stop watching the file."""
        super().stopService()  # type: ignore[no-untyped-call]
        if self._check is not None and self._check.running:
            self._check.stop()
        self._check = None

    def _changed(self) -> None:
        try:
            stamp = _stamp(self.path)
        except OSError:
            return  # being replaced, or gone: the data in use stays until a file is back
        if stamp not in (self.loaded.stamp, self._refused):
            self.reload()

    def reload(self) -> Deferred[None]:
        """Read the file again; on failure keep the data in use and log why."""
        if self._reloading is not None:
            return self._reloading
        reloading = Deferred.fromCoroutine(self._reload())
        if not reloading.called:
            self._reloading = reloading
        return reloading

    async def _reload(self) -> None:
        try:
            self._refused = _stamp(self.path)
        except OSError:
            self._refused = None
        try:
            loaded = await self._off_reactor(lambda: read_database(self.path))
        except DatabaseError as e:
            self.failed_reloads += 1
            self.log.warn("reload refused, the data loaded before stays: {why}", why=str(e))
        except Exception:
            self.failed_reloads += 1
            self.log.failure("reload of {path} failed; the data before stays", path=self.path)
        else:
            self.loaded = loaded
            self._refused = None
            self.reloads += 1
            self.log.info(
                "loaded {path} ({type}, built {built:.0f})",
                path=self.path,
                type=loaded.info.type,
                built=loaded.info.built_at,
            )
        finally:
            self._reloading = None
