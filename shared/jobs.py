"""Job records in Redis: the one place the web side and the workers meet.

A job is a Redis hash ``ig:job:<id>``::

    spec      JSON of the immutable part (key id, model, family, request, created, deadline)
    created / deadline   unix times in Redis' clock (these win over the spec's)
    status    queued | running | succeeded | failed | timed_out | canceled
    attempt   fencing token: incremented by every claim
    result    JSON list of stored images (storage keys, sizes), on success
    error     JSON of the GatewayError, on failure
    started / finished / worker

State changes are Lua scripts, so they are atomic across any number of web
and worker processes:

* :meth:`JobStore.claim` moves a non-terminal job to ``running`` and returns a
  new attempt number, or says why not (terminal already, deadline passed).
* :meth:`JobStore.finish` writes a terminal state only if the job is not
  terminal yet *and* the caller still holds the latest attempt, so a slow or
  duplicated run can never overwrite the outcome of a newer one.
* every terminal transition settles the job's bill in the same script
  (:data:`shared.billing.SETTLE_LUA`: refund what was not delivered) and
  publishes the job id on :data:`DONE_CHANNEL`, which the web processes'
  waiters listen to. A job becomes terminal once, so it is settled once.

Liveness (nothing is lost when a process dies): every non-terminal job is in
the sorted set :data:`WATCH`, scored with the time it must be looked at
unless something refreshes it first:

* queued, not yet sent to a queue: ``created + enqueue_grace`` (the web process
  that admitted it may die before it sends the task);
* queued and sent: a while later (one more send, in case the message was
  lost), then its deadline;
* running: the worker's last heartbeat + ``stale_after`` (capped just past
  the deadline). A worker process beats for every job it runs
  (:meth:`JobStore.beat`);
* terminal: not in the set.

Live workers run :meth:`JobStore.reap` on what is due (:mod:`workers.liveness`):
a stale running job gets a new attempt number (so the lost run can never
write) and goes back to its queue, an unsent job is sent, an overdue one ends
``timed_out`` and is refunded. The script decides ownership, so any number
of reapers act once. :meth:`JobStore.claim` refuses a running job whose
heartbeat is fresh, so a redelivered duplicate never steals a live run.

One clock: every time stored here that another host compares — watch times
(heartbeats, enqueue grace, resends), deadlines, ``started``/``finished`` —
is Redis' clock (``TIME``, read inside the scripts), never the calling host's
``time.time()``: a worker whose clock is off can neither make its live jobs
look stale to a reaper nor keep a dead one's jobs looking fresh. Admission
(:meth:`shared.billing.Accounts.admit`) re-bases a new job's ``created``,
``deadline`` and first watch time on Redis' clock too, keeping its budget. The
methods take ``now=`` only so tests can pass a time of their own.

Records expire ``retention`` seconds after creation, or later while a webhook
retry is pending (:meth:`JobStore.set_webhook_state`).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

import redis

from shared.billing import SETTLE_LUA, settle_keys
from shared.errors import Conflict, GatewayError, GatewayTimeout

DONE_CHANNEL = "ig:jobs:done"
WATCH = "ig:jobs:watch"  # zset: non-terminal job id -> unix time it must be looked at
WEBHOOKS_DUE = "ig:webhooks:due"  # zset: job id -> unix time its next delivery is due
GENERATE_TASK = "imagegate.generate"  # the Celery task name both sides agree on
DELIVER_WEBHOOK_TASK = "imagegate.deliver_webhook"
WEBHOOK_QUEUE = "webhooks"
_JOB = "ig:job:{}"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELED = "canceled"


TERMINAL = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.TIMED_OUT, JobStatus.CANCELED}
)


@dataclass(frozen=True)
class Liveness:
    """How the job records notice work that nobody is doing any more."""

    stale_after: float = 15.0  # a running job without a heartbeat this long is taken over
    enqueue_grace: float = 10.0  # a queued job not sent to a queue by then is sent again
    resend_after: float = 60.0  # a sent job still queued this long is sent once more
    late: float = 2.0  # past its deadline a running job's worker has this long to end it
    max_sends: int = 2  # sends per queued spell (first send + one resend), then wait


def liveness_from(settings: Any) -> Liveness:
    """The :class:`Liveness` of a :class:`shared.settings.Settings`."""
    return Liveness(
        stale_after=settings.job_stale_seconds,
        enqueue_grace=settings.enqueue_grace_seconds,
        resend_after=settings.resend_after_seconds,
    )


@dataclass(frozen=True)
class StoredImage:
    key: str
    width: int
    height: int
    content_type: str
    revised_prompt: str | None = None
    # What the upstream reported of the call that made it (OpenAI's GPT image models:
    # `quality`, `background`, `usage`), kept on the job's first image only and shown as
    # OpenAI's top-level response fields.
    reported: dict[str, Any] | None = None

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


@dataclass(frozen=True)
class Job:
    id: str
    key_id: str
    model: str
    family: str
    queue: str
    request: dict[str, Any]
    created: float
    deadline: float
    status: JobStatus = JobStatus.QUEUED
    attempt: int = 0
    images: tuple[StoredImage, ...] = ()
    error: dict[str, Any] | None = None
    started: float | None = None
    finished: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    webhook_url: str | None = None
    webhook: dict[str, Any] | None = None  # delivery state, kept by the webhook deliverer
    candidate: int = 0  # virtual models: index of the route being tried (meta["routes"])
    serving: str | None = None  # the real model running (or that ran) the job
    fallbacks: tuple[dict[str, Any], ...] = ()  # routes given up, with why

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


def redis_clock(client: redis.Redis) -> float:
    """Redis' clock (unix time, one ``TIME``): the one clock for times that several hosts
    compare (watch times, deadlines, webhook leases), whatever each host's clock says."""
    seconds, micros = client.time()
    return seconds + micros / 1_000_000


