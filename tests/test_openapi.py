"""The OpenAPI document (tornado_admin/openapi.py) against the real server.

schemathesis generates requests from the document (valid ones, invalid ones, and methods the
document does not list) and sends them to the real app on a real port; every answer must be
documented (status, Content-Type, headers, body), none may be a 5xx, and every 405 must carry
`Allow` naming exactly the methods the document lists for that path. Once with valid credentials
(an admin token on the admin routes, the cron secret on the cron route), once without.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
import schemathesis
import tornado.httpserver
import tornado.netutil
import tornado.web
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from backends.base import SystemClock
from tests.api_helpers import CRON_SECRET, TOKEN, GatedWork, bearer, build_context
from tornado_admin.app import make_app
from tornado_admin.context import AppContext
from tornado_admin.handlers import routes
from tornado_admin.market.orders import open_order_store
from tornado_admin.openapi import OPENAPI_VERSION, OpenApiHandler, openapi_document
from tornado_admin.settings import settings_from

TRIGGER = "/api/admin/trigger-fetch"
STATUS = "/api/admin/job-status/{jobId}"
RESULT = {
    "success": True, "successCount": 1, "errorCount": 1, "totalOrders": 10, "ordersWritten": 10,
    "duration": 5, "regions": {"fetched": 1, "notModified": 0,
                               "failed": [{"regionId": 10000002, "error": "HTTP 503"}]},
}  # fmt: skip


def allow_names_the_documented_methods(ctx: Any, response: Any, case: Any) -> None:
    """Every 405 carries `Allow`, listing exactly the methods the document gives the path."""
    if response.status_code != 405:
        return
    allow = response.headers.get("allow")
    assert allow, f"405 to {case.method} {case.formatted_path} without an Allow header"
    declared = {method.upper() for method in case.operation.schema.raw_schema["paths"][case.operation.path]}
    assert {m.strip() for m in allow[0].split(",")} == declared, (allow, declared)


CONFORMANCE = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
CHECKS = [
    *CONFORMANCE,
    unsupported_method,  # undocumented methods: 405 with Allow (schemathesis's coverage phase)
    allow_names_the_documented_methods,
]


class LiveServer:
    """The app of tornado_admin.app on 127.0.0.1:<free port>, on an asyncio loop of its own in a
    background thread (schemathesis calls it with blocking `requests`). Its job is a GatedWork:
    a run stays running until the test opens the gate."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.work = GatedWork()
        self.work.result = RESULT
        self.port = 0
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), name="openapi-live-server")
        self._thread.start()
        assert self._ready.wait(10), "the server did not start"
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        assert self._thread is not None
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(10)
        assert not self._thread.is_alive(), "the server did not stop"

    def in_loop(self, action: Callable[[], object]) -> None:
        """Run `action` on the server's loop (the job's asyncio objects live there) and wait for it."""

        async def call() -> None:
            action()

        asyncio.run_coroutine_threadsafe(call(), self.loop).result(5)

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            order_store = await open_order_store(self.database_url, max_writers=2)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            raise
        try:
            context = build_context(order_store, self.work, SystemClock(), {"CRON_SECRET": CRON_SECRET})
            http = tornado.httpserver.HTTPServer(self._app(context))
            sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
            http.add_sockets(sockets)
            self.port = sockets[0].getsockname()[1]
            self._ready.set()
            await self._stopping.wait()
            http.stop()
            self.work.finish()
            await context.runner.shutdown()
            await http.close_all_connections()
        finally:
            await order_store.close()

    @staticmethod
    def _app(context: AppContext) -> tornado.web.Application:
        app = make_app(context)
        # The route of OpenApiHandler, for as long as handlers.routes does not hold it (a rule
        # added here only answers paths that the app's own routes leave unmatched).
        app.add_handlers(r".*", [(r"/api/openapi\.json", OpenApiHandler, {"context": context})])
        return app


SETTINGS = settings_from({"ADMIN_TOKEN": TOKEN, "CRON_SECRET": CRON_SECRET})


def _schema(*, credentials: bool) -> Any:
    """The document as schemathesis sees it, with an explicit config (so that no schemathesis.toml
    around the checkout changes the run): valid and invalid inputs, 25 examples per operation,
    derandomized. With credentials, schemathesis sends the right one to each route and generates
    no other (a wrong one is a failed authentication, and 11 would engage the throttle); without,
    it sends none or made-up ones."""
    config: dict[str, Any] = {
        "seed": 20261204,
        "generation": {"mode": "all", "max-examples": 25, "deterministic": True, "database": "none",
                       "with-security-parameters": not credentials},
    }  # fmt: skip
    if credentials:
        config["auth"] = {"openapi": {"adminToken": {"bearer": TOKEN}, "cronSecret": {"bearer": CRON_SECRET}}}
    document = openapi_document(SETTINGS)
    return schemathesis.openapi.from_dict(document, config=schemathesis.Config.from_dict(config))


with_credentials = _schema(credentials=True)
without_credentials = _schema(credentials=False)


