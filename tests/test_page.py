"""The web page as HTTP serves it: the shell, its files by digest, their headers, and auth.

What the page does in a browser is tested in tests/test_page_lab.py.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import pytest_twisted
from mtrd.web.access import route_of
from mtrd.web.auth import AuthGuard, BearerAuth, NamedToken
from mtrd.web.page import STATIC, Page, is_page_request, wants_html
from treq.testing import StubTreq

from tests.test_http import BASE, Answer, Client

TOKEN = b"s3cret-token-0123456789"
HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
PAGE = Page.load()


def header(answer: Answer, name: str) -> str:
    value = answer.header(name)
    assert value is not None, f"no {name} header"
    return value


@pytest_twisted.ensureDeferred
async def test_root_serves_the_page_to_a_browser() -> None:
    """GET / with Accept: text/html answers the HTML shell naming this release's files."""
    answer = await Client().request("GET", "/", headers=HTML)
    assert answer.code == 200
    assert header(answer, "content-type") == "text/html; charset=utf-8"
    assert f'src="/static/{PAGE.digest}/app.js"'.encode() in answer.body
    assert f'href="/static/{PAGE.digest}/style.css"'.encode() in answer.body


@pytest.mark.parametrize("accept", [None, "application/json", "*/*"])
@pytest_twisted.ensureDeferred
async def test_root_is_still_404_for_api_clients(accept: str | None) -> None:
    """Without text/html in Accept, / answers the 404 problem it answered before the page."""
    headers = {} if accept is None else {"Accept": accept}
    answer = await Client().request("GET", "/", headers=headers)
    assert answer.code == 404
    assert answer.json()["type"] == "urn:mtrd:problem:not-found"


@pytest.mark.parametrize("path", ["/", "/ui/traces/abc", f"/static/{PAGE.digest}/app.js"])
@pytest_twisted.ensureDeferred
async def test_page_answers_carry_the_security_headers(path: str) -> None:
    """Page answers carry a strict CSP (no inline script or eval), nosniff and a referrer policy."""
    answer = await Client().request("GET", path, headers=HTML)
    policy = header(answer, "content-security-policy")
    assert "default-src 'self'" in policy
    assert "script-src 'self';" in policy
    assert "unsafe" not in policy
    assert "frame-ancestors 'none'" in policy
    assert header(answer, "x-content-type-options") == "nosniff"
    assert header(answer, "referrer-policy") == "no-referrer"


@pytest_twisted.ensureDeferred
async def test_the_shells_are_never_cached() -> None:
    """The HTML always names the current release: the browser asks for it again each time."""
    for path in ("/", "/ui/traces/abc"):
        answer = await Client().request("GET", path, headers=HTML)
        assert header(answer, "cache-control") == "no-cache"


@pytest.mark.parametrize("path", ["/ui/traces/no-such-trace", "/ui/monitors/no-such-monitor"])
@pytest_twisted.ensureDeferred
async def test_shareable_addresses_serve_the_page_whatever_the_id(path: str) -> None:
    """/ui/traces/{id} and /ui/monitors/{id} are the page; its scripts read what they name."""
    answer = await Client().request("GET", path)
    assert answer.code == 200
    assert header(answer, "content-type") == "text/html; charset=utf-8"


@pytest.mark.parametrize(
    ("name", "content_type"),
    [("app.js", "text/javascript; charset=utf-8"), ("style.css", "text/css; charset=utf-8")],
)
@pytest_twisted.ensureDeferred
async def test_files_are_served_for_good_by_digest(name: str, content_type: str) -> None:
    """A file of this release answers with its type and an immutable, year-long cache."""
    answer = await Client().request("GET", f"/static/{PAGE.digest}/{name}")
    assert answer.code == 200
    assert header(answer, "content-type") == content_type
    assert header(answer, "cache-control") == "public, max-age=31536000, immutable"
    assert answer.body == (STATIC / name).read_bytes()


@pytest.mark.parametrize(
    "path",
    [
        "/static/0123456789abcdef/app.js",  # another release
        f"/static/{PAGE.digest}/nope.js",
        f"/static/{PAGE.digest}/page.html",  # the shell is not a file
        f"/static/{PAGE.digest}/..%2Fpage.py",
    ],
)
@pytest_twisted.ensureDeferred
async def test_other_files_are_404(path: str) -> None:
    """Only the files of the current release are served; nothing else of the package."""
    answer = await Client().request("GET", path)
    assert answer.code == 404
    assert answer.json()["type"] == "urn:mtrd:problem:not-found"


@pytest_twisted.ensureDeferred
async def test_other_ui_addresses_are_404() -> None:
    """Only traces and monitors have page addresses."""
    response = await Client().stub.get(f"{BASE}/ui/other/abc", headers=HTML)
    assert response.code == 404
    assert (await response.json())["type"] == "urn:mtrd:problem:not-found"


