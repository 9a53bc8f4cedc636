"""A tiny authoritative DNS server for tests, on loopback, with Twisted Names."""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet import defer
from twisted.names import dns, error, server
from twisted.names.common import ResolverBase


class Zone(ResolverBase):
    """Answers A and AAAA for the names it holds, PTR for the addresses in ``pointers``
    (never for those in ``silent``: those queries go unanswered); NXDOMAIN for the rest."""

    def __init__(
        self,
        records: dict[str, tuple[list[str], list[str]]],
        pointers: dict[str, str] | None = None,
        silent: frozenset[str] = frozenset(),
        ttl: int = 60,
    ) -> None:
        super().__init__()
        self.records = {name.lower(): value for name, value in records.items()}
        self.pointers = {
            ipaddress.ip_address(address).reverse_pointer: name
            for address, name in (pointers or {}).items()
        }
        self.silent = {ipaddress.ip_address(a).reverse_pointer for a in silent}
        self.ttl = ttl
        self.queries: list[str] = []

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> defer.Deferred[Any]:
        text = name.decode().lower().rstrip(".")
        self.queries.append(text)
        if text in self.silent:
            return defer.Deferred()  # never answered: the asker times out
        if type == dns.PTR and text in self.pointers:
            # The name goes out as given, hostile or not: the asker must cope.
            record = dns.Record_PTR(self.pointers[text].encode("utf-8", "surrogateescape"))
            return defer.succeed(([dns.RRHeader(name, dns.PTR, dns.IN, self.ttl, record)], [], []))
        if text not in self.records:
            return defer.fail(error.DomainError(name))
        ipv4, ipv6 = self.records[text]
        answers: list[dns.RRHeader] = []
        if type == dns.A:
            answers = [dns.RRHeader(name, dns.A, dns.IN, 60, dns.Record_A(a, 60)) for a in ipv4]
        elif type == dns.AAAA:
            answers = [
                dns.RRHeader(name, dns.AAAA, dns.IN, 60, dns.Record_AAAA(a, 60)) for a in ipv6
            ]
        return defer.succeed((answers, [], []))


def listen(reactor: Any, zone: Zone) -> tuple[Any, int]:
    """Serve ``zone`` over UDP on 127.0.0.1; returns the listening port and its number."""
    factory = server.DNSServerFactory(authorities=[zone])
    port = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
    return port, port.getHost().port
