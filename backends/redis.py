"""Job store in Redis (redis.asyncio), shared by every instance pointing at the same database.

Atomicity: each state change is one Lua script, given the caller's `now_ms`; key expiry only
collects finished jobs nobody reads any more.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from backends.base import (
    AlreadyRunning,
    Clock,
    Job,
    JobNotFoundError,
    JobStatus,
    JobStore,
    Lease,
    LeaseLostError,
    PeriodClaimed,
    SingleFlight,
    Started,
    StartOutcome,
    StoreUnavailableError,
    Trigger,
    is_job_id,
    new_job_id,
    new_lease_token,
)

DEFAULT_PREFIX = "tornado-admin"
TIMEOUT_SECONDS = 2.0
MAX_CONNECTIONS = 50
FINISHED_TTL_MS = 30 * 86_400_000
# Every Redis error: besides outages, replies such as MISCONF, BUSY, LOADING or MASTERDOWN mean
# "not now" too; the message keeps the error's type for the log.
UNAVAILABLE = (RedisError, OSError)

# Keys under P = "<prefix>:": job:<id> (hash; optional fields JSON-encoded, absent when None),
# running (hash name -> running id), periods (hash name -> last claimed period), seq (counter),
# history:<name> and jobs (sorted sets of ids by start seq), success:<name> (copy of a job hash).
# ARGV: prefix, now_ms, history_limit, finished-job TTL, then the script's own arguments.
_LIB = """
local P = ARGV[1] .. ':'
local NOW = tonumber(ARGV[2])
local LIMIT = tonumber(ARGV[3])
local function job_key(id) return P .. 'job:' .. id end

local function trim(name)
  local keep = LIMIT
  if redis.call('HEXISTS', P .. 'running', name) == 1 then keep = keep + 1 end
  local history = P .. 'history:' .. name
  for _, id in ipairs(redis.call('ZRANGE', history, 0, -keep - 1)) do
    redis.call('DEL', job_key(id))
    redis.call('ZREM', history, id)
    redis.call('ZREM', P .. 'jobs', id)
  end
end

local function settle(name, key)
  redis.call('HDEL', key, 'lease_expires_ms', 'token')
  redis.call('HDEL', P .. 'running', name)
  redis.call('PEXPIRE', key, ARGV[4])
end

-- The live running job id of that name, or false; a lapsed one is recorded abandoned first.
local function reap(name)
  local id = redis.call('HGET', P .. 'running', name)
  if not id then return false end
  local key = job_key(id)
  local expires = redis.call('HGET', key, 'lease_expires_ms')
  if expires and NOW < tonumber(expires) then return id end
  if expires then
    redis.call('HSET', key, 'status', 'failed', 'error', cjson.encode('abandoned'), 'completed_ms', expires)
  end
  settle(name, key)
  trim(name)
  return false
end

local function owned(id, token)
  local key = job_key(id)
  local name = redis.call('HGET', key, 'job_name')
  if not name or reap(name) ~= id or redis.call('HGET', key, 'token') ~= token then return false end
  return name
end
"""
_SCRIPTS = {
    # name, trigger, period or '', id, token, expires_ms
    "start": """
local name, period, id = ARGV[5], ARGV[7], ARGV[8]
local running = reap(name)
if running then return {'running', redis.call('HGETALL', job_key(running))} end
if period ~= '' then
  local last = redis.call('HGET', P .. 'periods', name)
  if last and tonumber(last) >= tonumber(period) then return {'claimed'} end
  redis.call('HSET', P .. 'periods', name, period)
end
local seq = redis.call('INCR', P .. 'seq')
redis.call('HSET', job_key(id), 'job_id', id, 'job_name', name, 'trigger', ARGV[6], 'status', 'running',
  'started_ms', ARGV[2], 'lease_expires_ms', ARGV[10], 'token', ARGV[9])
redis.call('HSET', P .. 'running', name, id)
redis.call('ZADD', P .. 'history:' .. name, seq, id)
redis.call('ZADD', P .. 'jobs', seq, id)
trim(name)
return {'started', redis.call('HGETALL', job_key(id))}
""",
    # id, token, expires_ms, progress or ''
    "renew": """
if not owned(ARGV[5], ARGV[6]) then return 0 end
redis.call('HSET', job_key(ARGV[5]), 'lease_expires_ms', ARGV[7])
if ARGV[8] ~= '' then redis.call('HSET', job_key(ARGV[5]), 'progress', ARGV[8]) end
return 1
""",
    # id, token, status, result or '', error or ''
    "finish": """
local key = job_key(ARGV[5])
local name = owned(ARGV[5], ARGV[6])
if not name then return false end
redis.call('HSET', key, 'status', ARGV[7], 'completed_ms', ARGV[2])
if ARGV[8] ~= '' then redis.call('HSET', key, 'result', ARGV[8]) end
if ARGV[9] ~= '' then redis.call('HSET', key, 'error', ARGV[9]) end
settle(name, key)
if ARGV[7] == 'completed' then  -- a copy without the job's expiry: it outlives the history
  redis.call('COPY', key, P .. 'success:' .. name, 'REPLACE')
  redis.call('PERSIST', P .. 'success:' .. name)
