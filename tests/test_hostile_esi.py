"""The sweep against an ESI that misbehaves on purpose (tests/hostile_esi.py): garbage, HTML, odd
X-Pages, silence, a trickle, an endless body, a gzip bomb. The client's timeouts and body cap
fire, only the region fails (keeping its orders), the job ends in time, and no socket leaks."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import Iterator

import aiohttp
import pytest

from backends.base import JobStatus, Started, SystemClock, Trigger
from backends.memory import MemoryJobStore
from tests.conftest import until
from tests.hostile_esi import BOMB_DECOMPRESSED_BYTES, HostileEsi, fd_count
from tests.sweep_helpers import COMPATIBILITY_DATE, USER_AGENT, stored_rows
from tornado_admin.app import fetch_work
from tornado_admin.jobs import TIMED_OUT, JobRunner
from tornado_admin.market.esi import MAX_BODY_BYTES, EsiClient
from tornado_admin.market.fetch import SweepResult, fetch_all_regions
from tornado_admin.market.limits import DEFAULT_RETRY_AFTER_SECONDS, RetryPolicy, retry_after_seconds
from tornado_admin.market.orders import open_order_store
from tornado_admin.settings import settings_from

HOSTILE, GOOD = 10000002, 10000043
# Short enough for seconds-long tests, long enough that a loaded 2-core machine never trips them
# on a well-behaved answer.
SOCK_READ_SECONDS, TOTAL_SECONDS = 0.4, 1.2
SHORT_TIMEOUT = aiohttp.ClientTimeout(
    total=TOTAL_SECONDS, connect=1, sock_connect=1, sock_read=SOCK_READ_SECONDS
)
TWO_TRIES = RetryPolicy(attempts=2, base_delay_seconds=0.01, max_delay_seconds=0.02)


@pytest.fixture
def database_url(sqlite_url):  # the client is under attack, not the database: one is enough
    return sqlite_url


@pytest.fixture
def hostile(io_loop) -> Iterator[HostileEsi]:
    server = HostileEsi((HOSTILE, GOOD), trickle_seconds=0.05)
    io_loop.run_sync(server.start)
    yield server
    io_loop.run_sync(server.stop)


def client(server: HostileEsi, **options) -> EsiClient:
    options = {"timeout": SHORT_TIMEOUT, "retry": TWO_TRIES, **options}
    return EsiClient.open(
        server.url, user_agent=USER_AGENT, compatibility_date=COMPATIBILITY_DATE, concurrency=4, **options
    )


async def sweep(server: HostileEsi, store, clock, **options) -> tuple[SweepResult, float]:
    """One sweep of both regions with a client of its own, closed at the end; (result, seconds)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with client(server, **options) as esi:
        result = await fetch_all_regions(esi, store, region_ids=(HOSTILE, GOOD), concurrency=4, clock=clock)
    return result, loop.time() - started


async def fds_back_to(before: int) -> None:
    """The client's sockets (and the server's ends of them) close once the client is closed;
    the closing itself takes a loop iteration or two."""
    try:
        await until(lambda: fd_count() == before, timeout_seconds=5)
    except AssertionError:
        raise AssertionError(f"{fd_count() - before} file descriptors leaked") from None


async def stored_then_attacked(server, store, database_url, clock, behaviour: str, **options):
    """Store both regions from good answers, then sweep with `HOSTILE` misbehaving.
    Returns (result, seconds, the hostile region's rows from before the attack)."""
    first, _ = await sweep(server, store, clock)
    assert first.to_dict()["successCount"] == 2
    before = await stored_rows(database_url, HOSTILE)
    assert len(before) == server.orders_per_page
    server.behave(HOSTILE, behaviour)
    fds = fd_count()
    result, seconds = await sweep(server, store, clock, **options)
    await fds_back_to(fds)
    await until(lambda: server.open_connections == 0)  # the server saw every hang-up
    return result, seconds, before


def only_failure(result: SweepResult) -> str:
    """The error of the one failed region, which must be HOSTILE, the other one stored."""
    body = result.to_dict()
    assert body["successCount"] == 1, body
    [failure] = body["regions"]["failed"]
    assert failure["regionId"] == HOSTILE
    return failure["error"]


