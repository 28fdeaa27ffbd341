"""The `JobStore` contract, run against memory, SQLite and a real Redis by one `store` fixture."""

from __future__ import annotations

import asyncio
import secrets
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from tornado.ioloop import IOLoop

from backends.base import (
    ABANDONED,
    JOB_ID_PATTERN,
    AlreadyRunning,
    JobNotFoundError,
    JobStatus,
    JobStore,
    Lease,
    LeaseLostError,
    PeriodClaimed,
    Started,
    StoreUnavailableError,
    Trigger,
    new_job_id,
    open_store,
)
from backends.memory import MemoryJobStore
from backends.redis import RedisJobStore
from backends.sqlite import SqliteJobStore
from tests.conftest import REDIS_URL, FakeClock, require_service

NAME = "fetch-market-data"
LEASE_MS = 30_000
CLASSES: dict[str, Any] = {"memory": MemoryJobStore, "sqlite": SqliteJobStore, "redis": RedisJobStore}
MALFORMED_IDS = ["../x", "*", "a" * 10000, "x\r\ny", "' OR 1=1 --", "{*}", "", "a" * 21, "a" * 23]


class Stores:
    """Opens stores of one kind on the test's loop, all sharing one place (a file, a Redis key
    prefix of this test alone); closes them and removes the test's Redis keys afterwards."""

    def __init__(self, kind: str, clock: FakeClock, tmp_path: Path) -> None:
        self.kind = kind
        self.clock = clock
        self.path = tmp_path / "state" / "jobs.db"  # state/ does not exist yet: open makes it
        self.url = {"memory": "memory://", "sqlite": f"sqlite:///{self.path}", "redis": REDIS_URL}[kind]
        self.prefix = f"test-job-store-{secrets.token_hex(6)}"
        self.opened: list[JobStore] = []

    async def open(self, history_limit: int = 100, **options: Any) -> JobStore:
        if self.kind == "redis":
            options.setdefault("prefix", self.prefix)
        store = await CLASSES[self.kind].open(
            self.url, clock=self.clock, history_limit=history_limit, **options
        )
        self.opened.append(store)
        return store

    async def cleanup(self) -> None:
        for store in self.opened:
            await store.close()
        if self.kind == "redis":
            client = aioredis.Redis.from_url(REDIS_URL)
            try:
                keys = [key async for key in client.scan_iter(match=f"{self.prefix}:*")]
                if keys:
                    await client.delete(*keys)
            finally:
                await client.aclose()


def _stores(kind: str, io_loop: IOLoop, clock: FakeClock, tmp_path: Path) -> Iterator[Stores]:
    stores = Stores(kind, clock, tmp_path)
    if kind == "redis":
        try:
            io_loop.run_sync(stores.open)
        except StoreUnavailableError as exc:
            require_service("Redis at " + REDIS_URL, exc)
    yield stores
    io_loop.run_sync(stores.cleanup)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def stores(request, io_loop: IOLoop, clock: FakeClock, tmp_path: Path) -> Iterator[Stores]:
    yield from _stores(request.param, io_loop, clock, tmp_path)


@pytest.fixture(params=["sqlite", "redis"])
def shared_stores(request, io_loop: IOLoop, clock: FakeClock, tmp_path: Path) -> Iterator[Stores]:
    """Stores whose state several store objects (connections, processes) can share."""
    yield from _stores(request.param, io_loop, clock, tmp_path)


@pytest.fixture
def sqlite_stores(io_loop: IOLoop, clock: FakeClock, tmp_path: Path) -> Iterator[Stores]:
    yield from _stores("sqlite", io_loop, clock, tmp_path)


@pytest.fixture
def redis_stores(io_loop: IOLoop, clock: FakeClock, tmp_path: Path) -> Iterator[Stores]:
    yield from _stores("redis", io_loop, clock, tmp_path)


@pytest.fixture
def store(io_loop: IOLoop, stores: Stores) -> JobStore:
    return io_loop.run_sync(stores.open)


async def start(store: JobStore, name: str = NAME, **options: Any) -> Started:
    outcome = await store.start(name, Trigger.MANUAL, lease_ms=LEASE_MS, **options)
    assert isinstance(outcome, Started), outcome
    return outcome


