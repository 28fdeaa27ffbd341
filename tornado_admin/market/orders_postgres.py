"""Market orders in PostgreSQL (asyncpg): pages COPYed into a per-connection TEMP table, swapped in
with one transaction at commit. Each region being written holds one pooled connection."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Callable

import asyncpg

from tornado_admin.market.orders import (
    OrderStore,
    OrderStoreError,
    RegionMeta,
    RegionState,
    RegionWriter,
    check_may_write,
)
from tornado_admin.market.pages import FIELDS, parse_page
from tornado_admin.settings import redact_url

SCHEMA = """
CREATE TABLE IF NOT EXISTS market_orders (
    region_id     bigint           NOT NULL,
    order_id      bigint           PRIMARY KEY,
    type_id       bigint           NOT NULL,
    location_id   bigint           NOT NULL,
    system_id     bigint           NOT NULL,
    volume_total  bigint           NOT NULL,
    volume_remain bigint           NOT NULL,
    min_volume    bigint           NOT NULL,
    price         double precision NOT NULL,
    is_buy_order  boolean          NOT NULL,
    duration      bigint           NOT NULL,  -- FACTS.md: every integer is 64-bit
    issued        timestamptz      NOT NULL,
    "range"       text             NOT NULL
);
CREATE INDEX IF NOT EXISTS market_orders_region ON market_orders (region_id);
CREATE TABLE IF NOT EXISTS market_regions (
    region_id     bigint      PRIMARY KEY,
    last_modified timestamptz,
    expires       timestamptz,
    order_count   integer     NOT NULL,
    fetched_at    timestamptz NOT NULL,
    etags         text[]      NOT NULL DEFAULT '{}'
);
"""
# Any constant works: it only serialises schema creation between processes starting together.
_SCHEMA_LOCK = 0x74616D6B  # "tamk"
_COLUMNS = ", ".join(f'"{name}"' for name in FIELDS)
_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS staging_orders (
    order_id bigint NOT NULL, type_id bigint NOT NULL, location_id bigint NOT NULL,
    system_id bigint NOT NULL, volume_total bigint NOT NULL, volume_remain bigint NOT NULL,
    min_volume bigint NOT NULL, price double precision NOT NULL, is_buy_order boolean NOT NULL,
    duration bigint NOT NULL, issued timestamptz NOT NULL, "range" text NOT NULL
);
"""
_SWAP = f"""
INSERT INTO market_orders (region_id, {_COLUMNS})
SELECT $1, {_COLUMNS} FROM staging_orders
ON CONFLICT (order_id) DO NOTHING
"""
_UPSERT_REGION = """
INSERT INTO market_regions (region_id, last_modified, expires, order_count, fetched_at, etags)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (region_id) DO UPDATE SET last_modified = excluded.last_modified,
    expires = excluded.expires, order_count = excluded.order_count,
    fetched_at = excluded.fetched_at, etags = excluded.etags
"""
_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)
_LOST = re.compile(r"released back to the pool|connection is closed")


