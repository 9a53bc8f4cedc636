"""Optional bearer-token auth, in front of the HTTP routes.

Off when no token is configured. Tokens are compared in constant time, every
configured token every time, so the answer's timing says nothing about them.
Each token is named (``name:token``): the name is the tenant the request acts for,
which the routes read with :func:`tenant_of`. Several tokens may share a name (to
rotate one); names given as admins see every tenant's traces.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from mtrd.tracing.tenants import ANYONE, Tenant
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


TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@attrs.frozen(repr=False)
class NamedToken:
    """A bearer token and the tenant it acts for."""

    tenant: str
    token: bytes

    def __repr__(self) -> str:
        return f"NamedToken({self.tenant!r}, <secret>)"


def parse_named_token(text: str) -> NamedToken:
    """``name:token`` (the name is letters, digits, ``.``, ``_``, ``-``; the token is
    everything after the first colon, ``#`` and colons included)."""
    name, colon, token = text.partition(":")
    if not colon or not TENANT_NAME.fullmatch(name):
        raise ValueError(
            "each token needs a tenant name: name:token, the name of 1 to 64 letters, "
            "digits, '.', '_' or '-'"
        )
    if len(token) < 16:
        raise ValueError("auth tokens must be at least 16 characters long")
    return NamedToken(name, token.encode())


def load_tokens(*, file: str | None, env_value: str | None) -> tuple[NamedToken, ...]:
    """Named tokens from a file (one ``name:token`` per line; a line whose first
    non-blank character is ``#`` is a comment, a ``#`` anywhere else is part of the
    token) and a comma-separated variable."""
    entries: list[str] = []
    if file:
        for line in Path(file).read_text(encoding="utf-8").splitlines():
            text = line.strip()
            if text and not text.startswith("#"):
                entries.append(text)
    if env_value:
        entries += [t.strip() for t in env_value.split(",") if t.strip()]
    return tuple(parse_named_token(entry) for entry in entries)


class BearerAuth:
    """Checks ``Authorization: Bearer <token>`` against the configured tokens."""

    def __init__(
        self,
        tokens: Iterable[NamedToken],
        open_paths: Iterable[str] = OPEN_BY_DEFAULT,
        admins: Iterable[str] = (),
    ) -> None:
        """``admins`` names the tenants that see every tenant's traces."""
        self._tokens = tuple(tokens)
        self.open_paths = frozenset(open_paths)
        self.admins = frozenset(admins)
        unknown = self.admins - {t.tenant for t in self._tokens}
        if unknown:
            raise ValueError(f"admin tenants without a token: {', '.join(sorted(unknown))}")

    @property
    def enabled(self) -> bool:
        """True when at least one token is configured."""
        return bool(self._tokens)

    def allows(self, path: str, authorization: bytes | None) -> bool:
        """True when the request may pass."""
        return self.tenant(path, authorization) is not None

    def tenant(self, path: str, authorization: bytes | None) -> Tenant | None:
        """Whom the request acts for; None when it may not pass. Without auth, and on an
        open path, that is :data:`~mtrd.tracing.tenants.ANYONE`."""
        if not self._tokens or path in self.open_paths:
            return ANYONE
        scheme, _, presented = (authorization or b"").partition(b" ")
        if scheme.lower() != b"bearer" or not presented:
            return None
        presented = presented.strip()
        matched: NamedToken | None = None
        for entry in self._tokens:  # every one, matched or not: constant time
            if hmac.compare_digest(entry.token, presented):
                matched = entry
        if matched is None:
            return None
        return Tenant(matched.tenant, admin=matched.tenant in self.admins)

    def admits(self, path: str, authorization: bytes | None) -> bool:
        """True when a request may be read on, before its body: the page's paths pass here
        (:class:`AuthGuard` decides on them, with their Accept header), the rest as
        :meth:`allows` says."""
        return is_page_path(path) or self.allows(path, authorization)


_TENANT_ATTRIBUTE = "_mtrd_tenant"


def tenant_of(request: IRequest) -> Tenant:
    """The tenant :class:`AuthGuard` let ``request`` through for (anyone without auth)."""
    tenant = getattr(request, _TENANT_ATTRIBUTE, ANYONE)
    assert isinstance(tenant, Tenant)
    return tenant


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
        if is_page_request(path, request.getHeader(b"accept")):
            return self._inner.render(request)  # the page: no data, no tenant needed
        tenant = self._auth.tenant(path, request.getHeader(b"authorization"))
        if tenant is not None:
            setattr(request, _TENANT_ATTRIBUTE, tenant)
            return self._inner.render(request)
        return write_problem(request, UNAUTHORIZED, path)
