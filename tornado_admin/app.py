"""The Tornado application and the server process: build everything once, serve, shut down cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import tornado.httpserver
import tornado.httputil
import tornado.netutil
import tornado.web

from backends.base import Clock, JobStore, JobStoreError, SystemClock, open_store
from tornado_admin.context import AppContext
from tornado_admin.handlers import NotFoundHandler, routes
from tornado_admin.jobs import JobFailedError, JobRunner, RunContext, Work
from tornado_admin.market.esi import EsiClient
from tornado_admin.market.fetch import SweepError, fetch_all_regions
from tornado_admin.market.orders import OrderStore, OrderStoreError, open_order_store
from tornado_admin.metrics import Metrics
from tornado_admin.scheduler import Scheduler
from tornado_admin.settings import Settings, redact_url

log = logging.getLogger("tornado_admin.server")
access_log = logging.getLogger("tornado.access")

# Resource limits: Tornado's defaults allow 64 KB headers, 100 MB bodies and an hour of idling.
MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024
IDLE_TIMEOUT_SECONDS = 60  # Tornado also uses it as the header timeout
BODY_TIMEOUT_SECONDS = 10
CLOSE_TIMEOUT_SECONDS = 3
# At shutdown, how long requests already in flight may take to finish before their connections close.
DRAIN_TIMEOUT_SECONDS = 3


def make_app(context: AppContext) -> tornado.web.Application:
    return tornado.web.Application(
        routes(context),
        default_handler_class=NotFoundHandler,
        default_handler_args={"context": context},
        log_function=log_request,
        compress_response=False,
    )


def log_request(handler: tornado.web.RequestHandler) -> None:
    """The access log, as JSON: query values are left out (a token may hide in one)."""
    request = handler.request
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    if not access_log.isEnabledFor(level):
        return  # skip building the record: this runs for every request
    access_log.log(level, "%s %s %d", request.method, request.path, status, extra={
        "method": request.method, "path": request.path, "status": status,
        "queryKeys": sorted(request.query_arguments), "remoteIp": request.remote_ip,
        "durationMs": round(request.request_time() * 1000, 2),
    })  # fmt: skip


def fetch_work(settings: Settings, esi: EsiClient, orders: OrderStore, clock: Clock) -> Work:
    """The fetch-market-data job: one sweep, its result the job's result."""

    async def work(run: RunContext) -> Mapping[str, Any]:
        try:
            result = await fetch_all_regions(
                esi, orders, region_ids=settings.esi_regions, concurrency=settings.esi_concurrency,
                clock=clock, progress=lambda p: run.report(p.to_dict()), may_write=run.holds_lease,
            )  # fmt: skip
        except SweepError as exc:
            raise JobFailedError(str(exc)) from None
        return result.to_dict()

    return work


