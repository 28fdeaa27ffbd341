"""The 30-minute schedule: a PeriodicCallback whose every tick asks the runner for a run.

Each scheduled start claims its period (`now // interval`) in the store, so instances sharing a
store make one scheduled run per period in total, whatever their phase.
"""

from __future__ import annotations

import asyncio
import logging

from tornado.ioloop import IOLoop, PeriodicCallback

from backends.base import (
    AlreadyRunning,
    Clock,
    Started,
    StartOutcome,
    StoreUnavailableError,
    Trigger,
)
from tornado_admin.jobs import JobRunner

log = logging.getLogger("tornado_admin.scheduler")

STOP_TIMEOUT_SECONDS = 5.0
STARTUP_DELAY_SECONDS = 5.0  # let the server settle (and readyz answer) before a catch-up run


class SteadyPeriodicCallback(PeriodicCallback):
    """A PeriodicCallback that keeps ticking when the wall clock steps back.

    Tornado measures the schedule on `IOLoop.time()`, which is `time.time()`: after a step back
    of D it would wait D longer for the next tick (Tornado's own comment says so), a day's step
    stopping the schedule for a day. A next tick further away than one interval can only mean
    such a step, so the schedule restarts from now. A forward step needs nothing: Tornado skips
    the missed ticks and fires once.
    """

    def _update_next(self, current_time: float) -> None:
        if self._next_timeout - current_time > self.callback_time / 1000.0:
            self._next_timeout = current_time
        super()._update_next(current_time)


class Scheduler:
    def __init__(
        self,
        runner: JobRunner,
        clock: Clock,
        *,
        interval_seconds: float,
        startup_delay_seconds: float = STARTUP_DELAY_SECONDS,
    ) -> None:
        self._runner, self._clock = runner, clock
        self._interval_ms = round(interval_seconds * 1000)
        self._startup_delay_seconds = startup_delay_seconds
        self._callback: SteadyPeriodicCallback | None = None
        self._pending: set[asyncio.Task] = set()
        self._skipped_for: str | None = None  # the running job a skip was last logged for
        self._startup_handle: object | None = None

    def start(self) -> None:
        self._callback = SteadyPeriodicCallback(self._spawn_tick, self._interval_ms)
        self._callback.start()
        self._startup_handle = IOLoop.current().call_later(
            self._startup_delay_seconds, lambda: self._spawn(self.catch_up())
        )
        log.info("Scheduler started", extra={"intervalSeconds": self._interval_ms / 1000})

    async def stop(self) -> None:
        if self._callback:
            self._callback.stop()
        if self._startup_handle is not None:
            IOLoop.current().remove_timeout(self._startup_handle)
        # Waited for, not cancelled: a tick inside the store's start must land, so the runner
        # can interrupt the run it creates (a cancelled start could orphan a running job).
        if self._pending:
            await asyncio.wait(self._pending, timeout=STOP_TIMEOUT_SECONDS)

    async def tick(self) -> StartOutcome | None:
        """One scheduled attempt: start a run for the current period unless one is running or the
        period was already claimed. Never raises: a store outage is a logged skip."""
        period = self._clock.now_ms() // self._interval_ms
        fields = {"jobName": self._runner.job_name, "trigger": Trigger.SCHEDULE.value}
        try:
            outcome = await self._runner.start(Trigger.SCHEDULE, period=period)
        except StoreUnavailableError as exc:
            log.warning("Scheduled run skipped: job store unavailable", extra={**fields, "error": str(exc)})
            return None
        if isinstance(outcome, AlreadyRunning):
            if self._skipped_for != outcome.job.job_id:  # logged once per blocking run
                self._skipped_for = outcome.job.job_id
                log.info("Scheduled run skipped: a run is in progress",
                         extra={**fields, "jobId": outcome.job.job_id})
        elif isinstance(outcome, Started):
            log.info("Scheduled job started", extra={**fields, "jobId": outcome.job.job_id})
        else:
            log.debug("Scheduled run skipped: another instance ran this period", extra=fields)
        return outcome

    async def catch_up(self) -> StartOutcome | None:
        """At startup: run now if the last successful run is older than the interval."""
        try:
            last = await self._runner.store.last_success(self._runner.job_name)
        except StoreUnavailableError as exc:
            log.warning("Startup catch-up skipped: job store unavailable", extra={"error": str(exc)})
            return None
        if last is not None and self._clock.now_ms() - (last.completed_ms or 0) < self._interval_ms:
            return None
        return await self.tick()

    def _spawn_tick(self) -> None:
        self._spawn(self.tick())

    def _spawn(self, coroutine) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.get_running_loop().create_task(coroutine)
        self._pending.add(task)  # referenced until done, so it is never collected mid-run
        task.add_done_callback(self._pending.discard)
