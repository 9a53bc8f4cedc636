"""``--store`` and ``--vantage``: parsing, defaults, and a password that is never shown."""

from __future__ import annotations

import string
import urllib.parse

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from mtrd.config import parse_serve_args
from mtrd.tracing.redis.settings import (
    BadStoreUrl,
    MemoryStore,
    RedisStore,
    Secret,
    parse_store,
    parse_vantage,
)

PASSWORD = "hunter2-Very-Secret"  # noqa: S105


def test_memory_is_the_default_store() -> None:
    """Without --store or MTRD_STORE, traces live in memory."""
    assert parse_serve_args([], env={}).backend == MemoryStore()


def test_store_comes_from_the_environment() -> None:
    """MTRD_STORE sets the store."""
    config = parse_serve_args([], env={"MTRD_STORE": "redis://redis.example:6380/2"})
    assert config.backend == RedisStore(host="redis.example", port=6380, db=2)


def test_store_url_parts() -> None:
    """A full URL gives host, port, database, TLS, user and password."""
    store = parse_store(f"rediss://mtrd:{PASSWORD}@[2001:db8::6]:6390/3")
    assert store == RedisStore(
        host="2001:db8::6", port=6390, db=3, tls=True, username="mtrd", password=Secret(PASSWORD)
    )


def test_store_url_defaults() -> None:
    """Port and database default to 6379 and 0."""
    assert parse_store("redis://198.51.100.7") == RedisStore(host="198.51.100.7", port=6379, db=0)


def test_percent_encoded_password_is_decoded() -> None:
    """A password with URL delimiters is given percent-encoded and used decoded."""
    store = parse_store("redis://:p%40ss%2Fw%3Ard@h/0")
    assert isinstance(store, RedisStore)
    assert store.password == Secret("p@ss/w:rd")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("postgres://h/0", "'memory' or a redis://"),
        ("h:6379", "'memory' or a redis://"),
        ("redis://", "names no host"),
        ("redis://h:0/0", "bad host or port"),
        ("redis://h:70000/0", "bad host or port"),
        ("redis://h:port/0", "bad host or port"),
        ("redis://h/zero", "database number"),
        ("redis://h/0?ssl=1", "no query"),
    ],
)
def test_bad_store_urls_say_what_is_wrong(text: str, message: str) -> None:
    """Each malformed URL is refused with a message naming the part at fault."""
    with pytest.raises(BadStoreUrl, match=message):
        parse_store(text)


def test_password_is_masked_in_str_and_repr() -> None:
    """str, repr and display of a store show *** in place of the password."""
    store = parse_store(f"redis://:{PASSWORD}@h:1/0")
    for shown in (str(store), repr(store), store.display):  # type: ignore[union-attr]
        assert PASSWORD not in shown
    assert str(store) == "redis://:***@h:1/0"


@pytest.mark.parametrize(
    "text",
    [
        f"redis://:{PASSWORD}@h:99999/0",
        f"redis://:{PASSWORD}@h/nope",
        f"redis://:{PASSWORD}@h/0?x=1",
        f"redis://:{PASSWORD}@[::1/0",
    ],
)
def test_bad_url_error_never_shows_the_password(
    text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A refused --store value is reported without repeating the password."""
    with pytest.raises(SystemExit) as exited:
        parse_serve_args(["--store", text], env={})
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--store" in err
    assert PASSWORD not in err


@given(
    password=st.text(string.ascii_letters + string.digits + string.punctuation, min_size=12),
    user=st.none() | st.text(string.ascii_letters, min_size=1, max_size=8),
)
def test_any_password_round_trips_and_stays_hidden(password: str, user: str | None) -> None:
    """Any percent-encoded password parses back exactly and shows in no rendering."""
    assume(password not in "rediss://***@redis.example:6379/0")  # noqa: S105
    quoted = urllib.parse.quote(password, safe="")
    store = parse_store(f"rediss://{user or ''}:{quoted}@redis.example:6379/0")
    assert isinstance(store, RedisStore)
    assert store.password == Secret(password)
    assert store.username == user
    for shown in (str(store), repr(store), store.display, repr(store.password)):
        assert password not in shown


def test_vantage_defaults_to_default() -> None:
    """Without --vantage or MTRD_VANTAGE, replicas share the vantage 'default'."""
    assert parse_serve_args([], env={}).vantage == "default"
    assert parse_serve_args([], env={"MTRD_VANTAGE": "fra-1"}).vantage == "fra-1"


@pytest.mark.parametrize("name", ["a", "fra-1", "eu_west.2", "A" * 63])
def test_good_vantage_names(name: str) -> None:
    """Letters, digits, '.', '_' and '-' up to 63 characters make a vantage name."""
    assert parse_vantage(name) == name


@pytest.mark.parametrize("name", ["", "-a", ".a", "a b", "a:b", "a{b}", "é", "A" * 64])
def test_bad_vantage_names(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Other names are refused with the rule (they end up in Redis keys and labels)."""
    with pytest.raises(SystemExit):
        parse_serve_args([f"--vantage={name}"], env={})
    assert "a vantage name is 1-63 letters" in capsys.readouterr().err
