"""Properties of the Authorization parser: any header text in, one clean verdict out.

`check_bearer` is judged against `expected_verdict`, an independent reading of DESIGN.md
section 4: OK only for exactly one header that is the scheme "bearer" (any case), spaces or
tabs, a configured token, optional trailing spaces or tabs. Tornado hands the handler header
values decoded as latin-1, so "text made from latin-1 bytes" is what the server can meet;
arbitrary unicode (lone surrogates included) is what the function promises to survive.
The last tests send arbitrary header bytes over HTTP to a server process.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from tests.api_helpers import TOKEN
from tests.server_helpers import server_env
from tests.wire import Wire, http_request
from tornado_admin.auth import Verdict, check_bearer

WHITESPACE = " \t"  # HTTP's whitespace (RFC 9110 OWS/RWS): nothing else separates the parts


def expected_verdict(headers: list[str], tokens: list[str]) -> Verdict:
    if not tokens:
        return Verdict.MISCONFIGURED
    if len(headers) > 1:
        return Verdict.DUPLICATE
    if not headers:
        return Verdict.MISSING
    value = headers[0].strip(WHITESPACE)
    cut = min((i for i, c in enumerate(value) if c in WHITESPACE), default=-1)
    if cut < 0:
        return Verdict.MALFORMED  # no separator: no scheme-and-credential pair
    scheme, credential = value[:cut], value[cut:].lstrip(WHITESPACE)
    if not (scheme.isascii() and scheme.lower() == "bearer"):
        return Verdict.MALFORMED
    if not credential or any(c.isspace() for c in credential):
        return Verdict.MALFORMED  # one credential, no whitespace of any kind inside it
    return Verdict.OK if credential in tokens else Verdict.INVALID


PURE = settings(derandomize=True, database=None, deadline=None, max_examples=600,
                suppress_health_check=[HealthCheck.too_slow])

LATIN1 = st.characters(min_codepoint=0, max_codepoint=0xFF)
UNICODE_NO_SURROGATES = st.characters(exclude_categories=["Cs"])
SURROGATES = st.characters(categories=["Cs"])
ESCAPED_BYTES = st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF)  # surrogateescape's range
LATIN1_SCHEMES = ["Bearer", "bearer", "BEARER", "bEaReR", "Basic", "Bearer:", "Bearerx", "", "B\xe9arer",
                  "Bearer\xa0", "Bearer\x85"]
OTHER_SCHEMES = ["\u0392earer", "\uff22earer", "Bearer\u2028", "\u0131bearer"]


TOKEN68 = st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=")
BEARER = st.sampled_from(["Bearer", "bearer", "BEARER", "bEaReR"])


@st.composite
def headers_and_tokens(draw, alphabet: st.SearchStrategy[str], token_alphabet: st.SearchStrategy[str],
                       schemes: list[str] = LATIN1_SCHEMES + OTHER_SCHEMES):
    """Tokens (rarely none), and mostly one header value (sometimes none, two or three): free
    text, or built like "Bearer <token>" from a configured token, a near miss or garbage,
    around spaces and tabs (sometimes other whitespace)."""

    def now_and_then() -> bool:  # one time in five
        return draw(st.integers(0, 4)) == 0

    def token() -> str:
        return draw(st.text(token_alphabet if now_and_then() else TOKEN68, min_size=1, max_size=40))

    tokens = [] if draw(st.integers(0, 9)) == 0 else [token() for _ in range(draw(st.integers(1, 3)))]
    odd = ["\xa0", "\x0b", "\x1f", "\x85", "\n"] + ([] if schemes is LATIN1_SCHEMES else ["\u3000", "\u2028"])
    odd_space = st.text(st.sampled_from([" ", *odd]), max_size=3)
    http_space = st.text(st.sampled_from(" \t"), max_size=3)

    def value() -> str:
        if now_and_then():
            return draw(st.text(alphabet, max_size=60))
        lead, sep, trail = (draw(odd_space if now_and_then() else http_space) for _ in range(3))
        scheme = draw(st.sampled_from(schemes) | st.text(alphabet, max_size=8) if now_and_then() else BEARER)
        credential = draw(st.text(alphabet, min_size=1, max_size=40))
        if tokens and not now_and_then():
            credential = draw(st.sampled_from(tokens))
            if now_and_then():
                credential = draw(st.sampled_from([credential[:-1], credential.upper(), credential + "x"]))
        return lead + scheme + (sep or " ") + credential + trail

    count = draw(st.sampled_from([1] * 10 + [0, 2, 3]))
    return [value() for _ in range(count)], tokens


def judge(headers: list[str], tokens: list[str]) -> Verdict:
    verdict = check_bearer(list(headers), tuple(tokens))
    assert isinstance(verdict, Verdict)
    event(verdict.name)  # --hypothesis-show-statistics: every verdict is reached
    return verdict


@PURE
@given(headers_and_tokens(LATIN1, st.one_of(LATIN1, UNICODE_NO_SURROGATES), LATIN1_SCHEMES))
@example(([f"Bearer {TOKEN}"], [TOKEN]))
@example(([f"bearer \t {TOKEN} \t"], [TOKEN]))
@example(([f"\tBEARER {TOKEN}"], ["other", TOKEN]))
@example(([f"Bearer {TOKEN}", f"Bearer {TOKEN}"], [TOKEN]))
@example(([f"Bearer\xa0{TOKEN}"], [TOKEN]))
@example(([f"Bearer {TOKEN}\xa0"], [TOKEN]))
@example(([f"Bearer {TOKEN}\x85"], [TOKEN]))
@example(([f"Bearer {TOKEN}\x00"], [TOKEN]))
@example(([f"Bearer {TOKEN}"], []))
@example(([f"Bearer {TOKEN}"], [""]))
@example((["Bearer "], [""]))
@example(([f"Bearer \xe9{TOKEN}"], [f"\xe9{TOKEN}"]))
@example(([], [TOKEN]))
def test_check_bearer_on_header_text_as_tornado_delivers_it(case):
    """Latin-1 text (what Tornado decodes header bytes to), any configured tokens: the verdict
    is always the expected one, OK included, and nothing raises."""
    headers, tokens = case
    assert judge(headers, tokens) is expected_verdict(headers, tokens)


@PURE
@given(headers_and_tokens(st.one_of(UNICODE_NO_SURROGATES, LATIN1), UNICODE_NO_SURROGATES))
@example(([f"Bearer {TOKEN}\u2028"], [TOKEN]))
@example(([f"Bearer\u3000{TOKEN}"], [TOKEN]))
@example(([f"\u0392earer {TOKEN}"], [TOKEN]))
@example((["Bearer \u212a"], ["\u212a"]))
def test_check_bearer_on_any_text_without_surrogates(case):
    headers, tokens = case
    assert judge(headers, tokens) is expected_verdict(headers, tokens)


@PURE
@given(headers_and_tokens(st.one_of(UNICODE_NO_SURROGATES, SURROGATES, ESCAPED_BYTES, LATIN1),
                          st.one_of(UNICODE_NO_SURROGATES, SURROGATES, ESCAPED_BYTES)))
@example((["Bearer \ud800"], [TOKEN]))
@example(([f"Bearer {TOKEN}"], ["\udcff" + TOKEN]))
@example((["Bearer \udcc3\udcbf"], ["\xff"]))
@example((["Bearer \udcffx"], ["\udcffx"]))
def test_check_bearer_on_any_text_surrogates_included(case):
    """Lone surrogates in the credential or in a configured token (os.environ hands a byte that
    is not UTF-8 over as one): nothing raises, and no two different strings compare equal (an
    encoding with surrogateescape on one side and plain UTF-8 on the other made
    'Bearer \\udcc3\\udcbf' OK for the token '\\xff')."""
    headers, tokens = case
    assert judge(headers, tokens) is expected_verdict(headers, tokens)


# -- over HTTP -----------------------------------------------------------------------------------

ANY_BYTE = st.integers(0, 255).filter(lambda b: b not in b"\r\n")  # CR/LF would end the header line
TORNADO_FORBIDDEN = set(range(0x00, 0x09)) | set(range(0x0A, 0x20)) | {0x7F}


@st.composite
def header_values(draw) -> list[bytes]:
    """Mostly one Authorization value (sometimes none or two) as raw bytes: free bytes, or
    "Bearer" in some case, spaces and tabs, the token; now and then a part is off (another
    scheme, no separator, a near miss, stray bytes)."""

    def now_and_then() -> bool:  # one time in five
        return draw(st.integers(0, 4)) == 0

    free = st.lists(ANY_BYTE, max_size=60).map(bytes)
    http_space = st.text(st.sampled_from(" \t"), max_size=3).map(str.encode)
    token = TOKEN.encode()

    def value() -> bytes:
        if now_and_then():
            return draw(free)
        lead = draw(free if now_and_then() else http_space)
        scheme = draw(st.sampled_from([b"Basic", b"Token", b"B\xe9arer", b"Bearer:"] if now_and_then()
                                      else [b"Bearer", b"bearer", b"BEARER", b"bEaReR"]))
        sep = draw(st.sampled_from([b"", b"\xa0", b"\x0b"]) if now_and_then()
                   else st.text(st.sampled_from(" \t"), min_size=1, max_size=3).map(str.encode))
        credential = draw(st.sampled_from([token[:-1], token.upper(), token + b"x"]) | free
                          if now_and_then() else st.just(token))
        trail = draw(free if now_and_then() else http_space)
        return lead + scheme + sep + credential + trail

    return [value() for _ in range(draw(st.sampled_from([1] * 8 + [0, 2])))]


@pytest.fixture
def wire(servers, tmp_path) -> Wire:
    server = servers(server_env(tmp_path), tmp_path)
    server.wait_ready()
    return Wire(server)


def test_any_authorization_bytes_over_http_get_a_clean_answer(wire):
    """Each value in its own request, from its own address (no throttle): 200 for exactly one
    well-formed header with the token, 401 for other single values or none, 400 for two (JSON,
    invalid_request), Tornado's bare 400 for control bytes; never a 5xx."""

    @settings(derandomize=True, database=None, deadline=None, max_examples=60)
    @given(header_values())
    @example([b"Bearer " + TOKEN.encode()])
    @example([b"bearer\t\t" + TOKEN.encode() + b"  "])
    @example([b"Bearer " + TOKEN.encode() + b"\x00"])
    @example([b"Bearer \xff" + TOKEN.encode()])
    @example([b"Bearer " + TOKEN.encode(), b"Bearer " + TOKEN.encode()])
    @example([])
    def one_request(values: list[bytes]) -> None:
        reply = wire.request("GET", "/api/admin/jobs", [b"Authorization: " + v for v in values])
        event(f"HTTP {reply.status}")
        assert reply.status is not None, "closed without an answer"
        assert reply.status < 500, reply
        if any(b in TORNADO_FORBIDDEN for v in values for b in v):
            assert reply.status == 400, reply  # Tornado's, before the handler
            return
        verdict = expected_verdict([v.decode("latin-1").strip(" \t") for v in values], [TOKEN])
        status = {Verdict.OK: 200, Verdict.DUPLICATE: 400}.get(verdict, 401)
        assert reply.status == status, (verdict, reply)
        body = reply.json()
        if verdict is Verdict.DUPLICATE:
            assert reply.header("WWW-Authenticate") == 'Bearer realm="admin", error="invalid_request"'
        elif verdict is not Verdict.OK:
            assert body["error"] == "Unauthorized"
            assert reply.header("WWW-Authenticate").startswith('Bearer realm="admin"')

    one_request()
    wire.assert_alive()


def test_an_admin_token_that_is_not_utf8_never_makes_a_500(servers, tmp_path):
    """os.environ hands a byte that is not UTF-8 over as a surrogate: the server refuses such a
    token at startup, naming ADMIN_TOKEN, or judges it; never a 500 per request."""
    token = "\udcff" + "a" * 40  # the byte 0xff, then 40 "a", as os.environ hands it over
    server = servers(server_env(tmp_path, ADMIN_TOKEN=token), tmp_path)
    try:
        server.wait_ready()
    except AssertionError:  # refused at startup: fine if it says why
        assert server.process.wait(10) != 0
        assert "ADMIN_TOKEN" in server.output()
        return
    wire = Wire(server)
    for value in (b"Bearer wrong", b"Bearer \xff" + b"a" * 40):
        reply = wire.send(http_request("GET", "/api/admin/jobs", [b"Authorization: " + value]))
        assert reply.status is not None, "closed without an answer"
        assert reply.status in (200, 401), reply
