"""Who responders are: hostname validation, the PTR cache, the MaxMind databases."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mtrd.annotations.annotator import Annotator
from mtrd.annotations.hostnames import valid_hostname
from mtrd.annotations.model import Annotation
from mtrd.annotations.networks import DatabaseError, NetworkDatabase, read_database
from mtrd.annotations.reverse import NO_NAME, Name, ReverseNames, ReverseSettings
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.names import dns, error

from tests.mmdb import write_asn_db, write_country_db

ROUTER = "198.51.100.1"
POINTER = "1.100.51.198.in-addr.arpa"


def ptr_answer(name: bytes, ttl: int = 300) -> tuple[list[Any], list[Any], list[Any]]:
    """A resolver's result for one PTR record."""
    record = dns.RRHeader(POINTER.encode(), dns.PTR, dns.IN, ttl, dns.Record_PTR(name, ttl))
    return [record], [], []


class FakeResolver:
    """Answers PTR queries from a table; counts what is asked; an entry None never answers."""

    def __init__(self, answers: dict[str, Any], forward: dict[str, list[str]] | None = None):
        self.answers = answers
        self.forward = forward or {}
        self.asked: list[str] = []
        self.waiting: list[Deferred[Any]] = []

    def lookupPointer(self, name: str, timeout: Any = None) -> Deferred[Any]:  # noqa: N802
        self.asked.append(name)
        answer = self.answers.get(name, "nxdomain")
        if answer == "nxdomain":
            return fail(error.DNSNameError(name))
        if answer is None:
            waiting: Deferred[Any] = Deferred()
            self.waiting.append(waiting)
            return waiting
        return succeed(answer)

    def lookupAddress(self, name: str, timeout: Any = None) -> Deferred[Any]:  # noqa: N802
        self.asked.append(name)
        records = [
            dns.RRHeader(name.encode(), dns.A, dns.IN, 60, dns.Record_A(a, 60))
            for a in self.forward.get(name, [])
        ]
        return succeed((records, [], []))


def names(
    answers: dict[str, Any], clock: Clock | None = None, **settings: Any
) -> tuple[ReverseNames, FakeResolver, Clock]:
    clock = clock or Clock()
    resolver = FakeResolver(answers)
    return ReverseNames(resolver, clock, ReverseSettings(**settings)), resolver, clock  # type: ignore[arg-type]


def result_of(d: Deferred[Any]) -> Any:
    assert d.called
    return d.result  # type: ignore[attr-defined]


# -- hostnames ------------------------------------------------------------------------------


def test_a_plain_hostname_is_kept_lower_case_without_the_final_dot() -> None:
    """A valid PTR name comes back lower case, without its root dot."""
    assert valid_hostname("Core1.AMS.Example.NET.") == "core1.ams.example.net"


@pytest.mark.parametrize(
    "hostile",
    [
        "<script>alert(1)</script>.example",
        "\x1b[31mred\x1b[0m.example",
        "evil\r\nSet-Cookie: x.example",
        "a" * 64 + ".example",
        ".".join(["abcdefghi"] * 26),  # 259 characters
        "routér.example",
        "under_score.example",
        "-lead.example",
        "two..dots",
        "",
        ".",
        "space here.example",
    ],
)
def test_a_hostile_ptr_answer_is_refused(hostile: str) -> None:
    """Markup, escape sequences, overlong, non-ASCII and other non-hostnames give None."""
    assert valid_hostname(hostile) is None


def test_bytes_that_are_not_ascii_are_refused() -> None:
    """A PTR name's raw bytes must be ASCII."""
    assert valid_hostname(b"r\xc3\xa9.example") is None


@given(st.text(max_size=300))
def test_whatever_passes_is_only_letters_digits_hyphens_and_dots(text: str) -> None:
    """Nothing but [a-z0-9.-] ever gets through, at most 253 characters."""
    name = valid_hostname(text)
    if name is not None:
        assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789.-")
        assert 1 <= len(name) <= 253


# -- the PTR cache --------------------------------------------------------------------------


