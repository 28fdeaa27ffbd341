"""The job runner: one path for manual, scheduled and cron runs.

start (atomic, in the store) -> the work in a referenced background task -> lease renewed every
third of its length, carrying progress -> finish completed or failed. The work is cancelled at
the maximum duration ("timed out"), when the lease is lost, and at shutdown ("interrupted by
shutdown").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from backends.base import (
    JobStatus,
    JobStore,
    Lease,
    LeaseLostError,
    Started,
    StartOutcome,
    StoreUnavailableError,
    Trigger,
)
from tornado_admin.clock import LoopTimer, Timer
from tornado_admin.logs import job_fields

log = logging.getLogger("tornado_admin.jobs")

FETCH_JOB = "fetch-market-data"
TIMED_OUT = "timed out"
INTERRUPTED = "interrupted by shutdown"
LEASE_LOST = "lease lost"
# The names operators grep for (DESIGN.md section 8): "Manual job completed successfully", ...
_KIND = {Trigger.MANUAL: "Manual", Trigger.SCHEDULE: "Scheduled", Trigger.CRON: "Cron"}

ProgressReport = Callable[[Mapping[str, Any]], None]
Work = Callable[[ProgressReport], Awaitable[Mapping[str, Any]]]


class JobFailedError(Exception):
    """The work could not run; its message becomes the job's `error`."""


@dataclass
class _Run:
    lease: Lease
    trigger: Trigger
    task: asyncio.Task | None = None
    progress: dict[str, Any] = field(default_factory=dict)


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
    ) -> None:
        self.store = store
        self.job_name = job_name
        self._work = work
        self._lease_seconds = lease_seconds
        self._max_duration_seconds = max_duration_seconds
        self._timer = timer or LoopTimer()
        self._runs: dict[str, _Run] = {}

    @property
    def lease_ms(self) -> int:
        return round(self._lease_seconds * 1000)

    async def start(self, trigger: Trigger, *, period: int | None = None) -> StartOutcome:
        """Start a run unless one is running anywhere on the store; never waits for the work.
        Raises `StoreUnavailableError`."""
        outcome = await self.store.start(
            self.job_name, trigger, lease_ms=self.lease_ms, period=period
        )
        if isinstance(outcome, Started):
            run = _Run(outcome.lease, Trigger(trigger))
            self._runs[outcome.lease.job_id] = run
            run.task = asyncio.create_task(self._supervise(run), name=f"job-{outcome.lease.job_id}")
            log.info("Job started", extra=self._fields(run))
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
        """Cancel every run; each records itself failed "interrupted by shutdown"."""
        tasks = [run.task for run in self._runs.values() if run.task and not run.task.done()]
        for task in tasks:
            task.cancel(INTERRUPTED)
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_seconds)

    # -- one run ---------------------------------------------------------------------------------

    def _fields(self, run: _Run) -> dict[str, Any]:
        return {"jobId": run.lease.job_id, "jobName": self.job_name, "trigger": run.trigger.value}

    async def _supervise(self, run: _Run) -> None:
        job_fields.set(self._fields(run))  # this task's context, copied into the work's task
        work = asyncio.create_task(self._work(run.progress.update), name=f"work-{run.lease.job_id}")
        try:
            outcome = await self._watch(run, work)
            if outcome is not None:
                await self._finish(run, *outcome)
        except asyncio.CancelledError:
            await _cancel(work)
            await asyncio.shield(self._finish(run, JobStatus.FAILED, None, INTERRUPTED))
            raise
        finally:
            self._runs.pop(run.lease.job_id, None)

    async def _watch(
        self, run: _Run, work: asyncio.Task
    ) -> tuple[JobStatus, Mapping[str, Any] | None, str | None] | None:
        """Renew the lease until the work ends; None when the lease was lost (nothing to record)."""
        started = self._timer.monotonic()
        deadline = started + self._max_duration_seconds
        lease_deadline = started + self._lease_seconds  # the lease as this process last knew it
        interval = self._lease_seconds / 3
        while not work.done():
            now = self._timer.monotonic()
            await _first(work, self._timer.sleep(max(0.0, min(interval, deadline - now))))
            if work.done():
                break
            now = self._timer.monotonic()
            if now >= deadline:
                await _cancel(work)
                return JobStatus.FAILED, None, TIMED_OUT
            try:
                run.lease = await self.store.renew(
                    run.lease, lease_ms=self.lease_ms, progress=run.progress or None
                )
                lease_deadline = now + self._lease_seconds
            except LeaseLostError as exc:
                log.error("Job lease lost: stopping its work", extra={**self._fields(run), "error": str(exc)})
                await _cancel(work)
                return None
            except StoreUnavailableError as exc:
                if self._timer.monotonic() >= lease_deadline:
                    # Another instance may start over once the lease lapses: stop first.
                    log.error("Job store unreachable past the lease: stopping the work",
                              extra={**self._fields(run), "error": str(exc)})
                    await _cancel(work)
                    return None
                log.warning(
                    "Job lease renewal failed; retrying", extra={**self._fields(run), "error": str(exc)}
                )
        return _result_of(work)

    async def _finish(
        self, run: _Run, status: JobStatus, result: Mapping[str, Any] | None, error: str | None
    ) -> None:
        fields = self._fields(run)
        kind = _KIND[run.trigger]
        try:
            if run.progress:  # one last heartbeat, so the finished job keeps its final progress
                run.lease = await self.store.renew(run.lease, lease_ms=self.lease_ms, progress=run.progress)
            await self.store.finish(run.lease, status=status, result=result, error=error)
        except LeaseLostError as exc:
            log.error("Job lease lost before it finished", extra={**fields, "error": str(exc)})
            return
        except StoreUnavailableError as exc:
            # The lease will lapse and readers will see the run abandoned: still a clear end.
            log.error("Job result could not be recorded", extra={**fields, "error": str(exc)})
            return
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
    if not task.cancelled():
        task.exception()  # retrieved: an error while cancelling is not worth a second report
