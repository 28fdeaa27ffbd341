"""Command line: `python -m tornado_admin [--env-file F] [COMMAND]`.

`serve` (the default) runs the admin server; `fetch` runs one sweep in the foreground;
`trigger`, `status` and `jobs` use a running server's admin API (docs/command-line.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from backends.base import is_job_id
from tornado_admin import __version__
from tornado_admin.client import (
    EXIT_CONFLICT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    TRIGGER_PATH,
    AdminApi,
    CommandError,
    Output,
    admin_token,
    bar_line,
    client_environment,
    describe,
    follow,
    job_row,
    server_url,
)
from tornado_admin.logs import configure_logging
from tornado_admin.settings import LOCAL_ENV_FILE, Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from tornado_admin.market.fetch import SweepProgress, SweepResult

log = logging.getLogger("tornado_admin.fetch")
CLIENT_COMMANDS = ("trigger", "status", "jobs")


def main(argv: list[str] | None = None) -> int:
    parser = UsageParser(prog="tornado-admin", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument(
        "--env-file", action="append", default=[], metavar="PATH",
        help="read settings from this file (repeatable; .env.local and the environment win)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=UsageParser)
    commands.add_parser("serve", help="run the admin server and the scheduler (the default)")
    commands.add_parser("fetch", help="run one market sweep in the foreground and exit")
    commands.add_parser(
        "dev-token", help=f"write a random ADMIN_TOKEN to {LOCAL_ENV_FILE} unless one is set anywhere"
    )
    add_client_commands(commands)
    args = parser.parse_args(job_ids_as_values(sys.argv[1:] if argv is None else argv))
    if args.command == "status":
        args.job_id = args.job_id or args.job_id_option
        if args.job_id is None:
            parser.error("status: JOB_ID is required")
    if args.command in CLIENT_COMMANDS:
        return run_client(args)  # before the settings: a client needs only a URL and a token
    try:
        settings = load_settings(env_files=args.env_file)
    except SettingsError as exc:
        configure_logging()  # even this line is JSON, like everything else the server prints
        logging.getLogger("tornado_admin").critical("Configuration error: %s", exc)
        return 1  # could not run at all (DESIGN.md section 9); 64 is a usage error
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
    # Imported here: the server side (aiohttp, the stores) would triple a client command's start-up.
    from tornado_admin.app import serve

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


# -- trigger, status, jobs: a running server's admin API ------------------------------------


class UsageParser(argparse.ArgumentParser):
    """argparse, but a usage error exits 64 (sysexits' EX_USAGE): argparse's own 2 would read as
    "a run is already in progress" to a script calling `trigger` (a mistyped command included)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def add_client_commands(commands: argparse._SubParsersAction) -> None:
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--url", help="the server (default: TORNADO_ADMIN_URL, else http://HOST:PORT "
                                          "from the settings the server reads)")
    connection.add_argument("--token-file", metavar="FILE",
                            help="read the admin token from FILE ('-': stdin) instead of ADMIN_TOKEN")
    connection.add_argument("--json", action="store_true", help="print the server's JSON answer")
    waiting = argparse.ArgumentParser(add_help=False)
    waiting.add_argument("--wait", action="store_true", help="follow the run until it ends")
    waiting.add_argument("--interval", type=_seconds, default=1.0, metavar="SECONDS",
                         help="seconds between polls with --wait (default 1)")
    waiting.add_argument("--patience", type=_seconds, default=60.0, metavar="SECONDS",
                         help="with --wait, how long an unreachable or unavailable server is waited out "
                              "(default 60)")
    commands.add_parser("trigger", parents=[connection, waiting], help="start a run on a running server")
    status_parser = commands.add_parser("status", parents=[connection, waiting], help="show one job")
    status_parser.add_argument("job_id", metavar="JOB_ID", nargs="?")
    status_parser.add_argument("--job-id", dest="job_id_option", metavar="JOB_ID",
                               help="the same, spelt as an option")
    jobs_parser = commands.add_parser("jobs", parents=[connection], help="list recent jobs, newest first")
    jobs_parser.add_argument("--limit", type=int, default=20, help="how many, 1 to 100 (default 20)")


def job_ids_as_values(argv: list[str]) -> list[str]:
    """Job ids are URL-safe base64, so one in 32 starts with '-', which argparse takes for an
    unknown option: after `status`, such an id is passed on as `--job-id=ID`."""
    if "status" not in argv:
        return argv
    at = argv.index("status")
    return argv[: at + 1] + [f"--job-id={arg}" if arg.startswith("-") and is_job_id(arg) else arg
                             for arg in argv[at + 1 :]]


def _seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a number of seconds") from None
    if not 0.05 <= value <= 3600:
        raise argparse.ArgumentTypeError("must be between 0.05 and 3600 seconds")
    return value


def run_client(args: argparse.Namespace) -> int:
    out = Output(sys.stdout, sys.stderr, as_json=args.json)
    try:
        env = client_environment(args.env_file, os.environ)
        api = AdminApi(server_url(args.url, env), admin_token(args.token_file, env))
        if args.command == "trigger":
            return trigger(api, out, args)
        if args.command == "status":
            return status(api, out, args)
        return jobs(api, out, args.limit)
    except CommandError as exc:
        out.error(str(exc))
        return exc.code
    except KeyboardInterrupt:
        out.error("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `tornado-admin jobs | head -1`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # keeps the exit flush quiet
        return 141  # what a shell reports for SIGPIPE


def trigger(api: AdminApi, out: Output, args: argparse.Namespace) -> int:
    answer = api.request("POST", TRIGGER_PATH)
    if answer.status == 202 and "jobId" in answer.body:
        job_id = answer.body["jobId"]
        if args.wait:
            body = follow(api, job_id, out.view(), interval=args.interval, patience=args.patience)
            return _report(out, body)
        out.emit(answer.body, [f"Job {job_id} started",
                               f"Follow it with: tornado-admin status --wait {job_id}"])
        return EXIT_OK
    if answer.status == 409 and "jobId" in answer.body:
        running = answer.body["jobId"]
        lines = [f"Job already in progress: {running}"]
        if not args.json:
            with contextlib.suppress(CommandError):  # it may have ended meanwhile; the id is what counts
                lines += describe(api.job(running))
        out.emit(answer.body, lines)
        return EXIT_CONFLICT
    api.refuse(answer)


def status(api: AdminApi, out: Output, args: argparse.Namespace) -> int:
    body = api.job(args.job_id)
    if not args.wait:
        out.emit(body, describe(body))
        return EXIT_OK
    if body["status"] == "running":
        body = follow(api, args.job_id, out.view(), interval=args.interval, patience=args.patience)
    return _report(out, body)


def jobs(api: AdminApi, out: Output, limit: int) -> int:
    answer = api.request("GET", f"/api/admin/jobs?limit={limit}")
    if answer.status != 200 or not isinstance(answer.body.get("jobs"), list):
        api.refuse(answer)
    rows = [job_row(job) for job in answer.body["jobs"] if isinstance(job, Mapping)]
    if out.tty:  # a header for people; scripts get the rows alone
        rows = [job_row(None), *rows] if rows else ["No jobs yet"]
    out.emit(answer.body, rows)
    return EXIT_OK


def _report(out: Output, body: dict[str, Any]) -> int:
    out.emit(body, describe(body))
    return EXIT_OK if body.get("status") == "completed" else EXIT_FAILED


# -- fetch ----------------------------------------------------------------------------------


async def run_fetch(settings: Settings, bar: ProgressBar | None) -> int:
    """One sweep; 0 when it ran (failed regions are listed), 1 when it could not run at all."""
    from tornado_admin.market.esi import EsiClient  # see serve's import in main
    from tornado_admin.market.fetch import SweepError, fetch_all_regions
    from tornado_admin.market.orders import OrderStoreError, open_order_store

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
            # The server's bound on a run bounds this one too: a stuck ESI cannot hold a cron
            # job's `fetch` for hours. A cancelled sweep leaves whole regions.
            async with asyncio.timeout(settings.job_max_duration_seconds):
                result = await fetch_all_regions(
                    esi, store, region_ids=settings.esi_regions, concurrency=settings.esi_concurrency,
                    progress=bar.update if bar else _log_progress,
                )
    except (SweepError, TimeoutError) as exc:
        if bar:
            bar.finish()
        error = str(exc) if isinstance(exc, SweepError) else (
            f"timed out after JOB_MAX_DURATION_SECONDS={settings.job_max_duration_seconds}")
        log.error("Market sweep could not run", extra={"error": error})
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
        line = bar_line(progress.to_dict(), time.monotonic() - self._started, self._width)
        self._stream.write(f"\r\033[K{line}")
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
