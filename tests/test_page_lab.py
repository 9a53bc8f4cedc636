"""The web page in a real browser: Debian's chromium, headless, driven by Selenium, against
``mtrd serve`` whose mtr-packet runs in the lab.

Nothing is downloaded: the driver is Debian's chromedriver, named explicitly so Selenium
Manager never looks for one. A screenshot of a finished trace view is saved under
``test-artifacts/page/`` for a person to look at.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import attrs
import pytest
import pytest_twisted
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait
from twisted.internet import reactor as global_reactor
from twisted.internet.threads import deferToThread

from tests.dns_server import Zone, listen
from tests.lab import Lab
from tests.lab.fixtures import _in_ci
from tests.mmdb import write_asn_db, write_country_db
from tests.mtrd_process import lab_mtrd

pytestmark = pytest.mark.lab
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TOKEN = "page-test-token-0123456789"  # noqa: S105 (a test token)
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "page"
QUICK = {"probes": 3, "interval": 0.2, "timeout": 1, "max_ttl": 12}
T = TypeVar("T")


@attrs.frozen
class Server:
    url: str
    token: str | None = None

    def call(self, method: str, path: str, body: object = None) -> Any:
        """One API call (a plain client, not the page): its JSON answer."""
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        # The URL is the test server's, on loopback.
        request = urllib.request.Request(self.url + path, data, headers, method=method)  # noqa: S310
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return json.loads(response.read() or b"null")

    def start(self, **request: Any) -> str:
        """Start a trace through the API; its id."""
        return str(self.call("POST", "/traces", request)["id"])

    def finished(self, trace_id: str, limit: float = 30.0) -> dict[str, Any]:
        """Poll the API until the trace is final."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            trace: dict[str, Any] = self.call("GET", f"/traces/{trace_id}")
            if trace["status"] in ("completed", "failed", "cancelled"):
                return trace
            time.sleep(0.1)
        raise AssertionError(f"trace {trace_id} did not finish")


def _require_chromium() -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if shutil.which(path) is None]
    if not missing:
        return
    reason = f"missing {', '.join(missing)} (apt-get install chromium chromium-driver)"
    if _in_ci():
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def server(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One mtrd without auth for this module."""
    log = tmp_path_factory.mktemp("mtrd") / "mtrd.log"
    with lab_mtrd(lab, log) as (url, _):
        yield Server(url)


@pytest.fixture(scope="module")
def named_server(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """mtrd naming responders through the tests' DNS server (a hostile PTR name for r3) and
    numbering their networks from MaxMind DB files built for the lab."""
    pointers = {"198.51.100.1": "r1.lab.example.", lab.r3_address(4): HOSTILE_PTR}
    dns_port, dns_number = listen(global_reactor, Zone({}, pointers=pointers))
    folder = tmp_path_factory.mktemp("page-names")
    flags = [
        "--reverse-dns", "on", "--dns-servers", f"127.0.0.1:{dns_number}",
        "--names-grace", "0.5",
        "--asn-db", str(write_asn_db(folder / "asn.mmdb")),
        "--geo-db", str(write_country_db(folder / "geo.mmdb")),
    ]  # fmt: skip
    try:
        with lab_mtrd(lab, folder / "mtrd.log", *flags) as (url, _):
            yield Server(url)
    finally:
        dns_port.stopListening()


@pytest.fixture(scope="module")
def guarded_server(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One mtrd with auth on: a token is needed for every API call."""
    folder = tmp_path_factory.mktemp("mtrd-auth")
    tokens = folder / "tokens"
    tokens.write_text(f"page:{TOKEN}\n")  # a tenant name, then its token
    with lab_mtrd(lab, folder / "mtrd.log", "--auth-tokens-file", str(tokens)) as (url, _):
        yield Server(url, TOKEN)


def _chromium() -> WebDriver:
    _require_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1200,1000"):  # fmt: skip
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    """A fresh headless chromium (its own profile: no storage shared with other tests)."""
    driver = _chromium()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def script_browser() -> Iterator[WebDriver]:
    """One chromium for the tests of the scripts' pure parts (they leave no state)."""
    driver = _chromium()
    try:
        yield driver
    finally:
        driver.quit()


def wait(browser: WebDriver, until: Callable[[WebDriver], T], limit: float = 30.0) -> T:
    """What ``until`` returns once it is truthy; fails after ``limit`` seconds."""
    try:
        return WebDriverWait(browser, limit, poll_frequency=0.05).until(until)
    except TimeoutException:
        raise AssertionError(
            f"timed out; page text:\n{browser.find_element(By.TAG_NAME, 'body').text}"
        ) from None


def status(browser: WebDriver) -> str:
    return str(browser.find_element(By.ID, "trace-status").get_attribute("data-status"))


def rows(browser: WebDriver) -> dict[int, list[str]]:
    """The hop table: TTL -> the addresses shown in its row."""
    table: dict[int, list[str]] = {}
    for row in browser.find_elements(By.CSS_SELECTOR, "#hops tbody tr[data-ttl]"):
        ttl = int(str(row.get_attribute("data-ttl")))
        table[ttl] = [a.text for a in row.find_elements(By.CSS_SELECTOR, ".address")]
    return table


def console_errors(browser: WebDriver) -> list[str]:
    """What the browser logged as errors (a script or style the CSP blocked would be one),
    but for answers that were not 2xx (the page asks for /monitors, which may be absent)."""
    return [
        e["message"]
        for e in browser.get_log("browser")
        if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]
    ]


