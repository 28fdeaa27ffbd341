"""Fixtures of the HTTP API tests: the real app on pytest-tornado's loop, with a job whose pace
the test controls (a `GatedWork`) or the real market fetch."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse

from backends.memory import MemoryJobStore
from tornado_admin.context import AppContext
from tornado_admin.jobs import JobFailedError, JobRunner, RunContext, Work
from tornado_admin.market.orders import OrderStore
from tornado_admin.settings import settings_from

TOKEN = "test-admin-token-" + "t" * 30
OTHER_TOKEN = "rotated-admin-token-" + "r" * 30
CRON_SECRET = "cron-secret-" + "c" * 30


class GatedWork:
    """A job that reports progress and then waits until the test opens the gate."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.started = asyncio.Event()
        self.runs = 0
        self.fail_with: BaseException | None = None
        self.result: Mapping[str, Any] = {"success": True, "successCount": 1}

    async def __call__(self, run: RunContext) -> Mapping[str, Any]:
        self.runs += 1
        run.report({"regionsTotal": 2, "regionsDone": 1, "ordersStored": 10})
        self.started.set()
        await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return self.result

    def finish(self, *, error: str | None = None) -> None:
        if error is not None:
            self.fail_with = JobFailedError(error)
        self.gate.set()


def build_context(
    order_store: OrderStore,
    work: Work,
    clock,
    env: Mapping[str, str] | None = None,
    **runner_options: Any,
) -> AppContext:
    settings = settings_from({"ADMIN_TOKEN": f"{TOKEN},{OTHER_TOKEN}", **(env or {})})
    store = MemoryJobStore(clock, settings.job_history_limit)
    runner = JobRunner(
        store, work, lease_seconds=settings.job_lease_seconds,
        max_duration_seconds=settings.job_max_duration_seconds, **runner_options,
    )
    return AppContext(settings, runner, store, order_store, clock)


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def body_of(response) -> dict[str, Any]:
    return json.loads(response.body)


def fetcher(
    http_client: AsyncHTTPClient, base_url: str, default_path: str = "/"
) -> Callable[..., Awaitable[HTTPResponse]]:
    """`await fetch(path, method=…, headers=…, body=…)` on the app under test: any method, the
    path sent as given (no dot-segment removal), and the answer whatever its status."""

    async def fetch(path: str = default_path, method: str = "GET", headers=None, body=None) -> HTTPResponse:
        if body is None and method in ("POST", "PUT", "PATCH"):
            body = b""
        request = HTTPRequest(base_url + path, method=method, headers=headers, body=body,
                              allow_nonstandard_methods=True)
        return await http_client.fetch(request, raise_error=False)

    return fetch
