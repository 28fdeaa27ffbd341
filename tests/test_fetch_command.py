"""`python -m tornado_admin fetch` as an operator runs it, and a sweep killed halfway."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_aside
from tests.secrets_sweep import secret
from tests.server_helpers import read_terminal
from tests.sweep_helpers import stored_rows
from tornado_admin.fake_esi import FakeEsi

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = ("ADMIN_TOKEN", "CRON_SECRET", "JOB_STORE_URL", "DATABASE_URL", "ESI_REGIONS", "LOG_LEVEL")


def command_env(database_url: str, esi_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS and not k.startswith("ESI_")}
    return env | {
        "DATABASE_URL": database_url, "ESI_API_BASE_URL": esi_url, "LOG_LEVEL": "info",
        "ESI_USER_AGENT": "tornado-admin-tests", "PYTHONPATH": str(ROOT), **extra,
    }


def fetch(env: dict[str, str], cwd: Path, **options) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tornado_admin", "fetch"], env=env, cwd=cwd,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **options,
    )


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_fetch_runs_one_sweep_and_logs_json_lines(sqlite_url, tmp_path):
    esi = FakeEsi({10000002: 2500, 10000043: 1000, 10000030: 0})
    with esi.run_in_thread():
        process = fetch(command_env(sqlite_url, esi.url), tmp_path)
        out, err = process.communicate(timeout=30)

    assert process.returncode == 0, err
    assert out == ""  # not a terminal: no bar, no summary on stdout, only log lines
    lines = json_lines(err)  # every line is one JSON object
    messages = [line["message"] for line in lines]
    assert messages[0] == "Market sweep started"
    assert messages.count("Market sweep progress") == 4  # start + one per region
    finished = lines[-1]
    assert finished["message"] == "Market sweep finished"
    assert finished["level"] == "INFO"
    assert finished["result"]["successCount"] == 3
    assert finished["result"]["totalOrders"] == 3500
    assert len(run_aside(stored_rows(sqlite_url))) == 3500


def test_fetch_gives_up_at_the_maximum_duration_leaving_regions_whole(sqlite_url, tmp_path):
    esi = FakeEsi({10000002: 1000})
    with esi.run_in_thread():
        first = fetch(command_env(sqlite_url, esi.url), tmp_path)
        first.communicate(timeout=30)
        assert first.returncode == 0
        before = run_aside(stored_rows(sqlite_url))
        esi.update_region(10000002)
        esi.set_latency(30)  # ESI hangs: only the maximum duration ends the command
        started = time.monotonic()
        process = fetch(command_env(sqlite_url, esi.url, JOB_MAX_DURATION_SECONDS="1"), tmp_path)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 1
    assert time.monotonic() - started < 10
    [line] = [x for x in json_lines(err) if x["message"] == "Market sweep could not run"]
    assert line["error"] == "timed out after JOB_MAX_DURATION_SECONDS=1"
    assert run_aside(stored_rows(sqlite_url)) == before


def test_fetch_on_a_terminal_shows_a_bar_and_a_summary(sqlite_url, tmp_path):
    esi = FakeEsi({10000002: 2000, 10000043: 1000})
    controller, terminal = pty.openpty()
    with esi.run_in_thread():
        process = subprocess.Popen(
            [sys.executable, "-m", "tornado_admin", "fetch"], cwd=tmp_path,
            env=command_env(sqlite_url, esi.url), stdout=terminal, stderr=terminal,
        )
        os.close(terminal)
        output = read_terminal(controller)
        process.wait(timeout=30)
    text = output.decode()
    assert process.returncode == 0
    assert "[##############################] 2/2 regions" in text
    assert "Sweep finished in" in text
    assert "2 regions stored (2 fetched, 0 unchanged), 0 failed" in text
    assert "Orders: 3,000 held, 3,000 written" in text
    assert '"message"' not in text  # info log lines stay off the terminal


def test_fetch_exits_1_with_a_clear_line_when_the_database_is_down(tmp_path):
    url = f"postgresql://postgres:{secret('pg-secret-password')}@127.0.0.1:1/market"
    process = fetch(command_env(url, "http://127.0.0.1:9"), tmp_path)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 1
    [*_, failure] = json_lines(err)
    assert failure["message"] == "Market sweep could not run"
    assert "127.0.0.1:1" in failure["error"]
    assert "pg-secret-password" not in err


def test_fetch_refuses_bad_settings_naming_the_variable(tmp_path):
    process = fetch(command_env("sqlite:///m.db", "http://127.0.0.1:9", ESI_CONCURRENCY="lots"), tmp_path)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 1
    assert "ESI_CONCURRENCY must be an integer" in err
    assert "lots" not in err


def region_etags(database_url: str) -> dict[int, list[str]]:
    async def read() -> dict[int, list[str]]:
        import aiosqlite
        import asyncpg

        from tornado_admin.market.orders import sqlite_path

        if database_url.startswith("sqlite"):
            async with aiosqlite.connect(sqlite_path(database_url)) as conn:
                rows = await (await conn.execute("SELECT region_id, etags FROM market_regions")).fetchall()
            return {r[0]: json.loads(r[1]) for r in rows}
        conn = await asyncpg.connect(database_url)
        try:
            return {r[0]: list(r[1]) for r in await conn.fetch("SELECT region_id, etags FROM market_regions")}
        finally:
            await conn.close()

    return run_aside(read())


def region_ids_held(database_url: str) -> dict[int, frozenset[int]]:
    held: dict[int, set[int]] = {}
    for order_id, row in run_aside(stored_rows(database_url)).items():
        held.setdefault(row[0], set()).add(order_id)
    return {region: frozenset(ids) for region, ids in held.items()}


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_a_sweep_killed_mid_way_leaves_every_region_whole(request, database, tmp_path):
    database_url = request.getfixturevalue(f"{database}_url")
    regions = {10000000 + i: 4000 for i in range(1, 11)}
    # Expires now: the second sweep must ask again. Latency: slow enough to kill it mid-way.
    esi = FakeEsi(regions, expires_seconds=0, latency_seconds=0.04)
    env = command_env(database_url, "", ESI_CONCURRENCY="2")
    with esi.run_in_thread():
        env["ESI_API_BASE_URL"] = esi.url
        first = fetch(env, tmp_path)
        assert first.communicate(timeout=60)
        assert first.returncode == 0
        old = region_ids_held(database_url)
        old_etags = region_etags(database_url)
        for region_id in regions:
            esi.update_region(region_id)
        new = {rid: frozenset(o["order_id"] for o in esi.orders(rid)) for rid in regions}

        # Output to a file: an unread pipe could fill and stall the run we mean to kill.
        with open(tmp_path / "killed.log", "w") as log:
            second = subprocess.Popen(
                [sys.executable, "-m", "tornado_admin", "fetch"], env=env, cwd=tmp_path,
                stdout=log, stderr=log,
            )
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                replaced = [r for r, tags in region_etags(database_url).items() if tags != old_etags[r]]
                if replaced:
                    break
                time.sleep(0.01)
            second.send_signal(signal.SIGKILL)
            second.wait(timeout=10)

        held = region_ids_held(database_url)
        assert 1 <= len(replaced) < len(regions), "the kill did not land mid-sweep"
        for region_id in regions:
            assert held[region_id] in (old[region_id], new[region_id]), f"region {region_id} is mixed"
        assert sum(held[r] == new[r] for r in regions) < len(regions)

        third = fetch(env, tmp_path)  # what the killed run left behind does not get in the way
        _, err = third.communicate(timeout=60)
        assert third.returncode == 0, err
        assert region_ids_held(database_url) == new
