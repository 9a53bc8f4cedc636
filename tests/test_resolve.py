"""Target resolution: literals as they are, names through an injected resolver."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from mtrd.tracing.resolution import ResolutionFailed, Resolved, TargetResolver
from twisted.internet import defer
from twisted.names import dns, error


class FakeNames:
    """An IResolver that answers from a table, or fails as told."""

    def __init__(
        self,
        a: list[str] | None = None,
        aaaa: list[str] | None = None,
        fail: Exception | None = None,
    ) -> None:
        self.a, self.aaaa, self.fail = a or [], aaaa or [], fail
        self.asked: list[tuple[str, tuple[int, ...]]] = []

    def _answer(
        self, name: str, kind: int, addresses: list[str], timeout: tuple[int, ...]
    ) -> defer.Deferred[Any]:
        self.asked.append((name, timeout))
        if self.fail is not None:
            return defer.fail(self.fail)
        record = dns.Record_A if kind == dns.A else dns.Record_AAAA
        cname = dns.RRHeader(name.encode(), dns.CNAME, dns.IN, 60, dns.Record_CNAME(b"alias.test"))
        rows = [cname] + [
            dns.RRHeader(name.encode(), kind, dns.IN, 60, record(a)) for a in addresses
        ]
        return defer.succeed((rows, [], []))

    def lookupAddress(self, name: str, timeout: tuple[int, ...]) -> defer.Deferred[Any]:  # noqa: N802
        return self._answer(name, dns.A, self.a, timeout)

    def lookupIPV6Address(self, name: str, timeout: tuple[int, ...]) -> defer.Deferred[Any]:  # noqa: N802
        return self._answer(name, dns.AAAA, self.aaaa, timeout)


@pytest_twisted.ensureDeferred
async def test_literal_needs_no_lookup() -> None:
    """An address literal is used as it is, written canonically."""
    names = FakeNames()
    assert await TargetResolver(names).resolve("2001:DB8::7", None) == Resolved("2001:db8::7", 6)  # type: ignore[arg-type]
    assert names.asked == []


@pytest_twisted.ensureDeferred
async def test_literal_of_the_wrong_family_is_refused() -> None:
    """ip_version must agree with a literal."""
    with pytest.raises(ResolutionFailed, match="not an IPv6 address"):
        await TargetResolver(FakeNames()).resolve("203.0.113.7", 6)  # type: ignore[arg-type]


@pytest_twisted.ensureDeferred
async def test_name_resolves_to_its_a_record_past_a_cname() -> None:
    """A name gives its first A record; CNAMEs in the answer are skipped."""
    names = FakeNames(a=["203.0.113.9"], aaaa=["2001:db8::9"])
    assert await TargetResolver(names, timeouts=(1, 2)).resolve("x.test", None) == Resolved(
        "203.0.113.9", 4
    )  # type: ignore[arg-type]
    assert names.asked == [("x.test", (1, 2))]


@pytest_twisted.ensureDeferred
async def test_name_without_a_falls_back_to_aaaa() -> None:
    """With no family asked and no A record, the AAAA record is used."""
    names = FakeNames(aaaa=["2001:db8::9"])
    assert await TargetResolver(names).resolve("x.test", None) == Resolved("2001:db8::9", 6)  # type: ignore[arg-type]


@pytest_twisted.ensureDeferred
async def test_asked_family_without_records_fails() -> None:
    """ip_version 6 for a name with only A records fails, saying so."""
    with pytest.raises(ResolutionFailed, match="has no AAAA record"):
        await TargetResolver(FakeNames(a=["203.0.113.9"])).resolve("x.test", 6)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        (error.DNSNameError(), "no such host"),
        (defer.TimeoutError(), "timed out after 5 s"),
        (error.DNSServerError(), r"DNS error \(DNSServerError\)"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_resolver_failures_say_why(failure: Exception, message: str) -> None:
    """NXDOMAIN, timeouts and server errors become a ResolutionFailed with the reason."""
    with pytest.raises(ResolutionFailed, match=message):
        await TargetResolver(FakeNames(fail=failure)).resolve("x.test", 4)  # type: ignore[arg-type]