async def run(store: JobStore, name: str = NAME, status: JobStatus = JobStatus.COMPLETED) -> str:
    """One whole run, finished at once; its job id."""
    started = await start(store, name)
    await store.finish(started.lease, status=status, result={"n": 1} if status == "completed" else None)
    return started.job.job_id


# -- start ---------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=10)
async def test_start_records_a_running_job_and_returns_its_lease(store, clock):
    outcome = await store.start(NAME, Trigger.SCHEDULE, lease_ms=LEASE_MS)

    assert isinstance(outcome, Started)
    job, lease = outcome.job, outcome.lease
    assert JOB_ID_PATTERN.fullmatch(job.job_id)
    assert (lease.job_id, lease.job_name, lease.expires_ms) == (job.job_id, NAME, clock.now_ms() + LEASE_MS)
    assert len(lease.token) >= 32
    assert (job.status, job.trigger, job.started_ms) == (JobStatus.RUNNING, Trigger.SCHEDULE, clock.now_ms())
    assert (job.lease_expires_ms, job.completed_ms) == (lease.expires_ms, None)
    assert await store.get(job.job_id) == job


@pytest.mark.gen_test(timeout=10)
async def test_a_second_start_reports_the_running_job(store):
    first = await start(store)
    second = await store.start(NAME, Trigger.MANUAL, lease_ms=LEASE_MS)

    assert isinstance(second, AlreadyRunning)
    assert (second.job.job_id, second.job.status) == (first.job.job_id, JobStatus.RUNNING)
    assert isinstance(await store.start("other-job", Trigger.MANUAL, lease_ms=LEASE_MS), Started)
    assert [job.job_id for job in await store.list(NAME)] == [first.job.job_id]


@pytest.mark.gen_test(timeout=30)
async def test_exactly_one_of_many_concurrent_starts_wins(store):
    outcomes = await asyncio.gather(
        *(store.start(NAME, Trigger.MANUAL, lease_ms=LEASE_MS) for _ in range(100))
    )

    winners = [o for o in outcomes if isinstance(o, Started)]
    assert len(winners) == 1
    assert {o.job.job_id for o in outcomes if isinstance(o, AlreadyRunning)} == {winners[0].job.job_id}
    assert sum(isinstance(o, AlreadyRunning) for o in outcomes) == 99
    assert len(await store.list(NAME)) == 1


@pytest.mark.gen_test(timeout=30)
async def test_exactly_one_start_wins_across_connections(shared_stores):
    first, second = await shared_stores.open(), await shared_stores.open()
    outcomes = await asyncio.gather(
        *((first, second)[i % 2].start(NAME, Trigger.MANUAL, lease_ms=LEASE_MS) for i in range(100))
    )

    winners = [o for o in outcomes if isinstance(o, Started)]
    assert len(winners) == 1
    assert {o.job.job_id for o in outcomes if isinstance(o, AlreadyRunning)} == {winners[0].job.job_id}
    assert (await second.current(NAME)).job_id == winners[0].job.job_id


# -- renew and finish ----------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=10)
async def test_renew_extends_the_lease_and_stores_progress(store, clock):
    started = await start(store)
    clock.advance(10)
    lease = await store.renew(started.lease, lease_ms=LEASE_MS, progress={"regionsDone": 3})

    assert lease.expires_ms == clock.now_ms() + LEASE_MS
    assert (lease.job_id, lease.token) == (started.lease.job_id, started.lease.token)
    job = await store.get(started.job.job_id)
    assert (job.lease_expires_ms, job.progress) == (lease.expires_ms, {"regionsDone": 3})
    await store.renew(lease, lease_ms=LEASE_MS)  # no progress: the last one stays
    assert (await store.get(started.job.job_id)).progress == {"regionsDone": 3}


@pytest.mark.gen_test(timeout=10)
async def test_finish_completed_records_the_result(store, clock):
    started = await start(store)
    clock.advance(5)
    done = await store.finish(started.lease, status=JobStatus.COMPLETED, result={"totalOrders": 7})

    assert (done.status, done.result, done.error) == (JobStatus.COMPLETED, {"totalOrders": 7}, None)
    assert (done.completed_ms, done.lease_expires_ms) == (clock.now_ms(), None)
    assert await store.get(done.job_id) == done
    assert await store.list(NAME) == [done]
    assert await store.current(NAME) is None
    assert await store.last_success(NAME) == done


