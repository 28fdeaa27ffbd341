"""The sweep: every region's orders from ESI into the order store, one consistent region at a time.

A region is walked page 1 first (it tells X-Pages), then pages 2..N concurrently. It is stored
only when every page carries page 1's Last-Modified; otherwise ESI's cache moved under the walk
and the region is walked again, a bounded number of times.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import logging
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field

from tornado_admin.clock import Clock, SystemClock, from_ms
from tornado_admin.market.esi import EsiClient, EsiError, EsiResponse, EsiStatusError
from tornado_admin.market.orders import (
    MAX_REGION_WRITERS,
    OrderStore,
    OrderStoreError,
    RegionMeta,
    RegionState,
    RegionWriter,
)
from tornado_admin.market.pages import MalformedPageError

log = logging.getLogger(__name__)

MAX_REGION_ATTEMPTS = 3


class SweepError(Exception):
    """The sweep could not run at all (region list unreachable, database down)."""


class SweepStoppedError(SweepError):
    """The caller withdrew permission to write (its job lease may have lapsed): nothing more is
    committed, and the regions in flight keep their previous orders."""


class RegionFailedError(Exception):
    """One region could not be stored; the others go on."""


class _CacheMovedError(Exception):
    """ESI's cache refreshed while we walked a region: its pages do not belong together."""


@dataclass
class SweepProgress:
    regions_total: int = 0
    regions_done: int = 0
    orders_stored: int = 0  # orders written by this sweep so far (committed regions)

    def to_dict(self) -> dict[str, int]:
        return {
            "regionsTotal": self.regions_total,
            "regionsDone": self.regions_done,
            "ordersStored": self.orders_stored,
        }


@dataclass
class SweepResult:
    fetched: int = 0
    not_modified: int = 0
    failed: list[dict[str, object]] = field(default_factory=list)
    total_orders: int = 0
    orders_written: int = 0
    duration_ms: int = 0

    def to_dict(self) -> dict[str, object]:
        """The job result of DESIGN.md section 4."""
        return {
            "success": True,
            "successCount": self.fetched + self.not_modified,
            "errorCount": len(self.failed),
            "totalOrders": self.total_orders,
            "ordersWritten": self.orders_written,
            "duration": self.duration_ms,
            "regions": {
                "fetched": self.fetched,
                "notModified": self.not_modified,
                "failed": self.failed,
            },
        }


ProgressCallback = Callable[[SweepProgress], None]


@dataclass(frozen=True, slots=True)
class _Outcome:
    held: int  # orders the region holds now
    written: int  # orders written by this sweep
    changed: bool  # ESI sent new content (False: 304s or not yet expired)


async def fetch_all_regions(
    esi: EsiClient,
    orders: OrderStore,
    *,
    region_ids: tuple[int, ...] | None = None,
    concurrency: int = 16,
    clock: Clock | None = None,
    progress: ProgressCallback | None = None,
    may_write: Callable[[], bool] | None = None,
) -> SweepResult:
    """Sweep every region (or `region_ids`) once; raise `SweepError` if the sweep cannot run.

    A region that fails is listed in the result and keeps its previous orders. `progress` is
    called after each region. Cancelling the call aborts the regions in flight, which keep their
    previous orders; committed regions stay committed.
    """
    sweep = _Sweep(esi, orders, concurrency, clock or SystemClock(), progress, may_write)
    return await sweep.run(region_ids)