def new_job_id() -> str:
    return "imgjob_" + secrets.token_hex(12)


def timeout_error(job_id: str) -> GatewayTimeout:
    return GatewayTimeout(
        f"The image was not ready within the time budget. Job id: {job_id}.",
        extra={"job_id": job_id},
        headers={"x-job-id": job_id},
    )


_TERMINAL_LUA = "{" + ",".join(f"['{s.value}']=true" for s in TERMINAL) + "}"

# One clock for every host: `clock(arg)` is the time a caller passed (tests inject
# one), or Redis' own clock when the argument is empty. As a string, for HSET/XADD.
# Redis 7 replicates a script's effects, so reading TIME before writing is allowed.
_CLOCK_LUA = """
local function clock(given)
  if given ~= '' then return given end
  local t = redis.call('TIME')
  return t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
end
"""

# After a terminal transition: nothing to watch any more, and a job with a
# webhook is due for delivery now.
_NOTIFY_LUA = f"""
redis.call('ZREM', '{WATCH}', redis.call('HGET', job, 'job_id'))
if redis.call('HEXISTS', job, 'webhook_url') == 1 then
  redis.call('ZADD', '{WEBHOOKS_DUE}', tonumber(now), redis.call('HGET', job, 'job_id'))
end
"""

# Moves the job (`job` in scope) to timed_out and settles it; needs `now`, ARGV[tmo] error.
_EXPIRE_LUA = f"""
redis.call('HSET', job, 'status', 'timed_out', 'finished', now, 'error', timeout_json)
local delivered = 0
{SETTLE_LUA}
{_NOTIFY_LUA}
redis.call('PUBLISH', '{DONE_CHANNEL}', redis.call('HGET', job, 'job_id'))
"""

# KEYS[1] job, KEYS[2..4] billing (balance, ledger, usage);
# ARGV: now ('' = Redis' clock), timeout error JSON, worker name, job id, stale_after, late
# Returns {'run', attempt, now, <the record as HGETALL gives it>} or {outcome, ...}.
_CLAIM = f"""
{_CLOCK_LUA}
local terminal = {_TERMINAL_LUA}
local job = KEYS[1]
local now = clock(ARGV[1])
local st = redis.call('HGET', job, 'status')
if not st then return {{'missing'}} end
if terminal[st] then return {{'terminal', st}} end
if st == 'running' then
  local beat = redis.call('ZSCORE', '{WATCH}', ARGV[4])
  if beat and tonumber(beat) > tonumber(now) then return {{'busy'}} end
end
local deadline = tonumber(redis.call('HGET', job, 'deadline'))
if tonumber(now) >= deadline then
  local timeout_json = ARGV[2]
  {_EXPIRE_LUA}
  return {{'expired'}}
end
local attempt = redis.call('HINCRBY', job, 'attempt', 1)
redis.call('HSET', job, 'status', 'running', 'started', now, 'worker', ARGV[3])
redis.call('ZADD', '{WATCH}', math.min(tonumber(now) + tonumber(ARGV[5]),
  deadline + tonumber(ARGV[6])), ARGV[4])
local out = redis.call('HGETALL', job)
table.insert(out, 1, now)
table.insert(out, 1, tostring(attempt))
table.insert(out, 1, 'run')
return out
"""

