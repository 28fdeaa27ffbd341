"""A closed-loop HTTP/1.1 load generator: `python -m bench.loadgen --url URL --connections 32`.

Each of N keep-alive connections sends one request, reads the whole answer (status line,
headers, a Content-Length or chunked body), and sends the next: no pipelining, no think time.
The connections run for `--warmup` seconds unrecorded, then `--seconds` recorded: a request
counts when it completes inside the recorded window, its latency measured from just before its
write to its last body byte.

Plain asyncio streams, not an HTTP library, so the client costs little of the CPU it shares with
the server. `--processes P` splits the connections over P worker processes that start together
(a shared wall-clock start) and merges their latencies.

Prints one JSON line: requests, rps, p50_ms, p99_ms, max_ms, statuses, errors, and the CPU used
in the window: `client` (all worker processes) and `watched` (each `--watch-pid`, for instance
the server) in cores, `machine_busy` and `steal` as fractions of the whole machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
START_DELAY_SECONDS = 0.5  # lets worker processes start up before the shared start


class ProtocolError(Exception):
    """The server answered something that is not HTTP/1.x as this client reads it."""


@dataclass
class Tally:
    latencies_ns: list[int] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    connects: int = 0


def build_request(method: str, url: str, headers: list[str], body: bytes) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise SystemExit(f"loadgen: only http:// URLs are supported, got {url!r}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}", *headers]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return parts.hostname, parts.port or 80, head + body


def parse_head(head: bytes) -> tuple[int, int, bool]:
    """(status, body length or -1 when chunked or -2 when up to the close, keep-alive?)."""
    end = head.find(b"\r\n")
    version, _, rest = head[:end].partition(b" ")
    if not version.startswith(b"HTTP/1."):
        raise ProtocolError(f"bad status line {head[:end][:80]!r}")
    status = int(rest[:3])
    lower = head.lower()
    keep_alive = b"\r\nconnection: close" not in lower and (
        version == b"HTTP/1.1" or b"\r\nconnection: keep-alive" in lower
    )
    if status in (204, 304) or 100 <= status < 200:
        return status, 0, keep_alive
    start = lower.find(b"\r\ncontent-length:")
    if start >= 0:
        stop = lower.find(b"\r\n", start + 2)
        return status, int(head[start + 17 : stop]), keep_alive
    if b"\r\ntransfer-encoding:" in lower and b"chunked" in lower:
        return status, -1, keep_alive
    return status, -2, False


async def read_chunked(reader: asyncio.StreamReader) -> None:
    while True:
        line = await reader.readuntil(b"\r\n")
        size = int(line.split(b";", 1)[0], 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                pass
            return
        await reader.readexactly(size + 2)


async def connection(host: str, port: int, request: bytes, record_at: float, end_at: float,
                     tally: Tally) -> None:  # fmt: skip
    clock = time.perf_counter_ns
    record_ns, end_ns = int(record_at * 1e9), int(end_at * 1e9)
    latencies, statuses = tally.latencies_ns, tally.statuses
    writer: asyncio.StreamWriter | None = None
    while clock() < end_ns:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
                tally.connects += 1
            started = clock()
            writer.write(request)
            status, length, keep_alive = parse_head(await reader.readuntil(b"\r\n\r\n"))
            if length > 0:
                await reader.readexactly(length)
            elif length == -1:
                await read_chunked(reader)
            elif length == -2:
                await reader.read()
            done = clock()
            if record_ns <= done <= end_ns:
                latencies.append(done - started)
                statuses[status] += 1
            if not keep_alive:
                writer.close()
                writer = None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError,
                ProtocolError) as exc:  # fmt: skip
            if record_ns <= clock() <= end_ns:
                tally.errors[type(exc).__name__] += 1
            if writer is not None:
                writer.close()
                writer = None
            await asyncio.sleep(0.01)  # a refused connect must not spin
    if writer is not None:
        writer.close()


def process_cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int, int] | None:
    """(busy, total, steal) jiffies over all cores, from /proc/stat."""
    try:
        with open("/proc/stat") as file:
            values = [int(v) for v in file.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    values += [0] * (8 - len(values))
    total = sum(values[:8])  # guest time is already counted in user
    return total - values[3] - values[4], total, values[7]


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def sample(pids: list[int]) -> dict:
    return {"at": time.perf_counter(), "self": self_cpu_seconds(), "machine": machine_ticks(),
            "pids": {pid: process_cpu_seconds(pid) for pid in pids}}  # fmt: skip


def cpu_between(first: dict, last: dict) -> dict:
    span = last["at"] - first["at"]
    out: dict = {"watched": {}}
    for pid, before in first["pids"].items():
        after = last["pids"].get(pid)
        if before is not None and after is not None:
            out["watched"][str(pid)] = round((after - before) / span, 3)
    if first["machine"] and last["machine"]:
        busy, total, steal = (b - a for a, b in zip(first["machine"], last["machine"], strict=True))
        if total > 0:
            out["machine_busy"] = round(busy / total, 3)
            out["steal"] = round(steal / total, 3)
    return out


async def run_connections(args: argparse.Namespace, start_wall: float) -> tuple[Tally, dict, float]:
    """This process's share of the load; (tally, CPU over the window, client CPU seconds)."""
    host, port, request = build_request(args.method, args.url, args.header, args.data.encode())
    start = time.perf_counter() + (start_wall - time.time())
    record_at, end_at = start + args.warmup, start + args.warmup + args.seconds
    tally = Tally()
    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    tasks = [asyncio.create_task(connection(host, port, request, record_at, end_at, tally))
             for _ in range(args.connections)]  # fmt: skip
    await asyncio.sleep(max(0.0, record_at - time.perf_counter()))
    first = sample(args.watch_pid)
    await asyncio.sleep(max(0.0, end_at - time.perf_counter()))
    last = sample(args.watch_pid)
    await asyncio.gather(*tasks)
    return tally, cpu_between(first, last), last["self"] - first["self"]


