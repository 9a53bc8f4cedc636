"""Turning a trace's target into an address: literals as they are, names through DNS.

Names are resolved with Twisted's asynchronous resolver (never the blocking
``getaddrinfo``), against the configured DNS servers, within a bounded time.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet import error as net_error
from twisted.internet.interfaces import IResolver
from twisted.names import client, dns
from twisted.names import error as dns_error

from mtrd.engine.probe import address_of


def dns_resolver(servers: Sequence[tuple[str, int]]) -> IResolver:
    """Twisted's resolver: only ``servers`` when given, else /etc/hosts and /etc/resolv.conf.

    (``client.createResolver(servers=...)`` would also ask resolv.conf's servers.)
    """
    resolver: IResolver = (
        client.Resolver(servers=list(servers))  # type: ignore[no-untyped-call]
        if servers
        else client.createResolver()  # type: ignore[no-untyped-call]
    )
    return resolver


class ResolutionFailed(Exception):
    """The target could not be turned into an address; the message says why."""


@attrs.frozen
class Resolved:
    """The address a target stands for."""

    address: str
    ip_version: int


def literal(target: str) -> Resolved | None:
    """The target as an address when it is an IP literal, else None."""
    try:
        address = address_of(target)
    except ValueError:
        return None
    return Resolved(str(address), address.version)


class TargetResolver:
    """Resolves hostnames with an injected ``IResolver`` (e.g. twisted.names.client)."""

    def __init__(self, resolver: IResolver, timeouts: Sequence[int] = (1, 2, 2)) -> None:
        self._resolver = resolver
        self._timeouts = tuple(timeouts)

    async def resolve(self, target: str, ip_version: int | None) -> Resolved:
        """The address of ``target``: A for IPv4, AAAA for IPv6; A, then AAAA, when unsaid."""
        found = literal(target)
        if found is not None:
            if ip_version is not None and ip_version != found.ip_version:
                raise ResolutionFailed(f"{target} is not an IPv{ip_version} address")
            return found
        families = [ip_version] if ip_version is not None else [4, 6]
        reasons = []
        for family in families:
            try:
                addresses = await self._lookup(target, family)
            except ResolutionFailed as e:
                reasons.append(str(e))
                continue
            if addresses:
                return Resolved(addresses[0], family)
            reasons.append(f"{target} has no {'A' if family == 4 else 'AAAA'} record")
        raise ResolutionFailed("; ".join(dict.fromkeys(reasons)))

    async def _lookup(self, name: str, family: int) -> list[str]:
        lookup = self._resolver.lookupAddress if family == 4 else self._resolver.lookupIPV6Address
        record_type = dns.A if family == 4 else dns.AAAA
        try:
            result: Any = await lookup(name, timeout=self._timeouts)
        except dns_error.DNSNameError:
            raise ResolutionFailed(f"{name}: no such host") from None
        except (defer.TimeoutError, net_error.TimeoutError, dns_error.DNSQueryTimeoutError):
            total = sum(self._timeouts)
            raise ResolutionFailed(f"{name}: DNS lookup timed out after {total} s") from None
        except dns_error.DomainError as e:
            raise ResolutionFailed(f"{name}: DNS error ({type(e).__name__})") from None
        except net_error.DNSLookupError as e:
            raise ResolutionFailed(f"{name}: {e}") from None
        answers: list[Any] = result[0]
        return [
            str(ipaddress.ip_address(record.payload.address))
            for record in answers
            if record.type == record_type
        ]