def assert_rows_match_topology(lab: Lab, browser: WebDriver, target: str) -> None:
    table = rows(browser)
    assert sorted(table) == [1, 2, 3, 4]
    for ttl, addresses in table.items():
        assert addresses, ttl
        assert set(addresses) <= lab.expected_responders(4, ttl, target), (ttl, addresses)


def test_page_starts_a_trace_and_shows_rows_before_it_ends(
    lab: Lab, server: Server, browser: WebDriver
) -> None:
    """Submitting the form moves to the trace's address, where rows appear while it runs."""
    target = lab.targets(4)[40]
    browser.get(server.url + "/")
    wait(browser, lambda b: b.find_element(By.ID, "start").is_displayed())
    browser.find_element(By.NAME, "target").send_keys(target)
    Select(browser.find_element(By.NAME, "protocol")).select_by_value("icmp")
    probes = browser.find_element(By.NAME, "probes")
    probes.clear()
    probes.send_keys("5")
    browser.find_element(By.ID, "submit").click()
    wait(browser, lambda b: "/ui/traces/" in b.current_url)
    wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#hops tbody tr[data-ttl]"))
    assert status(browser) in ("queued", "running")
    wait(browser, lambda b: status(b) == "completed")
    assert_rows_match_topology(lab, browser, target)
    assert browser.find_elements(By.CSS_SELECTOR, "#chart g.hop")
    assert console_errors(browser) == []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "finished-trace.png"
    browser.save_screenshot(str(shot))
    print(f"screenshot of the finished trace view: {shot}")


def test_trace_view_fits_a_phone(lab: Lab, server: Server, browser: WebDriver) -> None:
    """On a phone-sized window the page does not scroll sideways (the table scrolls alone)."""
    trace_id = server.start(target=lab.targets(4)[46], **QUICK)
    server.finished(trace_id)
    browser.set_window_size(390, 844)
    browser.get(f"{server.url}/ui/traces/{trace_id}")
    wait(browser, lambda b: status(b) == "completed")
    overflow = browser.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "finished-trace-phone.png"))


# Two vantage points (as with Redis), and the POST kept in sessionStorage, which outlives the
# page's move to the new trace's address.
_TWO_VANTAGES = """
const original = window.fetch;
window.fetch = async (url, init) => {
  const json = (status, body) => new Response(JSON.stringify(body),
    {status, headers: {"Content-Type": "application/json"}});
  if (url === "/vantage-points") {
    return json(200, {vantage_points: [{name: "ams"}, {name: "fra"}]});
  }
  if (url === "/traces" && init && init.method === "POST") {
    sessionStorage.setItem("posted", init.body);
    return json(202, {id: "posted-trace"});
  }
  return original(url, init);
};
"""


def test_form_offers_the_vantage_points_when_there_are_several(
    server: Server, browser: WebDriver
) -> None:
    """With several vantage points the form has a labelled choice, and the POST names it."""
    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": _TWO_VANTAGES})
    browser.get(server.url + "/")
    vantage = wait(browser, lambda b: b.find_element(By.NAME, "vantage").is_displayed()
                   and b.find_element(By.NAME, "vantage"))  # fmt: skip
    assert [o.text for o in Select(vantage).options] == ["ams", "fra"]
    Select(vantage).select_by_value("fra")
    browser.find_element(By.NAME, "target").send_keys("203.0.113.9")
    Select(browser.find_element(By.NAME, "protocol")).select_by_value("tcp")
    browser.find_element(By.ID, "submit").click()
    wait(browser, lambda b: b.current_url.endswith("/ui/traces/posted-trace"))
    posted = json.loads(browser.execute_script("return sessionStorage.getItem('posted')"))
    assert posted == {
        "target": "203.0.113.9", "protocol": "tcp", "port": 80, "probes": 10, "vantage": "fra",
    }  # fmt: skip


def test_refused_request_shows_the_fields_at_fault(server: Server, browser: WebDriver) -> None:
    """A target the API refuses leaves the form in place and says why, as text."""
    browser.get(server.url + "/")
    wait(browser, lambda b: b.find_element(By.ID, "start").is_displayed())
    browser.find_element(By.NAME, "target").send_keys("not a host!")
    browser.find_element(By.ID, "submit").click()
    notice = wait(browser, lambda b: b.find_element(By.ID, "notice").text)
    assert notice == "target: must be an IPv4 or IPv6 address or a hostname"
    assert browser.current_url == server.url + "/"


