"""In-process job store, for tests and throwaway runs: nothing survives the process.

Atomicity: no method awaits between reading and writing its state, so on one event loop each
state change is one uninterrupted step.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from backends.base import (
    ABANDONED,
    AlreadyRunning,
    Clock,
    Job,
    JobNotFoundError,
    JobStatus,
    JobStore,
    Lease,
    LeaseLostError,
    PeriodClaimed,
    Started,
    StartOutcome,
    Trigger,
    new_job_id,
    new_lease_token,
)


class MemoryJobStore(JobStore):
    def __init__(self, clock: Clock, history_limit: int) -> None:
        super().__init__(clock, history_limit)
        self._jobs: OrderedDict[str, Job] = OrderedDict()  # by id, oldest start first
        self._running: dict[str, str] = {}  # job name -> running job id
        self._tokens: dict[str, str] = {}  # running job id -> its lease token
        self._periods: dict[str, int] = {}  # job name -> last period claimed
        self._last_success: dict[str, Job] = {}
        self._auth_failures: dict[tuple[str, int], int] = {}  # (client, window) -> failures

    @classmethod
    async def open(cls, url: str, *, clock: Clock, history_limit: int) -> MemoryJobStore:
        return cls(clock, history_limit)

    async def start(
        self, job_name: str, trigger: Trigger, *, lease_ms: int, period: int | None = None
    ) -> StartOutcome:
        now = self.clock.now_ms()
        running = self._reap(job_name, now)
        if running is not None:
            return AlreadyRunning(running)
        if period is not None:
            if self._periods.get(job_name, -1) >= period:
                return PeriodClaimed(period)
            self._periods[job_name] = period
        job = Job(
            job_id=new_job_id(), job_name=job_name, trigger=Trigger(trigger),
            status=JobStatus.RUNNING, started_ms=now, lease_expires_ms=now + lease_ms,
        )
        lease = Lease(job.job_id, job_name, new_lease_token(), now + lease_ms)
        self._jobs[job.job_id] = job
        self._running[job_name] = job.job_id
        self._tokens[job.job_id] = lease.token
        self._trim(job_name)
        return Started(lease, job)

    async def renew(
        self, lease: Lease, *, lease_ms: int, progress: Mapping[str, Any] | None = None
    ) -> Lease:
        now = self.clock.now_ms()
        job = self._owned(lease, now)
        expires = now + lease_ms
        changes: dict[str, Any] = {"lease_expires_ms": expires}
        if progress is not None:
            changes["progress"] = dict(progress)
        self._jobs[job.job_id] = dataclasses.replace(job, **changes)
        return dataclasses.replace(lease, expires_ms=expires)

    async def finish(
        self,
        lease: Lease,
        *,
        status: JobStatus,
        result: Mapping[str, Any] | None = None,
        error: str | None = None,
    ) -> Job:
        now = self.clock.now_ms()
        job = self._owned(lease, now)
        done = dataclasses.replace(
            job, status=JobStatus(status), completed_ms=now, lease_expires_ms=None,
            result=dict(result) if result is not None else None, error=error,
        )
        self._record_finished(done)
        return done

    async def get(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFoundError(job_id)
        if job.status is JobStatus.RUNNING:
            self._reap(job.job_name, self.clock.now_ms())
        return self._jobs[job_id]

    async def list(self, job_name: str | None = None, *, limit: int = 20) -> list[Job]:
        now = self.clock.now_ms()
        for name in list(self._running):
            self._reap(name, now)
        jobs = [j for j in reversed(self._jobs.values()) if job_name in (None, j.job_name)]
        return jobs[:limit]

    async def current(self, job_name: str) -> Job | None:
        return self._reap(job_name, self.clock.now_ms())

    async def last_success(self, job_name: str) -> Job | None:
        return self._last_success.get(job_name)

    async def note_auth_failure(self, client: str, *, window_ms: int) -> int:
        window = self.clock.now_ms() // window_ms
        if len(self._auth_failures) > 10_000:  # forget past windows before they pile up
            self._auth_failures = {k: v for k, v in self._auth_failures.items() if k[1] >= window}
        count = self._auth_failures.get((client, window), 0) + 1
        self._auth_failures[(client, window)] = count
        return count

    async def auth_failures(self, client: str, *, window_ms: int) -> tuple[int, int]:
        now = self.clock.now_ms()
        window = now // window_ms
        return self._auth_failures.get((client, window), 0), (window + 1) * window_ms - now

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None

    # -- one-step helpers (no await) -----------------------------------------------------------

    def _reap(self, job_name: str, now: int) -> Job | None:
        """The live running job of that name; a lapsed one is recorded abandoned first."""
        job_id = self._running.get(job_name)
        if job_id is None:
            return None
        job = self._jobs[job_id]
        if now < job.lease_expires_ms:
            return job
        self._record_finished(dataclasses.replace(
            job, status=JobStatus.FAILED, completed_ms=job.lease_expires_ms,
            lease_expires_ms=None, error=ABANDONED,
        ))  # fmt: skip
        return None

    def _owned(self, lease: Lease, now: int) -> Job:
        job = self._jobs.get(lease.job_id)
        if job is None or job.status is not JobStatus.RUNNING:
            raise LeaseLostError(f"job {lease.job_id} is no longer running")
        if self._tokens.get(job.job_id) != lease.token:
            raise LeaseLostError(f"job {lease.job_id} is held by another lease")
        if now >= job.lease_expires_ms:
            self._reap(job.job_name, now)
            raise LeaseLostError(f"the lease of job {lease.job_id} lapsed")
        return job

    def _record_finished(self, job: Job) -> None:
        self._jobs[job.job_id] = job
        self._running.pop(job.job_name, None)
        self._tokens.pop(job.job_id, None)
        if job.status is JobStatus.COMPLETED:
            self._last_success[job.job_name] = job
        self._trim(job.job_name)

    def _trim(self, job_name: str) -> None:
        finished = [
            j.job_id for j in self._jobs.values()
            if j.job_name == job_name and j.status is not JobStatus.RUNNING
        ]  # fmt: skip
        for job_id in finished[: max(0, len(finished) - self.history_limit)]:
            del self._jobs[job_id]
