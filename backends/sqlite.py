"""Job store in one SQLite file (aiosqlite), shared by every process that opens it.

Atomicity: each state change is one `BEGIN IMMEDIATE` transaction, so writers take turns on the
file. Reads use a second connection: in WAL they go on while another process holds the write lock.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from backends.base import (
    ABANDONED,
    AlreadyRunning,
    Clock,
    Job,
    JobNotFoundError,
    JobStatus,
    JobStore,
    Lease,
    LeaseLostError,
    PeriodClaimed,
    SingleFlight,
    Started,
    StartOutcome,
    StoreUnavailableError,
    Trigger,
    is_job_id,
    new_job_id,
    new_lease_token,
)
from backends.sqlitefile import SerialConnection, Work, set_up

T = TypeVar("T")
BUSY_TIMEOUT_MS = 5000
# `seq` (the rowid) is the start order; the partial unique index both finds a name's running job
# and makes a second running row of one name impossible, whatever the code above it does.
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq              INTEGER PRIMARY KEY,
    job_id           TEXT    NOT NULL UNIQUE,
    job_name         TEXT    NOT NULL,
    trigger          TEXT    NOT NULL,
    status           TEXT    NOT NULL,
    started_ms       INTEGER NOT NULL,
    completed_ms     INTEGER,
    lease_expires_ms INTEGER,
    lease_token      TEXT,
    progress         TEXT,
    result           TEXT,
    error            TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_name ON jobs (job_name, seq);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_running ON jobs (job_name) WHERE status = 'running';
CREATE TABLE IF NOT EXISTS job_periods (
    job_name TEXT PRIMARY KEY,
    period   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS auth_failures (
    client TEXT NOT NULL, window_index INTEGER NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (client, window_index)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS job_last_success (
    job_name TEXT PRIMARY KEY,
    job_id TEXT NOT NULL, trigger TEXT NOT NULL, status TEXT NOT NULL, started_ms INTEGER NOT NULL,
    completed_ms INTEGER, lease_expires_ms INTEGER, progress TEXT, result TEXT, error TEXT
);
"""
COLUMNS = (
    "job_id, job_name, trigger, status, started_ms, completed_ms, lease_expires_ms, progress, result, error"
)