@pytest.mark.gen_test(timeout=10)
async def test_finish_failed_records_the_error(store, clock):
    started = await start(store)
    clock.advance(2)
    done = await store.finish(started.lease, status=JobStatus.FAILED, error="region list unreachable")

    assert (done.status, done.error, done.result) == (JobStatus.FAILED, "region list unreachable", None)
    assert done.completed_ms == clock.now_ms()
    assert await store.get(done.job_id) == done
    assert await store.last_success(NAME) is None
    assert isinstance(await store.start(NAME, Trigger.MANUAL, lease_ms=LEASE_MS), Started)


@pytest.mark.gen_test(timeout=10)
async def test_a_wrong_token_or_a_finished_job_loses_the_lease(store):
    started = await start(store)
    forged = Lease(started.lease.job_id, NAME, "0" * 32, started.lease.expires_ms)
    with pytest.raises(LeaseLostError):
        await store.renew(forged, lease_ms=LEASE_MS)
    with pytest.raises(LeaseLostError):
        await store.finish(forged, status=JobStatus.COMPLETED)
    assert (await store.get(started.job.job_id)).status is JobStatus.RUNNING  # untouched

    done = await store.finish(started.lease, status=JobStatus.COMPLETED, result={"n": 1})
    with pytest.raises(LeaseLostError):
        await store.renew(started.lease, lease_ms=LEASE_MS)
    with pytest.raises(LeaseLostError):
        await store.finish(started.lease, status=JobStatus.FAILED, error="again")
    assert await store.get(done.job_id) == done  # finished jobs never change


# -- the lease boundary --------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=10)
async def test_the_lease_is_live_until_its_expiry_and_lapsed_from_it(store, clock):
    started = await start(store)
    expiry = started.lease.expires_ms

    clock.advance(29.999)
    assert (await store.get(started.job.job_id)).status is JobStatus.RUNNING
    assert (await store.current(NAME)).job_id == started.job.job_id
    assert isinstance(await store.start(NAME, Trigger.MANUAL, lease_ms=LEASE_MS), AlreadyRunning)

    clock.advance(0.001)
    assert clock.now_ms() == expiry
    job = await store.get(started.job.job_id)
    assert (job.status, job.error, job.completed_ms) == (JobStatus.FAILED, ABANDONED, expiry)
    assert job.lease_expires_ms is None
    assert await store.current(NAME) is None
    newer = await start(store)
    assert newer.job.job_id != started.job.job_id
    with pytest.raises(LeaseLostError):
        await store.renew(started.lease, lease_ms=LEASE_MS)
    assert (await store.current(NAME)).job_id == newer.job.job_id


@pytest.mark.gen_test(timeout=10)
async def test_renew_or_finish_of_a_lapsed_lease_records_it_abandoned(store, clock):
    first = await start(store)
    clock.advance(30)
    with pytest.raises(LeaseLostError):
        await store.renew(first.lease, lease_ms=LEASE_MS)
    assert (await store.get(first.job.job_id)).error == ABANDONED

    second = await start(store)
    clock.advance(31)
    with pytest.raises(LeaseLostError):
        await store.finish(second.lease, status=JobStatus.COMPLETED, result={"n": 1})
    job = await store.get(second.job.job_id)
    assert (job.status, job.error, job.result) == (JobStatus.FAILED, ABANDONED, None)
    assert job.completed_ms == second.lease.expires_ms
    assert await store.last_success(NAME) is None


@pytest.mark.gen_test(timeout=10)
async def test_a_renew_just_before_expiry_keeps_the_job_alive(store, clock):
    started = await start(store)
    clock.advance(29.999)
    lease = await store.renew(started.lease, lease_ms=LEASE_MS)
    clock.advance(1)  # past the first expiry

    assert (await store.current(NAME)).job_id == started.job.job_id
    assert isinstance(await store.start(NAME, Trigger.MANUAL, lease_ms=LEASE_MS), AlreadyRunning)
    job = await store.get(started.job.job_id)
    assert (job.status, job.lease_expires_ms) == (JobStatus.RUNNING, lease.expires_ms)
    assert (await store.finish(lease, status=JobStatus.COMPLETED)).status is JobStatus.COMPLETED


