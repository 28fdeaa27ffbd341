"""Every row of DESIGN.md section 4, over real HTTP against the real app (pytest-tornado)."""

from __future__ import annotations

import asyncio

import pytest
from tornado.httputil import HTTPHeaders

from backends.base import JobStatus
from tests.api_helpers import (
    CRON_SECRET,
    OTHER_TOKEN,
    TOKEN,
    GatedWork,
    bearer,
    body_of,
    build_context,
    fetcher,
)
from tornado_admin.app import make_app

MISSING = {
    "error": "Unauthorized",
    "message": "Missing or invalid Authorization header. Use: Authorization: Bearer <token>",
}
INVALID = {"error": "Unauthorized", "message": "Invalid admin token"}
NOT_FOUND = {"error": "Not Found", "message": "Job not found or expired"}
TRIGGER = "/api/admin/trigger-fetch"


@pytest.fixture
def database_url(sqlite_url):
    return sqlite_url


@pytest.fixture
def work():
    return GatedWork()


@pytest.fixture
def env():
    return {}


@pytest.fixture
def context(order_store, work, clock, env, io_loop):
    context = build_context(order_store, work, clock, env)
    yield context
    io_loop.run_sync(context.runner.shutdown)  # no run outlives its test


@pytest.fixture
def app(context):
    return make_app(context)


@pytest.fixture
def fetch(http_client, base_url):
    return fetcher(http_client, base_url)


def assert_json(response, status: int, body: dict | None = None) -> None:
    assert response.code == status, response.body
    assert response.headers["Content-Type"] == "application/json; charset=UTF-8"
    assert response.headers["Cache-Control"] == "no-store"
    if body is not None:
        assert body_of(response) == body


# -- authentication ------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_missing_header_is_401_with_the_bearer_challenge(fetch):
    response = await fetch(TRIGGER, "POST")
    assert_json(response, 401, MISSING)
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="admin"'


@pytest.mark.parametrize(
    "value",
    [f"Basic {TOKEN}", f"Token {TOKEN}", "Bearer", "Bearer ", f"Bearer {TOKEN} extra", TOKEN, ""],
)
@pytest.mark.gen_test
async def test_other_schemes_and_malformed_values_are_401_missing_or_invalid(fetch, value):
    response = await fetch(TRIGGER, "POST", {"Authorization": value})
    assert_json(response, 401, MISSING)
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="admin"'


@pytest.mark.gen_test
async def test_wrong_token_is_401_invalid_token(fetch, work):
    response = await fetch(TRIGGER, "POST", bearer(TOKEN[:-1] + "X"))
    assert_json(response, 401, INVALID)
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="admin", error="invalid_token"'
    assert work.runs == 0


@pytest.mark.parametrize(
    "value", [f"bearer {TOKEN}", f"BEARER {TOKEN}", f"Bearer\t{TOKEN}", f"Bearer   {TOKEN}  ",
              f"Bearer {OTHER_TOKEN}"],
)
@pytest.mark.gen_test
async def test_scheme_is_case_insensitive_and_every_configured_token_works(fetch, value, work):
    response = await fetch(TRIGGER, "POST", {"Authorization": value})
    assert_json(response, 202)
    work.finish()


@pytest.mark.gen_test
async def test_two_authorization_headers_are_400_invalid_request(fetch):
    headers = HTTPHeaders()
    headers.add("Authorization", f"Bearer {TOKEN}")
    headers.add("Authorization", f"Bearer {TOKEN}")
    response = await fetch(TRIGGER, "POST", headers)
    assert_json(response, 400)
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="admin", error="invalid_request"'


@pytest.mark.parametrize("env", [{"ADMIN_TOKEN": ""}])
@pytest.mark.gen_test
async def test_unset_admin_token_is_500_misconfiguration(fetch, env):
    for path, method in [(TRIGGER, "POST"), ("/api/admin/jobs", "GET")]:
        response = await fetch(path, method, bearer())
        assert_json(response, 500, {"error": "Server misconfiguration"})


@pytest.mark.gen_test
async def test_the_method_is_checked_before_the_credentials(fetch):
    for headers in (None, bearer("wrong")):
        response = await fetch(TRIGGER, "GET", headers)
        assert_json(response, 405, {"error": "Method Not Allowed", "message": "Use POST to trigger job"})
        assert response.headers["Allow"] == "POST"


@pytest.mark.gen_test
async def test_a_token_in_the_query_string_is_ignored(fetch):
    response = await fetch(f"{TRIGGER}?token={TOKEN}", "POST")
    assert_json(response, 401, MISSING)


