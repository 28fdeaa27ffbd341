"""The ESI client: one aiohttp session, bounded concurrency, limits obeyed, transient faults retried."""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import logging
import re
from collections import Counter
from dataclasses import dataclass
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

import aiohttp
import orjson

from tornado_admin.market.limits import LimitGate, RetryPolicy, count_value

log = logging.getLogger(__name__)

# A full page is about 250 KB; anything past this is not an orders page (or is a decompression bomb).
MAX_BODY_BYTES = 16 * 1024 * 1024
# The Forge, the biggest region, has a few hundred pages; a count past this is a broken header.
MAX_PAGES = 2000
MAX_EXPIRES_SECONDS = 3600.0  # markets cache for 300 s; a far-future Expires would freeze a region
DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=60, connect=10, sock_connect=10, sock_read=30)
_RETRYABLE_STATUS = frozenset({500, 502, 503, 504})
_LEGACY_PATH = re.compile(r"/(latest|legacy|dev|v\d+)$")
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]{1,512}")
_LIMIT_STATUS = frozenset({420, 429})


class EsiError(Exception):
    """ESI could not give us what we asked for; the message is fit for a job's error field."""


class EsiStatusError(EsiError):
    """ESI answered with an error status that retrying will not fix (or retries ran out)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class EsiUnavailableError(EsiError):
    """Timeouts or connection errors past the retry budget."""


@dataclass(frozen=True, slots=True)
class EsiResponse:
    status: int  # 200 or 304
    body: bytes
    pages: int | None  # X-Pages; None when absent (FACTS.md: missing on some responses)
    etag: str | None
    last_modified: str | None
    expires_in_seconds: float | None  # Expires minus ESI's own Date, so our clock's skew is moot


class EsiClient:
    """Talks to ESI for the market sweep; use as `async with EsiClient.open(...) as esi`."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        concurrency: int,
        retry: RetryPolicy | None = None,
        gate: LimitGate | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        # The legacy ".../latest" base wants trailing slashes and a datasource, as it always did.
        self._legacy = _LEGACY_PATH.search(urlsplit(self._base).path) is not None
        self._slots = asyncio.Semaphore(concurrency)
        self.retry = retry or RetryPolicy()
        self.gate = gate or LimitGate()
        self._max_body_bytes = max_body_bytes
        self.status_counts: Counter[int] = Counter()

    @classmethod
    def open(
        cls,
        base_url: str,
        *,
        user_agent: str,
        compatibility_date: str,
        concurrency: int,
        timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT,
        **kwargs,
    ) -> EsiClient:
        if timeout.total is None:
            # Per-read timeouts alone let a server that trickles a byte at a time hold a request
            # (and so a region, and the job) forever: every request needs a deadline of its own.
            raise ValueError("ESI requests need a total timeout")
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency, ttl_dns_cache=300),
            timeout=timeout,
            headers={
                "User-Agent": user_agent,
                "X-Compatibility-Date": compatibility_date,
                "Accept": "application/json",
            },
            raise_for_status=False,
        )
        return cls(session, base_url, concurrency=concurrency, **kwargs)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()

    async def region_ids(self) -> list[int]:
        response = await self._get("/universe/regions", {})
        try:
            ids = orjson.loads(response.body)
        except orjson.JSONDecodeError:
            ids = None
        if type(ids) is not list or not all(type(i) is int and i > 0 for i in ids):
            raise EsiError("/universe/regions did not answer a list of region ids")
        return ids

    async def orders_page(self, region_id: int, page: int, etag: str | None = None) -> EsiResponse:
        """One page of a region's orders: 200 with its body, or 304 when `etag` still matches."""
        return await self._get(
            f"/markets/{region_id}/orders", {"order_type": "all", "page": str(page)}, etag
        )

    async def _get(self, path: str, params: dict[str, str], etag: str | None = None) -> EsiResponse:
        url = self._base + path + ("/" if self._legacy else "")
        if self._legacy:
            params = {"datasource": "tranquility", **params}
        headers = {"If-None-Match": etag} if etag else {}
        failures = limit_waits = 0
        while True:
            try:
                return await self._try_get(url, params, headers)
            except _LimitedError as exc:
                limit_waits += 1
                if limit_waits > self.retry.limit_waits:
                    message = f"{path}: still limited after {limit_waits - 1} pauses"
                    raise EsiStatusError(exc.status, message) from None
            except _TransientError as exc:
                failures += 1
                if failures >= self.retry.attempts:
                    raise exc.final(path, failures) from None
                await asyncio.sleep(self.retry.delay(failures))

    async def _try_get(self, url: str, params: dict[str, str], headers: dict[str, str]) -> EsiResponse:
        await self.gate.wait()
        async with self._slots:
            await self.gate.wait()  # a pause may have begun while we queued for a slot
            try:
                async with self._session.get(url, params=params, headers=headers) as resp:
                    self.status_counts[resp.status] += 1
                    self.gate.observe(resp.status, resp.headers)
                    if resp.status == 200:
                        _check_json(resp.headers.get("Content-Type"))
                    if resp.status in (200, 304):
                        body = await self._read_body(resp) if resp.status == 200 else b""
                        return _response(resp, body)
                    detail = _error_detail(await resp.content.read(2048))
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise _TransientError(None, _describe(exc)) from None
        if resp.status in _LIMIT_STATUS:
            raise _LimitedError(resp.status)
        if resp.status in _RETRYABLE_STATUS:
            raise _TransientError(resp.status, detail)
        raise EsiStatusError(resp.status, f"HTTP {resp.status}: {detail}")

    async def _read_body(self, resp: aiohttp.ClientResponse) -> bytes:
        if resp.content_length is not None and resp.content_length > self._max_body_bytes:
            raise EsiStatusError(resp.status, f"body of {resp.content_length} bytes is too large")
        chunks, size = [], 0
        async for chunk in resp.content.iter_any():
            size += len(chunk)
            if size > self._max_body_bytes:
                raise EsiStatusError(resp.status, f"body larger than {self._max_body_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


class _LimitedError(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


class _TransientError(Exception):
    def __init__(self, status: int | None, detail: str) -> None:
        self.status, self.detail = status, detail

    def final(self, path: str, tries: int) -> EsiError:
        if self.status is None:
            return EsiUnavailableError(f"{path}: {self.detail} (after {tries} tries)")
        message = f"{path}: HTTP {self.status}: {self.detail} (after {tries} tries)"
        return EsiStatusError(self.status, message)


def _check_json(content_type: str | None) -> None:
    """A 200 whose body is declared as something else than JSON (a proxy's or captive portal's HTML
    page, a wrong ESI_API_BASE_URL) fails at once with a message saying so, body unread."""
    media = (content_type or "").partition(";")[0].strip().lower()
    if media and not media.endswith(("/json", "+json")):
        raise EsiStatusError(200, f"HTTP 200 with Content-Type {_printable(media)[:60]!r}, not JSON")


def _response(resp: aiohttp.ClientResponse, body: bytes) -> EsiResponse:
    headers = resp.headers
    raw_pages = headers.get("X-Pages")
    pages = count_value(raw_pages)
    if pages == 0:
        pages = None  # no page count for a page we hold: read as absent, i.e. this page alone
    elif raw_pages is not None and not (pages is not None and pages <= MAX_PAGES):
        raise EsiStatusError(resp.status,
                             f"X-Pages {raw_pages[:20]!r} is not a page count from 1 to {MAX_PAGES}")
    etag = headers.get("ETag")
    return EsiResponse(
        status=resp.status,
        body=body,
        pages=pages,
        # Stored and sent back verbatim: anything but plain ASCII is not an ETag we can use.
        etag=etag if etag and _PRINTABLE_ASCII.fullmatch(etag) else None,
        last_modified=headers.get("Last-Modified"),
        expires_in_seconds=_expires_in(headers.get("Expires"), headers.get("Date")),
    )


def _expires_in(expires: str | None, date: str | None) -> float | None:
    """Expires minus Date, in seconds; None when either is absent or not an HTTP date."""
    if not expires or not date:
        return None
    try:
        until = email.utils.parsedate_to_datetime(expires)
        now = email.utils.parsedate_to_datetime(date)
        if until.tzinfo is None or now.tzinfo is None:  # "-0000" parses naive: HTTP dates are UTC
            until, now = until.replace(tzinfo=dt.UTC), now.replace(tzinfo=dt.UTC)
        seconds = (until - now).total_seconds()
    except (TypeError, ValueError, OverflowError):
        return None
    return min(max(0.0, seconds), MAX_EXPIRES_SECONDS)


def _error_detail(body: bytes) -> str:
    """ESI's own error message when the body is its JSON error, else a short neutral text."""
    try:
        message = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        message = None
    if isinstance(message, str) and message:
        return _printable(message[:200])  # it reaches logs, job bodies and the CLI's terminal
    return "non-JSON error body" if body else "empty error body"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientResponseError):
        # aiohttp's parser refused the answer; its message quotes the offending bytes, which are
        # noise (or worse) in a job's error field: keep its first line.
        first_line = (exc.message or "").strip().partition("\n")[0].rstrip(":")
        return f"invalid HTTP response ({_printable(first_line)[:100]})"
    return _printable(f"{type(exc).__name__}: {exc}")[:200]


def _printable(text: str) -> str:
    """Text from the wire, safe for a job's error field and a log line."""
    return "".join(c if " " <= c <= "~" else "?" for c in text)