@pytest.mark.gen_test(timeout=10)
async def test_list_reports_lapsed_jobs_abandoned(store, clock):
    started = await start(store)
    clock.advance(30)

    [job] = await store.list()
    assert (job.job_id, job.status, job.error) == (started.job.job_id, JobStatus.FAILED, ABANDONED)
    assert (await store.list(NAME))[0] == job


# -- periods -------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=10)
async def test_one_scheduled_run_per_period(store):
    first = await store.start(NAME, Trigger.SCHEDULE, lease_ms=LEASE_MS, period=5)
    assert isinstance(first, Started)
    await store.finish(first.lease, status=JobStatus.COMPLETED)

    assert await store.start(NAME, Trigger.SCHEDULE, lease_ms=LEASE_MS, period=5) == PeriodClaimed(5)
    assert await store.start(NAME, Trigger.SCHEDULE, lease_ms=LEASE_MS, period=4) == PeriodClaimed(4)
    assert len(await store.list(NAME)) == 1  # nothing written
    manual = await store.start(NAME, Trigger.MANUAL, lease_ms=LEASE_MS)
    assert isinstance(manual, Started)
    await store.finish(manual.lease, status=JobStatus.COMPLETED)
    sixth = await store.start(NAME, Trigger.SCHEDULE, lease_ms=LEASE_MS, period=6)
    assert isinstance(sixth, Started)
    assert sixth.job.trigger is Trigger.SCHEDULE
    assert isinstance(await store.start("other-job", Trigger.SCHEDULE, lease_ms=LEASE_MS, period=6), Started)


@pytest.mark.gen_test(timeout=10)
async def test_a_running_job_answers_before_the_period_and_claims_nothing(store):
    running = await start(store)
    blocked = await store.start(NAME, Trigger.SCHEDULE, lease_ms=LEASE_MS, period=9)
    assert blocked == AlreadyRunning(running.job)

    await store.finish(running.lease, status=JobStatus.COMPLETED)
    assert isinstance(await store.start(NAME, Trigger.SCHEDULE, lease_ms=LEASE_MS, period=9), Started)


# -- reading -------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=10)
async def test_get_of_an_unknown_or_malformed_id_is_not_found(store):
    await run(store)
    for job_id in [new_job_id(), *MALFORMED_IDS]:
        with pytest.raises(JobNotFoundError):
            await store.get(job_id)


@pytest.mark.gen_test(timeout=10)
async def test_list_is_newest_first_limited_and_filtered_by_name(store, clock):
    ids = []
    for name in ["a", "b", "a", "b", "a"]:
        ids.append((name, await run(store, name)))
        clock.advance(1)
    running = await start(store, "b")

    assert [j.job_id for j in await store.list()] == [running.job.job_id] + [i for _, i in reversed(ids)]
    assert [j.job_id for j in await store.list(limit=2)] == [running.job.job_id, ids[-1][1]]
    assert [j.job_id for j in await store.list("a")] == [i for n, i in reversed(ids) if n == "a"]
    assert [j.job_id for j in await store.list("a", limit=1)] == [ids[-1][1]]
    assert await store.list("nothing-of-that-name") == []


@pytest.mark.gen_test(timeout=10)
async def test_current_is_the_running_job(store):
    assert await store.current(NAME) is None
    started = await start(store)
    assert await store.current(NAME) == started.job
    assert await store.current("other-job") is None
    await store.finish(started.lease, status=JobStatus.FAILED, error="boom")
    assert await store.current(NAME) is None


@pytest.mark.gen_test(timeout=20)
async def test_history_keeps_the_newest_finished_jobs_per_name(stores):
    store = await stores.open(history_limit=3)
    ids = [await run(store) for _ in range(5)]
    other = await run(store, "other-job")

    assert [j.job_id for j in await store.list(NAME)] == ids[:1:-1]
    for job_id in ids[:2]:
        with pytest.raises(JobNotFoundError):
            await store.get(job_id)
    assert (await store.get(ids[2])).job_id == ids[2]
    assert [j.job_id for j in await store.list("other-job")] == [other]  # capped per name

    running = await start(store)  # a running job is not history: three finished ones stay
    assert [j.job_id for j in await store.list(NAME)] == [running.job.job_id, *ids[:1:-1]]


