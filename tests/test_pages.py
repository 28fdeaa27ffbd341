"""Page parsing: every malformed shape is refused with a message that says what is wrong."""

from __future__ import annotations

import datetime as dt

import orjson
import pytest

from tornado_admin.market.pages import FIELDS, MalformedPageError, parse_page

ORDER = {
    "order_id": 6_000_000_001, "type_id": 34, "location_id": 1_035_466_617_946,
    "system_id": 30000142, "volume_total": 100, "volume_remain": 40, "min_volume": 1,
    "price": 5.25, "is_buy_order": False, "duration": 90, "issued": "2026-11-03T05:12:25Z",
    "range": "region",
}


def body(*orders: dict) -> bytes:
    return orjson.dumps(list(orders))


def test_valid_page_becomes_rows_in_field_order():
    other = {**ORDER, "order_id": 6_000_000_002, "price": 10000000, "is_buy_order": True}
    page = parse_page(body(ORDER, other))
    assert len(page) == 2
    assert page.rows()[0] == tuple(ORDER[name] for name in FIELDS)
    assert page.rows()[1][FIELDS.index("price")] == 10000000  # integer prices are accepted
    typed = page.typed_rows()[0][FIELDS.index("issued")]
    assert typed == dt.datetime(2026, 11, 3, 5, 12, 25, tzinfo=dt.UTC)


def test_empty_page_is_empty():
    assert len(parse_page(b"[]")) == 0
    assert parse_page(b"[]").rows() == []


def test_issued_with_an_offset_is_stored_as_utc():
    page = parse_page(body({**ORDER, "issued": "2026-11-03T07:12:25+02:00"}))
    assert page.rows()[0][FIELDS.index("issued")] == "2026-11-03T05:12:25Z"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"<html>502 Bad Gateway</html>", "not JSON"),
        (b'{"error": "x"}', "JSON object, not an array"),
        (b"[1, 2]", "order 0 is a JSON integer, not an object"),
        (body(ORDER, {k: v for k, v in ORDER.items() if k != "price"}), "order 1: missing field 'price'"),
        (body({**ORDER, "type_id": "34"}), "field 'type_id' is a string, expected integer"),
        (body({**ORDER, "order_id": 1.5}), "field 'order_id' is a number, expected integer"),
        (body({**ORDER, "volume_total": True}), "field 'volume_total' is a boolean"),
        (body({**ORDER, "is_buy_order": 1}), "field 'is_buy_order' is a integer, expected boolean"),
        (body({**ORDER, "price": None}), "field 'price' is a null"),
        (body({**ORDER, "range": "galaxy"}), "unknown value 'galaxy'"),
        (body({**ORDER, "issued": "yesterday"}), "not an ISO date-time"),
        (body({**ORDER, "issued": "2026-11-03T05:12:25"}), "no time zone"),
        (body({**ORDER, "location_id": 2**64 - 1}), "'location_id' is out of the 64-bit integer range"),
    ],
)
def test_malformed_pages_are_refused_clearly(raw: bytes, message: str):
    with pytest.raises(MalformedPageError) as caught:
        parse_page(raw)
    assert message in str(caught.value)