end
local job = redis.call('HGETALL', key)
trim(name)
return job
""",
    # id
    "get": """
local key = job_key(ARGV[5])
local name = redis.call('HGET', key, 'job_name')
if not name then return false end
reap(name)
return redis.call('HGETALL', key)
""",
    # name
    "current": """
local id = reap(ARGV[5])
if not id then return false end
return redis.call('HGETALL', job_key(id))
""",
    # name or '', limit
    "list": """
local index = P .. 'jobs'
if ARGV[5] ~= '' then
  reap(ARGV[5])
  index = P .. 'history:' .. ARGV[5]
else
  for _, name in ipairs(redis.call('HKEYS', P .. 'running')) do reap(name) end
end
local limit, offset, jobs = tonumber(ARGV[6]), 0, {}
while #jobs < limit do
  local ids = redis.call('ZREVRANGE', index, offset, offset + limit - 1)
  if #ids == 0 then break end
  for _, id in ipairs(ids) do
    local job = redis.call('HGETALL', job_key(id))
    if #job > 0 and #jobs < limit then table.insert(jobs, job) end  -- skip expired hashes
  end
  offset = offset + #ids
end
return jobs
""",
}


class RedisJobStore(JobStore):
    def __init__(
        self, client: aioredis.Redis, clock: Clock, history_limit: int, *,
        prefix: str = DEFAULT_PREFIX, url: str = "",
    ) -> None:  # fmt: skip
        super().__init__(clock, history_limit)
        self._redis = client
        self._prefix = prefix
        self._url = url
        self._scripts = {name: client.register_script(_LIB + body) for name, body in _SCRIPTS.items()}
        self._reads = SingleFlight()

    @classmethod
    async def open(
        cls, url: str, *, clock: Clock, history_limit: int, prefix: str | None = None
    ) -> RedisJobStore:
        # `?prefix=name` keeps several deployments (or test runs) apart in one Redis database.
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        prefix = prefix or query.pop("prefix", [DEFAULT_PREFIX])[0]
        url = urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
        try:
            # No retries: a script whose reply was lost may have run, and must not run twice.
            # A blocking pool: a burst of requests waits its turn for a connection (up to the
            # timeout) instead of failing at once when every connection is busy.
            pool = aioredis.BlockingConnectionPool.from_url(
                url, decode_responses=True, socket_timeout=TIMEOUT_SECONDS,
                socket_connect_timeout=TIMEOUT_SECONDS, max_connections=MAX_CONNECTIONS,
                timeout=TIMEOUT_SECONDS,
            )  # fmt: skip
            client = aioredis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))
        except ValueError as exc:
            message = _scrub(f"invalid job store URL {redact_url(url)}: {exc}", url)
            raise StoreUnavailableError(message) from None
        store = cls(client, clock, history_limit, prefix=prefix, url=url)
        try:
            await store.ping()
        except StoreUnavailableError:
            await client.aclose(close_connection_pool=True)
            raise
        return store

    async def start(
        self, job_name: str, trigger: Trigger, *, lease_ms: int, period: int | None = None
    ) -> StartOutcome:
        now = self.clock.now_ms()
        # Fast path: a live running job (read through the shared `current`) is a true answer for
        # every trigger that finds it; only the rest run the start script, which checks again.
        running = await self.current(job_name)
        if running is not None and now < (running.lease_expires_ms or 0):
            return AlreadyRunning(running)
        job_id, token, expires = new_job_id(), new_lease_token(), now + lease_ms
        period_arg = "" if period is None else period
        args = (job_name, Trigger(trigger).value, period_arg, job_id, token, expires)
        reply = await self._call("start", now, *args)
        if reply[0] == "running":
            return AlreadyRunning(_job(reply[1]))
        if reply[0] == "claimed" and period is not None:
            return PeriodClaimed(period)
        return Started(Lease(job_id, job_name, token, expires), _job(reply[1]))

    async def renew(
        self, lease: Lease, *, lease_ms: int, progress: Mapping[str, Any] | None = None
    ) -> Lease:
        now = self.clock.now_ms()
        expires = now + lease_ms
        if not await self._call("renew", now, lease.job_id, lease.token, expires, _dump(progress)):
            raise LeaseLostError(f"job {lease.job_id} no longer holds this lease")
        return Lease(lease.job_id, lease.job_name, lease.token, expires)

    async def finish(
        self,
        lease: Lease,
        *,
        status: JobStatus,
        result: Mapping[str, Any] | None = None,
        error: str | None = None,
    ) -> Job:
        args = (lease.job_id, lease.token, JobStatus(status).value, _dump(result), _dump(error))
        reply = await self._call("finish", self.clock.now_ms(), *args)
        if not reply:
            raise LeaseLostError(f"job {lease.job_id} no longer holds this lease")
        return _job(reply)

    async def get(self, job_id: str) -> Job:
        # The id becomes part of a key: only a well-formed one ever reaches Redis.
        if not is_job_id(job_id):
            raise JobNotFoundError(job_id)
        reply = await self._shared_read("get", job_id)
        if not reply:  # never issued, trimmed, or expired
            raise JobNotFoundError(job_id)
        return _job(reply)

    async def list(self, job_name: str | None = None, *, limit: int = 20) -> list[Job]:
        if limit <= 0:
            return []
        reply = await self._call("list", self.clock.now_ms(), job_name or "", limit)
        return [_job(fields) for fields in reply]

    async def current(self, job_name: str) -> Job | None:
        reply = await self._shared_read("current", job_name)
        return _job(reply) if reply else None

    async def _shared_read(self, script: str, key: str) -> Any:
        """A read script, shared with identical reads in flight (SingleFlight). A shared reply
        read at an earlier `now` may show a lease that has lapsed by the caller's `now`: then
        the caller reads again on its own, so the lease boundary holds for every caller."""
        now = self.clock.now_ms()
        reply = await self._reads.run((script, key), lambda: self._call(script, self.clock.now_ms(), key))
        if reply and _lapsed(_job(reply), now):
            reply = await self._call(script, now, key)
        return reply

    async def last_success(self, job_name: str) -> Job | None:
        key = f"{self._prefix}:success:{job_name}"
        try:
            # Shared: anonymous /api/status pollers cost one call at a time.
            fields = await self._reads.run(("success", key), lambda: self._redis.hgetall(key))
        except UNAVAILABLE as exc:
            raise self._unavailable(exc) from None
        return _job(fields) if fields else None

    async def note_auth_failure(self, client: str, *, window_ms: int) -> int:
        key = f"{self._prefix}:authfail:{self.clock.now_ms() // window_ms}:{client}"
        try:
            async with self._redis.pipeline(transaction=True) as pipe:  # MULTI: count, then GC
                count, _ = await pipe.incr(key).pexpire(key, 2 * window_ms).execute()
        except UNAVAILABLE as exc:
            raise self._unavailable(exc) from None
        return int(count)

    async def auth_failures(self, client: str, *, window_ms: int) -> tuple[int, int]:
        now = self.clock.now_ms()
        window = now // window_ms
        key = f"{self._prefix}:authfail:{window}:{client}"
        try:
            count = await self._reads.run(("auth", key), lambda: self._redis.get(key))
        except UNAVAILABLE as exc:
            raise self._unavailable(exc) from None
        return int(count or 0), (window + 1) * window_ms - now

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except UNAVAILABLE as exc:
            raise self._unavailable(exc) from None

    async def close(self) -> None:
        await self._redis.aclose(close_connection_pool=True)  # the pool is ours: close it too

    async def _call(self, script: str, now: int, *args: str | int) -> Any:
        try:
            common = (self._prefix, now, self.history_limit, FINISHED_TTL_MS)
            return await self._scripts[script](args=[*common, *args])
        except UNAVAILABLE as exc:
            raise self._unavailable(exc) from None

    def _unavailable(self, exc: BaseException) -> StoreUnavailableError:
        message = f"job store {redact_url(self._url)} unavailable: {type(exc).__name__}: {exc}"
        return StoreUnavailableError(_scrub(message, self._url))


def redact_url(url: str) -> str:
    """The URL with the password of its user info replaced, for error messages."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:[REDACTED]@{host}").geturl()


