"""The OpenAPI document of the HTTP API (DESIGN.md section 4), built in code, and its route.

OpenAPI 3.0.3 rather than 3.1: schemathesis checks a 3.0 document against the full 3.0
meta-schema, Schema Objects included (a 3.1 document's schemas are free-form JSON Schema to that
validator, so a typo in a keyword would pass), and 3.0 is what most client generators read best.
The one cost is no `const`: single-value `enum`s stand in for it.

Every answer is compact JSON with `Cache-Control: no-store`; response bodies forbid extra fields,
so a field the server adds without documenting it fails tests/test_openapi.py.
"""

from __future__ import annotations

import copy
from typing import Any

from backends.base import JOB_ID_PATTERN, JobStatus, Trigger
from tornado_admin import __version__
from tornado_admin.handlers import MAX_LIST_LIMIT, MISSING_AUTH, NOT_FOUND, JsonHandler
from tornado_admin.jobs import FETCH_JOB
from tornado_admin.settings import Settings

OPENAPI_VERSION = "3.0.3"
JSON = "application/json"
JOB_ID = {"type": "string", "pattern": f"^{JOB_ID_PATTERN.pattern}$", "example": "KZkT7JDQmUHjK8kHxgqzGQ"}
STATUS_PATH = {"type": "string", "pattern": f"^/api/admin/job-status/{JOB_ID_PATTERN.pattern}$"}
COUNT = {"type": "integer", "minimum": 0}
BAD_BODY = "a body Tornado cannot parse (`multipart/form-data` without a boundary), refused on any route"


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _fixed(value: Any) -> dict[str, Any]:
    """A field that always holds this one value (OpenAPI 3.0 has no `const`)."""
    return {"type": "boolean" if isinstance(value, bool) else "string", "enum": [value]}