# -- trigger -------------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_trigger_answers_202_at_once_while_the_job_runs(fetch, work, context):
    response = await fetch(TRIGGER, "POST", bearer())
    assert_json(response, 202)
    body = body_of(response)
    job_id = body["jobId"]
    assert body == {
        "message": "Job triggered successfully", "jobId": job_id, "jobName": "fetch-market-data",
        "status": "started", "checkStatusAt": f"/api/admin/job-status/{job_id}",
    }
    assert response.headers["Location"] == f"/api/admin/job-status/{job_id}"
    await asyncio.wait_for(work.started.wait(), 5)
    assert not work.gate.is_set()  # the answer came while the job was still running
    assert (await context.job_store.get(job_id)).status is JobStatus.RUNNING
    work.finish()


@pytest.mark.gen_test
async def test_a_second_trigger_is_409_naming_the_running_job(fetch, work):
    first = body_of(await fetch(TRIGGER, "POST", bearer()))
    response = await fetch(TRIGGER, "POST", bearer())
    assert_json(response, 409, {
        "error": "Conflict", "message": "Job already in progress", "jobName": "fetch-market-data",
        "jobId": first["jobId"], "checkStatusAt": f"/api/admin/job-status/{first['jobId']}",
    })
    work.finish()


@pytest.mark.gen_test(timeout=30)
async def test_200_simultaneous_triggers_start_exactly_one_job(fetch, work):
    responses = await asyncio.gather(*(fetch(TRIGGER, "POST", bearer()) for _ in range(200)))
    codes = sorted(r.code for r in responses)
    assert codes == [202] + [409] * 199
    [started] = [body_of(r)["jobId"] for r in responses if r.code == 202]
    assert {body_of(r)["jobId"] for r in responses if r.code == 409} == {started}
    assert work.runs == 1
    work.finish()


@pytest.mark.gen_test
async def test_a_finished_job_lets_the_next_trigger_start(fetch, work, context):
    first = body_of(await fetch(TRIGGER, "POST", bearer()))["jobId"]
    work.finish()
    await context.runner.wait_idle()
    work.gate.clear()
    response = await fetch(TRIGGER, "POST", bearer())
    assert_json(response, 202)
    assert body_of(response)["jobId"] != first
    work.finish()


# -- job status ----------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_status_of_a_running_job_shows_progress_and_duration_so_far(fetch, work, clock):
    job_id = body_of(await fetch(TRIGGER, "POST", bearer()))["jobId"]
    await asyncio.wait_for(work.started.wait(), 5)
    clock.advance(1.5)
    response = await fetch(f"/api/admin/job-status/{job_id}", headers=bearer())
    assert_json(response, 200)
    body = body_of(response)
    assert body == {
        "jobId": job_id, "jobName": "fetch-market-data", "trigger": "manual", "status": "running",
        "startedAt": "2026-05-28T20:26:40.000Z", "duration": 1500,
        "progress": {"regionsTotal": 2, "regionsDone": 1, "ordersStored": 10},
    }
    work.finish()


@pytest.mark.gen_test
async def test_status_of_a_completed_job_has_its_result(fetch, work, context, clock):
    job_id = body_of(await fetch(TRIGGER, "POST", bearer()))["jobId"]
    clock.advance(2)
    work.finish()
    await context.runner.wait_idle()
    clock.advance(60)  # a finished job's duration no longer grows
    body = body_of(await fetch(f"/api/admin/job-status/{job_id}", headers=bearer()))
    assert body["status"] == "completed"
    assert body["completedAt"] == "2026-05-28T20:26:42.000Z"
    assert body["duration"] == 2000
    assert body["result"] == {"success": True, "successCount": 1}
    assert "error" not in body


@pytest.mark.gen_test
async def test_status_of_a_failed_job_has_its_error(fetch, work, context):
    job_id = body_of(await fetch(TRIGGER, "POST", bearer()))["jobId"]
    work.finish(error="cannot list regions: /universe/regions: timed out (after 4 tries)")
    await context.runner.wait_idle()
    body = body_of(await fetch(f"/api/admin/job-status/{job_id}", headers=bearer()))
    assert body["status"] == "failed"
    assert body["error"] == "cannot list regions: /universe/regions: timed out (after 4 tries)"
    assert "result" not in body


@pytest.mark.parametrize(
    "job_id",
    ["AAAAAAAAAAAAAAAAAAAAAA", "..%2F..%2Fetc%2Fpasswd", "../x", "%00", "x" * 10_000, "*",
     "job%0D%0AX-Injected:%201", "'%20OR%201=1%20--", "%7B*%7D", ""],
)
@pytest.mark.gen_test
async def test_unknown_or_implausible_job_ids_are_404(fetch, job_id):
    response = await fetch(f"/api/admin/job-status/{job_id}", headers=bearer())
    assert_json(response, 404, NOT_FOUND)
    assert "X-Injected" not in response.headers


@pytest.mark.gen_test
async def test_job_status_needs_the_token_and_get(fetch):
    path = "/api/admin/job-status/AAAAAAAAAAAAAAAAAAAAAA"
    assert_json(await fetch(path), 401, MISSING)
    response = await fetch(path, "POST", bearer())
    assert_json(response, 405)
    assert response.headers["Allow"] == "GET"


