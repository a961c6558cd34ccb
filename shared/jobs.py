"""Job records in Redis: the one place the web side and the workers meet.

A job is a Redis hash ``ig:job:<id>``; :mod:`shared.jobrecord` lists and explains
every field, and builds the fields a record is created with.

State changes are Lua scripts (``shared/lua/job_*.lua``, loaded by
:mod:`shared.lua`), so they are atomic across any number of web and worker processes:

* :meth:`JobStore.claim` moves a non-terminal job to ``running`` and returns a
  new attempt number, or says why not (terminal already, deadline passed).
* :meth:`JobStore.finish` writes a terminal state only if the job is not
  terminal yet *and* the caller still holds the latest attempt, so a slow or
  duplicated run can never overwrite the outcome of a newer one.
* every terminal transition settles the job's bill in the same script
  (``shared/lua/_settle.lua``: refund what was not delivered) and
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

from shared import jobrecord as rec
from shared import jobstats, lua, metrics
from shared.billing import settle_keys
from shared.errors import Conflict, GatewayError, GatewayTimeout
from shared.jobrecord import DONE_CHANNEL, WATCH, WEBHOOKS_DUE
from shared.settings import Settings

_DEFAULTS = Settings()  # the documented defaults only: reads no environment

GENERATE_TASK = "imagegate.generate"  # the Celery task name both sides agree on
DELIVER_WEBHOOK_TASK = "imagegate.deliver_webhook"
WEBHOOK_QUEUE = "webhooks"


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

    # Defaults are the settings' (IMAGEGATE_JOB_STALE_SECONDS, …), written once there.
    stale_after: float = _DEFAULTS.job_stale_seconds  # no heartbeat this long: taken over
    enqueue_grace: float = _DEFAULTS.enqueue_grace_seconds  # not sent by then: sent again
    resend_after: float = _DEFAULTS.resend_after_seconds  # still queued this long: resent
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
    takeovers: int = 0  # times a reaper took the job from a worker that stopped beating
    # Billed jobs (micro-units): the price of one image, what the client pays now (spent
    # once settled, else reserved), and what the upstream charged (None: not known).
    unit_price: int | None = None
    charge: int | None = None
    cost: int | None = None
    # The keys of the record's ``returns`` (what admission counted, given back for images
    # not delivered), as read with the record; None: not read (a job built, not loaded).
    returns_keys: tuple[str, ...] | None = None

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


def job_from_fields(fields: dict[str, str]) -> Job | None:
    """A job from its record's fields (``HGETALL``); None for a missing or partial record."""
    if not fields or rec.SPEC not in fields:
        return None
    spec = json.loads(fields[rec.SPEC])
    images = tuple(StoredImage(**img) for img in json.loads(fields.get(rec.RESULT) or "[]"))
    started, finished = fields.get(rec.STARTED), fields.get(rec.FINISHED)
    return Job(
        id=spec["id"],
        key_id=spec["key_id"],
        model=spec["model"],
        family=spec["family"],
        queue=spec["queue"],
        request=spec["request"],
        # The record's own fields win: admission re-bases them on Redis' clock.
        created=float(fields.get(rec.CREATED) or spec["created"]),
        deadline=float(fields.get(rec.DEADLINE) or spec["deadline"]),
        meta=spec.get("meta") or {},
        status=JobStatus(fields.get(rec.STATUS, "queued")),
        attempt=int(fields.get(rec.ATTEMPT, 0)),
        images=images,
        error=json.loads(fields[rec.ERROR]) if fields.get(rec.ERROR) else None,
        started=float(started) if started else None,
        finished=float(finished) if finished else None,
        webhook_url=fields.get(rec.WEBHOOK_URL) or None,
        webhook=json.loads(fields[rec.WEBHOOK]) if fields.get(rec.WEBHOOK) else None,
        candidate=int(fields.get(rec.CANDIDATE, 0)),
        serving=fields.get(rec.SERVING) or None,
        fallbacks=tuple(json.loads(fields[rec.FALLBACKS])) if fields.get(rec.FALLBACKS) else (),
        takeovers=int(fields.get(rec.TAKEOVERS, 0)),
        unit_price=_micros(fields.get(rec.UNIT_PRICE)),
        charge=_micros(fields.get(rec.SETTLED) or fields.get(rec.CHARGED)),
        cost=_micros(fields.get(rec.COST)),
        returns_keys=_returns_keys(fields.get(rec.RETURNS)),
    )


