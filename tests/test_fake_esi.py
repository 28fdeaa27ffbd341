"""The fake ESI answers like ESI: checked over real HTTP against CCP's OpenAPI spec."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Coroutine, Mapping
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from jsonschema import Draft202012Validator
from multidict import CIMultiDictProxy
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tornado_admin.fake_esi import FakeEsi, RegionSpec, layout

pytestmark = pytest.mark.timeout(10)

SPEC_PATH = Path(__file__).resolve().parent / "data" / "esi-openapi.json"
ORDERS_PATH = "/markets/{region_id}/orders"
FORGE, DOMAIN, EMPTY = 10000002, 10000043, 10000070
ORDER_FIELDS = {
    "order_id", "type_id", "location_id", "system_id", "volume_total", "volume_remain",
    "min_volume", "price", "is_buy_order", "duration", "issued", "range",
}  # fmt: skip
LIMIT_HEADERS = ("X-ESI-Error-Limit-Remain", "X-ESI-Error-Limit-Reset")
BUCKET_HEADERS = ("X-Ratelimit-Group", "X-Ratelimit-Limit", "X-Ratelimit-Remaining", "X-Ratelimit-Used")


# -- the spec ----------------------------------------------------------------------------------


@functools.cache
def _spec() -> dict[str, Any]:
    return json.loads(SPEC_PATH.read_text())


@functools.cache
def _registry() -> Registry:
    resource = Resource.from_contents(_spec(), default_specification=DRAFT202012)
    return Registry().with_resource("urn:esi", resource)


def _validator(schema: Mapping[str, Any]) -> Draft202012Validator:
    # The spec's refs are local ("#/components/..."): anchor them to the whole spec document.
    if "$ref" in schema:
        schema = {"$ref": "urn:esi" + schema["$ref"]}
    return Draft202012Validator(schema, registry=_registry())


def response_schema(path: str, status: str = "200") -> Mapping[str, Any]:
    responses = _spec()["paths"][path]["get"]["responses"]
    return responses[status]["content"]["application/json"]["schema"]


def validate(path: str, body: Any, status: str = "200") -> None:
    _validator(response_schema(path, status)).validate(body)


def validate_error(body: Any) -> None:
    _validator({"$ref": "#/components/schemas/Error"}).validate(body)


def validate_headers(path: str, headers: Mapping[str, str]) -> None:
    """Every header the spec declares for a 200 is present and matches its schema."""
    for name, declared in _spec()["paths"][path]["get"]["responses"]["200"]["headers"].items():
        if "$ref" in declared:  # "#/components/headers/ETag"
            declared = _spec()["components"]["headers"][declared["$ref"].rsplit("/", 1)[-1]]
        schema = declared["schema"]
        raw = headers[name]
        _validator(schema).validate(int(raw) if schema["type"] == "integer" else raw)
    if "Last-Modified" in headers:
        assert parsedate_to_datetime(headers["Last-Modified"]).tzinfo is not None


# -- helpers -----------------------------------------------------------------------------------


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


@contextlib.asynccontextmanager
async def serving(
    regions: Mapping[int, int | RegionSpec], **kwargs: Any
) -> AsyncIterator[tuple[FakeEsi, aiohttp.ClientSession]]:
    esi = FakeEsi(regions, **kwargs)
    await esi.start()
    try:
        async with aiohttp.ClientSession(esi.url) as session:
            yield esi, session
    finally:
        await esi.stop()


class Got:
    def __init__(self, status: int, headers: CIMultiDictProxy[str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)


async def get(session: aiohttp.ClientSession, path: str, **headers: str) -> Got:
    async with session.get(path, headers=headers) as resp:
        return Got(resp.status, resp.headers, await resp.read())


def orders_url(region_id: int, page: int | None = 1) -> str:
    tail = "" if page is None else f"&page={page}"
    return f"/markets/{region_id}/orders?order_type=all{tail}"


def http_time(value: str) -> dt.datetime:
    parsed = parsedate_to_datetime(value)
    assert parsed.tzinfo is not None
    return parsed


# -- pages, headers, spec ----------------------------------------------------------------------


def test_order_page_matches_the_spec() -> None:
    async def body() -> None:
        async with serving({FORGE: 2500}) as (esi, session):
            got = await get(session, orders_url(FORGE))
            assert got.status == 200
            assert got.headers["Content-Type"] == "application/json; charset=UTF-8"
            orders = got.json()
            validate(ORDERS_PATH, orders)
            validate_headers(ORDERS_PATH, got.headers)
            assert len(orders) == 1000
            for order in orders:
                assert set(order) == ORDER_FIELDS
                assert dt.datetime.fromisoformat(order["issued"]).tzinfo == dt.UTC
                assert isinstance(order["price"], float)
                assert round(order["price"], 2) == order["price"]
                assert 6e9 <= order["order_id"] < 7e9
            everything = esi.orders(FORGE)
            assert any(o["location_id"] > 1e12 for o in everything)
            assert {o["is_buy_order"] for o in everything} == {True, False}
            h = got.headers
            assert h["X-Pages"] == "3"
            assert h["ETag"][0] == h["ETag"][-1] == '"'
            assert http_time(h["Expires"]) - http_time(h["Date"]) == dt.timedelta(seconds=300)
            assert http_time(h["Last-Modified"]) <= http_time(h["Date"])
            assert h["Cache-Control"] == "public, max-age=300"
            assert (h["X-ESI-Error-Limit-Remain"], h["X-ESI-Error-Limit-Reset"]) == ("100", "60")
            assert h["X-Ratelimit-Group"] == "market-order"
            assert h["X-Ratelimit-Limit"] == "12000/15m"
            assert (h["X-Ratelimit-Remaining"], h["X-Ratelimit-Used"]) == ("11998", "2")
            assert "close" not in h.get("Connection", "").lower()  # keep-alive

    run(body())


def test_universe_regions_and_legacy_routes() -> None:
    async def body() -> None:
        listed = [FORGE, EMPTY, 10000099]  # 10000099 is listed but has no market
        async with serving({FORGE: 1500, EMPTY: 0}, listed_regions=listed) as (_, session):
            got = await get(session, "/universe/regions")
            assert got.status == 200
            validate("/universe/regions", got.json())
            assert sorted(got.json()) == sorted(listed)
            legacy = await get(session, "/latest/universe/regions/?datasource=tranquility")
            assert (legacy.status, legacy.body) == (200, got.body)
            new = await get(session, orders_url(FORGE, 2))
            old = await get(session, f"/latest/markets/{FORGE}/orders/?datasource=tranquility"
                            "&order_type=all&page=2")  # fmt: skip
            assert (old.status, old.body, old.headers["ETag"]) == (200, new.body, new.headers["ETag"])
            missing = await get(session, orders_url(10000099))
            assert (missing.status, missing.json()) == (404, {"error": "Region not found"})
            validate_error(missing.json())

    run(body())


def test_paging_past_the_end_and_empty_region() -> None:
    async def body() -> None:
        async with serving({FORGE: 2500, DOMAIN: 10, EMPTY: 0}) as (esi, session):
            walked = []
            for page in (1, 2, 3):
                got = await get(session, orders_url(FORGE, page))
                assert (got.status, got.headers["X-Pages"]) == (200, "3")
                walked += got.json()
            assert len(walked) == 2500
            assert walked == esi.orders(FORGE)
            default_page = await get(session, orders_url(FORGE, None))
            assert default_page.json() == walked[:1000]
            past = await get(session, orders_url(FORGE, 4))
            assert (past.status, past.json()) == (404, {"error": "Requested page does not exist!"})
            validate_error(past.json())
            empty = await get(session, orders_url(EMPTY))
            assert (empty.status, empty.body, empty.headers["X-Pages"]) == (200, b"[]", "1")
            assert (await get(session, orders_url(EMPTY, 2))).status == 404
            ids = [o["order_id"] for o in walked + esi.orders(DOMAIN)]
            assert len(ids) == len(set(ids)) == 2510

    run(body())


def test_pages_hold_page_size_orders() -> None:
    async def body() -> None:
        async with serving({FORGE: 25}, page_size=10) as (_, session):
            sizes = [len((await get(session, orders_url(FORGE, p))).json()) for p in (1, 2, 3)]
            assert sizes == [10, 10, 5]

    run(body())


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("", 400),
        ("?order_type=bogus", 400),
        ("?order_type=all&page=0", 400),
        ("?order_type=all&page=x", 400),
        ("?order_type=all&datasource=singularity", 400),
    ],
)
def test_bad_parameters_answer_json_errors(query: str, status: int) -> None:
    async def body() -> None:
        async with serving({FORGE: 10}) as (_, session):
            got = await get(session, f"/markets/{FORGE}/orders{query}")
            assert got.status == status
            assert got.headers["Content-Type"].startswith("application/json")
            validate_error(got.json())

    run(body())


def test_unknown_route_is_a_json_404_that_counts_as_an_error() -> None:
    async def body() -> None:
        async with serving({FORGE: 10}) as (_, session):
            got = await get(session, "/markets/prices")
            assert got.status == 404
            validate_error(got.json())
            assert got.headers["X-ESI-Error-Limit-Remain"] == "99"

    run(body())


def test_etag_gives_304_and_last_modified_is_shared_by_pages() -> None:
    async def body() -> None:
        async with serving({FORGE: 2500}) as (_, session):
            pages = [await get(session, orders_url(FORGE, p)) for p in (1, 2, 3)]
            assert len({p.headers["ETag"] for p in pages}) == 3
            assert len({p.headers["Last-Modified"] for p in pages}) == 1
            first = pages[0]
            again = await get(session, orders_url(FORGE), **{"If-None-Match": first.headers["ETag"]})
            assert (again.status, again.body) == (304, b"")
            assert again.headers["ETag"] == first.headers["ETag"]
            assert again.headers["Last-Modified"] == first.headers["Last-Modified"]
            for name in ("Expires", "Date", "X-Pages", *LIMIT_HEADERS, *BUCKET_HEADERS):
                assert name in again.headers
            assert again.headers["X-Ratelimit-Used"] == "7"  # 3 pages x 2 + one 304 x 1
            other = await get(session, orders_url(FORGE), **{"If-None-Match": pages[1].headers["ETag"]})
            assert other.status == 200
            since = await get(
                session, orders_url(FORGE, 2), **{"If-Modified-Since": first.headers["Last-Modified"]}
            )
            assert since.status == 304

    run(body())


def test_update_region_changes_orders_etags_and_last_modified() -> None:
    async def body() -> None:
        async with serving({FORGE: 2000, DOMAIN: 5}) as (esi, session):
            before = [await get(session, orders_url(FORGE, p)) for p in (1, 2)]
            old_orders = esi.orders(FORGE)
            esi.update_region(FORGE)
            after = [await get(session, orders_url(FORGE, p)) for p in (1, 2)]
            for old, new in zip(before, after, strict=True):
                assert new.headers["ETag"] != old.headers["ETag"]
                assert http_time(new.headers["Last-Modified"]) > http_time(old.headers["Last-Modified"])
            assert after[0].headers["Last-Modified"] == after[1].headers["Last-Modified"]
            new_orders = esi.orders(FORGE)
            assert new_orders == after[0].json() + after[1].json()
            all_ids = {o["order_id"] for o in old_orders + new_orders + esi.orders(DOMAIN)}
            assert len(all_ids) == 4005
            assert [o["price"] for o in old_orders] != [o["price"] for o in new_orders]
            stale = await get(session, orders_url(FORGE), **{"If-None-Match": before[0].headers["ETag"]})
            assert stale.status == 200
            esi.update_region(FORGE, orders=500)
            shrunk = await get(session, orders_url(FORGE))
            assert (shrunk.headers["X-Pages"], len(shrunk.json())) == ("1", 500)

    run(body())


def test_orders_are_deterministic_for_a_seed() -> None:
    one, same, other = (FakeEsi({FORGE: 50, DOMAIN: 20}, seed=s) for s in (1, 1, 2))
    assert one.orders(FORGE) == same.orders(FORGE)
    assert one.orders(DOMAIN) == same.orders(DOMAIN)
    assert one.orders(FORGE) != other.orders(FORGE)


def test_rejects_unknown_faults_and_impossible_ones() -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        FakeEsi({FORGE: RegionSpec(10, "explode")})
    with pytest.raises(ValueError, match="2 pages"):
        FakeEsi({FORGE: RegionSpec(1000, "flip")})
    with pytest.raises(ValueError, match="unknown fault"):
        FakeEsi({FORGE: 10}).inject("418")


# -- injected faults ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", [502, 503, 504])
def test_injected_server_errors_then_normal(status: int) -> None:
    async def body() -> None:
        async with serving({FORGE: 10}) as (esi, session):
            esi.inject(str(status), count=2)
            for _ in range(2):
                got = await get(session, orders_url(FORGE))
                assert got.status == status
                if status == 502:
                    assert got.headers["Content-Type"].startswith("text/html")
                    assert b"502 Bad Gateway" in got.body
                else:
                    validate_error(got.json())
            if status == 504:
                assert got.json() == {"error": "Timeout contacting upstream", "timeout": 10}
            if status == 503:
                assert got.json() == {"error": "service unavailable"}
            assert (await get(session, orders_url(FORGE))).status == 200

    run(body())


def test_injection_for_one_region_spares_the_others() -> None:
    async def body() -> None:
        async with serving({FORGE: 10, DOMAIN: 10}) as (esi, session):
            esi.inject("503", region_id=DOMAIN)
            assert (await get(session, orders_url(FORGE))).status == 200
            assert (await get(session, "/universe/regions")).status == 200
            assert (await get(session, orders_url(DOMAIN))).status == 503
            assert (await get(session, orders_url(DOMAIN))).status == 200

    run(body())


def test_injected_420_blocks_every_route_until_reset() -> None:
    async def body() -> None:
        async with serving({FORGE: 10}) as (esi, session):
            esi.inject("420", reset_seconds=1)
            got = await get(session, orders_url(FORGE))
            assert got.status == 420
            validate_error(got.json())
            assert got.json()["error"].startswith("This software has exceeded the error limit")
            assert (got.headers["X-ESI-Error-Limit-Remain"], got.headers["X-ESI-Error-Limit-Reset"]) == (
                "0",
                "1",
            )
            assert (await get(session, "/universe/regions")).status == 420
            await asyncio.sleep(int(got.headers["X-ESI-Error-Limit-Reset"]))
            ok = await get(session, orders_url(FORGE))
            assert (ok.status, ok.headers["X-ESI-Error-Limit-Remain"]) == (200, "100")

    run(body())


def test_error_limit_counts_errors_then_answers_420_until_the_window_ends() -> None:
    async def body() -> None:
        async with serving({FORGE: 10}, error_limit=3, error_window_seconds=0.8) as (_, session):
            remains = []
            for _ in range(3):
                got = await get(session, orders_url(FORGE, 9))
                assert got.status == 404
                remains.append(got.headers["X-ESI-Error-Limit-Remain"])
            assert remains == ["2", "1", "0"]
            blocked = await get(session, orders_url(FORGE))
            assert blocked.status == 420
            reset = int(blocked.headers["X-ESI-Error-Limit-Reset"])
            assert 0 < reset <= 1
            await asyncio.sleep(reset)
            ok = await get(session, orders_url(FORGE))
            assert (ok.status, ok.headers["X-ESI-Error-Limit-Remain"]) == (200, "3")

    run(body())


def test_injected_429_with_and_without_bucket_headers() -> None:
    async def body() -> None:
        async with serving({FORGE: 10}) as (esi, session):
            esi.inject("429", retry_after=7)
            got = await get(session, orders_url(FORGE))
            assert (got.status, got.headers["Retry-After"]) == (429, "7")
            assert all(name in got.headers for name in BUCKET_HEADERS)
            esi.inject("429", bucket_headers=False)
            bare = await get(session, orders_url(FORGE))
            assert (bare.status, bare.headers["Retry-After"]) == (429, "1")
            assert not any(name in bare.headers for name in BUCKET_HEADERS)
            assert (await get(session, orders_url(FORGE))).status == 200

    run(body())


def test_token_bucket_charges_by_status_and_answers_429_when_spent() -> None:
    async def body() -> None:
        async with serving({FORGE: 10}, bucket_tokens=12) as (_, session):
            first = await get(session, orders_url(FORGE))  # 200: 2
            etag = first.headers["ETag"]
            assert (await get(session, orders_url(FORGE), **{"If-None-Match": etag})).status == 304
            assert (await get(session, orders_url(FORGE, 5))).status == 404  # 5
            used = []
            for _ in range(2):  # 2 + 2
                used.append((await get(session, orders_url(FORGE))).headers["X-Ratelimit-Used"])
            assert used == ["10", "12"]
            spent = await get(session, orders_url(FORGE))
            assert spent.status == 429
            assert 1 <= int(spent.headers["Retry-After"]) <= 900
            assert (spent.headers["X-Ratelimit-Remaining"], spent.headers["X-Ratelimit-Limit"]) == (
                "0",
                "12/15m",
            )
            regions = await get(session, "/universe/regions")  # not in the market-order group
            assert regions.status == 200
            assert "X-Ratelimit-Used" not in regions.headers

    run(body())


def test_latency_delays_every_answer() -> None:
    async def body() -> None:
        async with serving({FORGE: 10}, latency_seconds=0.2) as (_, session):
            started = time.monotonic()
            for _ in range(2):
                assert (await get(session, orders_url(FORGE))).status == 200
            assert time.monotonic() - started >= 0.4

    run(body())


def test_reset_closes_and_hang_never_answers() -> None:
    async def body() -> None:
        async with serving({FORGE: 10}) as (esi, session):
            # aiohttp retries a GET once when the server drops the connection unanswered.
            esi.inject("reset", count=2)
            with pytest.raises(aiohttp.ServerDisconnectedError):
                await get(session, orders_url(FORGE))
            esi.inject("hang")
            with pytest.raises(asyncio.TimeoutError):
                async with session.get(orders_url(FORGE), timeout=aiohttp.ClientTimeout(total=0.3)):
                    pass
            assert (await get(session, orders_url(FORGE))).status == 200
            assert [r.status for r in esi.requests] == [0, 0, 0, 200]
            started = time.monotonic()
        assert time.monotonic() - started < 1.5  # stop() let go of the held request

    run(body())


# -- persistent region faults ------------------------------------------------------------------


@pytest.mark.parametrize(("fault", "status"), [("html502", 502), ("json503", 503), ("json504", 504)])
def test_region_server_error_faults_persist(fault: str, status: int) -> None:
    async def body() -> None:
        async with serving({FORGE: RegionSpec(2000, fault), DOMAIN: 10}) as (_, session):
            for page in (1, 2, 1):
                assert (await get(session, orders_url(FORGE, page))).status == status
            assert (await get(session, orders_url(DOMAIN))).status == 200

    run(body())


def test_transient503_fails_twice_then_serves() -> None:
    async def body() -> None:
        async with serving({FORGE: RegionSpec(10, "transient503")}) as (_, session):
            statuses = [(await get(session, orders_url(FORGE))).status for _ in range(4)]
            assert statuses == [503, 503, 200, 200]

    run(body())


@pytest.mark.parametrize("fault", ["not-json", "not-list", "missing-field", "wrong-type"])
def test_body_faults_serve_200_with_a_bad_page_1(fault: str) -> None:
    async def body() -> None:
        async with serving({FORGE: RegionSpec(1500, fault)}) as (esi, session):
            got = await get(session, orders_url(FORGE))
            assert got.status == 200
            if fault == "not-json":
                with pytest.raises(json.JSONDecodeError):
                    got.json()
            elif fault == "not-list":
                assert isinstance(got.json(), dict)
            else:
                orders = got.json()
                errors = list(_validator(response_schema(ORDERS_PATH)).iter_errors(orders))
                assert len(errors) == 1
                if fault == "missing-field":
                    assert sum("price" not in o for o in orders) == 1
                else:
                    assert sum(isinstance(o["type_id"], str) for o in orders) == 1
            if fault != "not-list":  # only page 1 is damaged
                page2 = await get(session, orders_url(FORGE, 2))
                validate(ORDERS_PATH, page2.json())
                assert page2.json() == esi.orders(FORGE)[1000:]

    run(body())


def test_flip_refreshes_the_region_once_mid_walk() -> None:
    async def body() -> None:
        async with serving({FORGE: RegionSpec(2500, "flip")}) as (esi, session):
            first_walk = [await get(session, orders_url(FORGE, p)) for p in (1, 2, 3)]
            stamps = [w.headers["Last-Modified"] for w in first_walk]
            assert stamps[0] != stamps[1] == stamps[2]
            assert http_time(stamps[1]) > http_time(stamps[0])
            second_walk = [await get(session, orders_url(FORGE, p)) for p in (1, 2, 3)]
            assert {w.headers["Last-Modified"] for w in second_walk} == {stamps[1]}
            assert [o for w in second_walk for o in w.json()] == esi.orders(FORGE)
            stale_ids = {o["order_id"] for o in first_walk[0].json()}
            assert stale_ids.isdisjoint(o["order_id"] for o in esi.orders(FORGE))

    run(body())


def test_flip_always_never_gives_a_consistent_walk() -> None:
    async def body() -> None:
        async with serving({FORGE: RegionSpec(2000, "flip-always")}) as (_, session):
            for _ in range(3):
                walk = [await get(session, orders_url(FORGE, p)) for p in (1, 2)]
                assert walk[0].headers["Last-Modified"] != walk[1].headers["Last-Modified"]

    run(body())


# -- bookkeeping, threads, layouts, command line -----------------------------------------------


def test_requests_are_recorded_and_counted() -> None:
    async def body() -> None:
        async with serving({FORGE: 1500}) as (esi, session):
            headers = {"User-Agent": "test/1.0 (ops@example.com)", "X-Compatibility-Date": "2026-08-04"}
            got = await get(session, orders_url(FORGE, 2), **headers)
            past = await get(session, orders_url(FORGE, 3))
            regions = await get(session, "/universe/regions")
            first = esi.requests[0]
            assert (first.path, first.query) == (
                f"/markets/{FORGE}/orders",
                {"order_type": "all", "page": "2"},
            )
            assert first.headers["user-agent"] == headers["User-Agent"]
            assert first.headers["x-compatibility-date"] == "2026-08-04"
            assert (first.region_id, first.page, first.status) == (FORGE, 2, 200)
            assert [(r.region_id, r.page, r.status) for r in esi.requests[1:]] == [
                (FORGE, 3, 404),
                (None, None, 200),
            ]
            assert esi.requests[0].time <= esi.requests[1].time <= esi.requests[2].time
            stats = esi.stats()
            assert stats["requests"] == stats["answered"] == 3
            assert stats["by_status"] == {200: 2, 404: 1}
            assert stats["bytes_sent"] == len(got.body) + len(past.body) + len(regions.body)

    run(body())


def test_run_in_thread_serves_a_synchronous_caller() -> None:
    esi = FakeEsi({FORGE: 10})

    async def fetch(url: str) -> int:
        async with aiohttp.ClientSession() as session, session.get(url + orders_url(FORGE)) as resp:
            return resp.status

    with esi.run_in_thread() as served:
        url = served.url
        esi.inject("503")  # from this thread, while the server's loop runs in another
        assert [asyncio.run(fetch(url)), asyncio.run(fetch(url))] == [503, 200]
    with pytest.raises(aiohttp.ClientConnectionError):
        asyncio.run(fetch(url))


def _pages(counts: Mapping[int, int], page_size: int = 1000) -> dict[int, int]:
    return {r: -(-n // page_size) for r, n in counts.items()}


def test_bench_layout_is_exactly_1000_full_pages_over_real_ids() -> None:
    bench = layout("bench")
    pages = _pages(bench)
    assert sum(pages.values()) == 1000
    assert all(n % 1000 == 0 for n in bench.values())
    assert 250 <= pages[FORGE] <= 400
    assert sum(20 <= p <= 60 for p in pages.values()) >= 3
    assert sum(1 <= p <= 10 for p in pages.values()) >= 15
    assert 25 <= sum(p == 0 for p in pages.values()) <= 35
    assert {10000024, 10000026}.isdisjoint(bench)
    assert {10000001, 10000070, 11000031, 19000001} <= set(bench)
    assert all(10000001 <= r <= 10000070 for r in bench if r not in (11000031, 19000001))


def test_demo_and_small_layouts() -> None:
    demo, small = layout("demo"), layout("small")
    assert set(demo) == set(layout("bench"))
    assert sum(demo.values()) == sum(layout("bench").values()) // 10
    assert len(small) == 5
    assert sum(n == 0 for n in small.values()) == 1
    assert sum(_pages(small).values()) <= 10
    with pytest.raises(ValueError, match="unknown layout"):
        layout("huge")


def test_command_line_prints_its_url_and_exits_0_on_sigterm() -> None:
    cmd = [sys.executable, "-m", "tornado_admin.fake_esi", "--port", "0", "--layout", "small"]
    cmd += ["--fault", f"{DOMAIN}:json503", "--region", "10000001:1200"]
    # Buffered stdout, as under a benchmark's pipe: the server must flush its URL line itself.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=root)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")

        async def probe() -> list[int]:
            async with aiohttp.ClientSession(url) as session:
                return [
                    (await get(session, "/universe/regions")).status,
                    (await get(session, orders_url(DOMAIN))).status,
                    int((await get(session, orders_url(10000001))).headers["X-Pages"]),
                ]

        assert asyncio.run(probe()) == [200, 503, 2]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