def _object(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    """A closed object: these fields and no others."""
    return {
        "type": "object",
        "required": list(required),
        "properties": {**required, **(optional or {})},
        "additionalProperties": False,
    }


def _error(error: str, *messages: str) -> dict[str, Any]:
    """`{"error": <error>, "message": <one of messages, or any string when none is given>}`."""
    message = {"type": "string", "enum": list(messages)} if messages else {"type": "string"}
    return _object({"error": _fixed(error), "message": message})


def _response(description: str, schema: dict[str, Any], **headers: dict[str, Any]) -> dict[str, Any]:
    """A JSON answer; every one carries `Cache-Control: no-store`."""
    return {
        "description": description,
        "headers": {"Cache-Control": _ref("headers", "CacheControl"), **headers},
        "content": {JSON: {"schema": schema}},
    }


def _header(description: str, schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": schema}


def _www_authenticate(realm: str, *errors: str | None, required: bool = True) -> dict[str, Any]:
    values = [f'Bearer realm="{realm}"' + (f', error="{e}"' if e else "") for e in errors]
    return _header("The Bearer challenge (RFC 6750).", {"type": "string", "enum": values}, required)


def _method_not_allowed(*methods: str, message: str | None = None) -> dict[str, Any]:
    allow = ", ".join(methods)
    return _response(
        f"Any method but {' and '.join(methods)}, checked before the credentials.",
        _error("Method Not Allowed", message or f"Use {' or '.join(methods)}"),
        Allow=_header("The methods this path answers.", {"type": "string", "enum": [allow]}),
    )


def _admin_responses(realm: str, *, what: str = "", misconfigurable: bool = True) -> dict[str, Any]:
    """Refusals every authenticated route shares: credentials, throttle, store, server."""
    invalid = "InvalidAdminToken" if realm == "admin" else "InvalidCronSecret"
    server_errors = [_ref("schemas", "InternalError")]
    if misconfigurable:
        server_errors.insert(0, _ref("schemas", "Misconfiguration"))
    return {
        "400": _response(
            "Two `Authorization` headers (`Send exactly one Authorization header`, with the "
            f"`invalid_request` challenge); {what + ' ' if what else ''}or {BAD_BODY} (no challenge then).",
            _ref("schemas", "BadRequest"),
            **{"WWW-Authenticate": _www_authenticate(realm, "invalid_request", required=False)},
        ),
        "401": _response(
            "No `Authorization` header, another scheme or a malformed value; or a wrong token.",
            {"oneOf": [_ref("schemas", "MissingCredentials"), _ref("schemas", invalid)]},
            **{"WWW-Authenticate": _www_authenticate(realm, None, "invalid_token")},
        ),
        "429": _ref("responses", "Throttled"),
        "500": _response(
            ("`ADMIN_TOKEN` is not set, or " if misconfigurable else "") + "an unexpected server error.",
            {"oneOf": server_errors} if len(server_errors) > 1 else server_errors[0],
        ),
        "503": _ref("responses", "StoreUnavailable"),
    }


def _components() -> dict[str, Any]:
    job_result = _object({
        "success": _fixed(True), "successCount": COUNT, "errorCount": COUNT, "totalOrders": COUNT,
        "ordersWritten": COUNT, "duration": COUNT,
        "regions": _object({
            "fetched": COUNT, "notModified": COUNT,
            "failed": {"type": "array", "items": _object(
                {"regionId": {"type": "integer"}, "error": {"type": "string"}})},
        }),
    })  # fmt: skip
    job = _object(
        {
            "jobId": JOB_ID,
            "jobName": _fixed(FETCH_JOB),
            "trigger": {"type": "string", "enum": [t.value for t in Trigger]},
            "status": {"type": "string", "enum": [s.value for s in JobStatus]},
            "startedAt": {"type": "string", "format": "date-time"},
            "duration": {**COUNT, "description": "Milliseconds: so far while running."},
        },
        {
            "completedAt": {"type": "string", "format": "date-time"},
            "progress": _object({"regionsTotal": COUNT, "regionsDone": COUNT, "ordersStored": COUNT}),
            "result": {**job_result, "description": "Present once completed (DESIGN.md section 4)."},
            "error": {"type": "string", "description": "Why a failed run failed."},
        },
    )
    started = {"jobName": _fixed(FETCH_JOB), "jobId": JOB_ID, "checkStatusAt": STATUS_PATH}
    check = {"type": "string", "enum": ["ok", "unavailable"]}
    return {
        "securitySchemes": {
            "adminToken": {"type": "http", "scheme": "bearer", "description": "A token of `ADMIN_TOKEN`."},
            "cronSecret": {"type": "http", "scheme": "bearer", "description": "`CRON_SECRET`."},
        },
        "headers": {
            "CacheControl": _header("Never cache an answer.", _fixed("no-store")),
            "RetryAfter": _header("Seconds to wait before retrying.", {"type": "integer", "minimum": 1}),
            "Location": _header("The new run's status, relative to the server.", STATUS_PATH),
        },
        "schemas": {
            "Job": job,
            "JobList": _object({"jobs": {"type": "array", "items": _ref("schemas", "Job")}}),
            "Started": _object(
                {"message": _fixed("Job triggered successfully"), **started, "status": _fixed("started")}
            ),
            "Conflict": _object(
                {"error": _fixed("Conflict"), "message": _fixed("Job already in progress"), **started}
            ),
            "MissingCredentials": _error("Unauthorized", MISSING_AUTH),
            "InvalidAdminToken": _error("Unauthorized", "Invalid admin token"),
            "InvalidCronSecret": _error("Unauthorized", "Invalid cron secret"),
            "BadRequest": _error("Bad Request"),
            "JobNotFound": _error(NOT_FOUND["error"], NOT_FOUND["message"]),
            "RouteNotFound": _error("Not Found", "No such route"),
            "Throttled": _error("Too Many Requests", "Too many failed authentication attempts, retry later"),
            "Misconfiguration": _object({"error": _fixed("Server misconfiguration")}),
            "InternalError": _object({"error": _fixed("Internal Server Error")}),
            "StoreUnavailable": _error(
                "Service Unavailable",
                "Job store unavailable, retry later",
                "Server is shutting down, retry later",
            ),
            "Health": _object({"status": _fixed("ok")}),
            "Status": _object({
                "lastSuccessAt": {"type": "string", "format": "date-time", "nullable": True,
                                  "description": "When the newest successful run completed; null: never."},
                "dataAgeSeconds": {**COUNT, "nullable": True, "description": "Seconds since lastSuccessAt."},
                "stale": {"type": "boolean", "description": "No successful run, or the last one is older "
                          "than twice fetchIntervalSeconds."},
                "fetchIntervalSeconds": {"type": "integer", "minimum": 1},
            }),  # fmt: skip
            "Readiness": _object(
                {
                    "status": {"type": "string", "enum": ["ready", "unavailable"]},
                    "checks": _object({"jobStore": check, "marketDatabase": check}),
                }
            ),
        },
        "responses": {
            "BadRequest": _response(f"{BAD_BODY[0].upper()}{BAD_BODY[1:]}.", _ref("schemas", "BadRequest")),
            "Throttled": _response(
                "More than 10 failed authentications (credentials presented and wrong or malformed) "
                "within a minute from this address: every authenticated request from it is refused, "
                "before its credentials are read, until the window ends.",
                _ref("schemas", "Throttled"),
                **{"Retry-After": _ref("headers", "RetryAfter")},
            ),
            "StoreUnavailable": _response(
                "The job store did not answer, or the server is shutting down.",
                _ref("schemas", "StoreUnavailable"),
                **{"Retry-After": _ref("headers", "RetryAfter")},
            ),
        },
    }


def _trigger_responses(realm: str, *, misconfigurable: bool) -> dict[str, Any]:
    link = {
        "jobStatus": {
            "operationId": "getJobStatus",
            "parameters": {"jobId": "$response.body#/jobId"},
            "description": "Follow the run (an admin token is needed).",
        }
    }
    return {
        "202": {
            **_response(
                "The run started in the background.",
                _ref("schemas", "Started"),
                Location=_ref("headers", "Location"),
            ),
            "links": link,
        },
        "409": {
            **_response(
                "A run is in progress (anywhere on the store); nothing was started.",
                _ref("schemas", "Conflict"),
            ),
            "links": link,
        },
        **_admin_responses(realm, misconfigurable=misconfigurable),
    }


def _operation(op_id: str, tag: str, summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"operationId": op_id, "tags": [tag], "summary": summary, "responses": responses, **extra}


def _probe(name: str, tag: str, summary: str, responses: dict[str, Any]) -> dict[str, Any]:
    """GET and HEAD (HEAD: the same status and headers, no body), no credentials."""
    responses = {**responses, "400": _ref("responses", "BadRequest"),
                 "405": _method_not_allowed("GET", "HEAD")}  # fmt: skip
    return {
        "get": _operation(f"get{name}", tag, summary, responses, security=[]),
        "head": _operation(f"head{name}", tag, f"{summary} HEAD: no body.", responses, security=[]),
    }


def _page(name: str, summary: str, media_type: str) -> dict[str, Any]:
    """A file of the dashboard (tornado_admin/static): GET and HEAD, no credentials, a strict CSP."""
    page = {
        "description": "The file, with `Cache-Control: no-cache` and an `ETag`, a strict "
        "`Content-Security-Policy` (no inline script) and `X-Content-Type-Options: nosniff`.",
        "headers": {"Cache-Control": _header("Revalidate before reuse.", _fixed("no-cache")),
                    "ETag": _header("The file's version.", {"type": "string"})},
        "content": {media_type: {"schema": {"type": "string"}}},
    }  # fmt: skip
    responses = {"200": page, "304": {"description": "`If-None-Match` named the current ETag."},
                 "400": _ref("responses", "BadRequest"), "405": _method_not_allowed("GET", "HEAD")}
    return {
        "get": _operation(f"get{name}", "dashboard", summary, responses, security=[]),
        "head": _operation(f"head{name}", "dashboard", f"{summary} HEAD: no body.", responses, security=[]),
    }


def _metrics(settings: Settings, admin: list[dict[str, list]]) -> dict[str, Any]:
    """`GET /metrics` (docs/metrics.md): the admin token unless METRICS_PUBLIC=true."""
    ok = {
        "description": "Prometheus text format 0.0.4 (`text/plain; version=0.0.4; charset=utf-8`), "
        "metric names prefixed `tornado_admin_`; counters are this process's.",
        "headers": {"Cache-Control": _ref("headers", "CacheControl")},
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
    responses = {"200": ok, "400": _ref("responses", "BadRequest"), "405": _method_not_allowed("GET")}
    if not settings.metrics_public:  # the admin routes' refusals, the job store's 503 aside
        responses |= {code: r for code, r in _admin_responses("admin").items() if code != "503"}
    state = "public (`METRICS_PUBLIC=true`)" if settings.metrics_public else "behind the admin token"
    return {"get": _operation("getMetrics", "probes", "Metrics for Prometheus.", responses,
                              security=[] if settings.metrics_public else admin,
                              description=f"On this server the route is {state}.")}


def openapi_document(settings: Settings) -> dict[str, Any]:
    """The document `GET /api/openapi.json` serves: every route, status, header and body."""
    admin, cron = [{"adminToken": []}], [{"cronSecret": []}]
    cron_state = "enabled" if settings.cron_secret else "disabled (`CRON_SECRET` unset): every request is 404"
    limit = {
        "name": "limit", "in": "query", "required": False, "description": "How many runs, newest first.",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIST_LIMIT, "default": 20},
    }  # fmt: skip
    job_id = {"name": "jobId", "in": "path", "required": True, "schema": JOB_ID,
              "description": "An id the server issued; any other value is 404 without a store lookup."}
    cron_responses = {
        **_trigger_responses("cron", misconfigurable=False),
        "404": _response("`CRON_SECRET` is not set: no such route.", _ref("schemas", "RouteNotFound")),
        "405": _method_not_allowed("GET", "POST"),
    }
    cron_summary = "Trigger a run with `CRON_SECRET`, for an external scheduler."
    cron_state = f"On this server the route is {cron_state}. The run's trigger is `cron`."
    health = {"200": _response("The process is alive.", _ref("schemas", "Health"))}
    ready = {
        "200": _response("The job store and the market database both answered within 2 s.",
                         _ref("schemas", "Readiness")),
        "503": _response("Not ready: `checks` names what did not answer.", _ref("schemas", "Readiness")),
    }  # fmt: skip
    this = {"200": _response("This document.", {"type": "object", "required": ["openapi", "info", "paths"]})}
    status = {
        "200": _response("How fresh the market data is (docs/dashboard.md); readable from any origin.",
                         _ref("schemas", "Status"), **{"Access-Control-Allow-Origin": _header(
                             "Any origin may read it: it holds no secret.", _fixed("*"))}),
        "503": _ref("responses", "StoreUnavailable"),
    }  # fmt: skip
    return copy.deepcopy({  # no shared sub-objects, so that a consumer may edit one operation
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "tornado-admin",
            "version": __version__,
            "description": "Admin API of the EVE Online market-order server: trigger and follow the "
            "fetch-market-data job; health and readiness probes. Bodies are compact JSON.",
        },
        "tags": [{"name": "admin"}, {"name": "cron"}, {"name": "probes"}, {"name": "meta"},
                 {"name": "dashboard"}],
        "paths": {
            "/api/admin/trigger-fetch": {
                "post": _operation(
                    "triggerFetch", "admin", "Start a fetch-market-data run now, unless one is running.",
                    {**_trigger_responses("admin", misconfigurable=True),
                     "405": _method_not_allowed("POST", message="Use POST to trigger job")},
                    security=admin,
                ),
            },
            "/api/admin/job-status/{jobId}": {
                "get": _operation(
                    "getJobStatus", "admin", "One run, running or ended, while it is in the history.",
                    {"200": _response("The run.", _ref("schemas", "Job")),
                     "404": _response("Unknown, expired or malformed id.", _ref("schemas", "JobNotFound")),
                     "405": _method_not_allowed("GET"),
                     **_admin_responses("admin")},
                    security=admin, parameters=[job_id],
                ),
            },
            "/api/admin/jobs": {
                "get": _operation(
                    "listJobs", "admin", "Recent runs, newest first.",
                    {"200": _response("The runs.", _ref("schemas", "JobList")),
                     "405": _method_not_allowed("GET"),
                     **_admin_responses("admin", what=f"`limit` not an integer from 1 to {MAX_LIST_LIMIT};")},
                    security=admin, parameters=[limit],
                ),
            },
            "/api/cron/fetch-market-data": {
                method: _operation(f"cronFetch{method.capitalize()}", "cron", cron_summary, cron_responses,
                                   security=cron, description=cron_state)
                for method in ("get", "post")
            },
            "/healthz": _probe("Health", "probes", "Liveness; no auth.", health),
            "/readyz": _probe("Ready", "probes", "Readiness; no auth.", ready),
            "/metrics": _metrics(settings, admin),
            "/api/openapi.json": _probe("OpenApi", "meta", "This document; no auth.", this),
            "/api/status": _probe("Status", "probes", "Data freshness; no auth, no secrets.", status),
            "/admin": _page("Dashboard", "The dashboard page; it asks for the admin token.", "text/html"),
            "/admin/admin.js": _page("DashboardScript", "The dashboard's script.", "text/javascript"),
            "/admin/admin.css": _page("DashboardStyle", "The dashboard's style sheet.", "text/css"),
        },
        "components": _components(),
    })  # fmt: skip


class OpenApiHandler(JsonHandler):
    """`GET /api/openapi.json`: the document, compact like every answer; no auth (no secrets in it).

    This module imports tornado_admin.handlers, so the route is added where that cannot loop: in
    app.make_app, or with an import inside handlers.routes (a top-level import there fails).
    """

    ALLOWED = ("GET", "HEAD")

    def get(self) -> None:
        self.reply(200, openapi_document(self.context.settings))

    head = get
