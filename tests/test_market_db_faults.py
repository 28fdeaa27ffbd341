"""The market database failing under a sweep: a disk that fills up (a file size limit, a full
tmpfs) and PostgreSQL restarted mid-sweep. Every region keeps its old orders or gets its new
ones, never a mix, and the next sweep heals without a process restart."""

from __future__ import annotations

import asyncio
import glob
import hashlib
import os
import pwd
import re
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.api_helpers import bearer
from tests.conftest import FakeClock, require_service, run_aside
from tests.secrets_sweep import secret
from tests.server_helpers import ServerProcess, free_port, poll, server_env
from tests.sweep_helpers import expected_rows, run_sweep, stored_rows
from tornado_admin.fake_esi import FakeEsi
from tornado_admin.market.fetch import SweepError, SweepProgress
from tornado_admin.market.orders import open_order_store

A, B, C = 10000001, 10000002, 10000003
# A is walked first (2 pages last time, the others 1; ESI_CONCURRENCY=1 walks one region at a
# time), so A's new orders are committed before B, grown, no longer fits.
FIRST = {A: 2000, B: 1000, C: 500}
# Under a file size limit B is meant to fail in its commit, the step that deletes the old rows:
# 15,000 orders still stage in memory (SQLite spills a TEMP table to a file past a 2 MB cache).
GROWN_UNDER_LIMIT = 15_000
GROWN_ON_FULL_DISK = 25_000  # about 3 MB of WAL, on a 2 MiB disk
# The fetch command with a file size limit: no write may reach past `limit` bytes in any file.
# SIGXFSZ ignored (CPython does so too), so write() fails with EFBIG instead of killing the
# process. Set in the child itself: preexec_fn is unsafe here, the fake ESI runs in a thread.
LIMITED_FETCH = """\
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv.pop(1))
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
runpy.run_module("tornado_admin", run_name="__main__", alter_sys=True)
"""


def digest(rows: dict[int, tuple]) -> tuple[int, str]:
    """A region's orders as (count, checksum of every column of every row)."""
    return len(rows), hashlib.sha256(repr(sorted(rows.items())).encode()).hexdigest()


def held(database_url: str, region_ids) -> dict[int, tuple[int, str]]:
    return {rid: digest(run_aside(stored_rows(database_url, rid))) for rid in region_ids}


def served(esi: FakeEsi, region_ids) -> dict[int, tuple[int, str]]:
    return {rid: digest(expected_rows(esi, rid)) for rid in region_ids}


def integrity(path: Path) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()


def sweep_once(database_url: str, esi: FakeEsi) -> None:
    async def sweep() -> None:
        store = await open_order_store(database_url)
        try:
            result = await run_sweep(esi, store, FakeClock(), concurrency=1)
        finally:
            await store.close()
        assert result.failed == []

    run_aside(sweep())


def fetch_command(database_url: str, esi: FakeEsi, cwd: Path, *prefix: str) -> subprocess.CompletedProcess:
    env = server_env(cwd, esi.url, DATABASE_URL=database_url, ESI_CONCURRENCY="1", LOG_LEVEL="info")
    command = [sys.executable, *(prefix or ("-m", "tornado_admin")), "fetch"]
    # Pipes, not files: a file size limit does not apply to a pipe, so every log line gets out.
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


# -- a file size limit ---------------------------------------------------------------------------


def test_a_region_past_the_file_size_limit_fails_and_keeps_its_old_orders(tmp_path):
    database = tmp_path / "market.db"
    url = f"sqlite:///{database}"
    esi = FakeEsi(FIRST, expires_seconds=0)  # always stale: every sweep asks again
    with esi.run_in_thread():
        sweep_once(url, esi)
        old = held(url, FIRST)
        esi.update_region(A)
        esi.update_region(B, GROWN_UNDER_LIMIT)
        esi.update_region(C)
        # Room for A's new orders (about 250 KB of WAL), not for B's (about 2 MB).
        limit = database.stat().st_size + 512 * 1024

        limited = fetch_command(url, esi, tmp_path, "-c", LIMITED_FETCH, str(limit))

        assert limited.returncode == 1, limited.stderr
        failure = limited.stderr.splitlines()[-1]
        assert '"message": "Market sweep could not run"' in failure
        assert f"market database error in region {B}: disk I/O error (SQLITE_IOERR_WRITE)" in failure
        assert integrity(database) == [("ok",)]
        now = held(url, FIRST)
        assert now[A] == served(esi, [A])[A]  # committed before the limit was reached
        assert now[B] == old[B]  # the same count and checksum: untouched
        assert now[C] in (old[C], served(esi, [C])[C])

        healed = fetch_command(url, esi, tmp_path)  # the limit gone: the next sweep succeeds

        assert healed.returncode == 0, healed.stderr
        assert held(url, FIRST) == served(esi, FIRST)
        assert integrity(database) == [("ok",)]


