"""The `JobStore` contract: job state shared by every process and instance that runs the jobs.

Every implementation (memory, SQLite, Redis) honours these docstrings; they are the contract, and
the implementations do not repeat them. `open_store(url)` picks one by URL scheme.

Vocabulary:
- A *job name* is a kind of work ("fetch-market-data"); a *job* is one run of it, with an id.
- A running job holds a *lease* until `expires_ms`. The lease is live while `now_ms < expires_ms`
  and lapsed from `expires_ms` on. The runner renews it every third of its length; a job whose
  lease lapsed (its process died or froze) is *abandoned*: it is recorded `failed` with error
  "abandoned" and no longer blocks a new run.
- Time is the injected clock's `now_ms()` (epoch milliseconds), computed by the caller's process
  and stored as data, so one fake clock drives every backend in tests. In production that is
  `SystemClock`, which absorbs wall-clock steps; instances sharing a store must keep their clocks
  in sync (NTP) to well within a lease. Key expiry (Redis) may
  collect garbage but is never the lease clock.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")
_clock_log = logging.getLogger("backends.clock")
ABANDONED = "abandoned"
# Job ids are secrets.token_urlsafe(16): 22 characters of this alphabet. An id of any other shape
# cannot exist, so callers may answer "not found" without asking the store.
JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{22}")
SCHEMES = {
    "memory": ("backends.memory", "MemoryJobStore"),
    "sqlite": ("backends.sqlite", "SqliteJobStore"),
    "redis": ("backends.redis", "RedisJobStore"),
    "rediss": ("backends.redis", "RedisJobStore"),
}


class Clock(Protocol):
    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch."""


