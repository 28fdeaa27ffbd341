"""Command line: `python -m tornado_admin [--env-file F] [serve | fetch | dev-token]`.

`serve` (the default) runs the admin server; `fetch` runs one sweep in the foreground.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import sys
import time
from pathlib import Path
from typing import TextIO

from tornado_admin import __version__
from tornado_admin.app import serve
from tornado_admin.logs import configure_logging
from tornado_admin.market.esi import EsiClient
from tornado_admin.market.fetch import SweepError, SweepProgress, SweepResult, fetch_all_regions
from tornado_admin.market.orders import OrderStoreError, open_order_store
from tornado_admin.settings import LOCAL_ENV_FILE, Settings, SettingsError, load_settings

log = logging.getLogger("tornado_admin.fetch")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tornado-admin", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument(
        "--env-file", action="append", default=[], metavar="PATH",
        help="read settings from this file (repeatable; .env.local and the environment win)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("serve", help="run the admin server and the scheduler (the default)")
    commands.add_parser("fetch", help="run one market sweep in the foreground and exit")
    commands.add_parser(
        "dev-token", help=f"write a random ADMIN_TOKEN to {LOCAL_ENV_FILE} unless one is set anywhere"
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings(env_files=args.env_file)
    except SettingsError as exc:
        configure_logging()  # even this line is JSON, like everything else the server prints
        logging.getLogger("tornado_admin").critical("Configuration error: %s", exc)
        return 1  # could not run at all (DESIGN.md section 9); 2 stays argparse's usage error
    if args.command == "dev-token":
        return dev_token(settings)
    if args.command == "fetch":
        tty = sys.stderr.isatty()
        # On a terminal the bar shows progress; only warnings interrupt it.
        configure_logging("warn" if tty else settings.log_level, settings.secrets,
                          stream=_LineClearingStream(sys.stderr) if tty else sys.stderr)
        try:
            return asyncio.run(run_fetch(settings, ProgressBar(sys.stderr) if tty else None))
        except KeyboardInterrupt:
            return 130
    configure_logging(settings.log_level, settings.secrets)
    return asyncio.run(serve(settings))


def dev_token(settings: Settings) -> int:
    """`make run` on a fresh clone: give the developer a strong token without printing it."""
    path = Path(LOCAL_ENV_FILE).resolve()
    if settings.admin_tokens:
        print(f"ADMIN_TOKEN is already set; {path} left as it is", file=sys.stderr)
        return 0
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as file:
        file.write(f"\n# Written by `tornado-admin dev-token` for local use.\nADMIN_TOKEN={token}\n")
    print(f"Wrote a new ADMIN_TOKEN to {path}; use it with:", file=sys.stderr)
    print(f"  export ADMIN_TOKEN=$(grep ^ADMIN_TOKEN= {path} | cut -d= -f2-)", file=sys.stderr)
    return 0


async def run_fetch(settings: Settings, bar: ProgressBar | None) -> int:
    """One sweep; 0 when it ran (failed regions are listed), 1 when it could not run at all."""
    log.info("Market sweep started", extra={"regions": settings.esi_regions or "all"})
    try:
        store = await open_order_store(settings.database_url, max_writers=settings.esi_concurrency)
    except OrderStoreError as exc:
        log.error("Market sweep could not run", extra={"error": str(exc)})
        return 1
    try:
        async with EsiClient.open(
            settings.esi_base_url,
            user_agent=settings.esi_user_agent,
            compatibility_date=settings.esi_compatibility_date,
            concurrency=settings.esi_concurrency,
        ) as esi:
            result = await fetch_all_regions(
                esi, store, region_ids=settings.esi_regions, concurrency=settings.esi_concurrency,
                progress=bar.update if bar else _log_progress,
            )
    except SweepError as exc:
        if bar:
            bar.finish()
        log.error("Market sweep could not run", extra={"error": str(exc)})
        return 1
    finally:
        await store.close()
    if bar:
        bar.finish()
        print(summary(result))
    log.info("Market sweep finished", extra={"result": result.to_dict()})
    return 0


def _log_progress(progress: SweepProgress) -> None:
    log.info("Market sweep progress", extra={"progress": progress.to_dict()})


def summary(result: SweepResult) -> str:
    seconds = result.duration_ms / 1000
    rate = result.orders_written / seconds if seconds else 0.0
    lines = [
        f"Sweep finished in {seconds:.1f} s: {result.fetched + result.not_modified} regions stored"
        f" ({result.fetched} fetched, {result.not_modified} unchanged), {len(result.failed)} failed",
        f"Orders: {result.total_orders:,} held, {result.orders_written:,} written"
        f" ({rate:,.0f} orders/s)",
    ]
    if result.failed:
        lines.append("Failed regions:")
        lines += [f"  {f['regionId']}: {f['error']}" for f in result.failed]
    return "\n".join(lines)


class ProgressBar:
    """One self-redrawing line on a terminal."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self._stream, self._width = stream, width
        self._started = time.monotonic()

    def update(self, progress: SweepProgress) -> None:
        total = max(progress.regions_total, 1)
        filled = round(self._width * progress.regions_done / total)
        bar = "#" * filled + "-" * (self._width - filled)
        self._stream.write(
            f"\r\033[K[{bar}] {progress.regions_done}/{progress.regions_total} regions"
            f"  {progress.orders_stored:,} orders  {time.monotonic() - self._started:.1f}s"
        )
        self._stream.flush()

    def finish(self) -> None:
        self._stream.write("\n")
        self._stream.flush()


class _LineClearingStream:
    """Clears the progress bar's line before a log line is written over it."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write("\r\033[K" + text)

    def flush(self) -> None:
        self._stream.flush()
