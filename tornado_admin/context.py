"""What the handlers are given (built once at startup, passed down) and the job's API shape."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from backends.base import Clock, Job, JobStore
from tornado_admin.clock import iso_ms
from tornado_admin.jobs import JobRunner
from tornado_admin.market.orders import OrderStore
from tornado_admin.settings import Settings

if TYPE_CHECKING:
    from tornado_admin.metrics import Metrics


def _new_metrics() -> Metrics:
    from tornado_admin.metrics import Metrics  # here: it builds on the handlers, which import this module

    return Metrics()


@dataclass(frozen=True)
class AppContext:
    settings: Settings
    runner: JobRunner
    job_store: JobStore
    order_store: OrderStore
    clock: Clock
    metrics: Metrics = field(default_factory=_new_metrics)  # a registry of this app's own


def job_body(job: Job, now_ms: int, live_progress: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A job as `GET /api/admin/job-status/{jobId}` answers it (DESIGN.md section 4)."""
    end = job.completed_ms if job.completed_ms is not None else now_ms
    body: dict[str, Any] = {
        "jobId": job.job_id,
        "jobName": job.job_name,
        "trigger": job.trigger.value,
        "status": job.status.value,
        "startedAt": iso_ms(job.started_ms),
    }
    if job.completed_ms is not None:
        body["completedAt"] = iso_ms(job.completed_ms)
    body["duration"] = max(0, end - job.started_ms)
    progress = live_progress if job.completed_ms is None and live_progress else job.progress
    if progress:
        body["progress"] = dict(progress)
    if job.result is not None:
        body["result"] = dict(job.result)
    if job.error is not None:
        body["error"] = job.error
    return body


def data_age_ms(last: Job | None, now_ms: int) -> int | None:
    """How old the market data is: since the last successful run completed; None if none did.
    Clamped at 0: another instance sharing the store may run a little ahead of this one's clock."""
    if last is None or last.completed_ms is None:
        return None
    return max(0, now_ms - last.completed_ms)