# -- a full filesystem ---------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A 2 MiB tmpfs: a filesystem that really fills up (ENOSPC), and grows back on remount."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        require_service("mount -t tmpfs (needs root)", OSError(mounted.stderr.strip()))
    try:
        yield disk
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=True)


def run_job(server: ServerProcess) -> dict:
    code, body = server.request("/api/admin/trigger-fetch", "POST", bearer())
    assert code == 202, body
    status = f"/api/admin/job-status/{body['jobId']}"
    poll(lambda: server.request(status, headers=bearer())[1]["status"] != "running", timeout=20,
         what="the run to end")
    return server.request(status, headers=bearer())[1]


def test_a_full_disk_fails_the_job_keeps_the_region_and_the_next_run_heals(small_disk, servers, tmp_path):
    database = small_disk / "market.db"
    url = f"sqlite:///{database}"
    esi = FakeEsi(FIRST, expires_seconds=0)
    with esi.run_in_thread():
        # One server throughout: its long-lived connection must survive the failure.
        server = servers(server_env(tmp_path, esi.url, DATABASE_URL=url, ESI_CONCURRENCY="1"), tmp_path)
        server.wait_ready()
        assert run_job(server)["status"] == "completed"
        old = held(url, FIRST)
        esi.update_region(A)
        esi.update_region(B, GROWN_ON_FULL_DISK)
        esi.update_region(C)

        full = run_job(server)

        assert full["status"] == "failed"
        assert full["error"] == (
            f"market database error in region {B}: database or disk is full (SQLITE_FULL)"
        )
        assert integrity(database) == [("ok",)]
        now = held(url, FIRST)
        assert now[A] == served(esi, [A])[A]
        assert now[B] == old[B]
        assert now[C] in (old[C], served(esi, [C])[C])

        subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
        healed = run_job(server)

        assert healed["status"] == "completed", healed
        assert healed["result"]["errorCount"] == 0
        assert held(url, FIRST) == served(esi, FIRST)
        assert server.stop() == 0
    assert integrity(database) == [("ok",)]


# -- PostgreSQL restarted ------------------------------------------------------------------------


class PrivatePostgres:
    """A PostgreSQL cluster of this module's own, on a free port: the shared one on :5432 is never
    restarted. fsync is off only to make restarts quick; it changes nothing a client sees."""

    def __init__(self, bindir: Path, base: Path) -> None:
        self.bindir, self.base, self.port = bindir, base, free_port()
        self.data, self.log = base / "data", base / "postgres.log"

    def run(self, tool: str, *args: str) -> None:
        # DEVNULL: a server started by pg_ctl would otherwise hold our pipe open forever.
        subprocess.run(["runuser", "-u", "postgres", "--", str(self.bindir / tool), *args],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)

    def pg_ctl(self, *args: str) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", *args)

    def start(self) -> None:
        self.run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        options = f"-p {self.port} -k {self.base} -h 127.0.0.1 -c fsync=off -c full_page_writes=off"
        self.pg_ctl("-o", options, "start")

    def restart(self, mode: str) -> None:
        self.pg_ctl("-m", mode, "restart")  # pg_ctl reuses the options the server started with

    def url(self, password: str = "") -> str:
        credentials = f"postgres:{password}" if password else "postgres"
        return f"postgresql://{credentials}@127.0.0.1:{self.port}/postgres"


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    bindirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    try:
        if not bindirs:
            raise FileNotFoundError("no /usr/lib/postgresql/*/bin")
        pwd.getpwnam("postgres")
        if os.geteuid() != 0:
            raise PermissionError("running pg_ctl as the postgres user needs root")
    except (OSError, KeyError) as exc:
        require_service("a private PostgreSQL cluster (initdb, pg_ctl, user postgres)", exc)
    # Not under pytest's basetemp, which only root may enter; the data dir must be postgres's own.
    base = Path(tempfile.mkdtemp(prefix="tornado-admin-pg-"))
    shutil.chown(base, "postgres")
    cluster = PrivatePostgres(Path(bindirs[-1]), base)
    try:
        cluster.start()
        yield cluster
    finally:
        if (cluster.data / "postmaster.pid").exists():
            cluster.pg_ctl("-m", "immediate", "stop")
        shutil.rmtree(base)