@pytest.mark.gen_test(timeout=10)
async def test_last_success_survives_the_history_cap(stores, clock):
    store = await stores.open(history_limit=1)
    assert await store.last_success(NAME) is None
    success = await start(store)
    clock.advance(3)
    done = await store.finish(success.lease, status=JobStatus.COMPLETED, result={"totalOrders": 9})
    await run(store, status=JobStatus.FAILED)
    await run(store, status=JobStatus.FAILED)

    with pytest.raises(JobNotFoundError):
        await store.get(done.job_id)
    assert await store.last_success(NAME) == done
    assert await store.last_success("other-job") is None
    newer = await run(store)
    assert (await store.last_success(NAME)).job_id == newer


@pytest.mark.gen_test(timeout=10)
async def test_open_store_picks_the_store_by_url_scheme(stores):
    store = await open_store(stores.url, clock=stores.clock, history_limit=5)
    try:
        assert type(store) is CLASSES[stores.kind]
        assert store.history_limit == 5
        await store.ping()
    finally:
        await store.close()


# -- SQLite --------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=10)
async def test_sqlite_open_creates_a_missing_directory(sqlite_stores):
    assert not sqlite_stores.path.parent.exists()
    store = await sqlite_stores.open()
    await start(store)
    assert sqlite_stores.path.is_file()
    assert await sqlite_stores.open() is not store  # a second connection finds the schema made


@pytest.mark.gen_test(timeout=10)
async def test_sqlite_locked_past_busy_timeout_is_unavailable_then_recovers(sqlite_stores):
    store = await sqlite_stores.open(busy_timeout_ms=100)
    other = sqlite3.connect(sqlite_stores.path, isolation_level=None, timeout=0)
    try:
        other.execute("BEGIN EXCLUSIVE")
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(StoreUnavailableError, match="locked"):
            await store.start(NAME, Trigger.MANUAL, lease_ms=LEASE_MS)
        assert await store.current(NAME) is None  # WAL: reads go on while a writer holds the lock
        assert loop.time() - began < 2
        other.execute("ROLLBACK")

        started = await start(store)
        other.execute("BEGIN IMMEDIATE")  # the store left no transaction open
        other.execute("ROLLBACK")
        assert (await store.current(NAME)).job_id == started.job.job_id
    finally:
        other.close()


@pytest.mark.gen_test(timeout=10)
async def test_sqlite_a_cancelled_call_leaves_no_transaction_open(sqlite_stores):
    store = await sqlite_stores.open(busy_timeout_ms=100)
    other = sqlite3.connect(sqlite_stores.path, isolation_level=None, timeout=0)
    try:
        other.execute("BEGIN EXCLUSIVE")
        task = asyncio.ensure_future(store.start(NAME, Trigger.MANUAL, lease_ms=LEASE_MS))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The cancelled start still runs to its end (shielded) and fails on the lock; this
        # start queues behind it, then fails on the lock too (reads would go on: WAL).
        with pytest.raises(StoreUnavailableError):
            await store.start(NAME, Trigger.MANUAL, lease_ms=LEASE_MS)
        other.execute("ROLLBACK")

        assert await store.list() == []
        other.execute("BEGIN IMMEDIATE")  # the store holds no transaction
        other.execute("ROLLBACK")
        await run(store)
        assert len(await store.list()) == 1
    finally:
        other.close()


# -- Redis ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.gen_test(timeout=10)
async def test_redis_unreachable_is_unavailable_without_the_password(clock):
    url = f"redis://:hunter2-secret@127.0.0.1:{_free_port()}/0"
    with pytest.raises(StoreUnavailableError) as raised:
        await RedisJobStore.open(url, clock=clock, history_limit=10)

    message = str(raised.value)
    assert "hunter2-secret" not in message
    assert "[REDACTED]" in message
    assert "127.0.0.1" in message


@pytest.mark.gen_test(timeout=10)
async def test_redis_checks_ids_before_asking_and_maps_outages(clock):
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{_free_port()}/0", socket_connect_timeout=1)
    store = RedisJobStore(client, clock, 10)
    try:
        for job_id in MALFORMED_IDS:
            with pytest.raises(JobNotFoundError):  # never StoreUnavailableError: Redis was not asked
                await store.get(job_id)
        with pytest.raises(StoreUnavailableError):
            await store.get(new_job_id())
        with pytest.raises(StoreUnavailableError):
            await store.start(NAME, Trigger.MANUAL, lease_ms=LEASE_MS)
    finally:
        await store.close()