def percentile(ordered: list[int], fraction: float) -> float | None:
    """Nearest rank, in milliseconds."""
    if not ordered:
        return None
    return round(ordered[max(0, math.ceil(fraction * len(ordered)) - 1)] / 1e6, 3)


def summary(args: argparse.Namespace, latencies_ns: list[int], statuses: Counter, errors: Counter,
            cpu: dict, client_cpu: float, connects: int) -> dict:  # fmt: skip
    latencies_ns.sort()
    return {
        "requests": len(latencies_ns),
        "rps": round(len(latencies_ns) / args.seconds, 1),
        "p50_ms": percentile(latencies_ns, 0.50),
        "p99_ms": percentile(latencies_ns, 0.99),
        "max_ms": percentile(latencies_ns, 1.0),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": dict(errors),
        "connections": args.connections,
        "processes": args.processes,
        "connects": connects,
        "warmup": args.warmup,
        "seconds": args.seconds,
        "cpu": {"client": round(client_cpu / args.seconds, 3), **cpu},
    }


def run_single(args: argparse.Namespace) -> dict:
    tally, cpu, client_cpu = asyncio.run(run_connections(args, time.time()))
    return summary(args, tally.latencies_ns, tally.statuses, tally.errors, cpu, client_cpu, tally.connects)


def run_worker(args: argparse.Namespace) -> dict:
    tally, _, client_cpu = asyncio.run(run_connections(args, args.start_at))
    return {"latencies_ns": tally.latencies_ns, "statuses": tally.statuses, "errors": tally.errors,
            "client_cpu": client_cpu, "connects": tally.connects}  # fmt: skip


def run_split(args: argparse.Namespace) -> dict:
    """P worker processes with the connections split between them; this one only watches."""
    start_wall = time.time() + START_DELAY_SECONDS
    shares = [args.connections // args.processes + (i < args.connections % args.processes)
              for i in range(args.processes)]  # fmt: skip
    base = [sys.executable, "-m", "bench.loadgen", "--url", args.url, "--method", args.method,
            "--seconds", str(args.seconds), "--warmup", str(args.warmup), "--data", args.data,
            "--start-at", repr(start_wall), "--worker"]  # fmt: skip
    for header in args.header:
        base += ["--header", header]
    workers = [subprocess.Popen([*base, "--connections", str(share)], stdout=subprocess.PIPE, cwd=ROOT)
               for share in shares if share]  # fmt: skip
    try:
        start = time.perf_counter() + (start_wall - time.time())
        time.sleep(max(0.0, start + args.warmup - time.perf_counter()))
        first = sample(args.watch_pid)
        time.sleep(max(0.0, start + args.warmup + args.seconds - time.perf_counter()))
        last = sample(args.watch_pid)
        outputs = [worker.communicate(timeout=args.seconds + 60)[0] for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    if any(worker.returncode for worker in workers):
        raise SystemExit("loadgen: a worker process failed")
    latencies: list[int] = []
    statuses: Counter = Counter()
    errors: Counter = Counter()
    client_cpu, connects = 0.0, 0
    for output in outputs:
        part = json.loads(output)
        latencies += part["latencies_ns"]
        statuses.update({int(k): v for k, v in part["statuses"].items()})
        errors.update(part["errors"])
        client_cpu += part["client_cpu"]
        connects += part["connects"]
    return summary(args, latencies, statuses, errors, cpu_between(first, last), client_cpu, connects)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--url", required=True)
    parser.add_argument("--method", default="GET", type=str.upper)
    parser.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'")
    parser.add_argument("--data", default="", help="request body (sent with a Content-Length)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0, help="recorded window")
    parser.add_argument("--warmup", type=float, default=1.0, help="unrecorded seconds before it")
    parser.add_argument("--processes", type=int, default=1, help="client processes to split over")
    parser.add_argument("--watch-pid", type=int, action="append", default=[],
                        help="report this process's CPU over the window (repeatable)")  # fmt: skip
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.connections < 1 or args.processes < 1 or args.seconds <= 0 or args.warmup < 0:
        parser.error("--connections and --processes must be >= 1, --seconds > 0, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        result = run_worker(args)
    elif args.processes == 1:
        result = run_single(args)
    else:
        result = run_split(args)
    print(json.dumps(result, separators=(",", ":") if args.worker else (", ", ": ")))


if __name__ == "__main__":
    main()
