"""Job records in Redis: the one place the web side and the workers meet.

A job is a Redis hash ``ig:job:<id>``::

    spec      JSON of the immutable part (key id, model, family, request, created, deadline)
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

Records expire ``retention`` seconds after creation.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import redis

from shared.billing import SETTLE_LUA, settle_keys
from shared.errors import Conflict, GatewayError, GatewayTimeout

DONE_CHANNEL = "ig:jobs:done"
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
class StoredImage:
    key: str
    width: int
    height: int
    content_type: str
    revised_prompt: str | None = None

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


def new_job_id() -> str:
    return "imgjob_" + secrets.token_hex(12)


def timeout_error(job_id: str) -> GatewayTimeout:
    return GatewayTimeout(
        f"The image was not ready within the time budget. Job id: {job_id}.",
        extra={"job_id": job_id},
        headers={"x-job-id": job_id},
    )


_TERMINAL_LUA = "{" + ",".join(f"['{s.value}']=true" for s in TERMINAL) + "}"

# After a terminal transition: a job with a webhook is due for delivery now.
_NOTIFY_LUA = f"""
if redis.call('HEXISTS', job, 'webhook_url') == 1 then
  redis.call('ZADD', '{WEBHOOKS_DUE}', tonumber(now), redis.call('HGET', job, 'job_id'))
end
"""

# KEYS[1] job, KEYS[2..4] billing (balance, ledger, usage);
# ARGV: now, timeout error JSON, worker name, channel, job id
_CLAIM = f"""
local terminal = {_TERMINAL_LUA}
local job = KEYS[1]
local st = redis.call('HGET', job, 'status')
if not st then return {{'missing'}} end
if terminal[st] then return {{'terminal', st}} end
local deadline = tonumber(redis.call('HGET', job, 'deadline'))
if tonumber(ARGV[1]) >= deadline then
  redis.call('HSET', job, 'status', 'timed_out', 'finished', ARGV[1], 'error', ARGV[2])
  local delivered = 0
  local now = ARGV[1]
  {SETTLE_LUA}
  {_NOTIFY_LUA}
  redis.call('PUBLISH', ARGV[4], ARGV[5])
  return {{'expired'}}
