"""`GET /metrics`: the server's counters in the Prometheus text format (docs/metrics.md).

One `Metrics` per app, each with a `CollectorRegistry` of its own: the process-wide default
registry would mix the apps that tests build by the dozen in one process, and would export
whatever else registered there. Counters are this process's: instances sharing a store each
count their own runs and requests. Two kinds of figures:

- events counted as they happen: runs (the runner tells `run_started`/`run_finished`) and failed
  authentications (the admin handlers tell `auth_checked`);
- state read at scrape time: the ESI client's own tallies (`EsiClient.status_counts`, the
  `LimitGate`'s pauses and budgets) and, from the job store, the age of the market data. A store
  that is down or slow does not fail the scrape: its figures are left out and
  `tornado_admin_job_store_up` says 0.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from backends.base import Job, JobStatus, Trigger
from tornado_admin.auth import Verdict
from tornado_admin.context import data_age_ms
from tornado_admin.handlers import AdminHandler, JsonHandler

if TYPE_CHECKING:
    from tornado_admin.context import AppContext
    from tornado_admin.market.esi import EsiClient

log = logging.getLogger("tornado_admin.metrics")

# The classic text format, which every Prometheus (and most other scrapers) reads. Spelled out:
# prometheus_client's CONTENT_TYPE_LATEST became the 1.0.0 format in 0.22, and our names need
# nothing that format adds.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# A sweep takes seconds (nothing changed) to minutes (every region new); JOB_MAX_DURATION_SECONDS
# is 600 by default, and at most a day.
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
# As /readyz: a scrape must answer within Prometheus' default 10 s timeout, store or not.
STORE_TIMEOUT_SECONDS = 2.0
_FAILURES = {Verdict.INVALID: "invalid", Verdict.MALFORMED: "malformed", Verdict.DUPLICATE: "duplicate"}
_ENDED = (JobStatus.COMPLETED.value, JobStatus.FAILED.value)

# The `*_created` series double every counter for a figure no dashboard here needs.
prometheus_client.disable_created_metrics()


class Metrics:
    """The app's metrics; also the `JobRunner`'s listener (`runner.listener = metrics`)."""

    def __init__(self, esi: EsiClient | None = None) -> None:
        self.esi = esi
        self.registry = CollectorRegistry()
        r = self.registry
        self._started = Counter("tornado_admin_runs_started_total", "Runs this process started.",
                                ["trigger"], registry=r)
        self._finished = Counter(
            "tornado_admin_runs_finished_total",
            "Runs of this process that ended; failed includes timed out, interrupted and lease lost.",
            ["trigger", "status"], registry=r,
        )  # fmt: skip
        self._duration = Histogram("tornado_admin_run_duration_seconds", "How long runs took, start to end.",
                                   ["trigger", "status"], buckets=DURATION_BUCKETS, registry=r)
        self._orders = Counter("tornado_admin_orders_stored_total",
                               "Orders written to the market database by runs of this process.", registry=r)
        self._regions_failed = Counter("tornado_admin_regions_failed_total",
                                       "Regions that failed in completed runs (they kept their orders).",
                                       registry=r)  # fmt: skip
        self._auth_failures = Counter(
            "tornado_admin_auth_failures_total",
            "Failed authentications (credentials presented and wrong or malformed), by realm and reason.",
            ["realm", "reason"], registry=r,
        )  # fmt: skip
        # Every series from the start, at 0: rate() and absent-series alerts need them before the
        # first event.
        for trigger in Trigger:
            self._started.labels(trigger.value)
            for status in _ENDED:
                self._finished.labels(trigger.value, status)
        for realm in ("admin", "cron"):
            for reason in _FAILURES.values():
                self._auth_failures.labels(realm, reason)
        self._scraped = _ScrapeTime(self)
        r.register(self._scraped)

    # -- events ----------------------------------------------------------------------------------

    def run_started(self, trigger: Trigger) -> None:
        self._started.labels(Trigger(trigger).value).inc()

    def run_finished(
        self,
        trigger: Trigger,
        status: JobStatus,
        result: Mapping[str, Any] | None,
        seconds: float,
        progress: Mapping[str, Any],
    ) -> None:
        labels = (Trigger(trigger).value, JobStatus(status).value)
        self._finished.labels(*labels).inc()
        self._duration.labels(*labels).observe(max(0.0, seconds))
        # The progress counts committed regions, so a run that failed midway (timed out) still
        # reports what it wrote; the result only exists for completed runs.
        self._orders.inc(_count(progress.get("ordersStored")))
        if result is not None:
            self._regions_failed.inc(_count(result.get("errorCount")))

    def auth_checked(self, realm: str, verdict: Verdict) -> None:
        """Called with every verdict; counts the failures among them (DESIGN.md section 4: a
        request without credentials is not one)."""
        reason = _FAILURES.get(verdict)
        if reason is not None:
            self._auth_failures.labels(realm, reason).inc()

    # -- the scrape ------------------------------------------------------------------------------

    async def exposition(self, context: AppContext) -> bytes:
        """The text of one scrape. Never raises for a store that is down or slow."""
        up, last = await _last_success(context)
        snapshot = _Snapshot(up, last, context.clock.now_ms(), len(context.runner.active),
                             getattr(context.clock, "offset_seconds", lambda: None)())
        # No await from here on: this scrape's snapshot is the one generate_latest reads.
        self._scraped.snapshot = snapshot
        return generate_latest(self.registry)


class _Snapshot:
    __slots__ = ("clock_offset", "in_progress", "last", "now_ms", "store_up")

    def __init__(
        self, store_up: bool, last: Job | None, now_ms: int, in_progress: int, clock_offset: float | None
    ) -> None:
        self.store_up, self.last, self.now_ms, self.in_progress = store_up, last, now_ms, in_progress
        self.clock_offset = clock_offset


class _ScrapeTime:
    """A collector of the figures read at scrape time (prometheus_client's Collector protocol)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.snapshot: _Snapshot | None = None

    def describe(self) -> list[Metric]:
        return []  # names vary with what is known: not checked for clashes at registration

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshot
        if snapshot is not None:
            yield from _store_figures(snapshot)
        if self.metrics.esi is not None:
            yield from _esi_figures(self.metrics.esi)


def _store_figures(s: _Snapshot) -> Iterator[Metric]:
    yield GaugeMetricFamily("tornado_admin_job_store_up",
                            "1 when the job store answered this scrape, 0 when not.", value=int(s.store_up))
    yield GaugeMetricFamily("tornado_admin_runs_in_progress", "Runs of this process still going.",
                            value=s.in_progress)
    if s.clock_offset is not None:  # SystemClock: a wall-clock step still being absorbed
        yield GaugeMetricFamily("tornado_admin_clock_offset_seconds",
                                "Wall clock minus the clock job times use; not 0 while a step is absorbed.",
                                value=s.clock_offset)
    if not s.store_up:
        return  # unknown, not stale: the data's age is left out rather than guessed
    age_ms = data_age_ms(s.last, s.now_ms)
    if age_ms is None:
        age = math.inf  # no successful run ever: as stale as it gets, so age alerts fire
    else:
        age = age_ms / 1000
        yield GaugeMetricFamily("tornado_admin_last_success_timestamp_seconds",
                                "When the newest successful run completed (any instance), Unix time.",
                                value=s.last.completed_ms / 1000)
    yield GaugeMetricFamily("tornado_admin_data_age_seconds",
                            "Seconds since the newest successful run completed; +Inf when there was none.",
                            value=age)


def _esi_figures(esi: EsiClient) -> Iterator[Metric]:
    requests = CounterMetricFamily("tornado_admin_esi_requests", "ESI responses, by HTTP status code.",
                                   labels=["code"])
    for code, count in sorted(esi.status_counts.items()):
        requests.add_metric([str(code)], count)
    yield requests
    yield CounterMetricFamily("tornado_admin_esi_not_modified",
                              "ESI 304 responses: pages confirmed unchanged by their ETag.",
                              value=esi.status_counts.get(304, 0))
    gate = esi.gate
    pauses = CounterMetricFamily("tornado_admin_esi_pauses", "Pauses of every ESI request, by the limit met.",
                                 labels=["limit"])
    pauses.add_metric(["error_limit"], gate.error_limit_pauses)
    pauses.add_metric(["rate_limit"], gate.rate_limit_pauses)
    yield pauses
    yield GaugeMetricFamily("tornado_admin_esi_pause_remaining_seconds",
                            "How long the current pause still holds every ESI request; 0 when none.",
                            value=gate.paused_for)
    if gate.error_limit_remain is not None:  # unknown until ESI has answered once
        yield GaugeMetricFamily("tornado_admin_esi_error_limit_remain",
                                "ESI's error budget left in its window, as its last answer said.",
                                value=gate.error_limit_remain)
    if gate.rate_limit_remaining is not None:
        yield GaugeMetricFamily("tornado_admin_esi_rate_limit_remaining",
                                "Tokens left in ESI's rate-limit bucket, as its last market answer said.",
                                value=gate.rate_limit_remaining)


async def _last_success(context: AppContext) -> tuple[bool, Job | None]:
    try:
        last = await asyncio.wait_for(
            context.job_store.last_success(context.runner.job_name), STORE_TIMEOUT_SECONDS
        )
    except Exception as exc:  # any failure: the store is "down" for this scrape, never a 500
        log.warning("Metrics: job store unavailable", extra={"error": str(exc) or type(exc).__name__})
        return False, None
    return True, last


def _count(value: object) -> int:
    """A count from a job's progress or result: what the work reported, if it is one."""
    return value if type(value) is int and value > 0 else 0


class MetricsHandler(AdminHandler):
    """`GET /metrics`: admin credentials (and their throttle) unless METRICS_PUBLIC=true. Its
    refusals are the admin routes' JSON ones; only the 200 is Prometheus text."""

    async def prepare(self) -> None:
        if self.context.settings.metrics_public:
            JsonHandler.prepare(self)  # the method check alone: no credentials, none counted
            return
        await super().prepare()

    async def get(self) -> None:
        body = await self.context.metrics.exposition(self.context)
        self.set_header("Content-Type", CONTENT_TYPE)
        self.finish(body)