class _Sweep:
    def __init__(
        self,
        esi: EsiClient,
        orders: OrderStore,
        concurrency: int,
        clock: Clock,
        progress: ProgressCallback | None,
        may_write: Callable[[], bool] | None = None,
    ) -> None:
        self.esi, self.orders, self.clock = esi, orders, clock
        self.may_write = may_write or (lambda: True)
        self.report = progress or (lambda _progress: None)
        self.progress = SweepProgress()
        self.result = SweepResult()
        # Regions staged at once (a PostgreSQL connection each) and pages held in memory at once.
        self.region_slots = asyncio.Semaphore(min(concurrency, MAX_REGION_WRITERS))
        self.page_buffer = asyncio.Semaphore(2 * concurrency)

    async def run(self, region_ids: tuple[int, ...] | None) -> SweepResult:
        started = asyncio.get_running_loop().time()
        try:
            states = await self.orders.region_states()
            ids = list(dict.fromkeys(region_ids or await self._listed_regions()))
            # Biggest regions first (as last seen): their long walks then overlap the small ones.
            ids.sort(key=lambda rid: -len(states[rid].etags) if rid in states else 0)
            self.progress.regions_total = len(ids)
            self.report(self.progress)
            await _all(self._region(rid, states.get(rid)) for rid in ids)
        except OrderStoreError as exc:
            raise SweepError(str(exc)) from None
        self.result.duration_ms = round((asyncio.get_running_loop().time() - started) * 1000)
        return self.result

    async def _listed_regions(self) -> list[int]:
        try:
            return await self.esi.region_ids()
        except EsiError as exc:
            raise SweepError(f"cannot list regions: {exc}") from None

    async def _region(self, region_id: int, state: RegionState | None) -> None:
        async with self.region_slots:
            try:
                outcome = await self._sweep_region(region_id, state)
            except (RegionFailedError, EsiError) as exc:
                log.warning("Region failed", extra={"regionId": region_id, "error": str(exc)})
                self.result.failed.append({"regionId": region_id, "error": str(exc)})
            else:
                self.result.total_orders += outcome.held
                self.result.orders_written += outcome.written
                self.progress.orders_stored += outcome.written
                if outcome.changed:
                    self.result.fetched += 1
                else:
                    self.result.not_modified += 1
        self.progress.regions_done += 1
        self.report(self.progress)

    async def _sweep_region(self, region_id: int, state: RegionState | None) -> _Outcome:
        now = from_ms(self.clock.now_ms())
        if state and state.expires and now < state.expires:
            return _Outcome(state.order_count, 0, False)  # ESI would answer from its cache: skip
        conditional = state if state and state.etags else None
        for attempt in range(1, MAX_REGION_ATTEMPTS + 1):
            try:
                return await self._walk(region_id, conditional)
            except _CacheMovedError as exc:
                log.info(
                    "Region changed during its walk; walking it again",
                    extra={"regionId": region_id, "attempt": attempt, "reason": str(exc)},
                )
                reason = str(exc)
                conditional = None  # "any mix means the cache moved": ask for everything
        raise RegionFailedError(f"pages disagree after {MAX_REGION_ATTEMPTS} walks: {reason}")

    async def _walk(self, region_id: int, state: RegionState | None) -> _Outcome:
        async with self.page_buffer:
            first = await self._page(region_id, 1, state.etags[0] if state else None)
            if first.status == 200:
                writer = await self.orders.begin_region(region_id)
                try:
                    await self._stage(writer, region_id, 1, first)
                except BaseException:
                    await writer.abort()
                    raise
        if first.status == 304:
            if state is None:  # a 304 to a request without conditions: a confused cache
                raise _CacheMovedError("304 to an unconditional request")
            return await self._revalidate(region_id, state, first)
        try:
            etags = await self._rest(region_id, first, writer)
            meta = RegionMeta(
                last_modified=_http_date(first.last_modified),
                expires=self._expires(first),
                fetched_at=from_ms(self.clock.now_ms()),
                etags=etags,
            )
            self._check_may_write()  # early; commit asks again once it holds the write lock
            count = await writer.commit(meta, self.may_write)
        except BaseException:
            await writer.abort()
            raise
        return _Outcome(count, count, True)

    async def _rest(self, region_id: int, first: EsiResponse, writer: RegionWriter) -> tuple[str, ...]:
        """Fetch and stage pages 2..N; their ETags, page 1's first."""
        pages = first.pages or 1
        etags = [first.etag or ""] * pages

        async def one(page: int) -> None:
            async with self.page_buffer:
                response = await self._page(region_id, page, None)
                _check_same_walk(first, response, page)
                await self._stage(writer, region_id, page, response)
                etags[page - 1] = response.etag or ""

        await _all(one(page) for page in range(2, pages + 1))
        return tuple(etags)

    async def _revalidate(
        self, region_id: int, state: RegionState, first: EsiResponse
    ) -> _Outcome:
        """Page 1 answered 304: the region is unchanged only if every other page does too."""
        pages = first.pages or len(state.etags)  # some 304s come without X-Pages
        if pages != len(state.etags):
            raise _CacheMovedError(f"X-Pages went from {len(state.etags)} to {pages}")

        async def one(page: int) -> None:
            async with self.page_buffer:
                response = await self._page(region_id, page, state.etags[page - 1])
            if response.status != 304 or (response.pages or pages) != pages:
                raise _CacheMovedError(f"page {page} changed while page 1 did not")

        await _all(one(page) for page in range(2, pages + 1))
        self._check_may_write()
        count = await self.orders.confirm_unchanged(
            region_id, self._expires(first), from_ms(self.clock.now_ms()), self.may_write
        )
        return _Outcome(count, 0, False)

    async def _page(self, region_id: int, page: int, etag: str | None) -> EsiResponse:
        try:
            return await self.esi.orders_page(region_id, page, etag)
        except EsiStatusError as exc:
            if exc.status == 404 and page > 1:  # X-Pages shrank: the cache moved
                raise _CacheMovedError(f"page {page} no longer exists") from None
            raise RegionFailedError(f"page {page}: {exc}") from None

    async def _stage(
        self, writer: RegionWriter, region_id: int, page: int, response: EsiResponse
    ) -> None:
        try:
            await writer.add_page(response.body)
        except MalformedPageError as exc:
            raise RegionFailedError(f"page {page} is malformed: {exc}") from None
        except (ValueError, OverflowError, TypeError) as exc:
            # A value that passed validation but that the database cannot hold: this region's
            # problem, not the sweep's.
            raise RegionFailedError(f"page {page} could not be stored: {exc}") from None

    def _check_may_write(self) -> None:
        if not self.may_write():
            raise SweepStoppedError("the job's lease may have lapsed: stopped before writing")

    def _expires(self, response: EsiResponse) -> dt.datetime | None:
        if response.expires_in_seconds is None:
            return None
        return from_ms(self.clock.now_ms() + round(response.expires_in_seconds * 1000))


