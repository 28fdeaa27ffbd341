"""Job store faults through the real API of a real server process: a paused Redis, an SQLite file
locked by another process, a read-only SQLite file. Each fault answers 503 with Retry-After
within a bound, /readyz names the store, no job stays running, and work resumes once the fault
ends, without restarting the server."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import pwd
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
import redis

from backends.base import JobStatus, Trigger, open_store
from tests.api_helpers import TOKEN
from tests.conftest import require_service, run_aside
from tests.redis_helpers import PrivateRedis
from tests.secrets_sweep import secret
from tests.server_helpers import ServerProcess, server_env
from tornado_admin.fake_esi import FakeEsi

AUTH = {"Authorization": f"Bearer {TOKEN}"}
REGION = 10000002
LEASE_SECONDS = 3
REDIS_TIMEOUT_SECONDS = 2  # backends/redis.py TIMEOUT_SECONDS
BUSY_TIMEOUT_SECONDS = 5  # backends/sqlite.py BUSY_TIMEOUT_MS
READY_TIMEOUT_SECONDS = 2  # handlers.py: how long /readyz waits for each check
SLACK_SECONDS = 1.0
REDIS_PASSWORD = secret("store-fault-password-17")
UNAVAILABLE = {"error": "Service Unavailable", "message": "Job store unavailable, retry later"}
LEASE_LAPSED = "Job lease lapsed before it could be renewed: stopping the work"
TRIGGER = ("POST", "/api/admin/trigger-fetch")
JOBS = ("GET", "/api/admin/jobs")
READY = ("GET", "/readyz")
TEST_USER = "tornado-test"


@dataclass
class Answer:
    status: int
    headers: Message
    body: dict[str, Any]
    seconds: float


def call(server: ServerProcess, method: str, path: str) -> Answer:
    """One authenticated request on a fresh connection, timed. The client timeout is long: a
    hang must show as a slow answer that fails the bound, not be cut short here."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    began = time.monotonic()
    try:
        conn.request(method, path, body=b"" if method == "POST" else None, headers=AUTH)
        response = conn.getresponse()
        body = json.loads(response.read())
    finally:
        conn.close()
    return Answer(response.status, response.headers, body, time.monotonic() - began)


def at_once(server: ServerProcess, *requests: tuple[str, str]) -> list[Answer]:
    """(method, path) requests, all sent at the same moment."""
    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(lambda request: call(server, *request), requests))


def eventually(check: Callable[[], Any], what: str, timeout: float = 10) -> Any:
    """Poll `check` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while not (outcome := check()):
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)
    return outcome


def assert_unavailable(answer: Answer, bound: float) -> None:
    assert (answer.status, answer.body) == (503, UNAVAILABLE)
    assert answer.headers["Retry-After"] == "5"
    assert answer.seconds < bound, f"answered after {answer.seconds:.1f} s"


def assert_not_ready(answer: Answer) -> None:
    assert answer.status == 503
    checks = {"jobStore": "unavailable", "marketDatabase": "ok"}
    assert answer.body == {"status": "unavailable", "checks": checks}
    assert answer.seconds < READY_TIMEOUT_SECONDS + SLACK_SECONDS, f"answered after {answer.seconds:.1f} s"


def job_status(server: ServerProcess, job_id: str) -> Answer:
    return call(server, "GET", f"/api/admin/job-status/{job_id}")


def settled(server: ServerProcess, job_id: str, timeout: float = 10) -> dict[str, Any]:
    """The job's status once it reads as no longer running."""
    answer = eventually(lambda: (a := job_status(server, job_id)).status == 200
                        and a.body["status"] != "running" and a, f"job {job_id} ends", timeout)
    return answer.body


def start_hanging_run(server: ServerProcess, esi: FakeEsi) -> str:
    """A run whose ESI request never answers: it is running when the fault begins."""
    esi.inject("hang", 1)
    answer = call(server, *TRIGGER)
    assert answer.status == 202, answer.body
    eventually(lambda: esi.requests, "the run asks ESI")
    return answer.body["jobId"]


