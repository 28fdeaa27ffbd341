"""The dashboard (`GET /admin`): its files and headers over real HTTP, the package that ships them,
and the page itself in a real headless Chromium against a real server process and the local ESI."""

from __future__ import annotations

import hashlib
import html.parser
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.api_helpers import TOKEN, GatedWork, bearer, body_of, build_context, fetcher
from tests.conftest import require_service
from tests.server_helpers import ROOT, server_env
from tornado_admin.app import make_app
from tornado_admin.dashboard import CONTENT_SECURITY_POLICY, STATIC_DIR
from tornado_admin.fake_esi import FakeEsi

FILES = {
    "/admin": ("admin.html", "text/html; charset=UTF-8"),
    "/admin/admin.js": ("admin.js", "text/javascript; charset=UTF-8"),
    "/admin/admin.css": ("admin.css", "text/css; charset=UTF-8"),
}
WRONG_TOKEN = "wrong-admin-token-" + "w" * 30


@pytest.fixture
def database_url(sqlite_url):
    return sqlite_url


@pytest.fixture
def app(order_store, clock, io_loop):
    context = build_context(order_store, GatedWork(), clock)
    yield make_app(context)
    io_loop.run_sync(context.runner.shutdown)


@pytest.fixture
def fetch(http_client, base_url):
    return fetcher(http_client, base_url)


class PageAudit(html.parser.HTMLParser):
    """What a strict CSP would block in a page: inline scripts, handlers, styles; other origins."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name.startswith("on") or name == "style":
                self.problems.append(f"<{tag} {name}=…>")
            if name in ("src", "href", "action") and value and re.match(r"\w+:|//", value):
                self.problems.append(f"<{tag} {name}={value}>: another origin")
        if tag == "style":
            self.problems.append("<style>")
        if tag == "script":
            self.scripts.append(dict(attrs).get("src") or "")
            self._in_script = True

    def handle_endtag(self, tag: str) -> None:
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.problems.append("inline <script>")


@pytest.mark.gen_test
async def test_the_page_and_its_files_come_with_a_strict_csp_and_revalidation(fetch):
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
    for path, (name, content_type) in FILES.items():
        for method in ("GET", "HEAD"):
            response = await fetch(path, method)
            assert response.code == 200, (path, response.body)
            headers = response.headers
            assert headers["Content-Type"] == content_type
            assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
            for directive in ("default-src 'self'", "script-src 'self'", "frame-ancestors 'none'"):
                assert directive in headers["Content-Security-Policy"].split("; ")
            assert headers["X-Content-Type-Options"] == "nosniff"
            assert headers["X-Frame-Options"] == "DENY"
            assert headers["Cache-Control"] == "no-cache"
            expected = (STATIC_DIR / name).read_bytes()
            assert response.body == (expected if method == "GET" else b"")
        etag = response.headers["ETag"]
        assert hashlib.sha256(expected).hexdigest()[:32] in etag
        again = await fetch(path, headers={"If-None-Match": etag})
        assert (again.code, again.body) == (304, b"")
        assert (await fetch(path, headers={"If-None-Match": '"stale"'})).code == 200


@pytest.mark.gen_test
async def test_the_page_has_no_inline_code_no_other_origin_and_no_secret(fetch):
    page = (await fetch("/admin")).body.decode()
    audit = PageAudit()
    audit.feed(page)
    assert audit.problems == []
    assert audit.scripts == ["/admin/admin.js"]
    assert TOKEN not in page
    script = (await fetch("/admin/admin.js")).body.decode()
    # Text only (job errors quote ESI and databases), and nothing to evaluate.
    unsafe = r"\.(inner|outer)HTML|insertAdjacentHTML|document\.write|\beval\(|new Function"
    assert not re.search(unsafe, script)
    assert "localStorage" not in script  # sessionStorage: the token dies with the tab


@pytest.mark.parametrize("path", [
    "/admin/", "/admin/admin.html", "/admin/index.html", "/admin/static/", "/admin/static/admin.js",
    "/admin/admin.js/", "/admin//admin.js", "/admin/./admin.js", "/admin/../admin/admin.js",
    "/admin/../tornado_admin/dashboard.py", "/admin/..%2fdashboard.py", "/admin/%2e%2e/dashboard.py",
    "/admin/%2e%2e%2fdashboard.py", "/admin/..%5cdashboard.py", "/admin/%252e%252e/dashboard.py",
    "/admin/admin%2ejs", "/admin/__init__.py", "/static/admin.js", "/admin.js", "/admin/admin.js%00",
])  # fmt: skip
@pytest.mark.gen_test
async def test_no_other_path_is_served_no_listing_no_traversal(fetch, path):
    response = await fetch(path)
    assert response.code == 404, (path, response.body[:200])
    assert body_of(response) == {"error": "Not Found", "message": "No such route"}


@pytest.mark.gen_test
async def test_other_methods_are_405_in_json(fetch):
    for method in ("POST", "PUT", "DELETE"):
        response = await fetch("/admin", method)
        assert response.code == 405
        assert response.headers["Allow"] == "GET, HEAD"
        assert response.headers["Cache-Control"] == "no-store"
        assert body_of(response) == {"error": "Method Not Allowed", "message": "Use GET or HEAD"}


def test_a_built_package_carries_the_files(tmp_path):
    """What `pip install` would install: setuptools' build_py on a copy of the project."""
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("tornado_admin", "backends"):
        shutil.copytree(ROOT / package, source / package, ignore=ignore)
    built = tmp_path / "lib"
    subprocess.run([sys.executable, "-c", "import setuptools; setuptools.setup()", "-q", "build_py",
                    "--build-lib", str(built)], cwd=source, check=True, capture_output=True)
    check = ("import tornado_admin.dashboard as d; assert d.STATIC_DIR.is_relative_to(sys.argv[1]);"
             "print(sorted(a.path for a in d.load_assets()))")
    out = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, sys.argv[1]); {check}",
                          str(built)], cwd=tmp_path, check=True, capture_output=True, text=True)
    assert out.stdout.strip() == str(sorted(FILES))


