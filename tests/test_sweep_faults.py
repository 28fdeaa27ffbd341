"""The sweep when ESI or the job misbehaves mid-way: later pages broken, duplicates, a 304 mixed
with a 200, oversized bodies, and cancellation at any point."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from tests.conftest import until
from tests.sweep_helpers import expected_rows, market_requests, run_sweep, stored_rows
from tornado_admin.fake_esi import RegionSpec
from tornado_admin.market.esi import EsiClient
from tornado_admin.market.fetch import fetch_all_regions
from tornado_admin.market.orders import RegionMeta, WriteWithdrawnError, open_order_store


@pytest.mark.gen_test(timeout=30)
async def test_a_malformed_later_page_drops_what_was_staged(fake_esi, order_store, database_url, clock):
    esi = await fake_esi({10000002: 3000, 10000043: 1000})
    await run_sweep(esi, order_store, clock)
    before = await stored_rows(database_url, 10000002)
    esi.update_region(10000002)
    esi.set_fault(10000002, "wrong-type-last")  # pages 1 and 2 stage fine, page 3 is broken
    clock.advance(301)

    result = await run_sweep(esi, order_store, clock)

    [failure] = result.to_dict()["regions"]["failed"]
    assert failure["error"].startswith("page 3 is malformed: order 500: field 'type_id' is a string")
    assert await stored_rows(database_url, 10000002) == before


@pytest.mark.gen_test(timeout=30)
async def test_an_order_listed_twice_is_stored_once(fake_esi, order_store, database_url, clock):
    esi = await fake_esi({10000002: RegionSpec(3000, fault="duplicates")})
    result = await run_sweep(esi, order_store, clock)
    assert result.orders_written == 3000  # 3010 listed, 10 of them twice
    assert await stored_rows(database_url, 10000002) == expected_rows(esi, 10000002)


@pytest.mark.gen_test(timeout=30)
async def test_a_304_mixed_with_a_200_walks_the_region_again_without_conditions(
    fake_esi, order_store, database_url, clock
):
    esi = await fake_esi({10000002: 3000})
    await run_sweep(esi, order_store, clock)
    esi.set_fault(10000002, "flip")  # the region changes between page 1 (304) and page 2 (200)
    clock.advance(301)
    mark = len(esi.requests)

    result = await run_sweep(esi, order_store, clock)

    assert result.to_dict()["regions"] == {"fetched": 1, "notModified": 0, "failed": []}
    first_pages = [r for r in market_requests(esi, mark) if r.page == 1]
    assert [(r.status, bool(r.headers.get("If-None-Match"))) for r in first_pages] == [
        (304, True), (200, False),
    ]
    assert await stored_rows(database_url, 10000002) == expected_rows(esi, 10000002)


@pytest.mark.gen_test(timeout=30)
async def test_an_oversized_body_fails_the_region(fake_esi, order_store, clock):
    esi = await fake_esi({10000002: 2000, 10000043: 10})
    result = await run_sweep(esi, order_store, clock, client_options={"max_body_bytes": 50_000})
    [failure] = result.to_dict()["regions"]["failed"]
    assert failure["regionId"] == 10000002
    assert "larger than 50000 bytes" in failure["error"] or "too large" in failure["error"]
    assert result.to_dict()["successCount"] == 1


@pytest.mark.parametrize("cancel_after_requests", [2, 3, 6, 10, 15, 21])  # of 25 in all
@pytest.mark.gen_test(timeout=60)
async def test_a_sweep_cancelled_anywhere_leaves_whole_regions_and_a_clean_store(
    fake_esi, database_url, clock, cancel_after_requests
):
    regions = {10000000 + i: 3000 for i in range(1, 9)}
    esi = await fake_esi(regions, latency_seconds=0.005)
    store = await open_order_store(database_url, max_writers=4)
    try:
        await cancel_then_finish(esi, store, database_url, clock, regions, cancel_after_requests)
    finally:
        await asyncio.wait_for(store.close(), 5)  # would hang if a connection never came back
    assert len(await stored_rows(database_url)) == sum(regions.values())


async def cancel_then_finish(esi, store, database_url, clock, regions, cancel_after_requests) -> None:
    expected = {rid: set(expected_rows(esi, rid)) for rid in regions}
    async with EsiClient.open(esi.url, user_agent="tests", compatibility_date="2026-08-04",
                              concurrency=4) as client:
        sweep = asyncio.ensure_future(fetch_all_regions(client, store, concurrency=4, clock=clock))
        await until(lambda: len(esi.requests) >= cancel_after_requests or sweep.done())
        assert not sweep.done(), sweep.exception() or sweep.result()
        sweep.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sweep

        held = await stored_rows(database_url)
        for region_id in regions:
            ids = {oid for oid, row in held.items() if row[0] == region_id}
            assert ids in (set(), expected[region_id]), f"region {region_id} is partial"
        if database_url.startswith("sqlite"):
            assert not store._conn.in_transaction
        else:
            assert store._pool.get_idle_size() == store._pool.get_size()  # every connection back

        result = await fetch_all_regions(client, store, concurrency=4, clock=clock)  # still usable
    assert result.to_dict()["errorCount"] == 0


@pytest.mark.gen_test(timeout=30)
async def test_a_write_refused_inside_its_transaction_changes_nothing(
    fake_esi, order_store, database_url, clock
):
    # `may_write` says no only once the transaction holds its locks (a writer that froze while
    # another run took its job over): both kinds of region write roll back whole.
    esi = await fake_esi({10000002: 1500})
    await run_sweep(esi, order_store, clock)
    before, states = await stored_rows(database_url), await order_store.region_states()
    esi.update_region(10000002)
    later = dt.datetime.fromtimestamp(clock.now_ms() / 1000 + 3600, dt.UTC)

    writer = await order_store.begin_region(10000002)
    for body in esi.page_bodies(10000002):
        await writer.add_page(body)
    with pytest.raises(WriteWithdrawnError):
        await writer.commit(RegionMeta(later, later, later, ("a", "b")), lambda: False)
    await writer.abort()
    with pytest.raises(WriteWithdrawnError):
        await order_store.confirm_unchanged(10000002, later, later, lambda: False)

    assert await stored_rows(database_url) == before
    assert await order_store.region_states() == states
    assert await order_store.confirm_unchanged(10000002, later, later, lambda: True) == 1500
