"""The server as a process: startup checks, SIGTERM, and no secret in anything it prints."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from tests.api_helpers import TOKEN
from tests.secrets_sweep import secret
from tests.server_helpers import server_env
from tornado_admin.fake_esi import FakeEsi


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_interrupts_the_running_job_and_exits_0(servers, tmp_path, signum):
    esi = FakeEsi({10000002: 2000}, latency_seconds=30)  # the sweep hangs on its first page
    with esi.run_in_thread():
        server = servers(server_env(tmp_path, esi.url), tmp_path)
        server.wait_ready()
        headers = {"Authorization": f"Bearer {TOKEN}"}
        status, body = server.request("/api/admin/trigger-fetch", "POST", headers)
        assert status == 202
        started = time.monotonic()
        assert server.stop(signum) == 0
        assert time.monotonic() - started < 5
    lines = server.lines()
    [failed] = [line for line in lines if line["message"] == "Manual job failed"]
    assert failed["jobId"] == body["jobId"]
    assert failed["error"] == "interrupted by shutdown"
    assert lines[-1]["message"] == "Server stopped"


def test_every_printed_line_is_json_and_no_token_leaks(servers, tmp_path):
    """The token sent every wrong way, and right: it appears nowhere in what the server prints."""
    env = server_env(tmp_path, CRON_SECRET=secret("cron-" + "s" * 40))
    server = servers(env, tmp_path)
    server.wait_ready()
    near_miss = TOKEN[:-1] + ("A" if TOKEN[-1] != "A" else "B")
    attempts = [
        {"Authorization": f"bearer {TOKEN}"}, {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Token {TOKEN}"}, {"Authorization": f"Bearer    {TOKEN}   "},
        {"Authorization": f"Bearer\t{TOKEN}"}, {"Authorization": TOKEN},
        {"Authorization": f"Bearer {near_miss}"}, {"X-Admin-Token": TOKEN},
        {"Authorization": f"Bearer {env['CRON_SECRET']}"},
    ]
    for headers in attempts:
        server.request("/api/admin/jobs", headers=headers)
    for path in (f"/api/admin/jobs?token={TOKEN}", f"/api/admin/jobs?t={TOKEN}&x=1",
                 f"/api/admin/job-status/{TOKEN}", f"/nowhere/{TOKEN}"):
        server.request(path, headers={"Authorization": f"Bearer {TOKEN}"})
    server.request("/api/cron/fetch-market-data", headers={"Authorization": f"Bearer {TOKEN}"})
    assert server.stop() == 0
    output = server.output()
    lines = server.lines()  # every line parses as one JSON object
    assert len(lines) > len(attempts)
    assert TOKEN not in output
    assert env["CRON_SECRET"] not in output
    assert any(line["message"] == "Invalid admin token provided" for line in lines)
    assert not any(line["message"] == "Scheduler started" for line in lines)  # SCHEDULER_ENABLED=false
    assert any(line["message"] == "Missing or invalid Authorization header" for line in lines)


def test_a_bad_setting_stops_startup_with_one_line_naming_it(tmp_path):
    for env, message in [
        ({"ADMIN_TOKEN": "your-admin-token"}, "ADMIN_TOKEN holds a placeholder"),
        ({"ADMIN_TOKEN": "short"}, "ADMIN_TOKEN must be at least 32 characters"),
        ({"JOB_STORE_URL": "mongodb://db"}, "JOB_STORE_URL must start with one of"),
        ({"PORT": "http"}, "PORT must be an integer"),
    ]:
        result = subprocess.run(
            [sys.executable, "-m", "tornado_admin", "serve"], env=server_env(tmp_path, **env),
            cwd=tmp_path, capture_output=True, text=True, timeout=30,
        )
        assert result.returncode == 1
        assert result.stdout == ""
        [line] = result.stderr.splitlines()
        assert message in line
        assert "your-admin-token" not in line or "placeholder" in line and "your-admin" not in line


def test_an_unusable_market_database_stops_startup_with_one_clear_line(servers, tmp_path):
    env = server_env(tmp_path, DATABASE_URL=f"postgresql://app:{secret('db-password-123')}@127.0.0.1:1/market")
    server = servers(env, tmp_path)
    assert server.process.wait(timeout=30) == 1
    [line] = [x for x in server.lines() if x["level"] == "CRITICAL"]
    assert line["message"].startswith("Server cannot start: cannot connect to market database")
    assert "db-password-123" not in server.output()


def test_an_unset_admin_token_is_logged_and_admin_routes_answer_500(servers, tmp_path):
    server = servers(server_env(tmp_path, ADMIN_TOKEN=""), tmp_path)
    server.wait_ready()
    assert server.request("/api/admin/jobs") == (500, {"error": "Server misconfiguration"})
    assert server.stop() == 0
    assert any(x["message"].startswith("ADMIN_TOKEN is not set") for x in server.lines())


def test_dev_token_writes_a_strong_token_once_and_never_prints_it(tmp_path):
    env = server_env(tmp_path, ADMIN_TOKEN="")
    run = [sys.executable, "-m", "tornado_admin", "dev-token"]
    first = subprocess.run(run, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert first.returncode == 0
    local = (tmp_path / ".env.local").read_text()
    [token] = [line.split("=", 1)[1] for line in local.splitlines() if line.startswith("ADMIN_TOKEN=")]
    assert len(token) >= 40
    assert token not in first.stdout + first.stderr
    assert str(tmp_path / ".env.local") in first.stderr
    assert (tmp_path / ".env.local").stat().st_mode & 0o077 == 0  # readable by its owner only
    second = subprocess.run(run, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert second.returncode == 0
    assert (tmp_path / ".env.local").read_text() == local  # already set: left alone
