"""The sweep against a real local ESI and real SQLite and PostgreSQL: what ends up stored."""

from __future__ import annotations

import pytest

from tests.sweep_helpers import (
    COMPATIBILITY_DATE,
    USER_AGENT,
    expected_rows,
    market_requests,
    run_sweep,
    stored_rows,
)
from tornado_admin.fake_esi import RegionSpec
from tornado_admin.market.fetch import SweepError

# The Forge-like region of several pages, a one-page region, a partial page, an empty region.
REGIONS = {10000002: 3500, 10000043: 1000, 10000001: 250, 10000030: 0}
TOTAL = sum(REGIONS.values())


@pytest.mark.gen_test(timeout=30)
async def test_full_sweep_stores_every_order_exactly(fake_esi, order_store, database_url, clock):
    esi = await fake_esi(REGIONS)
    progress = []
    result = await run_sweep(esi, order_store, clock, progress=lambda p: progress.append(p.to_dict()))

    assert result.to_dict() | {"duration": 0} == {
        "success": True, "successCount": 4, "errorCount": 0, "totalOrders": TOTAL,
        "ordersWritten": TOTAL, "duration": 0,
        "regions": {"fetched": 4, "notModified": 0, "failed": []},
    }
    for region_id in REGIONS:
        assert await stored_rows(database_url, region_id) == expected_rows(esi, region_id)
    assert len(await stored_rows(database_url)) == TOTAL
    states = await order_store.region_states()
    assert {rid: s.order_count for rid, s in states.items()} == REGIONS
    assert len(states[10000002].etags) == 4  # one ETag per page
    assert progress[-1] == {"regionsTotal": 4, "regionsDone": 4, "ordersStored": TOTAL}
    assert [p["regionsDone"] for p in progress] == [0, 1, 2, 3, 4]


@pytest.mark.gen_test(timeout=30)
async def test_every_request_identifies_itself_and_stays_within_x_pages(fake_esi, order_store, clock):
    esi = await fake_esi(REGIONS)
    await run_sweep(esi, order_store, clock)

    assert esi.requests, "the sweep made no request"
    for record in esi.requests:
        assert record.headers["User-Agent"] == USER_AGENT
        assert record.headers["X-Compatibility-Date"] == COMPATIBILITY_DATE
    pages = {}
    for record in market_requests(esi):
        assert record.query["order_type"] == "all"
        pages.setdefault(record.region_id, []).append(record.page)
    assert sorted(pages[10000002]) == [1, 2, 3, 4]  # never page 5: X-Pages is trusted
    assert pages[10000030] == [1]
    assert esi.stats()["by_status"] == {200: 1 + 7}  # region list + 7 pages, no 404 probing


@pytest.mark.gen_test(timeout=30)
async def test_concurrency_bounds_requests_in_flight(fake_esi, order_store, clock):
    esi = await fake_esi({10000002: 12_000, 10000043: 5000}, latency_seconds=0.05)
    await run_sweep(esi, order_store, clock, concurrency=3)
    assert esi.max_in_flight == 3


@pytest.mark.gen_test(timeout=30)
async def test_second_sweep_revalidates_with_304s_and_writes_nothing(
    fake_esi, order_store, database_url, clock
):
    esi = await fake_esi(REGIONS)
    await run_sweep(esi, order_store, clock)
    before = await stored_rows(database_url)
    mark = len(esi.requests)
    clock.advance(301)  # past Expires: ESI may have new data, so ask (conditionally)

    result = await run_sweep(esi, order_store, clock)

    assert result.to_dict()["regions"] == {"fetched": 0, "notModified": 4, "failed": []}
    assert (result.orders_written, result.total_orders) == (0, TOTAL)
    second = market_requests(esi, mark)
    assert len(second) == 7
    assert all(r.status == 304 and r.headers.get("If-None-Match") for r in second)
    assert await stored_rows(database_url) == before


@pytest.mark.gen_test(timeout=30)
async def test_regions_not_yet_expired_are_not_asked_again(fake_esi, order_store, clock):
    esi = await fake_esi(REGIONS)
    await run_sweep(esi, order_store, clock)
    mark = len(esi.requests)
    clock.advance(299)  # Expires is 300 s away

    result = await run_sweep(esi, order_store, clock)

    assert market_requests(esi, mark) == []
    assert result.to_dict()["successCount"] == 4
    assert result.total_orders == TOTAL


@pytest.mark.gen_test(timeout=30)
async def test_a_changed_region_is_replaced_whole(fake_esi, order_store, database_url, clock):
    esi = await fake_esi(REGIONS)
    await run_sweep(esi, order_store, clock)
    old_ids = set(await stored_rows(database_url, 10000002))
    esi.update_region(10000002, orders=2100)  # fewer orders, all new ids
    clock.advance(301)

    result = await run_sweep(esi, order_store, clock)

    assert result.to_dict()["regions"] == {"fetched": 1, "notModified": 3, "failed": []}
    assert result.orders_written == 2100
    assert result.total_orders == TOTAL - 3500 + 2100
    now = await stored_rows(database_url, 10000002)
    assert now == expected_rows(esi, 10000002)
    assert not old_ids & set(now)


@pytest.mark.gen_test(timeout=30)
async def test_a_region_whose_pages_flip_mid_walk_ends_consistent(
    fake_esi, order_store, database_url, clock
):
    esi = await fake_esi({10000002: RegionSpec(4000, fault="flip"), 10000043: 1000})
    result = await run_sweep(esi, order_store, clock)

    assert result.to_dict()["regions"]["failed"] == []
    assert await stored_rows(database_url, 10000002) == expected_rows(esi, 10000002)
    first_pages = [r for r in market_requests(esi) if r.region_id == 10000002 and r.page == 1]
    assert len(first_pages) == 2  # walked, found the cache moved, walked again


