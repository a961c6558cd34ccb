"""The job record: one Redis hash per job, and the keys beside it. Every field is here.

A job is the hash ``ig:job:<id>`` (:data:`RECORD`). Its fields, all strings
(times are unix seconds in Redis' clock, see :mod:`shared.jobs`):

Written when the job is created — :func:`new_record` is the only place that
names them, for both writers: the admission script (``shared/lua/admit.lua``,
billed jobs, times re-based on Redis' clock there) and
:meth:`shared.jobs.JobStore.create` (unbilled jobs, for tests):

=============  ========================================================================
spec           JSON of the immutable part: id, key id, model, family, queue, request,
               created, deadline, meta (the record's own created/deadline win)
status         queued | running | succeeded | failed | timed_out | canceled
attempt        fencing token: incremented by every claim and takeover
created        when the job was admitted
deadline       when the job must have ended (timed out otherwise)
key_id         the API key that owns it (its balance, ledger and usage keys)
job_id         the job's id (its member in the watch and webhook sets)
webhook_url    where its outcome is delivered; absent for jobs without a webhook
model          billed jobs: the model charged for (ledger and usage rows)
n              billed jobs: images charged for
unit_price     billed jobs: micro-units per image
charged        billed jobs: micro-units deducted at admission (``unit_price`` times the
               images beyond the free ones; written by the admission script)
free           billed jobs: images of it taken from the tier's free images of the day
               (written by the admission script; delivered first, so never refunded)
user           the end user the client named (OpenAI's ``user``), absent without one
returns        billed jobs: JSON list of ``[key, kind, ...]`` admission counted in and
               settlement gives back for images not delivered, or counts the end
               user's usage in (see ``give_back`` in ``_settle.lua``)
day            billed jobs: the UTC day (YYYY-MM-DD) its usage is counted on
unlimited      billed jobs: ``1`` if the key has no balance (nothing deducted or refunded)
billed         ``1`` for a job admitted with a charge (settled when it ends)
=============  ========================================================================

Written by the transitions (``shared/lua/job_*.lua`` and :class:`shared.jobs.JobStore`):

=============  ========================================================================
started        when the latest attempt was claimed
worker         the name of the worker process that claimed it last
sends          times the job was sent to its queue in the current queued spell
takeovers      times a reaper took the job from a worker that stopped beating
candidate      virtual models: index of the route being tried (spec meta ``routes``)
fallbacks      virtual models: JSON list of the routes given up, with why
serving        the real model running (or that ran) the job
finished       when it became terminal
result         succeeded: JSON list of the stored images (storage keys, sizes)
error          failed / timed_out / canceled: JSON of the GatewayError
cost           what the upstream charged for the job, micro-units (succeeded jobs; by
               ``shared/lua/job_finish.lua``, from the worker: :mod:`shared.pricing`)
cost_source    where ``cost`` comes from: ``upstream`` (its answer said), ``usage``
               (its token usage x the model's token prices), ``compute`` (its compute
               seconds x ``cost_per_second``) or ``catalog`` (the model's cost table)
settled        billed jobs: micro-units spent, written once when the job ends
refunded       billed jobs: micro-units given back then
webhook        JSON of the webhook delivery state (the webhook deliverer's)
=============  ========================================================================

The keys beside the records: :data:`WATCH` (every non-terminal job, scored with
when it must be looked at), :data:`WEBHOOKS_DUE` (jobs whose webhook delivery
is due) and the pub/sub channel :data:`DONE_CHANNEL` (ids of jobs that ended).
"""

from __future__ import annotations

import json

RECORD = "ig:job:{}"  # the hash of one job, by id
WATCH = "ig:jobs:watch"  # zset: non-terminal job id -> unix time it must be looked at
WEBHOOKS_DUE = "ig:webhooks:due"  # zset: job id -> unix time its next delivery is due
DONE_CHANNEL = "ig:jobs:done"  # pub/sub: the id of every job that became terminal

# Created with the job (new_record)
SPEC = "spec"
STATUS = "status"
ATTEMPT = "attempt"
CREATED = "created"
DEADLINE = "deadline"
KEY_ID = "key_id"
JOB_ID = "job_id"
WEBHOOK_URL = "webhook_url"
MODEL = "model"
N = "n"
UNIT_PRICE = "unit_price"
CHARGED = "charged"
DAY = "day"
UNLIMITED = "unlimited"
BILLED = "billed"
FREE = "free"
USER = "user"
RETURNS = "returns"
# Written by the transitions
STARTED = "started"
WORKER = "worker"
SENDS = "sends"
TAKEOVERS = "takeovers"
CANDIDATE = "candidate"
FALLBACKS = "fallbacks"
SERVING = "serving"
FINISHED = "finished"
RESULT = "result"
ERROR = "error"
COST = "cost"
COST_SOURCE = "cost_source"
SETTLED = "settled"
REFUNDED = "refunded"
WEBHOOK = "webhook"

FIELDS = frozenset(
    {
        SPEC, STATUS, ATTEMPT, CREATED, DEADLINE, KEY_ID, JOB_ID, WEBHOOK_URL, MODEL, N,
        UNIT_PRICE, CHARGED, DAY, UNLIMITED, BILLED, FREE, USER, RETURNS, STARTED, WORKER,
        SENDS, TAKEOVERS, CANDIDATE, FALLBACKS, SERVING, FINISHED, RESULT, ERROR, COST,
        COST_SOURCE, SETTLED,
        REFUNDED, WEBHOOK,
    }
)  # fmt: skip


def record_key(job_id: str) -> str:
    return RECORD.format(job_id)


def new_record(
    *,
    job_id: str,
    key_id: str,
    spec_json: str,
    created: float,
    deadline: float,
    status: str = "queued",
    attempt: int = 0,
    webhook_url: str | None = None,
    bill: dict[str, str] | None = None,
) -> dict[str, str]:
    """The fields a job record is created with (see the table above).

    ``bill`` holds the billed fields, from :func:`bill_fields`; an unbilled record has
    none. The admission script replaces ``created`` and ``deadline`` with their
    values in Redis' clock.
    """
    record = {
        SPEC: spec_json,
        STATUS: status,
        ATTEMPT: str(attempt),
        CREATED: repr(created),
        DEADLINE: repr(deadline),
        KEY_ID: key_id,
        JOB_ID: job_id,
    }
    if webhook_url:
        record[WEBHOOK_URL] = webhook_url
    if bill:
        record.update(bill)
    return record


def bill_fields(
    *,
    model: str,
    n: int,
    unit_price: int,
    charged: int,
    day: str,
    unlimited: bool,
    user: str | None = None,
    returns: list[tuple[str | int, ...]] | None = None,
) -> dict[str, str]:
    """The fields of a billed job (settled by ``shared/lua/_settle.lua`` when it ends).

    ``charged`` and ``free`` are the whole price and no free image; the admission script
    writes what it really charged and how many images were free."""
    fields = {
        MODEL: model,
        N: str(n),
        UNIT_PRICE: str(unit_price),
        CHARGED: str(charged),
        FREE: "0",
        DAY: day,
        UNLIMITED: "1" if unlimited else "0",
        BILLED: "1",
    }
    if user:
        fields[USER] = user
    if returns:
        fields[RETURNS] = json.dumps([list(r) for r in returns], separators=(",", ":"))
    return fields