class PostgresOrderStore(OrderStore):
    def __init__(self, pool: asyncpg.Pool, url: str) -> None:
        self._pool = pool
        self._url = url

    @classmethod
    async def open(cls, url: str, *, max_writers: int = 16) -> PostgresOrderStore:
        try:
            pool = await asyncpg.create_pool(
                url, min_size=1, max_size=max_writers + 1, command_timeout=300
            )
        except (*_DB_ERRORS, ValueError) as exc:
            raise OrderStoreError(
                f"cannot connect to market database {redact_url(url)}: {_describe(exc)}"
            ) from None
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
                await conn.execute(SCHEMA)
        except _DB_ERRORS as exc:
            await pool.close()
            raise OrderStoreError(f"cannot set up market tables: {_describe(exc)}") from None
        return cls(pool, url)

    async def _fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
        try:
            return await self._pool.fetch(query, *args)
        except _DB_ERRORS as exc:
            raise _failed(exc) from None

    async def region_states(self) -> dict[int, RegionState]:
        rows = await self._fetch(
            "SELECT region_id, last_modified, expires, order_count, fetched_at, etags"
            " FROM market_regions"
        )
        return {row["region_id"]: RegionState(**row) for row in _tupled(rows)}

    async def begin_region(self, region_id: int) -> RegionWriter:
        try:
            conn = await self._pool.acquire()
        except _DB_ERRORS as exc:
            raise _failed(exc, region_id) from None
        writer = _PostgresRegionWriter(self._pool, conn, region_id)
        try:
            # A temp table per connection, kept for its life: no catalog churn per region.
            await conn.execute(_STAGING + "TRUNCATE staging_orders;")
        except BaseException as exc:  # cancellation too: the connection must go back to the pool
            await writer.abort()
            if isinstance(exc, _DB_ERRORS):
                raise _failed(exc, region_id) from None
            raise
        return writer

    async def confirm_unchanged(
        self,
        region_id: int,
        expires: dt.datetime | None,
        fetched_at: dt.datetime,
        may_write: Callable[[], bool] | None = None,
    ) -> int:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(
                    "UPDATE market_regions SET expires = $2, fetched_at = $3 WHERE region_id = $1"
                    " RETURNING order_count",
                    region_id, expires, fetched_at,
                )
                check_may_write(may_write)  # after any wait for the region's row lock
        except _DB_ERRORS as exc:
            raise _failed(exc, region_id) from None
        return rows[0]["order_count"] if rows else 0

    async def count_orders(self, region_id: int | None = None) -> int:
        if region_id is None:
            rows = await self._fetch("SELECT count(*) FROM market_orders")
        else:
            rows = await self._fetch(
                "SELECT count(*) FROM market_orders WHERE region_id = $1", region_id
            )
        return rows[0][0]

    async def ping(self) -> None:
        await self._fetch("SELECT 1")

    async def close(self) -> None:
        try:
            await self._pool.close()
        except _DB_ERRORS:
            self._pool.terminate()


class _PostgresRegionWriter(RegionWriter):
    def __init__(self, pool: asyncpg.Pool, conn: asyncpg.Connection, region_id: int) -> None:
        self._pool, self._conn, self._region_id = pool, conn, region_id
        self._lock = asyncio.Lock()  # a region's pages arrive concurrently; a connection does one thing

    async def add_page(self, body: bytes) -> int:
        page = parse_page(body)
        if not len(page):
            return 0
        try:
            async with self._lock:
                await self._conn.copy_records_to_table(
                    "staging_orders", records=page.typed_rows(), columns=FIELDS
                )
        except _DB_ERRORS as exc:
            raise _failed(exc, self._region_id) from None
        return len(page)

    async def commit(self, meta: RegionMeta, may_write: Callable[[], bool] | None = None) -> int:
        conn = self._conn
        try:
            async with self._lock, conn.transaction():
                await conn.execute("DELETE FROM market_orders WHERE region_id = $1", self._region_id)
                status = await conn.execute(_SWAP, self._region_id)
                count = int(status.rsplit(" ", 1)[1])
                await conn.execute(
                    _UPSERT_REGION, self._region_id, meta.last_modified, meta.expires, count,
                    meta.fetched_at, list(meta.etags),
                )
                check_may_write(may_write)  # after any wait for the region's row locks
            await conn.execute("TRUNCATE staging_orders")
        except _DB_ERRORS as exc:
            raise _failed(exc, self._region_id) from None
        finally:
            await self.abort()
        return count

    async def abort(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            # Shielded: a cancelled sweep must still hand the connection back, or close() waits
            # for it forever. release() resets it, or terminates it if it was mid-query.
            await asyncio.shield(self._pool.release(conn))
        except _DB_ERRORS:
            conn.terminate()


def _tupled(rows: list[asyncpg.Record]) -> list[dict]:
    out = []
    for row in rows:
        fields = dict(row)
        fields["etags"] = tuple(fields["etags"] or ())
        out.append(fields)
    return out


def _failed(exc: BaseException, region_id: int | None = None) -> OrderStoreError:
    where = f" in region {region_id}" if region_id is not None else ""
    return OrderStoreError(f"market database error{where}: {_describe(exc)}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncpg.InterfaceError) and _LOST.search(str(exc)):
        # asyncpg hands a connection back to its pool the moment the server drops it, so the
        # next call on it says "released back to the pool" or "connection is closed", which
        # reads like our own misuse: the cause is the server restarting or going away.
        return "the connection to the database was lost (the server closed it)"
    # asyncpg messages name the server and database, never the password; keep them short.
    return f"{type(exc).__name__}: {exc}"[:300]