# -- the page in Chromium ----------------------------------------------------------------------

REGIONS = {10000001 + i: 1000 for i in range(8)}  # one page each
# Before any page script: report CSP violations, and every value the progress bar takes.
WATCH = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__violations.push(e.violatedDirective);
  console.error("CSP violation: " + e.violatedDirective);
});
window.__progress = [];
document.addEventListener("DOMContentLoaded", () => {
  const bar = document.getElementById("run-progress");
  if (!bar) return;
  new MutationObserver(() => {
    if (bar.hasAttribute("value")) window.__progress.push([bar.value, bar.max]);
  }).observe(bar, {attributes: true});
});
"""
# The progress line at a moment the bar stands between 0 and 8 (read in the page: no race).
INTERMEDIATE = """() => {
  const bar = document.getElementById("run-progress");
  const between = bar.hasAttribute("value") && bar.max === 8 && bar.value > 0 && bar.value < 8;
  return between && document.getElementById("run-progress-text").textContent;
}"""
INLINE_SCRIPT = """() => {
  const script = document.createElement("script");
  script.textContent = "window.__inlineRan = true";
  document.body.append(script);
}"""


def text_starts(selector: str, prefix: str) -> str:
    """A predicate for wait_for_function. A function, not an expression: Playwright evaluates
    expressions with eval(), which the page's CSP refuses."""
    return f"() => document.querySelector({selector!r}).textContent.startsWith({prefix!r})"


def chromium() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(path):
        require_service("chromium (Debian's package)", FileNotFoundError(path))
    return path


def sign_in(page, url: str) -> None:
    """The page asks for the token once, then keeps it in this tab only, out of the DOM."""
    response = page.goto(url)
    assert response.status == 200
    assert TOKEN not in response.text()
    assert page.is_visible("#login")
    assert page.is_hidden("#dashboard")
    page.fill("#token", TOKEN)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#dashboard", state="visible")
    assert page.input_value("#token") == ""
    assert TOKEN not in page.content()
    assert page.evaluate("sessionStorage.getItem('tornado-admin.token')") == TOKEN
    assert page.evaluate("localStorage.length") == 0
    page.wait_for_function(text_starts("#freshness-text", "No successful run yet"))
    assert page.is_visible("#stale-banner")


def trigger_twice(page) -> str:
    """Trigger: the 202 with the run's id; at once again: the 409 naming that run."""
    page.click("#trigger")
    page.wait_for_selector("#trigger-result.accepted")
    accepted = page.text_content("#trigger-result")
    job_id = re.fullmatch(r"202 Accepted: run ([\w-]{22}) started\.", accepted).group(1)
    page.click("#trigger")
    page.wait_for_selector("#trigger-result.conflict")
    assert page.text_content("#trigger-result") == f"409 Conflict: run {job_id} is already in progress."
    return job_id