end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('HSET', KEYS[1], 'status', 'running', 'started', ARGV[1], 'worker', ARGV[3])
return {{'run', tostring(attempt)}}
"""

# KEYS[1] job, KEYS[2..4] billing (balance, ledger, usage);
# ARGV: attempt ('' = any), status, field, payload, now, channel, job id, images delivered
_FINISH = f"""
local terminal = {_TERMINAL_LUA}
local job = KEYS[1]
local st = redis.call('HGET', job, 'status')
if not st or terminal[st] then return 0 end
if ARGV[1] ~= '' and redis.call('HGET', job, 'attempt') ~= ARGV[1] then return 0 end
redis.call('HSET', job, 'status', ARGV[2], ARGV[3], ARGV[4], 'finished', ARGV[5])
local delivered = tonumber(ARGV[8])
local now = ARGV[5]
{SETTLE_LUA}
{_NOTIFY_LUA}
redis.call('PUBLISH', ARGV[6], ARGV[7])
return 1
"""


# KEYS[1] job; ARGV: attempt, next route index, fallback note JSON
_HANDOFF = f"""
local terminal = {_TERMINAL_LUA}
local st = redis.call('HGET', KEYS[1], 'status')
if not st or terminal[st] then return 0 end
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[1] then return 0 end
local notes = cjson.decode(redis.call('HGET', KEYS[1], 'fallbacks') or '[]')
notes[#notes + 1] = cjson.decode(ARGV[3])
redis.call('HSET', KEYS[1], 'status', 'queued', 'candidate', ARGV[2],
  'fallbacks', cjson.encode(notes))
return 1
"""


@dataclass(frozen=True)
class Claim:
    outcome: str  # run | terminal | expired | missing
    attempt: int = 0

    @property
    def should_run(self) -> bool:
        return self.outcome == "run"


class JobStore:
    def __init__(self, client: redis.Redis, *, retention_seconds: int = 86400) -> None:
        self._redis = client
        self._retention = retention_seconds
        self._claim = client.register_script(_CLAIM)
        self._finish = client.register_script(_FINISH)
        self._handoff = client.register_script(_HANDOFF)

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

    def create(self, job: Job) -> Job:
        """Create an unbilled job record (billed jobs are created by ``Accounts.admit``)."""
        name = _JOB.format(job.id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(
            name,
            mapping={
                "spec": self.spec_json(job),
                "status": job.status.value,
                "attempt": job.attempt,
                "deadline": repr(job.deadline),
                "key_id": job.key_id,
                "job_id": job.id,
            },
        )
        pipe.expire(name, self.ttl_for(job))
        pipe.execute()
        return job

    def get(self, job_id: str) -> Job | None:
        fields = self._redis.hgetall(_JOB.format(job_id))
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
            created=float(spec["created"]),
            deadline=float(spec["deadline"]),
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

    def status(self, job_id: str) -> JobStatus | None:
        raw = self._redis.hget(_JOB.format(job_id), "status")
        return JobStatus(raw) if raw else None

    def claim(self, job_id: str, *, worker: str = "", now: float | None = None) -> Claim:
        now = time.time() if now is None else now
        reply = self._claim(
            keys=self._keys(job_id),
            args=[repr(now), _error_json(timeout_error(job_id)), worker, DONE_CHANNEL, job_id],
        )
        outcome = reply[0]
        return Claim(outcome, int(reply[1]) if outcome == "run" else 0)

    def succeed(self, job_id: str, attempt: int, images: list[StoredImage]) -> bool:
        payload = json.dumps([asdict(img) for img in images], separators=(",", ":"))
        return self._finish_with(
            job_id, attempt, JobStatus.SUCCEEDED, "result", payload, delivered=len(images)
        )

    def fail(self, job_id: str, attempt: int | None, error: GatewayError) -> bool:
        status = JobStatus.TIMED_OUT if isinstance(error, GatewayTimeout) else JobStatus.FAILED
        return self._finish_with(job_id, attempt, status, "error", _error_json(error))

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
            args=[str(attempt), str(next_index), json.dumps(note, separators=(",", ":"))],
        )
        return bool(reply)

    def set_serving(self, job_id: str, model_id: str) -> None:
        self._redis.hset(_JOB.format(job_id), "serving", model_id)

    def set_webhook_state(self, job_id: str, state: dict[str, Any]) -> None:
        self._redis.hset(_JOB.format(job_id), "webhook", json.dumps(state, separators=(",", ":")))

    def expire_if_overdue(self, job_id: str, *, now: float | None = None) -> bool:
        """Mark a job timed out if its deadline passed and nobody finished it.

        Any attempt still running loses its fence and cannot write a result
        afterwards. Returns True when this call made the transition.
        """
        job = self.get(job_id)
        now = time.time() if now is None else now
        if job is None or job.terminal or now < job.deadline:
            return False
        return self._finish_with(
            job_id, None, JobStatus.TIMED_OUT, "error", _error_json(timeout_error(job_id))
        )

    def _keys(self, job_id: str) -> list[str]:
        name = _JOB.format(job_id)
        key_id = self._redis.hget(name, "key_id") or "-"
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
    ) -> bool:
        return bool(
            self._finish(
                keys=self._keys(job_id),
                args=[
                    "" if attempt is None else str(attempt),
                    status.value,
                    fld,
                    payload,
                    repr(time.time()),
                    DONE_CHANNEL,
                    job_id,
                    delivered,
                ],
            )
        )


def _error_json(error: GatewayError) -> str:
    return json.dumps(error.to_dict(), separators=(",", ":"))
