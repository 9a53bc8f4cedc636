"""The web page: one HTML shell and its static files (CSS, JavaScript modules).

The files ship in the package (``mtrd/web/static``) and are read once, when the
service starts. Their URLs carry a digest of all of them together
(``/static/<digest>/app.js``), so a browser may keep them for a year: a new release
has a new digest, and the modules' relative imports stay inside one release. The HTML
itself is never cached, so it always names the current digest.

The page holds no secret: it is served without a token, and its scripts send the
token the user enters with every API call (see README, "The web page").
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import attrs
from twisted.web.iweb import IRequest

STATIC = Path(__file__).resolve().parent / "static"
SHELL = "page.html"
DIGEST_MARK = "{{static}}"  # where the shell names its files' folder

_TYPES = {
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
}
# No inline script or style, nothing from another host, no framing, no plugins.
CONTENT_SECURITY_POLICY = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    b"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    b"frame-ancestors 'none'"
)
IMMUTABLE = b"public, max-age=31536000, immutable"


@attrs.frozen
class Asset:
    """One static file as served."""

    body: bytes
    content_type: bytes


@attrs.frozen
class Page:
    """The shell and the static files of one release, read from ``folder``."""

    digest: str
    shell: bytes
    assets: dict[str, Asset]

    @classmethod
    def load(cls, folder: Path = STATIC) -> Page:
        """Read every file now (never on the reactor per request) and digest them."""
        files = {
            path.name: path.read_bytes()
            for path in sorted(folder.iterdir())
            if path.is_file() and (path.suffix in _TYPES or path.name == SHELL)
        }
        hasher = hashlib.sha256()
        for name, body in files.items():
            hasher.update(name.encode() + b"\0" + hashlib.sha256(body).digest())
        digest = hasher.hexdigest()[:16]
        shell = files.pop(SHELL).replace(DIGEST_MARK.encode(), f"/static/{digest}".encode())
        assets = {name: Asset(body, _TYPES[Path(name).suffix]) for name, body in files.items()}
        return cls(digest, shell, assets)

    def asset(self, digest: str, name: str) -> Asset | None:
        """The file ``name`` of release ``digest``; None for another release or no such file."""
        if digest != self.digest:
            return None
        return self.assets.get(name)


def wants_html(accept: str | bytes | None) -> bool:
    """True when the client asks for HTML (a browser navigating), not for JSON."""
    if accept is None:
        return False
    text = accept.decode("latin-1") if isinstance(accept, bytes) else accept
    return "text/html" in (part.split(";")[0].strip().lower() for part in text.split(","))


def is_page_path(path: str) -> bool:
    """True for a path the page may be served at (``/`` only to browsers, see below)."""
    return path == "/" or path.startswith(("/ui/", "/static/"))


def is_page_request(path: str, accept: str | bytes | None) -> bool:
    """True for what the page itself needs (served without a token): the shell and its files.

    ``/`` is the page only for a browser; other clients get there what they got before.
    """
    if path == "/":
        return wants_html(accept)
    return is_page_path(path)


def secure(request: IRequest) -> None:
    """The headers every answer of the page carries."""
    request.setHeader(b"Content-Security-Policy", CONTENT_SECURITY_POLICY)
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"Referrer-Policy", b"no-referrer")
    request.setHeader(b"X-Frame-Options", b"DENY")


def write_shell(request: IRequest, page: Page) -> bytes:
    """The HTML shell; its scripts read the address to know which view to show."""
    secure(request)
    request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-cache")
    request.setHeader(b"Vary", b"Accept")
    return page.shell


def write_asset(request: IRequest, asset: Asset) -> bytes:
    """A static file, cached for good: its URL changes with its content."""
    secure(request)
    request.setHeader(b"Content-Type", asset.content_type)
    request.setHeader(b"Cache-Control", IMMUTABLE)
    return asset.body