PAGE = f"/markets/{HOSTILE}/orders"
# What each misbehaviour of one page earns its region (the error starts with this).
PAGE_ATTACKS = {
    "garbage": "page 1 is malformed: body is not JSON",
    "html": "page 1: HTTP 200 with Content-Type 'text/html', not JSON",
    "escapes": "page 1: HTTP 400: bad ?[2J?]0;owned?request?forged log line",
    "not-http": f"{PAGE}: invalid HTTP response (Bad status line) (after 2 tries)",
    "x-pages:1000000": "page 1: X-Pages '1000000' is not a page count from 1 to 2000",
    "x-pages:-1": "page 1: X-Pages '-1' is not a page count from 1 to 2000",
    # "\u00b2" is a digit to str.isdigit() but not to int()
    "x-pages:\u00b2": "page 1: X-Pages '\u00b2' is not a page count from 1 to 2000",
    "endless-head": f"{PAGE}: invalid HTTP response (Too many headers",
    "silent": f"{PAGE}: timed out (after 2 tries)",
    "trickle-head": f"{PAGE}: timed out (after 2 tries)",
    "trickle-body": f"{PAGE}: timed out (after 2 tries)",
    "endless": f"page 1: body larger than {MAX_BODY_BYTES} bytes",
    "gzip-bomb": f"page 1: body larger than {MAX_BODY_BYTES} bytes",
}


@pytest.mark.parametrize(("behaviour", "error"), PAGE_ATTACKS.items(), ids=list(PAGE_ATTACKS))
@pytest.mark.gen_test(timeout=20)
async def test_a_hostile_answer_fails_its_region_which_keeps_its_orders(
    hostile, order_store, database_url, clock, behaviour, error
):
    result, seconds, before = await stored_then_attacked(hostile, order_store, database_url, clock, behaviour)

    assert only_failure(result).startswith(error)
    assert await stored_rows(database_url, HOSTILE) == before  # whole: the old set, nothing staged
    # Two tries, each bounded by the total timeout, plus a margin for a loaded machine.
    assert seconds < 2 * TOTAL_SECONDS + 1.5


@pytest.mark.gen_test(timeout=20)
async def test_a_page_count_of_a_million_is_refused_without_one_more_request(
    hostile, order_store, database_url, clock
):
    result, _, _ = await stored_then_attacked(hostile, order_store, database_url, clock, "x-pages:1000000")
    assert "X-Pages '1000000'" in only_failure(result)
    attack = [r for r in hostile.requests if r.behaviour != "ok"]
    assert len(attack) == 1  # no page 2, no retry: a broken header is not transient


@pytest.mark.parametrize("behaviour", ["no-x-pages", "x-pages:0"])
@pytest.mark.gen_test(timeout=20)
async def test_x_pages_missing_or_zero_means_this_page_alone(
    hostile, order_store, database_url, clock, behaviour
):
    """FACTS.md: X-Pages is missing on some responses, "treat as 1"; 0 pages for a page we
    hold is the same non-answer. The page is stored and no page 2 is asked for."""
    result, _, before = await stored_then_attacked(hostile, order_store, database_url, clock, behaviour)

    assert result.to_dict()["regions"] == {"fetched": 2, "notModified": 0, "failed": []}
    served = [r for r in hostile.requests if r.region_id == HOSTILE and r.behaviour == behaviour]
    assert len(served) == 1
    after = await stored_rows(database_url, HOSTILE)
    assert len(after) == hostile.orders_per_page
    assert not set(after) & set(before)  # the new page


@pytest.mark.parametrize(
    "header", ["X-ESI-Error-Limit-Remain", "X-ESI-Error-Limit-Reset", "X-Ratelimit-Remaining"]
)
@pytest.mark.gen_test(timeout=20)
async def test_a_limit_header_that_is_no_number_is_ignored(hostile, order_store, database_url, clock, header):
    # "\u00b2" passes str.isdigit() but not int(): it once escaped as a ValueError and crashed the sweep.
    result, _, _ = await stored_then_attacked(
        hostile, order_store, database_url, clock, f"header:{header}:\u00b2"
    )
    assert result.to_dict()["regions"] == {"fetched": 2, "notModified": 0, "failed": []}


@pytest.fixture(params=["sqlite_url", "postgres_url"])
def any_store(request, io_loop):
    """(store, url) on each database, for what the database itself must hold."""
    url = request.getfixturevalue(request.param)
    store = io_loop.run_sync(lambda: open_order_store(url, max_writers=4))
    yield store, url
    io_loop.run_sync(store.close)