class SqliteJobStore(JobStore):
    def __init__(
        self, writer: SerialConnection, reader: SerialConnection, clock: Clock, history_limit: int
    ) -> None:
        super().__init__(clock, history_limit)
        # Each connection serves one call at a time, so a transaction's statements never
        # interleave with another coroutine's, and a read never queues behind a locked write.
        self._writer = writer
        self._reader = reader
        self._reads = SingleFlight()

    @classmethod
    async def open(
        cls, url: str, *, clock: Clock, history_limit: int, busy_timeout_ms: int = BUSY_TIMEOUT_MS
    ) -> SqliteJobStore:
        path = _path(url)

        async def prepare_writer(conn: aiosqlite.Connection) -> None:
            await set_up(conn, SCHEMA, busy_timeout_ms=busy_timeout_ms)

        async def prepare_reader(conn: aiosqlite.Connection) -> None:
            await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            await conn.execute("PRAGMA query_only = ON")

        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailableError(f"cannot open job store {path}: {exc}") from None
        writer = SerialConnection(path, busy_timeout_ms=busy_timeout_ms, prepare=prepare_writer)
        reader = SerialConnection(path, busy_timeout_ms=busy_timeout_ms, prepare=prepare_reader)
        await writer.open()  # first: it makes the schema the reader reads
        try:
            await reader.open()
        except StoreUnavailableError:
            await writer.close()
            raise
        return cls(writer, reader, clock, history_limit)

    async def start(
        self, job_name: str, trigger: Trigger, *, lease_ms: int, period: int | None = None
    ) -> StartOutcome:
        now = self.clock.now_ms()
        # Fast path, no write lock: a live running job seen in a committed snapshot is a true
        # answer. Anything else goes through the transaction, which checks again itself.
        running = await self._read_job("WHERE job_name = ? AND status = 'running'", job_name)
        if running is not None and _live(running, now):
            return AlreadyRunning(running)

        async def work(conn: aiosqlite.Connection) -> StartOutcome:
            await self._reap(conn, now, job_name)
            running = await _fetch_job(conn, "WHERE job_name = ? AND status = 'running'", job_name)
            if running is not None:
                return AlreadyRunning(running)
            if period is not None:
                cursor = await conn.execute(
                    "INSERT INTO job_periods (job_name, period) VALUES (?, ?) ON CONFLICT (job_name)"
                    " DO UPDATE SET period = excluded.period WHERE period < excluded.period",
                    (job_name, period),
                )
                if cursor.rowcount == 0:
                    return PeriodClaimed(period)
            token = new_lease_token()
            job = Job(
                job_id=new_job_id(), job_name=job_name, trigger=Trigger(trigger),
                status=JobStatus.RUNNING, started_ms=now, lease_expires_ms=now + lease_ms,
            )
            await conn.execute(
                "INSERT INTO jobs (job_id, job_name, trigger, status, started_ms, lease_expires_ms,"
                " lease_token) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job.job_id, job_name, job.trigger.value, job.status.value, now, now + lease_ms, token),
            )
            await self._trim(conn, job_name)
            return Started(Lease(job.job_id, job_name, token, now + lease_ms), job)

        return await self._transaction(work)

    async def renew(
        self, lease: Lease, *, lease_ms: int, progress: Mapping[str, Any] | None = None
    ) -> Lease:
        now = self.clock.now_ms()
        expires = now + lease_ms

        async def work(conn: aiosqlite.Connection) -> bool:
            await self._reap(conn, now, lease.job_name)
            cursor = await conn.execute(
                "UPDATE jobs SET lease_expires_ms = ?, progress = coalesce(?, progress)"
                " WHERE job_id = ? AND status = 'running' AND lease_token = ? AND lease_expires_ms > ?",
                (expires, _dump(progress), lease.job_id, lease.token, now),
            )
            return cursor.rowcount == 1

        if not await self._transaction(work):
            raise LeaseLostError(f"job {lease.job_id} no longer holds this lease")
        return Lease(lease.job_id, lease.job_name, lease.token, expires)

    async def finish(
        self,
        lease: Lease,
        *,
        status: JobStatus,
        result: Mapping[str, Any] | None = None,
        error: str | None = None,
    ) -> Job:
        now = self.clock.now_ms()
        status = JobStatus(status)

        async def work(conn: aiosqlite.Connection) -> Job | None:
            await self._reap(conn, now, lease.job_name)
            rows = await conn.execute_fetchall(
                "UPDATE jobs SET status = ?, completed_ms = ?, lease_expires_ms = NULL, lease_token = NULL,"
                " result = ?, error = ?"
                " WHERE job_id = ? AND status = 'running' AND lease_token = ? AND lease_expires_ms > ?"
                f" RETURNING {COLUMNS}",
                (status.value, now, _dump(result), error, lease.job_id, lease.token, now),
            )
            if not rows:
                return None
            job = _job(next(iter(rows)))
            if status is JobStatus.COMPLETED:
                await conn.execute(
                    f"INSERT OR REPLACE INTO job_last_success (job_name, {COLUMNS})"
                    f" SELECT job_name, {COLUMNS} FROM jobs WHERE job_id = ?",
                    (job.job_id,),
                )
            await self._trim(conn, job.job_name)
            return job

        job = await self._transaction(work)
        if job is None:
            raise LeaseLostError(f"job {lease.job_id} no longer holds this lease")
        return job

    async def get(self, job_id: str) -> Job:
        if not is_job_id(job_id):
            raise JobNotFoundError(job_id)
        now = self.clock.now_ms()
        job = await self._read_job("WHERE job_id = ?", job_id)  # no write lock unless reaping
        if job is None:
            raise JobNotFoundError(job_id)
        if job.status is not JobStatus.RUNNING or _live(job, now):
            return job

        async def work(conn: aiosqlite.Connection) -> Job | None:
            await self._reap(conn, now)
            return await _fetch_job(conn, "WHERE job_id = ?", job_id)

        job = await self._transaction(work)
        if job is None:
            raise JobNotFoundError(job_id)
        return job

    async def list(self, job_name: str | None = None, *, limit: int = 20) -> list[Job]:
        now = self.clock.now_ms()
        where, args = ("WHERE job_name = ?", (job_name,)) if job_name is not None else ("", ())
        jobs = await self._read(lambda conn: _fetch_jobs(conn, where, args, limit))
        if not any(job.status is JobStatus.RUNNING and not _live(job, now) for job in jobs):
            return jobs  # nothing to reap: no write lock needed

        async def work(conn: aiosqlite.Connection) -> list[Job]:
            await self._reap(conn, now, job_name)
            return await _fetch_jobs(conn, where, args, limit)

        return await self._transaction(work)

    async def current(self, job_name: str) -> Job | None:
        now = self.clock.now_ms()
        running = await self._read_job("WHERE job_name = ? AND status = 'running'", job_name)
        if running is None or _live(running, now):
            return running

        async def work(conn: aiosqlite.Connection) -> Job | None:
            await self._reap(conn, now, job_name)
            return await _fetch_job(conn, "WHERE job_name = ? AND status = 'running'", job_name)

        return await self._transaction(work)

    async def _read_job(self, where: str, *args: Any) -> Job | None:
        """A committed snapshot, without the write lock; identical concurrent reads share one."""
        return await self._reads.run(
            (where, args), lambda: self._read(lambda conn: _fetch_job(conn, where, *args))
        )

    async def last_success(self, job_name: str) -> Job | None:
        async def work(conn: aiosqlite.Connection) -> Job | None:
            return await _fetch_job(conn, "WHERE job_name = ?", job_name, table="job_last_success")

        # Shared: anonymous /api/status pollers must not queue on the read connection.
        return await self._reads.run(("last_success", job_name), lambda: self._read(work))

    async def note_auth_failure(self, client: str, *, window_ms: int) -> int:
        window = self.clock.now_ms() // window_ms

        async def work(conn: aiosqlite.Connection) -> int:
            await conn.execute("DELETE FROM auth_failures WHERE window_index < ?", (window,))
            rows = await conn.execute_fetchall(
                "INSERT INTO auth_failures (client, window_index, count) VALUES (?, ?, 1)"
                " ON CONFLICT (client, window_index) DO UPDATE SET count = count + 1 RETURNING count",
                (client, window),
            )
            return next(iter(rows))[0]

        return await self._transaction(work)

    async def auth_failures(self, client: str, *, window_ms: int) -> tuple[int, int]:
        now = self.clock.now_ms()
        window = now // window_ms

        async def read() -> int:
            rows = await self._read(lambda conn: conn.execute_fetchall(
                "SELECT count FROM auth_failures WHERE client = ? AND window_index = ?", (client, window)
            ))  # fmt: skip
            return next((row[0] for row in rows), 0)

        return await self._reads.run(("auth", client, window), read), (window + 1) * window_ms - now

    async def ping(self) -> None:
        # A write, not just a read: WAL readers go on while another process holds the file
        # locked, and a file opened read-only takes BEGIN IMMEDIATE but refuses any write; either
        # store would still turn every trigger into a 503. This write changes nothing.
        await self._transaction(lambda conn: conn.execute("DELETE FROM job_periods WHERE 0"))

    async def close(self) -> None:
        await self._reader.close()
        await self._writer.close()

    # -- inside a transaction ------------------------------------------------------------------

    async def _reap(self, conn: aiosqlite.Connection, now: int, job_name: str | None = None) -> None:
        """Record the lapsed running job (of that name, or of every name) abandoned."""
        rows = await conn.execute_fetchall(
            "UPDATE jobs SET status = 'failed', error = :error, completed_ms = lease_expires_ms,"
            " lease_expires_ms = NULL, lease_token = NULL"
            " WHERE status = 'running' AND lease_expires_ms <= :now AND (:name IS NULL OR job_name = :name)"
            " RETURNING job_name",
            {"error": ABANDONED, "now": now, "name": job_name},
        )
        for (name,) in rows:
            await self._trim(conn, name)

    async def _trim(self, conn: aiosqlite.Connection, job_name: str) -> None:
        await conn.execute(
            "DELETE FROM jobs WHERE job_name = :name AND status != 'running' AND seq <= ("
            " SELECT seq FROM jobs WHERE job_name = :name AND status != 'running'"
            " ORDER BY seq DESC LIMIT 1 OFFSET :keep)",
            {"name": job_name, "keep": self.history_limit},
        )

    # -- running work on the connection --------------------------------------------------------

    async def _transaction(self, work: Work[T]) -> T:
        async def transaction(conn: aiosqlite.Connection) -> T:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                outcome = await work(conn)
            except BaseException:
                await conn.rollback()
                raise
            await conn.commit()
            return outcome

        return await self._writer.call(transaction)

    async def _read(self, work: Work[T]) -> T:
        """A read, on the reader connection; database errors become `StoreUnavailableError`."""
        return await self._reader.call(work)


