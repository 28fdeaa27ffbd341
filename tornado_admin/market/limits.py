"""ESI's two limits and our retry policy: one gate that pauses every request, and bounded backoff.

ESI bans clients that ignore its limits, so a pause applies to the whole client, not to the one
request that saw the 420 or 429 (FACTS.md: "peers stop all requests until reset").
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Pause before ESI's error budget runs out: requests already in flight may still fail and spend it.
ERROR_LIMIT_FLOOR = 10
# Margin after the advertised reset, as peers use: the window edge is not exact.
RESET_MARGIN_SECONDS = 1.0
DEFAULT_ERROR_LIMIT_PAUSE_SECONDS = 60.0
DEFAULT_RETRY_AFTER_SECONDS = 10.0
MAX_PAUSE_SECONDS = 900.0  # the bucket window: nothing ESI says should stop us longer


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry 5xx, timeouts and connection errors."""

    attempts: int = 4  # tries in all, the first included
    base_delay_seconds: float = 0.5
    max_delay_seconds: float = 8.0
    limit_waits: int = 5  # 420/429 pauses one request may sit through before it fails

    def delay(self, failures: int) -> float:
        """Exponential backoff with 'equal jitter': never zero, never in lockstep with peers."""
        cap = min(self.max_delay_seconds, self.base_delay_seconds * 2 ** (failures - 1))
        return cap / 2 + random.uniform(0, cap / 2)


class LimitGate:
    """Holds every request while a limit pause lasts; fed the status and headers of each response."""

    def __init__(self, time: Callable[[], float] | None = None) -> None:
        self._time = time or (lambda: asyncio.get_running_loop().time())
        self._paused_until = 0.0
        self.error_limit_remain: int | None = None
        self.rate_limit_remaining: int | None = None
        self.error_limit_pauses = 0
        self.rate_limit_pauses = 0

    @property
    def paused_for(self) -> float:
        return max(0.0, self._paused_until - self._time())

    async def wait(self) -> None:
        # A deadline that later responses may push back, so a loop rather than one Event.
        while (delay := self._paused_until - self._time()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(delay)

    def observe(self, status: int, headers: Mapping[str, str]) -> None:
        remain = _int_header(headers, "X-ESI-Error-Limit-Remain")
        reset = _int_header(headers, "X-ESI-Error-Limit-Reset")
        self.error_limit_remain = remain if remain is not None else self.error_limit_remain
        bucket = _int_header(headers, "X-Ratelimit-Remaining")
        self.rate_limit_remaining = bucket if bucket is not None else self.rate_limit_remaining
        if status == 420 or (remain is not None and remain <= ERROR_LIMIT_FLOOR):
            seconds = reset + RESET_MARGIN_SECONDS if reset is not None else (
                DEFAULT_ERROR_LIMIT_PAUSE_SECONDS
            )
            if self._pause(seconds):
                self.error_limit_pauses += 1
                log.warning(
                    "ESI error limit reached: pausing all requests",
                    extra={"status": status, "errorLimitRemain": remain, "pauseSeconds": seconds},
                )
        if status == 429:
            seconds = retry_after_seconds(headers.get("Retry-After"))
            if self._pause(seconds):
                self.rate_limit_pauses += 1
                log.warning(
                    "ESI rate limit reached: pausing all requests",
                    extra={"group": headers.get("X-Ratelimit-Group"), "pauseSeconds": seconds},
                )

    def _pause(self, seconds: float) -> bool:
        """Extend the pause; False when one already covers it (so it is counted and logged once)."""
        until = self._time() + min(max(seconds, 0.0), MAX_PAUSE_SECONDS)
        if until <= self._paused_until:
            return False
        started = self._paused_until <= self._time()
        self._paused_until = until
        return started


def retry_after_seconds(value: str | None) -> float:
    """`Retry-After` as seconds: delta-seconds or an HTTP date; a default when absent or odd."""
    if not value:
        return DEFAULT_RETRY_AFTER_SECONDS
    try:
        return min(max(0.0, float(value)), MAX_PAUSE_SECONDS)  # nan and inf end up in range too
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: a year past any integer
        return DEFAULT_RETRY_AFTER_SECONDS
    if when.tzinfo is None:  # "-0000" dates parse naive; HTTP dates are UTC
        when = when.replace(tzinfo=dt.UTC)
    return min(MAX_PAUSE_SECONDS, max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds()))


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    """A small non-negative integer header; None when absent or not one (never raises)."""
    return count_value(headers.get(name))


def count_value(value: str | None) -> int | None:
    """A header's small non-negative integer (at most 9 ASCII digits); None when absent or not
    one. Never raises: a hostile header must not end the sweep."""
    value = (value or "").strip()
    # isascii: "²" is a digit to isdigit() but not to int().
    if not (value.isascii() and value.isdigit()) or len(value) > 9:
        return None
    return int(value)