def test_shared_address_shows_the_finished_trace_in_a_fresh_browser(
    lab: Lab, server: Server, browser: WebDriver
) -> None:
    """/ui/traces/{id} opened anew shows the stored trace's table and status."""
    target = lab.targets(4)[41]
    trace_id = server.start(target=target, **QUICK)
    server.finished(trace_id)
    browser.get(f"{server.url}/ui/traces/{trace_id}")
    wait(browser, lambda b: status(b) == "completed")
    assert_rows_match_topology(lab, browser, target)
    assert browser.find_element(By.ID, "trace-reached").text == "reached"
    assert browser.find_element(By.ID, "trace-stop").text == "destination"
    assert not browser.find_element(By.ID, "cancel").is_displayed()
    assert console_errors(browser) == []


def test_unreachable_trace_says_why_it_stopped(
    lab: Lab, server: Server, browser: WebDriver
) -> None:
    """A trace r3 answers unreachable shows that stop reason, with its kind, and where."""
    trace_id = server.start(target=lab.unreachable_target(4), **QUICK)
    trace = server.finished(trace_id)
    browser.get(f"{server.url}/ui/traces/{trace_id}")
    wait(browser, lambda b: status(b) == "completed")
    stop = browser.find_element(By.ID, "trace-stop").text
    assert stop == f"unreachable ({trace['unreachable_kind']})"
    assert browser.find_element(By.ID, "trace-reached").text == "not reached"
    last = browser.find_elements(By.CSS_SELECTOR, "#hops tbody tr")[-1]
    assert last.find_element(By.CSS_SELECTOR, ".end").text == "unreachable"


def test_text_report_link_shows_the_report_in_the_page(
    lab: Lab, guarded_server: Server, browser: WebDriver
) -> None:
    """The text report, asked for with the token, is shown in the page as text."""
    trace_id = guarded_server.start(target=lab.targets(4)[47], **QUICK)
    guarded_server.finished(trace_id)
    browser.get(f"{guarded_server.url}/ui/traces/{trace_id}")
    wait(browser, lambda b: b.find_element(By.ID, "auth").is_displayed())
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "#auth-form button").click()
    wait(browser, lambda b: status(b) == "completed")
    browser.find_element(By.ID, "report-link").click()
    report = wait(browser, lambda b: b.find_element(By.ID, "raw").text)
    assert "HOST:" in report
    assert lab.targets(4)[47] in report


def test_cancel_button_cancels_a_running_trace(
    lab: Lab, server: Server, browser: WebDriver
) -> None:
    """The cancel button stops a running trace and the view says so."""
    trace_id = server.start(target=lab.targets(4)[42], probes=100, interval=1)
    browser.get(f"{server.url}/ui/traces/{trace_id}")
    cancel = wait(browser, lambda b: b.find_element(By.ID, "cancel").is_displayed()
                  and b.find_element(By.ID, "cancel"))  # fmt: skip
    cancel.click()
    wait(browser, lambda b: status(b) == "cancelled")
    assert server.call("GET", f"/traces/{trace_id}")["status"] == "cancelled"


HOSTILE = '<img src=x onerror="window.pwned=1">"><script>window.pwned=2</script>'
# mtrd drops a PTR answer that is not a valid hostname (above), so the page is also handed a
# hostile name the way it would arrive if one got through: in the JSON answers, here
# rewritten before the page reads them.
_INJECT_HOSTILE = """
const hostile = %s;
const original = window.fetch;
window.fetch = async (...args) => {
  const response = await original(...args);
  const url = String(args[0]);
  if (!/^\\/traces\\/[^/]+$/.test(url)) return response;
  const trace = await response.json();
  for (const hop of trace.hops) for (const r of hop.responders) {
    r.hostname = hostile; r.asn = 64500; r.as_name = hostile;
  }
  return new Response(JSON.stringify(trace), {status: response.status, headers: response.headers});
};
"""


HOSTILE_PTR = '<img src=x onerror="window.pwned=1">.lab.example'


@pytest_twisted.ensureDeferred
async def test_ptr_names_and_as_numbers_show_and_a_hostile_ptr_runs_nothing(
    lab: Lab, named_server: Server, browser: WebDriver
) -> None:
    """r1 shows its PTR name and every router its AS; r3's hostile PTR becomes no markup."""
    # The DNS server answers on this process's reactor: the blocking part runs in a thread.
    await deferToThread(_check_names, lab, named_server, browser)


