"""Everything known about a responder address, now and once its name comes back."""

from __future__ import annotations

import attrs
from twisted.internet.defer import Deferred

from mtrd.annotations.model import NOTHING, Annotation, Sources
from mtrd.annotations.networks import NetworkDatabase
from mtrd.annotations.reverse import Name, ReverseNames

# Addresses whose networks are remembered; past it the memory starts over. The same routers
# answer trace after trace, and two database lookups per new address of every trace cost
# several percent of end-to-end throughput without it (bench/results, figure 8).
NETWORKS_KEPT = 65_536


class Annotator:
    """Names (reverse DNS, when on) and networks (the AS and geo databases, when loaded)
    of responder addresses, for every trace."""

    def __init__(
        self,
        names: ReverseNames | None = None,
        asn_db: NetworkDatabase | None = None,
        geo_db: NetworkDatabase | None = None,
    ) -> None:
        self.names = names
        self.asn_db = asn_db
        self.geo_db = geo_db
        self._networks_of: dict[str, Annotation] = {}
        self._loaded: tuple[object, object] = (None, None)  # the data _networks_of is from

    def sources(self) -> Sources:
        """The databases in use now."""
        return Sources(
            asn_db=None if self.asn_db is None else self.asn_db.info,
            geo_db=None if self.geo_db is None else self.geo_db.info,
        )

    def annotate(self, address: str) -> tuple[Annotation, Deferred[Annotation] | None]:
        """What is known of ``address`` now and, when its name is still to be looked up,
        a Deferred that fires with the whole annotation once it is (it never fails)."""
        known = self._networks(address)
        if self.names is None:
            return known, None
        name = self.names.cached(address)
        if name is not None:
            return _named(known, name), None
        later = self.names.lookup(address)
        if later.called:  # a lookup that could not start: nothing more will come
            return known, None
        return known, later.addCallback(lambda found: _named(known, found))

    def _networks(self, address: str) -> Annotation:
        loaded = (
            None if self.asn_db is None else self.asn_db.loaded,
            None if self.geo_db is None else self.geo_db.loaded,
        )
        if loaded[0] is not self._loaded[0] or loaded[1] is not self._loaded[1]:
            self._networks_of, self._loaded = {}, loaded  # reloaded: forget the old answers
        known = self._networks_of.get(address)
        if known is None:
            if len(self._networks_of) >= NETWORKS_KEPT:
                self._networks_of.clear()
            known = self._networks_of[address] = self._look_up(address)
        return known

    def _look_up(self, address: str) -> Annotation:
        asn = as_name = prefix = country = None
        if self.asn_db is not None:
            network = self.asn_db.network(address)
            if network is not None:
                asn, as_name = _as_of(network.record)
                prefix = network.prefix if asn is not None else None
                country = _country_of(network.record)
        if self.geo_db is not None:
            network = self.geo_db.network(address)
            if network is not None:
                country = _country_of(network.record) or country
        if asn is None and country is None:
            return NOTHING
        return Annotation(asn=asn, as_name=as_name, prefix=prefix, country=country)


def _named(known: Annotation, name: Name) -> Annotation:
    if name.hostname is None:
        return known
    return attrs.evolve(known, hostname=name.hostname, verified=name.verified)


def _as_of(record: dict[str, object]) -> tuple[int | None, str | None]:
    """The AS number and name in a GeoLite2-ASN or IPinfo record."""
    number = record.get("autonomous_system_number", record.get("asn"))
    name = record.get("autonomous_system_organization", record.get("as_name"))
    if isinstance(number, str) and number.upper().startswith("AS"):
        number = number[2:]
    try:
        asn = int(number) if isinstance(number, int | str) else None
    except ValueError:
        asn = None
    if asn is not None and not 0 < asn < 2**32:
        asn = None
    if not isinstance(name, str) or asn is None:
        return asn, None
    # The operator's file, but shown in terminals: nothing that is not plain text.
    return asn, "".join(c for c in name if c.isprintable())[:200] or None


def _country_of(record: dict[str, object]) -> str | None:
    """The ISO country code in a GeoLite2-Country/City or IPinfo record."""
    country = record.get("country")
    code = country.get("iso_code") if isinstance(country, dict) else record.get("country_code")
    if isinstance(code, str) and len(code) == 2 and code.isascii() and code.isalpha():
        return code.upper()
    return None
