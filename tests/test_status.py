"""`GET /api/status`: the data's freshness for front ends, over real HTTP against the real app, with
the fake clock moving time and a real Redis (of this test alone) going down."""

from __future__ import annotations

import shutil

import pytest

from backends.base import Trigger, open_store
from tests.api_helpers import TOKEN, GatedWork, bearer, body_of, build_context, fetcher
from tests.conftest import require_service, until
from tests.redis_helpers import PrivateRedis
from tornado_admin.app import make_app
from tornado_admin.clock import iso_ms
from tornado_admin.context import AppContext
from tornado_admin.jobs import JobRunner
from tornado_admin.settings import settings_from

INTERVAL_SECONDS = 60
NEVER = {"lastSuccessAt": None, "dataAgeSeconds": None, "stale": True,
         "fetchIntervalSeconds": INTERVAL_SECONDS}  # fmt: skip


@pytest.fixture
def database_url(sqlite_url):
    return sqlite_url


@pytest.fixture
def work():
    return GatedWork()


@pytest.fixture
def env():
    return {"FETCH_INTERVAL_SECONDS": str(INTERVAL_SECONDS)}


@pytest.fixture
def context(order_store, work, clock, env, io_loop):
    context = build_context(order_store, work, clock, env)
    yield context
    io_loop.run_sync(context.runner.shutdown)


@pytest.fixture
def store_kind():
    return "memory"  # "redis": a Redis of the test's own, which it can take down


@pytest.fixture
def app(request, store_kind):
    return make_app(request.getfixturevalue("redis_context" if store_kind == "redis" else "context"))


@pytest.fixture
def fetch(http_client, base_url):
    return fetcher(http_client, base_url, "/api/status")


async def run_to_the_end(context: AppContext, work: GatedWork, error: str | None = None) -> None:
    """One run through the runner, ended now (fake time): completed, or failed with `error`."""
    await context.runner.start(Trigger.MANUAL)
    await until(lambda: work.started.is_set())
    work.finish(error=error)
    await until(lambda: not context.runner.active)
    work.gate, work.started, work.fail_with = type(work.gate)(), type(work.started)(), None


def assert_status(response, body: dict) -> None:
    assert response.code == 200, response.body
    assert response.headers["Content-Type"] == "application/json; charset=UTF-8"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert body_of(response) == body


@pytest.mark.gen_test
async def test_before_any_successful_run_there_is_no_data_and_it_is_stale(fetch):
    assert_status(await fetch(), NEVER)


@pytest.mark.gen_test
async def test_age_grows_with_time_and_turns_stale_past_twice_the_interval(fetch, context, work, clock):
    await run_to_the_end(context, work)
    done_ms = clock.now_ms()
    fresh = {"lastSuccessAt": iso_ms(done_ms), "fetchIntervalSeconds": INTERVAL_SECONDS}
    assert_status(await fetch(), {**fresh, "dataAgeSeconds": 0, "stale": False})

    clock.advance(2 * INTERVAL_SECONDS - 0.001)  # one missed run is tolerated
    assert_status(await fetch(), {**fresh, "dataAgeSeconds": 2 * INTERVAL_SECONDS - 1, "stale": False})
    clock.advance(0.001)  # exactly twice the interval: still not stale
    assert_status(await fetch(), {**fresh, "dataAgeSeconds": 2 * INTERVAL_SECONDS, "stale": False})
    clock.advance(0.001)
    assert_status(await fetch(), {**fresh, "dataAgeSeconds": 2 * INTERVAL_SECONDS, "stale": True})

    await run_to_the_end(context, work)  # a new success: fresh again
    assert_status(await fetch(), {**fresh, "lastSuccessAt": iso_ms(clock.now_ms()),
                                  "dataAgeSeconds": 0, "stale": False})


