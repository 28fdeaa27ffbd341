"""A real server whose wall clock jumps a day forward and back (libfaketime, with the monotonic
clock left alone as a real step leaves it): the run in progress keeps its lease and completes, and
the schedule goes on at one run per tick, neither bursting nor stalling."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from tests.api_helpers import TOKEN
from tests.conftest import require_service
from tests.server_helpers import poll, server_env
from tornado_admin.fake_esi import FakeEsi

AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu/faketime", "/usr/lib/aarch64-linux-gnu/faketime",
                "/usr/lib/faketime")


def libfaketime() -> str:
    for directory in LIBRARY_DIRS:
        library = Path(directory) / "libfaketime.so.1"
        if library.exists():
            return str(library)
    require_service("libfaketime (Debian package faketime)",
                    FileNotFoundError(f"libfaketime.so.1 in none of {LIBRARY_DIRS}"))
    raise AssertionError("unreachable")


def scheduled_runs(server) -> list[dict]:  # noqa: ANN001
    code, body = server.request("/api/admin/jobs?limit=100", headers=AUTH)
    assert code == 200
    return [job for job in body["jobs"] if job["trigger"] == "schedule"]


@pytest.mark.timeout(90)
def test_a_wall_clock_step_forward_and_back_neither_expires_a_lease_nor_bursts_runs(servers, tmp_path):
    if shutil.which("faketime") is None:
        require_service("faketime", FileNotFoundError("faketime is not installed"))
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    # One region per request, one request at a time: each run lasts about 8 x 0.5 s, several
    # renewals of a 6 s lease (every 1.6 s), so renewals happen after each step.
    # Expiring at once, so every run asks again instead of skipping fresh regions.
    esi = FakeEsi({10000001 + i: 500 for i in range(8)}, latency_seconds=0.5, expires_seconds=0)
    with esi.run_in_thread():
        env = server_env(
            tmp_path, esi.url, JOB_LEASE_SECONDS="6", SCHEDULER_ENABLED="true",
            FETCH_INTERVAL_SECONDS="2", ESI_CONCURRENCY="1",
            LD_PRELOAD=libfaketime(), FAKETIME_TIMESTAMP_FILE=str(offset), FAKETIME_NO_CACHE="1",
            DONT_FAKE_MONOTONIC="1",
        )
        server = servers(env, tmp_path)
        server.wait_ready()

        slowly = {"timeout": 20, "interval": 0.1}  # each poll is a request the server logs

        def ended(job_id: str) -> list[dict]:
            return [j for j in scheduled_runs(server) if j["jobId"] == job_id and j["status"] != "running"]

        first = poll(lambda: next(iter(scheduled_runs(server)), None), what="a scheduled run", **slowly)
        offset.write_text("+1d\n")  # forward a day, mid-run
        done = poll(lambda: ended(first["jobId"]), what="the first run to end", **slowly)
        assert (done[0]["status"], done[0].get("error")) == ("completed", None)

        second = poll(lambda: [j for j in scheduled_runs(server) if j["status"] == "running"],
                      what="the next scheduled run", **slowly)[0]
        offset.write_text("+0\n")  # back a day, mid-run
        stepped_back_at = time.monotonic()
        done = poll(lambda: ended(second["jobId"]), what="the second run to end", **slowly)
        assert (done[0]["status"], done[0].get("error")) == ("completed", None)
        # The schedule goes on after the backward step (a wall-clock period would stall for a day).
        poll(lambda: len(scheduled_runs(server)) >= 3, what="a scheduled run after the step back", **slowly)
        elapsed = time.monotonic() - stepped_back_at

        runs = scheduled_runs(server)
        assert all(job.get("error") != "abandoned" for job in runs)
        assert len(runs) <= 3 + elapsed / 2  # one run at a time, never a burst of periods
        assert server.stop() == 0
    lines = server.lines()
    assert any(line.get("message", "").startswith("Wall clock stepped") for line in lines)
    assert not [line for line in lines if "lease lost" in line.get("message", "").lower()
                or "lease lapsed" in line.get("message", "").lower()]