def test_a_name_is_looked_up_once_and_served_from_the_cache_for_its_ttl() -> None:
    """A second lookup within the record's TTL is a cache hit; after it, DNS is asked again."""
    cache, resolver, clock = names({POINTER: ptr_answer(b"gw.example.net", ttl=300)})
    assert result_of(cache.lookup(ROUTER)) == Name("gw.example.net")
    clock.advance(299)
    assert result_of(cache.lookup(ROUTER)) == Name("gw.example.net")
    assert resolver.asked == [POINTER]
    assert cache.counts.hits == 1
    clock.advance(2)
    cache.lookup(ROUTER)
    assert resolver.asked == [POINTER, POINTER]


def test_a_long_ttl_is_capped() -> None:
    """A record TTL of a week is kept only ``ttl_cap`` seconds."""
    cache, _resolver, clock = names(
        {POINTER: ptr_answer(b"gw.example.net", ttl=7 * 86400)}, ttl_cap=600
    )
    cache.lookup(ROUTER)
    clock.advance(601)
    assert cache.cached(ROUTER) is None


def test_no_name_is_cached_for_the_negative_ttl() -> None:
    """NXDOMAIN is remembered for ``negative_ttl`` seconds, then asked again."""
    cache, resolver, clock = names({}, negative_ttl=60)
    assert result_of(cache.lookup(ROUTER)) == NO_NAME
    clock.advance(59)
    cache.lookup(ROUTER)
    assert len(resolver.asked) == 1
    clock.advance(2)
    cache.lookup(ROUTER)
    assert len(resolver.asked) == 2
    assert cache.counts.failures == 2


def test_a_hostile_answer_is_dropped_and_counted() -> None:
    """A PTR answer with markup gives no name, and counts as rejected."""
    cache, _, _ = names({POINTER: ptr_answer(b"<img src=x onerror=alert(1)>.example")})
    assert result_of(cache.lookup(ROUTER)) == NO_NAME
    assert cache.counts.rejected == 1


def test_a_lookup_that_does_not_answer_times_out_on_the_clock() -> None:
    """A silent server gives no name after ``timeout`` seconds, counted as a timeout."""
    cache, _, clock = names({POINTER: None}, timeout=2.0)
    d = cache.lookup(ROUTER)
    clock.advance(1.9)
    assert not d.called
    clock.advance(0.2)
    assert result_of(d) == NO_NAME
    assert cache.counts.timeouts == 1
    assert cache.in_flight == 0


def test_lookups_of_one_address_share_one_query() -> None:
    """Two traces asking about one address while it is looked up send one query."""
    cache, resolver, _clock = names({POINTER: None})
    first, second = cache.lookup(ROUTER), cache.lookup(ROUTER)
    assert resolver.asked == [POINTER]
    resolver.waiting[0].callback(ptr_answer(b"gw.example.net"))
    assert result_of(first) == result_of(second) == Name("gw.example.net")


def test_lookups_in_flight_are_bounded() -> None:
    """Past ``max_in_flight`` lookups out, an address gets no name and no query."""
    pointers = {f"{i}.100.51.198.in-addr.arpa": None for i in range(1, 4)}
    cache, resolver, _ = names(pointers, max_in_flight=2)
    cache.lookup("198.51.100.1")
    cache.lookup("198.51.100.2")
    third = cache.lookup("198.51.100.3")
    assert result_of(third) == NO_NAME
    assert len(resolver.asked) == 2
    assert cache.counts.skipped == 1


def test_the_cache_forgets_the_least_recently_used_name_at_its_size() -> None:
    """With room for two, a third name evicts the one used least recently."""
    cache, _, _ = names({}, cache_size=2)
    for address in ("198.51.100.1", "198.51.100.2"):
        cache.lookup(address)
    cache.lookup("198.51.100.1")  # a hit: now the most recent
    cache.lookup("198.51.100.3")
    assert len(cache) == 2
    assert cache.cached("198.51.100.2") is None
    assert cache.cached("198.51.100.1") is not None