@pytest.fixture
def private_url(private_postgres) -> str:
    """A schema of the test's own in the private cluster; the URL carries a password, which
    must never show in an error (trust authentication ignores it)."""
    schema = f"t_{secrets.token_hex(6)}"

    async def create() -> None:
        conn = await asyncpg.connect(private_postgres.url(), timeout=10)
        try:
            await conn.execute(f"CREATE SCHEMA {schema}")
        finally:
            await conn.close()

    run_aside(create())
    return f"{private_postgres.url(secret('restart-secret-pw'))}?search_path={schema}"


CLEAR_RESTART_ERROR = re.compile(
    r"market database error in region (?P<region>\d+): (AdminShutdownError: terminating connection"
    r"|ConnectionDoesNotExistError: connection was closed|the connection to the database was lost"
    r"|ConnectionRefusedError: |CannotConnectNowError: the database system is).*"
)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_restarted_mid_sweep_leaves_regions_whole_and_the_pool_reconnects(
    private_postgres, private_url, mode
):
    regions = {10000001 + i: 3000 for i in range(12)}  # 3 pages each
    # Slow pages: the walk of later regions is still going on when the restart lands.
    esi = FakeEsi(regions, expires_seconds=0, latency_seconds=0.05)
    outcome: dict[str, object] = {}

    async def scenario() -> None:
        await esi.start()
        store = await open_order_store(private_url, max_writers=4)
        try:
            assert (await run_sweep(esi, store, FakeClock(), concurrency=4)).failed == []
            outcome["old"] = await _sets(private_url)
            assert set(outcome["old"]) == set(regions)
            for region_id in regions:
                esi.update_region(region_id)
            first_done = asyncio.Event()

            def progress(p: SweepProgress) -> None:
                if p.regions_done:
                    first_done.set()

            sweep = asyncio.ensure_future(
                run_sweep(esi, store, FakeClock(), concurrency=4, progress=progress)
            )
            await asyncio.wait_for(first_done.wait(), 20)
            await asyncio.get_running_loop().run_in_executor(None, private_postgres.restart, mode)
            try:
                async with asyncio.timeout(20):  # the sweep ends: no hang on a dead connection
                    await sweep
            except SweepError as exc:
                outcome["error"] = str(exc)
            outcome["mid"] = await _sets(private_url)
            # The same store, the same pool: it reconnects without a process restart.
            await store.ping()
            outcome["next"] = await run_sweep(esi, store, FakeClock(), concurrency=4)
        finally:
            async with asyncio.timeout(20):
                await store.close()
                await esi.stop()

    run_aside(scenario())

    old, mid = outcome["old"], outcome["mid"]
    new = {rid: frozenset(o["order_id"] for o in esi.orders(rid)) for rid in regions}
    for region_id in regions:
        assert mid[region_id] in (old[region_id], new[region_id]), f"region {region_id} is mixed"
    replaced = {rid for rid in regions if mid[rid] == new[rid]}
    assert replaced, "the restart came before any region was stored"
    assert len(replaced) < len(regions), "the restart came after the sweep"
    error = outcome.get("error")
    assert error is not None, "the sweep did not notice the restart"
    # It names the region and the cause, never asyncpg's aftermath ("connection has been
    # released back to the pool") nor the password.
    named = CLEAR_RESTART_ERROR.fullmatch(error)
    assert named, error
    assert int(named["region"]) in set(regions) - replaced  # the failed region kept its old orders
    assert "restart-secret-pw" not in error
    assert outcome["next"].failed == []
    assert run_aside(_sets(private_url)) == new


async def _sets(database_url: str) -> dict[int, frozenset[int]]:
    sets: dict[int, set[int]] = {}
    for order_id, row in (await stored_rows(database_url)).items():
        sets.setdefault(row[0], set()).add(order_id)
    return {rid: frozenset(ids) for rid, ids in sets.items()}
