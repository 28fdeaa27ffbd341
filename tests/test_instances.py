"""Several server processes on one SQLite file or one Redis: one run at a time across all of them,
abandoned runs recovered after a crash, store outages answered with 503 and recovered from."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.api_helpers import TOKEN
from tests.redis_helpers import drop_redis_keys, redis_url_for_test
from tests.secrets_sweep import secret
from tests.server_helpers import free_port, server_env
from tornado_admin.fake_esi import FakeEsi

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(params=["sqlite", "redis"])
def job_store_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/shared/jobs.db"
        return
    url = redis_url_for_test()
    yield url
    drop_redis_keys(url)


def test_two_servers_on_one_store_start_exactly_one_run(servers, tmp_path, job_store_url):
    esi = FakeEsi({10000002: 2000}, latency_seconds=30)  # the run stays running
    with esi.run_in_thread():
        env = server_env(tmp_path, esi.url, JOB_STORE_URL=job_store_url)
        first = servers(env, tmp_path)
        second = servers(env | {"PORT": str(free_port())}, tmp_path)
        first.wait_ready()
        second.wait_ready()

        def trigger(i: int) -> tuple[int, dict]:
            return (first if i % 2 else second).request("/api/admin/trigger-fetch", "POST", AUTH)

        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(trigger, range(200)))

        codes = sorted(code for code, _ in answers)
        assert codes == [202] + [409] * 199
        [job_id] = [body["jobId"] for code, body in answers if code == 202]
        assert {body["jobId"] for code, body in answers if code == 409} == {job_id}
        for server in (first, second):  # visible from both
            code, body = server.request(f"/api/admin/job-status/{job_id}", headers=AUTH)
            assert (code, body["status"]) == (200, "running")
        assert first.stop() == 0
        assert second.stop() == 0


def market_regions(database: Path) -> dict[int, set[int]]:
    with sqlite3.connect(database) as conn:
        rows = conn.execute("SELECT region_id, order_id FROM market_orders").fetchall()
    held: dict[int, set[int]] = {}
    for region_id, order_id in rows:
        held.setdefault(region_id, set()).add(order_id)
    return held


def committed_regions(database: Path) -> int:
    try:
        with sqlite3.connect(database) as conn:
            return conn.execute("SELECT count(*) FROM market_regions").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_a_killed_servers_run_is_abandoned_and_the_next_one_starts(servers, tmp_path, job_store_url):
    regions = {10000000 + i: 3000 for i in range(1, 9)}
    esi = FakeEsi(regions, latency_seconds=0.2)  # about 2 s for the whole sweep at concurrency 2
    database = tmp_path / "market.db"
    with esi.run_in_thread():
        env = server_env(tmp_path, esi.url, JOB_STORE_URL=job_store_url, JOB_LEASE_SECONDS="3",
                         DATABASE_URL=f"sqlite:///{database}", ESI_CONCURRENCY="2")
        doomed = servers(env, tmp_path)
        doomed.wait_ready()
        code, body = doomed.request("/api/admin/trigger-fetch", "POST", AUTH)
        assert code == 202
        job_id = body["jobId"]
        deadline = time.monotonic() + 20
        while committed_regions(database) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        doomed.process.send_signal(signal.SIGKILL)  # mid-sweep: some regions stored, some not
        doomed.process.wait(timeout=10)
        killed_at = time.monotonic()

        survivor = servers(env | {"PORT": str(free_port())}, tmp_path)
        survivor.wait_ready()
        while True:
            code, body = survivor.request(f"/api/admin/job-status/{job_id}", headers=AUTH)
            if body["status"] != "running" or time.monotonic() - killed_at > 10:
                break
            time.sleep(0.1)
        assert (body["status"], body["error"]) == ("failed", "abandoned")
        assert time.monotonic() - killed_at <= 3 + 2  # the lease, plus polling slack

        held = market_regions(database)
        assert 0 < len(held) < len(regions), "the kill did not land mid-sweep"
        for region_id, ids in held.items():  # whole regions only
            assert ids == {order["order_id"] for order in esi.orders(region_id)}
        code, body = survivor.request("/api/admin/trigger-fetch", "POST", AUTH)
        assert code == 202
        assert survivor.stop() == 0


def test_an_unreachable_store_stops_startup_with_one_clear_line(servers, tmp_path):
    url = f"redis://:{secret('store-password-42')}@127.0.0.1:{free_port()}/0"
    server = servers(server_env(tmp_path, JOB_STORE_URL=url), tmp_path)
    assert server.process.wait(timeout=30) == 1
    [line] = [x for x in server.lines() if x["level"] == "CRITICAL"]
    assert line["message"].startswith("Server cannot start: job store redis://:[REDACTED]@127.0.0.1:")
    assert "store-password-42" not in server.output()


def test_a_store_outage_answers_503_and_work_resumes_when_it_returns(servers, tmp_path, private_redis):
    esi = FakeEsi({10000043: 1000})
    with esi.run_in_thread():
        env = server_env(tmp_path, esi.url, JOB_STORE_URL=f"redis://127.0.0.1:{private_redis.port}/0",
                         SCHEDULER_ENABLED="true", FETCH_INTERVAL_SECONDS="1")
        server = servers(env, tmp_path)
        server.wait_ready()
        assert server.request("/api/admin/jobs", headers=AUTH)[0] == 200

        private_redis.stop()
        code, body = server.request("/api/admin/jobs", headers=AUTH)
        assert (code, body["error"]) == (503, "Service Unavailable")
        # Answers that need no store still come: the throttle lets requests through meanwhile.
        assert server.request("/api/admin/jobs")[0] == 401
        assert server.request("/api/admin/job-status/not-an-id", headers=AUTH)[0] == 404
        assert server.request("/readyz")[1]["checks"]["jobStore"] == "unavailable"
        deadline = time.monotonic() + 10
        while "Scheduled run skipped: job store unavailable" not in server.output():
            assert time.monotonic() < deadline, "no tick met the outage"
            time.sleep(0.05)

        private_redis.start()  # empty again: this Redis keeps nothing on disk
        deadline = time.monotonic() + 10
        while server.request("/api/admin/jobs", headers=AUTH)[0] != 200:
            assert time.monotonic() < deadline, "the store never came back"
            time.sleep(0.05)
        assert server.request("/readyz")[0] == 200
        mark = len(server.output())
        while "Scheduled job started" not in server.output()[mark:]:
            assert time.monotonic() < deadline + 10, "the scheduler never resumed"
            time.sleep(0.05)
        assert server.stop() == 0
    messages = [json.loads(line)["message"] for line in server.output().splitlines()]
    assert "Job store unavailable" in messages
    assert "Scheduler started" in messages


def test_a_burst_of_requests_waits_for_redis_connections_instead_of_failing(servers, tmp_path):
    url = redis_url_for_test()
    try:
        server = servers(server_env(tmp_path, JOB_STORE_URL=url), tmp_path)
        server.wait_ready()
        with ThreadPoolExecutor(100) as pool:
            codes = list(pool.map(lambda _: server.request("/api/admin/jobs?limit=5", headers=AUTH)[0],
                                  range(400)))
        assert codes == [200] * 400
        assert server.stop() == 0
    finally:
        drop_redis_keys(url)
