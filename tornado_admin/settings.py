"""Settings: read once at startup from the environment and env files into one frozen object.

Nothing else in the app reads the environment. A bad value raises `SettingsError` naming the
variable (never its value, which may be a secret).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import dotenv_values

from tornado_admin import __version__

# The newest compatibility date of the ESI spec this code was written against (shared/esi).
DEFAULT_COMPATIBILITY_DATE = "2026-08-04"
DEFAULT_ESI_BASE_URL = "https://esi.evetech.net"
LOCAL_ENV_FILE = ".env.local"
LOG_LEVELS = ("trace", "debug", "info", "warn", "error", "fatal")
# The example values of the operator docs: a deploy that copied one must not start.
PLACEHOLDER_TOKENS = frozenset(
    {"your-admin-token", "your-secret-token", "your-token-here", "changeme", "admin-token"}
)
MIN_TOKEN_LENGTH = 32
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class SettingsError(ValueError):
    """A configuration value is missing or invalid; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    admin_tokens: tuple[str, ...] = ()
    cron_secret: str | None = field(default=None, repr=False)
    job_store_url: str = "memory://"
    database_url: str = "sqlite:///data/market.db"
    esi_base_url: str = DEFAULT_ESI_BASE_URL
    esi_user_agent: str = f"tornado-admin/{__version__}"
    esi_compatibility_date: str = DEFAULT_COMPATIBILITY_DATE
    esi_regions: tuple[int, ...] | None = None  # None: every id from /universe/regions
    esi_concurrency: int = 16
    fetch_interval_seconds: int = 1800
    scheduler_enabled: bool = True
    job_max_duration_seconds: int = 600
    job_lease_seconds: int = 60
    job_history_limit: int = 100
    host: str = "127.0.0.1"
    port: int = 3000
    log_level: str = "info"
    metrics_public: bool = False  # GET /metrics without the admin token

    def __repr__(self) -> str:  # tokens and URL passwords must never reach a log line
        return f"Settings(database={redact_url(self.database_url)}, store={redact_url(self.job_store_url)})"

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every configured secret value, for the log redaction filter."""
        found = [*self.admin_tokens, self.cron_secret or ""]
        found += [url_password(u) or "" for u in (self.job_store_url, self.database_url)]
        return tuple(s for s in found if s)


def load_settings(
    environ: Mapping[str, str] | None = None, env_files: Sequence[str | os.PathLike] = ()
) -> Settings:
    """Merge env files (later ones win), then `.env.local`, then the environment; validate."""
    merged: dict[str, str] = {}
    for path in [*env_files, LOCAL_ENV_FILE]:
        if Path(path).is_file():
            merged.update({k: v for k, v in dotenv_values(path).items() if v is not None})
        elif path != LOCAL_ENV_FILE:
            raise SettingsError(f"env file {path} does not exist")
    # An empty variable counts as unset (as `docker run -e NAME=` leaves it), so it does not
    # hide a value from the files.
    merged.update({k: v for k, v in (os.environ if environ is None else environ).items() if v.strip()})
    return settings_from(merged)


def settings_from(env: Mapping[str, str]) -> Settings:
    def get(name: str) -> str | None:
        value = env.get(name, "").strip()
        return value or None

    base = get("ESI_API_BASE_URL") or DEFAULT_ESI_BASE_URL
    return Settings(
        admin_tokens=_tokens(get("ADMIN_TOKEN")),
        cron_secret=_cron_secret(get("CRON_SECRET")),
        job_store_url=_url(
            "JOB_STORE_URL", get("JOB_STORE_URL") or "memory://",
            ("memory", "sqlite", "redis", "rediss"),
        ),
        database_url=_url(
            "DATABASE_URL", get("DATABASE_URL") or "sqlite:///data/market.db",
            ("sqlite", "postgresql", "postgres"),
        ),
        esi_base_url=_url("ESI_API_BASE_URL", base, ("http", "https")).rstrip("/"),
        esi_user_agent=get("ESI_USER_AGENT") or f"tornado-admin/{__version__}",
        esi_compatibility_date=_date(
            "ESI_COMPATIBILITY_DATE", get("ESI_COMPATIBILITY_DATE") or DEFAULT_COMPATIBILITY_DATE
        ),
        esi_regions=_regions(get("ESI_REGIONS") or "all"),
        esi_concurrency=_int("ESI_CONCURRENCY", get("ESI_CONCURRENCY"), 16, 1, 256),
        fetch_interval_seconds=_int(
            "FETCH_INTERVAL_SECONDS", get("FETCH_INTERVAL_SECONDS"), 1800, 1, 7 * 86400
        ),
        scheduler_enabled=_bool("SCHEDULER_ENABLED", get("SCHEDULER_ENABLED"), True),
        job_max_duration_seconds=_int(
            "JOB_MAX_DURATION_SECONDS", get("JOB_MAX_DURATION_SECONDS"), 600, 1, 86400
        ),
        job_lease_seconds=_int("JOB_LEASE_SECONDS", get("JOB_LEASE_SECONDS"), 60, 3, 3600),
        job_history_limit=_int("JOB_HISTORY_LIMIT", get("JOB_HISTORY_LIMIT"), 100, 1, 100_000),
        host=get("HOST") or "127.0.0.1",
        port=_int("PORT", get("PORT"), 3000, 0, 65535),
        log_level=_choice("LOG_LEVEL", (get("LOG_LEVEL") or "info").lower(), LOG_LEVELS),
        metrics_public=_bool("METRICS_PUBLIC", get("METRICS_PUBLIC"), False),
    )


def _tokens(raw: str | None) -> tuple[str, ...]:
    if raw is None:
        return ()
    tokens = tuple(t.strip() for t in raw.split(",") if t.strip())
    for token in tokens:
        if token.lower() in PLACEHOLDER_TOKENS:
            raise SettingsError(
                "ADMIN_TOKEN holds a placeholder from the documentation; "
                "generate one with: openssl rand -base64 32"
            )
        if len(token) < MIN_TOKEN_LENGTH:
            raise SettingsError(
                f"ADMIN_TOKEN must be at least {MIN_TOKEN_LENGTH} characters "
                "(each one, when several are comma-separated)"
            )
        if not _HEADER_SAFE.fullmatch(token):
            # A header carries it: anything else could never be sent, or sent differently.
            raise SettingsError("ADMIN_TOKEN must be printable ASCII without spaces")
    return tokens


def _cron_secret(raw: str | None) -> str | None:
    if raw is not None and not _HEADER_SAFE.fullmatch(raw):
        raise SettingsError("CRON_SECRET must be printable ASCII without spaces")
    return raw


def _url(name: str, value: str, schemes: tuple[str, ...]) -> str:
    try:
        scheme = urlsplit(value).scheme
    except ValueError:
        scheme = ""
    if scheme not in schemes:
        raise SettingsError(f"{name} must start with one of {', '.join(s + '://' for s in schemes)}")
    userinfo, at, _ = value.split("://", 1)[1].rpartition("@")
    if at and any(c in userinfo for c in "/?#"):
        # Unencoded, these end the host part early: the password would be read as a path, and
        # neither parsed nor redacted as a password.
        raise SettingsError(f"{name} must percent-encode '/', '?' and '#' in its user name and password")
    return value


def _int(name: str, raw: str | None, default: int, low: int, high: int) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}")
    return value


def _bool(name: str, raw: str | None, default: bool) -> bool:
    if raw is None:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise SettingsError(f"{name} must be true or false")


def _choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}")
    return value


def _date(name: str, value: str) -> str:
    # fromisoformat alone also takes "20260804" and "2026-W32-1": not what the header wants.
    try:
        valid = re.fullmatch(r"\d{4}-\d{2}-\d{2}", value) is not None and bool(dt.date.fromisoformat(value))
    except ValueError:
        valid = False
    if not valid:
        raise SettingsError(f"{name} must be a date, YYYY-MM-DD")
    return value


def _regions(raw: str) -> tuple[int, ...] | None:
    if raw.lower() == "all":
        return None
    try:
        ids = tuple(dict.fromkeys(int(part) for part in raw.split(",") if part.strip()))
    except ValueError:
        raise SettingsError("ESI_REGIONS must be 'all' or a comma-separated list of region ids") from None
    if not ids or any(i <= 0 for i in ids):
        raise SettingsError("ESI_REGIONS must be 'all' or a comma-separated list of region ids")
    return ids


def url_password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def redact_url(url: str) -> str:
    """The URL with its password replaced, for log lines and error messages."""
    password = url_password(url)
    return url.replace(f":{password}@", ":[REDACTED]@") if password else url