def _check_names(lab: Lab, server: Server, browser: WebDriver) -> None:
    trace_id = server.start(target=lab.targets(4)[70], **QUICK)
    trace = server.finished(trace_id)
    browser.get(f"{server.url}/ui/traces/{trace_id}")
    wait(browser, lambda b: status(b) == "completed")
    first = browser.find_element(By.CSS_SELECTOR, '#hops tr[data-ttl="1"]')
    assert first.find_element(By.CSS_SELECTOR, ".name").text == "r1.lab.example"
    assert first.find_element(By.CSS_SELECTOR, ".as").text == "AS64500 Example Transit, NL"
    third = browser.find_element(By.CSS_SELECTOR, '#hops tr[data-ttl="3"]')
    r3 = trace["hops"][2]["responders"][0]
    assert third.find_element(By.CSS_SELECTOR, ".address").text == r3["address"]
    names = [n.text for n in third.find_elements(By.CSS_SELECTOR, ".name")]
    assert names == ([r3["hostname"]] if r3["hostname"] else [])
    assert browser.find_elements(By.CSS_SELECTOR, "#hops img, #hops script") == []
    assert browser.execute_script("return window.pwned === undefined")


def test_hostile_name_renders_as_text_and_runs_nothing(
    lab: Lab, server: Server, browser: WebDriver
) -> None:
    """A responder name full of markup is shown as its text; no element or script comes of it."""
    trace_id = server.start(target=lab.targets(4)[43], **QUICK)
    server.finished(trace_id)
    browser.execute_cdp_cmd(
        "Page.addScriptToEvaluateOnNewDocument", {"source": _INJECT_HOSTILE % json.dumps(HOSTILE)}
    )
    browser.get(f"{server.url}/ui/traces/{trace_id}")
    wait(browser, lambda b: status(b) == "completed")
    names = browser.find_elements(By.CSS_SELECTOR, "#hops .host .name")
    assert names
    assert {n.text for n in names} == {HOSTILE}
    assert browser.find_elements(By.CSS_SELECTOR, "#hops img, #hops script") == []
    assert browser.execute_script("return window.pwned === undefined")


def test_with_auth_the_page_asks_for_a_token_and_then_traces(
    lab: Lab, guarded_server: Server, browser: WebDriver
) -> None:
    """With auth on the page shows no form until a token is given, then starts a trace."""
    target = lab.targets(4)[44]
    browser.get(guarded_server.url + "/")
    wait(browser, lambda b: b.find_element(By.ID, "auth").is_displayed())
    assert browser.find_element(By.ID, "notice").text == "This mtrd needs a token."
    assert not browser.find_element(By.ID, "start").is_displayed()
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "#auth-form button").click()
    wait(browser, lambda b: b.find_element(By.ID, "start").is_displayed())
    browser.find_element(By.NAME, "target").send_keys(target)
    probes = browser.find_element(By.NAME, "probes")
    probes.clear()
    probes.send_keys("2")
    browser.find_element(By.ID, "submit").click()
    wait(browser, lambda b: "/ui/traces/" in b.current_url)
    wait(browser, lambda b: status(b) == "completed")
    assert_rows_match_topology(lab, browser, target)


def test_with_auth_a_wrong_token_shows_no_trace(
    lab: Lab, guarded_server: Server, browser: WebDriver
) -> None:
    """A shared address opened with a wrong token shows the token form, not the trace."""
    trace_id = guarded_server.start(target=lab.targets(4)[45], **QUICK)
    browser.get(f"{guarded_server.url}/ui/traces/{trace_id}")
    wait(browser, lambda b: b.find_element(By.ID, "auth").is_displayed())
    browser.find_element(By.ID, "token").send_keys("not-the-token-0123456789")
    browser.find_element(By.CSS_SELECTOR, "#auth-form button").click()
    wait(browser, lambda b: "refused" in b.find_element(By.ID, "notice").text)
    assert browser.find_element(By.ID, "auth").is_displayed()
    assert not browser.find_element(By.ID, "trace").is_displayed()
    assert browser.find_elements(By.CSS_SELECTOR, "#hops tbody tr") == []


# -- the scripts' pure parts, run in the browser -----------------------------------------------

_IMPORT = """
const done = arguments[arguments.length - 1];
const base = document.querySelector('script[type="module"]').src.replace(/app\\.js$/, "");
import(base + "%s").then((m) => {
  try { done({ value: (%s)(m) }); } catch (error) { done({ error: String(error) }); }
}, (error) => done({ error: String(error) }));
"""


def in_module(browser: WebDriver, server: Server, module: str, function: str) -> Any:
    """What ``function`` (JavaScript, given the module) returns, run in the served page."""
    if not browser.current_url.startswith(server.url):
        browser.get(server.url + "/")
    answer = browser.execute_async_script(_IMPORT % (module, function))
    assert "error" not in answer, answer["error"]
    return answer["value"]


def test_js_formats_times(server: Server, script_browser: WebDriver) -> None:
    """Times: one decimal, two below 1 ms, none from 1 s; a dash when there is none."""
    cases = "[12.345, 0.0456, 1234.5, null, undefined, NaN]"
    values = in_module(script_browser, server, "format.js", f"(f) => {cases}.map(f.ms)")
    assert values == ["12.3", "0.05", "1235", "\u2013", "\u2013", "\u2013"]


