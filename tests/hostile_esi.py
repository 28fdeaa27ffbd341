"""A raw asyncio HTTP/1.1 server that answers ESI's market routes and misbehaves on purpose, in the
ways the fake ESI (an aiohttp.web app) cannot: silence, a byte at a time, endless or compressed
bodies, garbage where HTTP should be.

Every region answers "ok" (one valid page of new orders each request) until a test gives it a
behaviour: `server.behave(region_id, "silent")`; "regions" is the key of `/universe/regions`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import itertools
import os
import re
from dataclasses import dataclass

import orjson

LAST_MODIFIED = "Sat, 01 Aug 2026 10:00:00 GMT"
BEHAVIOURS = (
    "ok",               # 200, one page of valid orders, X-Pages: 1
    "garbage",          # 200 application/json, random bytes
    "html",             # 200 text/html, a proxy's error page
    "escapes",          # 400 whose JSON error message holds terminal escapes and a newline
    "not-http",         # random bytes where the status line should be
    "no-x-pages",       # "ok" without an X-Pages header
    "x-pages:",         # "ok" with X-Pages set to what follows the colon
    "header:",          # "ok" plus the header "header:<name>:<value>" names
    "silent",           # reads the request, never answers
    "trickle-head",     # the whole response, one byte every `trickle_seconds`
    "trickle-body",     # the head at once, then the body one byte every `trickle_seconds`
    "endless",          # 200 chunked, 64 KiB chunks until the client hangs up
    "endless-head",     # a status line, then header lines until the client hangs up
    "gzip-bomb",        # 200 gzip: about 1 MiB on the wire, 1 GiB decompressed
)  # fmt: skip
_REQUEST_LINE = re.compile(rb"GET (/[^ ?]*)(?:\?(\S*))? HTTP/1\.[01]")
_MARKET_PATH = re.compile(r"/markets/(\d+)/orders/?")
_CHUNK = b"\0" * 65536
# One gzip member of 16 MiB of zeros (about 16 KB); 64 members in a row are one valid gzip body.
_BOMB_MEMBER = gzip.compress(b"\0" * (16 << 20), compresslevel=9)
BOMB_DECOMPRESSED_BYTES = 64 * (16 << 20)


@dataclass
class Request:
    path: str
    region_id: int | None
    behaviour: str


class HostileEsi:
    """`await server.start()`, point an EsiClient at `server.url`, `await server.stop()`."""

    def __init__(self, region_ids: tuple[int, ...], *, orders_per_page: int = 5,
                 trickle_seconds: float = 0.05) -> None:
        self.region_ids = region_ids
        self.orders_per_page = orders_per_page
        self.trickle_seconds = trickle_seconds
        self.behaviours: dict[int | str, str] = {}
        self.requests: list[Request] = []
        self.bytes_sent = 0
        self.open_connections = 0
        self._served = 0  # each "ok" answer carries new order ids, so a stored page shows
        self.last_orders: dict[int, list[dict]] = {}  # the last page served to each region
        self._server: asyncio.Server | None = None
        self._handlers: dict[asyncio.Task, asyncio.StreamWriter] = {}
        self._bomb = _BOMB_MEMBER * (BOMB_DECOMPRESSED_BYTES // (16 << 20))

    def behave(self, key: int | str, behaviour: str) -> None:
        if not behaviour.startswith(BEHAVIOURS):
            raise ValueError(f"unknown behaviour {behaviour!r}")
        self.behaviours[key] = behaviour

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        # Closing the sockets ends every handler by itself: a cancelled handler task would make
        # asyncio's start_server callback log an error (Python 3.11).
        for writer in self._handlers.values():
            writer.close()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=5)
        if self._server is not None:
            await self._server.wait_closed()

    def orders(self, region_id: int, serial: int) -> list[dict]:
        first = region_id * 1_000_000 + serial * self.orders_per_page
        return [
            {"order_id": first + i, "type_id": 34, "location_id": 60003760, "system_id": 30000142,
             "volume_total": 100, "volume_remain": 50, "min_volume": 1, "price": 5.25,
             "is_buy_order": False, "duration": 90, "issued": "2026-08-01T09:00:00Z",
             "range": "region"}
            for i in range(self.orders_per_page)
        ]  # fmt: skip

    # -- the connection --------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._handlers[asyncio.current_task()] = writer
        self.open_connections += 1
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client hung up: exactly what a hostile test expects it to do
        finally:
            self._handlers.pop(asyncio.current_task(), None)
            self.open_connections -= 1
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; False when the connection must end."""
        head = await reader.readuntil(b"\r\n\r\n")
        match = _REQUEST_LINE.match(head)
        if match is None:
            return False
        path = match.group(1).decode()
        market = _MARKET_PATH.fullmatch(path)
        region_id = int(market.group(1)) if market else None
        key: int | str = region_id if region_id is not None else "regions"
        behaviour = self.behaviours.get(key, "ok")
        self.requests.append(Request(path, region_id, behaviour))
        if behaviour in ("ok", "no-x-pages") or behaviour.startswith(("x-pages:", "header:")):
            await self._send(writer, self._page(region_id, behaviour))
            return True  # keep-alive, as ESI does
        # Hostile answers run until done or until the client hangs up, whichever comes first.
        answer = asyncio.ensure_future(self._hostile(writer, region_id, behaviour))
        hangup = asyncio.ensure_future(reader.read())
        try:
            await asyncio.wait({answer, hangup}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (answer, hangup):
                task.cancel()
            await asyncio.gather(answer, hangup, return_exceptions=True)
        return False

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        self.bytes_sent += len(data)
        await writer.drain()

    def _page(self, region_id: int | None, behaviour: str) -> bytes:
        if region_id is None:
            body = orjson.dumps(list(self.region_ids))
            return _response(body, "application/json")
        self._served += 1
        extra = {"Last-Modified": LAST_MODIFIED}
        if behaviour == "ok":
            extra["X-Pages"] = "1"
        elif behaviour.startswith("x-pages:"):
            extra["X-Pages"] = behaviour.partition(":")[2]
        elif behaviour.startswith("header:"):
            _, name, value = behaviour.split(":", 2)
            extra.update({"X-Pages": "1", name: value})
        self.last_orders[region_id] = self.orders(region_id, self._served)
        return _response(orjson.dumps(self.last_orders[region_id]), "application/json", extra)

    async def _hostile(self, writer: asyncio.StreamWriter, region_id: int | None, behaviour: str) -> None:
        json_type = "application/json; charset=UTF-8"
        if behaviour == "silent":
            await asyncio.Future()  # until the client hangs up
        elif behaviour == "garbage":
            await self._send(writer, _response(os.urandom(4096), json_type, close=True))
        elif behaviour == "html":
            html = b"<html><body><h1>Service temporarily unavailable</h1></body></html>"
            await self._send(writer, _response(html, "text/html; charset=utf-8", close=True))
        elif behaviour == "escapes":
            body = orjson.dumps({"error": "bad \x1b[2J\x1b]0;owned\x07request\nforged log line"})
            await self._send(writer, _head(400, {"Content-Type": json_type, "Content-Length": str(len(body))})
                             + body)
        elif behaviour == "not-http":
            await self._send(writer, os.urandom(512))
        elif behaviour.startswith("trickle"):
            whole = self._page(region_id, "ok")
            split = whole.index(b"\r\n\r\n") + 4 if behaviour == "trickle-body" else 0
            await self._send(writer, whole[:split])
            for offset in range(split, len(whole)):
                await asyncio.sleep(self.trickle_seconds)
                await self._send(writer, whole[offset : offset + 1])
        elif behaviour == "endless":
            await self._send(writer, _head(200, {"Content-Type": json_type, "Transfer-Encoding": "chunked"}))
            chunk = b"%x\r\n%s\r\n" % (len(_CHUNK), _CHUNK)
            while True:
                await self._send(writer, chunk)
        elif behaviour == "endless-head":
            await self._send(writer, b"HTTP/1.1 200 OK\r\n")
            for n in itertools.count():
                await self._send(writer, b"X-Filler-%d: %s\r\n" % (n, b"f" * 100))
        elif behaviour == "gzip-bomb":
            headers = {"Content-Type": json_type, "Content-Encoding": "gzip",
                       "Content-Length": str(len(self._bomb)), "X-Pages": "1"}
            await self._send(writer, _head(200, headers) + self._bomb)
        await asyncio.Future()  # answered: hold the connection until the client closes it


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _response(body: bytes, content_type: str, extra: dict[str, str] | None = None, *,
              close: bool = False) -> bytes:
    headers = {"Content-Type": content_type, "Content-Length": str(len(body)), **(extra or {})}
    if close:
        headers["Connection"] = "close"
    return _head(200, headers) + body


def fd_count() -> int:
    """Open file descriptors of this process (sockets included)."""
    return len(os.listdir("/proc/self/fd"))
