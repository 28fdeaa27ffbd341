"""Market orders in SQLite (aiosqlite): pages staged in per-region TEMP tables, swapped in at commit.

TEMP tables live in the connection's own temp database, so staging takes no lock on the main
file: other processes keep reading (WAL) and only the short swap transaction writes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import aiosqlite

from backends.sqlitefile import set_up
from tornado_admin.clock import iso
from tornado_admin.market.orders import (
    OrderStore,
    OrderStoreError,
    RegionMeta,
    RegionState,
    RegionWriter,
    check_may_write,
)
from tornado_admin.market.pages import FIELDS, parse_page

T = TypeVar("T")
log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS market_orders (
    region_id     INTEGER NOT NULL,
    order_id      INTEGER PRIMARY KEY,  -- the rowid itself: one b-tree, an id held once
    type_id       INTEGER NOT NULL,
    location_id   INTEGER NOT NULL,
    system_id     INTEGER NOT NULL,
    volume_total  INTEGER NOT NULL,
    volume_remain INTEGER NOT NULL,
    min_volume    INTEGER NOT NULL,
    price         REAL    NOT NULL,
    is_buy_order  INTEGER NOT NULL,
    duration      INTEGER NOT NULL,
    issued        TEXT    NOT NULL,
    "range"       TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS market_orders_region ON market_orders (region_id);
CREATE TABLE IF NOT EXISTS market_regions (
    region_id     INTEGER PRIMARY KEY,
    last_modified TEXT,
    expires       TEXT,
    order_count   INTEGER NOT NULL,
    fetched_at    TEXT    NOT NULL,
    etags         TEXT    NOT NULL DEFAULT '[]'  -- JSON array, one ETag per page
);
"""
_COLUMNS = ", ".join(f'"{name}"' for name in FIELDS)
_STAGE = f"INSERT INTO temp.{{table}} VALUES ({', '.join('?' * len(FIELDS))})"
_UPSERT_REGION = """
INSERT INTO market_regions (region_id, last_modified, expires, order_count, fetched_at, etags)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (region_id) DO UPDATE SET last_modified = excluded.last_modified,
    expires = excluded.expires, order_count = excluded.order_count,
    fetched_at = excluded.fetched_at, etags = excluded.etags
"""
BUSY_TIMEOUT_MS = 10_000


class SqliteOrderStore(OrderStore):
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        # One connection, one thread: a swap's BEGIN..COMMIT must not interleave with another
        # region's staging statements, which would otherwise join (and roll back with) it.
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str) -> SqliteOrderStore:
        try:
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            conn = await aiosqlite.connect(path, isolation_level=None)
        except (sqlite3.Error, OSError) as exc:
            raise OrderStoreError(f"cannot open market database {path}: {exc}") from None
        store = cls(conn)
        try:
            await store._run(store._setup)
        except OrderStoreError:
            await conn.close()
            raise
        return store

    async def _setup(self) -> None:
        await set_up(self._conn, SCHEMA, busy_timeout_ms=BUSY_TIMEOUT_MS)

    async def _run(self, work: Callable[[], Awaitable[T]], region_id: int | None = None) -> T:
        """Run `work` alone on the connection, shielded from cancellation so that a transaction
        it opens always ends; database errors become `OrderStoreError` naming `region_id`."""

        async def locked() -> T:
            async with self._lock:
                try:
                    return await work()
                except BaseException as exc:
                    if self._conn.in_transaction:
                        await self._conn.rollback()
                    if isinstance(exc, sqlite3.Error):
                        raise OrderStoreError(_describe(exc, region_id)) from None
                    raise

        inner = asyncio.ensure_future(locked())
        try:
            return await asyncio.shield(inner)
        except asyncio.CancelledError:
            # The work goes on without its caller: its failure (a commit withdrawn) is logged
            # here, or asyncio would log "Task exception was never retrieved".
            inner.add_done_callback(_log_orphan)
            raise

    async def region_states(self) -> dict[int, RegionState]:
        async def read() -> list[sqlite3.Row]:
            cursor = await self._conn.execute(
                "SELECT region_id, last_modified, expires, order_count, fetched_at, etags"
                " FROM market_regions"
            )
            return list(await cursor.fetchall())

        return {row[0]: _state(row) for row in await self._run(read)}

    async def begin_region(self, region_id: int) -> RegionWriter:
        table = f"staging_{int(region_id)}"

        async def create() -> None:
            await self._conn.execute(f"DROP TABLE IF EXISTS temp.{table}")
            await self._conn.execute(f"CREATE TEMP TABLE {table} ({_COLUMNS})")

        await self._run(create, region_id)
        return _SqliteRegionWriter(self, region_id, table)

    async def confirm_unchanged(
        self,
        region_id: int,
        expires: dt.datetime | None,
        fetched_at: dt.datetime,
        may_write: Callable[[], bool] | None = None,
    ) -> int:
        async def update() -> int:
            await self._conn.execute("BEGIN IMMEDIATE")
            cursor = await self._conn.execute(
                "UPDATE market_regions SET expires = ?, fetched_at = ? WHERE region_id = ?"
                " RETURNING order_count",
                (_text(expires), _text(fetched_at), region_id),
            )
            row = await cursor.fetchone()
            await cursor.close()
            check_may_write(may_write)  # after BEGIN IMMEDIATE's wait for the write lock
            await self._conn.execute("COMMIT")
            return row[0] if row else 0

        return await self._run(update, region_id)

    async def count_orders(self, region_id: int | None = None) -> int:
        async def count() -> int:
            if region_id is None:
                cursor = await self._conn.execute("SELECT count(*) FROM market_orders")
            else:
                cursor = await self._conn.execute(
                    "SELECT count(*) FROM market_orders WHERE region_id = ?", (region_id,)
                )
            return (await cursor.fetchone())[0]

        return await self._run(count)

    async def ping(self) -> None:
        async def select() -> None:
            await self._conn.execute("SELECT 1 FROM market_regions LIMIT 1")

        await self._run(select)

    async def close(self) -> None:
        async with self._lock:
            await self._conn.close()


