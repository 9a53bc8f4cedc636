"""Replies the kernel dropped before an mtr-packet worker could read them.

Every raw ICMP socket in a network namespace receives every ICMP message that arrives
there, and mtr-packet reads its own between the commands it works through. When replies
come faster than a worker reads them, its socket's receive buffer (``net.core.rmem_default``,
about 200 replies) overflows and the kernel drops the rest: the probes show as lost though
nothing was lost on the path. The kernel counts those drops per socket, in the last column of
``/proc/<pid>/net/raw`` and ``raw6`` (the tables of the namespace ``pid`` lives in). The
workers' sockets are the raw sockets of this user there (a worker that gained CAP_NET_RAW
from its file does not let its parent read its descriptors, so sockets cannot be told apart
by process).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import attrs

TABLES = ("raw", "raw6")
_UID, _INODE, _DROPS = 7, 9, 12  # columns of a socket's line


def socket_drops(table: str, uid: int) -> dict[int, int]:
    """Drops per socket inode of ``uid``'s sockets in one ``/proc/net/raw``-style table."""
    found: dict[int, int] = {}
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) <= _DROPS:
            continue
        try:
            owner, inode, drops = int(fields[_UID]), int(fields[_INODE]), int(fields[_DROPS])
        except ValueError:
            continue
        if owner == uid:
            found[inode] = drops
    return found


def read_tables(pid: int, read: Callable[[str], str]) -> dict[int, int] | None:
    """Drops per raw socket of this user in ``pid``'s network namespace; None when the
    tables cannot be read (the process is gone, no /proc)."""
    found: dict[int, int] = {}
    for name in TABLES:
        try:
            table = read(f"/proc/{pid}/net/{name}")
        except OSError:
            return None
        found.update(socket_drops(table, os.getuid()))
    return found


def read_file(path: str) -> str:
    """The text of a /proc file (in memory: reading it does not wait on a disk)."""
    with open(path, encoding="ascii", errors="replace") as file:
        return file.read()


@attrs.define
class DropCount:
    """Drops summed over every socket seen, sockets that closed since included (each
    socket's count only grows while it lives, and a new worker brings new sockets)."""

    total: int = 0
    _last: dict[int, int] = attrs.field(factory=dict)

    def observe(self, sockets: Iterable[tuple[int, int]]) -> int:
        """Take the sockets' counts now (inode, drops); return how many drops are new."""
        seen = dict(sockets)
        new = sum(max(0, drops - self._last.get(inode, 0)) for inode, drops in seen.items())
        # A socket gone is forgotten; what it dropped stays in the total.
        self._last = seen
        self.total += new
        return new
