"""ESI's two limits: the legacy error limit (fixed window, then 420) and the token bucket (429).

Both take `now` (time.monotonic seconds) as an argument, so they are plain state machines.
"""

from __future__ import annotations

import math
from collections import deque

MARKET_GROUP = "market-order"
MARKET_BUCKET_TOKENS = 12_000
MARKET_BUCKET_WINDOW_SECONDS = 15 * 60


def _ceil_seconds(seconds: float) -> int:
    # Rounded up: a client that waits the advertised seconds must find the limit lifted.
    return max(0, math.ceil(seconds - 1e-9))


class ErrorLimiter:
    """Counts 4xx/5xx answers in a fixed window; at `limit` errors every request gets 420 until
    the window ends. A window starts with the first request after the previous one ended."""

    def __init__(self, limit: int, window_seconds: float, now: float) -> None:
        if limit < 1 or window_seconds <= 0:
            raise ValueError("error_limit must be >= 1 and error_window_seconds > 0")
        self._limit = limit
        self._window_seconds = window_seconds
        self._errors = 0
        self._window_end = now + window_seconds

    def _roll(self, now: float) -> None:
        if now >= self._window_end:
            self._errors = 0
            self._window_end = now + self._window_seconds

    def blocked(self, now: float) -> bool:
        self._roll(now)
        return self._errors >= self._limit

    def record(self, status: int, now: float) -> None:
        self._roll(now)
        if status >= 400 and self._errors < self._limit:
            self._errors += 1

    def block(self, reset_seconds: float, now: float) -> None:
        """Enter the error-limited state now, for `reset_seconds` (an injected 420)."""
        self._errors = self._limit
        self._window_end = now + reset_seconds

    def headers(self, now: float) -> dict[str, str]:
        self._roll(now)
        return {
            "X-ESI-Error-Limit-Remain": str(self._limit - self._errors),
            "X-ESI-Error-Limit-Reset": str(_ceil_seconds(self._window_end - now)),
        }


class TokenBucket:
    """A floating-window token bucket: each answer costs tokens by status class; while the tokens
    spent in the last `window_seconds` reach `max_tokens`, requests get 429."""

    def __init__(
        self,
        max_tokens: int = MARKET_BUCKET_TOKENS,
        window_seconds: float = MARKET_BUCKET_WINDOW_SECONDS,
        group: str = MARKET_GROUP,
    ) -> None:
        if max_tokens < 1 or window_seconds <= 0:
            raise ValueError("max_tokens must be >= 1 and window_seconds > 0")
        self.max_tokens = max_tokens
        self.window_seconds = window_seconds
        self.group = group
        self._spent: deque[tuple[float, int]] = deque()
        self._used = 0

    @staticmethod
    def cost(status: int) -> int:
        if status == 429 or status >= 500:
            return 0
        if status >= 400:
            return 5
        if status >= 300:
            return 1
        return 2

    def _expire(self, now: float) -> None:
        horizon = now - self.window_seconds
        while self._spent and self._spent[0][0] <= horizon:
            self._used -= self._spent.popleft()[1]

    def exhausted(self, now: float) -> bool:
        self._expire(now)
        return self._used >= self.max_tokens

    def charge(self, status: int, now: float) -> None:
        cost = self.cost(status)
        if cost:
            self._spent.append((now, cost))
            self._used += cost

    def retry_after(self, now: float) -> int:
        """Seconds until enough tokens leave the window for a request to pass (at least 1)."""
        self._expire(now)
        used = self._used
        for spent_at, cost in self._spent:
            used -= cost
            if used < self.max_tokens:
                return max(1, _ceil_seconds(spent_at + self.window_seconds - now))
        return 1

    def limit_label(self) -> str:
        w = self.window_seconds
        return f"{self.max_tokens}/{int(w // 60)}m" if w % 60 == 0 else f"{self.max_tokens}/{w:g}s"

    def headers(self, now: float) -> dict[str, str]:
        self._expire(now)
        return {
            "X-Ratelimit-Group": self.group,
            "X-Ratelimit-Limit": self.limit_label(),
            "X-Ratelimit-Remaining": str(max(0, self.max_tokens - self._used)),
            "X-Ratelimit-Used": str(self._used),
        }
