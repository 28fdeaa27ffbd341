"""The baseline of the HTTP benchmark: `python -m bench.bare_server --port 0`.

One Tornado handler answering any GET with a fixed JSON body shaped and sized like a job-status
body, on the same Tornado and the same default asyncio event loop as the admin server, and
nothing else: no auth, no store, no logging. Prints its base URL once it is listening; exits on
SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import tornado.httpserver
import tornado.netutil
import tornado.web

# A running job's status body with its progress (the admin server answers 170-300 bytes).
BODY = (
    b'{"jobId": "PseCs_UlCd4zMVGUGfCLHw", "jobName": "fetch-market-data", "trigger": "manual", '
    b'"status": "running", "startedAt": "2026-12-04T17:35:17.487Z", "duration": 610, '
    b'"progress": {"regionsDone": 12, "regionsTotal": 70, "ordersStored": 181000, "failed": 0}}'
)


class BareHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(BODY)


async def serve(host: str, port: int, admin_limits: bool = False) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    app = tornado.web.Application([(r"/.*", BareHandler)], log_function=lambda handler: None)
    limits = {}
    if admin_limits:  # the admin server's HTTPServer options, to tell their cost from the app's
        from tornado_admin import app as admin

        limits = {"max_header_size": admin.MAX_HEADER_BYTES, "max_body_size": admin.MAX_BODY_BYTES,
                  "idle_connection_timeout": admin.IDLE_TIMEOUT_SECONDS,
                  "body_timeout": admin.BODY_TIMEOUT_SECONDS}  # fmt: skip
    server = tornado.httpserver.HTTPServer(app, **limits)
    sockets = tornado.netutil.bind_sockets(port, host)
    server.add_sockets(sockets)
    sys.stdout.write(f"http://{host}:{sockets[0].getsockname()[1]}\n")
    sys.stdout.flush()
    await stopping.wait()
    server.stop()
    await server.close_all_connections()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument(
        "--admin-limits", action="store_true",
        help="the admin server's HTTPServer limits and timeouts, not Tornado's defaults",
    )
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.admin_limits))


if __name__ == "__main__":
    main()