def assert_work_resumes(server: ServerProcess, pid: int, timeout: float = 10) -> None:
    """The same process accepts a trigger again, completes the run, and is ready again."""
    answer = eventually(lambda: (a := call(server, *TRIGGER)).status == 202 and a,
                        "a trigger is accepted again", timeout)
    job = settled(server, answer.body["jobId"])
    assert (job["status"], job["result"]["successCount"]) == ("completed", 1)
    assert call(server, *READY).status == 200
    assert server.process.pid == pid
    assert server.process.poll() is None


def assert_no_secret_logged(server: ServerProcess, *secrets: str) -> None:
    output = server.output()
    for value in (TOKEN, *secrets):
        assert value not in output


# -- Redis paused --------------------------------------------------------------------------------


@pytest.fixture
def paused_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of this test alone, with a password (never the shared one: it gets paused)."""
    if shutil.which("redis-server") is None:
        require_service("redis-server (the binary)", FileNotFoundError("redis-server"))
    server = PrivateRedis(tmp_path)
    server.start()
    redis.Redis(port=server.port).config_set("requirepass", REDIS_PASSWORD)
    yield server
    server.stop()


def pause(server: PrivateRedis, seconds: float) -> float:
    """CLIENT PAUSE ALL: every client's commands wait, connections stay open. Returns the end."""
    client = redis.Redis(port=server.port, password=REDIS_PASSWORD)
    try:
        client.execute_command("CLIENT", "PAUSE", int(seconds * 1000), "ALL")
    finally:
        client.close()
    return time.monotonic() + seconds


def redis_env(tmp_path: Path, server: PrivateRedis, esi_url: str) -> dict[str, str]:
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{server.port}/0"
    return server_env(tmp_path, esi_url, JOB_STORE_URL=url, JOB_LEASE_SECONDS=str(LEASE_SECONDS),
                      ESI_REGIONS=str(REGION))


# The failed-authentication throttle reads its count first (and lets the request through when that
# read times out), then the route reads or writes: two Redis timeouts at most.
REDIS_BOUND_SECONDS = 2 * REDIS_TIMEOUT_SECONDS + SLACK_SECONDS


def test_a_paused_redis_answers_503_in_bounded_time_and_work_resumes(servers, tmp_path, paused_redis):
    esi = FakeEsi({REGION: 1000})
    with esi.run_in_thread():
        server = servers(redis_env(tmp_path, paused_redis, esi.url), tmp_path)
        server.wait_ready()
        pid = server.process.pid
        job_id = start_hanging_run(server, esi)

        ends = pause(paused_redis, LEASE_SECONDS + 3)  # past the run's lease and the Redis timeouts
        answers = at_once(server, TRIGGER, ("GET", f"/api/admin/job-status/{job_id}"), JOBS, READY)
        assert time.monotonic() < ends, "the pause ended before every answer came"
        for answer in answers[:3]:
            assert_unavailable(answer, REDIS_BOUND_SECONDS)
        assert_not_ready(answers[3])

        # The runner cannot renew through the pause, so it stops the work at its lease's end;
        # once Redis answers, the run reads as abandoned instead of running forever.
        eventually(lambda: LEASE_LAPSED in server.output(), "the runner gives its run up")
        job = settled(server, job_id, timeout=ends - time.monotonic() + 5)
        assert (job["status"], job["error"]) == ("failed", "abandoned")
        assert_work_resumes(server, pid)
        assert server.stop() == 0
    assert_no_secret_logged(server, REDIS_PASSWORD)


def test_the_server_stays_responsive_while_redis_hangs(servers, tmp_path, paused_redis):
    server = servers(redis_env(tmp_path, paused_redis, "http://127.0.0.1:9"), tmp_path)
    server.wait_ready()
    ends = pause(paused_redis, REDIS_BOUND_SECONDS + 1)
    admin = [TRIGGER, JOBS, ("GET", "/api/admin/job-status/AAAAAAAAAAAAAAAAAAAAAA")] * 10
    with ThreadPoolExecutor(len(admin) + 3) as pool:
        pending = [pool.submit(call, server, *request) for request in [*admin, READY, READY, READY]]
        health = []
        while not all(future.done() for future in pending):
            health.append(call(server, "GET", "/healthz"))
        answers = [future.result() for future in pending]
    assert time.monotonic() < ends, "the pause ended before every answer came"
    # Liveness never waits for the store: the event loop is free while 33 requests wait on Redis.
    assert len(health) > 10
    assert all(h.status == 200 for h in health)
    assert max(h.seconds for h in health) < 0.5
    for answer in answers[:-3]:
        assert_unavailable(answer, REDIS_BOUND_SECONDS)
    for answer in answers[-3:]:
        assert_not_ready(answer)
    eventually(lambda: call(server, *READY).status == 200, "ready after the pause", timeout=15)
    assert server.stop() == 0


