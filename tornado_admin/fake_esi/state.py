"""What the fake ESI keeps per region and per request."""

from __future__ import annotations

from dataclasses import dataclass

from multidict import CIMultiDict

from tornado_admin.fake_esi import faults
from tornado_admin.fake_esi.data import Page, RegionContent, make_etag


@dataclass
class RegionSpec:
    orders: int  # 0 = an empty region, served as 200 [] with X-Pages: 1
    fault: str | None = None  # one of faults.REGION_FAULTS, or None for a healthy region


@dataclass
class RequestRecord:
    time: float  # time.monotonic() at arrival
    path: str
    query: dict[str, str]
    headers: CIMultiDict[str]  # a copy of the request headers; lookups ignore case
    region_id: int | None
    page: int | None
    status: int = 0  # the status answered; 0 while unanswered or when never answered


@dataclass
class RegionState:
    """Serving state of one region; FakeEsi changes it only under its lock."""

    spec: RegionSpec
    content: RegionContent
    served: tuple[Page, ...]  # content.pages with the region's body fault applied
    page1_seen: bool = False  # for "flip": the refresh happens after a walk has begun
    flipped: bool = False
    transient_left: int = 0  # 503s still to give, for "transient503"


def served_pages(content: RegionContent, fault: str | None) -> tuple[Page, ...]:
    """The pages as served: the canonical ones, or with page 1 (every page for "not-list")
    rewritten by a body fault ("wrong-type-last" and "duplicates" rewrite the last page)."""
    if fault not in faults.BODY_FAULTS:
        return content.pages
    pages = list(content.pages)
    last = len(pages) - 1
    targets = {"not-list": range(len(pages)), "wrong-type-last": [last], "duplicates": [last]}
    for i in targets.get(fault, range(1)):
        if fault == "duplicates":
            body = faults.repeat_orders(pages[i].body, pages[0].body)
        else:
            body = faults.corrupt_page(pages[i].body, fault)
        pages[i] = Page(body, make_etag(body))
    return tuple(pages)
