"""The job runner: one path for manual, scheduled and cron runs.

start (atomic, in the store) -> the work in a referenced background task -> lease renewed every
third of its length, carrying progress -> finish completed or failed. The work is cancelled at
the maximum duration ("timed out"), when the lease is lost, and at shutdown ("interrupted by
shutdown").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from backends.base import (
    JobStatus,
    JobStore,
    Lease,
    LeaseLostError,
    Started,
    StartOutcome,
    StoreUnavailableError,
    SystemClock,
    Trigger,
)
from tornado_admin.clock import LoopTimer, Timer
from tornado_admin.logs import job_fields

log = logging.getLogger("tornado_admin.jobs")

FETCH_JOB = "fetch-market-data"
TIMED_OUT = "timed out"
INTERRUPTED = "interrupted by shutdown"
# The names operators grep for (DESIGN.md section 8): "Manual job completed successfully", ...
_KIND = {Trigger.MANUAL: "Manual", Trigger.SCHEDULE: "Scheduled", Trigger.CRON: "Cron"}

ProgressReport = Callable[[Mapping[str, Any]], None]


@dataclass
class RunContext:
    """What the work is handed: where to report progress, and whether it may still write."""

    report: ProgressReport
    holds_lease: Callable[[], bool]  # False once the lease may have lapsed: write nothing more


Work = Callable[[RunContext], Awaitable[Mapping[str, Any]]]


class RunListener(Protocol):
    """Told when a run of this process starts and ends (tornado_admin.metrics counts them)."""

    def run_started(self, trigger: Trigger) -> None: ...

    def run_finished(self, trigger: Trigger, status: JobStatus, result: Mapping[str, Any] | None,
                     seconds: float, progress: Mapping[str, Any]) -> None: ...


class JobFailedError(Exception):
    """The work could not run; its message becomes the job's `error`."""


class ShuttingDownError(StoreUnavailableError):
    """The server is stopping: no new run starts (the API answers 503)."""


@dataclass
class _Run:
    lease: Lease
    trigger: Trigger
    task: asyncio.Task | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    lease_deadline: float = 0.0  # local monotonic time the lease surely lasts until
    started: float = 0.0  # local monotonic time
    ended: tuple[JobStatus, Mapping[str, Any] | None] = (JobStatus.FAILED, None)  # as _finish saw it