def _returns_keys(returns: str | None) -> tuple[str, ...]:
    return tuple(entry[0] for entry in json.loads(returns)) if returns else ()


def _micros(value: str | None) -> int | None:
    return int(value) if value else None


@dataclass(frozen=True)
class Claim:
    """What a claim decided. ``job`` is the record as the claim left it (when it should
    run), with its ``deadline`` translated into the claiming host's clock (``time.time()``)
    so the worker's own checks of it (HTTP calls, slot waits, fallbacks) hold whatever
    that host's clock says; the record keeps the deadline in Redis' clock."""

    outcome: str  # run | terminal | expired | missing | busy (another live worker runs it)
    attempt: int = 0
    job: Job | None = None
    waited: float | None = None  # a first attempt: seconds from admission to this claim

    @property
    def should_run(self) -> bool:
        return self.outcome == "run"


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
        self._claim = lua.register(client, "job_claim")
        self._finish = lua.register(client, "job_finish")
        self._handoff = lua.register(client, "job_handoff")
        self._beat = lua.register(client, "job_beat")
        self._sent = lua.register(client, "job_sent")
        self._reap = lua.register(client, "job_reap")
        self._set_webhook = lua.register(client, "job_set_webhook")
        self._due = lua.register(client, "job_due")

    @staticmethod
    def record_key(job_id: str) -> str:
        return rec.record_key(job_id)

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
        name = rec.record_key(job.id)
        pipe = self._redis.pipeline(transaction=True)
        if not job.terminal:
            pipe.zadd(WATCH, {job.id: self.watch_entry(job)[1]})
        record = rec.new_record(
            job_id=job.id,
            key_id=job.key_id,
            spec_json=self.spec_json(job),
            created=job.created,
            deadline=job.deadline,
            status=job.status.value,
            attempt=job.attempt,
        )
        pipe.hset(name, mapping=record)
        pipe.expire(name, self.ttl_for(job))
        pipe.execute()
        return job

    def get(self, job_id: str) -> Job | None:
        return job_from_fields(self._redis.hgetall(rec.record_key(job_id)))

    def status(self, job_id: str) -> JobStatus | None:
        raw = self._redis.hget(rec.record_key(job_id), rec.STATUS)
        return JobStatus(raw) if raw else None

    def claim(
        self, job_id: str, *, worker: str = "", now: float | None = None, key_id: str = ""
    ) -> Claim:
        """Take a new attempt at the job (see the module docstring); ``key_id``, when the
        caller knows the job's API key id (the task message carries it), is used as given.

        Decided on Redis' clock (or ``now``, when a test gives one); the claimed job's
        deadline comes back in this host's clock (see :class:`Claim`)."""
        live = self.liveness
        keys = self._keys(job_id, key_id)
        # The claim returns the record it leaves: one round trip.
        sent_at = time.time()
        reply = self._claim(
            keys,
            now=_clock_arg(now),
            job_id=job_id,
            worker=worker,
            stale_after=live.stale_after,
            late=live.late,
            timeout_error=_error_json(timeout_error(job_id)),
            done_channel=DONE_CHANNEL,
        )
        outcome = reply[0]
        if outcome != "run":
            if outcome == "expired":
                self._count_end(job_id, JobStatus.TIMED_OUT, None)
            return Claim(outcome)
        fields = dict(zip(reply[3::2], reply[4::2], strict=True))
        job = job_from_fields(fields)
        attempt = int(reply[1])
        waited = None
        if job is not None and attempt == 1:
            waited = float(reply[2]) - job.created
        if job is not None and now is None:
            # Redis read its clock about half way through the round trip.
            ahead = float(reply[2]) - (sent_at + time.time()) / 2
            job = replace(job, deadline=job.deadline - ahead)
        return Claim(outcome, attempt, job, waited)

    def succeed(
        self,
        job_id: str,
        attempt: int,
        images: list[StoredImage],
        *,
        key_id: str = "",
        cost: tuple[int, str] | None = None,
        job: Job | None = None,
    ) -> bool:
        """End the job with its images; ``cost`` is what the upstream charged for it
        (micro-units) and where that figure comes from (:data:`shared.jobrecord.COST`);
        ``job``: the record the caller has, for the metrics' labels (read again when not
        given)."""
        payload = json.dumps([asdict(img) for img in images], separators=(",", ":"))
        return self._finish_with(
            job_id,
            attempt,
            JobStatus.SUCCEEDED,
            "result",
            payload,
            delivered=len(images),
            key_id=key_id,
            cost=cost,
            job=job,
        )

    def fail(
        self,
        job_id: str,
        attempt: int | None,
        error: GatewayError,
        *,
        key_id: str = "",
        job: Job | None = None,
    ) -> bool:
        status = JobStatus.TIMED_OUT if isinstance(error, GatewayTimeout) else JobStatus.FAILED
        return self._finish_with(
            job_id,
            attempt,
            status,
            "error",
            _error_json(error),
            key_id=key_id,
            job=job,
            code=None if status is JobStatus.TIMED_OUT else error.code or error.error_type,
        )

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job (whatever attempt holds it); refunds it in full."""
        error = Conflict(f"The job {job_id} was canceled.", code="job_canceled")
        return self._finish_with(
            job_id, None, JobStatus.CANCELED, "error", _error_json(error), code="job_canceled"
        )

    def handoff(self, job_id: str, attempt: int, next_index: int, note: dict[str, Any]) -> bool:
        """Give a running job back to the queue for its next route (virtual models).

        Only the attempt holding the fence can do it; the job stays billed once.
        """
        reply = self._handoff(
            [rec.record_key(job_id), WATCH],
            attempt=str(attempt),
            job_id=job_id,
            candidate=str(next_index),
            note=note,
            now="",
            enqueue_grace=self.liveness.enqueue_grace,
        )
        return bool(reply)

    def mark_sent(self, job_id: str, *, now: float | None = None) -> bool:
        """Record that the job's task reached the broker (the reaper then waits longer)."""
        live = self.liveness
        return bool(
            self._sent(
                [rec.record_key(job_id), WATCH],
                now=_clock_arg(now),
                resend_after=live.resend_after,
                max_sends=live.max_sends,
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
                [WATCH, *(rec.record_key(i) for i in ids)],
                now=_clock_arg(now),
                stale_after=live.stale_after,
                late=live.late,
                attempts=[str(running[i]) for i in ids],
            )
        )

    def due(self, *, now: float | None = None, limit: int = 100) -> list[str]:
        """Jobs whose watch time has come by Redis' clock (or ``now``; see :meth:`reap`)."""
        return list(self._due([WATCH], now=_clock_arg(now), limit=limit))

    def reap(self, job_id: str, *, now: float | None = None) -> str:
        """Act on a job whose watch time has come; returns what was done.

        ``takeover`` / ``requeue``: the caller must send the job to its queue
        (then :meth:`mark_sent`); ``expired``: ended timed_out and refunded;
        ``wait`` / ``fresh`` / ``terminal`` / ``missing``: nothing to do.
        Judged on Redis' clock (``now``: a test's clock).
        """
        live = self.liveness
        reply = self._reap(
            self._keys(job_id),
            now=_clock_arg(now),
            job_id=job_id,
            enqueue_grace=live.enqueue_grace,
            max_sends=live.max_sends,
            timeout_error=_error_json(timeout_error(job_id)),
            done_channel=DONE_CHANNEL,
        )
        action = str(reply[0])
        if action in ("takeover", "requeue", "expired"):
            metrics.REAPER_ACTIONS.labels(action).inc()
        if action == "expired":  # the reaper ended it: counted like any other end
            self._count_end(job_id, JobStatus.TIMED_OUT, None)
            jobstats.record(self._redis, job_id)
        elif action == "takeover":
            family = self._family_of(job_id)
            metrics.TAKEOVERS.labels(family).inc()
        return action

    def set_serving(self, job_id: str, model_id: str) -> None:
        self._redis.hset(rec.record_key(job_id), rec.SERVING, model_id)

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
            [rec.record_key(job_id)], state=json.dumps(state, separators=(",", ":")), keep=ttl
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

    def _keys(self, job_id: str, key_id: str = "", job: Job | None = None) -> list[str]:
        """KEYS of the scripts that may end a job: its record, its key's settlement keys (the
        key id read from the record if not given), the watch and the webhooks due sets, and
        the keys its record's ``returns`` lists (given back for images not delivered).

        ``job``: the job as read from its record (a claim's), which holds both: no read."""
        name = rec.record_key(job_id)
        if job is not None and job.returns_keys is not None and job.key_id:
            return [name, *settle_keys(job.key_id), WATCH, WEBHOOKS_DUE, *job.returns_keys]
        stored_key_id, returns = self._redis.hmget(name, [rec.KEY_ID, rec.RETURNS])
        key_id = key_id or stored_key_id or "-"
        return [name, *settle_keys(key_id), WATCH, WEBHOOKS_DUE, *_returns_keys(returns)]

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
        cost: tuple[int, str] | None = None,
        job: Job | None = None,
        code: str | None = None,
    ) -> bool:
        reply = self._finish(
            self._keys(job_id, key_id, job),
            attempt="" if attempt is None else str(attempt),
            status=status.value,
            field=fld,
            payload=payload,
            delivered=delivered,
            overdue_only=overdue_only,
            now=_clock_arg(now),
            done_channel=DONE_CHANNEL,
            cost="" if cost is None else str(cost[0]),
            cost_source="" if cost is None else cost[1],
        )
        if not reply:
            return False
        # once per job: only the call that made it final gets here
        self._count_end(job_id, status, code, job, money=reply[1:4])
        if job is None:
            jobstats.record(self._redis, job_id)
        else:  # what the record would say: no second read of it
            jobstats.count(
                self._redis, job.model, status.value, job.created, float(reply[4]), delivered
            )
        return True

    def _count_end(
        self,
        job_id: str,
        status: JobStatus,
        code: str | None,
        job: Job | None = None,
        money: list[str] | None = None,
    ) -> None:
        """Count a job this process just ended (:mod:`shared.metrics`): its outcome and
        the money its settlement moved (read from the record when not given)."""
        try:
            if money is None:
                money = self._redis.hmget(
                    rec.record_key(job_id), rec.SETTLED, rec.REFUNDED, rec.UNLIMITED
                )
            if job is None:
                job = self.get(job_id)
        except redis.RedisError:
            return  # the transition happened; only its count is lost
        settled, refunded, unlimited = (str(v or "") for v in money)
        billed = unlimited != "1"
        metrics.job_ended(
            job.model if job else "",
            job.family if job else "",
            status.value,
            code,
            settled=int(settled or 0) if billed else 0,
            refunded=int(refunded or 0) if billed else 0,
        )

    def _family_of(self, job_id: str) -> str:
        try:
            job = self.get(job_id)
        except redis.RedisError:
            return ""
        return job.family if job else ""


def _clock_arg(now: float | None) -> str:
    """A script's ``now`` argument: empty for Redis' own clock, a test's time otherwise."""
    return "" if now is None else repr(now)


def _error_json(error: GatewayError) -> str:
    return json.dumps(error.to_dict(), separators=(",", ":"))
