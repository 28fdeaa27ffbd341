"""Helpers of the sweep tests: run a sweep against a FakeEsi, read back what the database holds."""

from __future__ import annotations

import datetime as dt

import aiohttp
import aiosqlite
import asyncpg

from tornado_admin.fake_esi import FakeEsi
from tornado_admin.market.esi import EsiClient
from tornado_admin.market.fetch import SweepResult, fetch_all_regions
from tornado_admin.market.limits import RetryPolicy
from tornado_admin.market.orders import OrderStore, sqlite_path

USER_AGENT = "tornado-admin-tests (tests@example.com)"
COMPATIBILITY_DATE = "2026-08-04"
FAST_RETRY = RetryPolicy(attempts=4, base_delay_seconds=0.01, max_delay_seconds=0.05)


async def run_sweep(
    esi: FakeEsi,
    store: OrderStore,
    clock,
    *,
    concurrency: int = 8,
    timeout: aiohttp.ClientTimeout | None = None,  # noqa: ASYNC109 (the HTTP client's timeouts)
    base_url: str | None = None,
    client_options: dict | None = None,
    **options,
) -> SweepResult:
    extra = {"timeout": timeout} if timeout else {}
    async with EsiClient.open(
        base_url or esi.url, user_agent=USER_AGENT, compatibility_date=COMPATIBILITY_DATE,
        concurrency=concurrency, retry=FAST_RETRY, **extra, **(client_options or {}),
    ) as client:
        return await fetch_all_regions(
            client, store, concurrency=concurrency, clock=clock, **options
        )


def expected_rows(esi: FakeEsi, region_id: int) -> dict[int, tuple]:
    """The orders ESI serves for a region, in the normalised form of `stored_rows`."""
    return {
        o["order_id"]: (
            region_id, o["type_id"], o["location_id"], o["system_id"], o["volume_total"],
            o["volume_remain"], o["min_volume"], float(o["price"]), o["is_buy_order"],
            o["duration"], o["issued"], o["range"],
        )
        for o in esi.orders(region_id)
    }


async def stored_rows(database_url: str, region_id: int | None = None) -> dict[int, tuple]:
    """order_id -> (region_id, ...the other columns) as held by the database."""
    query = (
        'SELECT order_id, region_id, type_id, location_id, system_id, volume_total, volume_remain,'
        ' min_volume, price, is_buy_order, duration, issued, "range" FROM market_orders'
    )
    if database_url.startswith("sqlite"):
        async with aiosqlite.connect(sqlite_path(database_url)) as conn:
            if region_id is None:
                cursor = await conn.execute(query)
            else:
                cursor = await conn.execute(query + " WHERE region_id = ?", (region_id,))
            rows = [tuple(r) for r in await cursor.fetchall()]
    else:
        conn = await asyncpg.connect(database_url)
        try:
            if region_id is None:
                rows = [tuple(r) for r in await conn.fetch(query)]
            else:
                rows = [tuple(r) for r in await conn.fetch(query + " WHERE region_id = $1", region_id)]
        finally:
            await conn.close()
    return {row[0]: _normalise(row[1:]) for row in rows}


def _normalise(row: tuple) -> tuple:
    *head, price, is_buy, duration, issued, order_range = row
    if isinstance(issued, dt.datetime):
        issued = issued.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (*head, float(price), bool(is_buy), duration, issued, order_range)


def market_requests(esi: FakeEsi, since: int = 0) -> list:
    return [r for r in esi.requests[since:] if r.region_id is not None]
