"""The job runner and the scheduler, driven by the fake clock: no test waits for real time."""

from __future__ import annotations

import asyncio
import logging

import pytest

from backends.base import (
    ABANDONED,
    AlreadyRunning,
    JobStatus,
    PeriodClaimed,
    Started,
    StoreUnavailableError,
    SystemClock,
    Trigger,
)
from backends.memory import MemoryJobStore
from tests.api_helpers import GatedWork
from tests.conftest import until
from tornado_admin.jobs import INTERRUPTED, TIMED_OUT, JobRunner, ShuttingDownError
from tornado_admin.logs import configure_logging
from tornado_admin.scheduler import Scheduler

LEASE = 60.0
MAX_DURATION = 600.0


@pytest.fixture
def store(clock):
    return MemoryJobStore(clock, history_limit=10)


@pytest.fixture
def work():
    return GatedWork()


@pytest.fixture
def runner(store, work, clock, io_loop):
    runner = JobRunner(store, work, lease_seconds=LEASE, max_duration_seconds=MAX_DURATION, timer=clock)
    yield runner
    io_loop.run_sync(runner.shutdown)  # no run outlives its test


async def start(runner: JobRunner, work: GatedWork, trigger=Trigger.MANUAL) -> str:
    outcome = await runner.start(trigger)
    assert isinstance(outcome, Started)
    await asyncio.wait_for(work.started.wait(), 5)
    return outcome.job.job_id


@pytest.mark.gen_test
async def test_the_lease_is_renewed_every_third_with_progress(runner, work, store, clock):
    job_id = await start(runner, work)
    first_expiry = (await store.get(job_id)).lease_expires_ms
    assert (await store.get(job_id)).progress is None  # not yet sent to the store

    await until(lambda: clock.waiting)
    clock.advance(LEASE / 3)
    await until(lambda: store._jobs[job_id].lease_expires_ms > first_expiry)
    job = await store.get(job_id)
    assert job.lease_expires_ms == clock.now_ms() + LEASE * 1000
    assert job.progress == {"regionsTotal": 2, "regionsDone": 1, "ordersStored": 10}

    for _ in range(6):  # two more lease lengths, renewed all along: never abandoned
        await heartbeat(clock, store, job_id)
    assert (await store.get(job_id)).status is JobStatus.RUNNING
    work.finish()
    await runner.wait_idle()
    assert (await store.get(job_id)).status is JobStatus.COMPLETED


async def heartbeat(clock, store, job_id: str) -> None:
    """Once the runner waits, let a third of the lease pass and wait until it has renewed."""
    await until(lambda: clock.waiting)
    clock.advance(LEASE / 3)
    await until(lambda: store._jobs[job_id].lease_expires_ms == clock.now_ms() + LEASE * 1000)


@pytest.mark.gen_test
async def test_a_run_past_its_maximum_duration_is_cancelled_and_failed(runner, work, store, clock):
    job_id = await start(runner, work)
    for _ in range(int(MAX_DURATION / (LEASE / 3)) - 1):
        await heartbeat(clock, store, job_id)
    assert runner.active == [job_id]
    await until(lambda: clock.waiting)
    clock.advance(LEASE / 3)  # now at the maximum duration
    await until(lambda: not runner.active)
    job = await store.get(job_id)
    assert (job.status, job.error) == (JobStatus.FAILED, TIMED_OUT)
    assert not work.gate.is_set()  # the work never finished on its own: it was cancelled
    assert isinstance(await runner.start(Trigger.MANUAL), Started)  # and no longer blocks


@pytest.mark.gen_test
async def test_a_lost_lease_stops_the_work_and_records_nothing(runner, work, store, clock, caplog):
    job_id = await start(runner, work)
    clock.advance(LEASE + 1)  # the process "froze" past its lease: it stops without asking
    await until(lambda: not runner.active)
    job = await store.get(job_id)
    assert (job.status, job.error) == (JobStatus.FAILED, ABANDONED)
    assert job.completed_ms == job.started_ms + LEASE * 1000
    assert "Job lease lapsed before it could be renewed: stopping the work" in caplog.text


@pytest.mark.gen_test
async def test_a_failing_or_crashing_job_is_recorded_failed(runner, work, store):
    job_id = await start(runner, work)
    work.finish(error="cannot list regions: timed out")
    await runner.wait_idle()
    assert (await store.get(job_id)).error == "cannot list regions: timed out"

    work.gate.clear()
    work.fail_with = ZeroDivisionError("boom")
    job_id = await start(runner, work)
    work.gate.set()
    await runner.wait_idle()
    job = await store.get(job_id)
    assert (job.status, job.error) == (JobStatus.FAILED, "internal error (ZeroDivisionError)")