class JobRunner:
    """Runs one job name's work under the store's lease; every run is tracked until it ends."""

    def __init__(
        self,
        store: JobStore,
        work: Work,
        *,
        lease_seconds: float,
        max_duration_seconds: float,
        job_name: str = FETCH_JOB,
        timer: Timer | None = None,
        listener: RunListener | None = None,
    ) -> None:
        self.store = store
        self.job_name = job_name
        self._work = work
        self._lease_seconds = lease_seconds
        # How long the lease surely lasts by the local monotonic clock: the store's clock may run
        # up to MAX_RATE times as fast while it catches up a wall-clock step (SystemClock).
        self._local_lease = lease_seconds / SystemClock.MAX_RATE
        self._max_duration_seconds = max_duration_seconds
        self._timer = timer or LoopTimer()
        self.listener = listener
        self._runs: dict[str, _Run] = {}
        self._closing = False
        self._starting = 0  # starts waiting for the store
        self._started_all = asyncio.Event()

    @property
    def lease_ms(self) -> int:
        return round(self._lease_seconds * 1000)

    async def start(self, trigger: Trigger, *, period: int | None = None) -> StartOutcome:
        """Start a run unless one is running anywhere on the store; never waits for the work.
        Raises `StoreUnavailableError` (`ShuttingDownError` once shutdown has begun)."""
        if self._closing:
            raise ShuttingDownError("the server is shutting down")
        # Counted, so shutdown waits for a start already at the store instead of missing the run
        # it creates. Callers do not cancel a start (Tornado never cancels a handler, the
        # scheduler waits for its ticks): a start cancelled at the store could leave a running
        # job nobody supervises until its lease lapsed.
        self._starting += 1
        # The store dates the lease from its clock reading at the start of the call, before any
        # wait (a lock, a pool, a frozen process): the local deadline counts from here too.
        asked = self._timer.monotonic()
        try:
            outcome = await self.store.start(
                self.job_name, trigger, lease_ms=self.lease_ms, period=period
            )
        finally:
            self._starting -= 1
            if self._starting == 0:
                self._started_all.set()
        if isinstance(outcome, Started):
            trigger = Trigger(trigger)
            run = _Run(outcome.lease, trigger, lease_deadline=asked + self._local_lease,
                       started=self._timer.monotonic())
            self._runs[outcome.lease.job_id] = run
            run.task = asyncio.create_task(self._supervise(run), name=f"job-{outcome.lease.job_id}")
            log.info("Job started", extra=self._fields(run))
            if self.listener:
                self.listener.run_started(trigger)
        return outcome

    def live_progress(self, job_id: str) -> Mapping[str, Any] | None:
        """Progress of a run in this process, fresher than the store's copy (renewed every
        lease/3)."""
        run = self._runs.get(job_id)
        return dict(run.progress) if run and run.progress else None

    @property
    def active(self) -> list[str]:
        return list(self._runs)

    async def wait_idle(self) -> None:
        """Wait for every run of this process to end (tests, shutdown)."""
        tasks = [run.task for run in self._runs.values() if run.task]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def shutdown(self, timeout_seconds: float = 5.0) -> None:
        """Refuse new starts, let those already at the store land, then cancel every run; each
        records itself failed "interrupted by shutdown"."""
        self._closing = True
        if self._starting:
            self._started_all.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._started_all.wait(), timeout_seconds)
        tasks = [run.task for run in self._runs.values() if run.task and not run.task.done()]
        for task in tasks:
            task.cancel(INTERRUPTED)
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_seconds)

    # -- one run ---------------------------------------------------------------------------------

    def _fields(self, run: _Run) -> dict[str, Any]:
        return {"jobId": run.lease.job_id, "jobName": self.job_name, "trigger": run.trigger.value}

    def _holds_lease(self, run: _Run) -> bool:
        # A margin for the COMMIT that follows the order store's last check, inside the region's
        # transaction (tornado_admin/market/orders.py): milliseconds, even for a large region.
        margin = min(2.0, self._lease_seconds / 10)
        return self._timer.monotonic() < run.lease_deadline - margin

    async def _supervise(self, run: _Run) -> None:
        job_fields.set(self._fields(run))  # this task's context, copied into the work's task
        context = RunContext(run.progress.update, lambda: self._holds_lease(run))
        work = asyncio.create_task(self._work(context), name=f"work-{run.lease.job_id}")
        try:
            outcome = await self._watch(run, work)
            if outcome is not None:
                await self._finish(run, *outcome)
        except asyncio.CancelledError:
            await _cancel(work)
            await asyncio.shield(self._finish(run, JobStatus.FAILED, None, INTERRUPTED))
            raise
        except Exception:
            # Never leave the work running with nobody renewing its lease: another run would
            # start once the lease lapsed, and both would write.
            log.exception("Job supervision failed: stopping its work", extra=self._fields(run))
            await _cancel(work)
            await self._finish(run, JobStatus.FAILED, None, "internal error (supervision)")
        finally:
            self._runs.pop(run.lease.job_id, None)
            if self.listener:  # a lost lease or an unrecorded end leaves `ended` at its default: failed
                self.listener.run_finished(run.trigger, *run.ended, self._timer.monotonic() - run.started,
                                           run.progress)

    async def _watch(
        self, run: _Run, work: asyncio.Task
    ) -> tuple[JobStatus, Mapping[str, Any] | None, str | None] | None:
        """Renew the lease until the work ends; None when the lease was lost (nothing to record)."""
        deadline = self._timer.monotonic() + self._max_duration_seconds
        interval = self._lease_seconds / 3  # three tries within the local lease (lease / 1.25)
        while not work.done():
            now = self._timer.monotonic()
            wake = min(now + interval, deadline, run.lease_deadline)
            await _first(work, self._timer.sleep(max(0.0, wake - now)))
            if work.done():
                break
            now = self._timer.monotonic()
            if now >= deadline:
                await _cancel(work)
                return JobStatus.FAILED, None, TIMED_OUT
            if now >= run.lease_deadline:
                # No renewal got through for a whole lease (store unreachable, process frozen):
                # another instance may own the job by now.
                log.error("Job lease lapsed before it could be renewed: stopping the work",
                          extra=self._fields(run))
                await _cancel(work)
                return None
            try:
                # Bounded by the lease itself, so a hanging store cannot outlast it.
                run.lease = await asyncio.wait_for(
                    self.store.renew(run.lease, lease_ms=self.lease_ms, progress=run.progress or None),
                    timeout=max(0.001, run.lease_deadline - now),
                )
                run.lease_deadline = now + self._local_lease
            except LeaseLostError as exc:
                log.error("Job lease lost: stopping its work", extra={**self._fields(run), "error": str(exc)})
                await _cancel(work)
                return None
            except (StoreUnavailableError, TimeoutError) as exc:
                log.warning("Job lease renewal failed; retrying",
                            extra={**self._fields(run), "error": str(exc) or "timed out"})
        return _result_of(work)

    async def _finish(
        self, run: _Run, status: JobStatus, result: Mapping[str, Any] | None, error: str | None
    ) -> None:
        fields = self._fields(run)
        kind = _KIND[run.trigger]
        if run.progress:  # one last heartbeat, so the finished job keeps its final progress
            try:
                run.lease = await self.store.renew(run.lease, lease_ms=self.lease_ms, progress=run.progress)
            except LeaseLostError as exc:
                log.error("Job lease lost before it finished", extra={**fields, "error": str(exc)})
                return
            except Exception:  # best effort: finish below records the outcome, or says why not
                pass
        try:
            await self.store.finish(run.lease, status=status, result=result, error=error)
        except LeaseLostError as exc:
            log.error("Job lease lost before it finished", extra={**fields, "error": str(exc)})
            return
        except Exception as exc:
            # Store down (or worse): the lease will lapse and readers will see the run
            # abandoned, still a clear end.
            log.error("Job result could not be recorded", extra={**fields, "error": str(exc)})
            return
        run.ended = (status, result)  # only what the store recorded: otherwise it stays failed
        if status is JobStatus.COMPLETED:
            log.info("%s job completed successfully", kind, extra={**fields, "result": result})
        else:
            log.error("%s job failed", kind, extra={**fields, "error": error})


def _result_of(work: asyncio.Task) -> tuple[JobStatus, Mapping[str, Any] | None, str | None]:
    if work.cancelled():
        return JobStatus.FAILED, None, "cancelled"
    exc = work.exception()
    if exc is None:
        return JobStatus.COMPLETED, work.result(), None
    if isinstance(exc, JobFailedError):
        return JobStatus.FAILED, None, str(exc)
    log.error("Job crashed", exc_info=exc)
    return JobStatus.FAILED, None, f"internal error ({type(exc).__name__})"


async def _first(task: asyncio.Task, sleep: Awaitable[None]) -> None:
    """Wait for the task to end or the sleep to elapse, whichever comes first."""
    sleeper = asyncio.ensure_future(sleep)
    try:
        await asyncio.wait({task, sleeper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()


async def _cancel(task: asyncio.Task) -> None:
    """Cancel the task and wait for it to end. Unlike `await task`, asyncio.wait neither raises
    the task's own CancelledError nor swallows a cancellation of the caller."""
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled() and task.exception() is not None:
        log.warning("Job work failed while being stopped", exc_info=task.exception())