# Heartbeat of one worker process. KEYS: job records; ARGV: now ('' = Redis' clock),
# stale_after, late, then the attempt each job runs as. Returns how many are still held.
_BEAT = f"""
{_CLOCK_LUA}
local now = tonumber(clock(ARGV[1]))
local held = 0
for i, job in ipairs(KEYS) do
  local f = redis.call('HMGET', job, 'status', 'attempt', 'deadline', 'job_id')
  if f[1] == 'running' and f[2] == ARGV[i + 3] then
    local at = math.min(now + tonumber(ARGV[2]), tonumber(f[3]) + tonumber(ARGV[3]))
    redis.call('ZADD', '{WATCH}', at, f[4])
    held = held + 1
  end
end
return held
"""

# A send of a queued job reached the broker.
# KEYS[1] job; ARGV: now ('' = Redis' clock), resend_after, max sends
_SENT = f"""
{_CLOCK_LUA}
local f = redis.call('HMGET', KEYS[1], 'status', 'deadline', 'job_id')
if f[1] ~= 'queued' then return 0 end
local sends = redis.call('HINCRBY', KEYS[1], 'sends', 1)
local at = tonumber(f[2])
if sends < tonumber(ARGV[3]) then
  at = math.min(at, tonumber(clock(ARGV[1])) + tonumber(ARGV[2]))
end
redis.call('ZADD', '{WATCH}', at, f[3])
return 1
"""

# What a reaper does with a job whose watch time has come. KEYS[1] job, KEYS[2..4] billing;
# ARGV: now ('' = Redis' clock), timeout error JSON, job id, enqueue grace, max sends
_REAP = f"""
{_CLOCK_LUA}
local terminal = {_TERMINAL_LUA}
local job = KEYS[1]
local now = clock(ARGV[1])
local at = redis.call('ZSCORE', '{WATCH}', ARGV[3])
if not at or tonumber(at) > tonumber(now) then return {{'fresh'}} end
local st = redis.call('HGET', job, 'status')
if not st or terminal[st] then
  redis.call('ZREM', '{WATCH}', ARGV[3])
  return {{st and 'terminal' or 'missing'}}
end
local deadline = tonumber(redis.call('HGET', job, 'deadline'))
if tonumber(now) >= deadline then
  local timeout_json = ARGV[2]
  {_EXPIRE_LUA}
  return {{'expired'}}
end
local again = math.min(tonumber(now) + tonumber(ARGV[4]), deadline)
if st == 'running' then
  -- its worker stopped beating: fence the lost run off and queue the job again
  local attempt = redis.call('HINCRBY', job, 'attempt', 1)
  redis.call('HINCRBY', job, 'takeovers', 1)
  redis.call('HSET', job, 'status', 'queued', 'sends', 0)
  redis.call('ZADD', '{WATCH}', again, ARGV[3])
  return {{'takeover', tostring(attempt)}}
end
if tonumber(redis.call('HGET', job, 'sends') or '0') >= tonumber(ARGV[5]) then
  redis.call('ZADD', '{WATCH}', deadline, ARGV[3])
  return {{'wait'}}
end
redis.call('ZADD', '{WATCH}', again, ARGV[3])
return {{'requeue'}}
"""

# KEYS[1] job, KEYS[2..4] billing (balance, ledger, usage);
# ARGV: attempt ('' = any), status, field, payload, now ('' = Redis' clock), channel, job id,
# images delivered, '1' = only if the deadline has passed (else '')
_FINISH = f"""
{_CLOCK_LUA}
local terminal = {_TERMINAL_LUA}
local job = KEYS[1]
local st = redis.call('HGET', job, 'status')
if not st or terminal[st] then return 0 end
if ARGV[1] ~= '' and redis.call('HGET', job, 'attempt') ~= ARGV[1] then return 0 end
local now = clock(ARGV[5])
if ARGV[9] == '1' and tonumber(now) < tonumber(redis.call('HGET', job, 'deadline')) then
  return 0
end
redis.call('HSET', job, 'status', ARGV[2], ARGV[3], ARGV[4], 'finished', now)
local delivered = tonumber(ARGV[8])
{SETTLE_LUA}
{_NOTIFY_LUA}
redis.call('PUBLISH', ARGV[6], ARGV[7])
return 1
"""


