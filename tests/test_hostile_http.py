"""Hostile input on the wire: header forms, hostile job ids, the method matrix, resource limits.

Against the real server process (`python -m tornado_admin serve`, memory job store), over raw
sockets: the process is the only place where the real `HTTPServer` limits of `app.Server`
(16 KiB headers, 64 KiB bodies, timeouts) and the real logging apply, and "still alive
afterwards" means something. One process serves the whole module (it is the same
`ServerProcess` + `server_env` the `servers` fixture uses, at module scope: a thousand raw
requests, one startup); a test that needs another configuration starts its own through `servers`. Every
test ends with `Wire.assert_alive`: the process runs, `/healthz` answers, and nothing in the
request path was logged at ERROR (no 5xx, no uncaught exception) while the test ran.
The one in-process test spies on the job store, to see the keys it is asked for.

Every connection comes from its own loopback address (127.x.y.z): the failed-authentication
throttle (429 past 10 failures a minute from one address) must not turn these cases into 429s.

Tornado refuses some requests before any handler runs, with a bare `HTTP/1.1 400 Bad Request`
and no body (malformed header lines or request line, control bytes, too long a Content-Length)
or by closing the connection without an answer (headers past `max_header_size`): those answers
are not JSON, whatever DESIGN.md section 4 says; the tests accept them (never a 5xx) and the
report names them.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.base import is_job_id
from tests.api_helpers import TOKEN, GatedWork, build_context
from tests.secrets_sweep import secret
from tests.server_helpers import ServerProcess, server_env
from tests.wire import Reply, Wire, as_bytes, connect, http_request, parse_reply, read_to_end
from tornado_admin.app import make_app

CRON = secret("cron-secret-" + "k" * 36)
MISSING = {
    "error": "Unauthorized",
    "message": "Missing or invalid Authorization header. Use: Authorization: Bearer <token>",
}
INVALID = {"error": "Unauthorized", "message": "Invalid admin token"}
JOB_NOT_FOUND = {"error": "Not Found", "message": "Job not found or expired"}
NO_ROUTE = {"error": "Not Found", "message": "No such route"}
CHALLENGE = 'Bearer realm="admin"'
INVALID_CHALLENGE = 'Bearer realm="admin", error="invalid_token"'
DUPLICATE_CHALLENGE = 'Bearer realm="admin", error="invalid_request"'
DUPLICATE_BODY = {"error": "Bad Request", "message": "Send exactly one Authorization header"}
AUTH = b"Authorization: Bearer " + TOKEN.encode()
UNKNOWN_ID = "A" * 22  # the alphabet and length of the ids the server issues, but no such job
@pytest.fixture(scope="module")
def module_server(tmp_path_factory) -> Iterator[ServerProcess]:
    tmp: Path = tmp_path_factory.mktemp("hostile")
    server = ServerProcess(server_env(tmp, CRON_SECRET=CRON), tmp)
    try:
        server.wait_ready()
        yield server
    finally:
        if server.process.poll() is None:
            assert server.stop() == 0
        else:
            server._log.close()


@pytest.fixture
def wire(module_server: ServerProcess) -> Wire:
    return Wire(module_server)


def assert_json_reply(reply: Reply, status: int, body: dict | None = None) -> None:
    assert reply.status == status, reply
    parsed = reply.json()
    if body is not None:
        assert parsed == body


def assert_not_5xx(reply: Reply) -> None:
    assert reply.status is not None, "closed without an answer"
    assert reply.status < 500, reply


def assert_refused_by_tornado(reply: Reply) -> None:
    """Tornado's own 400 for a request it cannot parse: no 5xx, and if a body comes, JSON."""
    assert reply.status == 400, reply
    if reply.body:
        reply.json()


# -- the Authorization header --------------------------------------------------------------------

T = TOKEN.encode()
OK, MALFORMED, WRONG, DUPLICATE, UNPARSABLE = "ok", "malformed", "wrong", "duplicate", "unparsable"

