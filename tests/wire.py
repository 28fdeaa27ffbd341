"""A raw HTTP/1.1 client for hostile-input tests: sends exactly the bytes given, from a fresh
loopback address each time (so the failed-authentication throttle never mixes cases)."""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

from tests.server_helpers import ServerProcess

# Loggers of the request path: an ERROR there is a 5xx or an exception while serving a request.
REQUEST_LOGGERS = {"tornado.access", "tornado.application", "tornado.general", "tornado_admin.api", "asyncio"}


# -- a raw HTTP/1.1 client -----------------------------------------------------------------------

_sources = itertools.count()


def fresh_source() -> str:
    """A loopback address no earlier connection of this session used (127.1.0.1 and up)."""
    n = next(_sources)
    return f"127.{1 + n // (254 * 256)}.{n // 254 % 256}.{n % 254 + 1}"


def connect(port: int, *, timeout: float = 5, source: str | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    # Not every system routes all of 127/8 to loopback (macOS): the default address, then.
    with contextlib.suppress(OSError):
        sock.bind((source or fresh_source(), 0))
    try:
        sock.connect(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    return sock


def as_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


def http_request(method: str | bytes, target: str | bytes, headers: Sequence[str | bytes] = (),
                 body: bytes = b"", *, version: bytes = b"HTTP/1.1") -> bytes:
    """The exact bytes of a request: `headers` are whole lines, sent as given."""
    lines = [as_bytes(method) + b" " + as_bytes(target) + b" " + version, b"Host: 127.0.0.1",
             b"Connection: close", *map(as_bytes, headers)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@dataclass
class Reply:
    status: int | None  # None: the server closed the connection without an answer
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> dict:
        assert self.header("Content-Type") == "application/json; charset=UTF-8", self
        assert self.header("Cache-Control") == "no-store", self
        return json.loads(self.body)


def parse_reply(data: bytes) -> Reply:
    if not data:
        return Reply(None)
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    version, status, *_ = status_line.split(" ", 2)
    assert version == "HTTP/1.1", data[:200]
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(int(status), headers, body)


def read_to_end(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:  # after the answer, when the server closed with unread input
        pass
    return data


def exchange(port: int, data: bytes, *, timeout: float = 5) -> Reply:
    """Send `data` on a fresh connection from a fresh address; the answer once the server closes."""
    with connect(port, timeout=timeout) as sock:
        sock.sendall(data)
        return parse_reply(read_to_end(sock))


class Wire:
    """The module's server, and what a test needs to talk to it raw."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.port = server.port
        self.log_mark = len(server.output())

    def send(self, data: bytes, *, timeout: float = 5) -> Reply:
        return exchange(self.port, data, timeout=timeout)

    def request(self, method: str | bytes, target: str | bytes, headers: Sequence[str | bytes] = (),
                body: bytes = b"") -> Reply:
        return self.send(http_request(method, target, headers, body))

    def assert_alive(self) -> None:
        assert self.server.process.poll() is None, self.server.output()[-2000:]
        reply = self.request("GET", "/healthz")
        assert (reply.status, reply.json()) == (200, {"status": "ok"})
        # Whole lines only: the last one may be still being written (our /healthz's access line).
        text = self.server.output()[self.log_mark:]
        new = [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines() if line.strip()]
        bad = [line for line in new if line.get("level") == "CRITICAL"
               or (line.get("level") == "ERROR" and line.get("logger") in REQUEST_LOGGERS)]
        assert not bad, bad
