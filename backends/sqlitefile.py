"""SQLite files shared with other processes: setting one up, and a connection that serves one call
at a time within a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import math
import sqlite3
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiosqlite

from backends.base import StoreUnavailableError

T = TypeVar("T")
SETUP_ATTEMPTS = 50
SETUP_PAUSE_SECONDS = 0.1
SQLITE_READONLY = 8  # the primary result code; extended ones (…_DBMOVED, …_CANTINIT) share it
# A call that queued for less than this still gets the whole busy timeout: no PRAGMA round trip.
BUSY_SLACK_MS = 50

Work = Callable[[aiosqlite.Connection], Awaitable[T]]
Prepare = Callable[[aiosqlite.Connection], Awaitable[None]]


async def set_up(conn: aiosqlite.Connection, schema: str, *, busy_timeout_ms: int) -> None:
    """busy_timeout, WAL, synchronous=NORMAL (durable in WAL but for the last commits before a
    power loss), then the schema. Switching to WAL takes a lock that does not wait for the busy
    timeout, so two servers starting together on a new file retry here instead of failing."""
    await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    for attempt in range(SETUP_ATTEMPTS):
        try:
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute("PRAGMA synchronous = NORMAL")
            await conn.executescript(schema)
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == SETUP_ATTEMPTS - 1:
                raise
            await asyncio.sleep(SETUP_PAUSE_SECONDS)


class SerialConnection:
    """One aiosqlite connection to `path`, serving one call at a time; every call answers, or
    raises `StoreUnavailableError`, within `busy_timeout_ms` of being made.

    - The deadline covers the wait behind this process's earlier calls too. Without it, while
      another process holds the file locked, each queued call would wait its own whole busy
      timeout after the one before it, and an API request could wait for minutes.
    - A call runs to its end once it holds the connection, even if its caller is cancelled, so
      no transaction is ever left open.
    - After a read-only error the connection is reopened by the next call: SQLite quietly opens
      a file it may not write read-only, and that connection stays read-only for good, even
      once the file is writable again.
    """

    def __init__(self, path: str, *, busy_timeout_ms: int, prepare: Prepare) -> None:
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._prepare = prepare  # sets busy_timeout_ms, and whatever else the connection needs
        self._conn: aiosqlite.Connection | None = None
        self._conn_busy_ms = busy_timeout_ms
        self._lock = asyncio.Lock()
        self._closed = False  # then a late call must not open a connection nobody closes

    async def open(self) -> None:
        """Open now (at startup), so that a file that cannot be opened stops the caller."""
        async with self._lock:
            await self._connection()

    async def call(self, work: Work[T]) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._busy_timeout_ms / 1000
        try:
            async with asyncio.timeout_at(deadline):
                await self._lock.acquire()
        except TimeoutError:
            raise StoreUnavailableError(
                f"job store unavailable: database is locked (still busy after {self._busy_timeout_ms} ms)"
            ) from None
        task = asyncio.ensure_future(self._locked(work, deadline))
        task.add_done_callback(_retrieve)  # a caller that was cancelled no longer reads it
        return await asyncio.shield(task)

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            if self._conn is not None:
                conn, self._conn = self._conn, None
                await conn.close()

    async def _locked(self, work: Work[T], deadline: float) -> T:
        conn = None
        try:
            conn = await self._connection()
            left_ms = math.ceil((deadline - asyncio.get_running_loop().time()) * 1000)
            await self._set_busy_timeout(conn, max(1, left_ms))
            return await work(conn)
        except sqlite3.Error as exc:
            if conn is not None:
                await self._recover(conn, exc)
            raise StoreUnavailableError(f"job store unavailable: {_describe(exc)}") from None
        finally:
            self._lock.release()

    async def _connection(self) -> aiosqlite.Connection:
        if self._conn is not None:
            return self._conn
        if self._closed:
            raise StoreUnavailableError("job store closed")
        try:
            conn = await aiosqlite.connect(self._path, isolation_level=None)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailableError(f"cannot open job store {self._path}: {_describe(exc)}") from None
        try:
            await self._prepare(conn)
        except sqlite3.Error as exc:
            await conn.close()
            raise StoreUnavailableError(f"cannot open job store {self._path}: {_describe(exc)}") from None
        self._conn, self._conn_busy_ms = conn, self._busy_timeout_ms
        return conn

    async def _set_busy_timeout(self, conn: aiosqlite.Connection, left_ms: int) -> None:
        wanted = self._busy_timeout_ms if left_ms >= self._busy_timeout_ms - BUSY_SLACK_MS else left_ms
        if wanted != self._conn_busy_ms:
            await conn.execute(f"PRAGMA busy_timeout = {int(wanted)}")
            self._conn_busy_ms = wanted

    async def _recover(self, conn: aiosqlite.Connection, exc: sqlite3.Error) -> None:
        """Leave the connection fit for the next call: no transaction open, and a fresh
        connection after a read-only error."""
        with contextlib.suppress(sqlite3.Error):
            if conn.in_transaction:
                await conn.rollback()
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF == SQLITE_READONLY:
            self._conn = None
            with contextlib.suppress(sqlite3.Error):
                await conn.close()


def _describe(exc: BaseException) -> str:
    """The message with SQLite's extended code, which says which way: SQLITE_READONLY_DIRECTORY
    points at the directory where the message alone blames the database."""
    name = getattr(exc, "sqlite_errorname", None)
    return f"{exc} ({name})" if name else str(exc)


def _retrieve(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()
