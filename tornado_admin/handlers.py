"""HTTP handlers: parse, authorize, one call into the runner or the store, write JSON.

Errors are mapped to statuses in one place, `JsonHandler.write_error`; no route ever answers
with Tornado's HTML error page.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from typing import Any

import orjson
import tornado.web

from backends.base import (
    AlreadyRunning,
    JobNotFoundError,
    Started,
    StoreUnavailableError,
    Trigger,
    is_job_id,
)
from tornado_admin.auth import Verdict, check_bearer
from tornado_admin.context import AppContext, job_body
from tornado_admin.jobs import ShuttingDownError

log = logging.getLogger("tornado_admin.api")

RETRY_AFTER_SECONDS = 5
# DESIGN.md section 4: past 10 failed authentications a minute from one address, 429.
FAILED_AUTH_LIMIT = 10
FAILED_AUTH_WINDOW_MS = 60_000
MAX_LIST_LIMIT = 100
MISSING_AUTH = "Missing or invalid Authorization header. Use: Authorization: Bearer <token>"
NOT_FOUND = {"error": "Not Found", "message": "Job not found or expired"}


class JsonHandler(tornado.web.RequestHandler):
    """JSON in every answer, errors included; `ALLOWED` methods only (405 with Allow otherwise)."""

    ALLOWED: tuple[str, ...] = ("GET",)
    METHOD_MESSAGE: str | None = None

    def initialize(self, context: AppContext) -> None:
        self.context = context

    def hidden(self) -> bool:
        """True where the route answers 404 to everything."""
        return False

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")

    def prepare(self) -> None:
        # The method first: a wrong method is 405 whatever the credentials.
        if self.request.method not in self.ALLOWED:
            raise tornado.web.HTTPError(405)

    def reply(self, status: int, body: Mapping[str, Any], **headers: str) -> None:
        self.set_status(status)
        for name, value in headers.items():
            self.set_header(name.replace("_", "-"), value)
        # Compact, as DESIGN.md writes the bodies; orjson is also the fastest encoder at hand.
        self.finish(orjson.dumps(body))

    def compute_etag(self) -> None:
        return None  # no-store answers: an ETag would only invite 304s to a poller

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs["exc_info"][1] if "exc_info" in kwargs else None
        self.clear_header("Allow")
        if isinstance(exc, JobNotFoundError):
            self.reply(404, NOT_FOUND)
        elif isinstance(exc, ShuttingDownError):
            self.reply(503, {"error": "Service Unavailable",
                             "message": "Server is shutting down, retry later"},
                       Retry_After=str(RETRY_AFTER_SECONDS))
        elif isinstance(exc, StoreUnavailableError):
            log.warning("Job store unavailable", extra={"path": self.request.path, "error": str(exc)})
            self.reply(503, {"error": "Service Unavailable", "message": "Job store unavailable, retry later"},
                       Retry_After=str(RETRY_AFTER_SECONDS))
        elif status_code == 405 and self.hidden():
            # Tornado answers methods it does not know with 405 before any handler code runs:
            # on a route that does not exist (for this server), that would give the route away.
            self.reply(404, {"error": "Not Found", "message": "No such route"})
        elif status_code == 405:
            message = self.METHOD_MESSAGE or f"Use {' or '.join(self.ALLOWED)}"
            allow = ", ".join(self.ALLOWED)
            self.reply(405, {"error": "Method Not Allowed", "message": message}, Allow=allow)
        elif status_code == 404:
            self.reply(404, {"error": "Not Found", "message": "No such route"})
        elif status_code < 500:
            reason = getattr(exc, "log_message", None) or self._reason
            self.reply(status_code, {"error": self._reason, "message": reason})
        else:
            self.reply(500, {"error": "Internal Server Error"})

    def log_exception(self, typ, value, tb) -> None:  # type: ignore[no-untyped-def]
        # Tornado's own version logs the whole request, Authorization header included.
        if isinstance(value, tornado.web.HTTPError | JobNotFoundError | StoreUnavailableError):
            return
        log.error("Request failed", exc_info=(typ, value, tb),
                  extra={"method": self.request.method, "path": self.request.path})


class AdminHandler(JsonHandler):
    """Admin routes: a Bearer token from ADMIN_TOKEN, checked after the method."""

    REALM = "admin"
    INVALID_MESSAGE = "Invalid admin token"
    INVALID_LOG = "Invalid admin token provided"

    def tokens(self) -> tuple[str, ...]:
        return self.context.settings.admin_tokens

    async def prepare(self) -> None:
        super().prepare()
        tokens = self.tokens()
        verdict = check_bearer(self.request.headers.get_list("Authorization"), tokens)
        self.context.metrics.auth_checked(self.REALM, verdict)  # counts the failures, store or not
        fields = {"method": self.request.method, "path": self.request.path}
        if verdict is not Verdict.MISCONFIGURED and await self.throttled(verdict, fields):
            # Whatever the token: a throttled client learns nothing about it.
            left_ms = FAILED_AUTH_WINDOW_MS - self.context.clock.now_ms() % FAILED_AUTH_WINDOW_MS
            self.reply(429, {"error": "Too Many Requests",
                             "message": "Too many failed authentication attempts, retry later"},
                       Retry_After=str(max(1, math.ceil(left_ms / 1000))))
            return
        if verdict is Verdict.OK:
            return
        if verdict is Verdict.MISCONFIGURED:
            log.error("Admin request refused: ADMIN_TOKEN is not set", extra=fields)
            self.reply(500, {"error": "Server misconfiguration"})
        elif verdict is Verdict.DUPLICATE:
            log.warning("Duplicate Authorization header", extra=fields)
            self.reply(400, {"error": "Bad Request", "message": "Send exactly one Authorization header"},
                       WWW_Authenticate=f'Bearer realm="{self.REALM}", error="invalid_request"')
        elif verdict is Verdict.INVALID:
            log.warning(self.INVALID_LOG, extra=fields)
            self.reply(401, {"error": "Unauthorized", "message": self.INVALID_MESSAGE},
                       WWW_Authenticate=f'Bearer realm="{self.REALM}", error="invalid_token"')
        else:
            log.warning("Missing or invalid Authorization header", extra=fields)
            self.reply(401, {"error": "Unauthorized", "message": MISSING_AUTH},
                       WWW_Authenticate=f'Bearer realm="{self.REALM}"')

    async def throttled(self, verdict: Verdict, fields: dict[str, str]) -> bool:
        """The failed-authentication throttle, per client address and shared by every instance.

        A failure is counted atomically first and judged by the count it got, so concurrent
        failures cannot slip past the limit together; other requests (a right token, none at
        all) only read the count. If the store is down the throttle lets requests through:
        better than a 503 where the answer needs no store (a 401, a 404 for an id never issued).
        """
        store, client = self.context.job_store, self.request.remote_ip or "unknown"
        try:
            if verdict in (Verdict.OK, Verdict.MISSING):
                failures, _ = await store.auth_failures(client, window_ms=FAILED_AUTH_WINDOW_MS)
                return failures > FAILED_AUTH_LIMIT
            failures = await store.note_auth_failure(client, window_ms=FAILED_AUTH_WINDOW_MS)
        except StoreUnavailableError as exc:
            log.warning("Failed-authentication throttle skipped: job store unavailable",
                        extra={**fields, "error": str(exc)})
            return False
        if failures == FAILED_AUTH_LIMIT + 1:  # once per client and window, not per request
            log.warning("Failed-authentication throttle engaged", extra={**fields, "client": client})
        return failures > FAILED_AUTH_LIMIT

    async def start_run(self, trigger: Trigger) -> None:
        runner = self.context.runner
        fields = {"jobName": runner.job_name, "trigger": trigger.value}
        log.info("%s job trigger requested", trigger.value.capitalize(), extra=fields)
        outcome = await runner.start(trigger)
        if isinstance(outcome, Started):
            where = f"/api/admin/job-status/{outcome.job.job_id}"
            self.reply(202, {
                "message": "Job triggered successfully", "jobId": outcome.job.job_id,
                "jobName": runner.job_name, "status": "started", "checkStatusAt": where,
            }, Location=where)  # fmt: skip
            return
        assert isinstance(outcome, AlreadyRunning)  # PeriodClaimed only answers scheduled starts
        running = outcome.job.job_id
        log.warning("Attempted to trigger job while already running", extra={**fields, "jobId": running})
        self.reply(409, {
            "error": "Conflict", "message": "Job already in progress", "jobName": runner.job_name,
            "jobId": running, "checkStatusAt": f"/api/admin/job-status/{running}",
        })  # fmt: skip


class TriggerHandler(AdminHandler):
    ALLOWED = ("POST",)
    METHOD_MESSAGE = "Use POST to trigger job"

    async def post(self) -> None:
        await self.start_run(Trigger.MANUAL)


class CronHandler(AdminHandler):
    """`/api/cron/fetch-market-data` for an external cron, with CRON_SECRET; 404 when unset."""

    ALLOWED = ("GET", "POST")
    REALM = "cron"
    INVALID_MESSAGE = "Invalid cron secret"
    INVALID_LOG = "Invalid cron secret provided"

    def tokens(self) -> tuple[str, ...]:
        secret = self.context.settings.cron_secret
        return (secret,) if secret else ()

    def hidden(self) -> bool:
        return not self.context.settings.cron_secret

    async def prepare(self) -> None:
        if self.hidden():
            raise tornado.web.HTTPError(404)
        await super().prepare()

    async def get(self) -> None:
        await self.start_run(Trigger.CRON)

    async def post(self) -> None:
        await self.start_run(Trigger.CRON)


class JobStatusHandler(AdminHandler):
    def decode_argument(self, value: bytes, name: str | None = None) -> str:
        # Tornado would answer an id that is not UTF-8 with its own 400, before the method and
        # credential checks; such an id is simply one we never issued.
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return ""

    async def get(self, job_id: str) -> None:
        if not is_job_id(job_id):  # never a store key outside the ids we issue
            raise JobNotFoundError(job_id)
        job = await self.context.job_store.get(job_id)
        self.reply(200, job_body(job, self.context.clock.now_ms(), self.context.runner.live_progress(job_id)))


class JobsHandler(AdminHandler):
    async def get(self) -> None:
        raw = self.get_query_argument("limit", "20")
        # isascii first: str.isdigit() also takes "²" and "٣", which int() refuses or reads as 3.
        if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIST_LIMIT:
            raise tornado.web.HTTPError(400, f"limit must be an integer from 1 to {MAX_LIST_LIMIT}")
        jobs = await self.context.job_store.list(self.context.runner.job_name, limit=int(raw))
        now, runner = self.context.clock.now_ms(), self.context.runner
        self.reply(200, {"jobs": [job_body(j, now, runner.live_progress(j.job_id)) for j in jobs]})


class HealthHandler(JsonHandler):
    ALLOWED = ("GET", "HEAD")  # load balancers often probe with HEAD

    def get(self) -> None:
        self.reply(200, {"status": "ok"})

    head = get


class ReadyHandler(JsonHandler):
    ALLOWED = ("GET", "HEAD")

    async def head(self) -> None:
        await self.get()

    async def get(self) -> None:
        checks = dict(zip(
            ("jobStore", "marketDatabase"),
            await asyncio.gather(_answers("jobStore", self.context.job_store.ping()),
                                 _answers("marketDatabase", self.context.order_store.ping())),
            strict=True,
        ))  # fmt: skip
        ready = all(state == "ok" for state in checks.values())
        self.reply(200 if ready else 503, {"status": "ready" if ready else "unavailable", "checks": checks})


class NotFoundHandler(JsonHandler):
    ALLOWED = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

    def hidden(self) -> bool:
        return True

    def prepare(self) -> None:
        raise tornado.web.HTTPError(404)


async def _answers(name: str, ping: Any, timeout_seconds: float = 2.0) -> str:
    try:
        await asyncio.wait_for(ping, timeout_seconds)
    except Exception as exc:  # any failure means "not ready"
        log.warning("Readiness check failed", extra={"check": name, "error": str(exc) or type(exc).__name__})
        return "unavailable"
    return "ok"


def routes(context: AppContext) -> list[tuple[str, type[tornado.web.RequestHandler], dict]]:
    from tornado_admin.dashboard import dashboard_routes  # these build on this module's handlers
    from tornado_admin.metrics import MetricsHandler
    from tornado_admin.openapi import OpenApiHandler

    args = {"context": context}
    return [
        *dashboard_routes(context),
        (r"/api/openapi.json", OpenApiHandler, args),
        (r"/api/admin/trigger-fetch", TriggerHandler, args),
        (r"/api/admin/job-status/(.*)", JobStatusHandler, args),
        (r"/api/admin/jobs", JobsHandler, args),
        (r"/api/cron/fetch-market-data", CronHandler, args),
        (r"/healthz", HealthHandler, args),
        (r"/readyz", ReadyHandler, args),
        (r"/metrics", MetricsHandler, args),
    ]