def test_js_formats_loss_and_duration(server: Server, script_browser: WebDriver) -> None:
    """Loss as a percentage with one decimal; durations in seconds, then minutes."""
    values = in_module(
        script_browser,
        server,
        "format.js",
        """(f) => [
        f.pct(12.5), f.pct(0), f.pct(null),
        f.took("2026-12-01T00:00:00.000Z", "2026-12-01T00:00:04.200Z"),
        f.took("2026-12-01T00:00:00.000Z", "2026-12-01T00:02:05.000Z"),
        f.took("2026-12-01T00:00:00.000Z", null)]""",
    )
    assert values == ["12.5%", "0.0%", "\u2013", "4.2 s", "2 min 5 s", "\u2013"]


def test_js_labels_names_and_as_numbers(server: Server, script_browser: WebDriver) -> None:
    """A responder shows its name when it has one, its AS and country when known (optional)."""
    values = in_module(
        script_browser,
        server,
        "format.js",
        """(f) => [
        f.hostLabel({address: "198.51.100.1", hostname: "r1.example"}),
        f.hostLabel({address: "198.51.100.1", hostname: null}),
        f.hostLabel({address: "198.51.100.1"}),
        f.asLabel({asn: 64500, as_name: "EXAMPLE-NET"}),
        f.asLabel({asn: 64500, as_name: null}),
        f.asLabel({asn: null}), f.asLabel({}),
        f.networkLabel({asn: 64500, as_name: "EXAMPLE-NET", country: "NL"}),
        f.networkLabel({asn: null, country: "NL"}), f.networkLabel({})]""",
    )
    assert values == [
        {"name": "r1.example", "address": "198.51.100.1"},
        {"name": "", "address": "198.51.100.1"},
        {"name": "", "address": "198.51.100.1"},
        "AS64500 EXAMPLE-NET",
        "AS64500",
        "",
        "",
        "AS64500 EXAMPLE-NET, NL",
        "NL",
        "",
    ]


def test_js_hop_figures_follow_the_table_columns(server: Server, script_browser: WebDriver) -> None:
    """A hop's figures in column order; forward loss is added where loss does not carry on."""
    values = in_module(
        script_browser,
        server,
        "format.js",
        """(f) => {
        const rtt = {last: 1.25, avg: 2, best: 0.5, worst: 4, stdev: null};
        return [f.hopFigures({loss_pct: 20, sent: 5, rtt_ms: rtt}),
                f.hopFigures({loss_pct: 20, forward_loss_pct: 0, sent: 5, rtt_ms: rtt})[0],
                f.hopFigures({loss_pct: 20, forward_loss_pct: 20, sent: 5, rtt_ms: rtt})[0],
                f.hopFigures({loss_pct: 0, forward_loss_pct: null, sent: 5, rtt_ms: rtt})[0]];
    }""",
    )
    assert values == [
        ["20.0%", "5", "1.3", "2.0", "0.50", "4.0", "\u2013"],
        "20.0% (fwd 0.0%)",
        "20.0%",
        "0.0%",
    ]


def test_js_says_the_stop_reason_in_words(server: Server, script_browser: WebDriver) -> None:
    """A stop reason shows as its word, with the ICMP kind when unreachable; a dash without."""
    values = in_module(
        script_browser,
        server,
        "format.js",
        """(f) => [
        f.stopReason("destination", null), f.stopReason("unreachable", "net"),
        f.stopReason(null, null), f.stopReason(undefined)]""",
    )
    assert values == ["destination", "unreachable (net)", "\u2013", "\u2013"]


def test_js_sse_parser_joins_events_split_across_chunks(
    server: Server, script_browser: WebDriver
) -> None:
    """An event cut anywhere by the network comes out whole, once, when its blank line arrives."""
    values = in_module(
        script_browser,
        server,
        "sse.js",
        """(m) => {
        const p = new m.SseParser();
        return [p.feed("id: 1\\nevent: hop\\nda"), p.feed('ta: {"ttl":1}\\n'), p.feed("\\n")];
    }""",
    )
    assert values == [[], [], [{"id": "1", "event": "hop", "data": '{"ttl":1}'}]]


def test_js_sse_parser_reads_crlf_comments_and_multiline_data(
    server: Server, script_browser: WebDriver
) -> None:
    """CRLF and CR end lines, comments (heartbeats) are skipped, data lines join with LF."""
    values = in_module(
        script_browser,
        server,
        "sse.js",
        """(m) => {
        const p = new m.SseParser();
        return p.feed(": keep-alive\\r\\n\\r\\nid: 7\\r\\nevent: status\\r\\ndata: a\\r" +
                      "data:b\\r\\n\\r\\ndata: c\\n\\n");
    }""",
    )
    assert values == [
        {"id": "7", "event": "status", "data": "a\nb"},
        {"id": "7", "event": "message", "data": "c"},
    ]


