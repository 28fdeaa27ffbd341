"""One whole run through the API: trigger, poll to completed against the local ESI, orders stored."""

from __future__ import annotations

import asyncio

import pytest

from tests.api_helpers import TOKEN, bearer, body_of, build_context
from tests.sweep_helpers import USER_AGENT, expected_rows, stored_rows
from tornado_admin.app import fetch_work, make_app
from tornado_admin.market.esi import EsiClient
from tornado_admin.settings import settings_from

REGIONS = {10000002: 2500, 10000043: 1000, 10000030: 0}


@pytest.fixture
def esi_server(io_loop, fake_esi):
    return io_loop.run_sync(lambda: fake_esi(REGIONS, latency_seconds=0.01))


@pytest.fixture
def esi_client(io_loop, esi_server):
    async def open_client() -> EsiClient:  # aiohttp wants its session made inside the loop
        return EsiClient.open(esi_server.url, user_agent=USER_AGENT, compatibility_date="2026-08-04",
                              concurrency=4)

    client = io_loop.run_sync(open_client)
    yield client
    io_loop.run_sync(client.close)


@pytest.fixture
def database_url(sqlite_url):
    return sqlite_url


@pytest.fixture
def app(order_store, esi_client, clock, io_loop):
    settings = settings_from({"ADMIN_TOKEN": TOKEN, "ESI_CONCURRENCY": "4"})
    context = build_context(order_store, fetch_work(settings, esi_client, order_store, clock), clock)
    yield make_app(context)
    io_loop.run_sync(context.runner.shutdown)


@pytest.mark.gen_test(timeout=30)
async def test_trigger_then_poll_until_completed(http_client, base_url, esi_server, database_url):
    response = await http_client.fetch(
        base_url + "/api/admin/trigger-fetch", method="POST", body=b"", headers=bearer()
    )
    assert response.code == 202
    status_url = base_url + body_of(response)["checkStatusAt"]

    seen = []
    for _ in range(1000):
        body = body_of(await http_client.fetch(status_url, headers=bearer()))
        seen.append(body["status"])
        if body["status"] != "running":
            break
        await asyncio.sleep(0.01)  # an operator's poll interval; the job runs meanwhile

    assert body["status"] == "completed", body
    assert seen[0] == "running"
    result = body["result"]
    assert result["successCount"] == 3
    assert result["errorCount"] == 0
    assert result["totalOrders"] == result["ordersWritten"] == 3500
    assert result["regions"] == {"fetched": 3, "notModified": 0, "failed": []}
    assert body["progress"] == {"regionsTotal": 3, "regionsDone": 3, "ordersStored": 3500}
    for region_id in REGIONS:
        assert await stored_rows(database_url, region_id) == expected_rows(esi_server, region_id)