# -- SQLite locked -------------------------------------------------------------------------------


def test_an_sqlite_store_locked_past_busy_timeout_answers_503_and_work_resumes(servers, tmp_path):
    esi = FakeEsi({REGION: 1000})
    path = tmp_path / "jobs.db"
    bound = BUSY_TIMEOUT_SECONDS + SLACK_SECONDS
    with esi.run_in_thread():
        env = server_env(tmp_path, esi.url, JOB_STORE_URL=f"sqlite:///{path}",
                         JOB_LEASE_SECONDS=str(LEASE_SECONDS), ESI_REGIONS=str(REGION))
        server = servers(env, tmp_path)
        server.wait_ready()
        pid = server.process.pid
        job_id = start_hanging_run(server, esi)
        status = ("GET", f"/api/admin/job-status/{job_id}")

        other = sqlite3.connect(path, isolation_level=None, timeout=0)
        try:
            other.execute("BEGIN EXCLUSIVE")  # WAL: other readers go on, no other writer does
            # While the run's lease is live, reads answer from a snapshot, and a trigger is refused
            # because of the run, lock or not; readiness needs the write lock.
            trigger, read, listed, ready = at_once(server, TRIGGER, status, JOBS, READY)
            assert (trigger.status, trigger.body["jobId"]) == (409, job_id)
            assert (read.status, read.body["status"]) == (200, "running")
            assert listed.status == 200
            assert max(a.seconds for a in (trigger, read, listed)) < SLACK_SECONDS
            assert_not_ready(ready)

            # The runner gives up before its lease lapses in the store (it allows for clock slew);
            # once it has lapsed, each request needs the write lock (to start, or to record the
            # run abandoned) and gives up within the busy timeout: queued calls do not add up.
            eventually(lambda: LEASE_LAPSED in server.output(), "the runner gives its run up")
            [(expires_ms,)] = other.execute("SELECT lease_expires_ms FROM jobs WHERE status = 'running'")
            eventually(lambda: time.time() * 1000 > expires_ms + 50, "the lease lapses in the store")
            answers = at_once(server, TRIGGER, status, JOBS, TRIGGER, status, READY)
            for answer in answers[:-1]:
                assert_unavailable(answer, bound)
            assert_not_ready(answers[-1])
        finally:
            other.execute("ROLLBACK")
            other.close()
        job = settled(server, job_id)
        assert (job["status"], job["error"]) == ("failed", "abandoned")
        assert_work_resumes(server, pid)
        assert server.stop() == 0
    lines = [line for line in server.lines() if line["message"] == "Job store unavailable"]
    assert lines
    assert all("database is locked" in line["error"] for line in lines)
    assert_no_secret_logged(server)


# -- SQLite read-only ----------------------------------------------------------------------------


def unprivileged_prefix() -> list[str]:
    """A command prefix that runs the server where file modes hold.

    Not root: nothing. Root ignores file modes, so the server runs as the user `tornado-test`,
    keeping only CAP_DAC_READ_SEARCH: the interpreter may live where that user cannot read
    (a pyenv under /root), and reading is not what this test is about; writing is.
    """
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError as exc:
        require_service(f"user {TEST_USER}", exc)
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        require_service("setpriv (util-linux)", FileNotFoundError("setpriv"))
    prefix = [setpriv, f"--reuid={TEST_USER}", f"--regid={TEST_USER}", "--clear-groups",
              "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", "--"]
    probe = subprocess.run([*prefix, sys.executable, "-c", "import tornado_admin"], capture_output=True,
                           text=True, timeout=30, check=False)
    if probe.returncode != 0:
        require_service(f"running Python as {TEST_USER}", PermissionError(probe.stderr.strip()[-300:]))
    return prefix


