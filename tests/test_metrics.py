"""`GET /metrics` (tornado_admin/metrics.py): the real app in process over real HTTP, runs driven by
the fake clock or swept from the real fake ESI, a real Redis of the test's own taken down or
frozen, and once the server process itself. The text is read with prometheus_client's parser."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tornado.httputil import HTTPHeaders

from backends.base import Trigger, open_store
from tests.api_helpers import OTHER_TOKEN, TOKEN, GatedWork, bearer, body_of, build_context, fetcher
from tests.conftest import until
from tests.server_helpers import server_env
from tests.sweep_helpers import COMPATIBILITY_DATE, FAST_RETRY, USER_AGENT
from tornado_admin.app import fetch_work, make_app
from tornado_admin.context import AppContext
from tornado_admin.fake_esi import FakeEsi, RegionSpec
from tornado_admin.fake_esi.limits import TokenBucket
from tornado_admin.jobs import JobRunner
from tornado_admin.market.esi import EsiClient
from tornado_admin.metrics import CONTENT_TYPE, Metrics
from tornado_admin.settings import settings_from

# Leases long enough that advancing the fake clock never lapses one; 100 s to the time-out.
SLOW_LEASE = {"JOB_LEASE_SECONDS": "3600", "JOB_MAX_DURATION_SECONDS": "100"}
WRONG = "wrong-admin-token-" + "w" * 30
Values = dict[tuple[str, frozenset], float]


def parse(text: str) -> Values:
    """Every sample: (name, its labels) -> value. Fails on anything the format does not allow."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(values: Values, name: str, **labels: str) -> float:
    return values[(name, frozenset(labels.items()))]


def names(values: Values) -> set[str]:
    return {name for name, _ in values}


# -- fixtures: the app under test ------------------------------------------------------------------


@pytest.fixture
def database_url(sqlite_url):
    return sqlite_url


@pytest.fixture
def env():
    return {}


@pytest.fixture
def work():
    return GatedWork()


@pytest.fixture
def context(order_store, work, clock, env, io_loop):
    """Runs of a GatedWork, timed by the fake clock."""
    context = build_context(order_store, work, clock, {**SLOW_LEASE, **env}, timer=clock)
    context.runner.listener = context.metrics
    yield context
    io_loop.run_sync(context.runner.shutdown)


@pytest.fixture
def app_kind():
    return "gated"  # "sweep": the real fetch job against the fake ESI; "redis": a Redis to take down


@pytest.fixture
def app(request, app_kind):
    return make_app(request.getfixturevalue({"gated": "context", "sweep": "sweep_context",
                                             "redis": "redis_context"}[app_kind]))


@pytest.fixture
def fetch(http_client, base_url):
    return fetcher(http_client, base_url, "/metrics")


@pytest.fixture
def scrape(fetch):
    async def scrape(headers=None) -> Values:
        response = await fetch(headers=bearer() if headers is None else headers)
        assert response.code == 200, response.body
        assert response.headers["Content-Type"] == CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
        assert response.headers["Cache-Control"] == "no-store"
        text = response.body.decode()
        for leaked in (TOKEN, OTHER_TOKEN, WRONG, "Bearer"):
            assert leaked not in text
        return parse(text)

    return scrape


async def run_to_the_end(context: AppContext, work: GatedWork, trigger: Trigger = Trigger.MANUAL, *,
                         seconds: float = 0, error: str | None = None) -> None:
    """One run through the runner, lasting `seconds` of fake time, completed or failed with `error`."""
    await context.runner.start(trigger)
    await until(lambda: work.started.is_set())
    context.clock.advance(seconds)
    work.finish(error=error)
    await until(lambda: not context.runner.active)
    work.gate, work.started, work.fail_with = type(work.gate)(), type(work.started)(), None


