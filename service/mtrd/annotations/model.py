"""What is known about one responder address, and where the AS data came from."""

from __future__ import annotations

import attrs


@attrs.frozen(weakref_slot=False)
class Annotation:
    """A responder's name and network, each None while unknown.

    ``hostname`` is a validated PTR name (never raw DNS text); ``verified`` says whether
    it resolves back to the address, None when that check is off.
    """

    hostname: str | None = None
    verified: bool | None = None
    asn: int | None = None
    as_name: str | None = None
    prefix: str | None = None
    country: str | None = None

    @property
    def empty(self) -> bool:
        """True when nothing at all is known."""
        return self == NOTHING


NOTHING = Annotation()


@attrs.frozen
class DatabaseInfo:
    """A MaxMind DB file as loaded: its type (e.g. GeoLite2-ASN) and build time."""

    type: str
    built_at: float  # seconds since the epoch


@attrs.frozen
class Sources:
    """The databases a trace's annotations came from (None: none loaded)."""

    asn_db: DatabaseInfo | None = None
    geo_db: DatabaseInfo | None = None
