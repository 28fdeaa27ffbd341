"""Where market orders are kept: the `OrderStore` contract and `open_order_store(url)`.

Both implementations (SQLite, PostgreSQL) stage a region's pages as they arrive and swap the
region's rows in one transaction at the end, so a reader or a crash sees the old set or the new
set of a region, never a mix, and memory holds a few pages at most.
"""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from tornado_admin.settings import redact_url

SCHEMES = {"sqlite": "sqlite", "postgresql": "postgres", "postgres": "postgres"}
# Regions staged at once, whatever ESI_CONCURRENCY says: each holds a PostgreSQL connection,
# and PostgreSQL's default max_connections is 100 for every client together.
MAX_REGION_WRITERS = 16


class OrderStoreError(Exception):
    """The market database failed (unreachable, disk full, ...): the sweep cannot go on."""


class WriteWithdrawnError(OrderStoreError):
    """The writer's `may_write` said no at commit time: rolled back, nothing written."""


def check_may_write(may_write: Callable[[], bool] | None) -> None:
    """Inside a commit's transaction, as its last step: raise `WriteWithdrawnError` if refused."""
    if may_write is not None and not may_write():
        raise WriteWithdrawnError("the job's lease may have lapsed: region not committed")


@dataclass(frozen=True, slots=True)
class RegionState:
    """What the database holds about a region: enough to ask ESI conditionally next time."""

    region_id: int
    last_modified: dt.datetime | None
    expires: dt.datetime | None
    order_count: int
    fetched_at: dt.datetime
    etags: tuple[str, ...]  # one per page, page 1 first; empty when unknown


@dataclass(frozen=True, slots=True)
class RegionMeta:
    """Recorded with a region's orders in the same transaction."""

    last_modified: dt.datetime | None
    expires: dt.datetime | None
    fetched_at: dt.datetime
    etags: tuple[str, ...]


class RegionWriter(ABC):
    """One region's replacement in progress. Pages may come in any order; nothing is visible
    to readers until `commit`. After `commit` or `abort` the writer is spent."""

    @abstractmethod
    async def add_page(self, body: bytes) -> int:
        """Parse, validate and stage one page body (an ESI orders page); returns its order count.
        Raises `MalformedPageError` (nothing of the page staged) or `OrderStoreError`."""

    @abstractmethod
    async def commit(self, meta: RegionMeta, may_write: Callable[[], bool] | None = None) -> int:
        """Replace the region's orders by the staged ones (duplicate order ids kept once; an id
        already held by another region stays there) and record `meta`, in one transaction.
        Returns the number of orders the region now holds.

        `may_write` is asked inside the transaction, right before it commits: after any wait for
        a lock, so a writer frozen or stalled while another took its job over writes nothing.
        False rolls back and raises `WriteWithdrawnError`."""

    @abstractmethod
    async def abort(self) -> None:
        """Drop what was staged; the region keeps its previous orders. Never raises."""


class OrderStore(ABC):
    """The market tables (`market_orders`, `market_regions`) in one database."""

    @abstractmethod
    async def region_states(self) -> dict[int, RegionState]:
        """Every region recorded so far, by id."""

    @abstractmethod
    async def begin_region(self, region_id: int) -> RegionWriter:
        """Start replacing a region's orders."""

    @abstractmethod
    async def confirm_unchanged(
        self,
        region_id: int,
        expires: dt.datetime | None,
        fetched_at: dt.datetime,
        may_write: Callable[[], bool] | None = None,
    ) -> int:
        """ESI confirmed the region unchanged (all 304): move its expiry on, keep its orders.
        Returns the number of orders the region holds. `may_write` is asked inside the
        transaction, as in `RegionWriter.commit`."""

    @abstractmethod
    async def count_orders(self, region_id: int | None = None) -> int:
        """Orders held, in one region or in all."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise `OrderStoreError` unless the database answers."""

    @abstractmethod
    async def close(self) -> None:
        """Close connections; a writer still open is aborted."""


async def open_order_store(url: str, *, max_writers: int = 16) -> OrderStore:
    """Open (creating tables if needed) the store that `url`'s scheme names.

    `max_writers` bounds the regions that may be staged at once (PostgreSQL holds a connection
    for each). Raises `OrderStoreError` when the database cannot be reached or set up.
    """
    scheme = urlsplit(url).scheme
    kind = SCHEMES.get(scheme)
    if kind == "sqlite":
        from tornado_admin.market.orders_sqlite import SqliteOrderStore

        return await SqliteOrderStore.open(sqlite_path(url))
    if kind == "postgres":
        from tornado_admin.market.orders_postgres import PostgresOrderStore

        return await PostgresOrderStore.open(url, max_writers=min(max_writers, MAX_REGION_WRITERS))
    raise OrderStoreError(
        f"unsupported database URL {redact_url(url)!r}: use sqlite:///path or postgresql://…"
    )


def sqlite_path(url: str) -> str:
    """`sqlite:///relative.db` -> 'relative.db'; `sqlite:////abs.db` -> '/abs.db'."""
    path = url.split("://", 1)[1]
    if not path.startswith("/") or path == "/":
        raise OrderStoreError("a sqlite URL needs a path: sqlite:///relative.db or sqlite:////abs.db")
    return path[1:]