class SystemClock:
    """The wall clock, minus its steps: leases and schedule periods are wall-clock times, so a
    step (an operator's `date -s`, NTP correcting a bad boot clock) would otherwise expire every
    healthy lease at once (forward) or stall the schedule and hide dead runs (backward).

    Time advances with the monotonic clock, which no step moves, and is slewed towards the wall
    clock at a bounded rate: at most 1.25 times as fast while catching up a forward step, at least
    0.8 times as fast while absorbing a backward one (a day's step takes four to five days to absorb,
    a restart adopts it at once). A lease renewed every third of its length therefore never lapses, the
    runner's local deadline allows for the faster rate (`MAX_RATE`), and the schedule never fires
    more than one run per tick. Ordinary NTP slewing (at most 0.05 %) is followed exactly. Steps
    are logged once each.
    """

    # Rates as integer divisors, to keep this cheap: it runs several times per request.
    CATCH_UP_DIVISOR = 4  # while behind the wall: 1/4 ms extra per elapsed ms (1.25 times as fast)
    HOLD_BACK_DIVISOR = 5  # while ahead of it: 1/5 ms held back per elapsed ms (0.8 times as fast)
    MAX_RATE = 1 + 1 / CATCH_UP_DIVISOR  # the fastest it runs, against the monotonic clock
    STEP_NS = 1_000_000_000  # a gap this large is reported as a step

    def __init__(
        self,
        wall_ns: Callable[[], int] = time.time_ns,
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._wall_ns, self._monotonic_ns = wall_ns, monotonic_ns
        self._last_mono = monotonic_ns()
        self._last_ns = wall_ns()
        self._stepped = False

    def now_ms(self) -> int:
        return self.now_ns() // 1_000_000

    def now_ns(self) -> int:
        # Called from the event loop's thread (no lock: it runs several times per request).
        mono = self._monotonic_ns()
        wall = self._wall_ns()
        elapsed = mono - self._last_mono
        predicted = self._last_ns + elapsed
        gap = wall - predicted
        if -(elapsed // self.HOLD_BACK_DIVISOR) <= gap <= elapsed // self.CATCH_UP_DIVISOR:
            now = wall  # within the slew allowed: the usual case
        elif gap > 0:
            now = predicted + elapsed // self.CATCH_UP_DIVISOR
        else:
            now = predicted - elapsed // self.HOLD_BACK_DIVISOR
        self._last_mono, self._last_ns = mono, now
        if self._stepped or now != wall:
            self._note(wall - now)
        return now

    def offset_seconds(self) -> float:
        """How far the wall clock is ahead of this clock (negative: behind); 0 but for a step
        still being absorbed."""
        now = self.now_ns()
        return (self._wall_ns() - now) / 1e9

    def _note(self, gap: int) -> None:
        stepped = abs(gap) >= self.STEP_NS
        if stepped and not self._stepped:
            _clock_log.warning(
                "Wall clock stepped: job times follow a steady clock catching up with it",
                extra={"stepSeconds": round(gap / 1e9, 3)},
            )
        elif self._stepped and not stepped:
            _clock_log.info("Job times have caught up with the wall clock")
        self._stepped = stepped


class JobStatus(enum.StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class Trigger(enum.StrEnum):
    MANUAL = "manual"
    SCHEDULE = "schedule"
    CRON = "cron"


@dataclass(frozen=True, slots=True)
class Job:
    """One run of a job, as stored. Finished jobs never change."""

    job_id: str
    job_name: str
    trigger: Trigger
    status: JobStatus
    started_ms: int
    completed_ms: int | None = None
    lease_expires_ms: int | None = None  # set while running
    progress: Mapping[str, Any] | None = None
    result: Mapping[str, Any] | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Lease:
    """Proof of owning a running job: only the holder of `token` may renew or finish it."""

    job_id: str
    job_name: str
    token: str
    expires_ms: int


@dataclass(frozen=True, slots=True)
class Started:
    lease: Lease
    job: Job


@dataclass(frozen=True, slots=True)
class AlreadyRunning:
    job: Job  # the live running job of that name


@dataclass(frozen=True, slots=True)
class PeriodClaimed:
    period: int  # a scheduled run of this period was already started (by any instance)


StartOutcome = Started | AlreadyRunning | PeriodClaimed


class JobStoreError(Exception):
    """Root of the store's errors."""


class StoreUnavailableError(JobStoreError):
    """The store cannot be reached or is locked past its timeout. Nothing was changed; the
    caller may retry later (the API answers 503 with Retry-After)."""


class LeaseLostError(JobStoreError):
    """The lease is no longer the caller's: it lapsed and the job was recorded abandoned (maybe
    a newer run started since), or the job was finished. The caller must stop the work."""


class JobNotFoundError(JobStoreError):
    """No job with that id: never issued, or dropped from the capped history."""


class JobStore(ABC):
    """Job state. Every state change is one atomic step across coroutines, processes and
    instances sharing the store: memory has no `await` between its read and its write, SQLite
    uses one transaction (`BEGIN IMMEDIATE`), Redis one Lua script."""

    def __init__(self, clock: Clock, history_limit: int) -> None:
        self.clock = clock
        self.history_limit = history_limit

    @abstractmethod
    async def start(
        self, job_name: str, trigger: Trigger, *, lease_ms: int, period: int | None = None
    ) -> StartOutcome:
        """Record a new running job of `job_name` and return its lease, unless one is running.

        Atomically:
        1. A running job of that name whose lease has lapsed is recorded `failed` ("abandoned"),
           `completed_ms` = its lease expiry.
        2. If a running job of that name remains (its lease is live), return `AlreadyRunning`
           with it; nothing is written.
        3. If `period` is given (scheduled runs: `now // interval`) and a run was already started
           for that period or a later one, return `PeriodClaimed`; nothing is written.
           Otherwise the period is claimed with the start.
        4. Otherwise record the job `running`, with a new random id (`JOB_ID_PATTERN`), a lease of
           `lease_ms` from now, and return `Started`.
        Exactly one of any number of concurrent starts of one name wins. Finished jobs beyond
        `history_limit` per name are dropped, oldest first.
        Raises `StoreUnavailableError`.
        """

    @abstractmethod
    async def renew(
        self, lease: Lease, *, lease_ms: int, progress: Mapping[str, Any] | None = None
    ) -> Lease:
        """Extend a live lease to `lease_ms` from now and store `progress` if given; return the
        new lease. Raises `LeaseLostError` if the lease lapsed (even if nobody noticed yet: the
        job is then recorded abandoned) or the job is no longer running. Raises
        `StoreUnavailableError`."""

    @abstractmethod
    async def finish(
        self,
        lease: Lease,
        *,
        status: JobStatus,
        result: Mapping[str, Any] | None = None,
        error: str | None = None,
    ) -> Job:
        """Record the job `completed` (with `result`) or `failed` (with `error`), now; return it.
        Only for a live lease: a lapsed one raises `LeaseLostError` and the job is recorded
        abandoned instead. Raises `StoreUnavailableError`."""

    @abstractmethod
    async def get(self, job_id: str) -> Job:
        """The job with that id, from the running job or the history. A running job whose lease
        lapsed is reported (and recorded) `failed` "abandoned". Raises `JobNotFoundError`,
        `StoreUnavailableError`."""

    @abstractmethod
    async def list(self, job_name: str | None = None, *, limit: int = 20) -> list[Job]:
        """Recent jobs (of one name, or all), newest start first, at most `limit`. Lapsed
        running jobs are reported abandoned as in `get`. Raises `StoreUnavailableError`."""

    @abstractmethod
    async def current(self, job_name: str) -> Job | None:
        """The running job of that name with a live lease, or None (a lapsed one is recorded
        abandoned). Raises `StoreUnavailableError`."""

    @abstractmethod
    async def last_success(self, job_name: str) -> Job | None:
        """The most recently completed job of that name, kept even when the history no longer
        holds it; None if there never was one. Raises `StoreUnavailableError`."""

    # -- the API's failed-authentication throttle: state every instance must share, so it lives
    # here too. Counted in fixed windows (`now // window_ms`), kept as data like the leases.

    @abstractmethod
    async def note_auth_failure(self, client: str, *, window_ms: int) -> int:
        """Count one failed authentication of `client` (an address) in the current window and
        return the window's count so far. Atomic: N concurrent calls count N. Old windows may be
        forgotten. Raises `StoreUnavailableError`."""

    @abstractmethod
    async def auth_failures(self, client: str, *, window_ms: int) -> tuple[int, int]:
        """(failed authentications of `client` in the current window, milliseconds until that
        window ends). Raises `StoreUnavailableError`."""

    @abstractmethod
    async def ping(self) -> None:
        """Return if the store answers; raise `StoreUnavailableError` otherwise."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections. The store is not used afterwards."""


class SingleFlight:
    """Concurrent identical reads share one call to the store: 32 clients polling one job cost
    one query at a time, not 32. A joiner sees a read that began at most one round trip before
    it arrived. Errors reach every waiter; a cancelled waiter does not cancel the shared call."""

    def __init__(self) -> None:
        self._calls: dict[Hashable, asyncio.Future[Any]] = {}

    async def run(self, key: Hashable, call: Callable[[], Awaitable[T]]) -> T:
        future = self._calls.get(key)
        if future is None:
            future = asyncio.ensure_future(call())
            self._calls[key] = future
            future.add_done_callback(lambda done: self._forget(key, done))
        return await asyncio.shield(future)

    def _forget(self, key: Hashable, done: asyncio.Future[Any]) -> None:
        if self._calls.get(key) is done:
            del self._calls[key]
        if not done.cancelled():
            done.exception()  # retrieved here, so a call nobody awaits any more is not reported


def new_job_id() -> str:
    return secrets.token_urlsafe(16)


def new_lease_token() -> str:
    return secrets.token_hex(16)


def is_job_id(value: str) -> bool:
    return JOB_ID_PATTERN.fullmatch(value) is not None


class UnsupportedStoreError(JobStoreError, ValueError):
    """The URL names no store this code has."""


async def open_store(
    url: str, *, clock: Clock | None = None, history_limit: int = 100
) -> JobStore:
    """Open the store the URL's scheme names (importing only that one), ready to use.

    `memory://`, `sqlite:///relative.db`, `sqlite:////absolute.db`, `redis://[:password@]host:port/db`,
    `rediss://…`. Raises `UnsupportedStoreError` listing the schemes for any other URL, and
    `StoreUnavailableError` when the store cannot be reached.
    """
    try:
        scheme = urlsplit(url).scheme
    except ValueError:
        scheme = ""
    if scheme not in SCHEMES:
        supported = ", ".join(f"{s}://" for s in SCHEMES)
        raise UnsupportedStoreError(f"unsupported job store URL scheme {scheme!r}: use {supported}")
    module_name, class_name = SCHEMES[scheme]
    module = __import__(module_name, fromlist=[class_name])
    store_class = getattr(module, class_name)
    return await store_class.open(url, clock=clock or SystemClock(), history_limit=history_limit)