def _scrub(message: str, url: str) -> str:
    """The message without the URL's password, however a library quoted it."""
    userinfo, at, _ = urlsplit(url).netloc.rpartition("@")
    password = userinfo.split(":", 1)[1] if at and ":" in userinfo else ""
    for form in {password, unquote(password)} - {""}:
        message = message.replace(form, "[REDACTED]")
    return message


def _lapsed(job: Job, now: int) -> bool:
    return job.status is JobStatus.RUNNING and now >= (job.lease_expires_ms or 0)


def _job(fields: list[str] | dict[str, str]) -> Job:
    h = fields if isinstance(fields, dict) else dict(zip(fields[::2], fields[1::2], strict=True))
    return Job(
        job_id=h["job_id"], job_name=h["job_name"], trigger=Trigger(h["trigger"]),
        status=JobStatus(h["status"]), started_ms=int(h["started_ms"]),
        completed_ms=_int(h.get("completed_ms")), lease_expires_ms=_int(h.get("lease_expires_ms")),
        progress=_load(h.get("progress")), result=_load(h.get("result")), error=_load(h.get("error")),
    )


def _int(text: str | None) -> int | None:
    return int(text) if text is not None else None


def _dump(value: Mapping[str, Any] | str | None) -> str:
    """JSON, or '' for None (no JSON text is empty)."""
    if value is None:
        return ""
    return json.dumps(value if isinstance(value, str) else dict(value))


def _load(text: str | None) -> Any:
    return json.loads(text) if text is not None else None
