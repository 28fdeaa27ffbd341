"""Tests on the shared Redis: a key prefix of the test's own, removed afterwards."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import REDIS_URL, require_service
from tests.server_helpers import free_port


def redis_url_for_test() -> str:
    """The test Redis with a key prefix of this test's own (removed afterwards)."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        require_service("Redis at " + REDIS_URL, exc)
    return f"{REDIS_URL}?prefix=test-instances-{secrets.token_hex(6)}"


def drop_redis_keys(url: str) -> None:
    prefix = url.split("prefix=", 1)[1]
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


class PrivateRedis:
    """A redis-server of this test alone, to stop and start at will."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.dir = tmp_path
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
            finally:
                client.close()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def private_redis(tmp_path) -> Iterator[PrivateRedis]:
    """A private redis-server, started; import this fixture into a test module to use it."""
    if shutil.which("redis-server") is None:
        require_service("redis-server (the binary)", FileNotFoundError("redis-server"))
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    if server.process and server.process.poll() is None:
        os.kill(server.process.pid, signal.SIGCONT)  # a test may have frozen it
    server.stop()