# KEYS[1] job; ARGV: attempt, next route index, fallback note JSON, job id,
# now ('' = Redis' clock), enqueue grace (the job is looked at then if nobody sent it)
_HANDOFF = f"""
{_CLOCK_LUA}
local terminal = {_TERMINAL_LUA}
local st = redis.call('HGET', KEYS[1], 'status')
if not st or terminal[st] then return 0 end
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[1] then return 0 end
local notes = cjson.decode(redis.call('HGET', KEYS[1], 'fallbacks') or '[]')
notes[#notes + 1] = cjson.decode(ARGV[3])
redis.call('HSET', KEYS[1], 'status', 'queued', 'candidate', ARGV[2],
  'fallbacks', cjson.encode(notes), 'sends', 0)
redis.call('ZADD', '{WATCH}', tonumber(clock(ARGV[5])) + tonumber(ARGV[6]), ARGV[4])
return 1
"""

# KEYS[1] the watch set; ARGV: now ('' = Redis' clock), at most this many ids
_DUE = f"""
{_CLOCK_LUA}
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', clock(ARGV[1]), 'LIMIT', 0, ARGV[2])
"""


def job_from_fields(fields: dict[str, str]) -> Job | None:
    """A job from its record's fields (``HGETALL``); None for a missing or partial record."""
    if not fields or "spec" not in fields:
        return None
    spec = json.loads(fields["spec"])
    images = tuple(StoredImage(**img) for img in json.loads(fields.get("result") or "[]"))
    return Job(
        id=spec["id"],
        key_id=spec["key_id"],
        model=spec["model"],
        family=spec["family"],
        queue=spec["queue"],
        request=spec["request"],
        # The record's own fields win: admission re-bases them on Redis' clock.
        created=float(fields.get("created") or spec["created"]),
        deadline=float(fields.get("deadline") or spec["deadline"]),
        meta=spec.get("meta") or {},
        status=JobStatus(fields.get("status", "queued")),
        attempt=int(fields.get("attempt", 0)),
        images=images,
        error=json.loads(fields["error"]) if fields.get("error") else None,
        started=float(fields["started"]) if fields.get("started") else None,
        finished=float(fields["finished"]) if fields.get("finished") else None,
        webhook_url=fields.get("webhook_url") or None,
        webhook=json.loads(fields["webhook"]) if fields.get("webhook") else None,
        candidate=int(fields.get("candidate", 0)),
        serving=fields.get("serving") or None,
        fallbacks=tuple(json.loads(fields["fallbacks"])) if fields.get("fallbacks") else (),
    )


@dataclass(frozen=True)
class Claim:
    """What a claim decided. ``job`` is the record as the claim left it (when it should
    run), with its ``deadline`` translated into the claiming host's clock (``time.time()``)
    so the worker's own checks of it (HTTP calls, slot waits, fallbacks) hold whatever
    that host's clock says; the record keeps the deadline in Redis' clock."""

    outcome: str  # run | terminal | expired | missing | busy (another live worker runs it)
    attempt: int = 0
    job: Job | None = None

    @property
    def should_run(self) -> bool:
        return self.outcome == "run"


