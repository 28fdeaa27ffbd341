"""Signals against a real server process: SIGTERM during a sweep and during requests, SIGKILL in
the middle of a region's write, SIGSTOP past the lease. Every region must hold its old orders or
its new ones, never a mix, and every run must end recorded as the contract says."""

from __future__ import annotations

import contextlib
import json
import platform
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api_helpers import TOKEN
from tests.conftest import require_service
from tests.redis_helpers import drop_redis_keys, redis_url_for_test
from tests.server_helpers import ServerProcess, free_port, poll, server_env
from tests.signal_helpers import (
    AUTH,
    LEASE_SECONDS,
    GatedEsi,
    finished,
    held,
    job,
    messages,
    region_rows,
    served,
    trigger,
)
from tests.wire import connect, http_request, read_to_end


@pytest.fixture
def job_store_url(request, tmp_path) -> Iterator[str]:
    """The shared job store of the instances: `sqlite` or `redis` (with a key prefix of its own)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/jobs.db"
        return
    url = redis_url_for_test()
    yield url
    drop_redis_keys(url)


# -- SIGTERM -------------------------------------------------------------------------------------


def test_sigterm_mid_sweep_exits_0_records_the_run_interrupted_and_leaves_regions_whole(servers, tmp_path):
    regions = [10000002, 10000030, 10000032, 10000043]
    esi = GatedEsi(dict.fromkeys(regions, 1500), expires_seconds=0)  # 2 pages each, always stale
    database = tmp_path / "market.db"
    with esi.run_in_thread():
        env = server_env(tmp_path, esi.url, JOB_STORE_URL=f"sqlite:///{tmp_path}/jobs.db",
                         DATABASE_URL=f"sqlite:///{database}", ESI_CONCURRENCY="2")
        server = servers(env, tmp_path)
        server.wait_ready()
        assert finished(server, trigger(server))["status"] == "completed"
        old = {region: served(esi, region) for region in regions}
        for region in regions:
            esi.update_region(region)
        new = {region: served(esi, region) for region in regions}
        stuck = regions[1]
        gate = esi.hold(stuck, 2)  # page 1 of the new orders staged, page 2 never comes
        job_id = trigger(server)
        assert gate.arrived.wait(10)
        done = [region for region in regions if region != stuck]
        poll(lambda: all(held(database).get(r) == new[r] for r in done), what="the other regions")

        signalled = time.monotonic()
        assert server.stop(signal.SIGTERM, timeout=20) == 0
        assert time.monotonic() - signalled < 5  # the runner's own shutdown bound
        assert held(database) == {**{r: new[r] for r in done}, stuck: old[stuck]}
        assert {r: row[1] for r, row in region_rows(database).items()} == {r: 1500 for r in regions}
        assert "Manual job failed" in messages(server, job_id)

        # A new process on the same files: the run is recorded, nothing is left running.
        again = servers(env | {"PORT": str(free_port())}, tmp_path)
        again.wait_ready()
        record = job(again, job_id)
        assert (record["status"], record["error"]) == ("failed", "interrupted by shutdown")
        assert record["progress"] == {"regionsTotal": 4, "regionsDone": 3, "ordersStored": 4500}
        assert finished(again, trigger(again))["status"] == "completed"
        assert held(database) == new
        assert again.stop() == 0


def unread_by_server(server_port: int, client: socket.socket) -> int:
    """Bytes this client sent that the server process has not read yet (Linux's /proc/net/tcp)."""

    def address(host: str, port: int) -> str:
        return f"{socket.inet_aton(host)[::-1].hex().upper()}:{port:04X}"

    local, remote = address("127.0.0.1", server_port), address(*client.getsockname())
    try:
        table = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError as exc:
        require_service("/proc/net/tcp", exc)
    for line in table:
        fields = line.split()
        if fields[1] == local and fields[2] == remote:
            return int(fields[4].split(":")[1], 16)
    raise AssertionError("the connection is not in /proc/net/tcp")


def whole(data: bytes) -> dict | None:
    """The JSON body of a complete HTTP answer; None when the server sent nothing at all. Anything
    else (a status line without its body, a body shorter than its Content-Length) fails."""
    if not data:
        return None
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, data[:300]
    assert head.startswith(b"HTTP/1.1 "), data[:300]
    headers = dict(line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:])
    assert len(body) == int(headers["Content-Length"]), (headers, len(body))
    return {"status": int(head.split()[1]), "headers": headers, "body": json.loads(body)}


