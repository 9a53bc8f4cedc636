"""Small MaxMind DB files for tests, built here for documentation addresses (nothing is
downloaded): an ASN database in GeoLite2-ASN's shape and a country one in GeoLite2-Country's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmdb_writer import MMDBWriter
from netaddr import IPSet

# The lab's routers and targets (tests/lab/topology.py) in two documentation networks.
LAB_ASNS: dict[str, tuple[int, str]] = {
    "198.51.100.0/24": (64500, "Example Transit"),
    "2001:db8::/32": (64500, "Example Transit"),
    "203.0.113.0/24": (64501, "Example Hosting"),
}
LAB_COUNTRIES: dict[str, str] = {"198.51.100.0/24": "NL", "203.0.113.0/24": "DE"}


def write_asn_db(path: Path, networks: dict[str, tuple[int, str]] = LAB_ASNS) -> Path:
    """An ASN database mapping each network to (number, name); returns ``path``."""
    return _write(
        path,
        "GeoLite2-ASN",
        {
            network: {"autonomous_system_number": asn, "autonomous_system_organization": name}
            for network, (asn, name) in networks.items()
        },
    )


def write_country_db(path: Path, networks: dict[str, str] = LAB_COUNTRIES) -> Path:
    """A country database mapping each network to an ISO code; returns ``path``."""
    return _write(
        path,
        "GeoLite2-Country",
        {network: {"country": {"iso_code": code}} for network, code in networks.items()},
    )


def _write(path: Path, database_type: str, records: dict[str, dict[str, Any]]) -> Path:
    writer = MMDBWriter(ip_version=6, database_type=database_type, ipv4_compatible=True)
    for network, record in records.items():
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return path