def watch_to_completion(page, job_id: str) -> None:
    """The bar stands between 0 and 8 at some point, only moves forward, and ends full."""
    line = page.wait_for_function(INTERMEDIATE).json_value()
    assert re.fullmatch(r"[1-7] of 8 regions · [1-7],000 orders stored · [\d.]+ m?s elapsed", line), line
    page.wait_for_selector("#run-status.completed", timeout=25_000)
    assert page.eval_on_selector("#run-progress", "bar => [bar.value, bar.max]") == [8, 8]
    assert page.text_content("#run-progress-text").startswith("8 of 8 regions · 8,000 orders stored · took")
    seen = page.evaluate("window.__progress")
    values = [value for value, maximum in seen if maximum == 8]
    assert values == sorted(values), seen
    assert values[-1] == 8, seen
    assert any(0 < value < 8 for value in values), seen
    assert page.text_content("#run-id") == job_id
    first_row = page.locator("#runs tr").first
    assert first_row.get_attribute("data-job-id") == job_id
    assert re.search(r"completed.*manual.*8,000", first_row.text_content())
    page.wait_for_selector("#stale-banner", state="hidden")
    assert page.text_content("#freshness-text").startswith("Last successful run")


def wrong_token_is_refused(browser, url: str, requests: list) -> None:
    """In a fresh tab of its own: a clear 401, and the sign-in form again."""
    context = browser.new_context()
    context.set_default_timeout(15_000)
    context.on("request", lambda r: requests.append((r.method, r.url, r.headers)))
    page = context.new_page()
    page.goto(url)
    page.fill("#token", WRONG_TOKEN)
    page.press("#token", "Enter")
    page.wait_for_selector("#notice:not([hidden])")
    assert page.text_content("#notice") == (
        "The server refused the token (401 Unauthorized: Invalid admin token). Enter the admin token again."
    )
    assert page.is_visible("#login")
    assert page.is_hidden("#dashboard")
    assert page.evaluate("sessionStorage.getItem('tornado-admin.token')") is None
    context.close()


def csp_held(page, console: list[str]) -> None:
    """Nothing was blocked while the page worked, and an inline script is blocked (the
    listener works, the policy is enforced)."""
    assert page.evaluate("window.__violations") == []
    assert not [text for text in console if "Content Security Policy" in text or "CSP" in text]
    page.evaluate(INLINE_SCRIPT)
    page.wait_for_function("() => window.__violations.length > 0")
    assert page.evaluate("window.__inlineRan") is None


def token_only_in_headers(requests: list, server) -> None:
    """The token travelled in the Authorization header of admin calls, nowhere else."""
    assert requests, "no request seen"
    for _, url, _ in requests:
        assert TOKEN not in url, url
        assert WRONG_TOKEN not in url, url
    admin_calls = [(method, url, headers) for method, url, headers in requests if "/api/admin/" in url]
    assert ("POST", server.url("/api/admin/trigger-fetch")) in {call[:2] for call in admin_calls}
    assert {headers.get("authorization") for _, _, headers in admin_calls} == {
        f"Bearer {TOKEN}", f"Bearer {WRONG_TOKEN}"}
    status_calls = [headers for _, url, headers in requests if url == server.url("/api/status")]
    assert status_calls
    assert all("authorization" not in headers for headers in status_calls)


def test_sign_in_trigger_watch_a_run_complete_then_wrong_token_and_server_gone(servers, tmp_path):
    executable = chromium()
    from playwright.sync_api import sync_playwright

    # Each ESI request waits 0.3 s and the server asks one at a time: a run of about 3 s, while
    # the page polls every 0.5 s, so it shows several values on the way.
    esi = FakeEsi(REGIONS, latency_seconds=0.3)
    with esi.run_in_thread(), sync_playwright() as playwright:
        server = servers(server_env(tmp_path, esi.url, ESI_CONCURRENCY="1"), tmp_path)
        server.wait_ready()
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1000, "height": 640})
            context.set_default_timeout(15_000)
            requests: list = []
            console: list[str] = []
            context.on("request", lambda r: requests.append((r.method, r.url, r.headers)))
            context.add_init_script(WATCH)
            page = context.new_page()
            page.on("console", lambda message: console.append(message.text))

            sign_in(page, server.url("/admin"))
            job_id = trigger_twice(page)
            watch_to_completion(page, job_id)
            _, job = server.request(f"/api/admin/job-status/{job_id}", headers=bearer())
            assert (job["status"], job["progress"]["regionsDone"]) == ("completed", 8)
            if os.environ.get("SAVE_SCREENSHOT") == "1":  # docs/dashboard.png; CI leaves the tree alone
                page.screenshot(path=str(ROOT / "docs" / "dashboard.png"), full_page=True)

            wrong_token_is_refused(browser, server.url("/admin"), requests)
            csp_held(page, console)

            # The server goes away: the next action says so.
            assert server.stop() == 0
            page.click("#trigger")
            page.wait_for_function(text_starts("#notice", "Cannot reach the server at http://127.0.0.1:"))
            assert page.is_visible("#notice")

            token_only_in_headers(requests, server)
            context.close()
        finally:
            browser.close()