def test_sigterm_lets_a_request_in_flight_finish_and_refuses_new_connections(servers, tmp_path):
    server = servers(server_env(tmp_path), tmp_path)
    server.wait_ready()
    with connect(server.port, timeout=10) as in_flight, connect(server.port, timeout=10) as half_headers:
        sigterm_with_a_request_in_flight(server, in_flight, half_headers)
    assert server.lines()[-1]["message"] == "Server stopped"


def sigterm_with_a_request_in_flight(
    server: ServerProcess, in_flight: socket.socket, half_headers: socket.socket
) -> None:
    # Headers complete, body not: the request is in flight until the client sends its last byte.
    in_flight.sendall(http_request("POST", "/api/admin/trigger-fetch",
                                   [f"Authorization: Bearer {TOKEN}", "Content-Length: 2"], b"{"))
    # Headers incomplete: nothing in flight yet, so it is closed at once.
    half_headers.sendall(b"GET /api/admin/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    for sock in (in_flight, half_headers):
        poll(lambda sock=sock: unread_by_server(server.port, sock) == 0, what="the server reading")

    server.process.send_signal(signal.SIGTERM)

    def refused() -> bool:
        try:
            connect(server.port, timeout=1).close()
        except ConnectionRefusedError:
            return True
        return False

    poll(refused, what="the listener closing")
    assert server.process.poll() is None, "the server did not wait for the request in flight"
    assert whole(read_to_end(half_headers)) is None
    in_flight.sendall(b"}")
    answer = whole(read_to_end(in_flight))
    assert answer is not None
    assert (answer["status"], answer["body"]) == (503, {
        "error": "Service Unavailable", "message": "Server is shutting down, retry later"})
    assert "Retry-After" in answer["headers"]
    assert server.process.wait(timeout=10) == 0


def test_answers_across_sigterm_are_whole_or_absent(servers, tmp_path):
    server = servers(server_env(tmp_path), tmp_path)
    server.wait_ready()
    auth = f"Authorization: Bearer {TOKEN}"
    requests = [
        http_request("GET", "/api/admin/jobs?limit=5", [auth]),
        http_request("POST", "/api/admin/trigger-fetch", [auth]),
        http_request("GET", "/api/openapi.json"),
        http_request("GET", "/healthz"),
    ]
    answers: list[dict | None] = []
    failures: list[BaseException] = []

    def client(n: int) -> None:
        while server.process.poll() is None:
            data = requests[n % len(requests)]
            n += 1
            try:
                with connect(server.port, timeout=10) as sock:
                    sock.sendall(data)
                    answers.append(whole(read_to_end(sock)))
            except (ConnectionRefusedError, BrokenPipeError, ConnectionResetError):
                answers.append(None)  # refused, or closed before it read the request: no answer
            except BaseException as exc:  # an assertion in whole(): a cut answer
                failures.append(exc)
                return

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    poll(lambda: sum(a is not None for a in answers) >= 100, what="100 answers")
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=20) == 0
    for thread in threads:
        thread.join(timeout=20)
    assert not failures, failures[0]
    assert {a["status"] for a in answers if a} <= {200, 202, 409, 503}


# -- SIGKILL -------------------------------------------------------------------------------------


def wal_bytes(database: Path) -> int:
    try:
        return Path(f"{database}-wal").stat().st_size
    except FileNotFoundError:
        return 0


def test_sigkill_during_a_regions_write_leaves_it_whole_and_the_next_run_completes(servers, tmp_path):
    region, pages = 10000002, 100  # a swap of about 0.1 s, to kill in its middle
    esi = GatedEsi({region: pages * 1000}, expires_seconds=0)
    database = tmp_path / "market.db"
    with esi.run_in_thread():
        env = server_env(tmp_path, esi.url, JOB_STORE_URL=f"sqlite:///{tmp_path}/jobs.db",
                         DATABASE_URL=f"sqlite:///{database}", JOB_LEASE_SECONDS=str(LEASE_SECONDS))
        doomed = servers(env, tmp_path)
        doomed.wait_ready()
        assert finished(doomed, trigger(doomed))["status"] == "completed"
        # The market database's WAL holds nothing but region swaps (staging is in TEMP tables):
        # its size tells how far the next swap has gone.
        swap_bytes = wal_bytes(database)
        with contextlib.closing(sqlite3.connect(database)) as conn:
            assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
        assert wal_bytes(database) == 0
        old, old_row = served(esi, region), region_rows(database)
        esi.update_region(region)
        new = served(esi, region)
        gate = esi.hold(region, pages)
        job_id = trigger(doomed)
        assert gate.arrived.wait(10)  # every other page staged
        gate.open()
        # Half a swap's bytes in the WAL: its transaction is under way, some 50 ms from COMMIT.
        poll(lambda: wal_bytes(database) >= swap_bytes // 2 or region_rows(database) != old_row,
             what="the swap", interval=0.0005)
        doomed.process.kill()
        doomed.process.wait(timeout=10)
        killed = time.monotonic()
        assert held(database) == {region: old}
        assert region_rows(database) == old_row

        survivor = servers(env | {"PORT": str(free_port())}, tmp_path)
        survivor.wait_ready()
        poll(lambda: job(survivor, job_id)["status"] != "running", timeout=LEASE_SECONDS + 5,
             what="the killed run abandoned")
        assert time.monotonic() - killed <= LEASE_SECONDS + 2
        assert job(survivor, job_id)["error"] == "abandoned"
        result = finished(survivor, trigger(survivor))
        assert result["status"] == "completed"
        assert result["result"]["regions"]["fetched"] == 1
        assert held(database) == {region: new}
        assert survivor.stop() == 0


