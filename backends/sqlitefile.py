"""Setting up an SQLite file that other processes may be setting up at the same moment."""

from __future__ import annotations

import asyncio
import sqlite3

import aiosqlite

SETUP_ATTEMPTS = 50
SETUP_PAUSE_SECONDS = 0.1


async def set_up(conn: aiosqlite.Connection, schema: str, *, busy_timeout_ms: int) -> None:
    """busy_timeout, WAL, synchronous=NORMAL (durable in WAL but for the last commits before a
    power loss), then the schema. Switching to WAL takes a lock that does not wait for the busy
    timeout, so two servers starting together on a new file retry here instead of failing."""
    await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    for attempt in range(SETUP_ATTEMPTS):
        try:
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute("PRAGMA synchronous = NORMAL")
            await conn.executescript(schema)
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == SETUP_ATTEMPTS - 1:
                raise
            await asyncio.sleep(SETUP_PAUSE_SECONDS)
