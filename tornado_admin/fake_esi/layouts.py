"""Preset region layouts (region_id -> order count) shaped like Tranquility's market."""

from __future__ import annotations

# Known space 10000001..10000070 (10000024 and 10000026 do not exist), Thera, the global PLEX market.
REGION_IDS: tuple[int, ...] = (
    *(r for r in range(10000001, 10000071) if r not in (10000024, 10000026)),
    11000031,
    19000001,
)
THE_FORGE = 10000002

# Pages of 1000 orders; bench = 310 + 550 + 140 = exactly 1000 full pages.
_FORGE_PAGES = 310
_HUB_PAGES = {  # trade hubs and busy regions: 20-60 pages each
    10000043: 60, 10000032: 60, 10000030: 55, 10000042: 50, 10000016: 45,
    10000064: 40, 10000033: 35, 10000037: 30, 10000020: 30, 10000052: 30,
    10000067: 25, 10000068: 25, 10000001: 25, 10000048: 20, 10000036: 20,
}  # fmt: skip
_SMALL_PAGES = {  # 1-10 pages each, including Pochven, Thera and the PLEX market
    10000065: 10, 10000038: 9, 10000041: 9, 10000044: 8, 10000049: 8,
    10000054: 8, 10000028: 7, 10000069: 7, 10000047: 7, 10000058: 7,
    10000060: 6, 10000023: 6, 10000039: 6, 10000014: 6, 10000050: 5,
    10000061: 5, 10000010: 5, 10000029: 4, 10000035: 4, 10000015: 3,
    10000057: 3, 10000070: 2, 11000031: 2, 19000001: 2, 10000012: 1,
}  # fmt: skip
BENCH_PAGE_SIZE = 1000


def _bench() -> dict[int, int]:
    pages = {THE_FORGE: _FORGE_PAGES, **_HUB_PAGES, **_SMALL_PAGES}
    return {r: pages.get(r, 0) * BENCH_PAGE_SIZE for r in REGION_IDS}


def layout(name: str) -> dict[int, int]:
    """A preset: "bench" (1,000,000 orders in exactly 1000 full pages of 1000 over 70 regions,
    29 of them empty), "demo" (the same regions with a tenth of the orders, so pages are not all
    full) or "small" (5 regions over a few pages, one empty)."""
    if name == "bench":
        return _bench()
    if name == "demo":
        return {r: n // 10 for r, n in _bench().items()}
    if name == "small":
        return {THE_FORGE: 3000, 10000043: 1500, 10000032: 1000, 11000031: 250, 10000070: 0}
    raise ValueError(f"unknown layout {name!r}: expected one of {', '.join(LAYOUTS)}")


LAYOUTS = ("bench", "demo", "small")
