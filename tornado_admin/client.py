"""The client side of `tornado-admin trigger | status | jobs` (cli.py parses the arguments): where
the server is, the token, the admin API over HTTP, following a run, and what is printed. Needs no
server setting but the URL and the token. docs/command-line.md lists the exit codes."""

from __future__ import annotations

import http.client
import json
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Protocol, TextIO
from urllib.parse import quote, urlsplit

from dotenv import dotenv_values

from tornado_admin import __version__

EXIT_OK, EXIT_FAILED, EXIT_CONFLICT, EXIT_AUTH, EXIT_NOT_FOUND, EXIT_UNREACHABLE, EXIT_SERVER = range(7)
EXIT_USAGE = 64  # sysexits' EX_USAGE: argparse's own 2 would read as "409" to a script (cli.py)
EXIT_INTERRUPTED = 130
LOCAL_ENV_FILE = ".env.local"  # the server's own override file (settings.py), read the same way
TRIGGER_PATH = "/api/admin/trigger-fetch"
TRANSIENT = (502, 503, 504)  # worth waiting out while following a run; a proxy says 502/504
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")  # what settings.py accepts as a token
_MAX_BODY_BYTES = 4 << 20


class CommandError(Exception):
    """Ends the command: `message` goes to stderr, `code` is the exit status."""

    def __init__(
        self, code: int, message: str, *, transient: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        # transient: an unreachable or unavailable server, which --wait waits out for a while
        self.code, self.transient, self.retry_after = code, transient, retry_after


def client_environment(env_files: Sequence[str], environ: Mapping[str, str]) -> dict[str, str]:
    """The variables as the server would see them (env files, then .env.local, then the
    environment), unvalidated: the client only wants the URL and the token from them."""
    merged: dict[str, str] = {}
    for path in [*env_files, LOCAL_ENV_FILE]:
        if Path(path).is_file():
            merged.update({k: v for k, v in dotenv_values(path).items() if v is not None})
        elif path != LOCAL_ENV_FILE:
            raise CommandError(EXIT_USAGE, f"env file {path} does not exist")
    merged.update({k: v for k, v in environ.items() if v.strip()})
    return merged


@dataclass(frozen=True)
class ServerUrl:
    scheme: str
    host: str
    port: int
    prefix: str  # a reverse proxy's path, without the trailing slash

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.prefix}"


