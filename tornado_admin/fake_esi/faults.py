"""Fault kinds of the fake ESI: persistent per-region faults, one-shot injections, error bodies."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

# Persistent, set per region through RegionSpec.fault.
REGION_FAULTS = frozenset(
    {
        "html502", "json503", "json504", "not-json", "not-list", "missing-field", "wrong-type",
        "flip", "flip-always", "transient503", "wrong-type-last", "duplicates",
    }
)  # fmt: skip
# Faults that rewrite the served bytes of a page (the region's orders() stay the canonical ones).
BODY_FAULTS = frozenset(
    {"not-json", "not-list", "missing-field", "wrong-type", "wrong-type-last", "duplicates"}
)
TRANSIENT_503_COUNT = 2
# One-shot, queued with FakeEsi.inject.
INJECT_KINDS = frozenset({"420", "429", "502", "503", "504", "hang", "reset"})

BAD_GATEWAY_HTML = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n"
)
ERROR_LIMITED_MESSAGE = (
    "This software has exceeded the error limit for ESI. If you are a user, please contact the "
    "maintainer of this software. If you are a developer/maintainer, please make a greater "
    "effort in the future to receive valid responses."
)


def error_body(message: str, **extra: object) -> bytes:
    return orjson.dumps({"error": message, **extra})


SERVICE_UNAVAILABLE = error_body("service unavailable")
GATEWAY_TIMEOUT = error_body("Timeout contacting upstream", timeout=10)
ERROR_LIMITED = error_body(ERROR_LIMITED_MESSAGE)
TOO_MANY_REQUESTS = error_body("Too many requests")
NO_SUCH_PAGE = error_body("Requested page does not exist!")
NO_SUCH_REGION = error_body("Region not found")
NOT_FOUND = error_body("Not found")


def check_region_fault(fault: str | None, order_count: int, page_size: int) -> None:
    """Reject a fault the region cannot show (raises ValueError)."""
    if fault is None:
        return
    if fault not in REGION_FAULTS:
        raise ValueError(f"unknown fault {fault!r}: expected one of {', '.join(sorted(REGION_FAULTS))}")
    if fault in ("missing-field", "wrong-type") and order_count < 1:
        raise ValueError(f"fault {fault!r} needs at least one order")
    if fault in ("flip", "flip-always", "wrong-type-last", "duplicates") and order_count <= page_size:
        raise ValueError(f"fault {fault!r} needs a region of at least 2 pages")


def repeat_orders(body: bytes, first_page: bytes, count: int = 10) -> bytes:
    """`body` with the first `count` orders of page 1 appended: the same orders listed twice, as
    a cache refresh mid-walk can make ESI do."""
    return orjson.dumps(orjson.loads(body) + orjson.loads(first_page)[:count])


def corrupt_page(body: bytes, fault: str) -> bytes:
    """The bytes a body fault serves instead of `body` (a valid page)."""
    if fault == "not-json":
        return body[: max(1, len(body) // 2)]  # a truncated transfer: starts right, never ends
    if fault == "not-list":
        return b'{"orders":' + body + b"}"
    orders = orjson.loads(body)
    # The broken order sits mid-page, so a client that checks only the first one misses it.
    victim = orders[len(orders) // 2]
    if fault == "missing-field":
        del victim["price"]
    elif fault in ("wrong-type", "wrong-type-last"):
        victim["type_id"] = str(victim["type_id"])
    else:
        raise ValueError(f"not a body fault: {fault!r}")
    return orjson.dumps(orders)


@dataclass
class Injection:
    kind: str
    remaining: int
    region_id: int | None
    params: Mapping[str, Any] = field(default_factory=dict)


class InjectionQueue:
    """One-shot faults, taken first-in first-out by the requests they match."""

    def __init__(self) -> None:
        self._queue: list[Injection] = []

    def add(self, kind: str, count: int, region_id: int | None, params: Mapping[str, object]) -> None:
        if kind not in INJECT_KINDS:
            raise ValueError(f"unknown fault {kind!r}: expected one of {', '.join(sorted(INJECT_KINDS))}")
        if count < 1:
            raise ValueError("count must be >= 1")
        self._queue.append(Injection(kind, count, region_id, dict(params)))

    def take(self, region_id: int | None) -> Injection | None:
        for i, injection in enumerate(self._queue):
            if injection.region_id is None or injection.region_id == region_id:
                injection.remaining -= 1
                if injection.remaining == 0:
                    del self._queue[i]
                return injection
        return None

    def __len__(self) -> int:
        return len(self._queue)
