"""HTTP figures of `make bench`: job-status polling and the trigger's 409 path against a bare handler.

`python -m bench.http --repeat 3 --stores memory,sqlite,redis` prints them alone; `bench/__main__.py`
adds `http_rows(repeat, stores)` to its table.

Every process is its own: the bare Tornado handler (`bench/bare_server.py`), the admin server
(`python -m tornado_admin serve`, LOG_LEVEL=error so the access log and the 409 warning are not
written), the fake ESI (an hour of latency per answer, so the one triggered job stays running),
and the load generator (`bench/loadgen.py`, 32 keep-alive connections, 1 s warm-up, 5 s
recorded). In each run and for each store: the bare handler first, then a fresh admin server on
a fresh store, triggered once (202), then GET job-status/<jobId> and POST trigger-fetch (all 409).
Ratios compare with the bare handler measured just before, in the same run; each figure is the
median over the runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONNECTIONS = 32
WARMUP_SECONDS = 1.0
SECONDS = 5.0
# One client process: measured at 32 connections it uses about a quarter of a core while the
# server uses the rest of one, and two client processes gave no more requests per second.
CLIENT_PROCESSES = 1
STORE_URLS = {
    "memory": lambda folder: "memory://",
    "sqlite": lambda folder: f"sqlite:///{folder}/jobs.db",
    "redis": lambda folder: os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"),
}
# (throughput as a share of the bare handler's, p99 in ms): issue 4 for memory, issue 5 for the others.
TARGETS = {"memory": (0.80, 20.0), "sqlite": (0.50, 25.0), "redis": (0.50, 25.0)}
SETTINGS = re.compile(r"^(ADMIN_TOKEN|CRON_SECRET|JOB_\w+|DATABASE_URL|ESI_\w+|FETCH_INTERVAL_SECONDS|"
                      r"SCHEDULER_ENABLED|HOST|PORT|LOG_LEVEL)$")  # fmt: skip
STARTUP_SECONDS = 30
PATHS = (("poll", "job-status polling", "200"), ("409", "trigger 409 path", "409"))


class NotAvailableError(Exception):
    """The admin server could not be started on this store; the message says why."""


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the `finally` blocks stop the child processes."""
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return

    def leave(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def child(args: list[str], **kwargs: object) -> Iterator[subprocess.Popen]:
    process = subprocess.Popen(args, **kwargs)  # type: ignore[call-overload]
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout:
            process.stdout.close()


@contextlib.contextmanager
def url_printing(args: list[str]) -> Iterator[tuple[str, int]]:
    """A child that prints its base URL on its first line once it listens; (URL, pid)."""
    with child(args, stdout=subprocess.PIPE, text=True, cwd=ROOT) as process:
        line = process.stdout.readline()
        match = re.search(r"http://[\w.:\[\]]+", line)
        if not match:
            raise RuntimeError(f"{' '.join(args[1:4])} did not start: {line!r}")
        yield match.group(0), process.pid


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(method: str, url: str, token: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read() or b"{}")


def startup_failure(log: Path) -> str:
    """The reason in the server's last log line: its exception's last line, or its message."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    if not lines:
        return "exited without a message"
    try:
        record = json.loads(lines[-1])
    except ValueError:
        return lines[-1][:200]
    if record.get("exc_info"):
        return record["exc_info"].strip().splitlines()[-1][:200]
    return str(record.get("message", lines[-1]))[:200]


@contextlib.contextmanager
def admin_server(store: str, esi_url: str) -> Iterator[tuple[str, int, str, str]]:
    """A fresh admin server on a fresh store, its job running; (base URL, pid, token, job id)."""
    with tempfile.TemporaryDirectory(prefix="bench-http-") as folder:
        token = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(40))
        port = free_port()
        env = {name: value for name, value in os.environ.items() if not SETTINGS.match(name)}
        env.update({
            "ADMIN_TOKEN": token, "JOB_STORE_URL": STORE_URLS[store](folder),
            "DATABASE_URL": f"sqlite:///{folder}/market.db", "ESI_API_BASE_URL": esi_url,
            "SCHEDULER_ENABLED": "false", "HOST": "127.0.0.1", "PORT": str(port), "LOG_LEVEL": "error",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        })  # fmt: skip
        log = Path(folder, "server.log")
        # The working directory is the empty folder, so no developer's .env.local applies.
        command = [sys.executable, "-m", "tornado_admin", "serve"]
        with log.open("w") as stderr, child(
            command, env=env, cwd=folder, stdout=subprocess.DEVNULL, stderr=stderr
        ) as server:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + STARTUP_SECONDS
            while True:
                if server.poll() is not None:
                    raise NotAvailableError(startup_failure(log))
                with contextlib.suppress(OSError, ValueError):
                    if request("GET", f"{base}/healthz")[0] == 200:
                        break
                if time.monotonic() > deadline:
                    raise NotAvailableError(f"no answer from /healthz in {STARTUP_SECONDS} s")
                time.sleep(0.05)
            status, body = request("POST", f"{base}/api/admin/trigger-fetch", token)
            # 409 only when a job left running by an earlier run holds a shared store (Redis).
            if status not in (202, 409) or "jobId" not in body:
                raise NotAvailableError(f"trigger-fetch answered {status} {body}")
            yield base, server.pid, token, body["jobId"]


def load(url: str, method: str, pid: int, token: str | None = None) -> dict:
    args = [sys.executable, "-m", "bench.loadgen", "--url", url, "--method", method,
            "--connections", str(CONNECTIONS), "--processes", str(CLIENT_PROCESSES),
            "--seconds", str(SECONDS), "--warmup", str(WARMUP_SECONDS), "--watch-pid", str(pid)]  # fmt: skip
    if token:
        args += ["--header", f"Authorization: Bearer {token}"]
    out = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=SECONDS + 120)
    if out.returncode:
        raise RuntimeError(f"loadgen failed: {out.stderr.strip()[-500:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["server_cpu"] = result["cpu"]["watched"].get(str(pid))
    return result


def measure(store: str, bare_url: str, bare_pid: int, esi_url: str) -> dict[str, dict]:
    """One run for one store: the bare handler, then polling and the 409 path on a fresh server."""
    runs = {"bare": load(f"{bare_url}/", "GET", bare_pid)}
    with admin_server(store, esi_url) as (base, pid, token, job_id):
        runs["poll"] = load(f"{base}/api/admin/job-status/{job_id}", "GET", pid, token)
        runs["409"] = load(f"{base}/api/admin/trigger-fetch", "POST", pid, token)
    return runs


def unexpected(runs: list[dict], expected: str) -> str:
    """' (…)' naming answers other than `expected` and connection errors, if any run had them."""
    other = sum(n for run in runs for status, n in run["statuses"].items() if status != expected)
    errors = sum(n for run in runs for n in run["errors"].values())
    notes = [f"{other:,} not {expected}"] * bool(other) + [f"{errors:,} errors"] * bool(errors)
    return f" ({', '.join(notes)})" if notes else ""


def med(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs if run[key] is not None)


def latency(runs: list[dict]) -> str:
    return f"p50 {med(runs, 'p50_ms'):.1f} ms, p99 {med(runs, 'p99_ms'):.1f} ms"


def cpu(runs: list[dict], bares: list[dict] | None = None) -> tuple[str, str]:
    """The server's cores and requests per CPU-second in the recorded window (a figure the machine's
    other load disturbs less than requests per second), and the cores the client and others used."""
    cores = os.cpu_count() or 1
    if any(r["server_cpu"] is None or "machine_busy" not in r["cpu"] for r in [*runs, *(bares or [])]):
        return "n/a (no /proc)", ""
    per_cpu = [r["rps"] / max(r["server_cpu"], 1e-3) for r in runs]
    value = f"{med(runs, 'server_cpu'):.2f} core, {statistics.median(per_cpu):,.0f} req/CPU-s"
    if bares:
        ratios = [p / (b["rps"] / max(b["server_cpu"], 1e-3)) for p, b in zip(per_cpu, bares, strict=True)]
        value += f" = {statistics.median(ratios):.0%} of bare"
    others = statistics.median(r["cpu"]["machine_busy"] * cores - r["server_cpu"] - r["cpu"]["client"]
                               for r in runs)  # fmt: skip
    client = statistics.median(r["cpu"]["client"] for r in runs)
    return value, f"client {client:.2f}, others {max(0.0, others):.2f} of {cores} cores"


def http_rows(repeat: int, stores: list[str]) -> list[tuple[str, str, str]]:
    """Rows (figure, measured, target) for `make bench`; a store that cannot start gets one row."""
    unknown = [store for store in stores if store not in STORE_URLS]
    if unknown:
        raise ValueError(f"unknown store {', '.join(unknown)}: use {', '.join(STORE_URLS)}")
    results: dict[str, list[dict[str, dict]]] = {store: [] for store in stores}
    missing: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        stack.enter_context(sigterm_exits())
        bare_url, bare_pid = stack.enter_context(url_printing([sys.executable, "-m", "bench.bare_server"]))
        esi_url, _ = stack.enter_context(url_printing([
            sys.executable, "-m", "tornado_admin.fake_esi", "--port", "0", "--layout", "small",
            "--latency-ms", str(3_600_000),
        ]))  # fmt: skip
        for _ in range(repeat):
            for store in stores:
                if store in missing:
                    continue
                try:
                    results[store].append(measure(store, bare_url, bare_pid, esi_url))
                except NotAvailableError as exc:
                    missing[store] = str(exc)
    rows: list[tuple[str, str, str]] = []
    bares = [run["bare"] for store in stores for run in results[store]]
    if bares:
        rows.append((f"bare Tornado handler, GET, {CONNECTIONS} connections",
                     f"{med(bares, 'rps'):,.0f} req/s, {latency(bares)}{unexpected(bares, '200')}",
                     "the baseline"))  # fmt: skip
        rows.append(("  server CPU, bare handler", *cpu(bares)))
    for store in stores:
        share, p99 = TARGETS[store]
        if store in missing:
            reason = missing[store]
            rows.append((f"job-status polling and 409 path, {store} store",
                         f"not available: {reason}" if not results[store] else
                         f"{len(results[store])} of {repeat} runs, then not available: {reason}",
                         f">= {share:.0%} of bare, p99 < {p99:.0f} ms"))  # fmt: skip
            if not results[store]:
                continue
        for key, what, expected in PATHS:
            runs = [run[key] for run in results[store]]
            ratio = statistics.median(run[key]["rps"] / run["bare"]["rps"] for run in results[store])
            rows.append((f"{what}, {store} store, {CONNECTIONS} connections",
                         f"{med(runs, 'rps'):,.0f} req/s = {ratio:.0%} of bare{unexpected(runs, expected)}",
                         f">= {share:.0%} of bare"))  # fmt: skip
            rows.append((f"  {what} latency ({store})", latency(runs), f"p99 < {p99:.0f} ms"))
            rows.append((f"  server CPU, {what} ({store})",
                         *cpu(runs, [run["bare"] for run in results[store]])))  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.http", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--stores", default="memory", help="comma list of memory, sqlite, redis")
    args = parser.parse_args()
    rows = http_rows(args.repeat, args.stores.split(","))
    width = max(len(r[0]) for r in rows)
    head = f"measured (median of {args.repeat})"
    middle = max(len(head), *(len(r[1]) for r in rows))
    print(f"{'figure':<{width}}  {head:<{middle}}  target (CPU rows: context)")
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:<{middle}}  {target}")


if __name__ == "__main__":
    main()
