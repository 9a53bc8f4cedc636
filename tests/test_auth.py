"""Optional bearer-token auth."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from mtrd.tracing.tenants import ANYONE, Tenant
from mtrd.web.auth import OPEN_BY_DEFAULT, AuthGuard, BearerAuth, NamedToken, load_tokens
from treq.testing import StubTreq

from tests.test_http import BASE, Client

TOKEN = b"s3cret-token-0123456789"
NAMED = NamedToken("ops", TOKEN)


def test_off_without_tokens() -> None:
    """With no token configured, every request passes."""
    assert BearerAuth(()).allows("/traces", None)


@pytest.mark.parametrize(
    ("header", "allowed"),
    [
        (b"Bearer " + TOKEN, True),
        (b"bearer " + TOKEN, True),
        (b"Bearer wrong-token-0123456789", False),
        (b"Basic " + TOKEN, False),
        (b"Bearer ", False),
        (None, False),
    ],
)
def test_bearer_token_is_checked(header: bytes | None, allowed: bool) -> None:
    """Only the right token, in the Bearer scheme, passes."""
    assert BearerAuth([NAMED]).allows("/traces", header) is allowed


def test_operations_endpoints_are_open_by_default_and_can_be_closed() -> None:
    """/healthz, /readyz and /metrics need no token unless protected too."""
    assert all(BearerAuth([NAMED]).allows(path, None) for path in OPEN_BY_DEFAULT)
    assert not BearerAuth([NAMED], open_paths=()).allows("/metrics", None)


def test_tokens_come_from_a_file_and_the_environment(tmp_path: Path) -> None:
    """The file has one token per line with comments; the variable is comma-separated."""
    file = tmp_path / "tokens"
    file.write_text("# ops team\nops:first-token-0123456789\n\n  ci:second-token-0123456789\n")
    tokens = load_tokens(file=str(file), env_value="ops:third-token-0123456789")
    assert tokens == (
        NamedToken("ops", b"first-token-0123456789"),
        NamedToken("ci", b"second-token-0123456789"),
        NamedToken("ops", b"third-token-0123456789"),
    )


def test_a_hash_inside_a_token_is_part_of_it(tmp_path: Path) -> None:
    """Comments only start a line: a # (or a colon) after the name belongs to the token."""
    file = tmp_path / "tokens"
    file.write_text("  # rotated in May\nops:abc#def:ghi0123456789\n")
    assert load_tokens(file=str(file), env_value=None) == (
        NamedToken("ops", b"abc#def:ghi0123456789"),
    )


@pytest.mark.parametrize(
    "entry", ["no-name-token-0123456789", ":nameless-0123456789", "bad name:token-0123456789"]
)
def test_a_token_without_a_tenant_name_is_refused(entry: str) -> None:
    """Every token needs a name (letters, digits, . _ -) before its first colon."""
    with pytest.raises(ValueError, match="tenant name"):
        load_tokens(file=None, env_value=entry)


def test_the_token_names_the_tenant() -> None:
    """A request acts for the tenant its token is named after; admins are marked."""
    auth = BearerAuth(
        [NAMED, NamedToken("ci", b"ci-token-0123456789"), NamedToken("ops", b"ops-two-0123456789")],
        admins={"ops"},
    )
    assert auth.tenant("/traces", b"Bearer ci-token-0123456789") == Tenant("ci")
    assert auth.tenant("/traces", b"Bearer ops-two-0123456789") == Tenant("ops", admin=True)
    assert auth.tenant("/traces", b"Bearer nobody-0123456789") is None
    assert BearerAuth(()).tenant("/traces", None) == ANYONE


def test_a_named_token_never_shows_its_secret() -> None:
    """The repr of a token (in logs, in tracebacks) hides the secret."""
    assert "0123" not in repr(NAMED)


def test_short_tokens_are_refused() -> None:
    """Tokens shorter than 16 characters are refused: they are guessable."""
    with pytest.raises(ValueError, match="at least 16"):
        load_tokens(file=None, env_value="ops:short")


@pytest_twisted.ensureDeferred
async def test_missing_token_is_401_problem_with_www_authenticate() -> None:
    """A request without a valid token gets 401, a WWW-Authenticate challenge, a problem."""
    client = Client()
    stub = StubTreq(AuthGuard(client.api.resource(), BearerAuth([NAMED])))
    refused = await stub.get(f"{BASE}/traces")
    assert refused.code == 401
    assert refused.headers.getRawHeaders("www-authenticate") == ['Bearer realm="mtrd"']
    assert (await refused.json())["type"] == "urn:mtrd:problem:unauthorized"
    allowed = await stub.get(f"{BASE}/traces", headers={"Authorization": b"Bearer " + TOKEN})
    assert allowed.code == 200
    health = await stub.get(f"{BASE}/healthz")
    assert health.code == 200