# -- runs ------------------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_runs_are_counted_by_trigger_and_status_with_their_duration(scrape, context, work, clock):
    before = await scrape()
    for trigger in ("manual", "schedule", "cron"):  # every series exists from the start, at 0
        assert value(before, "tornado_admin_runs_started_total", trigger=trigger) == 0
        for status in ("completed", "failed"):
            assert value(before, "tornado_admin_runs_finished_total", trigger=trigger, status=status) == 0

    work.result = {"success": True, "successCount": 3, "errorCount": 2}
    await run_to_the_end(context, work, seconds=42)
    work.result = {"success": True, "errorCount": -1}  # nonsense from the work is ignored, not a 500
    await run_to_the_end(context, work, seconds=1)
    await run_to_the_end(context, work, seconds=3, error="cannot list regions: test")
    # A run past JOB_MAX_DURATION_SECONDS: cancelled, failed "timed out".
    await context.runner.start(Trigger.CRON)
    await until(lambda: work.started.is_set())
    clock.advance(100)
    await until(lambda: not context.runner.active)

    v = await scrape()
    assert value(v, "tornado_admin_runs_started_total", trigger="manual") == 3
    assert value(v, "tornado_admin_runs_started_total", trigger="cron") == 1
    assert value(v, "tornado_admin_runs_finished_total", trigger="manual", status="completed") == 2
    assert value(v, "tornado_admin_runs_finished_total", trigger="manual", status="failed") == 1
    assert value(v, "tornado_admin_runs_finished_total", trigger="cron", status="failed") == 1
    assert value(v, "tornado_admin_runs_in_progress") == 0
    completed = {"trigger": "manual", "status": "completed"}
    assert value(v, "tornado_admin_run_duration_seconds_count", **completed) == 2
    assert value(v, "tornado_admin_run_duration_seconds_sum", **completed) == 43
    assert value(v, "tornado_admin_run_duration_seconds_bucket", le="30.0", **completed) == 1
    assert value(v, "tornado_admin_run_duration_seconds_bucket", le="60.0", **completed) == 2
    timed_out = {"trigger": "cron", "status": "failed"}
    assert value(v, "tornado_admin_run_duration_seconds_bucket", le="60.0", **timed_out) == 0
    assert value(v, "tornado_admin_run_duration_seconds_bucket", le="120.0", **timed_out) == 1
    # GatedWork reports 10 orders stored per run, the timed-out one included (they were committed).
    assert value(v, "tornado_admin_orders_stored_total") == 40
    assert value(v, "tornado_admin_regions_failed_total") == 2


@pytest.mark.gen_test
async def test_a_run_in_progress_shows(scrape, context, work):
    await context.runner.start(Trigger.MANUAL)
    await until(lambda: work.started.is_set())
    v = await scrape()
    assert value(v, "tornado_admin_runs_in_progress") == 1
    assert value(v, "tornado_admin_runs_started_total", trigger="manual") == 1
    assert value(v, "tornado_admin_runs_finished_total", trigger="manual", status="completed") == 0
    work.finish()


# -- data age --------------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_data_age_comes_from_the_last_success_in_the_store(scrape, context, work, clock):
    v = await scrape()
    assert value(v, "tornado_admin_job_store_up") == 1
    assert value(v, "tornado_admin_data_age_seconds") == float("inf")  # never fetched: age alerts fire
    assert "tornado_admin_last_success_timestamp_seconds" not in names(v)

    await run_to_the_end(context, work)
    done_ms = clock.now_ms()
    clock.advance(90.5)
    await run_to_the_end(context, work, error="cannot list regions: test")  # a failure is no fresh data
    v = await scrape()
    assert value(v, "tornado_admin_data_age_seconds") == 90.5
    assert value(v, "tornado_admin_last_success_timestamp_seconds") == done_ms / 1000


