"""What the signal tests share: a fake ESI that holds chosen pages, and reading a server's jobs
and a market database's regions."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from pathlib import Path

from tests.api_helpers import TOKEN
from tests.server_helpers import ServerProcess, poll
from tornado_admin.fake_esi import FakeEsi

AUTH = {"Authorization": f"Bearer {TOKEN}"}
LEASE_SECONDS = 3


# -- a fake ESI that holds chosen pages ----------------------------------------------------------


class Gate:
    """One held request: `arrived` once it is in, answered when the test calls `open`."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self._lock = threading.Lock()
        self._opened = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def open(self) -> None:
        with self._lock:
            self._opened = True
            for loop, event in self._waiters:
                loop.call_soon_threadsafe(event.set)

    async def wait(self) -> None:
        event = asyncio.Event()
        with self._lock:
            if self._opened:
                event.set()
            else:
                self._waiters.append((asyncio.get_running_loop(), event))
        self.arrived.set()
        await event.wait()


class GatedEsi(FakeEsi):
    """The fake ESI, holding the next request for a (region, page) until the test opens its gate.
    The answer is decided when the request arrives: a region updated meanwhile does not change
    it, so a held walk stays consistent (and stale)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._gates: dict[tuple[int, int], Gate] = {}
        self._all_gates: list[Gate] = []

    def hold(self, region_id: int, page: int) -> Gate:
        gate = Gate()
        self._gates[(region_id, page)] = gate
        self._all_gates.append(gate)
        return gate

    async def _serve(self, request, region_id, page, market, known=True):  # type: ignore[override]
        gate = self._gates.pop((region_id, page), None)
        response = await super()._serve(request, region_id, page, market, known)
        if gate is not None:
            await gate.wait()
        return response

    async def stop(self) -> None:
        for gate in self._all_gates:  # a held request must not hold the shutdown too
            gate.open()
        await super().stop()


# -- reading what the processes left behind ------------------------------------------------------


def held(database: Path) -> dict[int, set[int]]:
    """region_id -> the order ids the market database holds for it."""
    with contextlib.closing(sqlite3.connect(database)) as conn:
        rows = conn.execute("SELECT region_id, order_id FROM market_orders").fetchall()
    out: dict[int, set[int]] = {}
    for region_id, order_id in rows:
        out.setdefault(region_id, set()).add(order_id)
    return out


def region_rows(database: Path) -> dict[int, tuple]:
    with contextlib.closing(sqlite3.connect(database)) as conn:
        rows = conn.execute(
            "SELECT region_id, last_modified, order_count, fetched_at, etags FROM market_regions"
        )
        return {row[0]: row[1:] for row in rows}


def served(esi: FakeEsi, region_id: int) -> set[int]:
    return {order["order_id"] for order in esi.orders(region_id)}


def trigger(server: ServerProcess) -> str:
    code, body = server.request("/api/admin/trigger-fetch", "POST", AUTH)
    assert code == 202, body
    return body["jobId"]


def job(server: ServerProcess, job_id: str) -> dict:
    code, body = server.request(f"/api/admin/job-status/{job_id}", headers=AUTH)
    assert code == 200, body
    return body


def finished(server: ServerProcess, job_id: str, timeout: float = 20) -> dict:
    poll(lambda: job(server, job_id)["status"] != "running", timeout=timeout, what=f"job {job_id} ending")
    return job(server, job_id)


def messages(server: ServerProcess, job_id: str) -> list[str]:
    return [line["message"] for line in server.lines() if line.get("jobId") == job_id]
