"""ESI's request rules as the fake applies them: query validation and conditional requests."""

from __future__ import annotations

from email.utils import parsedate_to_datetime

from aiohttp import web

ORDER_TYPES = ("all", "buy", "sell")


def to_int(text: str | None) -> int | None:
    # Plain decimal only: int() alone would also take " 7", "+7" and "1_000".
    if text is None or not text.removeprefix("-").isdecimal():
        return None
    return int(text)


def market_query_error(order_type: str | None, region_id: int | None, page: int | None) -> str | None:
    if order_type is None:
        return "Missing required query parameter: order_type"
    if order_type not in ORDER_TYPES:
        return f"Invalid order_type {order_type!r}: expected one of {', '.join(ORDER_TYPES)}"
    if order_type != "all":
        return "This fake ESI serves only order_type=all"  # filtering is not simulated
    if region_id is None:
        return "region_id must be an integer"
    if page is None or page < 1:
        return "page must be an integer >= 1"
    return None


def _etag_matches(if_none_match: str, etag: str) -> bool:
    tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return "*" in tags or etag in tags


def not_modified(request: web.Request, etag: str, last_modified_epoch: int) -> bool:
    inm = request.headers.get("If-None-Match")
    if inm is not None:  # RFC 9110: If-None-Match wins over If-Modified-Since
        return _etag_matches(inm, etag)
    ims = request.headers.get("If-Modified-Since")
    if ims is None:
        return False
    try:
        return last_modified_epoch <= parsedate_to_datetime(ims).timestamp()
    except (TypeError, ValueError):
        return False