# -- SIGSTOP -------------------------------------------------------------------------------------

SLEEP_SYSCALLS = {"x86_64": {"35", "230"}, "aarch64": {"101", "115"}}  # nanosleep, clock_nanosleep


def sleeping_in_a_thread(pid: int) -> bool:
    """True when a thread of the process sleeps in nanosleep: in the server that is only SQLite's
    busy handler, waiting for a write lock (the event loop waits in epoll, idle threads on futexes)."""
    numbers = SLEEP_SYSCALLS.get(platform.machine())
    if numbers is None:
        require_service("a known syscall table", OSError(platform.machine()))
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "syscall").read_text().split()[0] in numbers:
                return True
        except (OSError, IndexError):  # the thread ended meanwhile
            continue
    return False


def stop(process) -> None:  # noqa: ANN001
    """SIGSTOP, then wait until every thread is stopped: kill() returns before a thread running on
    the other core has stopped, and such a thread could still take the lock about to be freed."""
    process.send_signal(signal.SIGSTOP)
    tasks = Path(f"/proc/{process.pid}/task")

    def all_stopped() -> bool:
        states = []
        for task in tasks.iterdir():
            try:
                states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
            except (OSError, IndexError):  # the thread ended meanwhile
                continue
        return all(state in ("T", "t") for state in states)

    poll(all_stopped, what="every thread stopped", interval=0.001)


@pytest.mark.parametrize(("job_store_url", "frozen_at"), [
    ("sqlite", "walk"), ("redis", "walk"), ("redis", "commit"),
], indirect=["job_store_url"])
def test_sigstop_past_the_lease_then_sigcont_writes_nothing_after_the_takeover(
    servers, tmp_path, job_store_url, frozen_at
):
    """A freezes mid-sweep longer than its lease, B takes the job over and completes, A thaws:
    A must notice, write nothing (its pages are older than B's), and stay recorded abandoned.
    `walk`: A froze waiting for its last page. `commit`: A froze with every page staged and its
    commit waiting for the database's write lock, after the sweep's own "may I write" check."""
    region = 10000002
    esi = GatedEsi({region: 3000}, expires_seconds=0)
    database = tmp_path / "market.db"
    with esi.run_in_thread():
        env = server_env(tmp_path, esi.url, JOB_STORE_URL=job_store_url,
                         DATABASE_URL=f"sqlite:///{database}", JOB_LEASE_SECONDS=str(LEASE_SECONDS))
        a = servers(env, tmp_path)
        b = servers(env | {"PORT": str(free_port())}, tmp_path)
        a.wait_ready()
        b.wait_ready()
        stale = served(esi, region)
        gate = esi.hold(region, 3)  # `walk`: A's last page waits, with the orders of now
        with contextlib.closing(sqlite3.connect(database, isolation_level=None)) as lock:
            if frozen_at == "commit":
                gate.open()
                lock.execute("BEGIN IMMEDIATE")  # A's commit waits for this write lock
            a_job = trigger(a)
            assert gate.arrived.wait(10)
            if frozen_at == "commit":
                poll(lambda: sleeping_in_a_thread(a.process.pid), what="A waiting for the write lock")
            stop(a.process)
            if lock.in_transaction:
                lock.execute("ROLLBACK")
        try:
            esi.update_region(region)  # B fetches newer orders than A holds
            fresh = served(esi, region)
            assert b.request("/api/admin/trigger-fetch", "POST", AUTH)[0] == 409  # A's lease is live

            def b_started() -> bool:
                code, body = b.request("/api/admin/trigger-fetch", "POST", AUTH)
                assert code in (202, 409), body
                b_job.append(body["jobId"])
                return code == 202

            b_job: list[str] = []
            poll(b_started, timeout=LEASE_SECONDS + 5, what="B starting a run", interval=0.05)
            assert finished(b, b_job[-1])["status"] == "completed"
            assert (job(b, a_job)["status"], job(b, a_job)["error"]) == ("failed", "abandoned")
            assert held(database) == {region: fresh}
            after_b = region_rows(database)
        finally:
            a.process.send_signal(signal.SIGCONT)
        gate.open()
        poll(lambda: {"Job lease lapsed before it could be renewed: stopping the work",
                      "Job lease lost: stopping its work"} & set(messages(a, a_job)),
             what="A noticing its lost lease")
        assert a.stop() == 0  # waits for A's run to end: nothing of A's can land after this
        assert stale != fresh
        assert held(database) == {region: fresh}
        assert region_rows(database) == after_b
        assert (job(b, a_job)["status"], job(b, a_job)["error"]) == ("failed", "abandoned")
        assert "Manual job completed successfully" not in messages(a, a_job)
        assert not [line for line in a.lines() if line["logger"] == "asyncio" and line["level"] == "ERROR"]
        assert b.stop() == 0


