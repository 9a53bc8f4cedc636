"""Optional bearer-token auth, in front of the HTTP routes.

Off when no token is configured. Tokens are compared in constant time, every
configured token every time, so the answer's timing says nothing about them.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from twisted.web.resource import Resource

from mtrd.web.page import is_page_path, is_page_request
from mtrd.web.problems import Problem, write_problem

OPEN_BY_DEFAULT = frozenset({"/healthz", "/readyz", "/metrics"})
UNAUTHORIZED = Problem(
    401,
    "unauthorized",
    "Unauthorized",
    "send a valid token: Authorization: Bearer <token>",
    headers=(("WWW-Authenticate", 'Bearer realm="mtrd"'),),
)


def load_tokens(*, file: str | None, env_value: str | None) -> tuple[bytes, ...]:
    """Tokens from a file (one per line, # comments) and a comma-separated variable."""
    tokens: list[str] = []
    if file:
        for line in Path(file).read_text(encoding="utf-8").splitlines():
            text = line.split("#", 1)[0].strip()
            if text:
                tokens.append(text)
    if env_value:
        tokens += [t.strip() for t in env_value.split(",") if t.strip()]
    for token in tokens:
        if len(token) < 16:
            raise ValueError("auth tokens must be at least 16 characters long")
    return tuple(t.encode() for t in tokens)


class BearerAuth:
    """Checks ``Authorization: Bearer <token>`` against the configured tokens."""

    def __init__(
        self, tokens: Iterable[bytes], open_paths: Iterable[str] = OPEN_BY_DEFAULT
    ) -> None:
        self._tokens = tuple(tokens)
        self.open_paths = frozenset(open_paths)

    @property
    def enabled(self) -> bool:
        """True when at least one token is configured."""
        return bool(self._tokens)

    def allows(self, path: str, authorization: bytes | None) -> bool:
        """True when the request may pass."""
        if not self._tokens or path in self.open_paths:
            return True
        scheme, _, presented = (authorization or b"").partition(b" ")
        if scheme.lower() != b"bearer" or not presented:
            return False
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(token, presented.strip())
        return matched

    def admits(self, path: str, authorization: bytes | None) -> bool:
        """True when a request may be read on, before its body: the page's paths pass here
        (:class:`AuthGuard` decides on them, with their Accept header), the rest as
        :meth:`allows` says."""
        return is_page_path(path) or self.allows(path, authorization)


class AuthGuard(Resource):
    """Answers 401 problem+json to requests without a valid token; passes the rest on.

    The web page and its files pass without one: they hold no data, and the page's
    scripts send the token its user enters.
    """

    isLeaf = True

    def __init__(self, inner: Any, auth: BearerAuth) -> None:
        super().__init__()
        self._inner = inner
        self._auth = auth

    def render(self, request: Any) -> Any:
        """Check the token, then let the inner resource answer."""
        path = request.path.decode("utf-8", "replace")
        if is_page_request(path, request.getHeader(b"accept")) or self._auth.allows(
            path, request.getHeader(b"authorization")
        ):
            return self._inner.render(request)
        return write_problem(request, UNAUTHORIZED, path)
