"""JSON log lines, and secrets redacted wherever a record carries them."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from tests.secrets_sweep import secret
from tornado_admin.logs import configure_logging

TOKEN = secret("t0ken-" + "x" * 40)
secret("pg-password")


@pytest.fixture
def captured():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, sys.excepthook)
    configure_logging("debug", [TOKEN, "pg-password"], stream=stream)
    yield stream
    logging.captureWarnings(False)
    root.handlers[:], root.level, sys.excepthook = saved


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_each_record_is_one_json_object_with_its_extra_fields(captured):
    logging.getLogger("tornado_admin.test").info(
        "Sweep progress\nsecond line", extra={"jobId": "abc", "progress": {"regionsDone": 3}}
    )
    [line] = lines(captured)
    assert line["message"] == "Sweep progress\nsecond line"
    assert (line["level"], line["logger"], line["jobId"]) == ("INFO", "tornado_admin.test", "abc")
    assert line["progress"] == {"regionsDone": 3}
    assert "time" in line


@pytest.mark.raw_secrets_in_log_records
def test_secrets_are_redacted_in_message_arguments_extras_and_tracebacks(captured):
    log = logging.getLogger("anything.at.all")
    log.warning("token %s", TOKEN, extra={"header": f"Bearer {TOKEN}", "nested": {"k": [TOKEN]}})
    log.info("auth header was %r", "basic dXNlcjpwYXNz")
    log.info("connecting to %s", "postgresql://app:pg-password@db:5432/market")
    log.info("and to redis://:ab/cd+pg-password/x@cache:6379/0")
    log.info("GET /api/admin/jobs?token=abcdef123&limit=5")
    try:
        raise ValueError(f"bad credentials {TOKEN}")
    except ValueError:
        log.exception("failed")
    text = captured.getvalue()
    assert TOKEN not in text
    assert "pg-password" not in text
    assert "dXNlcjpwYXNz" not in text
    assert "abcdef123" not in text
    out = lines(captured)
    assert out[0]["header"] == "Bearer [REDACTED]"
    assert out[0]["nested"] == {"k": ["[REDACTED]"]}
    assert out[2]["message"] == "connecting to postgresql://app:[REDACTED]@db:5432/market"
    assert out[3]["message"] == "and to redis://:[REDACTED]@cache:6379/0"
    assert out[4]["message"] == "GET /api/admin/jobs?token=[REDACTED]&limit=5"
    assert "ValueError: bad credentials [REDACTED]" in out[5]["exc_info"]


def test_warnings_become_log_lines(captured):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn(f"careful with {TOKEN}", UserWarning, stacklevel=1)
    [line] = lines(captured)
    assert line["logger"] == "py.warnings"
    assert "careful with [REDACTED]" in line["message"]