@pytest.mark.gen_test
async def test_jobs_lists_newest_first_with_a_limit(fetch, work, context, clock):
    ids = []
    for _ in range(3):
        ids.append(body_of(await fetch(TRIGGER, "POST", bearer()))["jobId"])
        work.finish()
        await context.runner.wait_idle()
        work.gate.clear()
        clock.advance(1)
    body = body_of(await fetch("/api/admin/jobs?limit=2", headers=bearer()))
    assert [job["jobId"] for job in body["jobs"]] == ids[::-1][:2]
    assert all(job["status"] == "completed" for job in body["jobs"])
    everything = body_of(await fetch("/api/admin/jobs", headers=bearer()))
    assert len(everything["jobs"]) == 3


@pytest.mark.parametrize("limit", ["0", "-1", "abc", "101", "1e3"])
@pytest.mark.gen_test
async def test_jobs_refuses_a_bad_limit_with_400(fetch, limit):
    response = await fetch(f"/api/admin/jobs?limit={limit}", headers=bearer())
    assert_json(response, 400)
    assert "limit" in body_of(response)["message"]


# -- cron, health, everything else ---------------------------------------------------------------


@pytest.mark.gen_test
async def test_cron_route_is_404_without_a_cron_secret(fetch):
    for method in ("GET", "POST"):
        assert_json(await fetch("/api/cron/fetch-market-data", method, bearer(CRON_SECRET)), 404)


@pytest.mark.parametrize("env", [{"CRON_SECRET": CRON_SECRET}])
@pytest.mark.gen_test
async def test_cron_route_starts_a_cron_run_with_the_cron_secret(fetch, work, env, context):
    wrong = await fetch("/api/cron/fetch-market-data", "POST", bearer(TOKEN))
    assert_json(wrong, 401, {"error": "Unauthorized", "message": "Invalid cron secret"})
    assert wrong.headers["WWW-Authenticate"] == 'Bearer realm="cron", error="invalid_token"'
    response = await fetch("/api/cron/fetch-market-data", "GET", bearer(CRON_SECRET))
    assert_json(response, 202)
    job = await context.job_store.get(body_of(response)["jobId"])
    assert job.trigger.value == "cron"
    assert_json(await fetch("/api/cron/fetch-market-data", "POST", bearer(CRON_SECRET)), 409)
    work.finish()


@pytest.mark.gen_test
async def test_health_and_readiness(fetch, order_store):
    assert_json(await fetch("/healthz"), 200, {"status": "ok"})
    assert_json(await fetch("/readyz"), 200, {
        "status": "ready", "checks": {"jobStore": "ok", "marketDatabase": "ok"},
    })
    await order_store.close()
    assert_json(await fetch("/readyz"), 503, {
        "status": "unavailable", "checks": {"jobStore": "ok", "marketDatabase": "unavailable"},
    })


@pytest.mark.parametrize(
    ("path", "allowed"),
    [(TRIGGER, "POST"), ("/api/admin/jobs", "GET"), ("/api/admin/job-status/x", "GET"),
     ("/healthz", "GET, HEAD"), ("/readyz", "GET, HEAD")],
)
@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
@pytest.mark.gen_test
async def test_method_matrix_answers_405_with_allow(fetch, path, allowed, method, work):
    response = await fetch(path, method, bearer())
    if method in allowed.split(", "):
        assert response.code != 405
        work.finish()
        return
    assert response.code == 405
    assert response.headers["Allow"] == allowed


@pytest.mark.gen_test
async def test_bodies_are_compact_json_without_etags(fetch):
    response = await fetch("/api/admin/jobs", headers=bearer())
    assert response.body == b'{"jobs":[]}'
    assert "Etag" not in response.headers
    head = await fetch("/healthz", "HEAD")
    assert head.code == 200


@pytest.mark.gen_test
async def test_unknown_routes_are_json_404s(fetch):
    for path in ("/", "/admin/", "/api/admin/job-status", "/api/admin/jobs/extra"):  # /admin: the dashboard
        response = await fetch(path, headers=bearer())
        assert_json(response, 404)
        assert b"<html" not in response.body


@pytest.mark.gen_test
async def test_the_throttle_lifts_when_the_window_passes(fetch, clock):
    clock.ms -= clock.ms % 60_000  # the start of a window
    for _ in range(10):
        assert (await fetch("/api/admin/jobs", headers=bearer("wrong"))).code == 401
    assert (await fetch("/api/admin/jobs", headers=bearer("wrong"))).code == 429
    throttled = await fetch("/api/admin/jobs", headers=bearer())
    assert_json(throttled, 429)
    assert throttled.headers["Retry-After"] == "60"
    clock.advance(60)
    assert (await fetch("/api/admin/jobs", headers=bearer())).code == 200
