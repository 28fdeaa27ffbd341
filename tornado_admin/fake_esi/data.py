"""Deterministic market orders for the fake ESI, rendered once into the exact bytes served per page.

Only the bytes are kept (about 250 bytes per order): a million order dicts would cost gigabytes.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

import orjson

FIRST_ORDER_ID = 6_500_000_000
# Buy orders may have any range; sell orders are always "region" on Tranquility.
BUY_RANGES = ("station", "solarsystem", "region", "1", "2", "3", "4", "5", "10", "20", "30", "40")
DURATIONS = (1, 3, 7, 14, 30, 90)
# Fixed, so the same seed gives the same bytes whenever the server starts.
ISSUED_BASE_EPOCH = 1_793_016_000  # 2026-10-27T12:00:00Z
ISSUED_SPREAD_SECONDS = 90 * 86_400
_TYPE_POOL_BITS = 12
_ISSUED_POOL_BITS = 12
_PLACES = 48
STRUCTURE_BASE_ID = 1_020_000_000_000


def http_date(epoch_seconds: float) -> str:
    """An RFC 7231 date, as ESI sends in Date, Expires and Last-Modified."""
    return formatdate(epoch_seconds, usegmt=True)


def make_etag(body: bytes) -> str:
    # Derived from the bytes, so an ETag changes exactly when a page's content does.
    return '"' + hashlib.sha1(body, usedforsecurity=False).hexdigest() + '"'


@dataclass(frozen=True, slots=True)
class Page:
    body: bytes
    etag: str


@dataclass(frozen=True, slots=True)
class RegionContent:
    """One generation of a region: its pages as served, never mutated (swapped whole on update)."""

    region_id: int
    generation: int
    order_count: int
    pages: tuple[Page, ...]  # at least one: an empty region is one page "[]"
    last_modified_epoch: int
    last_modified: str  # http_date(last_modified_epoch)

    def decode_orders(self) -> list[dict[str, Any]]:
        return [order for page in self.pages for order in orjson.loads(page.body)]


class OrderFactory:
    """Makes regions of orders; order_ids come from one counter so they never repeat.

    Not thread-safe: the caller serialises calls (FakeEsi holds its lock around them).
    """

    def __init__(self, seed: int, page_size: int) -> None:
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        self._seed = seed
        self._page_size = page_size
        self._next_order_id = FIRST_ORDER_ID + (seed % 1000) * 100_000
        rng = random.Random(f"types:{seed}")
        # A pool of type_ids with a base price each, so buy and sell prices of a type are close.
        types = [34, 35, 36, 37, 38, 39, 40, 44992] + rng.sample(range(41, 60_000), 1 << 13)
        self._types = types[: 1 << _TYPE_POOL_BITS]
        self._base_prices = [10 ** rng.uniform(0.0, 9.0) for _ in self._types]

    def render(
        self, region_id: int, order_count: int, generation: int, last_modified_epoch: int
    ) -> RegionContent:
        if order_count < 0:
            raise ValueError("order_count must be >= 0")
        rng = random.Random(f"orders:{self._seed}:{region_id}:{generation}")
        places = _places(rng, region_id)
        issued_end = ISSUED_BASE_EPOCH + generation * 300
        issued_pool = [
            _iso_utc(issued_end - rng.randrange(ISSUED_SPREAD_SECONDS)) for _ in range(1 << _ISSUED_POOL_BITS)
        ]
        pages: list[Page] = []
        left = order_count
        while left > 0 or not pages:
            n = min(left, self._page_size)
            orders = self._orders(rng, n, places, issued_pool)
            body = orjson.dumps(orders)
            pages.append(Page(body, make_etag(body)))
            left -= n
        return RegionContent(
            region_id=region_id,
            generation=generation,
            order_count=order_count,
            pages=tuple(pages),
            last_modified_epoch=last_modified_epoch,
            last_modified=http_date(last_modified_epoch),
        )

    def _orders(
        self,
        rng: random.Random,
        count: int,
        places: list[tuple[int, int]],
        issued_pool: list[str],
    ) -> list[dict[str, object]]:
        # The hot loop of a bench build (a million iterations): locals only, no helper calls.
        rand, bits = rng.random, rng.getrandbits
        types, base_prices = self._types, self._base_prices
        n_places = len(places)
        oid = self._next_order_id
        out: list[dict[str, object]] = []
        append = out.append
        for _ in range(count):
            oid += 1 + bits(2)
            t = bits(_TYPE_POOL_BITS)
            is_buy = rand() < 0.4
            spread = 1.0 - 0.3 * rand() if is_buy else 1.0 + 0.3 * rand()
            location_id, system_id = places[int(rand() * n_places)]
            total = int(10 ** (rand() * 5)) + 1
            append(
                {
                    "duration": DURATIONS[int(rand() * 6)],
                    "is_buy_order": is_buy,
                    "issued": issued_pool[bits(_ISSUED_POOL_BITS)],
                    "location_id": location_id,
                    "min_volume": 1 + bits(4) if is_buy and bits(3) == 0 else 1,
                    "order_id": oid,
                    "price": round(base_prices[t] * spread, 2),
                    "range": BUY_RANGES[int(rand() * 12)] if is_buy else "region",
                    "system_id": system_id,
                    "type_id": types[t],
                    "volume_remain": 1 + int(rand() * total),
                    "volume_total": total,
                }
            )
        self._next_order_id = oid + 1
        return out


def _iso_utc(epoch_seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_seconds))


def _places(rng: random.Random, region_id: int) -> list[tuple[int, int]]:
    """(location_id, system_id) pairs of a region: NPC stations and some player structures."""
    first_system = 30_000_000 + (region_id % 1000) * 70
    places: list[tuple[int, int]] = []
    for i in range(_PLACES):
        system_id = first_system + rng.randrange(1, 70)
        if i % 4 == 3:  # about a quarter of the markets are player structures (ids > 1e12)
            places.append((STRUCTURE_BASE_ID + rng.randrange(10**10), system_id))
        else:
            places.append((60_000_000 + rng.randrange(15_000), system_id))
    if region_id == 10000002:
        places[0] = (60003760, 30000142)  # Jita IV - Moon 4 - Caldari Navy Assembly Plant
    return places