@pytest.fixture
def redis_context(private_redis, order_store, clock, io_loop):
    settings = settings_from({"ADMIN_TOKEN": TOKEN})
    store = io_loop.run_sync(lambda: open_store(f"redis://127.0.0.1:{private_redis.port}/0", clock=clock,
                                                history_limit=10))
    metrics = Metrics()
    runner = JobRunner(store, GatedWork(), lease_seconds=60, max_duration_seconds=600, listener=metrics)
    yield AppContext(settings, runner, store, order_store, clock, metrics)
    io_loop.run_sync(runner.shutdown)
    io_loop.run_sync(store.close)


@pytest.mark.parametrize("app_kind", ["redis"])
@pytest.mark.gen_test(timeout=30)
async def test_a_store_down_or_frozen_is_job_store_up_0_never_a_500(scrape, app_kind, private_redis):
    assert value(await scrape(), "tornado_admin_job_store_up") == 1

    private_redis.stop()
    v = await scrape()
    assert value(v, "tornado_admin_job_store_up") == 0
    assert "tornado_admin_data_age_seconds" not in names(v)  # unknown, not stale
    assert value(v, "tornado_admin_runs_started_total", trigger="manual") == 0  # the rest is there

    private_redis.start()
    assert value(await scrape(), "tornado_admin_job_store_up") == 1

    os.kill(private_redis.process.pid, signal.SIGSTOP)  # accepts, never answers
    started = time.monotonic()
    v = await scrape()
    # The throttle's read and the scrape's each give up after 2 s: well inside Prometheus' 10 s.
    assert time.monotonic() - started < 8
    assert value(v, "tornado_admin_job_store_up") == 0
    os.kill(private_redis.process.pid, signal.SIGCONT)


# -- authentication --------------------------------------------------------------------------------


def duplicate() -> HTTPHeaders:
    headers = HTTPHeaders()
    headers.add("Authorization", f"Bearer {TOKEN}")
    headers.add("Authorization", f"Bearer {TOKEN}")
    return headers


@pytest.mark.gen_test
async def test_refusals_are_the_admin_routes_and_failures_are_counted(fetch, scrape):
    attempts = {"invalid": bearer(WRONG), "malformed": {"Authorization": f"Basic {WRONG}"},
                "duplicate": duplicate(), "missing": {}}  # fmt: skip
    for headers in attempts.values():
        refused, admin = await fetch(headers=headers), await fetch("/api/admin/jobs", headers=headers)
        assert refused.code == admin.code in (400, 401)
        assert body_of(refused) == body_of(admin)
        assert refused.headers.get("WWW-Authenticate") == admin.headers.get("WWW-Authenticate")
        assert refused.headers["Content-Type"] == "application/json; charset=UTF-8"
    assert (await fetch(headers={})).headers["WWW-Authenticate"] == 'Bearer realm="admin"'
    assert (await fetch(headers=bearer(OTHER_TOKEN))).code == 200  # any configured token

    v = await scrape()
    for reason in ("invalid", "malformed", "duplicate"):  # one on /metrics, one on /api/admin/jobs
        assert value(v, "tornado_admin_auth_failures_total", realm="admin", reason=reason) == 2
        assert value(v, "tornado_admin_auth_failures_total", realm="cron", reason=reason) == 0
    assert not any(dict(labels).get("reason") == "missing" for _, labels in v)

    response = await fetch(method="POST", headers=bearer())
    assert response.code == 405
    assert response.headers["Allow"] == "GET"
    assert body_of(response) == {"error": "Method Not Allowed", "message": "Use GET"}