@pytest.mark.gen_test(timeout=10)
async def test_redis_expiry_collects_finished_jobs_but_is_never_the_lease(redis_stores):
    stores = redis_stores
    store = await stores.open()
    started = await start(store)
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        key = f"{stores.prefix}:job:{started.job.job_id}"
        assert await client.pttl(key) == -1  # a running job lives by its lease, not by a TTL
        await store.finish(started.lease, status=JobStatus.COMPLETED)
        assert await client.pttl(key) > 86_400_000
        assert await client.pttl(f"{stores.prefix}:success:{NAME}") == -1
        assert all(k.decode().startswith(f"{stores.prefix}:") for k in await client.keys(f"{stores.prefix}*"))
    finally:
        await client.aclose()


@pytest.mark.gen_test(timeout=10)
async def test_instances_sharing_a_store_make_one_scheduled_run_per_period(shared_stores, clock):
    from tests.api_helpers import GatedWork
    from tornado_admin.jobs import JobRunner
    from tornado_admin.scheduler import Scheduler

    work = GatedWork()
    schedulers = []
    for _ in range(3):  # three instances, each with its own connection to the store
        runner = JobRunner(await shared_stores.open(), work, lease_seconds=60, max_duration_seconds=600,
                           timer=clock)
        schedulers.append((runner, Scheduler(runner, clock, interval_seconds=1800)))

    for period in range(3):
        outcomes = await asyncio.gather(*(s.tick() for _, s in schedulers))
        assert sum(isinstance(o, Started) for o in outcomes) == 1, (period, outcomes)
        assert all(isinstance(o, Started | PeriodClaimed | AlreadyRunning) for o in outcomes)
        work.finish()
        for runner, _ in schedulers:
            await runner.wait_idle()
        work.gate.clear()
        late = await asyncio.gather(*(s.tick() for _, s in schedulers))  # same period, run done
        assert all(isinstance(o, PeriodClaimed) for o in late)
        clock.advance(1800)
    jobs = await (await shared_stores.open()).list(NAME)
    assert [j.trigger for j in jobs] == [Trigger.SCHEDULE] * 3


# -- the failed-authentication throttle ---------------------------------------------------------

WINDOW_MS = 60_000


@pytest.mark.gen_test(timeout=10)
async def test_auth_failures_count_per_client_and_window(store, clock):
    clock.ms -= clock.ms % WINDOW_MS  # the start of a window
    clock.advance(30)
    assert await store.auth_failures("10.0.0.1", window_ms=WINDOW_MS) == (0, 30_000)
    counts = [await store.note_auth_failure("10.0.0.1", window_ms=WINDOW_MS) for _ in range(3)]
    assert counts == [1, 2, 3]
    assert (await store.auth_failures("10.0.0.1", window_ms=WINDOW_MS))[0] == 3
    assert (await store.auth_failures("10.0.0.2", window_ms=WINDOW_MS))[0] == 0  # per address
    clock.advance(60)  # the next window starts clean
    assert (await store.auth_failures("10.0.0.1", window_ms=WINDOW_MS))[0] == 0
    assert await store.note_auth_failure("10.0.0.1", window_ms=WINDOW_MS) == 1


@pytest.mark.gen_test(timeout=10)
async def test_concurrent_auth_failures_all_count(shared_stores, clock):
    stores = [await shared_stores.open() for _ in range(2)]  # two instances
    counts = await asyncio.gather(
        *(stores[i % 2].note_auth_failure("::1", window_ms=WINDOW_MS) for i in range(40))
    )
    assert sorted(counts) == list(range(1, 41))
    assert (await stores[0].auth_failures("::1", window_ms=WINDOW_MS))[0] == 40


@pytest.mark.gen_test(timeout=10)
async def test_a_read_sharing_one_in_flight_still_honours_its_own_lease_boundary(store, clock):
    started = await start(store)
    clock.advance(LEASE_MS / 1000 - 0.001)
    earlier = asyncio.ensure_future(store.get(started.job.job_id))  # reads at 29.999 s
    await asyncio.sleep(0)
    clock.advance(0.001)  # 30 s: lapsed for anyone asking from now on
    later = await store.get(started.job.job_id)
    assert (later.status, later.error) == (JobStatus.FAILED, ABANDONED)
    assert (await earlier).status in (JobStatus.RUNNING, JobStatus.FAILED)
    assert await store.current(NAME) is None