HEADER_FORMS = [
    # Accepted: "Bearer" in any case, any run of spaces and tabs, trailing whitespace.
    ("canonical", [AUTH], OK),
    ("lower-case scheme", [b"Authorization: bearer " + T], OK),
    ("upper-case scheme", [b"Authorization: BEARER " + T], OK),
    ("mixed-case scheme", [b"Authorization: bEaReR " + T], OK),
    ("tab", [b"Authorization: Bearer\t" + T], OK),
    ("several spaces", [b"Authorization: Bearer      " + T], OK),
    ("spaces and tabs", [b"Authorization: Bearer \t \t " + T], OK),
    ("trailing whitespace", [b"Authorization: Bearer " + T + b" \t  "], OK),
    ("leading whitespace", [b"Authorization:    Bearer " + T], OK),
    ("10 KB of trailing spaces", [b"Authorization: Bearer " + T + b" " * 10_240], OK),
    ("lower-case header name", [b"authorization: Bearer " + T], OK),
    ("no space after the colon", [b"AUTHORIZATION:Bearer " + T], OK),
    # Missing or malformed: 401 with the plain challenge.
    ("no header", [], MALFORMED),
    ("empty value", [b"Authorization:"], MALFORMED),
    ("only whitespace", [b"Authorization: \t  "], MALFORMED),
    ("scheme alone", [b"Authorization: Bearer"], MALFORMED),
    ("scheme and a space", [b"Authorization: Bearer "], MALFORMED),
    ("empty token, 10 KB of spaces", [b"Authorization: Bearer" + b" " * 10_240], MALFORMED),
    ("Basic", [b"Authorization: Basic dXNlcjpwYXNzd29yZA=="], MALFORMED),
    ("Basic with the token", [b"Authorization: Basic " + T], MALFORMED),
    ("other scheme", [b"Authorization: Token " + T], MALFORMED),
    ("token alone", [b"Authorization: " + T], MALFORMED),
    ("no separator", [b"Authorization: Bearer" + T], MALFORMED),
    ("colon separator", [b"Authorization: Bearer:" + T], MALFORMED),
    ("two tokens", [b"Authorization: Bearer " + T + b" " + T], MALFORMED),
    ("comma-joined", [b"Authorization: Bearer " + T + b", Bearer " + T], MALFORMED),
    ("SQL with spaces", [b"Authorization: Bearer ' OR '1'='1"], MALFORMED),
    ("latin-1 NBSP separator", [b"Authorization: Bearer\xa0" + T], MALFORMED),
    ("latin-1 NBSP after the token", [b"Authorization: Bearer " + T + b"\xa0"], MALFORMED),
    ("latin-1 letter in the scheme", [b"Authorization: B\xe9arer " + T], MALFORMED),
    ("UTF-8 fullwidth B in the scheme", [b"Authorization: \xef\xbc\xa2earer " + T], MALFORMED),
    ("other header", [b"X-Authorization: Bearer " + T], MALFORMED),
    ("cookie", [b"Cookie: token=" + T], MALFORMED),
    # Well-formed, wrong token: 401 invalid_token.
    ("upper-cased token", [b"Authorization: Bearer " + T.upper()], WRONG),
    ("token minus its last byte", [b"Authorization: Bearer " + T[:-1]], WRONG),
    ("token plus a byte", [b"Authorization: Bearer " + T + b"x"], WRONG),
    ("10 KB token", [b"Authorization: Bearer " + b"a" * 10_240], WRONG),
    ("10 KB token starting with the token", [b"Authorization: Bearer " + T * (10_240 // len(T))], WRONG),
    ("token plus a latin-1 byte", [b"Authorization: Bearer " + T + b"\xe9"], WRONG),
    ("UTF-8 token", [b"Authorization: Bearer t\xc3\xb6k\xc3\xa9n"], WRONG),
    ("latin-1 bytes", [b"Authorization: Bearer \xff\xfe\xfd\x80"], WRONG),
    ("glob", [b"Authorization: Bearer *"], WRONG),
    ("SQL comment", [b"Authorization: Bearer '--"], WRONG),
    ("template", [b"Authorization: Bearer ${jndi:ldap://x/a}"], WRONG),
    ("percent-encoded NUL", [b"Authorization: Bearer %00"], WRONG),
    # Two Authorization headers: 400 invalid_request, whatever they hold.
    ("two good headers", [AUTH, AUTH], DUPLICATE),
    ("good then bad", [AUTH, b"Authorization: Bearer nope"], DUPLICATE),
    ("bad then good", [b"Authorization: Bearer nope", AUTH], DUPLICATE),
    ("empty then good", [b"Authorization:", AUTH], DUPLICATE),
    ("names in different cases", [b"authorization: Bearer " + T, b"AUTHORIZATION: Bearer " + T], DUPLICATE),
    ("three headers", [AUTH, AUTH, AUTH], DUPLICATE),
    # Tornado refuses the request before the handler: a bare 400.
    ("NUL in the value", [AUTH + b"\x00"], UNPARSABLE),
    ("vertical tab separator", [b"Authorization: Bearer\x0b" + T], UNPARSABLE),
    ("DEL in the value", [AUTH + b"\x7f"], UNPARSABLE),
    ("escape sequence", [b"Authorization: Bearer \x1b[31m" + T], UNPARSABLE),
    ("bare CR in the value", [AUTH + b"\rX-Injected: 1"], UNPARSABLE),
    ("obsolete line folding", [b"Authorization: Bearer", b" " + T], UNPARSABLE),
    ("space before the colon", [b"Authorization : Bearer " + T], UNPARSABLE),
    ("latin-1 byte in the name", [b"Authorizati\xf3n: Bearer " + T], UNPARSABLE),
]


@pytest.mark.parametrize(("lines", "kind"), [pytest.param(lines, kind, id=name)
                                              for name, lines, kind in HEADER_FORMS])
def test_authorization_header_forms(wire, lines, kind):
    reply = wire.request("GET", "/api/admin/jobs", lines)
    if kind == OK:
        assert_json_reply(reply, 200)
        assert "jobs" in reply.json()
    elif kind == MALFORMED:
        assert_json_reply(reply, 401, MISSING)
        assert reply.header("WWW-Authenticate") == CHALLENGE
    elif kind == WRONG:
        assert_json_reply(reply, 401, INVALID)
        assert reply.header("WWW-Authenticate") == INVALID_CHALLENGE
    elif kind == DUPLICATE:
        assert_json_reply(reply, 400, DUPLICATE_BODY)
        assert reply.header("WWW-Authenticate") == DUPLICATE_CHALLENGE
    else:
        assert_refused_by_tornado(reply)
    wire.assert_alive()


@pytest.mark.parametrize("query", [
    f"token={TOKEN}", f"access_token={TOKEN}", f"Authorization=Bearer%20{TOKEN}",
    f"authorization=Bearer+{TOKEN}&token={TOKEN}", f"access_token={TOKEN}&access_token={TOKEN}",
])
def test_a_token_in_the_query_string_is_ignored(wire, query):
    for method, path in (("GET", "/api/admin/jobs"), ("POST", "/api/admin/trigger-fetch"),
                         ("GET", f"/api/admin/job-status/{UNKNOWN_ID}")):
        reply = wire.request(method, f"{path}?{query}")
        assert_json_reply(reply, 401, MISSING)
        assert reply.header("WWW-Authenticate") == CHALLENGE
    wire.assert_alive()


# -- the method matrix ---------------------------------------------------------------------------

ROUTES = {  # path: the methods it allows, in its Allow header's order
    "/api/admin/trigger-fetch": ("POST",),
    f"/api/admin/job-status/{UNKNOWN_ID}": ("GET",),
    "/api/admin/jobs": ("GET",),
    "/api/cron/fetch-market-data": ("GET", "POST"),
    "/healthz": ("GET", "HEAD"),
    "/readyz": ("GET", "HEAD"),
    "/api/openapi.json": ("GET", "HEAD"),
}
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "FOO", "get")
CREDENTIALS = {"/api/cron/fetch-market-data": b"Authorization: Bearer " + CRON.encode()}
ANSWERS_WITH_CREDENTIALS = {  # the statuses an allowed method may get with the right credentials
    "/api/admin/trigger-fetch": {202, 409},  # a job starts (and fails: no ESI), or one is running
    f"/api/admin/job-status/{UNKNOWN_ID}": {404},
    "/api/admin/jobs": {200},
    "/api/cron/fetch-market-data": {202, 409},
    "/healthz": {200},
    "/readyz": {200},
    "/api/openapi.json": {200},
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("path", list(ROUTES))
def test_method_matrix(wire, path, method):
    """405 with Allow for every method a route does not allow (unknown ones, lower-case ones,
    TRACE and CONNECT included), whatever the credentials; the allowed ones reach the handler."""
    allowed = ROUTES[path]
    admin = path.startswith("/api/") and path != "/api/openapi.json"  # the document is public
    good = CREDENTIALS.get(path, AUTH)
    for lines in ([], [good], [b"Authorization: Bearer wrong-token"]):
        reply = wire.request(method, path, lines)
        assert_not_5xx(reply)
        if method not in allowed:
            assert reply.status == 405, reply
            assert reply.header("Allow") == ", ".join(allowed)
            if method != "HEAD":
                body = reply.json()
                assert body["error"] == "Method Not Allowed"
                assert body["message"] == ("Use POST to trigger job" if path.endswith("trigger-fetch")
                                           else f"Use {' or '.join(allowed)}")
        elif admin and lines != [good]:
            assert reply.status == 401, reply
            assert reply.json()["error"] == "Unauthorized"
        else:
            assert reply.status in ANSWERS_WITH_CREDENTIALS[path], reply
            if method == "HEAD":
                assert reply.body == b""
            else:
                reply.json()
    wire.assert_alive()


UNROUTED = [
    "/nowhere", "/api", "/api/admin", "/api/admin/", "/api/admin/jobs/", "/api/admin/jobs/x",
    "//api/admin/jobs", "/API/admin/jobs", "/api/admin/%6Aobs", "/api/admin/jobs;x", "/api/admin/jobs%00",
    "/api/admin/../admin/jobs", "/healthz/../api/admin/jobs", "/api/admin/./jobs",
    "/api/cron/../admin/trigger-fetch", "http://127.0.0.1/api/admin/jobs", "http://evil.example/healthz",
    "*",
]
STANDARD_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


@pytest.mark.parametrize("target", UNROUTED)
def test_unrouted_targets_are_404_json_for_every_standard_method(wire, target):
    """`..` and `.` segments are not resolved, absolute-form targets and `*` are not routed: no
    path reaches a handler it does not name, with or without credentials."""
    for method in STANDARD_METHODS:
        for lines in ([], [AUTH]):
            reply = wire.request(method, target, lines)
            assert reply.status == 404, (method, reply)
            if method == "HEAD":
                assert reply.body == b""
            else:
                assert reply.json() == NO_ROUTE
    wire.assert_alive()


@pytest.mark.parametrize("method", ["TRACE", "CONNECT", "FOO"])
def test_unrouted_targets_are_404_for_other_methods_too(wire, method):
    """Not a 405 whose Allow lists methods that all answer 404 (Tornado checks its
    SUPPORTED_METHODS before any handler code runs)."""
    reply = wire.request(method, "/nowhere")
    assert_not_5xx(reply)
    assert_json_reply(reply, 404, NO_ROUTE)


def test_the_cron_route_is_404_for_every_standard_method_when_cron_secret_is_unset(servers, tmp_path):
    server = servers(server_env(tmp_path), tmp_path)
    server.wait_ready()
    wire = Wire(server)
    for method in STANDARD_METHODS:
        for lines in ([], [AUTH], [b"Authorization: Bearer " + CRON.encode()]):
            reply = wire.request(method, "/api/cron/fetch-market-data", lines)
            assert reply.status == 404, (method, reply)
            if method != "HEAD":
                assert reply.json() == NO_ROUTE
    wire.assert_alive()
    assert server.stop() == 0


def test_the_cron_route_is_404_for_other_methods_when_cron_secret_is_unset(servers, tmp_path):
    """Not a 405 'Allow: GET, POST', which would tell the route exists."""
    server = servers(server_env(tmp_path), tmp_path)
    server.wait_ready()
    wire = Wire(server)
    statuses = {method: wire.request(method, "/api/cron/fetch-market-data").status
                for method in ("TRACE", "CONNECT", "FOO")}
    wire.assert_alive()
    assert statuses == {"TRACE": 404, "CONNECT": 404, "FOO": 404}


# -- hostile job ids -----------------------------------------------------------------------------

HOSTILE_IDS: list[str | bytes] = [
    # traversal, plain and encoded
    "..", "../jobs", "../../admin/jobs", "../trigger-fetch", "..%2Fjobs", "%2e%2e%2fjobs",
    "%2E%2E%2F%2E%2E%2Fadmin%2Fjobs", "..%5C..%5Cjobs", "..\\..\\jobs", "%252e%252e%252fjobs", "..;/jobs",
    "%2e%2e/%2e%2e/trigger-fetch", "/" + UNKNOWN_ID, UNKNOWN_ID + "/" + UNKNOWN_ID, UNKNOWN_ID + "/..",
    # NUL, CR, LF, encoded
    "%00", "a%00b", "A" * 21 + "%00", UNKNOWN_ID + "%00", "%0d%0aX-Injected:%201", "%0A",
    UNKNOWN_ID + "%0A", UNKNOWN_ID + "%0D%0A", "%09" + UNKNOWN_ID[1:], "%20" * 22,
    # globs, Redis keys and Lua, SQL, templates
    "*", "?", "?id=*", "job:*", "fetch-market-data", "[a-z]*", "{a,b}", "a?c", "jobs:" + UNKNOWN_ID,
    "')redis.call('FLUSHALL')--", "%27%29%3Bredis.call%28%27KEYS%27%2C%27*%27%29--", "]]..KEYS[1]..[[",
    "'%20OR%20'1'='1", "1;DROP%20TABLE%20jobs;--", "%27%3B--", "${jndi:ldap://x/a}", "{{7*7}}", "%s%s%n",
    # lengths and alphabets
    "", "A" * 21, "A" * 23, "A" * 10_240, "%41" * 3_000, "A" * 21 + "=", "A" * 21 + ".", "A" * 21 + "%20",
    "A" * 21 + "+", "A" * 21 + "~", "A" * 21 + "%2A", "%C3%A9" * 22, "%EF%BC%A1" * 22, "%D9%A1" * 22,
    "A" * 21 + "%C4%B0", "A" * 21 + "%E2%80%8B",
    # malformed percent-encoding that still decodes to UTF-8
    "%", "%%", "%zz", "%4", "A" * 21 + "%", "%G0" * 8,
    # raw bytes Tornado lets through in the request target (obs-text)
    b"\xc0\xaf", b"\xe9" * 22, b"A" * 21 + b"\xff", b"\xef\xbc\xa1" * 22,
    # a well-formed id that exists nowhere, percent-encoded: reaches the store, still 404
    "%41" * 22, UNKNOWN_ID,
]


def _id_param(job_id: str | bytes) -> pytest.ParameterSet:
    shown = job_id if isinstance(job_id, str) else job_id.decode("latin-1")
    return pytest.param(job_id, id=ascii(shown[:40]) + (f"...{len(shown)}" if len(shown) > 40 else ""))


def _status_target(job_id: str | bytes) -> bytes:
    return b"/api/admin/job-status/" + as_bytes(job_id)


@pytest.mark.parametrize("job_id", [_id_param(i) for i in HOSTILE_IDS])
def test_hostile_job_ids_are_404_after_the_method_and_the_credentials(wire, job_id):
    target = _status_target(job_id)
    assert_json_reply(wire.request("GET", target, [AUTH]), 404, JOB_NOT_FOUND)
    assert_json_reply(wire.request("GET", target, []), 401, MISSING)
    assert_json_reply(wire.request("GET", target, [b"Authorization: Bearer wrong"]), 401, INVALID)
    reply = wire.request("POST", target, [AUTH])
    assert_json_reply(reply, 405)
    assert reply.header("Allow") == "GET"
    wire.assert_alive()


INVALID_UTF8_IDS = ["%C0%AF", "%ED%A0%80", "%FF", "%80", "A" * 21 + "%FF", "%C0%AE%C0%AE%C0%AF"]


@pytest.mark.parametrize("job_id", INVALID_UTF8_IDS)
def test_job_ids_that_are_not_utf8_are_404_after_the_method_and_the_credentials(wire, job_id):
    """Not Tornado's 400 'Invalid unicode in url', which came before the method and the
    credentials were checked."""
    target = _status_target(job_id)
    replies = {
        "authorized": wire.request("GET", target, [AUTH]),
        "anonymous": wire.request("GET", target, []),
        "wrong method": wire.request("POST", target, [AUTH]),
    }
    for reply in replies.values():
        assert_not_5xx(reply)
    wire.assert_alive()
    assert {name: reply.status for name, reply in replies.items()} == {
        "authorized": 404, "anonymous": 401, "wrong method": 405,
    }
    assert replies["authorized"].json() == JOB_NOT_FOUND


RAW_TARGETS = [b"a\x00b", b"a\r\nX-Injected: 1", b"a b", b"a\tb", b"a\x7fb", b"a\x1bb", b"a\x0bb", b"\r\n"]


@pytest.mark.parametrize("raw", [_id_param(r) for r in RAW_TARGETS])
def test_control_bytes_in_the_request_target_are_refused_by_tornado(wire, raw):
    assert_refused_by_tornado(wire.send(http_request("GET", _status_target(raw), [AUTH])))
    wire.assert_alive()


@pytest.mark.parametrize("request_bytes", [
    pytest.param(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n", id="no Host"),
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n", id="two Hosts"),
    pytest.param(b"GET /healthz HTTP/2.0\r\nHost: a\r\nConnection: close\r\n\r\n", id="HTTP/2.0"),
    pytest.param(b"GET /healthz HTTP/9.9\r\nHost: a\r\nConnection: close\r\n\r\n", id="HTTP/9.9"),
    pytest.param(b"GET /healthz\r\nHost: a\r\n\r\n", id="no version"),
    pytest.param(b"GET  /healthz HTTP/1.1\r\nHost: a\r\n\r\n", id="two spaces"),
    pytest.param(b"\r\n\r\n", id="empty request line"),
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", id="header without colon"),
    pytest.param(http_request("POST", "/healthz", [b"Content-Length: -1"]), id="negative Content-Length"),
    pytest.param(http_request("POST", "/healthz", [b"Content-Length: 1", b"Content-Length: 2"], b"xx"),
                 id="two Content-Lengths"),
    pytest.param(http_request("POST", "/healthz", [b"Transfer-Encoding: gzip, chunked"], b"0\r\n\r\n"),
                 id="unsupported Transfer-Encoding"),
])
def test_malformed_requests_are_400_never_5xx(wire, request_bytes):
    assert_refused_by_tornado(wire.send(request_bytes))
    wire.assert_alive()


# -- resource limits -----------------------------------------------------------------------------


def test_headers_are_capped_near_16_kib(wire):
    padded = [b"X-Pad: " + b"p" * (15 * 1024), AUTH]
    assert_json_reply(wire.request("GET", "/api/admin/jobs", padded), 200)
    reply = wire.request("GET", "/api/admin/jobs", [b"X-Pad: " + b"p" * (20 * 1024), AUTH])
    # Tornado closes the connection without an answer (no 431): never a 200, never a 5xx.
    assert reply.status is None or reply.status in (400, 431), reply
    long_target = "/api/admin/job-status/" + "A" * (20 * 1024)
    reply = wire.request("GET", long_target, [AUTH])
    assert reply.status is None or reply.status in (400, 414, 431), reply
    wire.assert_alive()


def _accepts(sock: socket.socket, size: int) -> bool:
    """Whether `size` bytes can be sent on `sock` without the peer resetting it."""
    try:
        for _ in range(size // 16_384):
            sock.sendall(b"x" * 16_384)
    except OSError:
        return False
    return True


def test_bodies_are_capped_near_64_kib(wire):
    # 60 KiB is read to the end, and the handler answers.
    reply = wire.request("POST", "/healthz", [b"Content-Length: 61440"], b"x" * 61_440)
    assert_json_reply(reply, 405)
    # 1 MiB announced: refused from the Content-Length alone, before a byte of the body; the
    # trigger never runs. Tornado sends a bare 400 (not 413, not JSON) and closes.
    head = http_request("POST", "/api/admin/trigger-fetch", [AUTH, b"Content-Length: 1048576"])
    with connect(wire.port) as sock:
        sock.sendall(head)
        reply = parse_reply(read_to_end(sock))
        assert reply.status in (400, 413), reply
        assert not _accepts(sock, 1024 * 1024), "the server still reads the refused body"
    # Chunked, so no Content-Length to judge: refused once past the cap, never a 202.
    chunks = (b"8000\r\n" + b"x" * 0x8000 + b"\r\n") * 3
    head = http_request("POST", "/api/admin/trigger-fetch", [AUTH, b"Transfer-Encoding: chunked"])
    reply = wire.send(head + chunks)
    assert reply.status in (400, 413), reply
    wire.assert_alive()


def test_the_http_server_is_built_with_the_limits_and_timeouts(tmp_path):
    """The 60 s header/idle and 10 s body timeouts are too slow to wait for here: the server
    process builds its HTTPServer with them (and the size caps the tests above observe)."""
    from tornado_admin.app import Server
    from tornado_admin.settings import settings_from

    settings = settings_from({"ADMIN_TOKEN": TOKEN, "PORT": "0", "HOST": "127.0.0.1",
                              "DATABASE_URL": f"sqlite:///{tmp_path}/m.db", "SCHEDULER_ENABLED": "false"})

    async def params():
        server = Server(settings)
        await server.start()
        try:
            assert server.http is not None
            return server.http.conn_params
        finally:
            await server.stop()

    conn = asyncio.run(params())
    assert conn.max_header_size == 16 * 1024
    assert conn.max_body_size == 64 * 1024
    assert conn.header_timeout == 60
    assert conn.body_timeout == 10


def test_200_slow_clients_do_not_delay_a_legitimate_request(wire):
    """200 connections each trickle one header byte a second; meanwhile a legitimate request
    (health, then authenticated) answers within a second; at the end the slow ones are served."""
    slow: list[socket.socket] = []
    try:
        for _ in range(200):
            sock = connect(wire.port, timeout=10)
            slow.append(sock)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        for _ in range(3):
            round_started = time.monotonic()
            for sock in slow:
                sock.sendall(b"z")
            for method, path, lines in (("GET", "/healthz", []), ("GET", "/api/admin/jobs", [AUTH])):
                started = time.monotonic()
                reply = wire.request(method, path, lines)
                took = time.monotonic() - started
                assert_json_reply(reply, 200)
                assert took < 1.0, f"{path} took {took:.2f} s"
            time.sleep(max(0.0, 1.0 - (time.monotonic() - round_started)))
        for sock in slow:  # held, not dropped: each one still gets its answer
            sock.sendall(b"\r\nConnection: close\r\n\r\n")
        statuses = [parse_reply(read_to_end(sock)).status for sock in slow]
        assert statuses == [200] * 200
    finally:
        for sock in slow:
            sock.close()
    wire.assert_alive()


# -- the store only ever sees ids in the job namespace (in-process, with a spy) ------------------


@pytest.fixture
def database_url(sqlite_url):
    return sqlite_url


@pytest.fixture
def context(order_store, clock, io_loop):
    context = build_context(order_store, GatedWork(), clock)
    yield context
    io_loop.run_sync(context.runner.shutdown)


@pytest.fixture
def app(context):
    return make_app(context)


async def exchange_async(port: int, data: bytes) -> Reply:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)  # a valid token: no throttle
    try:
        writer.write(data)
        await writer.drain()
        return parse_reply(await asyncio.wait_for(reader.read(), 5))
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.gen_test(timeout=30)
async def test_the_job_store_is_never_asked_for_a_key_outside_the_job_ids(http_server, http_port, context,
                                                                          monkeypatch):
    store = context.job_store
    asked: list[str] = []
    real_get = store.get

    async def spy_get(job_id, *args, **kwargs):
        asked.append(job_id)
        return await real_get(job_id, *args, **kwargs)

    monkeypatch.setattr(store, "get", spy_get)
    for job_id in HOSTILE_IDS:
        reply = await exchange_async(http_port, http_request("GET", _status_target(job_id), [AUTH]))
        assert (reply.status, reply.json()) == (404, JOB_NOT_FOUND), job_id
    assert asked, "the spy saw nothing: the test would prove nothing"
    assert all(is_job_id(job_id) for job_id in asked), [a for a in asked if not is_job_id(a)]
    assert set(asked) == {UNKNOWN_ID}


# -- log injection --------------------------------------------------------------------------------

INJECTIONS = [
    # CR/LF and Unicode line breaks in the logged fields (query keys, path), and a forged record.
    "/healthz?x%0D%0A%7B%22level%22%3A%22CRITICAL%22%2C%22forged%22%3A1%7D=1",
    "/healthz?a%0Ab%0Dc%E2%80%A8d%C2%85e%0B%0C%1C=1",
    "/api/admin/job-status/a%0D%0A%7B%22forged%22%3A1%7D",
    "/nowhere%0A%7B%22forged%22%3A1%7D",
]


def test_a_log_line_injected_with_line_breaks_stays_one_json_object(module_server, wire):
    before = module_server.log_path.read_bytes().count(b"\n")
    for target in INJECTIONS:
        assert_not_5xx(wire.send(http_request("GET", target, [AUTH])))
    # CR/LF in header values: obs-fold and a bare CR (Tornado refuses or joins them; never logs raw).
    for header in (b"X-Note: a\r\n {\"forged\": 1}", b"User-Agent: a\rb", b"Authorization: Bearer a\r\n b"):
        assert_not_5xx(wire.send(http_request("GET", "/healthz", [header])))
    wire.assert_alive()
    module_server.output()  # flushes
    records = module_server.log_path.read_bytes().split(b"\n")[before:]
    parsed = [json.loads(record) for record in records if record.strip()]  # every line one object
    assert all(isinstance(record, dict) for record in parsed)
    assert not [record for record in parsed if "forged" in record]
    logged_keys = [key for record in parsed for key in record.get("queryKeys", [])]
    assert any("\r\n{" in key for key in logged_keys)  # the hostile key was logged, escaped
    raw = b"\n".join(records)
    assert "\u2028".encode() not in raw
    assert "\x85".encode() not in raw