def server_url(explicit: str | None, env: Mapping[str, str]) -> ServerUrl:
    raw = explicit or env.get("TORNADO_ADMIN_URL", "").strip()
    name = "--url" if explicit else "TORNADO_ADMIN_URL"
    if not raw:
        host = env.get("HOST", "").strip() or "127.0.0.1"
        port = env.get("PORT", "").strip() or "3000"
        if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            raise CommandError(EXIT_USAGE, "PORT is not a port number the server can listen on; "
                                           "pass --url http://HOST:PORT")
        # The server listening on every address is reached on this machine's loopback.
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}.get(host, host.strip("[]"))
        return ServerUrl("http", host, int(port), "")
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError:
        raise CommandError(EXIT_USAGE, f"{name} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CommandError(EXIT_USAGE, f"{name} must look like http://host:port")
    if "@" in parts.netloc:  # never echoed: it may hold a password
        raise CommandError(EXIT_USAGE, f"{name} must not hold credentials; give the token with "
                                       "ADMIN_TOKEN or --token-file")
    if parts.query or parts.fragment:
        raise CommandError(EXIT_USAGE, f"{name} must not have a query or a fragment")
    default_port = 443 if parts.scheme == "https" else 80
    return ServerUrl(parts.scheme, parts.hostname, port or default_port, parts.path.rstrip("/"))


def admin_token(token_file: str | None, env: Mapping[str, str]) -> str:
    """The token, checked enough that it can go in a header; never part of any message."""
    if token_file:
        source = "standard input" if token_file == "-" else f"the token file {token_file}"
        try:
            token = (sys.stdin.read() if token_file == "-" else Path(token_file).read_text("utf-8")).strip()
        except OSError as exc:
            raise CommandError(EXIT_AUTH, f"cannot read {source}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise CommandError(EXIT_AUTH, f"{source} is not UTF-8 text") from None
    else:
        source = "ADMIN_TOKEN"
        # The server takes several, comma-separated, for rotation: any one of them will do.
        token = next((t.strip() for t in env.get("ADMIN_TOKEN", "").split(",") if t.strip()), "")
        if not token:
            raise CommandError(EXIT_AUTH, "no admin token: set ADMIN_TOKEN or pass --token-file FILE")
    if not token:
        raise CommandError(EXIT_AUTH, f"{source} is empty")
    if not _HEADER_SAFE.fullmatch(token):
        # http.client would refuse it with an error that quotes the header, token included.
        raise CommandError(EXIT_AUTH, f"the token in {source} has spaces, control or non-ASCII "
                                      "characters; an Authorization header cannot carry it")
    return token


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    retry_after: float | None


class AdminApi:
    """One request per call, no redirects followed (they would carry the token elsewhere)."""

    def __init__(self, url: ServerUrl, token: str, timeout_seconds: float = 10.0) -> None:
        self.url, self._token, self._timeout = url, token, timeout_seconds

    def request(self, method: str, path: str) -> Answer:
        kind = http.client.HTTPSConnection if self.url.scheme == "https" else http.client.HTTPConnection
        connection = kind(self.url.host, self.url.port, timeout=self._timeout)
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json",
                   "User-Agent": f"tornado-admin-cli/{__version__}"}
        try:
            connection.request(method, self.url.prefix + path, body=b"" if method == "POST" else None,
                               headers=headers)
            response = connection.getresponse()
            raw = response.read(_MAX_BODY_BYTES)
        except (OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise CommandError(EXIT_UNREACHABLE, f"cannot reach the server at {self.url}: {reason}",
                               transient=True) from None
        finally:
            connection.close()
        return Answer(response.status, _json_object(raw), _retry_after(response.getheader("Retry-After")))

    def job(self, job_id: str) -> dict[str, Any]:
        answer = self.request("GET", f"/api/admin/job-status/{quote(job_id, safe='')}")
        if answer.status == 200 and "status" in answer.body:
            return answer.body
        if answer.status == 404 and answer.body.get("message") == "Job not found or expired":
            raise CommandError(EXIT_NOT_FOUND, f"job {job_id} not found (unknown, or gone from the history)")
        self.refuse(answer)

    def refuse(self, answer: Answer) -> NoReturn:
        """The answers every route may give that end the command."""
        status, body, message = answer.status, answer.body, answer.body.get("message")
        if status == 401:
            raise CommandError(EXIT_AUTH, f"the server refused the admin token ({message or 'HTTP 401'})")
        if status == 429:
            wait = f"; retry in {answer.retry_after:.0f} s" if answer.retry_after else ""
            raise CommandError(EXIT_AUTH, f"too many failed authentications from this address{wait}")
        if status == 500 and body.get("error") == "Server misconfiguration":
            raise CommandError(EXIT_AUTH, "the server has no ADMIN_TOKEN configured")
        if status == 400:
            raise CommandError(EXIT_USAGE, f"the server refused the request: {message or 'HTTP 400'}")
        if status in TRANSIENT:
            wait = f"; retry in {answer.retry_after:.0f} s" if answer.retry_after else ""
            raise CommandError(EXIT_SERVER, f"server unavailable (HTTP {status}"
                               f"{': ' + message if message else ''}){wait}", transient=True,
                               retry_after=answer.retry_after)
        if not body:
            raise CommandError(EXIT_SERVER, f"unexpected answer from {self.url}: HTTP {status}, no JSON body "
                                            "(is this a tornado-admin server?)")
        raise CommandError(EXIT_SERVER, f"unexpected answer from {self.url}: HTTP {status}"
                                        f" {body.get('error', '')} {message or ''}".rstrip())


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _retry_after(raw: str | None) -> float | None:
    try:
        return min(max(float(raw), 0.0), 300.0) if raw else None  # capped: a proxy's odd value
    except ValueError:
        return None  # the HTTP-date form: fall back to the poll interval


class ProgressView(Protocol):
    """What shows a followed run: told each status body, and why a poll is being retried."""

    def update(self, job: Mapping[str, Any]) -> None: ...

    def notice(self, message: str) -> None: ...

    def close(self) -> None: ...


def follow(
    api: AdminApi, job_id: str, view: ProgressView, *, interval: float, patience: float
) -> dict[str, Any]:
    """Polls until the job ends. An unreachable or unavailable server is waited out (honouring
    Retry-After) for `patience` seconds; Ctrl-C stops the waiting, never the run."""
    last_answer = time.monotonic()
    try:
        while True:
            try:
                body = api.job(job_id)
            except CommandError as exc:
                if not exc.transient or time.monotonic() - last_answer > patience:
                    raise
                view.notice(str(exc))
                time.sleep(max(interval, exc.retry_after or 0.0))
                continue
            last_answer = time.monotonic()
            view.update(body)
            if body["status"] != "running":
                return body
            time.sleep(interval)
    except KeyboardInterrupt:
        raise CommandError(EXIT_INTERRUPTED, f"stopped waiting; job {job_id} goes on "
                                             f"(tornado-admin status --wait {job_id})") from None
    finally:
        view.close()


# -- what the commands print -------------------------------------------------------------


def describe(job: Mapping[str, Any]) -> list[str]:
    """A job body as a few plain lines."""
    state, seconds = job.get("status", "?"), (job.get("duration") or 0) / 1000
    took = {"running": f"running for {seconds:.1f} s", "completed": f"completed in {seconds:.1f} s",
            "failed": f"failed after {seconds:.1f} s"}.get(state, state)
    lines = [f"Job {job.get('jobId')}: {took} ({job.get('trigger', '?')} trigger, "
             f"started {job.get('startedAt', '?')})"]
    if state == "running":
        lines.append(f"Progress: {progress_text(job)}")
    result = job.get("result")
    if isinstance(result, Mapping):
        regions = result.get("regions") if isinstance(result.get("regions"), Mapping) else {}
        failed = [f for f in regions.get("failed") or [] if isinstance(f, Mapping)]
        lines.append(f"Regions: {result.get('successCount', 0)} stored ({regions.get('fetched', 0)} fetched, "
                     f"{regions.get('notModified', 0)} unchanged), {result.get('errorCount', 0)} failed")
        lines.append(f"Orders: {result.get('totalOrders', 0):,} held, "
                     f"{result.get('ordersWritten', 0):,} written")
        if failed:
            lines += ["Failed regions:", *(f"  {f.get('regionId')}: {f.get('error')}" for f in failed)]
    if job.get("error"):
        lines.append(f"Error: {job['error']}")
    return lines


def progress_text(job: Mapping[str, Any]) -> str:
    progress = job.get("progress")
    if not isinstance(progress, Mapping) or not progress.get("regionsTotal"):
        return "starting"
    return (f"{progress.get('regionsDone', 0)}/{progress['regionsTotal']} regions, "
            f"{progress.get('ordersStored', 0):,} orders")


def job_row(job: Mapping[str, Any] | None) -> str:
    """One line of `jobs`; None gives the header."""
    if job is None:
        return f"{'JOB ID':<22}  {'STATUS':<9}  {'TRIGGER':<8}  {'STARTED':<24}  {'SECONDS':>8}  DETAIL"
    state = job.get("status", "?")
    result = job.get("result") if isinstance(job.get("result"), Mapping) else {}
    detail = {"running": progress_text(job), "failed": job.get("error") or "",
              "completed": f"{result.get('successCount', 0)} regions stored, {result.get('errorCount', 0)} "
                           f"failed, {result.get('totalOrders', 0):,} orders"}.get(state, "")
    return (f"{job.get('jobId', '?'):<22}  {state:<9}  {job.get('trigger', '?'):<8}  "
            f"{job.get('startedAt', '?'):<24}  {(job.get('duration') or 0) / 1000:>8.1f}  {detail}")


class Output:
    """Results on stdout (plain lines, or the server's JSON with --json), errors on stderr."""

    def __init__(self, stdout: TextIO, stderr: TextIO, *, as_json: bool) -> None:
        self.stdout, self.stderr, self.as_json = stdout, stderr, as_json
        self.tty = stdout.isatty() and not as_json

    def emit(self, body: Mapping[str, Any], lines: Sequence[str]) -> None:
        text = json.dumps(body, separators=(",", ":")) if self.as_json else "\n".join(lines)
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def error(self, message: str) -> None:
        self.stderr.write(f"tornado-admin: {message}\n")
        self.stderr.flush()

    def view(self) -> JobProgress:
        return JobProgress(None if self.as_json else self.stdout, self.tty, self.stderr)


class JobProgress:
    """What --wait shows while it polls: a bar on a terminal, a line per change otherwise."""

    def __init__(self, stream: TextIO | None, tty: bool, errors: TextIO) -> None:
        self._stream, self._tty, self._errors = stream, tty, errors
        self._last = ""
        self._drawn = False

    def update(self, job: Mapping[str, Any]) -> None:
        if self._stream is None or job.get("status") != "running":
            return
        progress = job.get("progress") if isinstance(job.get("progress"), Mapping) else {}
        if self._tty:
            seconds = (job.get("duration") or 0) / 1000
            known = progress.get("regionsTotal")  # none until the region list has come
            self._draw(bar_line(progress, seconds) if known else f"starting  {seconds:.1f}s")
        elif (text := progress_text(job)) != self._last:
            self._stream.write(f"Job {job.get('jobId')} running: {text}\n")
            self._stream.flush()
            self._last = text

    def notice(self, message: str) -> None:
        if self._tty and self._stream is not None:
            self._draw(f"waiting: {message}")
        else:
            self._errors.write(f"tornado-admin: waiting: {message}\n")
            self._errors.flush()

    def _draw(self, line: str) -> None:
        assert self._stream is not None
        self._stream.write(f"\r\033[K{line}")
        self._stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn and self._stream is not None:
            self._stream.write("\r\033[K")  # the result takes the bar's place
            self._stream.flush()


def bar_line(progress: Mapping[str, Any], seconds: float, width: int = 30) -> str:
    """`[####------] 3/10 regions  12,345 orders  4.2s`, for `fetch` and `--wait` alike."""
    done, total = progress.get("regionsDone", 0), progress.get("regionsTotal", 0)
    filled = min(width, round(width * done / max(total, 1)))
    return (f"[{'#' * filled}{'-' * (width - filled)}] {done}/{total} regions"
            f"  {progress.get('ordersStored', 0):,} orders  {seconds:.1f}s")