def test_forward_confirmed_names_are_verified() -> None:
    """With verify on, a name that resolves back to the address is marked verified."""
    resolver = FakeResolver(
        {POINTER: ptr_answer(b"gw.example.net")}, forward={"gw.example.net": [ROUTER]}
    )
    cache = ReverseNames(resolver, Clock(), ReverseSettings(verify=True))  # type: ignore[arg-type]
    assert result_of(cache.lookup(ROUTER)) == Name("gw.example.net", verified=True)


def test_a_name_that_does_not_resolve_back_is_not_verified() -> None:
    """With verify on, a name pointing elsewhere is kept but marked unverified."""
    resolver = FakeResolver(
        {POINTER: ptr_answer(b"gw.example.net")}, forward={"gw.example.net": ["203.0.113.9"]}
    )
    cache = ReverseNames(resolver, Clock(), ReverseSettings(verify=True))  # type: ignore[arg-type]
    assert result_of(cache.lookup(ROUTER)) == Name("gw.example.net", verified=False)


# -- the databases --------------------------------------------------------------------------


def test_the_asn_database_gives_number_name_and_prefix(tmp_path: Path) -> None:
    """An address in a database network gets its AS and the covering prefix."""
    loaded = read_database(str(write_asn_db(tmp_path / "asn.mmdb")))
    annotation, later = Annotator(asn_db=NetworkDatabase(loaded, Clock())).annotate(ROUTER)
    assert later is None
    assert annotation == Annotation(asn=64500, as_name="Example Transit", prefix="198.51.100.0/24")
    assert loaded.info.type == "GeoLite2-ASN"


def test_an_address_the_database_does_not_cover_gets_nothing(tmp_path: Path) -> None:
    """No guessing: an uncovered address has no AS."""
    loaded = read_database(str(write_asn_db(tmp_path / "asn.mmdb")))
    annotation, _ = Annotator(asn_db=NetworkDatabase(loaded, Clock())).annotate("192.0.2.1")
    assert annotation.empty


def test_the_geo_database_gives_the_country(tmp_path: Path) -> None:
    """A country database adds the ISO code."""
    loaded = read_database(str(write_country_db(tmp_path / "geo.mmdb")))
    annotation, _ = Annotator(geo_db=NetworkDatabase(loaded, Clock())).annotate("203.0.113.7")
    assert annotation.country == "DE"


def test_a_missing_database_is_a_one_line_error() -> None:
    """A path that does not exist says so in one line."""
    with pytest.raises(DatabaseError, match=r"^/nonexistent/asn\.mmdb: no such file$"):
        read_database("/nonexistent/asn.mmdb")


def test_a_corrupt_database_is_a_one_line_error(tmp_path: Path) -> None:
    """A file that is not a MaxMind DB says so in one line."""
    path = tmp_path / "asn.mmdb"
    path.write_bytes(b"not a database\n" * 10)
    with pytest.raises(DatabaseError, match="not a MaxMind DB file") as raised:
        read_database(str(path))
    assert "\n" not in str(raised.value)


def test_a_changed_file_is_reloaded_by_the_watch(tmp_path: Path) -> None:
    """A new file in place is read on the next check: new data, counted."""
    path = write_asn_db(tmp_path / "asn.mmdb")
    clock = Clock()
    database = NetworkDatabase(read_database(str(path)), clock, check_every=5)
    database.startService()
    try:
        write_asn_db(path, {"198.51.100.0/24": (64999, "Renumbered")})
        os.utime(path, ns=(0, 10**18))
        clock.advance(5)
        network = database.network(ROUTER)
        assert network is not None
        assert network.record["autonomous_system_number"] == 64999
        assert database.reloads == 1
    finally:
        database.stopService()


def test_a_bad_reload_keeps_the_data_loaded_before(tmp_path: Path) -> None:
    """A corrupt file on reload (SIGHUP) is refused; lookups go on with the old data."""
    path = write_asn_db(tmp_path / "asn.mmdb")
    database = NetworkDatabase(read_database(str(path)), Clock())
    path.write_bytes(b"garbage")
    result_of(database.reload())
    assert database.failed_reloads == 1
    network = database.network(ROUTER)
    assert network is not None
    assert network.record["autonomous_system_number"] == 64500