@pytest.mark.parametrize(
    "last_modified",
    [
        "Mon, 01 Jan 99999999999 10:00:00 GMT",  # past any integer: OverflowError
        "Fri, 31 Dec 9999 23:59:59 -2359",  # a date, but in year 10000 once in UTC
        "yesterday",
    ],
    ids=["year-99999999999", "year-10000-in-utc", "not-a-date"],
)
@pytest.mark.gen_test(timeout=20)
async def test_a_last_modified_that_is_no_storable_date_is_dropped_not_fatal(
    any_store, hostile, clock, last_modified
):
    store, url = any_store
    attack = f"header:Last-Modified:{last_modified}"
    result, _, _ = await stored_then_attacked(hostile, store, url, clock, attack)

    assert result.to_dict()["regions"] == {"fetched": 2, "notModified": 0, "failed": []}
    assert set(await stored_rows(url, HOSTILE)) == {o["order_id"] for o in hostile.last_orders[HOSTILE]}
    assert (await store.region_states())[HOSTILE].last_modified is None


def test_a_retry_after_date_past_any_calendar_means_the_default_pause():
    assert retry_after_seconds("Mon, 01 Jan 99999999999 10:00:00 GMT") == DEFAULT_RETRY_AFTER_SECONDS


@pytest.mark.gen_test(timeout=20)
async def test_a_silent_server_is_cut_off_by_the_read_timeout(hostile, order_store, database_url, clock):
    # A total far beyond the read timeout: the elapsed time shows which of the two fired.
    patient = aiohttp.ClientTimeout(total=30, connect=1, sock_connect=1, sock_read=SOCK_READ_SECONDS)
    result, seconds, _ = await stored_then_attacked(
        hostile, order_store, database_url, clock, "silent", timeout=patient
    )
    assert only_failure(result).endswith("timed out (after 2 tries)")
    assert 2 * SOCK_READ_SECONDS <= seconds < 2 * SOCK_READ_SECONDS + 2


@pytest.mark.parametrize("behaviour", ["trickle-head", "trickle-body"])
@pytest.mark.gen_test(timeout=20)
async def test_a_trickle_within_the_read_timeout_is_cut_off_by_the_total_deadline(
    hostile, order_store, database_url, clock, behaviour
):
    """One byte every 50 ms never trips a 400 ms read timeout; only the per-request deadline
    stops an answer that would take a minute and a half."""
    result, seconds, _ = await stored_then_attacked(hostile, order_store, database_url, clock, behaviour)

    assert only_failure(result).endswith("timed out (after 2 tries)")
    assert 2 * TOTAL_SECONDS <= seconds < 2 * TOTAL_SECONDS + 1.5
    attack = [r for r in hostile.requests if r.behaviour == behaviour]
    assert len(attack) == 2


def test_a_client_without_a_total_deadline_is_refused():
    with pytest.raises(ValueError, match="total timeout"):
        EsiClient.open("http://127.0.0.1:9", user_agent=USER_AGENT, compatibility_date=COMPATIBILITY_DATE,
                       concurrency=1, timeout=aiohttp.ClientTimeout(sock_read=30))


@pytest.mark.gen_test(timeout=20)
async def test_an_endless_body_stops_at_the_cap(hostile, order_store, database_url, clock):
    result, _, _ = await stored_then_attacked(hostile, order_store, database_url, clock, "endless")
    assert f"larger than {MAX_BODY_BYTES} bytes" in only_failure(result)
    # The client hung up at the cap: what the server got rid of is the cap plus socket buffers.
    assert hostile.bytes_sent < 2 * MAX_BODY_BYTES


@pytest.mark.gen_test(timeout=30)
async def test_a_gzip_bomb_stops_at_the_cap_counted_decompressed(hostile, order_store, database_url, clock):
    """About 1 MiB on the wire, 1 GiB decompressed: the cap counts decompressed bytes and memory
    never holds much more than the cap (aiohttp inflates in bounded steps)."""
    tracemalloc.start()
    try:
        result, _, _ = await stored_then_attacked(hostile, order_store, database_url, clock, "gzip-bomb")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert f"larger than {MAX_BODY_BYTES} bytes" in only_failure(result)
    assert hostile.bytes_sent < MAX_BODY_BYTES < BOMB_DECOMPRESSED_BYTES
    assert peak < 3 * MAX_BODY_BYTES, f"peak {peak >> 20} MiB"


# -- through the job runner -----------------------------------------------------------------------