# KEYS[1] job; ARGV: webhook state JSON, keep (seconds; 0: leave the TTL alone).
_SET_WEBHOOK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'webhook', ARGV[1])
local keep = tonumber(ARGV[2])
if keep > 0 and redis.call('TTL', KEYS[1]) < keep then redis.call('EXPIRE', KEYS[1], keep) end
return 1
"""


class JobStore:
    def __init__(
        self,
        client: redis.Redis,
        *,
        retention_seconds: int = 86400,
        liveness: Liveness | None = None,
    ) -> None:
        self._redis = client
        self._retention = retention_seconds
        self.liveness = liveness or Liveness()
        self._claim = client.register_script(_CLAIM)
        self._finish = client.register_script(_FINISH)
        self._handoff = client.register_script(_HANDOFF)
        self._beat = client.register_script(_BEAT)
        self._sent = client.register_script(_SENT)
        self._reap = client.register_script(_REAP)
        self._set_webhook = client.register_script(_SET_WEBHOOK)
        self._due = client.register_script(_DUE)

    @staticmethod
    def record_key(job_id: str) -> str:
        return _JOB.format(job_id)

    def ttl_for(self, job: Job) -> int:
        return self._retention + int(max(0.0, job.deadline - job.created))

    @staticmethod
    def spec_json(job: Job) -> str:
        spec = {
            "id": job.id,
            "key_id": job.key_id,
            "model": job.model,
            "family": job.family,
            "queue": job.queue,
            "request": job.request,
            "created": job.created,
            "deadline": job.deadline,
            "meta": job.meta,
        }
        return json.dumps(spec, separators=(",", ":"))

    def watch_entry(self, job: Job) -> tuple[str, float]:
        """The watch-list entry a new job is created with (see ``Accounts.admit``, which
        re-bases it on Redis' clock)."""
        return WATCH, job.created + self.liveness.enqueue_grace

    def clock(self) -> float:
        """Redis' clock (see :func:`redis_clock`)."""
        return redis_clock(self._redis)

    def create(self, job: Job) -> Job:
        """Create an unbilled job record with its times as given (tests; billed jobs are
        created by ``Accounts.admit``, in Redis' clock)."""
        name = _JOB.format(job.id)
        pipe = self._redis.pipeline(transaction=True)
        if not job.terminal:
            pipe.zadd(WATCH, {job.id: self.watch_entry(job)[1]})
        pipe.hset(
            name,
            mapping={
                "spec": self.spec_json(job),
                "status": job.status.value,
                "attempt": job.attempt,
                "deadline": repr(job.deadline),
                "created": repr(job.created),
                "key_id": job.key_id,
                "job_id": job.id,
            },
        )
        pipe.expire(name, self.ttl_for(job))
        pipe.execute()
        return job

    def get(self, job_id: str) -> Job | None:
        return job_from_fields(self._redis.hgetall(_JOB.format(job_id)))

    def status(self, job_id: str) -> JobStatus | None:
        raw = self._redis.hget(_JOB.format(job_id), "status")
        return JobStatus(raw) if raw else None

    def claim(
        self, job_id: str, *, worker: str = "", now: float | None = None, key_id: str = ""
    ) -> Claim:
        """Take a new attempt at the job (see the module docstring); ``key_id``, when the
        caller knows the job's API key id (the task message carries it), saves a read.

        Decided on Redis' clock (or ``now``, when a test gives one); the claimed job's
        deadline comes back in this host's clock (see :class:`Claim`)."""
        live = self.liveness
        keys = self._keys(job_id, key_id)
        # The claim returns the record it leaves: one round trip.
        sent_at = time.time()
        reply = self._claim(
            keys=keys,
            args=[
                _clock_arg(now),
                _error_json(timeout_error(job_id)),
                worker,
                job_id,
                live.stale_after,
                live.late,
            ],
        )
        outcome = reply[0]
        if outcome != "run":
            return Claim(outcome)
        fields = dict(zip(reply[3::2], reply[4::2], strict=True))
        job = job_from_fields(fields)
        if job is not None and now is None:
            # Redis read its clock about half way through the round trip.
            ahead = float(reply[2]) - (sent_at + time.time()) / 2
            job = replace(job, deadline=job.deadline - ahead)
        return Claim(outcome, int(reply[1]), job)

    def succeed(
        self, job_id: str, attempt: int, images: list[StoredImage], *, key_id: str = ""
    ) -> bool:
        payload = json.dumps([asdict(img) for img in images], separators=(",", ":"))
        return self._finish_with(
            job_id,
            attempt,
            JobStatus.SUCCEEDED,
            "result",
            payload,
            delivered=len(images),
            key_id=key_id,
        )

    def fail(
        self, job_id: str, attempt: int | None, error: GatewayError, *, key_id: str = ""
    ) -> bool:
        status = JobStatus.TIMED_OUT if isinstance(error, GatewayTimeout) else JobStatus.FAILED
        return self._finish_with(
            job_id, attempt, status, "error", _error_json(error), key_id=key_id
        )

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job (whatever attempt holds it); refunds it in full."""
        error = Conflict(f"The job {job_id} was canceled.", code="job_canceled")
        return self._finish_with(job_id, None, JobStatus.CANCELED, "error", _error_json(error))

    def handoff(self, job_id: str, attempt: int, next_index: int, note: dict[str, Any]) -> bool:
        """Give a running job back to the queue for its next route (virtual models).

        Only the attempt holding the fence can do it; the job stays billed once.
        """
        reply = self._handoff(
            keys=[_JOB.format(job_id)],
            args=[
                str(attempt),
                str(next_index),
                json.dumps(note, separators=(",", ":")),
                job_id,
                "",
                self.liveness.enqueue_grace,
            ],
        )
        return bool(reply)

    def mark_sent(self, job_id: str, *, now: float | None = None) -> bool:
        """Record that the job's task reached the broker (the reaper then waits longer)."""
        live = self.liveness
        return bool(
            self._sent(
                keys=[_JOB.format(job_id)],
                args=[_clock_arg(now), live.resend_after, live.max_sends],
            )
        )

    def beat(self, running: dict[str, int], *, now: float | None = None) -> int:
        """Heartbeat for the jobs one worker process runs (job id -> attempt).

        Only jobs still running under that attempt are refreshed; returns how many.
        The new watch time is Redis' clock + ``stale_after`` (``now``: a test's clock).
        """
        if not running:
            return 0
        live = self.liveness
        ids = list(running)
        return int(
            self._beat(
                keys=[_JOB.format(i) for i in ids],
                args=[
                    _clock_arg(now),
                    live.stale_after,
                    live.late,
                    *(str(running[i]) for i in ids),
                ],
            )
        )

    def due(self, *, now: float | None = None, limit: int = 100) -> list[str]:
        """Jobs whose watch time has come by Redis' clock (or ``now``; see :meth:`reap`)."""
        return list(self._due(keys=[WATCH], args=[_clock_arg(now), limit]))

    def reap(self, job_id: str, *, now: float | None = None) -> str:
        """Act on a job whose watch time has come; returns what was done.

        ``takeover`` / ``requeue``: the caller must send the job to its queue
        (then :meth:`mark_sent`); ``expired``: ended timed_out and refunded;
        ``wait`` / ``fresh`` / ``terminal`` / ``missing``: nothing to do.
        Judged on Redis' clock (``now``: a test's clock).
        """
        live = self.liveness
        reply = self._reap(
            keys=self._keys(job_id),
            args=[
                _clock_arg(now),
                _error_json(timeout_error(job_id)),
                job_id,
                live.enqueue_grace,
                live.max_sends,
            ],
        )
        return str(reply[0])

    def set_serving(self, job_id: str, model_id: str) -> None:
        self._redis.hset(_JOB.format(job_id), "serving", model_id)

    def set_webhook_state(
        self, job_id: str, state: dict[str, Any], *, keep_until: float | None = None
    ) -> None:
        """Write the webhook delivery state of an existing record.

        ``keep_until`` (unix time, Redis' clock) extends the record's life to at least
        then, e.g. past the retention while a delivery retry is pending. A record
        that has expired is not recreated (it would never expire).
        """
        ttl = max(1, int(keep_until - self.clock()) + 1) if keep_until is not None else 0
        self._set_webhook(
            keys=[_JOB.format(job_id)], args=[json.dumps(state, separators=(",", ":")), ttl]
        )

    def expire_if_overdue(self, job_id: str, *, now: float | None = None) -> bool:
        """Mark a job timed out if its deadline passed and nobody finished it.

        Any attempt still running loses its fence and cannot write a result
        afterwards. Returns True when this call made the transition. The script
        compares the deadline with Redis' clock (``now``: a test's clock), so the
        caller's clock only decides whether to ask.
        """
        return self._finish_with(
            job_id,
            None,
            JobStatus.TIMED_OUT,
            "error",
            _error_json(timeout_error(job_id)),
            now=now,
            overdue_only=True,
        )

    def _keys(self, job_id: str, key_id: str = "") -> list[str]:
        """The job's record and its key's settlement keys (read from the record if not given)."""
        name = _JOB.format(job_id)
        key_id = key_id or self._redis.hget(name, "key_id") or "-"
        return [name, *settle_keys(key_id)]

    def _finish_with(
        self,
        job_id: str,
        attempt: int | None,
        status: JobStatus,
        fld: str,
        payload: str,
        *,
        delivered: int = 0,
        key_id: str = "",
        now: float | None = None,
        overdue_only: bool = False,
    ) -> bool:
        return bool(
            self._finish(
                keys=self._keys(job_id, key_id),
                args=[
                    "" if attempt is None else str(attempt),
                    status.value,
                    fld,
                    payload,
                    _clock_arg(now),
                    DONE_CHANNEL,
                    job_id,
                    delivered,
                    "1" if overdue_only else "",
                ],
            )
        )


def _clock_arg(now: float | None) -> str:
    """A script's ``now`` argument: empty for Redis' own clock, a test's time otherwise."""
    return "" if now is None else repr(now)


def _error_json(error: GatewayError) -> str:
    return json.dumps(error.to_dict(), separators=(",", ":"))