def test_js_sse_parser_keeps_a_crlf_split_between_chunks_as_one_line_end(
    server: Server, script_browser: WebDriver
) -> None:
    """A CR at a chunk's end followed by LF in the next is one line end, not a blank line."""
    values = in_module(
        script_browser,
        server,
        "sse.js",
        """(m) => {
        const p = new m.SseParser();
        return [p.feed("data: x\\r"), p.feed("\\ndata: y\\r\\n\\r\\n")];
    }""",
    )
    assert values == [[], [{"id": None, "event": "message", "data": "x\ny"}]]


def test_js_chart_axis_ends_on_a_round_number(server: Server, script_browser: WebDriver) -> None:
    """The chart's axis ends at 1, 2 or 5 times a power of ten above the worst time."""
    values = in_module(script_browser, server, "chart.js",
                       "(c) => [0, 0.3, 1, 1.01, 7, 38, 120].map(c.niceCeiling)")  # fmt: skip
    assert values == [1, 0.5, 1, 2, 10, 50, 200]


# -- monitors: until the monitors API is merged, the page reads canned answers ----------------


def _monitor(runs: int) -> dict[str, Any]:
    """A monitor resource as the monitors API renders it, with ``runs`` runs (newest first)."""
    run = {
        "result": "reached", "scheduled_at": "2026-12-01T00:00:00.000Z",
        "started_at": "2026-12-01T00:00:00.000Z", "path_id": "p2",
    }  # fmt: skip
    return {
        "id": "m1", "name": HOSTILE, "request": {"target": "203.0.113.50"}, "every": 60,
        "paused": False, "next_run_at": "2026-12-01T00:10:00.000Z",
        "path": {"path_id": "p2", "reached": True, "hops": [
            {"ttl": 1, "responders": ["198.51.100.1"]},
            {"ttl": 2, "responders": None},
            {"ttl": 3, "responders": ["198.51.100.17"]},
        ]},
        "alerts_open": [{"alert": "path_change", "since": "2026-12-01T00:05:00.000Z"}],
        "path_changes": [{"at": "2026-12-01T00:05:00.000Z", "change": {
            "from_path_id": "p1", "to_path_id": "p2",
            "diff": [{"ttl": 2, "left": ["198.51.100.6"], "came": ["198.51.100.10"]}],
        }}],
        "runs": [
            {**run, "trace_id": f"t{i}", "finished_at": f"2026-12-01T00:0{i}:01.000Z",
             "loss_pct": 25.0 if i == 1 else 0.0, "rtt_ms": 1.5 + i,
             "links": {"trace": f"/traces/t{i}"}}
            for i in reversed(range(runs))
        ],
    }  # fmt: skip


# The page's fetch answered from canned documents: /monitors and /monitors/m1 (the second
# read after the first event), and an event stream that sends one run event when asked to.
_CANNED_MONITORS = """
const canned = %s;
const eventAfter = %s;
let reads = 0;
window.fetch = async (url) => {
  const json = (body) => new Response(JSON.stringify(body),
    {status: 200, headers: {"Content-Type": "application/json"}});
  if (url === "/vantage-points") return json({vantage_points: [{name: "default"}]});
  if (url === "/monitors") return json({monitors: [canned.first]});
  if (url === "/monitors/m1") return json(reads++ === 0 ? canned.first : canned.later);
  if (url === "/monitors/m1/events") {
    const body = new ReadableStream({start(controller) {
      if (eventAfter === null) return;
      setTimeout(() => controller.enqueue(new TextEncoder().encode(
        'id: 1\\nevent: run\\ndata: {"monitor_id":"m1"}\\n\\n')), eventAfter);
    }});
    return new Response(body, {status: 200, headers: {"Content-Type": "text/event-stream"}});
  }
  return new Response("{}", {status: 404});
};
"""


def _canned_monitors(browser: WebDriver, event_after: float | None = None) -> None:
    """Canned monitors for the next page load; a run event ``event_after`` seconds in."""
    canned = {"first": _monitor(3), "later": _monitor(4)}
    after = "null" if event_after is None else str(int(event_after * 1000))
    browser.execute_cdp_cmd(
        "Page.addScriptToEvaluateOnNewDocument",
        {"source": _CANNED_MONITORS % (json.dumps(canned), after)},
    )


def test_monitor_list_links_each_monitor_by_its_name_as_text(
    server: Server, browser: WebDriver
) -> None:
    """The start page lists the monitors, each name (hostile here) as text linking to its view."""
    _canned_monitors(browser)
    browser.get(server.url + "/")
    links = wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#monitor-list a"))
    assert [a.text for a in links] == [HOSTILE]
    assert links[0].get_attribute("href") == server.url + "/ui/monitors/m1"
    assert browser.find_elements(By.CSS_SELECTOR, "#monitor-list img, #monitor-list script") == []
    assert browser.execute_script("return window.pwned === undefined")