@pytest.mark.gen_test
async def test_other_methods_are_405_before_the_credentials_are_read(fetch, scrape):
    for method in ("HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "FOO"):
        for headers in ({}, bearer(), bearer(WRONG)):
            response = await fetch(method=method, headers=headers)
            assert (response.code, response.headers["Allow"]) == (405, "GET"), (method, response.body)
    # The wrong tokens above were never judged: none counted, no throttle.
    assert value(await scrape(), "tornado_admin_auth_failures_total", realm="admin", reason="invalid") == 0


@pytest.mark.gen_test
async def test_wrong_tokens_on_metrics_engage_the_shared_throttle(fetch, scrape):
    for _ in range(10):  # the limit: 10 a minute
        assert (await fetch(headers=bearer(WRONG))).code == 401
    assert (await fetch(headers=bearer(WRONG))).code == 429  # the 11th
    for path in ("/metrics", "/api/admin/jobs"):  # even with the right token now
        response = await fetch(path, headers=bearer())
        assert response.code == 429, response.body
        assert int(response.headers["Retry-After"]) >= 1


@pytest.mark.parametrize("env", [{"METRICS_PUBLIC": "true"}])
@pytest.mark.gen_test
async def test_metrics_public_needs_no_token_and_counts_none(fetch, scrape, env):
    await scrape(headers={})
    for _ in range(12):  # wrong tokens are not even read: not failures, no throttle
        await scrape(headers=bearer(WRONG))
    v = await scrape(headers={})
    assert value(v, "tornado_admin_auth_failures_total", realm="admin", reason="invalid") == 0
    assert (await fetch("/api/admin/jobs", headers=bearer())).code == 200
    assert (await fetch("/api/admin/jobs")).code == 401  # the admin routes still need it
    assert (await fetch(method="POST")).code == 405


@pytest.mark.parametrize("env", [{"ADMIN_TOKEN": ""}, {"ADMIN_TOKEN": "", "METRICS_PUBLIC": "true"}],
                         ids=["private", "public"])
@pytest.mark.gen_test
async def test_without_admin_token_metrics_are_500_misconfiguration_unless_public(fetch, env):
    response = await fetch(headers=bearer())
    if env.get("METRICS_PUBLIC"):
        assert response.code == 200
        assert "tornado_admin_runs_started_total" in response.body.decode()
    else:
        assert (response.code, body_of(response)) == (500, {"error": "Server misconfiguration"})


def test_metrics_public_must_be_a_boolean():
    assert settings_from({}).metrics_public is False
    assert settings_from({"METRICS_PUBLIC": "yes"}).metrics_public is True
    with pytest.raises(ValueError, match="^METRICS_PUBLIC must be true or false$"):
        settings_from({"METRICS_PUBLIC": "sometimes"})


# -- a real sweep against the fake ESI -------------------------------------------------------------

FAILING = 10000001
REGIONS = {FAILING: RegionSpec(500, fault="json503"), 10000002: 2500, 10000030: 0, 10000043: 1000}
PAGES_HELD = 3 + 1 + 1  # 10000002's three pages, 10000030's empty one, 10000043's one


@pytest.fixture
def esi(io_loop) -> Iterator[FakeEsi]:
    server = FakeEsi(REGIONS)
    io_loop.run_sync(server.start)
    yield server
    io_loop.run_sync(server.stop)


@pytest.fixture
def sweep_context(esi, order_store, clock, io_loop):
    """The real fetch job, one ESI request at a time (so every limit pause is its own)."""
    settings = settings_from({"ADMIN_TOKEN": TOKEN, "ESI_CONCURRENCY": "1"})

    async def open_client() -> EsiClient:
        return EsiClient.open(esi.url, user_agent=USER_AGENT, compatibility_date=COMPATIBILITY_DATE,
                              concurrency=1, retry=FAST_RETRY)

    client = io_loop.run_sync(open_client)
    context = build_context(order_store, fetch_work(settings, client, order_store, clock), clock,
                            {"ESI_CONCURRENCY": "1"})
    context = dataclasses.replace(context, metrics=Metrics(client))
    context.runner.listener = context.metrics
    yield context
    io_loop.run_sync(context.runner.shutdown)
    io_loop.run_sync(client.close)


@pytest.mark.parametrize("app_kind", ["sweep"])
@pytest.mark.gen_test(timeout=30)
async def test_after_sweeps_the_esi_counters_say_what_happened(scrape, app_kind, sweep_context, esi, clock):
    esi.inject("420", reset_seconds=1)  # the first request, /universe/regions: a 2 s pause for all
    esi.inject("429", region_id=10000043, retry_after=1)
    await sweep_context.runner.start(Trigger.MANUAL)
    await until(lambda: not sweep_context.runner.active, timeout_seconds=20)

    v = await scrape()
    by_status = esi.stats()["by_status"]
    assert by_status[503] == FAST_RETRY.attempts  # the failing region, tried and given up
    for code, count in by_status.items():  # what the client counted is what ESI answered
        assert value(v, "tornado_admin_esi_requests_total", code=str(code)) == count
    assert value(v, "tornado_admin_esi_pauses_total", limit="error_limit") == 1
    assert value(v, "tornado_admin_esi_pauses_total", limit="rate_limit") == 1
    assert value(v, "tornado_admin_esi_not_modified_total") == 0
    assert value(v, "tornado_admin_regions_failed_total") == 1
    assert value(v, "tornado_admin_orders_stored_total") == 2500 + 1000
    assert value(v, "tornado_admin_runs_finished_total", trigger="manual", status="completed") == 1
    assert value(v, "tornado_admin_data_age_seconds") == 0
    # The budgets as ESI's last answer gave them: errors since the 420's window ended, tokens spent.
    [limited] = [i for i, r in enumerate(esi.requests) if r.status == 420]
    errors = sum(r.status >= 400 for r in esi.requests[limited + 1:])
    assert value(v, "tornado_admin_esi_error_limit_remain") == 100 - errors
    spent = sum(TokenBucket.cost(r.status) for r in esi.requests if r.region_id is not None)
    assert value(v, "tornado_admin_esi_rate_limit_remaining") == 12_000 - spent
    assert value(v, "tornado_admin_esi_pause_remaining_seconds") == 0

    clock.advance(301)  # past Expires: every stored page is asked again, conditionally
    await sweep_context.runner.start(Trigger.MANUAL)
    await until(lambda: not sweep_context.runner.active, timeout_seconds=20)
    v = await scrape()
    assert value(v, "tornado_admin_esi_not_modified_total") == PAGES_HELD
    assert value(v, "tornado_admin_esi_requests_total", code="304") == PAGES_HELD
    assert value(v, "tornado_admin_orders_stored_total") == 2500 + 1000  # nothing rewritten
    assert value(v, "tornado_admin_regions_failed_total") == 2
    assert value(v, "tornado_admin_run_duration_seconds_count", trigger="manual", status="completed") == 2


# -- the server process ----------------------------------------------------------------------------


def test_the_server_wires_metrics_to_its_runner_and_esi_client(servers, tmp_path):
    esi = FakeEsi({10000043: 1500})
    with esi.run_in_thread():
        server = servers(server_env(tmp_path, esi.url), tmp_path)
        server.wait_ready()
        code, started = server.request("/api/admin/trigger-fetch", "POST", bearer())
        assert code == 202
        deadline = time.monotonic() + 15
        while server.request(started["checkStatusAt"], headers=bearer())[1]["status"] == "running":
            assert time.monotonic() < deadline, "the run never ended"
            time.sleep(0.05)

        request = urllib.request.Request(server.url("/metrics"), headers=bearer())
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.headers["Content-Type"] == CONTENT_TYPE
            v = parse(response.read().decode())
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(server.url("/metrics"), timeout=5)
        assert refused.value.code == 401
        assert json.loads(refused.value.read())["error"] == "Unauthorized"
    assert value(v, "tornado_admin_runs_finished_total", trigger="manual", status="completed") == 1
    assert value(v, "tornado_admin_orders_stored_total") == 1500
    assert value(v, "tornado_admin_esi_requests_total", code="200") == esi.stats()["by_status"][200] == 3
    assert value(v, "tornado_admin_job_store_up") == 1
    assert 0 <= value(v, "tornado_admin_data_age_seconds") < 15
    assert abs(value(v, "tornado_admin_clock_offset_seconds")) < 0.5  # no step being absorbed
    assert server.stop() == 0
