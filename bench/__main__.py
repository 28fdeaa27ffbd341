"""`make bench`: the sweep's throughput, peak RSS and latency figures, printed as one table.

Each figure is the median of --repeat runs; the fake ESI runs in its own process, each sweep in
a fresh child process (so its peak RSS is its own) against a fresh database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg

from bench.http import http_rows

POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def fake_esi(*args: str) -> Iterator[str]:
    process = subprocess.Popen(
        # Unlimited tokens: a benchmark sweeps more often than ESI's bucket allows.
        [sys.executable, "-m", "tornado_admin.fake_esi", "--port", "0", "--bucket-tokens", str(10**9), *args],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )
    try:
        line = process.stdout.readline()
        match = re.search(r"http://[\w.:\[\]]+", line)
        if not match:
            raise SystemExit(f"fake ESI did not start: {line!r}")
        yield match.group(0)
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextmanager
def database(kind: str) -> Iterator[str]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="bench-") as folder:
            yield f"sqlite:///{folder}/market.db"
        return
    schema = f"bench_{secrets.token_hex(4)}"
    asyncio.run(_pg(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{POSTGRES_URL}?search_path={schema}"
    finally:
        asyncio.run(_pg(f"DROP SCHEMA {schema} CASCADE"))


async def _pg(sql: str) -> None:
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def child(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "bench.sweep_child", *args],
        check=True, capture_output=True, text=True, cwd=ROOT,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def sweep_rows(kinds: list[str], repeat: int, layout: str) -> list[tuple[str, str, str]]:
    rows = []
    with fake_esi("--layout", layout) as url:
        for kind in kinds:
            sweeps, limits = [], []
            for _ in range(repeat):
                with database(kind) as db:
                    sweeps.append(child("--esi", url, "--db", db, "--concurrency", "16"))
                with database(kind) as db:
                    limits.append(child("--db", db, "--no-http", "--layout", layout))
            rate = statistics.median(r["orders"] / r["seconds"] for r in sweeps)
            limit = statistics.median(r["orders"] / r["seconds"] for r in limits)
            orders = sweeps[0]["orders"]
            rows.append((f"sweep into {kind}, {orders:,} orders, no latency", f"{rate:,.0f} orders/s",
                         "150,000 orders/s"))
            rows.append((f"  parse + write alone into {kind} (the limit)", f"{limit:,.0f} orders/s",
                         f"sweep at {rate / limit:.0%} of it"))
            rows.append((f"  sweep peak RSS ({kind})", f"{median_of(sweeps, 'peak_rss_mb'):.0f} MB",
                         "< 150 MB"))
    return rows


def latency_rows(repeat: int, layout: str, latency_ms: int, concurrency: int) -> list[tuple[str, str, str]]:
    runs = []
    with fake_esi("--layout", layout, "--latency-ms", str(latency_ms)) as url:
        for _ in range(repeat):
            with database("sqlite") as db:
                runs.append(child("--esi", url, "--db", db, "--concurrency", str(concurrency)))
    pages = round(runs[0]["orders"] / 1000)
    ideal = pages * latency_ms / 1000 / concurrency
    took = median_of(runs, "seconds")
    return [(f"sweep, {latency_ms} ms per page, ESI_CONCURRENCY={concurrency}, {pages} pages",
             f"{took:.2f} s = {took / ideal:.2f}x ideal ({ideal:.2f} s)", "<= 1.3x")]


def main() -> None:
    parser = argparse.ArgumentParser(prog="make bench")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--layout", default="bench")
    parser.add_argument("--databases", default="sqlite,postgres")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--stores", default="memory,sqlite,redis", help="job stores of the HTTP figures")
    args = parser.parse_args()
    rows: list[tuple[str, str, str]] = []
    if not args.skip_sweep:
        rows += sweep_rows(args.databases.split(","), args.repeat, args.layout)
    if not args.skip_latency:
        rows += latency_rows(args.repeat, args.layout, 100, 16)
    if not args.skip_http:
        rows += http_rows(args.repeat, args.stores.split(","))
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    print(f"{'figure':<{width}}  {'measured (median of ' + str(args.repeat) + ')':<{value_width}}  target")
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:<{value_width}}  {target}")


if __name__ == "__main__":
    main()