class _SqliteRegionWriter(RegionWriter):
    def __init__(self, store: SqliteOrderStore, region_id: int, table: str) -> None:
        self._store, self._region_id, self._table = store, region_id, table
        self._stage_sql = _STAGE.format(table=table)

    async def add_page(self, body: bytes) -> int:
        conn = self._store._conn
        counted: list[int] = []

        def rows() -> Iterator[tuple]:
            # Runs inside aiosqlite's thread as executemany consumes it, so parsing and
            # binding share one thread and the event loop stays free for HTTP.
            page = parse_page(body)
            counted.append(len(page))
            yield from page.rows()

        async def stage() -> None:
            # One transaction per page: in autocommit each row would be its own transaction,
            # which also checks the main file's WAL, 5x slower once the WAL holds frames.
            await conn.execute("BEGIN")
            await conn.executemany(self._stage_sql, rows())
            await conn.execute("COMMIT")

        await self._store._run(stage, self._region_id)
        return counted[0]

    async def commit(self, meta: RegionMeta, may_write: Callable[[], bool] | None = None) -> int:
        conn = self._store._conn

        async def swap() -> int:
            await conn.execute("BEGIN IMMEDIATE")
            await conn.execute("DELETE FROM market_orders WHERE region_id = ?", (self._region_id,))
            cursor = await conn.execute(
                f"INSERT OR IGNORE INTO market_orders (region_id, {_COLUMNS})"
                f" SELECT ?, {_COLUMNS} FROM temp.{self._table}",
                (self._region_id,),
            )
            count = cursor.rowcount
            await conn.execute(
                _UPSERT_REGION,
                (self._region_id, _text(meta.last_modified), _text(meta.expires), count,
                 _text(meta.fetched_at), json.dumps(meta.etags)),
            )
            check_may_write(may_write)  # after BEGIN IMMEDIATE's wait for the write lock
            await conn.execute("COMMIT")
            await conn.execute(f"DROP TABLE temp.{self._table}")
            return count

        return await self._store._run(swap, self._region_id)

    async def abort(self) -> None:
        conn = self._store._conn

        async def drop() -> None:
            await conn.execute(f"DROP TABLE IF EXISTS temp.{self._table}")

        # Failing is harmless: the table dies with the connection, and begin_region drops a
        # leftover first. ValueError: the connection is already closed.
        with contextlib.suppress(OrderStoreError, ValueError):
            await self._store._run(drop)


def _log_orphan(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("Market database work failed after its caller was cancelled",
                    extra={"error": str(task.exception())})


def _describe(exc: sqlite3.Error, region_id: int | None) -> str:
    # SQLite's message alone is vague ("disk I/O error"): the error name says which (a write
    # failed: SQLITE_IOERR_WRITE; no space left: SQLITE_FULL), the region says where.
    where = f" in region {region_id}" if region_id is not None else ""
    name = getattr(exc, "sqlite_errorname", None)
    return f"market database error{where}: {exc}" + (f" ({name})" if name else "")


def _text(when: dt.datetime | None) -> str | None:
    return iso(when) if when else None


def _state(row: sqlite3.Row) -> RegionState:
    region_id, last_modified, expires, order_count, fetched_at, etags = row
    return RegionState(
        region_id=region_id,
        last_modified=_when(last_modified),
        expires=_when(expires),
        order_count=order_count,
        fetched_at=_when(fetched_at) or dt.datetime.fromtimestamp(0, dt.UTC),
        etags=tuple(json.loads(etags)),
    )


def _when(text: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(text) if text else None
