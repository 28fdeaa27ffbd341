"""The Tornado application and the server process: build everything once, serve, shut down cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Mapping
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web

from backends.base import Clock, JobStore, JobStoreError, SystemClock, open_store
from tornado_admin.context import AppContext
from tornado_admin.handlers import NotFoundHandler, routes
from tornado_admin.jobs import JobFailedError, JobRunner, RunContext, Work
from tornado_admin.market.esi import EsiClient
from tornado_admin.market.fetch import SweepError, fetch_all_regions
from tornado_admin.market.orders import OrderStore, OrderStoreError, open_order_store
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
        self.http: tornado.httpserver.HTTPServer | None = None
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
        context = AppContext(settings, self.runner, self.job_store, self.order_store, self.clock)
        self.http = tornado.httpserver.HTTPServer(
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
        """Stop accepting, record a running job failed, close everything."""
        if self.http:
            self.http.stop()
        if self.scheduler:
            await self.scheduler.stop()
        if self.runner:
            await self.runner.shutdown()
        if self.http:
            with contextlib.suppress(TimeoutError):
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
