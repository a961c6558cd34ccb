"""Per-minute and per-hour job counters for the operator console's charts.

Written once per job when it ends (:meth:`shared.jobs.JobStore` after its
``job_finish`` script moved it to a final status), read by
``GET /admin/v1/stats``. Bounded: one hash per UTC minute (kept
:data:`MINUTE_TTL`) and one per UTC hour (kept :data:`HOUR_TTL`), each with a
fixed set of fields per catalog model::

    ig:stats:m:<unix minute>   hash "<model>|jobs|errors|images|lat<i>" -> count
    ig:stats:h:<unix hour>     the same, per hour

Latency (``finished - created``: what the caller waited) is a histogram over the
fixed bounds :data:`LATENCY_BOUNDS`; p50/p95 are the upper bound of the bucket
where the percentile falls (the last bucket reports the largest bound). Canceled
jobs are not counted. Counting is best effort: a job is already final when it is
counted, so a Redis error here is logged, never raised.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

import redis

from shared import jobrecord as rec
from shared import lua

log = logging.getLogger(__name__)

MINUTE = "ig:stats:m:{}"
HOUR = "ig:stats:h:{}"
MINUTE_TTL = 2 * 3600
HOUR_TTL = 2 * 86400
# Seconds; a job slower than the last bound counts in the last bucket.
LATENCY_BOUNDS = (0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 45, 60, 90, 120, 180, 300, 600)
WINDOWS = {"hour": (60, 60, MINUTE), "day": (3600, 24, HOUR)}  # step seconds, points, key
_SEP = "|"


def _bucket(seconds: float) -> int:
    for i, bound in enumerate(LATENCY_BOUNDS):
        if seconds <= bound:
            return i
    return len(LATENCY_BOUNDS) - 1


def record(client: redis.Redis, job_id: str) -> None:
    """Count the job that just ended (called once, by whoever ended it), read from its
    record; :func:`count` when the caller already knows what it would read."""
    try:
        model, status, created, finished, result, spec = client.hmget(
            rec.record_key(job_id),
            [rec.MODEL, rec.STATUS, rec.CREATED, rec.FINISHED, rec.RESULT, rec.SPEC],
        )
        model = model or (json.loads(spec).get("model") if spec else None)
        images = len(json.loads(result)) if status == "succeeded" and result else 0
        end = float(finished or time.time())
        count(client, model, status, float(created or end), end, images)
    except (redis.RedisError, ValueError, TypeError, AttributeError):
        log.warning("job stats not recorded for %s", job_id, exc_info=True)


def count(
    client: redis.Redis,
    model: str | None,
    status: str | None,
    created: float,
    finished: float,
    images: int,
) -> None:
    """Count one ended job of ``model`` (``images`` delivered) in its minute and hour."""
    if not model or not status or status == "canceled":
        return
    try:
        waited = max(0.0, finished - created)
        fields = {"jobs": 1, "errors": 0 if status == "succeeded" else 1,
                  "images": images if status == "succeeded" else 0,
                  f"lat{_bucket(waited)}": 1}  # fmt: skip
        lua.on(client, "jobstats_count")(
            [MINUTE.format(int(finished // 60)), HOUR.format(int(finished // 3600))],
            prefix=f"{model[:200]}{_SEP}",
            fields={field: n for field, n in fields.items() if n},
            minute_ttl=MINUTE_TTL,
            hour_ttl=HOUR_TTL,
        )
    except redis.RedisError:
        log.warning("job stats not recorded for a %s job", model, exc_info=True)


def _percentile(buckets: list[int], q: float) -> float | None:
    total = sum(buckets)
    if not total:
        return None
    rank = math.ceil(q * total)
    seen = 0
    for i, count in enumerate(buckets):
        seen += count
        if seen >= rank:
            return float(LATENCY_BOUNDS[i])
    return float(LATENCY_BOUNDS[-1])


def series(client: redis.Redis, window: str, now: float | None = None) -> dict[str, Any]:
    """Per-model series over the last hour (per minute) or day (per hour), oldest first."""
    step, points, template = WINDOWS[window]
    last = int((time.time() if now is None else now) // step)
    slots = list(range(last - points + 1, last + 1))
    pipe = client.pipeline(transaction=False)
    for slot in slots:
        pipe.hgetall(template.format(slot))
    hashes = pipe.execute()
    models = sorted({f.rsplit(_SEP, 1)[0] for h in hashes for f in h})
    out: dict[str, Any] = {}
    for model in models:
        s: dict[str, list[Any]] = {k: [] for k in ("jobs", "errors", "images", "images_per_minute",
                                                   "error_rate", "p50", "p95")}  # fmt: skip
        prefix = f"{model}{_SEP}"
        for h in hashes:
            jobs, errors, images = (int(h.get(prefix + f, 0)) for f in ("jobs", "errors", "images"))
            buckets = [int(h.get(f"{prefix}lat{i}", 0)) for i in range(len(LATENCY_BOUNDS))]
            s["jobs"].append(jobs)
            s["errors"].append(errors)
            s["images"].append(images)
            s["images_per_minute"].append(round(images * 60 / step, 4))
            s["error_rate"].append(round(errors / jobs, 4) if jobs else None)
            s["p50"].append(_percentile(buckets, 0.5))
            s["p95"].append(_percentile(buckets, 0.95))
        out[model] = s
    return {"window": window, "step": step, "times": [slot * step for slot in slots],
            "models": out}  # fmt: skip
