"""ESI's limits and faults as the client meets them: pauses stop every request, retries are bounded."""

from __future__ import annotations

import aiohttp
import pytest

from tests.sweep_helpers import market_requests, run_sweep
from tornado_admin.market.limits import LimitGate, RetryPolicy, retry_after_seconds

REGIONS = {10000002: 6000, 10000043: 3000, 10000001: 2000, 10000030: 0}


@pytest.fixture
def database_url(sqlite_url):  # the limits are the client's business: one database is enough
    return sqlite_url


def arrivals_between(esi, start: float, end: float) -> list:
    return [r for r in esi.requests if start < r.time < end]


@pytest.mark.gen_test(timeout=30)
async def test_error_limit_420_stops_every_request_until_the_reset(fake_esi, order_store, clock):
    esi = await fake_esi(REGIONS, latency_seconds=0.01)
    esi.inject("420", region_id=10000043, reset_seconds=1)

    result = await run_sweep(esi, order_store, clock, concurrency=4)

    limited = [r for r in esi.requests if r.status == 420]
    assert limited, "the injected 420 was never served"
    first = limited[0].time
    # Requests already on the wire may land just after the 420; none may start during the pause.
    assert arrivals_between(esi, first + 0.1, first + 1.0) == []
    assert result.to_dict()["regions"]["failed"] == []
    assert result.total_orders == sum(REGIONS.values())


@pytest.mark.gen_test(timeout=30)
async def test_low_error_budget_pauses_before_a_420(fake_esi, order_store, clock):
    # A budget of 20 errors a second: after the 10th error only 10 remain (the floor), so the
    # client waits for the window to reset instead of spending the rest and meeting 420s.
    esi = await fake_esi(REGIONS, error_limit=20, error_window_seconds=1.0)
    esi.inject("503", count=11)
    ids = (10000002, 10000043, 10000001, 10000030)

    result = await run_sweep(esi, order_store, clock, concurrency=1, region_ids=ids)

    assert 420 not in esi.stats()["by_status"]
    errors = [r for r in esi.requests if r.status == 503]
    tenth = errors[9].time
    following = min(r.time for r in esi.requests if r.time > tenth)
    assert following - tenth >= 0.9
    # 4 tries each for the first two regions, then the pause, then the rest recover.
    failed = [f["regionId"] for f in result.to_dict()["regions"]["failed"]]
    assert failed == [10000002, 10000043]
    assert result.to_dict()["successCount"] == 2


@pytest.mark.gen_test(timeout=30)
async def test_rate_limit_429_pauses_for_retry_after(fake_esi, order_store, clock):
    esi = await fake_esi(REGIONS, latency_seconds=0.01)
    esi.inject("429", region_id=10000001, retry_after=1)

    result = await run_sweep(esi, order_store, clock, concurrency=4)

    [limited] = [r for r in esi.requests if r.status == 429]
    assert arrivals_between(esi, limited.time + 0.1, limited.time + 0.95) == []
    assert result.to_dict()["regions"]["failed"] == []
    retried = [r for r in market_requests(esi) if r.region_id == 10000001 and r.time > limited.time]
    assert retried
    assert retried[0].status == 200


@pytest.mark.gen_test(timeout=30)
async def test_a_spent_token_bucket_pauses_and_resumes(fake_esi, order_store, clock):
    # 7 pages cost 14 tokens of 10: the 6th page meets a 429 whose Retry-After the client obeys.
    esi = await fake_esi(REGIONS, bucket_tokens=10, bucket_window_seconds=1.0)
    result = await run_sweep(esi, order_store, clock, concurrency=1)
    assert esi.stats()["by_status"].get(429, 0) >= 1
    assert result.to_dict()["regions"]["failed"] == []


@pytest.mark.gen_test(timeout=30)
async def test_a_request_that_hangs_times_out_and_is_retried(fake_esi, order_store, clock):
    esi = await fake_esi({10000043: 1000})
    esi.inject("hang", region_id=10000043)
    timeout = aiohttp.ClientTimeout(total=5, sock_read=0.3)

    result = await run_sweep(esi, order_store, clock, timeout=timeout)

    assert result.to_dict()["successCount"] == 1
    assert len(market_requests(esi)) == 2


@pytest.mark.gen_test(timeout=30)
async def test_a_dropped_connection_is_retried(fake_esi, order_store, clock):
    esi = await fake_esi({10000043: 1000})
    esi.inject("reset", count=2, region_id=10000043)  # aiohttp itself retries one reset once
    result = await run_sweep(esi, order_store, clock)
    assert result.to_dict()["successCount"] == 1
    assert len(market_requests(esi)) == 3


def test_retry_delays_grow_with_jitter_and_stay_bounded():
    policy = RetryPolicy(base_delay_seconds=1.0, max_delay_seconds=8.0)
    for failures, cap in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)]:
        delays = {policy.delay(failures) for _ in range(50)}
        assert all(cap / 2 <= d <= cap for d in delays)
        assert len(delays) > 1  # jittered, so peers do not retry in lockstep


def test_retry_after_accepts_seconds_and_http_dates():
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(None) == 10.0
    assert retry_after_seconds("soon") == 10.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past


def test_gate_counts_one_pause_however_many_responses_report_it():
    now = [100.0]
    gate = LimitGate(time=lambda: now[0])
    headers = {"X-ESI-Error-Limit-Remain": "0", "X-ESI-Error-Limit-Reset": "5"}
    gate.observe(420, headers)
    gate.observe(420, {"X-ESI-Error-Limit-Remain": "0", "X-ESI-Error-Limit-Reset": "4"})
    assert gate.error_limit_pauses == 1
    assert gate.paused_for == 6.0  # reset + 1 s margin
    now[0] += 6.0
    assert gate.paused_for == 0.0
    gate.observe(429, {"Retry-After": "3"})
    assert (gate.rate_limit_pauses, gate.paused_for) == (1, 3.0)
