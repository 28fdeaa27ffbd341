"""Settings: defaults, the precedence of env files, and one clear error per bad value."""

from __future__ import annotations

import pytest

from tornado_admin.settings import Settings, SettingsError, load_settings, redact_url, settings_from

TOKEN = "k" * 40


def test_defaults_follow_the_design():
    settings = settings_from({})
    assert settings == Settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 3000)
    assert settings.job_store_url == "memory://"
    assert settings.database_url == "sqlite:///data/market.db"
    assert settings.esi_base_url == "https://esi.evetech.net"
    assert settings.esi_regions is None
    assert (settings.esi_concurrency, settings.fetch_interval_seconds) == (16, 1800)
    assert settings.esi_user_agent.startswith("tornado-admin/")


def test_values_are_parsed():
    settings = settings_from({
        "ADMIN_TOKEN": f"{TOKEN}, {'m' * 32}", "ESI_REGIONS": "10000002, 10000043,10000002",
        "ESI_API_BASE_URL": "https://esi.evetech.net/latest/", "SCHEDULER_ENABLED": "False",
        "LOG_LEVEL": "WARN", "PORT": "8080",
    })
    assert settings.admin_tokens == (TOKEN, "m" * 32)
    assert settings.esi_regions == (10000002, 10000043)
    assert settings.esi_base_url == "https://esi.evetech.net/latest"
    assert settings.scheduler_enabled is False
    assert (settings.log_level, settings.port) == ("warn", 8080)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ESI_CONCURRENCY": "0"}, "ESI_CONCURRENCY must be between 1 and 256"),
        ({"ESI_CONCURRENCY": "many"}, "ESI_CONCURRENCY must be an integer"),
        ({"PORT": "70000"}, "PORT must be between 0 and 65535"),
        ({"SCHEDULER_ENABLED": "maybe"}, "SCHEDULER_ENABLED must be true or false"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL must be one of trace, debug, info, warn, error, fatal"),
        ({"ESI_REGIONS": "10000002,the-forge"}, "ESI_REGIONS must be 'all' or a comma-separated"),
        ({"ESI_COMPATIBILITY_DATE": "yesterday"}, "ESI_COMPATIBILITY_DATE must be a date"),
        ({"ESI_COMPATIBILITY_DATE": "20260804"}, "ESI_COMPATIBILITY_DATE must be a date"),
        ({"ESI_COMPATIBILITY_DATE": "2026-W32-1"}, "ESI_COMPATIBILITY_DATE must be a date"),
        ({"JOB_STORE_URL": "mongodb://x"}, "JOB_STORE_URL must start with one of memory://"),
        ({"DATABASE_URL": "mysql://u:pw@h/db"}, "DATABASE_URL must start with one of sqlite://"),
        ({"ADMIN_TOKEN": "your-admin-token"}, "ADMIN_TOKEN holds a placeholder"),
        ({"JOB_STORE_URL": "redis://:ab/cd+Secret9x@127.0.0.1:1/0"}, "JOB_STORE_URL must percent-encode"),
        ({"DATABASE_URL": "postgresql://app:x?y@db/market"}, "DATABASE_URL must percent-encode"),
        ({"ADMIN_TOKEN": f"{TOKEN},short-one"}, "ADMIN_TOKEN must be at least 32 characters"),
    ],
)
def test_a_bad_value_names_the_variable_and_never_the_value(env, message):
    with pytest.raises(SettingsError) as caught:
        settings_from(env)
    assert message in str(caught.value)
    for value in env.values():
        for part in value.split(","):
            assert part not in str(caught.value) or part in message


def test_env_files_then_local_file_then_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base.env").write_text("PORT=4000\nESI_CONCURRENCY=4\nLOG_LEVEL=debug\n")
    (tmp_path / ".env.local").write_text("ESI_CONCURRENCY=5\nLOG_LEVEL=error\n")
    settings = load_settings({"LOG_LEVEL": "warn"}, env_files=["base.env"])
    assert (settings.port, settings.esi_concurrency, settings.log_level) == (4000, 5, "warn")


def test_a_missing_env_file_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SettingsError, match="env file nowhere.env does not exist"):
        load_settings({}, env_files=["nowhere.env"])


def test_secrets_are_known_but_never_shown():
    settings = settings_from({
        "ADMIN_TOKEN": TOKEN, "CRON_SECRET": "cron-secret-value",
        "JOB_STORE_URL": "redis://:redis-pw@localhost:6379/0",
        "DATABASE_URL": "postgresql://app:pg-pw@db/market",
    })
    assert set(settings.secrets) == {TOKEN, "cron-secret-value", "redis-pw", "pg-pw"}
    shown = repr(settings) + str(settings)
    assert not any(secret in shown for secret in settings.secrets)
    assert redact_url("postgresql://app:pg-pw@db/market") == "postgresql://app:[REDACTED]@db/market"