def runner_for(esi: EsiClient, store, clock, **env: str) -> tuple[JobRunner, MemoryJobStore]:
    settings = settings_from({"ESI_CONCURRENCY": "4", **env})
    jobs = MemoryJobStore(SystemClock(), history_limit=10)
    runner = JobRunner(
        jobs, fetch_work(settings, esi, store, clock),
        lease_seconds=settings.job_lease_seconds, max_duration_seconds=settings.job_max_duration_seconds,
    )  # fmt: skip
    return runner, jobs


async def run_job(runner: JobRunner, jobs: MemoryJobStore):
    """Trigger one run, wait for its end; (the recorded job, seconds it took)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    outcome = await runner.start(Trigger.MANUAL)
    assert isinstance(outcome, Started)
    await runner.wait_idle()
    return await jobs.get(outcome.lease.job_id), loop.time() - started


@pytest.mark.gen_test(timeout=20)
async def test_a_job_against_a_silent_esi_is_recorded_timed_out_at_its_maximum_duration(
    hostile, order_store, clock
):
    """The production timeouts (30 s per read, 4 tries) would keep this region going for minutes:
    the runner's JOB_MAX_DURATION_SECONDS ends the job first, and the cancelled requests close."""
    hostile.behave(HOSTILE, "silent")
    hostile.behave(GOOD, "silent")
    fds = fd_count()
    esi = EsiClient.open(hostile.url, user_agent=USER_AGENT, compatibility_date=COMPATIBILITY_DATE,
                         concurrency=4)  # the default timeouts and retries
    try:
        runner, jobs = runner_for(esi, order_store, clock, ESI_REGIONS=f"{HOSTILE},{GOOD}",
                                  JOB_MAX_DURATION_SECONDS="2")
        job, seconds = await run_job(runner, jobs)
    finally:
        await esi.close()
    assert (job.status, job.error) == (JobStatus.FAILED, TIMED_OUT)
    assert 2 <= seconds < 2 + 1.5
    assert 1900 <= job.completed_ms - job.started_ms < 3500
    await fds_back_to(fds)


LIST_ATTACKS = {
    "garbage": "cannot list regions: /universe/regions did not answer a list of region ids",
    "html": "cannot list regions: HTTP 200 with Content-Type 'text/html', not JSON",
    "silent": "cannot list regions: /universe/regions: timed out (after 2 tries)",
}


@pytest.mark.parametrize(("behaviour", "error"), LIST_ATTACKS.items(), ids=list(LIST_ATTACKS))
@pytest.mark.gen_test(timeout=20)
async def test_a_hostile_region_list_fails_the_job_with_a_clear_error(
    hostile, order_store, clock, behaviour, error
):
    hostile.behave("regions", behaviour)
    fds = fd_count()
    async with client(hostile) as esi:
        job, _ = await run_job(*runner_for(esi, order_store, clock, JOB_MAX_DURATION_SECONDS="10"))
    assert (job.status, job.error) == (JobStatus.FAILED, error)
    await fds_back_to(fds)


@pytest.mark.gen_test(timeout=30)
async def test_a_job_meeting_every_misbehaviour_at_once_completes_listing_each_failed_region(
    order_store, database_url, clock
):
    """DESIGN.md section 4: failed regions do not fail the job. Every hostile region is listed with
    its own error, the good one is stored, and it all ends well within the maximum duration."""
    behaviours = ["garbage", "html", "not-http", "x-pages:1000000", "silent", "trickle-body", "endless",
                  "gzip-bomb"]
    hostile_ids = [10000010 + i for i in range(len(behaviours))]
    server = HostileEsi((*hostile_ids, GOOD))
    await server.start()
    try:
        for region_id, behaviour in zip(hostile_ids, behaviours, strict=True):
            server.behave(region_id, behaviour)
        fds = fd_count()
        async with client(server) as esi:
            job, seconds = await run_job(*runner_for(esi, order_store, clock, JOB_MAX_DURATION_SECONDS="10"))
        await fds_back_to(fds)
    finally:
        await server.stop()
    assert job.status is JobStatus.COMPLETED, job.error
    assert seconds < 2 * TOTAL_SECONDS + 2
    failed = {f["regionId"]: f["error"] for f in job.result["regions"]["failed"]}
    assert sorted(failed) == hostile_ids
    assert "timed out" in failed[hostile_ids[behaviours.index("silent")]]
    assert "larger than" in failed[hostile_ids[behaviours.index("gzip-bomb")]]
    assert (job.result["successCount"], job.result["errorCount"]) == (1, len(behaviours))
    assert set(await stored_rows(database_url)) == {o["order_id"] for o in server.last_orders[GOOD]}
