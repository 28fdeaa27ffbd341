"""JSON log lines (python-json-logger) and the redaction filter that keeps secrets out of them.

The filter sits on the handler, so it sees every record whatever logger emitted it (ours,
Tornado's access log, aiohttp, asyncpg, warnings, uncaught tracebacks).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from typing import Any, TextIO

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

REDACTED = "[REDACTED]"
LEVELS = {
    "trace": 5, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
    "error": logging.ERROR, "fatal": logging.CRITICAL,
}
_CREDENTIAL = re.compile(r"(?i)\b(bearer|basic)(\s+)[^\s,;\"']+")
# The password runs to the last "@" of the URL: it may hold a "/" (base64), encoded or not.
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@\s]+@")
_SECRET_PARAM = re.compile(r"(?i)([?&](?:token|access_token|api_key|key|secret|password)=)[^&\s\"']+")
_RESERVED = frozenset(RESERVED_ATTRS) | {"message", "asctime"}


# The run a coroutine works for: set by the job runner, inherited by every task the run starts,
# so a line logged deep in the sweep ("Region failed") still names its job.
job_fields: ContextVar[Mapping[str, str] | None] = ContextVar("job_fields", default=None)


class JobFieldsFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        fields = job_fields.get()
        if fields:
            for name, value in fields.items():
                record.__dict__.setdefault(name, value)
        return True


class RedactingFilter(logging.Filter):
    """Replaces configured secrets, credentials after `Bearer `/`Basic ` and URL passwords with
    `[REDACTED]` in the message, its arguments, extra fields and any traceback."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # Longest first, so a secret that contains another is replaced whole.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        text = _CREDENTIAL.sub(lambda m: f"{m[1]}{m[2]}{REDACTED}", text)
        text = _URL_PASSWORD.sub(lambda m: f"{m[1]}{REDACTED}@", text)
        return _SECRET_PARAM.sub(lambda m: f"{m[1]}{REDACTED}", text)

    def _value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {self._value(k): self._value(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set):
            return [self._value(v) for v in value]
        if isinstance(value, int | float | bool) or value is None:
            return value
        return self.redact(str(value))

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the line, nor crash logging
            message = f"{record.msg!s} {record.args!r}"
        record.msg, record.args = self.redact(message), None
        if record.exc_info:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text, record.exc_info = self.redact(text), None
        elif record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for key, value in list(record.__dict__.items()):
            if key not in _RESERVED and not key.startswith("_"):
                record.__dict__[key] = self._value(value)
        return True


def json_handler(stream: TextIO, secrets: Iterable[str] = ()) -> logging.Handler:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            datefmt="%Y-%m-%dT%H:%M:%S%z",
        )
    )
    handler.addFilter(JobFieldsFilter())
    handler.addFilter(RedactingFilter(secrets))
    return handler


def configure_logging(
    level: str = "info", secrets: Iterable[str] = (), stream: TextIO | None = None
) -> logging.Handler:
    """Send every log record, warnings and uncaught exceptions to one JSON handler."""
    logging.addLevelName(LEVELS["trace"], "TRACE")
    handler = json_handler(stream or sys.stderr, secrets)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    # aiosqlite logs every statement at DEBUG: that would bury the app's own debug lines.
    logging.getLogger("aiosqlite").setLevel(max(LEVELS[level], logging.INFO))
    logging.captureWarnings(True)

    def excepthook(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
        logging.getLogger("tornado_admin").critical("Uncaught exception", exc_info=(kind, exc, tb))

    sys.excepthook = excepthook
    return handler
