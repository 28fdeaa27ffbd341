"""Time as the app sees it: an injected clock, so tests advance time instead of sleeping."""

from __future__ import annotations

import datetime as dt
import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch (wall clock, UTC)."""


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


def from_ms(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


def to_ms(when: dt.datetime) -> int:
    return int(when.timestamp() * 1000)


def iso(when: dt.datetime) -> str:
    """ISO-8601 UTC with milliseconds and a Z, the form every API body and table uses."""
    return when.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
