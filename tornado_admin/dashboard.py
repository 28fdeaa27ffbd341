"""The operator dashboard (`GET /admin` and its script and style sheet) and `GET /api/status`, the
data's freshness for any front end. The page is static: its script calls the admin API as curl does.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tornado.web

from backends.base import Job
from tornado_admin.clock import iso_ms
from tornado_admin.context import AppContext, data_age_ms
from tornado_admin.handlers import JsonHandler

STATIC_DIR = Path(__file__).with_name("static")
# No inline script or style, no other origin, no framing, no form submission (the token form is
# handled by the script; if the script failed, the browser still refuses to submit it anywhere).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
    "Referrer-Policy": "no-referrer",
}
# Data older than this many fetch intervals is stale: one missed run is tolerated, two are not.
STALE_AFTER_INTERVALS = 2


@dataclass(frozen=True)
class Asset:
    """One file of the page, read once at startup: the route never touches the file system, so
    no request path can name another file."""

    path: str
    content_type: str
    body: bytes
    etag: str

    @classmethod
    def load(cls, path: str, name: str, content_type: str) -> Asset:
        body = (STATIC_DIR / name).read_bytes()
        return cls(path, content_type, body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


def load_assets() -> tuple[Asset, ...]:
    return (
        Asset.load("/admin", "admin.html", "text/html; charset=UTF-8"),
        Asset.load("/admin/admin.js", "admin.js", "text/javascript; charset=UTF-8"),
        Asset.load("/admin/admin.css", "admin.css", "text/css; charset=UTF-8"),
    )


class AssetHandler(JsonHandler):
    """One asset, with a strict CSP. `no-cache` plus an ETag: a browser revalidates (a 304 costs
    a few bytes) and never runs an old script against a newer server after an upgrade."""

    ALLOWED = ("GET", "HEAD")

    def initialize(self, context: AppContext, asset: Asset) -> None:  # type: ignore[override]
        super().initialize(context)
        self.asset = asset

    def set_default_headers(self) -> None:
        super().set_default_headers()  # errors (a 405) stay JSON and uncached
        for name, value in SECURITY_HEADERS.items():
            self.set_header(name, value)

    def compute_etag(self) -> str:  # type: ignore[override]
        return self.asset.etag

    def get(self) -> None:
        self.set_header("Content-Type", self.asset.content_type)
        self.set_header("Cache-Control", "no-cache")
        self.finish(self.asset.body)  # Tornado answers a matching If-None-Match with 304

    head = get


class StatusHandler(JsonHandler):
    """`GET /api/status`: when data last arrived and whether it is stale. No auth: it holds no
    secret, and front ends on other origins may read it (hence CORS for everyone)."""

    ALLOWED = ("GET", "HEAD")

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Access-Control-Allow-Origin", "*")
        self.set_header("X-Content-Type-Options", "nosniff")

    async def get(self) -> None:
        context = self.context
        # A store that is down raises StoreUnavailableError: write_error answers 503, as elsewhere.
        last = await context.job_store.last_success(context.runner.job_name)
        self.reply(200, status_body(last, context.clock.now_ms(), context.settings.fetch_interval_seconds))

    head = get


def status_body(last: Job | None, now_ms: int, interval_seconds: int) -> dict[str, Any]:
    """The `/api/status` body. With no successful run yet there is no data: that is stale too,
    so a front end's banner shows until the first run lands."""
    age_ms = data_age_ms(last, now_ms)
    if age_ms is None:
        return {"lastSuccessAt": None, "dataAgeSeconds": None, "stale": True,
                "fetchIntervalSeconds": interval_seconds}  # fmt: skip
    return {
        "lastSuccessAt": iso_ms(last.completed_ms),
        "dataAgeSeconds": age_ms // 1000,
        "stale": age_ms > STALE_AFTER_INTERVALS * interval_seconds * 1000,
        "fetchIntervalSeconds": interval_seconds,
    }


def dashboard_routes(context: AppContext) -> list[tuple[str, type[tornado.web.RequestHandler], dict]]:
    """One route per file (no pattern that takes a path): `/admin/../x` and friends are 404."""
    routes: list[tuple[str, type[tornado.web.RequestHandler], dict]] = [
        (asset.path.replace(".", r"\."), AssetHandler, {"context": context, "asset": asset})
        for asset in load_assets()
    ]
    routes.append((r"/api/status", StatusHandler, {"context": context}))
    return routes