def test_a_run_whose_start_was_frozen_counts_its_lease_from_before_the_freeze(servers, tmp_path):
    """A's trigger reaches the store, which takes its time, then A freezes past the lease before the
    run is recorded: the store dates the lease from before the freeze, so it has lapsed when the
    run begins. A must count from there too, not from when the store answered, or it would run
    (and write) beside B, whom the store lets start at once."""
    region = 10000002
    esi = GatedEsi({region: 3000}, expires_seconds=0)
    database, jobs = tmp_path / "market.db", tmp_path / "jobs.db"
    with esi.run_in_thread():
        env = server_env(tmp_path, esi.url, JOB_STORE_URL=f"sqlite:///{jobs}",
                         DATABASE_URL=f"sqlite:///{database}", JOB_LEASE_SECONDS=str(LEASE_SECONDS))
        a = servers(env, tmp_path)
        b = servers(env | {"PORT": str(free_port())}, tmp_path)
        a.wait_ready()
        b.wait_ready()
        gate = esi.hold(region, 3)
        with connect(a.port, timeout=20) as a_trigger:
            with contextlib.closing(sqlite3.connect(jobs, isolation_level=None)) as lock:
                lock.execute("BEGIN IMMEDIATE")  # A's start waits for the job store's write lock
                a_trigger.sendall(http_request("POST", "/api/admin/trigger-fetch",
                                               [f"Authorization: Bearer {TOKEN}"]))
                poll(lambda: sleeping_in_a_thread(a.process.pid), what="A's start waiting")
                stop(a.process)
                lock.execute("ROLLBACK")
            try:
                # The lease has to pass in real time while A is frozen; nothing marks the moment.
                time.sleep(LEASE_SECONDS + 0.5)
            finally:
                a.process.send_signal(signal.SIGCONT)
            answer = whole(read_to_end(a_trigger))
        assert answer is not None
        assert answer["status"] == 202, answer
        a_job = answer["body"]["jobId"]
        noticed = {"Job lease lapsed before it could be renewed: stopping the work",
                   "Job lease lost: stopping its work", "Job lease lost before it finished"}
        poll(lambda: gate.arrived.is_set() or noticed & set(messages(a, a_job)), what="A's run going")
        if not gate.arrived.is_set():
            gate.open()  # A stopped before asking for its last page: B must not wait for it

        esi.update_region(region)  # B fetches newer orders than A would
        b_job = trigger(b)  # at once: the store sees A's lease lapsed
        assert (job(b, a_job)["status"], job(b, a_job)["error"]) == ("failed", "abandoned")
        assert finished(b, b_job)["status"] == "completed"
        fresh, after_b = held(database), region_rows(database)
        gate.open()  # A's stale last page, if A is still walking
        poll(lambda: noticed & set(messages(a, a_job)), what="A noticing its lapsed lease")
        assert a.stop() == 0
        assert fresh == {region: served(esi, region)}
        assert held(database) == fresh
        assert region_rows(database) == after_b
        assert (job(b, a_job)["status"], job(b, a_job)["error"]) == ("failed", "abandoned")
        assert b.stop() == 0
