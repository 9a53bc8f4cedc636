"""Optional bearer-token auth."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from mtrd.web.auth import OPEN_BY_DEFAULT, AuthGuard, BearerAuth, load_tokens
from treq.testing import StubTreq

from tests.test_http import BASE, Client

TOKEN = b"s3cret-token-0123456789"


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
    assert BearerAuth([TOKEN]).allows("/traces", header) is allowed


def test_operations_endpoints_are_open_by_default_and_can_be_closed() -> None:
    """/healthz, /readyz and /metrics need no token unless protected too."""
    assert all(BearerAuth([TOKEN]).allows(path, None) for path in OPEN_BY_DEFAULT)
    assert not BearerAuth([TOKEN], open_paths=()).allows("/metrics", None)


def test_tokens_come_from_a_file_and_the_environment(tmp_path: Path) -> None:
    """The file has one token per line with comments; the variable is comma-separated."""
    file = tmp_path / "tokens"
    file.write_text("# ops team\nfirst-token-0123456789\n\nsecond-token-0123456789  # ci\n")
    tokens = load_tokens(file=str(file), env_value="third-token-0123456789")
    assert tokens == (
        b"first-token-0123456789",
        b"second-token-0123456789",
        b"third-token-0123456789",
    )


def test_short_tokens_are_refused() -> None:
    """Tokens shorter than 16 characters are refused: they are guessable."""
    with pytest.raises(ValueError, match="at least 16"):
        load_tokens(file=None, env_value="short")


@pytest_twisted.ensureDeferred
async def test_missing_token_is_401_problem_with_www_authenticate() -> None:
    """A request without a valid token gets 401, a WWW-Authenticate challenge, a problem."""
    client = Client()
    stub = StubTreq(AuthGuard(client.api.app.resource(), BearerAuth([TOKEN])))
    refused = await stub.get(f"{BASE}/traces")
    assert refused.code == 401
    assert refused.headers.getRawHeaders("www-authenticate") == ['Bearer realm="mtrd"']
    assert (await refused.json())["type"] == "urn:mtrd:problem:unauthorized"
    allowed = await stub.get(f"{BASE}/traces", headers={"Authorization": b"Bearer " + TOKEN})
    assert allowed.code == 200
    health = await stub.get(f"{BASE}/healthz")
    assert health.code == 200