def _serve(tmp_path: Path) -> Iterator[LiveServer]:
    """A server whose history holds one run of each kind: failed, completed, and one still
    running (so triggers get 409). Every answer on the way is checked against the document."""
    server = LiveServer(f"sqlite:///{tmp_path}/market.db")
    server.start()
    try:
        failed = _run_to_the_end(server, error="cannot list regions: test")
        completed = _run_to_the_end(server)
        running = _call(server, TRIGGER, "POST").json()["jobId"]
        deadline = time.monotonic() + 5
        while "progress" not in _call(server, STATUS, "GET", jobId=running).json():
            assert time.monotonic() < deadline, "the run never reported progress"
            time.sleep(0.01)
        listed = _call(server, "/api/admin/jobs", "GET").json()["jobs"]
        assert [(job["jobId"], job["status"]) for job in listed] == [
            (running, "running"), (completed, "completed"), (failed, "failed")]
        yield server
    finally:
        server.stop()


@pytest.fixture
def server(tmp_path) -> Iterator[LiveServer]:
    yield from _serve(tmp_path)


def _run_to_the_end(server: LiveServer, error: str | None = None) -> str:
    """Trigger a run, let it end (failed with `error`, else completed), return its id."""
    job_id = _call(server, TRIGGER, "POST").json()["jobId"]
    server.in_loop(lambda: server.work.finish(error=error))
    deadline = time.monotonic() + 5
    while _call(server, STATUS, "GET", jobId=job_id).json()["status"] == "running":
        assert time.monotonic() < deadline, "the run never ended"
        time.sleep(0.01)
    server.in_loop(_reset_gate(server.work))
    return job_id


def _reset_gate(work: GatedWork) -> Callable[[], None]:
    def reset() -> None:
        work.gate, work.fail_with = asyncio.Event(), None

    return reset


def _call(server: LiveServer, path: str, method: str, **path_parameters: str) -> Any:
    case = without_credentials[path][method].Case(path_parameters=path_parameters or None, headers=bearer())
    # Conformance only: ignored_auth would probe with a wrong token, a failure the throttle counts.
    response = case.call_and_validate(base_url=server.base_url, checks=CONFORMANCE)
    assert response.status_code < 300, response.text
    return response


def never_throttled(ctx: Any, response: Any, case: Any) -> None:
    """With valid credentials nothing counts as a failed authentication: a 429 would mean the run
    (or the throttle) went wrong, and the rest of the run would only see 429s."""
    assert response.status_code != 429, f"{case.method} {case.formatted_path} throttled"


# A server per operation (the fixture is per test, and schemathesis makes one test of each
# operation), shared by that operation's examples: its throttle and its runs are meant to carry
# over from one example to the next, hence no function_scoped_fixture health check.
ONE_SERVER_PER_OPERATION = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


@with_credentials.parametrize()
@ONE_SERVER_PER_OPERATION
def test_every_answer_with_valid_credentials_matches_the_document(case, server):
    # Not ignored_auth here: it re-sends every 2xx with a wrong token, failures the throttle counts.
    case.call_and_validate(base_url=server.base_url, checks=[*CHECKS, never_throttled])


@without_credentials.parametrize()
@ONE_SERVER_PER_OPERATION
def test_every_answer_without_credentials_matches_the_document(case, server):
    # ignored_auth: no 2xx from an authenticated route without a valid credential.
    case.call_and_validate(base_url=server.base_url, checks=[*CHECKS, ignored_auth])


@pytest.mark.parametrize("app_settings", [SETTINGS, settings_from({})], ids=["configured", "unconfigured"])
def test_the_document_is_valid_openapi(app_settings):
    document = openapi_document(app_settings)
    assert document["openapi"] == OPENAPI_VERSION == "3.0.3"
    schemathesis.openapi.from_dict(document).validate()  # the OpenAPI 3.0 meta-schema, Schema Objects too


def test_the_served_document_is_the_built_one(server):
    for method in ("GET", "HEAD"):
        response = requests.request(method, server.base_url + "/api/openapi.json", timeout=5)
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/json; charset=UTF-8"
        assert response.headers["Cache-Control"] == "no-store"
    response = requests.get(server.base_url + "/api/openapi.json", timeout=5)
    assert response.content == orjson.dumps(openapi_document(SETTINGS))  # compact, like every answer
    response = requests.post(server.base_url + "/api/openapi.json", timeout=5)
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, HEAD"


def test_every_route_is_documented():
    routed = [pattern for pattern, *_ in routes(None)]  # type: ignore[arg-type]
    served = {pattern.replace("(.*)", "{jobId}").replace("\\.", ".") for pattern in routed}
    assert served | {"/api/openapi.json"} == set(openapi_document(SETTINGS)["paths"])


# str.isdigit() is true for any Unicode digit: "²" once crashed int(), "٣" was read as 3.
@pytest.mark.parametrize("limit", ["²", "٣"])
def test_a_limit_in_non_ascii_digits_is_400(server, limit):
    response = requests.get(server.base_url + "/api/admin/jobs", params={"limit": limit}, headers=bearer(),
                            timeout=5)
    assert response.status_code == 400, response.text