async def _all(coroutines: Iterable[Coroutine[object, object, None]]) -> None:
    """Run concurrently; on the first failure cancel the rest and raise that failure itself,
    a database failure first since it ends the whole sweep.

    Not a TaskGroup: on Python 3.11 a TaskGroup whose child fails leaves its parent task marked
    as being cancelled, which breaks later cancellation checks and timeouts.
    """
    tasks = [asyncio.ensure_future(coroutine) for coroutine in coroutines]
    if not tasks:
        return
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:  # on our own cancellation too: no child outlives this call
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
    errors = [t.exception() for t in tasks if not t.cancelled() and t.exception() is not None]
    if errors:
        raise next((e for e in errors if isinstance(e, OrderStoreError)), errors[0])


def _check_same_walk(first: EsiResponse, response: EsiResponse, page: int) -> None:
    if response.status != 200:
        raise _CacheMovedError(f"page {page} answered {response.status}")
    if response.last_modified != first.last_modified:
        raise _CacheMovedError(
            f"page {page} Last-Modified {response.last_modified} differs from page 1's"
            f" {first.last_modified}"
        )
    if response.pages != first.pages:
        raise _CacheMovedError(
            f"page {page} says X-Pages {response.pages}, page 1 said {first.pages}"
        )


def _http_date(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
        # In UTC, as stored: a header date that leaves the calendar once in UTC (31 Dec 9999 at
        # -2359) or never was in it (year 99999999999) is no date, not a failed sweep.
        return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
    except (TypeError, ValueError, OverflowError):
        return None
