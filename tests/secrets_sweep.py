"""The secrets sweep: after every test, its captured stdout, stderr and log records, and every log
file it left in its temporary directory (server processes write theirs there), are searched for
the secrets the suite uses. Any occurrence fails that test, naming where it was found.

Server processes started through `tests.server_helpers.ServerProcess` register their log files,
which are read as they grow wherever they are.

A test that invents a secret of its own registers it with `secret(value)`; the shared ones are
listed here. Tests whose very subject is a raw secret in a log call (the redaction tests) mark
themselves `raw_secrets_in_log_records`: only pytest's raw view of their records is then exempt,
never their stdout, stderr or files.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.api_helpers import CRON_SECRET, OTHER_TOKEN, TOKEN
from tests.server_helpers import LOG_FILES

SECRETS: set[str] = {TOKEN, OTHER_TOKEN, CRON_SECRET}
LOG_SUFFIXES = (".log", ".out", ".err", ".txt", ".jsonl")
MAX_FILE_BYTES = 50_000_000
_read_up_to: dict[Path, int] = {}  # server logs outside tmp_path, read as they grow


def secret(value: str) -> str:
    """Register a secret a test invents (a password in a URL, a cron secret) and return it."""
    SECRETS.add(value)
    return value


def _leaks(text: str) -> list[str]:
    return sorted(s for s in SECRETS if s in text)


def _log_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return [p for p in directory.rglob("*") if p.suffix in LOG_SUFFIXES and p.is_file()
            and p.stat().st_size <= MAX_FILE_BYTES]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "raw_secrets_in_log_records: the test logs secrets on purpose to see them redacted"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # noqa: ANN201
    outcome = yield
    report = outcome.get_result()
    if report.when != "teardown" or report.failed:
        return
    found: list[str] = []
    raw_ok = item.get_closest_marker("raw_secrets_in_log_records") is not None
    for title, content in report.sections:  # the teardown report carries every phase's capture
        if raw_ok and title.startswith("Captured log"):
            continue
        found += [f"{title}: {name_of(s)}" for s in _leaks(content)]
    tmp = getattr(item, "funcargs", {}).get("tmp_path")
    if isinstance(tmp, Path):
        for path in _log_files(tmp):
            text = path.read_text(errors="replace")
            found += [f"{path.name}: {name_of(s)}" for s in _leaks(text)]
    for path in LOG_FILES:  # servers of module fixtures, or with their files outside tmp_path
        found += [f"{path.name}: {name_of(s)}" for s in _leaks(_new_text(path))]
    if found:
        report.outcome = "failed"
        report.longrepr = "secrets sweep: a test secret appeared in output:\n  " + "\n  ".join(found)
        # The report shows the captured output next to the finding: not the secret again.
        report.sections = [(title, _scrub(content)) for title, content in report.sections]


def _new_text(path: Path) -> str:
    """What the file gained since it was last read (it may have been deleted since)."""
    try:
        with path.open("rb") as file:
            file.seek(_read_up_to.get(path, 0))
            data = file.read(MAX_FILE_BYTES)
    except OSError:
        return ""
    _read_up_to[path] = _read_up_to.get(path, 0) + len(data)
    return data.decode(errors="replace")


def _scrub(text: str) -> str:
    for value in SECRETS:
        text = text.replace(value, "[SECRET]")
    return text


def name_of(value: str) -> str:
    """How a finding names the secret: never the secret itself."""
    return f"secret of {len(value)} characters starting {value[:4]!r}"
