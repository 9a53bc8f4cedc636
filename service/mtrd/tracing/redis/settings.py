"""``--store`` and ``--vantage``: where traces are kept and where this replica's probes leave.

``--store`` is ``memory`` (the embedded default) or a Redis URL,
``redis://[[user]:password@]HOST[:PORT][/DB]`` or ``rediss://...`` for TLS. The password is
kept out of every repr, str and error message: a URL that does not parse is reported by
what is wrong with it, never by its text.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Final

import attrs

DEFAULT_PORT: Final = 6379
VANTAGE_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


class BadStoreUrl(ValueError):
    """A ``--store`` value that is neither ``memory`` nor a usable Redis URL."""


@attrs.frozen
class Secret:
    """A password: compared and used, never shown."""

    value: str = attrs.field(repr=False)

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"


@attrs.frozen
class MemoryStore:
    """Traces live in this process only."""

    def __str__(self) -> str:
        return "memory"


@attrs.frozen
class RedisStore:
    """Where the shared Redis is, and how to log in to it."""

    host: str
    port: int = DEFAULT_PORT
    db: int = 0
    tls: bool = False
    username: str | None = None
    password: Secret | None = None

    def __str__(self) -> str:
        return self.display

    @property
    def display(self) -> str:
        """The URL with the password masked: what logs, metrics and errors may show."""
        scheme = "rediss" if self.tls else "redis"
        auth = ""
        if self.username is not None or self.password is not None:
            user = urllib.parse.quote(self.username or "", safe="")
            auth = f"{user}:***@" if self.password is not None else f"{user}@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{auth}{host}:{self.port}/{self.db}"


StoreSetting = MemoryStore | RedisStore


def parse_store(text: str) -> StoreSetting:
    """Parse a ``--store`` value; :class:`BadStoreUrl` names the part at fault, not the value."""
    if text.strip() == "memory":
        return MemoryStore()
    scheme, sep, _ = text.partition("://")
    if not sep or scheme.lower() not in ("redis", "rediss"):
        raise BadStoreUrl("the store is 'memory' or a redis:// or rediss:// URL")
    try:
        parts = urllib.parse.urlsplit(text.strip())
        host, port = parts.hostname, parts.port
    except ValueError:
        raise BadStoreUrl("the store URL has a bad host or port (port: 1-65535)") from None
    if not host:
        raise BadStoreUrl("the store URL names no host")
    if parts.query or parts.fragment:
        raise BadStoreUrl("the store URL takes no query or fragment")
    if port == 0:
        raise BadStoreUrl("the store URL has a bad host or port (port: 1-65535)")
    return RedisStore(
        host=host,
        port=DEFAULT_PORT if port is None else port,
        db=_database(parts.path),
        tls=scheme.lower() == "rediss",
        username=urllib.parse.unquote(parts.username) if parts.username else None,
        password=Secret(urllib.parse.unquote(parts.password))
        if parts.password is not None
        else None,
    )


def _database(path: str) -> int:
    number = path.removeprefix("/")
    if not number:
        return 0
    if not number.isascii() or not number.isdigit() or len(number) > 5:
        raise BadStoreUrl("the store URL's path is a database number, e.g. /0")
    return int(number)


def parse_vantage(text: str) -> str:
    """Check a ``--vantage`` name: 1-63 letters, digits, '.', '_' or '-', from a letter or digit."""
    if VANTAGE_PATTERN.fullmatch(text) is None:
        raise ValueError(
            "a vantage name is 1-63 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit"
        )
    return text