def test_monitor_view_shows_path_changes_and_runs(server: Server, browser: WebDriver) -> None:
    """A monitor's view shows its current path, each change by TTL, the runs and their chart."""
    _canned_monitors(browser)
    browser.get(server.url + "/ui/monitors/m1")
    wait(browser, lambda b: b.find_element(By.ID, "monitor").is_displayed())
    assert browser.find_element(By.ID, "monitor-name").text == HOSTILE
    path = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#monitor-path tbody tr")]
    assert path == ["1 198.51.100.1", "2 ? (not heard)", "3 198.51.100.17"]
    diff = browser.find_element(By.CSS_SELECTOR, "#monitor-changes .diff").text
    assert diff == "TTL 2: left 198.51.100.6; came 198.51.100.10"
    assert "path_change" in browser.find_element(By.ID, "monitor-alerts").text
    assert browser.find_elements(By.CSS_SELECTOR, "#runs-chart .loss text")[0].text == "25%"
    trace_links = browser.find_elements(By.CSS_SELECTOR, "#monitor-runs a")
    assert trace_links[0].get_attribute("href") == server.url + "/ui/traces/t2"
    assert console_errors(browser) == []


def test_monitor_view_updates_on_its_events(server: Server, browser: WebDriver) -> None:
    """A run event makes the view read the monitor again and show the new run."""
    _canned_monitors(browser, event_after=1.0)
    browser.get(server.url + "/ui/monitors/m1")
    wait(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, "#monitor-runs tbody tr")) == 3)
    wait(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, "#monitor-runs tbody tr")) == 4)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#runs-chart circle")) == 4


def test_a_real_monitor_is_listed_and_its_view_follows_its_runs(
    lab: Lab, server: Server, browser: WebDriver
) -> None:
    """A monitor made through the API is listed by name; its view shows its path and new runs."""
    target = lab.targets(4)[60]
    monitor = server.call("POST", "/monitors", {"name": "page-web-1", "target": target,
                          "every": 1, "probes": 2, "interval": 0.2, "timeout": 1})  # fmt: skip
    try:
        browser.get(server.url + "/")
        link = wait(browser, lambda b: [
            a for a in b.find_elements(By.CSS_SELECTOR, "#monitor-list a")
            if a.text == "page-web-1"])[0]  # fmt: skip
        link.click()
        wait(browser, lambda b: b.current_url.endswith(f"/ui/monitors/{monitor['id']}"))
        wait(
            browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, "#monitor-runs tbody tr")) >= 3
        )
        path = browser.find_elements(By.CSS_SELECTOR, "#monitor-path tbody tr")
        assert [int(str(r.get_attribute("data-ttl"))) for r in path] == [1, 2, 3, 4]
        assert path[-1].find_element(By.CSS_SELECTOR, ".address").text == target
        assert console_errors(browser) == []
    finally:
        server.call("DELETE", f"/monitors/{monitor['id']}")


# -- multipath: the diamond and the flows, from a canned finished trace -----------------------


def test_js_diamond_layout_puts_a_column_per_ttl_and_links_between_them(
    server: Server, script_browser: WebDriver
) -> None:
    """Responders stand in a column per TTL, centred; each link joins its two nodes."""
    layout = in_module(
        script_browser,
        server,
        "diamond.js",
        """(d) => d.layoutDiamond(
      [{ttl: 1, responders: [{address: "a"}]},
       {ttl: 2, responders: [{address: "b"}, {address: "c"}]}],
      [{ttl: 1, from: "a", to: "b"}, {ttl: 1, from: "a", to: "c"},
       {ttl: 2, from: "c", to: "d"}])""",
    )
    place = {n["address"]: (n["ttl"], n["x"], n["y"]) for n in layout["nodes"]}
    assert layout["ttls"] == [1, 2, 3]
    assert place["b"][1] == place["c"][1] > place["a"][1]
    assert place["b"][2] < place["a"][2] < place["c"][2]
    assert place["d"] == (3, place["d"][1], place["a"][2])  # a link's end no hop listed
    ends = [((e["x1"], e["y1"]), (e["x2"], e["y2"])) for e in layout["edges"]]
    assert ends[1] == (place["a"][1:], place["c"][1:])


