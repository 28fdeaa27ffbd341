"""Shared fixtures: real PostgreSQL (a fresh schema per test), SQLite files, the local fake ESI."""

from __future__ import annotations

import asyncio
import heapq
import os
import secrets
import warnings
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
from tornado.ioloop import IOLoop

from tests.server_helpers import ServerProcess
from tornado_admin.fake_esi import FakeEsi
from tornado_admin.market.orders import OrderStore, open_order_store

pytest_plugins = ["tests.secrets_sweep", "tests.redis_helpers"]  # the second for private_redis
T = TypeVar("T")
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def require_service(name: str, error: BaseException) -> None:
    """Skip locally when a server is absent; in CI that is a failure, never a silent skip."""
    message = f"{name} is not reachable ({type(error).__name__}: {error})"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must provide it", pytrace=False)
    pytest.skip(message)


def run_aside(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to the end on a loop of its own in another thread, leaving the test's
    loop (pytest-tornado's io_loop, current in this thread) untouched."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


class FakeClock:
    """The injected clock and timer of tests: time moves only when a test calls `advance`.

    `now_ms` is the wall clock the stores see, `monotonic` the runner's local deadlines, and
    `sleep` waits until the test has advanced past its deadline.
    """

    def __init__(self, start_ms: int = 1_780_000_000_000) -> None:
        self.ms = start_ms
        self._sleepers: list[tuple[int, int, asyncio.Future]] = []
        self._order = 0

    def now_ms(self) -> int:
        return self.ms

    def monotonic(self) -> float:
        return self.ms / 1000

    def sleep(self, seconds: float) -> asyncio.Future:
        """Awaitable; the deadline is taken when called (not when first awaited), so a test
        that advances right after cannot slip past a sleeper that has not started yet."""
        future = asyncio.get_running_loop().create_future()
        self._order += 1
        heapq.heappush(self._sleepers, (self.ms + max(0, round(seconds * 1000)), self._order, future))
        self._wake()
        return future

    @property
    def waiting(self) -> int:
        """How many sleeps are pending: a test advances once the code under test waits."""
        return sum(not future.done() for _, _, future in self._sleepers)

    def advance(self, seconds: float) -> None:
        self.ms += round(seconds * 1000)
        self._wake()

    def _wake(self) -> None:
        while self._sleepers and self._sleepers[0][0] <= self.ms:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)


async def until(condition: Callable[[], bool], *, timeout_seconds: float = 5.0) -> None:
    """Let the loop run until `condition()` holds: fake time does not move; real time only as
    long as real I/O (a database, a socket) takes."""
    deadline = asyncio.get_running_loop().time() + timeout_seconds
    spins = 0
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition never became true")
        spins += 1
        await asyncio.sleep(0 if spins < 100 else 0.002)


@pytest.fixture(autouse=True)
def _close_leftover_event_loop() -> Iterator[None]:
    """Tornado's make_current() (called by pytest-tornado's io_loop) remembers the thread's asyncio
    loop, creating one if there was none, and clear_current() sets it back: nobody closes it, and
    its sockets would be reported as leaked by whichever later test happens to collect them."""
    yield
    policy = asyncio.get_event_loop_policy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            loop = policy.get_event_loop()
        except RuntimeError:  # none set, and the policy will not make one: nothing leaked
            return
    if not loop.is_running():
        loop.close()
        policy.set_event_loop(None)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a schema made for this test alone."""
    schema = f"t_{secrets.token_hex(6)}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(POSTGRES_URL, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        run_aside(admin(f"CREATE SCHEMA {schema}"))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        require_service("PostgreSQL at " + POSTGRES_URL, exc)
    separator = "&" if "?" in POSTGRES_URL else "?"
    yield f"{POSTGRES_URL}{separator}search_path={schema}"
    run_aside(admin(f"DROP SCHEMA {schema} CASCADE"))


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/market.db"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request) -> str:
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def order_store(io_loop: IOLoop, database_url: str) -> Iterator[OrderStore]:
    store = io_loop.run_sync(lambda: open_order_store(database_url, max_writers=8))
    yield store
    io_loop.run_sync(store.close)


@pytest.fixture
def fake_esi(io_loop: IOLoop) -> Iterator[Callable[..., Awaitable[FakeEsi]]]:
    """Start a FakeEsi on the test's loop: `esi = await fake_esi({region_id: orders}, **options)`."""
    started: list[FakeEsi] = []

    async def start(regions, **options) -> FakeEsi:
        server = FakeEsi(regions, **options)
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        io_loop.run_sync(server.stop)


@pytest.fixture
def servers() -> Iterator[Callable[..., ServerProcess]]:
    """Start server processes: `server = servers(env, cwd)`; killed at teardown if still up."""
    started: list[ServerProcess] = []

    def start(env: dict[str, str], cwd: Path, prefix: Sequence[str] = ()) -> ServerProcess:
        server = ServerProcess(env, cwd, prefix)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
        server._log.close()
