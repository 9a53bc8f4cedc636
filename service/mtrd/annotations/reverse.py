"""Reverse DNS for responder addresses: PTR lookups through Twisted's resolver, cached.

One :class:`ReverseNames` is shared by every trace. It caches each answer for the
record's TTL (capped), and a missing name, a refused name or a timeout for a short
``negative_ttl``, so a router that has no name is asked about once in a while, not once
per trace. At most ``max_in_flight`` lookups run at once: an address seen while that
many are out gets no name this time (and is asked about the next time it is seen).
Each lookup is bounded by ``timeout`` seconds on the injected clock.

The PTR answer is untrusted input: only a valid hostname
(:func:`mtrd.annotations.hostnames.valid_hostname`) is kept; anything else is dropped
and counted in ``rejected``. With ``verify`` on, a name is looked up forward
(forward-confirmed reverse DNS) and marked ``verified`` when that gives the address back.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, succeed
from twisted.internet.interfaces import IReactorTime, IResolver
from twisted.logger import Logger
from twisted.names import dns
from twisted.names.error import DNSQueryTimeoutError

from mtrd.annotations.hostnames import valid_hostname

_TIMEOUTS = (TimeoutError, CancelledError, DNSQueryTimeoutError)


@attrs.frozen
class ReverseSettings:
    """How reverse lookups are bounded and cached."""

    cache_size: int = 10_000
    timeout: float = 2.0
    ttl_cap: float = 86_400.0  # a PTR's own TTL, but never longer than a day
    negative_ttl: float = 60.0  # no name, a refused name, a timeout
    max_in_flight: int = 64
    verify: bool = False

    def __attrs_post_init__(self) -> None:
        if self.cache_size < 1 or self.max_in_flight < 1:
            raise ValueError("the name cache and the lookups in flight need room for one")
        if self.timeout <= 0:
            raise ValueError("the reverse DNS timeout must be positive")


@attrs.frozen
class Name:
    """What reverse DNS said of an address: its hostname (None: none usable) and, when
    checked, whether the name resolves back to it."""

    hostname: str | None = None
    verified: bool | None = None


NO_NAME = Name()


@attrs.define
class NameCounts:
    """What the lookups came to, since start (read by the metrics)."""

    lookups: int = 0
    hits: int = 0
    rejected: int = 0  # PTR answers that were not a valid hostname
    timeouts: int = 0
    failures: int = 0  # no name (NXDOMAIN, no PTR) or a DNS error
    skipped: int = 0  # not asked: too many lookups in flight


class ReverseNames:
    """The shared PTR cache; see the module docstring."""

    log = Logger()

    def __init__(self, resolver: IResolver, clock: IReactorTime, settings: ReverseSettings) -> None:
        self._resolver = resolver
        self._clock = clock
        self.settings = settings
        self._cache: OrderedDict[str, tuple[float, Name]] = OrderedDict()
        self._in_flight: dict[str, list[Deferred[Name]]] = {}
        self.counts = NameCounts()

    def __len__(self) -> int:
        return len(self._cache)

    @property
    def in_flight(self) -> int:
        """Lookups out now."""
        return len(self._in_flight)

    def cached(self, address: str) -> Name | None:
        """The cached name of ``address``, or None when it has to be looked up."""
        entry = self._cache.get(address)
        if entry is None:
            return None
        expires, name = entry
        if expires <= self._clock.seconds():
            del self._cache[address]
            return None
        self._cache.move_to_end(address)
        return name

    def lookup(self, address: str) -> Deferred[Name]:
        """The name of ``address``, from the cache or from DNS; never fails."""
        name = self.cached(address)
        if name is not None:
            self.counts.hits += 1
            return succeed(name)
        mine: Deferred[Name] = Deferred()
        waiting = self._in_flight.get(address)
        if waiting is not None:
            waiting.append(mine)
            return mine
        if len(self._in_flight) >= self.settings.max_in_flight:
            self.counts.skipped += 1
            return succeed(NO_NAME)
        self._in_flight[address] = [mine]
        self.counts.lookups += 1
        asked = Deferred.fromCoroutine(self._ask(address))
        asked.addErrback(self._unexpected, address)
        asked.addCallback(self._answered, address)
        return mine

    def _answered(self, found: tuple[Name, float], address: str) -> None:
        name, ttl = found
        if ttl > 0:
            self._cache[address] = (self._clock.seconds() + ttl, name)
            self._cache.move_to_end(address)
            while len(self._cache) > self.settings.cache_size:
                self._cache.popitem(last=False)
        for waiter in self._in_flight.pop(address, []):
            waiter.callback(name)

    def _unexpected(self, failure: Any, address: str) -> tuple[Name, float]:
        self.log.failure("reverse lookup of {address} failed", failure, address=address)
        self.counts.failures += 1
        return NO_NAME, self.settings.negative_ttl

    async def _ask(self, address: str) -> tuple[Name, float]:
        """The name of ``address`` and how long to keep it."""
        settings = self.settings
        pointer = ipaddress.ip_address(address).reverse_pointer
        try:
            result = await self._bounded(self._resolver.lookupPointer(pointer, timeout=self._tries))
        except _TIMEOUTS:
            self.counts.timeouts += 1
            return NO_NAME, settings.negative_ttl
        except Exception:  # NXDOMAIN, SERVFAIL, refused: no name, for a while
            self.counts.failures += 1
            return NO_NAME, settings.negative_ttl
        records = [r for r in result[0] if r.type == dns.PTR]
        if not records:
            self.counts.failures += 1
            return NO_NAME, settings.negative_ttl
        record = records[0]
        hostname = valid_hostname(record.payload.name.name)
        if hostname is None:
            self.counts.rejected += 1
            return NO_NAME, settings.negative_ttl
        ttl = min(float(record.ttl), settings.ttl_cap)
        if not settings.verify:
            return Name(hostname), ttl
        return Name(hostname, await self._confirms(hostname, address)), ttl

    async def _confirms(self, hostname: str, address: str) -> bool:
        """Whether ``hostname`` resolves forward to ``address`` (FCrDNS)."""
        version = ipaddress.ip_address(address).version
        lookup = self._resolver.lookupAddress if version == 4 else self._resolver.lookupIPV6Address
        wanted = dns.A if version == 4 else dns.AAAA
        try:
            result = await self._bounded(lookup(hostname, timeout=self._tries))
        except Exception:
            return False
        found = {ipaddress.ip_address(r.payload.address) for r in result[0] if r.type == wanted}
        return ipaddress.ip_address(address) in found

    @property
    def _tries(self) -> tuple[int, ...]:
        return (max(1, round(self.settings.timeout)),)

    def _bounded(self, asked: Deferred[Any]) -> Deferred[Any]:
        # Twisted's own timeout counts in whole seconds and retries; the clock bounds it.
        return asked.addTimeout(self.settings.timeout, self._clock)