@pytest.mark.gen_test
async def test_shutdown_records_the_running_job_interrupted(runner, work, store, caplog):
    job_id = await start(runner, work)
    caplog.set_level(logging.INFO)
    await runner.shutdown()
    job = await store.get(job_id)
    assert (job.status, job.error) == (JobStatus.FAILED, INTERRUPTED)
    assert job.progress == {"regionsTotal": 2, "regionsDone": 1, "ordersStored": 10}
    assert "Manual job failed" in caplog.text
    assert runner.active == []


@pytest.mark.gen_test
async def test_completion_is_logged_with_the_operator_messages(runner, work, caplog):
    caplog.set_level(logging.INFO)
    job_id = await start(runner, work)
    work.finish()
    await runner.wait_idle()
    [record] = [r for r in caplog.records if r.getMessage() == "Manual job completed successfully"]
    assert (record.jobId, record.jobName, record.trigger) == (job_id, "fetch-market-data", "manual")


# -- the scheduler -------------------------------------------------------------------------------

INTERVAL = 1800.0


@pytest.fixture
def scheduler(runner, clock):
    return Scheduler(runner, clock, interval_seconds=INTERVAL)


@pytest.mark.gen_test
async def test_one_scheduled_run_per_period(scheduler, runner, work, store, clock):
    first = await scheduler.tick()
    assert isinstance(first, Started)
    assert first.job.trigger is Trigger.SCHEDULE
    work.finish()
    await runner.wait_idle()
    assert isinstance(await scheduler.tick(), PeriodClaimed)  # same period: already ran
    clock.advance(INTERVAL)
    work.gate.clear()
    assert isinstance(await scheduler.tick(), Started)  # next period
    work.finish()


@pytest.mark.gen_test
async def test_a_tick_during_a_run_is_skipped_and_logged_once(scheduler, runner, work, clock, caplog):
    caplog.set_level(logging.INFO)
    job_id = await start(runner, work)
    for _ in range(3):
        outcome = await scheduler.tick()
        assert isinstance(outcome, AlreadyRunning)
        assert outcome.job.job_id == job_id
        await until(lambda: True)
    skips = [r for r in caplog.records if r.getMessage() == "Scheduled run skipped: a run is in progress"]
    assert len(skips) == 1
    work.finish()


@pytest.mark.gen_test
async def test_catch_up_runs_only_when_the_last_success_is_older_than_the_interval(
    scheduler, runner, work, store, clock
):
    assert isinstance(await scheduler.catch_up(), Started)  # never ran: run now
    work.finish()
    await runner.wait_idle()
    clock.advance(INTERVAL - 1)
    assert await scheduler.catch_up() is None  # fresh enough
    clock.advance(2)
    work.gate.clear()
    assert isinstance(await scheduler.catch_up(), Started)
    work.finish()


@pytest.mark.gen_test
async def test_the_periodic_callback_fires_ticks(runner, work, clock):
    scheduler = Scheduler(runner, clock, interval_seconds=0.05, startup_delay_seconds=3600)
    scheduler.start()
    try:
        await asyncio.wait_for(work.started.wait(), 5)  # the first tick started a run
    finally:
        await scheduler.stop()
    [job] = await runner.store.list()
    assert job.trigger is Trigger.SCHEDULE
    work.finish()


@pytest.mark.gen_test
async def test_lines_logged_by_the_work_carry_the_job_fields(store, clock, io_loop):
    import io
    import json
    import sys

    async def work(run):
        logging.getLogger("tornado_admin.market.fetch").warning("Region failed", extra={"regionId": 7})
        return {"success": True}

    stream, root = io.StringIO(), logging.getLogger()
    saved = (root.handlers[:], root.level, sys.excepthook)
    configure_logging("info", stream=stream)
    try:
        runner = JobRunner(store, work, lease_seconds=LEASE, max_duration_seconds=MAX_DURATION, timer=clock)
        outcome = await runner.start(Trigger.MANUAL)
        await runner.wait_idle()
    finally:
        logging.captureWarnings(False)
        root.handlers[:], root.level, sys.excepthook = saved
    [line] = [json.loads(x) for x in stream.getvalue().splitlines() if '"Region failed"' in x]
    assert line["jobId"] == outcome.job.job_id
    assert (line["jobName"], line["trigger"]) == ("fetch-market-data", "manual")
    assert line["regionId"] == 7


class FlakyStore(MemoryJobStore):
    """The memory store with faults switched on by the test: the runner's side is under test."""

    def __init__(self, clock) -> None:
        super().__init__(clock, history_limit=10)
        self.renew_error: BaseException | None = None
        self.start_gate: asyncio.Event | None = None

    async def renew(self, lease, **options):
        if self.renew_error is not None:
            raise self.renew_error
        return await super().renew(lease, **options)

    async def start(self, job_name, trigger, **options):
        if self.start_gate is not None:
            await self.start_gate.wait()
        return await super().start(job_name, trigger, **options)


