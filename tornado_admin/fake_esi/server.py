"""FakeEsi: a real aiohttp.web server over TCP that answers like ESI's market routes, serving
pre-rendered pages, simulating the error limit and the token bucket, with scripted faults."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import orjson
from aiohttp import web
from multidict import CIMultiDict

from tornado_admin.fake_esi import faults
from tornado_admin.fake_esi.data import OrderFactory, Page, http_date, make_etag
from tornado_admin.fake_esi.limits import ErrorLimiter, TokenBucket
from tornado_admin.fake_esi.rules import market_query_error, not_modified, to_int
from tornado_admin.fake_esi.state import RegionSpec, RegionState, RequestRecord, served_pages

JSON_TYPE = "application/json; charset=UTF-8"
HTML_TYPE = "text/html"
_Drop = Literal["hang", "reset"]


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: bytes | None
    headers: dict[str, str]


class FakeEsi:
    """ESI's /universe/regions and /markets/{region_id}/orders (also under /latest/, with a
    trailing slash) on a local port.

    `regions` maps region_id to an order count or a RegionSpec; `listed_regions` is what
    /universe/regions lists (default: the keys of `regions`). Every page is rendered here, once,
    so a big layout takes a moment to build (about 2 s per million orders) and serving a page
    copies bytes only. Each request waits `latency_seconds`, then is answered, first match wins:
    420 on every route while error-limited; the next matching injected fault; 429 on market
    routes while the token bucket is spent; 400 for a bad query; 404 for an unknown region; the
    region's persistent fault; 404 for a page past X-Pages; 304 when If-None-Match (or
    If-Modified-Since) matches; else 200. Each answer is charged to the error limit and, on
    market routes, to the bucket before its headers are written, so they include it. The 502
    HTML page carries no ESI headers, like a gateway's. `requests` logs every request.
    State changes happen under one lock: update_region and inject may be called from another
    thread than the server's loop (see run_in_thread).
    """

    def __init__(
        self,
        regions: Mapping[int, int | RegionSpec],
        *,
        latency_seconds: float = 0.0,
        expires_seconds: int = 300,
        seed: int = 0,
        error_limit: int = 100,
        error_window_seconds: float = 60.0,
        listed_regions: Sequence[int] | None = None,
        page_size: int = 1000,
        bucket_tokens: int = 12_000,
        bucket_window_seconds: float = 900.0,
    ) -> None:
        self._lock = threading.RLock()
        self._latency_seconds = latency_seconds
        self._expires_seconds = expires_seconds
        self._page_size = page_size
        self._factory = OrderFactory(seed, page_size)
        self._regions: dict[int, RegionState] = {}
        born = int(time.time())
        for region_id in sorted(regions):  # sorted: order_ids must not depend on dict order
            spec = regions[region_id]
            spec = replace(spec) if isinstance(spec, RegionSpec) else RegionSpec(spec)
            self._regions[region_id] = self._new_region(region_id, spec, born)
        listed = list(regions) if listed_regions is None else list(listed_regions)
        self._regions_body = orjson.dumps(sorted(listed))
        self._regions_page = Page(self._regions_body, make_etag(self._regions_body))
        self._regions_born = born
        self._error_limit = (error_limit, error_window_seconds)
        self._errors = ErrorLimiter(error_limit, error_window_seconds, time.monotonic())
        self._bucket = TokenBucket(bucket_tokens, bucket_window_seconds)
        self._injections = faults.InjectionQueue()
        self.requests: list[RequestRecord] = []
        self._in_flight = 0
        self.max_in_flight = 0  # most requests held at once (latency included), for client tests
        self._by_status: Counter[int] = Counter()
        self._bytes_sent = 0
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self._release: asyncio.Event | None = None

    # -- content ---------------------------------------------------------------------------

    def _new_region(self, region_id: int, spec: RegionSpec, last_modified_epoch: int) -> RegionState:
        faults.check_region_fault(spec.fault, spec.orders, self._page_size)
        content = self._factory.render(region_id, spec.orders, 0, last_modified_epoch)
        transient = faults.TRANSIENT_503_COUNT if spec.fault == "transient503" else 0
        return RegionState(spec, content, served_pages(content, spec.fault), transient_left=transient)

    def _regenerate(self, region: RegionState, orders: int | None) -> None:
        count = region.spec.orders if orders is None else orders
        faults.check_region_fault(region.spec.fault, count, self._page_size)
        old = region.content
        # Second resolution, like the header: one more second at least, so the change shows.
        last_modified = max(int(time.time()), old.last_modified_epoch + 1)
        content = self._factory.render(old.region_id, count, old.generation + 1, last_modified)
        region.spec = replace(region.spec, orders=count)
        region.content = content
        region.served = served_pages(content, region.spec.fault)

    def update_region(self, region_id: int, orders: int | None = None) -> None:
        """Replace a region's orders with new ones (new order_ids and prices), changing every
        page's ETag and the Last-Modified; `orders` sets a new count. An unknown region_id is
        added when `orders` is given."""
        with self._lock:
            region = self._regions.get(region_id)
            if region is not None:
                self._regenerate(region, orders)
            elif orders is not None:
                spec = RegionSpec(orders)
                self._regions[region_id] = self._new_region(region_id, spec, int(time.time()))
            else:
                raise KeyError(f"unknown region {region_id}")

    def set_fault(self, region_id: int, fault: str | None) -> None:
        """Give a region a persistent fault (or None to heal it) from now on; content unchanged."""
        with self._lock:
            region = self._regions[region_id]
            faults.check_region_fault(fault, region.spec.orders, self._page_size)
            region.spec = replace(region.spec, fault=fault)
            region.served = served_pages(region.content, fault)
            region.page1_seen = region.flipped = False
            region.transient_left = faults.TRANSIENT_503_COUNT if fault == "transient503" else 0

    def set_latency(self, seconds: float) -> None:
        """Make every request from now on wait `seconds` before its answer."""
        with self._lock:
            self._latency_seconds = seconds

    def page_bodies(self, region_id: int) -> list[bytes]:
        """The region's pages as served, for benchmarks that write without HTTP."""
        with self._lock:
            return [page.body for page in self._regions[region_id].served]

    def orders(self, region_id: int) -> list[dict[str, Any]]:
        """The region's current orders, all pages in page order (as served without body faults)."""
        with self._lock:
            content = self._regions[region_id].content
        return content.decode_orders()

    def inject(self, kind: str, count: int = 1, *, region_id: int | None = None, **params: object) -> None:
        """Answer the next `count` requests (for `region_id` only, if given) with fault `kind`:
        "420" (params: reset_seconds=1), "429" (retry_after=1, bucket_headers=True), "502",
        "503", "504", "hang" (never answer until stop) or "reset" (close the connection)."""
        with self._lock:
            self._injections.add(kind, count, region_id, params)

    def stats(self) -> dict[str, object]:
        """{"requests": arrived, "answered": n, "by_status": {status: n}, "bytes_sent": body bytes}."""
        with self._lock:
            by_status = dict(sorted(self._by_status.items()))
            return {
                "requests": len(self.requests),
                "answered": sum(by_status.values()),
                "by_status": by_status,
                "bytes_sent": self._bytes_sent,
            }

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("FakeEsi is not started")
        return self._url

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on host:port (0 picks a free port) on the running event loop."""
        if self._runner is not None:
            raise RuntimeError("FakeEsi is already started")
        self._release = asyncio.Event()
        with self._lock:  # the first window starts when serving does, not at construction
            self._errors = ErrorLimiter(*self._error_limit, time.monotonic())
        runner = web.AppRunner(self._make_app(), access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        bound_port = runner.addresses[0][1]
        url_host = f"[{host}]" if ":" in host else host
        self._url = f"http://{url_host}:{bound_port}"

    async def stop(self) -> None:
        """Stop listening; requests held by "hang" are dropped without an answer."""
        if self._release is not None:
            self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = None
        self._url = None

    @contextlib.contextmanager
    def run_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[FakeEsi]:
        """Serve from a daemon thread with its own event loop (for synchronous tests)."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="fake-esi", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(host, port), loop).result()
            try:
                yield self
            finally:
                asyncio.run_coroutine_threadsafe(self.stop(), loop).result()
                asyncio.run_coroutine_threadsafe(_cancel_the_rest(), loop).result()
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()

    # -- HTTP ------------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application()
        for prefix in ("", "/latest"):  # the legacy routes carry /latest/ and a trailing slash
            for slash in ("", "/"):
                app.router.add_get(f"{prefix}/universe/regions{slash}", self._regions_handler)
                app.router.add_get(f"{prefix}/markets/{{region_id}}/orders{slash}", self._orders_handler)
        app.router.add_route("*", "/{tail:.*}", self._unknown_handler)
        return app

    async def _orders_handler(self, request: web.Request) -> web.StreamResponse:
        region_id = to_int(request.match_info["region_id"])
        return await self._serve(request, region_id, to_int(request.query.get("page", "1")), True)

    async def _regions_handler(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, None, None, False)

    async def _unknown_handler(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, None, None, False, known=False)

    async def _serve(
        self,
        request: web.Request,
        region_id: int | None,
        page: int | None,
        market: bool,
        known: bool = True,
    ) -> web.StreamResponse:
        record = RequestRecord(
            time.monotonic(), request.path, dict(request.query), CIMultiDict(request.headers),
            region_id, page,
        )  # fmt: skip
        self.requests.append(record)
        self._in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            if self._latency_seconds > 0:
                await asyncio.sleep(self._latency_seconds)
            with self._lock:  # no await inside: each decision sees and leaves a consistent state
                reply = self._decide(request, record, market, known)
                if isinstance(reply, _Reply):
                    record.status = reply.status
                    self._by_status[reply.status] += 1
                    self._bytes_sent += len(reply.body or b"")
        finally:
            self._in_flight -= 1
        if isinstance(reply, _Reply):
            return web.Response(status=reply.status, body=reply.body, headers=reply.headers)
        if reply == "hang" and self._release is not None:
            await self._release.wait()
        return self._drop(request)

    @staticmethod
    def _drop(request: web.Request) -> web.StreamResponse:
        # Closing the transport first makes aiohttp's write fail, which it treats as a client
        # disconnect: the connection ends with no status line at all.
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=204)

    def _decide(
        self, request: web.Request, record: RequestRecord, market: bool, known: bool
    ) -> _Reply | _Drop:
        now = time.monotonic()
        if self._errors.blocked(now):
            return self._finish(420, faults.ERROR_LIMITED, market, now)
        injection = self._injections.take(record.region_id)
        if injection is not None:
            return self._injected(injection, market, now)
        if market and self._bucket.exhausted(now):
            retry = {"Retry-After": str(self._bucket.retry_after(now))}
            return self._finish(429, faults.TOO_MANY_REQUESTS, market, now, retry)
        if not known:
            return self._finish(404, faults.NOT_FOUND, market, now)
        if request.query.get("datasource", "tranquility") != "tranquility":
            return self._finish(400, faults.error_body("Invalid datasource"), market, now)
        if not market:
            born = self._regions_born
            return self._cacheable(request, self._regions_page, http_date(born), born, None, now)
        return self._market(request, record, now)

    def _injected(self, injection: faults.Injection, market: bool, now: float) -> _Reply | _Drop:
        kind, params = injection.kind, injection.params
        if kind == "hang":
            return "hang"
        if kind == "reset":
            return "reset"
        if kind == "420":
            self._errors.block(float(params.get("reset_seconds", 1)), now)
            return self._finish(420, faults.ERROR_LIMITED, market, now)
        if kind == "429":
            retry = {"Retry-After": str(params.get("retry_after", 1))}
            bucket = params.get("bucket_headers", True) is not False
            return self._finish(429, faults.TOO_MANY_REQUESTS, market, now, retry, bucket=bucket)
        return self._server_error(int(kind), market, now)

    def _server_error(self, status: int, market: bool, now: float) -> _Reply:
        if status == 502:
            # A gateway page, not an ESI answer: no ESI headers on it.
            return self._finish(502, faults.BAD_GATEWAY_HTML, market, now, esi=False, ctype=HTML_TYPE)
        body = faults.GATEWAY_TIMEOUT if status == 504 else faults.SERVICE_UNAVAILABLE
        return self._finish(status, body, market, now)

    def _market(self, request: web.Request, record: RequestRecord, now: float) -> _Reply:
        region_id, page = record.region_id, record.page
        message = market_query_error(request.query.get("order_type"), region_id, page)
        if message is not None or region_id is None or page is None:
            return self._finish(400, faults.error_body(message or "bad request"), True, now)
        region = self._regions.get(region_id)
        if region is None:
            return self._finish(404, faults.NO_SUCH_REGION, True, now)
        return self._region_page(request, region, page, now)

    def _region_page(self, request: web.Request, region: RegionState, page: int, now: float) -> _Reply:
        fault = region.spec.fault
        if fault in ("html502", "json503", "json504"):
            return self._server_error(int(fault[-3:]), True, now)
        if fault == "transient503" and region.transient_left > 0:
            region.transient_left -= 1
            return self._server_error(503, True, now)
        # ESI's cache refreshing while a client walks the pages.
        flip_now = fault == "flip-always" or (fault == "flip" and region.page1_seen and not region.flipped)
        if flip_now and page >= 2:
            self._regenerate(region, None)
            region.flipped = True
        if page == 1:
            region.page1_seen = True
        if page > len(region.served):
            return self._finish(404, faults.NO_SUCH_PAGE, True, now)
        content = region.content
        pages = str(len(region.served))
        return self._cacheable(
            request, region.served[page - 1], content.last_modified,
            content.last_modified_epoch, pages, now,
        )  # fmt: skip

    def _cacheable(
        self,
        request: web.Request,
        page: Page,
        last_modified: str,
        last_modified_epoch: int,
        x_pages: str | None,
        now: float,
    ) -> _Reply:
        market = x_pages is not None
        wall = time.time()  # one reading, so Expires - Date is exactly expires_seconds
        headers = {
            "Date": http_date(wall),
            "ETag": page.etag,
            "Last-Modified": last_modified,
            "Expires": http_date(wall + self._expires_seconds),
            "Cache-Control": f"public, max-age={self._expires_seconds}",
        }
        if x_pages is not None:
            headers["X-Pages"] = x_pages
        if not_modified(request, page.etag, last_modified_epoch):
            return self._finish(304, None, market, now, headers)
        return self._finish(200, page.body, market, now, headers)

    def _finish(
        self,
        status: int,
        body: bytes | None,
        market: bool,
        now: float,
        extra: Mapping[str, str] | None = None,
        *,
        bucket: bool = True,
        esi: bool = True,
        ctype: str = JSON_TYPE,
    ) -> _Reply:
        """Account the answer against both limits, then build its headers (after the charge,
        as ESI reports the state including this request)."""
        self._errors.record(status, now)
        if market:
            self._bucket.charge(status, now)
        headers = {"Date": http_date(time.time())}
        if body is not None:
            headers["Content-Type"] = ctype
        if esi:
            headers.update(self._errors.headers(now))
            if market and bucket:
                headers.update(self._bucket.headers(now))
        if extra:
            headers.update(extra)
        return _Reply(status, body, headers)


async def _cancel_the_rest() -> None:
    """End the requests still held (latency, "hang") before their loop closes under them."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
