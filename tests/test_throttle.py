"""The failed-authentication throttle: 429 past 10 failures a minute from one address, checked
before the token, never locking out the operator at another address, shared by instances."""

from __future__ import annotations

import http.client
import json

import pytest

from tests.api_helpers import TOKEN
from tests.redis_helpers import drop_redis_keys, redis_url_for_test
from tests.server_helpers import free_port, server_env

TOO_MANY = {"error": "Too Many Requests", "message": "Too many failed authentication attempts, retry later"}


def call(port: int, token: str | None, *, source: str = "127.0.0.1", path: str = "/api/admin/jobs",
         method: str = "GET") -> tuple[int, dict, http.client.HTTPMessage]:
    """One request from `source`: every 127.x address is this machine, seen by the server as
    a different client."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read()), response.headers
    finally:
        conn.close()


def test_past_ten_failures_an_address_gets_429_and_the_operator_elsewhere_does_not(servers, tmp_path):
    server = servers(server_env(tmp_path), tmp_path)
    server.wait_ready()
    wrong = TOKEN[:-1] + "X"
    for _ in range(10):
        assert call(server.port, wrong)[0] == 401
    assert call(server.port, wrong)[0] == 429  # the 11th failure: past 10 a minute
    assert call(server.port, None)[0] == 429  # every admin request from there, even without one

    status, body, headers = call(server.port, TOKEN)  # even the right token: no oracle
    assert (status, body) == (429, TOO_MANY)
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert call(server.port, TOKEN, source="127.0.0.2")[0] == 200  # the operator, elsewhere
    assert call(server.port, None, path="/healthz")[0] == 200  # not an admin route
    assert server.stop() == 0
    engaged = [line for line in server.lines() if line["message"] == "Failed-authentication throttle engaged"]
    assert len(engaged) == 1
    assert TOKEN not in server.output()


def test_a_request_without_credentials_is_not_a_failure(servers, tmp_path):
    server = servers(server_env(tmp_path), tmp_path)
    server.wait_ready()
    for _ in range(15):
        assert call(server.port, None)[0] == 401
    assert call(server.port, TOKEN)[0] == 200
    assert server.stop() == 0


def test_instances_on_one_redis_share_the_count(servers, tmp_path):
    url = redis_url_for_test()
    try:
        env = server_env(tmp_path, JOB_STORE_URL=url)
        first = servers(env, tmp_path)
        second = servers(env | {"PORT": str(free_port())}, tmp_path)
        first.wait_ready()
        second.wait_ready()
        for i in range(10):  # 5 failures at each instance
            assert call((first if i % 2 else second).port, "wrong-" + "x" * 40)[0] == 401
        assert call(first.port, "wrong-" + "x" * 40)[0] == 429  # the 11th, wherever it lands
        assert call(first.port, TOKEN)[0] == 429
        assert call(second.port, TOKEN)[0] == 429
        assert call(second.port, TOKEN, source="127.0.0.3")[0] == 200
        assert first.stop() == 0
        assert second.stop() == 0
    finally:
        drop_redis_keys(url)


@pytest.mark.parametrize("method", ["POST"])
def test_the_method_is_still_checked_first(servers, tmp_path, method):
    server = servers(server_env(tmp_path), tmp_path)
    server.wait_ready()
    for _ in range(11):
        call(server.port, "wrong-" + "y" * 40)
    assert call(server.port, TOKEN, method=method)[0] == 405  # GET-only route: 405 beats 429
    assert server.stop() == 0


def test_concurrent_failures_cannot_slip_past_the_limit_together(servers, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    server = servers(server_env(tmp_path, JOB_STORE_URL=f"sqlite:///{tmp_path}/jobs.db"), tmp_path)
    server.wait_ready()
    with ThreadPoolExecutor(30) as pool:
        codes = list(pool.map(lambda _: call(server.port, "wrong-" + "z" * 40)[0], range(60)))
    assert codes.count(401) == 10  # each failure is counted before it is judged
    assert codes.count(429) == 50
    assert server.stop() == 0