@pytest.mark.gen_test(timeout=30)
async def test_a_region_that_never_holds_still_fails_and_keeps_its_orders(
    fake_esi, order_store, database_url, clock
):
    esi = await fake_esi({10000002: 3000, 10000043: 1000})
    await run_sweep(esi, order_store, clock)
    before = await stored_rows(database_url, 10000002)
    esi.set_fault(10000002, "flip-always")
    clock.advance(301)

    result = await run_sweep(esi, order_store, clock)

    [failure] = result.to_dict()["regions"]["failed"]
    assert failure["regionId"] == 10000002
    assert "pages disagree after 3 walks" in failure["error"]
    assert await stored_rows(database_url, 10000002) == before
    assert result.total_orders == 1000  # the failed region's orders are not counted as held


@pytest.mark.gen_test(timeout=30)
async def test_a_failing_region_counts_in_error_count_while_the_others_store(
    fake_esi, order_store, database_url, clock
):
    esi = await fake_esi({10000002: 2000, 10000043: RegionSpec(1000, fault="html502"), 10000001: 0})
    result = await run_sweep(esi, order_store, clock)

    body = result.to_dict()
    assert (body["successCount"], body["errorCount"], body["totalOrders"]) == (2, 1, 2000)
    [failure] = body["regions"]["failed"]
    assert failure["regionId"] == 10000043
    assert "HTTP 502" in failure["error"]
    assert "after 4 tries" in failure["error"]
    tries = [r for r in market_requests(esi) if r.region_id == 10000043]
    assert len(tries) == 4  # bounded retries
    assert await stored_rows(database_url, 10000043) == {}
    assert await stored_rows(database_url, 10000002) == expected_rows(esi, 10000002)


@pytest.mark.gen_test(timeout=30)
async def test_transient_errors_are_retried(fake_esi, order_store, database_url, clock):
    esi = await fake_esi({10000002: RegionSpec(2000, fault="transient503"), 10000043: 1000})
    esi.inject("504", region_id=10000043)
    result = await run_sweep(esi, order_store, clock)

    assert result.to_dict()["regions"] == {"fetched": 2, "notModified": 0, "failed": []}
    statuses = [r.status for r in market_requests(esi) if r.region_id == 10000002 and r.page == 1]
    assert statuses == [503, 503, 200]
    assert await stored_rows(database_url, 10000002) == expected_rows(esi, 10000002)


@pytest.mark.parametrize("fault", ["not-json", "not-list", "missing-field", "wrong-type"])
@pytest.mark.gen_test(timeout=30)
async def test_malformed_pages_fail_the_region_and_write_nothing(
    fake_esi, order_store, database_url, clock, fault
):
    esi = await fake_esi({10000002: 3000, 10000043: 1000})
    await run_sweep(esi, order_store, clock)
    before = await stored_rows(database_url)
    esi.update_region(10000002)  # new content that arrives broken
    esi.update_region(10000043)
    esi.set_fault(10000002, fault)
    clock.advance(301)

    result = await run_sweep(esi, order_store, clock)

    [failure] = result.to_dict()["regions"]["failed"]
    assert failure["regionId"] == 10000002
    assert "page 1 is malformed" in failure["error"]
    after = await stored_rows(database_url)
    assert {k: v for k, v in after.items() if v[0] == 10000002} == {
        k: v for k, v in before.items() if v[0] == 10000002
    }
    assert await stored_rows(database_url, 10000043) == expected_rows(esi, 10000043)


@pytest.mark.gen_test(timeout=30)
async def test_region_list_unreachable_means_the_sweep_cannot_run(fake_esi, order_store, clock):
    esi = await fake_esi(REGIONS)
    esi.inject("503", count=10)
    with pytest.raises(SweepError, match="cannot list regions"):
        await run_sweep(esi, order_store, clock)


@pytest.mark.gen_test(timeout=30)
async def test_listed_regions_that_esi_does_not_know_fail_alone(fake_esi, order_store, clock):
    esi = await fake_esi({10000002: 1000}, listed_regions=[10000002, 10000099])
    result = await run_sweep(esi, order_store, clock)
    body = result.to_dict()
    assert body["successCount"] == 1
    assert body["regions"]["failed"] == [
        {"regionId": 10000099, "error": "page 1: HTTP 404: Region not found"}
    ]


@pytest.mark.gen_test(timeout=30)
async def test_configured_regions_replace_the_region_list(fake_esi, order_store, clock):
    esi = await fake_esi(REGIONS)
    result = await run_sweep(esi, order_store, clock, region_ids=(10000043, 10000001))
    assert result.to_dict()["successCount"] == 2
    assert not any(r.path.endswith("/universe/regions") for r in esi.requests)
    assert {r.region_id for r in market_requests(esi)} == {10000043, 10000001}


@pytest.mark.gen_test(timeout=30)
async def test_legacy_latest_base_url_works(fake_esi, order_store, database_url, clock):
    esi = await fake_esi({10000043: 1500})
    result = await run_sweep(esi, order_store, clock, base_url=esi.url + "/latest/")
    assert result.to_dict()["successCount"] == 1
    assert all(r.path.startswith("/latest/") and r.path.endswith("/") for r in esi.requests)
    assert await stored_rows(database_url, 10000043) == expected_rows(esi, 10000043)
