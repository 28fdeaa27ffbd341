"""Run the fake ESI until SIGINT/SIGTERM: `python -m tornado_admin.fake_esi --port 8081`.

Prints one line, the base URL, once it is listening (benchmarks wait for it).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from tornado_admin.fake_esi.faults import REGION_FAULTS
from tornado_admin.fake_esi.layouts import LAYOUTS, layout
from tornado_admin.fake_esi.server import FakeEsi
from tornado_admin.fake_esi.state import RegionSpec


def _pair(text: str) -> tuple[int, str]:
    region, sep, value = text.partition(":")
    if not sep or not region.strip().isdigit() or not value:
        raise argparse.ArgumentTypeError(f"expected ID:VALUE, got {text!r}")
    return int(region), value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tornado_admin.fake_esi", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    p.add_argument("--layout", choices=LAYOUTS, help="preset regions (default: small, or none "
                   "when --region is given)")  # fmt: skip
    p.add_argument("--region", type=_pair, action="append", default=[], metavar="ID:ORDERS",
                   help="add or replace a region with this many orders (repeatable)")  # fmt: skip
    p.add_argument("--fault", type=_pair, action="append", default=[], metavar="ID:KIND",
                   help=f"persistent fault of a region: {', '.join(sorted(REGION_FAULTS))}")  # fmt: skip
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--expires", type=int, default=300, help="seconds (Expires, max-age)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--page-size", type=int, default=1000)
    p.add_argument("--error-limit", type=int, default=100)
    p.add_argument("--bucket-tokens", type=int, default=12_000,
                   help="rate-limit tokens per 15 minutes (benchmarks need more)")  # fmt: skip
    return p.parse_args(argv)


def build(args: argparse.Namespace) -> FakeEsi:
    """The FakeEsi the arguments describe; raises ValueError on a bad region or fault."""
    name = args.layout or (None if args.region else "small")
    regions: dict[int, int | RegionSpec] = dict(layout(name)) if name else {}
    for region_id, orders in args.region:
        if not orders.isdigit():
            raise ValueError(f"--region {region_id}: order count must be an integer >= 0")
        regions[region_id] = int(orders)
    for region_id, kind in args.fault:
        if region_id not in regions:
            raise ValueError(f"--fault {region_id}: no such region")
        orders = regions[region_id]
        count = orders.orders if isinstance(orders, RegionSpec) else orders
        regions[region_id] = RegionSpec(count, kind)
    return FakeEsi(
        regions,
        latency_seconds=args.latency_ms / 1000,
        expires_seconds=args.expires,
        seed=args.seed,
        page_size=args.page_size,
        error_limit=args.error_limit,
        bucket_tokens=args.bucket_tokens,
    )


async def serve(esi: FakeEsi, host: str, port: int) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await esi.start(host, port)
    try:
        sys.stdout.write(esi.url + "\n")
        sys.stdout.flush()
        await stopping.wait()
    finally:
        await esi.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        esi = build(args)
    except ValueError as exc:
        sys.stderr.write(f"fake_esi: {exc}\n")
        return 2
    asyncio.run(serve(esi, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
