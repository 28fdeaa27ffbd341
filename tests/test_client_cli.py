"""`tornado-admin trigger | status | jobs` as an operator runs them: subprocesses against a real
server process and the fake ESI, every exit code, terminal and plain output, the token never shown."""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.api_helpers import TOKEN
from tests.conftest import require_service
from tests.redis_helpers import PrivateRedis
from tests.secrets_sweep import secret
from tests.server_helpers import ROOT, ServerProcess, free_port, read_terminal, server_env
from tornado_admin.fake_esi import FakeEsi

WRONG_TOKEN = secret("wrong-admin-token-" + "w" * 30)  # the sweep looks for it in every output too
CLIENT_SETTINGS = ("ADMIN_TOKEN", "TORNADO_ADMIN_URL", "HOST", "PORT")
# Four regions, one request each at a time, every request 0.2 s: a run takes about 2 s, and a
# region takes long enough that a poll every 0.2 s sees the bar part-filled. Expires 0: every run
# asks ESI again (with 304s), so later runs are as slow as the first.
REGIONS = {10000002: 3000, 10000043: 2000, 10000030: 1000, 10000032: 0}
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def client_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_SETTINGS}
    return env | {"PYTHONPATH": str(ROOT), **extra}


def cli(*args: str, cwd: Path, token: str | None = TOKEN, **extra: str) -> subprocess.CompletedProcess:
    """One command run to its end; its output never shows a token."""
    env = client_env(**extra) | ({"ADMIN_TOKEN": token} if token else {})
    done = subprocess.run([sys.executable, "-m", "tornado_admin", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=30)
    assert_no_secret(done.stdout + done.stderr)
    return done


def assert_no_secret(output: str) -> None:
    assert TOKEN not in output
    assert WRONG_TOKEN not in output


def listed_jobs(server: ServerProcess) -> list[dict]:
    return server.request("/api/admin/jobs", headers=AUTH)[1]["jobs"]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServerProcess]:
    """One server for the module, on a slow fake ESI; tests wait for their runs to end."""
    cwd = tmp_path_factory.mktemp("server")
    esi = FakeEsi(REGIONS, latency_seconds=0.2, expires_seconds=0)
    with esi.run_in_thread():
        process = ServerProcess(server_env(cwd, esi.url, ESI_CONCURRENCY="1"), cwd)
        try:
            process.wait_ready()
            yield process
        finally:
            assert process.stop() == 0
            assert_no_secret(process.output())


@pytest.fixture
def url(server: ServerProcess) -> Iterator[str]:
    yield server.url("")
    deadline = time.monotonic() + 15  # the next test starts with no run going
    while any(job["status"] == "running" for job in listed_jobs(server)):
        assert time.monotonic() < deadline, "a run never ended"
        time.sleep(0.05)


def started_id(stdout: str) -> str:
    match = re.match(r"Job ([A-Za-z0-9_-]{22}) started\n", stdout)
    assert match, stdout
    return match.group(1)


def test_trigger_wait_on_a_terminal_draws_a_bar_then_the_result(url, tmp_path):
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "tornado_admin", "trigger", "--wait", "--url", url, "--interval", "0.2"],
        env=client_env(ADMIN_TOKEN=TOKEN), cwd=tmp_path, stdout=terminal, stderr=terminal,
    )
    os.close(terminal)
    output = read_terminal(controller)
    assert process.wait(timeout=30) == 0
    text = output.decode()
    assert_no_secret(text)
    # A part-filled bar, redrawn in place, then the bar erased and the result on its own lines.
    assert re.search(r"\r\x1b\[K\[#+-+\] [123]/4 regions  [\d,]+ orders  \d+\.\ds", text), text
    result = text.rsplit("\r\x1b[K", 1)[1]
    assert re.match(r"Job [A-Za-z0-9_-]{22}: completed in \d+\.\d s \(manual trigger", result), result
    assert "Regions: 4 stored" in result
    assert "Orders: 6,000 held" in result


