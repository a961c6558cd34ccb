"""A bounded index of recent jobs, for the admin API's job search.

The job records (:mod:`shared.jobrecord`) are hashes found by id only. The web
side adds every job it queues here (:func:`api.generations._send`):

    ig:jobs:recent          zset: job id -> created (unix seconds), the latest MAX_RECENT
    ig:jobs:bykey:<key id>  zset: the same, one key's latest MAX_PER_KEY; expires with
                            the job records

Both are trimmed on every add, so their size is bounded whatever the traffic. An
entry may outlive its record (records expire after ``job_retention_seconds``):
a search skips it. A search reads the index newest first and the records'
summary fields, looking at no more than ``scan`` entries per call, and says
where to go on (``next_cursor``) when it stopped before the end.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis

from shared import jobrecord as rec

RECENT = "ig:jobs:recent"
BY_KEY = "ig:jobs:bykey:{}"
MAX_RECENT = 200_000
MAX_PER_KEY = 20_000
SUMMARY_FIELDS = (
    rec.JOB_ID, rec.KEY_ID, rec.MODEL, rec.SERVING, rec.STATUS, rec.CREATED, rec.FINISHED,
    rec.N, rec.CHARGED, rec.SETTLED, rec.REFUNDED, rec.SPEC,
)  # fmt: skip


def add(client: redis.Redis, job_id: str, key_id: str, created: float, ttl: int) -> None:
    by_key = BY_KEY.format(key_id)
    pipe = client.pipeline(transaction=False)
    pipe.zadd(RECENT, {job_id: created})
    pipe.zremrangebyrank(RECENT, 0, -MAX_RECENT - 1)
    pipe.zadd(by_key, {job_id: created})
    pipe.zremrangebyrank(by_key, 0, -MAX_PER_KEY - 1)
    pipe.expire(by_key, ttl)
    pipe.execute()


@dataclass(frozen=True)
class JobSummary:
    id: str
    key_id: str
    model: str
    serving: str | None
    status: str
    created: float
    finished: float | None
    n: int
    charged_micros: int
    settled_micros: int | None
    refunded_micros: int | None


@dataclass(frozen=True)
class SearchPage:
    jobs: list[JobSummary]
    next_cursor: str | None


def summarize(values: list[str | None]) -> JobSummary | None:
    """A job's summary from the values of :data:`SUMMARY_FIELDS` of its record."""
    f = dict(zip(SUMMARY_FIELDS, values, strict=True))
    if not f[rec.STATUS] or not f[rec.SPEC]:
        return None
    spec: dict[str, Any] = json.loads(f[rec.SPEC] or "{}")
    return JobSummary(
        id=str(f[rec.JOB_ID] or spec.get("id")),
        key_id=str(f[rec.KEY_ID] or spec.get("key_id", "")),
        model=str(f[rec.MODEL] or spec.get("model", "")),
        serving=f[rec.SERVING],
        status=str(f[rec.STATUS]),
        created=float(f[rec.CREATED] or spec.get("created", 0)),
        finished=float(f[rec.FINISHED]) if f[rec.FINISHED] else None,
        n=int(f[rec.N] or spec.get("request", {}).get("n", 1)),
        charged_micros=int(f[rec.CHARGED] or 0),
        settled_micros=int(f[rec.SETTLED]) if f[rec.SETTLED] else None,
        refunded_micros=int(f[rec.REFUNDED]) if f[rec.REFUNDED] else None,
    )


def search(
    client: redis.Redis,
    *,
    key_id: str | None = None,
    model: str | None = None,
    status: str | None = None,
    since: float | None = None,
    until: float | None = None,
    cursor: str | None = None,
    limit: int = 50,
    scan: int = 2000,
) -> SearchPage:
    """Jobs newest first that match every filter given.

    ``cursor`` is ``"<created>:<job id>"`` of the last job of the previous page
    (``next_cursor``): the page goes on strictly after it in (created, id) order.
    """
    index = BY_KEY.format(key_id) if key_id else RECENT
    high: float | str = "+inf" if until is None else until
    after_id = ""
    if cursor:
        score, _, after_id = cursor.partition(":")
        high = float(score)
    low: float | str = "-inf" if since is None else since
    found: list[JobSummary] = []
    looked = 0
    offset = 0
    batch = 200
    while looked < scan:
        entries = client.zrevrangebyscore(
            index, high, low, start=offset, num=batch, withscores=True
        )
        if not entries:
            return SearchPage(found, None)
        offset += len(entries)
        pipe = client.pipeline(transaction=False)
        kept = []
        for job_id, score in entries:
            if cursor and score == float(high) and job_id >= after_id:
                continue  # at or before the cursor, in (created desc, id desc) order
            kept.append((job_id, score))
            pipe.hmget(rec.record_key(job_id), SUMMARY_FIELDS)
        looked += len(entries)
        for (job_id, score), values in zip(kept, pipe.execute(), strict=True):
            job = summarize(values)
            if job is None:
                continue
            if (model and model not in (job.model, job.serving)) or (
                status and job.status != status
            ):
                continue
            found.append(job)
            if len(found) >= limit:
                return SearchPage(found, f"{score!r}:{job_id}")
        if len(entries) < batch:
            return SearchPage(found, None)
    # Stopped by the scan bound: go on from the last entry looked at.
    job_id, score = entries[-1]
    return SearchPage(found, f"{score!r}:{job_id}")