class DrainingHTTPServer(tornado.httpserver.HTTPServer):
    """An HTTPServer that knows which connections have a request in flight, so that shutdown lets
    those answer in full instead of cutting them (Tornado's close_all_connections closes every
    connection at once, whatever it is doing)."""

    def initialize(self, *args: Any, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self._open: set[Any] = set()  # HTTP1ServerConnection
        self._busy: set[Any] = set()
        self._drained = asyncio.Event()
        self._drained.set()

    def start_request(
        self, server_conn: object, request_conn: tornado.httputil.HTTPConnection
    ) -> tornado.httputil.HTTPMessageDelegate:
        # Tornado asks for a delegate once the previous answer is written, before the next
        # request's headers: the connection is idle until they arrive.
        self._open.add(server_conn)
        self._idle(server_conn)
        return _InFlight(super().start_request(server_conn, request_conn), lambda: self._start(server_conn))

    def on_close(self, server_conn: object) -> None:
        self._open.discard(server_conn)
        self._idle(server_conn)
        super().on_close(server_conn)

    def _start(self, server_conn: object) -> None:
        self._busy.add(server_conn)
        self._drained.clear()

    def _idle(self, server_conn: object) -> None:
        self._busy.discard(server_conn)
        if not self._busy:
            self._drained.set()

    async def drain(self, timeout_seconds: float) -> bool:
        """Close the idle connections and wait until no request is in flight (call `stop` first);
        False if the time ran out."""
        await asyncio.gather(*(conn.close() for conn in self._open - self._busy))
        try:
            await asyncio.wait_for(self._drained.wait(), timeout_seconds)
        except TimeoutError:
            return False
        return True


class _InFlight(tornado.httputil.HTTPMessageDelegate):
    """Passes a request through, telling the server when its headers have arrived."""

    def __init__(self, inner: tornado.httputil.HTTPMessageDelegate, started: Callable[[], None]) -> None:
        self._inner = inner
        self._started = started

    def headers_received(
        self,
        start_line: tornado.httputil.RequestStartLine | tornado.httputil.ResponseStartLine,
        headers: tornado.httputil.HTTPHeaders,
    ) -> Awaitable[None] | None:
        self._started()
        return self._inner.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self._inner.data_received(chunk)

    def finish(self) -> None:
        self._inner.finish()

    def on_connection_close(self) -> None:
        self._inner.on_connection_close()


class StartupError(Exception):
    """The server cannot start; the message is the one line to show."""


class Server:
    """Everything one process owns, opened in `start` and closed in `stop`."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.job_store: JobStore | None = None
        self.order_store: OrderStore | None = None
        self.esi: EsiClient | None = None
        self.runner: JobRunner | None = None
        self.scheduler: Scheduler | None = None
        self.http: DrainingHTTPServer | None = None
        self.port = settings.port

    async def start(self) -> None:
        settings = self.settings
        if not settings.admin_tokens:
            log.error("ADMIN_TOKEN is not set: admin endpoints answer 500 until it is")
        try:
            self.job_store = await open_store(
                settings.job_store_url, clock=self.clock, history_limit=settings.job_history_limit
            )
        except (JobStoreError, OSError) as exc:
            raise StartupError(f"job store {redact_url(settings.job_store_url)} unavailable: {exc}") from None
        try:
            self.order_store = await open_order_store(
                settings.database_url, max_writers=settings.esi_concurrency
            )
        except OrderStoreError as exc:
            raise StartupError(str(exc)) from None
        self.esi = EsiClient.open(
            settings.esi_base_url, user_agent=settings.esi_user_agent,
            compatibility_date=settings.esi_compatibility_date, concurrency=settings.esi_concurrency,
        )  # fmt: skip
        self.runner = JobRunner(
            self.job_store, fetch_work(settings, self.esi, self.order_store, self.clock),
            lease_seconds=settings.job_lease_seconds,
            max_duration_seconds=settings.job_max_duration_seconds,
        )  # fmt: skip
        metrics = Metrics(self.esi)  # reads the client's tallies at scrape time
        self.runner.listener = metrics
        context = AppContext(settings, self.runner, self.job_store, self.order_store, self.clock, metrics)
        self.http = DrainingHTTPServer(
            make_app(context), max_header_size=MAX_HEADER_BYTES, max_body_size=MAX_BODY_BYTES,
            idle_connection_timeout=IDLE_TIMEOUT_SECONDS, body_timeout=BODY_TIMEOUT_SECONDS,
        )  # fmt: skip
        try:
            sockets = tornado.netutil.bind_sockets(settings.port, settings.host)
        except OSError as exc:
            raise StartupError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}") from None
        self.port = sockets[0].getsockname()[1]
        self.http.add_sockets(sockets)
        if settings.scheduler_enabled:
            self.scheduler = Scheduler(
                self.runner, self.clock, interval_seconds=settings.fetch_interval_seconds
            )
            self.scheduler.start()
        log.info("Server listening", extra={"host": settings.host, "port": self.port,
                                            "jobStore": redact_url(settings.job_store_url)})

    async def stop(self) -> None:
        """Stop accepting, record a running job failed, let requests in flight answer, close
        everything."""
        if self.http:
            self.http.stop()
        if self.scheduler:
            await self.scheduler.stop()
        if self.runner:
            await self.runner.shutdown()
        if self.http:
            if not await self.http.drain(DRAIN_TIMEOUT_SECONDS):
                log.warning("Requests still in flight at shutdown: closing their connections")
            with contextlib.suppress(TimeoutError):  # the idle ones, and any past the drain
                await asyncio.wait_for(self.http.close_all_connections(), 2)
        for close in (self.esi and self.esi.close, self.order_store and self.order_store.close,
                      self.job_store and self.job_store.close):
            if close:
                try:  # a database that stopped answering must not hold the exit hostage
                    await asyncio.wait_for(close(), CLOSE_TIMEOUT_SECONDS)
                except (TimeoutError, OSError) as exc:
                    log.warning("Could not close cleanly", extra={"error": str(exc) or "timed out"})
        log.info("Server stopped")


async def serve(settings: Settings) -> int:
    """Run until SIGTERM or SIGINT; 0 after a clean shutdown, 1 when startup failed."""
    server = Server(settings)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await server.start()
    except StartupError as exc:
        log.critical("Server cannot start: %s", exc)
        await server.stop()
        return 1
    await stopping.wait()
    log.info("Shutting down")
    await server.stop()
    return 0