@pytest.mark.gen_test
async def test_failed_and_running_runs_do_not_make_data_fresh(fetch, context, work, clock):
    await run_to_the_end(context, work, error="cannot list regions: test")
    assert_status(await fetch(), NEVER)

    await run_to_the_end(context, work)
    done_ms = clock.now_ms()
    clock.advance(3 * INTERVAL_SECONDS)
    await run_to_the_end(context, work, error="cannot list regions: test")
    await context.runner.start(Trigger.MANUAL)  # and one still running
    await until(lambda: work.started.is_set())
    assert_status(await fetch(), {"lastSuccessAt": iso_ms(done_ms), "dataAgeSeconds": 3 * INTERVAL_SECONDS,
                                  "stale": True, "fetchIntervalSeconds": INTERVAL_SECONDS})


@pytest.mark.parametrize("env", [{"FETCH_INTERVAL_SECONDS": str(INTERVAL_SECONDS), "JOB_HISTORY_LIMIT": "1"}])
@pytest.mark.gen_test
async def test_the_last_success_is_kept_after_the_history_dropped_it(fetch, context, work, clock):
    await run_to_the_end(context, work)
    done_ms = clock.now_ms()
    for _ in range(2):
        clock.advance(1)
        await run_to_the_end(context, work, error="cannot list regions: test")
    jobs = body_of(await fetch("/api/admin/jobs", headers=bearer()))["jobs"]
    assert [job["status"] for job in jobs] == ["failed"]  # the success left the history
    assert body_of(await fetch())["lastSuccessAt"] == iso_ms(done_ms)


@pytest.mark.gen_test
async def test_no_credentials_needed_and_wrong_ones_are_neither_refused_nor_counted(fetch):
    for _ in range(15):  # past the failed-authentication limit, had these counted
        assert_status(await fetch(headers=bearer("wrong-" + TOKEN)), NEVER)
    assert (await fetch("/api/admin/jobs", headers=bearer())).code == 200  # not throttled
    response = await fetch()
    assert TOKEN not in response.body.decode()


@pytest.mark.gen_test
async def test_head_answers_like_get_and_other_methods_are_405(fetch):
    response = await fetch(method="HEAD")
    assert (response.code, response.body) == (200, b"")
    assert response.headers["Cache-Control"] == "no-store"
    for method in ("POST", "DELETE"):
        response = await fetch(method=method)
        assert response.code == 405
        assert response.headers["Allow"] == "GET, HEAD"
        assert body_of(response) == {"error": "Method Not Allowed", "message": "Use GET or HEAD"}


@pytest.fixture
def private_redis(tmp_path):
    if shutil.which("redis-server") is None:
        require_service("redis-server (the binary)", FileNotFoundError("redis-server"))
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_context(private_redis, order_store, clock, io_loop):
    settings = settings_from({"ADMIN_TOKEN": TOKEN, "FETCH_INTERVAL_SECONDS": str(INTERVAL_SECONDS)})
    url = f"redis://127.0.0.1:{private_redis.port}/0"
    store = io_loop.run_sync(lambda: open_store(url, clock=clock, history_limit=10))
    runner = JobRunner(store, GatedWork(), lease_seconds=60, max_duration_seconds=600)
    yield AppContext(settings, runner, store, order_store, clock)
    io_loop.run_sync(runner.shutdown)
    io_loop.run_sync(store.close)


@pytest.mark.parametrize("store_kind", ["redis"])
@pytest.mark.gen_test(timeout=20)
async def test_a_store_outage_is_503_with_retry_after_and_recovers(fetch, store_kind, private_redis):
    assert_status(await fetch(), NEVER)
    private_redis.stop()
    response = await fetch()
    assert response.code == 503, response.body
    assert response.headers["Retry-After"] == "5"
    assert body_of(response) == {"error": "Service Unavailable",
                                 "message": "Job store unavailable, retry later"}  # fmt: skip
    private_redis.start()
    assert_status(await fetch(), NEVER)