def _multipath_trace() -> dict[str, Any]:
    """A finished multipath trace: one router, a diamond of two (one hostile name), the target."""

    def responder(address: str, hostname: str | None = None) -> dict[str, Any]:
        return {"address": address, "hostname": hostname}

    def hop(ttl: int, *responders: dict[str, Any]) -> dict[str, Any]:
        return {
            "ttl": ttl,
            "responders": list(responders),
            "loss_pct": 0.0,
            "sent": 4,
            "rtt_ms": {"last": 1.0, "avg": 1.0, "best": 1.0, "worst": 1.0, "stdev": 0.0},
        }

    def flow(number: int, middle: str, rtt: float | None) -> dict[str, Any]:
        return {
            "flow": number,
            "local_port": 40000 + number,
            "sent": 3,
            "lost": 0 if rtt else 1,
            "loss_pct": 0.0 if rtt else 33.3,
            "hops": [
                {"ttl": 1, "address": "198.51.100.1", "rtt_ms": 0.5},
                {"ttl": 2, "address": middle, "rtt_ms": 1.0},
                {"ttl": 3, "address": "203.0.113.9" if rtt else None, "rtt_ms": rtt},
            ],
        }

    return {
        "id": "mp1", "status": "completed", "mode": "multipath", "stop_reason": "destination",
        "destination_reached": True, "unreachable_kind": None, "error": None, "vantage": None,
        "target": {"input": "203.0.113.9", "address": "203.0.113.9"},
        "started_at": "2026-12-01T00:00:00.000Z", "finished_at": "2026-12-01T00:00:02.000Z",
        "hops": [hop(1, responder("198.51.100.1")),
                 hop(2, responder("198.51.100.5", HOSTILE), responder("198.51.100.6")),
                 hop(3, responder("203.0.113.9"))],
        "multipath": {
            "confidence": 95, "stop_reason": "destination", "probes_sent": 12,
            "full_mda_hops": [],
            "links": [{"ttl": 1, "from": "198.51.100.1", "to": "198.51.100.5"},
                      {"ttl": 1, "from": "198.51.100.1", "to": "198.51.100.6"},
                      {"ttl": 2, "from": "198.51.100.5", "to": "203.0.113.9"},
                      {"ttl": 2, "from": "198.51.100.6", "to": "203.0.113.9"}],
            "flows": [flow(0, "198.51.100.5", 2.25), flow(1, "198.51.100.6", None)],
        },
    }  # fmt: skip


_CANNED_TRACE = """
const trace = %s;
window.fetch = async (url) => url === "/traces/mp1"
  ? new Response(JSON.stringify(trace),
    {status: 200, headers: {"Content-Type": "application/json"}})
  : new Response("{}", {status: 404});
"""


def test_multipath_trace_view_draws_the_diamond_and_lists_the_flows(
    server: Server, browser: WebDriver
) -> None:
    """A finished multipath trace shows each responder as a node, each link as a line, a row per
    flow, and a hostile name as text."""
    browser.execute_cdp_cmd(
        "Page.addScriptToEvaluateOnNewDocument",
        {"source": _CANNED_TRACE % json.dumps(_multipath_trace())},
    )
    browser.get(server.url + "/ui/traces/mp1")
    wait(browser, lambda b: b.find_element(By.ID, "multipath").is_displayed())
    labels = browser.find_elements(By.CSS_SELECTOR, "#diamond .responder text")
    assert [t.text for t in labels] == ["198.51.100.1", HOSTILE, "198.51.100.6", "203.0.113.9"]
    assert len(browser.find_elements(By.CSS_SELECTOR, "#diamond .links line")) == 4
    flows = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#flows tbody tr")]
    assert flows == ["0 40000 3 0.0% 2.3", "1 40001 3 33.3% 1.0"]
    assert browser.find_elements(By.CSS_SELECTOR, "#diamond image, #diamond script") == []
    assert browser.execute_script("return window.pwned === undefined")
    assert console_errors(browser) == []


def test_form_sends_a_multipath_trace_with_its_confidence(
    lab: Lab, server: Server, browser: WebDriver
) -> None:
    """Choosing multipath sets udp and sends mode and confidence; the trace runs as multipath."""
    browser.get(server.url + "/")
    wait(browser, lambda b: b.find_element(By.ID, "start").is_displayed())
    browser.find_element(By.ID, "target").send_keys(lab.targets(4)[61])
    Select(browser.find_element(By.ID, "mode")).select_by_value("multipath")
    assert Select(browser.find_element(By.ID, "protocol")).first_selected_option.text == "UDP"
    Select(browser.find_element(By.ID, "confidence")).select_by_value("99")
    browser.find_element(By.ID, "submit").click()
    wait(browser, lambda b: "/ui/traces/" in b.current_url)
    trace = server.finished(browser.current_url.rsplit("/", 1)[1], limit=60)
    assert trace["multipath"]["confidence"] == 99
    wait(browser, lambda b: b.find_element(By.ID, "multipath").is_displayed(), limit=60)
    assert browser.find_elements(By.CSS_SELECTOR, "#diamond .responder")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.find_element(By.ID, "multipath").screenshot(str(ARTIFACTS / "multipath-trace.png"))
    assert console_errors(browser) == []


def test_js_diamond_layout_orders_a_column_by_the_rows_leading_to_it(
    server: Server, script_browser: WebDriver
) -> None:
    """A responder reached from the lower of two routers is drawn lower, so lines do not cross."""
    rows = in_module(
        script_browser,
        server,
        "diamond.js",
        """(d) => d.layoutDiamond(
      [{ttl: 1, responders: [{address: "a"}, {address: "b"}]},
       {ttl: 2, responders: [{address: "y"}, {address: "x"}]}],
      [{ttl: 1, from: "a", to: "x"}, {ttl: 1, from: "b", to: "y"}]
    ).nodes.filter((n) => n.ttl === 2).map((n) => n.address)""",
    )
    assert rows == ["x", "y"]
