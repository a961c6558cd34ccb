"""A job's upstream calls, for its timeline in the admin API (``GET /admin/v1/jobs/{id}``).

The job record says when a job was admitted, claimed, handed to another route and
ended (:mod:`shared.jobrecord`); the calls to the upstream in between are kept
here, one JSON entry each, written by the worker's HTTP helper
(:class:`workers.http.UpstreamHTTP`, ``on_attempt``)::

    ig:job:<id>:events   list of {"at", "model", "method", "url", "status" | "error",
                         "duration_ms"}; the latest MAX_EVENTS, expiring with the record

The URL has no query string (where some upstreams put keys) and is cut to 200
characters. Writing is best effort: a Redis error loses the entry, never the call.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis

EVENTS = "ig:job:{}:events"
MAX_EVENTS = 50

log = logging.getLogger(__name__)


def record(client: redis.Redis, job_id: str, entry: dict[str, Any], ttl: int) -> None:
    key = EVENTS.format(job_id)
    try:
        pipe = client.pipeline(transaction=False)
        pipe.rpush(key, json.dumps(entry, default=str)[:2000])
        pipe.ltrim(key, -MAX_EVENTS, -1)
        pipe.expire(key, ttl)
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("job %s: upstream call not recorded: %s", job_id, exc)


def read(client: redis.Redis, job_id: str) -> list[dict[str, Any]]:
    return [json.loads(item) for item in client.lrange(EVENTS.format(job_id), 0, -1)]