async def _fetch_jobs(conn: aiosqlite.Connection, where: str, args: tuple, limit: int) -> list[Job]:
    rows = await conn.execute_fetchall(
        f"SELECT {COLUMNS} FROM jobs {where} ORDER BY seq DESC LIMIT ?", (*args, max(0, limit))
    )
    return [_job(row) for row in rows]


async def _fetch_job(conn: aiosqlite.Connection, where: str, *args: Any, table: str = "jobs") -> Job | None:
    rows = await conn.execute_fetchall(f"SELECT {COLUMNS} FROM {table} {where}", args)
    return next((_job(row) for row in rows), None)


def _live(job: Job, now: int) -> bool:
    return job.lease_expires_ms is not None and now < job.lease_expires_ms


def _job(row: sqlite3.Row | tuple[Any, ...]) -> Job:
    job_id, job_name, trigger, status, started, completed, expires, progress, result, error = row
    return Job(
        job_id=job_id, job_name=job_name, trigger=Trigger(trigger), status=JobStatus(status),
        started_ms=started, completed_ms=completed, lease_expires_ms=expires,
        progress=_load(progress), result=_load(result), error=error,
    )


def _dump(value: Mapping[str, Any] | None) -> str | None:
    return json.dumps(dict(value)) if value is not None else None


def _load(text: str | None) -> dict[str, Any] | None:
    return json.loads(text) if text is not None else None


def _path(url: str) -> str:
    """`sqlite:///relative.db` -> 'relative.db'; `sqlite:////abs.db` -> '/abs.db'."""
    path = url.split("://", 1)[1] if "://" in url else ""
    if not path.startswith("/") or path == "/":
        raise StoreUnavailableError("a sqlite job store URL needs a path: sqlite:///relative.db")
    return path[1:]
