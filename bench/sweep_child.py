"""One sweep in its own process, so its peak RSS is its own: prints one JSON line of figures.

python -m bench.sweep_child --esi URL --db URL [--concurrency N]
python -m bench.sweep_child --db URL --no-http --layout bench   (parse + write alone, the limit)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import resource
import time

from tornado_admin.fake_esi import FakeEsi, layout
from tornado_admin.market.esi import EsiClient
from tornado_admin.market.fetch import fetch_all_regions
from tornado_admin.market.orders import RegionMeta, open_order_store


async def sweep(esi_url: str, db_url: str, concurrency: int) -> dict:
    store = await open_order_store(db_url, max_writers=concurrency)
    try:
        async with EsiClient.open(
            esi_url, user_agent="tornado-admin-bench", compatibility_date="2026-08-04",
            concurrency=concurrency,
        ) as esi:
            started = time.perf_counter()
            result = await fetch_all_regions(esi, store, concurrency=concurrency)
            seconds = time.perf_counter() - started
        held = await store.count_orders()
    finally:
        await store.close()
    if result.failed:
        raise SystemExit(f"regions failed: {result.failed[:3]}")
    return {"orders": result.orders_written, "held": held, "seconds": seconds}


async def write_only(db_url: str, layout_name: str, concurrency: int) -> dict:
    """The same pages, already in memory, parsed and written through the same store: no HTTP."""
    fake = FakeEsi(layout(layout_name))
    bodies = {rid: fake.page_bodies(rid) for rid in layout(layout_name)}
    store = await open_order_store(db_url, max_writers=concurrency)
    slots = asyncio.Semaphore(concurrency)

    async def region(region_id: int, pages: list[bytes]) -> int:
        async with slots:
            writer = await store.begin_region(region_id)
            for body in pages:
                await writer.add_page(body)
            return await writer.commit(RegionMeta(None, None, dt.datetime.now(dt.UTC), ()))

    try:
        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(region(rid, pages)) for rid, pages in bodies.items()]
        seconds = time.perf_counter() - started
    finally:
        await store.close()
    return {"orders": sum(t.result() for t in tasks), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--esi")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--no-http", action="store_true")
    parser.add_argument("--layout", default="bench")
    args = parser.parse_args()
    if args.no_http:
        figures = asyncio.run(write_only(args.db, args.layout, args.concurrency))
    else:
        figures = asyncio.run(sweep(args.esi, args.db, args.concurrency))
    figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