@pytest.fixture
def flaky(clock):
    return FlakyStore(clock)


@pytest.fixture
def flaky_runner(flaky, work, clock, io_loop):
    runner = JobRunner(flaky, work, lease_seconds=LEASE, max_duration_seconds=MAX_DURATION, timer=clock)
    yield runner
    io_loop.run_sync(runner.shutdown)


@pytest.mark.gen_test
async def test_an_unreachable_store_stops_the_work_when_the_lease_would_lapse(
    flaky_runner, flaky, work, clock
):
    job_id = await start(flaky_runner, work)
    flaky.renew_error = StoreUnavailableError("down")
    for _ in range(2):  # two failed heartbeats at 20 s and 40 s: the work goes on
        await until(lambda: clock.waiting)
        clock.advance(LEASE / 3)
        await asyncio.sleep(0)
    assert flaky_runner.active == [job_id]
    await until(lambda: clock.waiting)
    clock.advance(LEASE / 3)  # 60 s: the lease this process last held is over
    await until(lambda: not flaky_runner.active)
    assert not work.gate.is_set()  # stopped, not finished
    assert flaky._jobs[job_id].status is JobStatus.RUNNING  # nothing recorded: the store was down


@pytest.mark.gen_test
async def test_an_unexpected_store_error_never_leaves_the_work_unwatched(
    flaky_runner, flaky, work, clock, caplog
):
    job_id = await start(flaky_runner, work)
    flaky.renew_error = RuntimeError("a bug, or a reply nobody expected")
    await until(lambda: clock.waiting)
    clock.advance(LEASE / 3)
    await until(lambda: not flaky_runner.active)
    assert "Job supervision failed: stopping its work" in caplog.text
    flaky.renew_error = None
    job = await flaky.get(job_id)
    assert (job.status, job.error) == (JobStatus.FAILED, "internal error (supervision)")


@pytest.mark.gen_test
async def test_a_start_in_flight_at_shutdown_is_interrupted_not_orphaned(flaky_runner, flaky, work):
    flaky.start_gate = asyncio.Event()
    trigger = asyncio.ensure_future(flaky_runner.start(Trigger.MANUAL))
    await asyncio.sleep(0)
    shutdown = asyncio.ensure_future(flaky_runner.shutdown())
    await asyncio.sleep(0)
    flaky.start_gate.set()  # the store answers only now, after shutdown began
    outcome = await trigger
    await shutdown
    assert isinstance(outcome, Started)
    job = await flaky.get(outcome.job.job_id)
    assert (job.status, job.error) == (JobStatus.FAILED, INTERRUPTED)
    with pytest.raises(ShuttingDownError):
        await flaky_runner.start(Trigger.MANUAL)


@pytest.mark.gen_test
async def test_without_renewals_the_work_stops_before_a_fast_store_clock_could_end_the_lease(
    flaky_runner, flaky, work, clock
):
    # The store's clock (SystemClock) may run up to 1.25 times as fast as the monotonic clock
    # while it catches up a wall-clock step: the runner must stop its work before even such a
    # clock reaches the lease's end, or another run could start while this one still writes.
    started = clock.monotonic()
    await start(flaky_runner, work)
    flaky.renew_error = StoreUnavailableError("down")
    while flaky_runner.active:
        await until(lambda: clock.waiting or not flaky_runner.active)
        if flaky_runner.active:
            clock.advance(0.5)
            await asyncio.sleep(0)
    stopped_after = clock.monotonic() - started
    assert SystemClock.MAX_RATE == 1.25
    assert stopped_after * 1.25 <= LEASE
    assert stopped_after >= LEASE / 1.25 - 1  # and not needlessly early


class RecordingListener:
    def __init__(self) -> None:
        self.finished: list[tuple[Trigger, JobStatus]] = []

    def run_started(self, trigger: Trigger) -> None:
        pass

    def run_finished(self, trigger, status, result, seconds, progress) -> None:  # noqa: ANN001
        self.finished.append((trigger, status))


@pytest.mark.gen_test
async def test_the_listener_hears_the_end_the_store_recorded_not_the_works(work, clock, io_loop):
    store_clock = type(clock)(clock.ms)  # the store's clock alone moves past the lease
    store = MemoryJobStore(store_clock, history_limit=10)
    listener = RecordingListener()
    runner = JobRunner(store, work, lease_seconds=LEASE, max_duration_seconds=MAX_DURATION, timer=clock)
    runner.listener = listener
    job_id = await start(runner, work)
    store_clock.advance(LEASE + 1)
    work.gate.set()  # the work completes, but its lease is gone when the runner records it
    await runner.wait_idle()
    assert (await store.get(job_id)).error == ABANDONED
    assert listener.finished == [(Trigger.MANUAL, JobStatus.FAILED)]