def test_trigger_wait_not_on_a_terminal_prints_plain_lines(url, tmp_path):
    done = cli("trigger", "--wait", "--url", url, "--interval", "0.2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stdout
    assert "\x1b" not in done.stdout
    lines = done.stdout.splitlines()
    job_id = lines[0].split()[1]
    progress = [line for line in lines if line.startswith(f"Job {job_id} running: ")]
    assert lines[:len(progress)] == progress
    assert any(re.search(r"running: [123]/4 regions", line) for line in progress), lines
    assert len(progress) == len(set(progress))  # a line per change, not per poll
    result = lines[len(progress):]
    assert len(result) == 3, lines
    assert result[0].startswith(f"Job {job_id}: completed in ")
    assert re.fullmatch(r"Regions: 4 stored \(\d fetched, \d unchanged\), 0 failed", result[1])
    assert re.fullmatch(r"Orders: 6,000 held, [\d,]+ written", result[2])


def test_a_second_trigger_exits_2_naming_the_run_then_status_and_jobs_follow_it(url, tmp_path):
    first = cli("trigger", "--url", url, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    job_id = started_id(first.stdout)
    assert first.stdout.splitlines()[1] == f"Follow it with: tornado-admin status --wait {job_id}"

    second = cli("trigger", "--wait", "--url", url, cwd=tmp_path)
    assert second.returncode == 2
    lines = second.stdout.splitlines()
    assert lines[0] == f"Job already in progress: {job_id}"
    assert lines[1].startswith(f"Job {job_id}: running for ")
    as_json = cli("trigger", "--json", "--url", url, cwd=tmp_path)
    assert as_json.returncode == 2
    assert json.loads(as_json.stdout)["jobId"] == job_id

    status = cli("status", job_id, "--url", url, cwd=tmp_path)
    assert status.returncode == 0
    assert status.stdout.startswith(f"Job {job_id}: running for ")
    assert re.search(r"^Progress: (starting|\d/4 regions, [\d,]+ orders)$", status.stdout, re.M)
    listed = cli("jobs", "--url", url, cwd=tmp_path)
    assert listed.returncode == 0
    assert re.match(rf"{job_id}  running    manual    \S+Z +\d+\.\d  ", listed.stdout)
    assert "JOB ID" not in listed.stdout  # no header when not on a terminal

    waited = cli("status", "--wait", "--json", "--interval", "0.2", job_id, "--url", url, cwd=tmp_path)
    assert waited.returncode == 0
    assert waited.stdout.count("\n") == 1  # the final body alone
    body = json.loads(waited.stdout)
    assert (body["jobId"], body["status"], body["result"]["successCount"]) == (job_id, "completed", 4)
    jobs = json.loads(cli("jobs", "--json", "--limit", "1", "--url", url, cwd=tmp_path).stdout)["jobs"]
    assert [(job["jobId"], job["status"]) for job in jobs] == [(job_id, "completed")]
    done = cli("status", job_id, "--url", url, cwd=tmp_path)
    assert done.stdout.startswith(f"Job {job_id}: completed in ")
    assert "Orders: 6,000 held" in done.stdout


def test_ctrl_c_while_waiting_exits_130_and_leaves_the_run_going(server, url, tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "tornado_admin", "trigger", "--wait", "--url", url, "--interval", "0.2"],
        env=client_env(ADMIN_TOKEN=TOKEN), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    first = process.stdout.readline()  # the command is polling
    job_id = first.split()[1]
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=10)
    assert process.returncode == 130
    assert err == (f"tornado-admin: stopped waiting; job {job_id} goes on "
                   f"(tornado-admin status --wait {job_id})\n")
    assert_no_secret(first + out + err)
    deadline = time.monotonic() + 15
    while (body := server.request(f"/api/admin/job-status/{job_id}", headers=AUTH)[1])["status"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert body["status"] == "completed"  # not cancelled


def test_a_run_that_fails_exits_1_with_its_error(servers, tmp_path):
    esi = FakeEsi({10000002: 1000}, latency_seconds=3)  # the region list alone outlasts the run
    with esi.run_in_thread():
        server = servers(server_env(tmp_path, esi.url, JOB_MAX_DURATION_SECONDS="1"), tmp_path)
        server.wait_ready()
        done = cli("trigger", "--wait", "--url", server.url(""), "--interval", "0.2", cwd=tmp_path)
        assert server.stop() == 0
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert re.match(r"Job \S+: failed after \d+\.\d s \(manual trigger", lines[-2]), lines
    assert lines[-1] == "Error: timed out"


def test_a_wrong_or_missing_token_exits_3_and_is_never_shown(url, server, tmp_path):
    wrong = cli("trigger", "--wait", "--url", url, cwd=tmp_path, token=WRONG_TOKEN)
    assert (wrong.returncode, wrong.stdout) == (3, "")
    assert wrong.stderr == "tornado-admin: the server refused the admin token (Invalid admin token)\n"

    missing = cli("trigger", "--url", url, cwd=tmp_path, token=None)
    assert (missing.returncode, missing.stdout) == (3, "")
    assert missing.stderr == "tornado-admin: no admin token: set ADMIN_TOKEN or pass --token-file FILE\n"
    assert "Missing or invalid Authorization header" not in server.output()  # never sent without one

    (tmp_path / "empty").write_text("\n")
    empty = cli("jobs", "--url", url, "--token-file", str(tmp_path / "empty"), cwd=tmp_path)
    assert empty.returncode == 3
    assert empty.stderr == f"tornado-admin: the token file {tmp_path}/empty is empty\n"
    (tmp_path / "spaced").write_text(f"{TOKEN[:10]} {TOKEN[10:]}\n")
    spaced = cli("jobs", "--url", url, "--token-file", str(tmp_path / "spaced"), cwd=tmp_path)
    assert spaced.returncode == 3
    assert "cannot carry it" in spaced.stderr
    assert TOKEN[:10] not in spaced.stderr


def test_the_token_file_is_read_with_whitespace_stripped_and_wins_over_the_environment(url, server, tmp_path):
    (tmp_path / "token").write_text(f"  {TOKEN}\n\n")
    done = cli("jobs", "--url", url, "--token-file", str(tmp_path / "token"), cwd=tmp_path, token=WRONG_TOKEN)
    assert done.returncode == 0, done.stderr
    piped = subprocess.run(
        [sys.executable, "-m", "tornado_admin", "jobs", "--json", "--url", url, "--token-file", "-"],
        input=TOKEN + "\n", env=client_env(), cwd=tmp_path, capture_output=True, text=True, timeout=30,
    )
    assert piped.returncode == 0
    assert "jobs" in json.loads(piped.stdout)


def test_the_url_comes_from_the_settings_files_the_server_reads_and_nothing_else_is_needed(server, url,
                                                                                         tmp_path):
    # A directory like the server's own: .env.local holds the port and the token, and the
    # server-only settings are invalid here, which a client must not care about.
    (tmp_path / ".env.local").write_text(f"PORT={server.port}\nADMIN_TOKEN={TOKEN}\nHOST=0.0.0.0\n")
    broken = {"DATABASE_URL": "nonsense", "LOG_LEVEL": "loud", "JOB_STORE_URL": "ftp://x"}
    done = cli("jobs", cwd=tmp_path, token=None, **broken)
    assert done.returncode == 0, done.stderr
    # TORNADO_ADMIN_URL wins over HOST/PORT; --url wins over both.
    elsewhere = f"http://127.0.0.1:{free_port()}"
    assert cli("jobs", cwd=tmp_path, token=None, TORNADO_ADMIN_URL=elsewhere).returncode == 5
    assert cli("jobs", "--url", url, cwd=tmp_path, token=None, TORNADO_ADMIN_URL=elsewhere).returncode == 0


def test_an_unreachable_server_exits_5_with_one_line(tmp_path):
    where = f"http://127.0.0.1:{free_port()}"
    done = cli("trigger", "--wait", "--url", where, cwd=tmp_path)
    assert (done.returncode, done.stdout) == (5, "")
    assert done.stderr == f"tornado-admin: cannot reach the server at {where}: Connection refused\n"


def test_bad_arguments_exit_64_and_unknown_jobs_4(tmp_path, url):
    assert cli("status", "--url", url, cwd=tmp_path).returncode == 64  # no JOB_ID
    assert cli("triger", "--wait", cwd=tmp_path).returncode == 64  # a typo must not read as a 409
    assert cli("trigger", "--url", "ftp://127.0.0.1", cwd=tmp_path).returncode == 64
    with_password = cli("jobs", "--url", "http://admin:hunter2hunter2@127.0.0.1:3000", cwd=tmp_path)
    assert with_password.returncode == 64
    assert "hunter2" not in with_password.stderr
    limit = cli("jobs", "--limit", "0", "--url", url, cwd=tmp_path)
    assert limit.returncode == 64
    assert "limit must be an integer from 1 to 100" in limit.stderr
    unknown = cli("status", "A" * 22, "--url", url, cwd=tmp_path)
    assert unknown.returncode == 4
    assert "not found" in unknown.stderr
    assert cli("status", "../jobs", "--url", url, cwd=tmp_path).returncode == 4  # stays one path segment
    # One id in 32 starts with '-' (URL-safe base64): an id, not an unknown option.
    for args in (["-" + "A" * 21, "--url", url], ["--wait", "-" + "A" * 21, "--url", url],
                 ["--url", url, "--job-id=-" + "A" * 21]):
        dashed = cli("status", *args, cwd=tmp_path)
        assert (dashed.returncode, "not found" in dashed.stderr) == (4, True), dashed.stderr


def test_a_job_store_outage_answers_503_and_exits_6(servers, tmp_path):
    if shutil.which("redis-server") is None:
        require_service("redis-server (the binary)", FileNotFoundError("redis-server"))
    redis = PrivateRedis(tmp_path)
    redis.start()
    try:
        server = servers(server_env(tmp_path, JOB_STORE_URL=f"redis://127.0.0.1:{redis.port}/0"), tmp_path)
        server.wait_ready()
        assert cli("jobs", "--url", server.url(""), cwd=tmp_path).returncode == 0
    finally:
        redis.stop()
    done = cli("trigger", "--wait", "--url", server.url(""), cwd=tmp_path)
    assert server.stop() == 0
    assert (done.returncode, done.stdout) == (6, "")
    assert done.stderr == ("tornado-admin: server unavailable (HTTP 503: Job store unavailable, retry later);"
                           " retry in 5 s\n")


class ScriptedServer:
    """A stand-in for misbehaviour the real server cannot be made to show on cue: each request
    gets the next scripted answer; the requests are recorded with their arrival times."""

    def __init__(self, answers: list[tuple[int, dict[str, str], dict]]) -> None:
        self.answers, self.requests = list(answers), []
        script = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                script.requests.append((time.monotonic(), self.command, self.path, dict(self.headers)))
                status, headers, body = script.answers.pop(0) if script.answers else (500, {}, {})
                data = json.dumps(body).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_POST = do_GET

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        self.thread = threading.Thread(target=self.http.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.shutdown()
        self.http.server_close()


JOB_ID = "Abcdefghijklmnopqrstuv"
ACCEPTED = (202, {}, {"jobId": JOB_ID, "status": "started"})
UNAVAILABLE = (503, {"Retry-After": "1"},
               {"error": "Service Unavailable", "message": "Job store unavailable"})
COMPLETED = (200, {}, {"jobId": JOB_ID, "status": "completed", "trigger": "manual", "duration": 1200,
                       "startedAt": "2026-01-01T00:00:00.000Z", "result": {"successCount": 3}})


def test_waiting_honours_retry_after_on_a_503_then_carries_on(tmp_path):
    with ScriptedServer([ACCEPTED, UNAVAILABLE, COMPLETED]) as script:
        done = cli("trigger", "--wait", "--url", script.url, "--interval", "0.1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ("tornado-admin: waiting: server unavailable (HTTP 503: Job store unavailable);"
                           " retry in 1 s\n")
    (_, post, _, headers), (unavailable_at, *_), (next_at, _, path, _) = script.requests
    assert post == "POST"
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert path == f"/api/admin/job-status/{JOB_ID}"
    assert TOKEN not in path
    assert next_at - unavailable_at >= 0.95  # Retry-After: 1, not the 0.1 s interval


def test_waiting_gives_up_after_its_patience(tmp_path):
    with ScriptedServer([ACCEPTED] + [UNAVAILABLE] * 5) as script:
        done = cli("trigger", "--wait", "--url", script.url, "--patience", "0.5", cwd=tmp_path)
    assert done.returncode == 6
    assert done.stderr.splitlines()[-1].startswith("tornado-admin: server unavailable (HTTP 503")
    assert len(script.requests) == 3  # the trigger, a 503 waited out, a 503 past the patience


def test_a_redirect_is_not_followed_so_the_token_stays_put(tmp_path):
    with ScriptedServer([]) as elsewhere, \
            ScriptedServer([(307, {"Location": f"{elsewhere.url}/api/admin/trigger-fetch"}, {})]) as script:
        done = cli("trigger", "--url", script.url, cwd=tmp_path)
    assert done.returncode == 6
    assert "unexpected answer" in done.stderr
    assert "HTTP 307" in done.stderr
    assert elsewhere.requests == []

