"""Tests on the shared Redis: a key prefix of the test's own, removed afterwards."""

from __future__ import annotations

import secrets

import redis

from tests.conftest import REDIS_URL, require_service


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