def test_digest_changes_with_any_file(tmp_path: Path) -> None:
    """Changing one file changes the release's digest, so no browser keeps a stale copy."""
    for path in STATIC.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    before = Page.load(tmp_path)
    (tmp_path / "format.js").write_bytes((STATIC / "format.js").read_bytes() + b"\n")
    after = Page.load(tmp_path)
    assert before.digest == PAGE.digest
    assert after.digest != before.digest
    assert f"/static/{after.digest}/".encode() in after.shell


class _Inline(HTMLParser):
    """Collects what a strict CSP would block in a document: inline scripts and styles."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "script":
            self._in_script = True
            if "src" not in names:
                self.found.append("script without src")
        if tag == "style" or "style" in names:
            self.found.append(f"inline style on {tag}")
        self.found += [f"{name} handler on {tag}" for name in names if name.startswith("on")]

    def handle_endtag(self, tag: str) -> None:
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.found.append("inline script text")


def test_shell_has_nothing_inline() -> None:
    """The shell has no inline script, handler or style: the CSP would block them."""
    parser = _Inline()
    parser.feed(PAGE.shell.decode())
    assert parser.found == []


def test_scripts_import_only_shipped_modules_and_never_html() -> None:
    """Every module import names a shipped file; no script writes HTML or evaluates text."""
    for name, asset in PAGE.assets.items():
        if not name.endswith(".js"):
            continue
        source = asset.body.decode()
        for imported in re.findall(r'from "\./([^"]+)"', source):
            assert imported in PAGE.assets, (name, imported)
        for risky in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert risky not in source, (name, risky)


def test_form_fields_are_labelled() -> None:
    """Every input and select of the shell has a label naming it."""
    shell = PAGE.shell.decode()
    fields = re.findall(r'<(?:input|select)[^>]*\bid="([^"]+)"', shell)
    assert "target" in fields
    for field in fields:
        assert f'<label for="{field}">' in shell, field


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        ("text/html", True),
        ("text/html;q=0.9, */*", True),
        ("application/json", False),
        ("*/*", False),
        (None, False),
    ],
)
def test_wants_html(accept: str | None, html: bool) -> None:
    """A browser's navigation names text/html; API clients do not."""
    assert wants_html(accept) is html


def test_page_requests_are_the_shell_and_its_files() -> None:
    """The shell (/ for browsers, /ui/...) and /static/... are the page; the API is not."""
    assert is_page_request("/", "text/html")
    assert not is_page_request("/", "application/json")
    assert is_page_request("/ui/traces/abc", None)
    assert is_page_request("/static/x/app.js", None)
    assert not is_page_request("/traces", "text/html")
    assert not is_page_request("/traces/abc", "text/html")


@pytest_twisted.ensureDeferred
async def test_with_auth_the_page_needs_no_token_but_the_api_does() -> None:
    """With auth on, the page and its files pass without a token; the API still needs one."""
    client = Client()
    stub = StubTreq(AuthGuard(client.api.resource(), BearerAuth([NamedToken("ops", TOKEN)])))
    for path in ("/", "/ui/traces/abc", f"/static/{PAGE.digest}/app.js"):
        answer = await stub.get(BASE + path, headers=HTML)
        assert answer.code == 200, path
    for path in ("/traces", "/vantage-points"):
        answer = await stub.get(BASE + path, headers=HTML)
        assert answer.code == 401, path


@pytest_twisted.ensureDeferred
async def test_with_auth_root_is_401_for_an_api_client_as_before() -> None:
    """With auth on, / for a non-browser is refused without a token, as it was before."""
    client = Client()
    stub = StubTreq(AuthGuard(client.api.resource(), BearerAuth([NamedToken("ops", TOKEN)])))
    answer = await stub.get(BASE + "/", headers={"Accept": "application/json"})
    assert answer.code == 401


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/", "/"),
        ("/ui/traces/abc", "/ui/traces/{id}"),
        ("/ui/monitors/abc", "/ui/monitors/{id}"),
        ("/ui/other/abc", "other"),
        ("/static/0123/app.js", "/static/{asset}"),
    ],
)
def test_page_routes_have_bounded_labels(path: str, route: str) -> None:
    """Trace ids and file names never become metric labels."""
    assert route_of(path) == route


def test_admission_reads_on_for_the_pages_paths_without_a_token() -> None:
    """Before the body, page paths pass (the guard then checks Accept); the API still needs one."""
    auth = BearerAuth([NamedToken("ops", TOKEN)])
    assert auth.admits("/", None)
    assert auth.admits("/ui/traces/abc", None)
    assert auth.admits("/static/x/app.js", None)
    assert not auth.admits("/traces", None)
    assert auth.admits("/traces", b"Bearer " + TOKEN)