@pytest.fixture
def server_dir() -> Iterator[Path]:
    """A directory of the server's user, on a path that user can walk without help: SQLite checks
    the -shm file with access(2), which ignores capabilities (pytest's tmp_path is root's, 0700)."""
    path = Path(tempfile.mkdtemp(prefix="store-faults-"))
    if os.geteuid() == 0:
        with contextlib.suppress(KeyError):  # no such user: `unprivileged_servers` skips the test
            owner = pwd.getpwnam(TEST_USER)
            os.chown(path, owner.pw_uid, owner.pw_gid)
    path.chmod(0o755)
    yield path
    path.chmod(0o755)
    shutil.rmtree(path)


@pytest.fixture
def unprivileged_servers(servers) -> Callable[[dict[str, str], Path], ServerProcess]:
    """`servers`, run as TEST_USER (see `unprivileged_prefix`)."""
    prefix = unprivileged_prefix()
    return lambda env, cwd: servers(env, cwd, prefix)


async def completed_job(url: str) -> str:
    """One completed run in the store at `url`; its id."""
    store = await open_store(url)
    try:
        started = await store.start("fetch-market-data", Trigger.MANUAL, lease_ms=60_000)
        await store.finish(started.lease, status=JobStatus.COMPLETED, result={"success": True})
    finally:
        await store.close()
    return started.job.job_id


def test_a_read_only_sqlite_store_serves_reads_refuses_writes_and_heals(unprivileged_servers, server_dir):
    esi = FakeEsi({REGION: 1000})
    data = server_dir  # the server may create files here (the market database, the -wal and -shm)
    path = data / "jobs.db"
    url = f"sqlite:///{path}"
    old_id = run_aside(completed_job(url))
    if os.geteuid() == 0:
        owner = pwd.getpwnam(TEST_USER)
        os.chown(path, owner.pw_uid, owner.pw_gid)
    path.chmod(0o444)  # the fault: the server's user may read the file, not write it
    with esi.run_in_thread():
        env = server_env(data, esi.url, JOB_STORE_URL=url, ESI_REGIONS=str(REGION))
        server = unprivileged_servers(env, data)
        server.wait_ready()
        pid = server.process.pid

        read, listed, trigger, ready = at_once(server, ("GET", f"/api/admin/job-status/{old_id}"), JOBS,
                                               TRIGGER, READY)
        assert (read.status, read.body["status"]) == (200, "completed")
        assert (listed.status, [job["jobId"] for job in listed.body["jobs"]]) == (200, [old_id])
        assert_unavailable(trigger, SLACK_SECONDS)  # refused at once: no lock to wait for
        assert_not_ready(ready)
        assert call(server, *TRIGGER).status == 503  # and again: no run started meanwhile
        assert [job["status"] for job in call(server, *JOBS).body["jobs"]] == ["completed"]

        for item in data.glob("jobs.db*"):  # the fault ends: the file and its -wal/-shm writable
            item.chmod(0o644)
        assert_work_resumes(server, pid)
        assert server.stop() == 0
    errors = [line["error"] for line in server.lines() if line["message"] == "Job store unavailable"]
    assert errors
    assert all(error.endswith("readonly database (SQLITE_READONLY)") for error in errors)
    assert_no_secret_logged(server)


def test_an_sqlite_store_that_cannot_be_opened_stops_startup_with_one_clear_line(unprivileged_servers,
                                                                                  server_dir, tmp_path):
    path = server_dir / "jobs.db"
    run_aside(completed_job(f"sqlite:///{path}"))
    path.chmod(0o444)
    server_dir.chmod(0o555)  # and no -shm beside it, nor a way to make one: not even a read can work
    server = unprivileged_servers(server_env(tmp_path, JOB_STORE_URL=f"sqlite:///{path}"), tmp_path)
    assert server.process.wait(timeout=30) == 1
    [line] = [x for x in server.lines() if x["level"] == "CRITICAL"]
    assert line["message"].startswith(f"Server cannot start: job store sqlite:///{path} unavailable:")
    assert line["message"].endswith("attempt to write a readonly database (SQLITE_READONLY_DIRECTORY)")