def test_a_good_reload_takes_the_new_data(tmp_path: Path) -> None:
    """A reload (SIGHUP) of a replaced file serves the new data."""
    path = write_asn_db(tmp_path / "asn.mmdb")
    database = NetworkDatabase(read_database(str(path)), Clock())
    write_asn_db(path, {"198.51.100.0/25": (64510, "Split")})
    result_of(database.reload())
    network = database.network(ROUTER)
    assert network is not None
    assert network.prefix == "198.51.100.0/25"


# -- the annotator ----------------------------------------------------------------------------


def test_a_cached_name_comes_with_the_networks_at_once(tmp_path: Path) -> None:
    """With the name cached, the annotation is whole at once: no Deferred to wait for."""
    cache, _, _ = names({POINTER: ptr_answer(b"gw.example.net")})
    cache.lookup(ROUTER)
    loaded = read_database(str(write_asn_db(tmp_path / "asn.mmdb")))
    annotation, later = Annotator(cache, NetworkDatabase(loaded, Clock())).annotate(ROUTER)
    assert later is None
    assert (annotation.hostname, annotation.asn) == ("gw.example.net", 64500)


def test_a_name_to_look_up_comes_later_with_the_networks(tmp_path: Path) -> None:
    """A name not cached yet: the networks now, the whole annotation when the name comes."""
    cache, resolver, _ = names({POINTER: None})
    loaded = read_database(str(write_asn_db(tmp_path / "asn.mmdb")))
    now, later = Annotator(cache, NetworkDatabase(loaded, Clock())).annotate(ROUTER)
    assert (now.hostname, now.asn) == (None, 64500)
    assert later is not None
    resolver.waiting[0].callback(ptr_answer(b"gw.example.net"))
    assert result_of(later) == Annotation(
        hostname="gw.example.net", asn=64500, as_name="Example Transit", prefix="198.51.100.0/24"
    )


def test_an_as_name_with_control_characters_is_cleaned(tmp_path: Path) -> None:
    """The database is the operator's, but its names reach terminals: no escapes."""
    path = write_asn_db(tmp_path / "asn.mmdb", {"198.51.100.0/24": (64500, "Evil\x1b[2J Corp")})
    annotator = Annotator(asn_db=NetworkDatabase(read_database(str(path)), Clock()))
    annotation, _ = annotator.annotate(ROUTER)
    assert annotation.as_name == "Evil[2J Corp"


def test_a_reload_is_seen_by_the_annotator_at_once(tmp_path: Path) -> None:
    """Networks the annotator remembered are forgotten when the database is reloaded."""
    path = write_asn_db(tmp_path / "asn.mmdb")
    database = NetworkDatabase(read_database(str(path)), Clock())
    annotator = Annotator(asn_db=database)
    assert annotator.annotate(ROUTER)[0].asn == 64500
    write_asn_db(path, {"198.51.100.0/24": (64777, "New")})
    result_of(database.reload())
    assert annotator.annotate(ROUTER)[0].asn == 64777


def test_a_lookup_that_breaks_unexpectedly_gives_no_name() -> None:
    """A resolver that raises something unforeseen: no name, counted, the waiters released."""

    class Broken(FakeResolver):
        def lookupPointer(self, name: str, timeout: Any = None) -> Deferred[Any]:  # noqa: N802
            raise RuntimeError("resolver bug")

    cache = ReverseNames(Broken({}), Clock(), ReverseSettings())  # type: ignore[arg-type]
    assert result_of(cache.lookup(ROUTER)) == NO_NAME
    assert cache.counts.failures == 1
    assert cache.in_flight == 0


def test_an_address_that_is_not_one_gives_no_name() -> None:
    """A malformed address fails before DNS: logged, counted, no name, nothing left out."""
    cache, resolver, _ = names({})
    assert result_of(cache.lookup("not-an-address")) == NO_NAME
    assert resolver.asked == []
    assert cache.counts.failures == 1
    assert cache.in_flight == 0
