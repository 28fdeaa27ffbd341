"""Time as the app sees it: an injected clock for stored times and a timer for local waits, so
tests advance time instead of sleeping."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
from typing import Protocol

from backends.base import Clock, SystemClock

__all__ = ["Clock", "LoopTimer", "SystemClock", "Timer", "from_ms", "iso", "iso_ms"]


class Timer(Protocol):
    """Local deadlines and waits (monotonic; never stored)."""

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class LoopTimer:
    """The event loop's monotonic clock."""

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def from_ms(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


@functools.lru_cache(maxsize=1024)
def iso_ms(ms: int) -> str:
    """`iso` of epoch milliseconds, cached: a job's times are formatted on every status poll."""
    return iso(from_ms(ms))


def iso(when: dt.datetime) -> str:
    """ISO-8601 UTC with milliseconds and a Z, the form every API body and table uses."""
    return when.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
