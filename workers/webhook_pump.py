"""Moves due webhook deliveries from Redis onto the ``webhooks`` queue.

Retries wait minutes to hours, far longer than the broker's visibility
timeout, so they are not Celery countdowns (which a Redis broker would
redeliver early and hold in worker memory): the next due time of each job is
a score in the ``ig:webhooks:due`` sorted set, and this pump enqueues what is
due. It runs as a thread in every worker that consumes the ``webhooks``
queue.

Taking an id does not remove it: one script moves its score a lease
(``lease_seconds``) into the future, which decides which pump owns it (several
pumps never enqueue the same delivery twice) and keeps it in the set while
the message is queued or being delivered. The delivery then writes its next
due time or removes the id; if the worker running it dies, the lease runs
out and the id is sent again, long before the broker's visibility timeout
would redeliver the message. The message carries the lease (its end time) as
a token: a delivery runs only if the id's score is still that token, so a
message that waited in the queue past its lease, and was sent again meanwhile,
does nothing (see :func:`workers.webhooks.deliver`). Due times and leases
are Redis' clock (one ``TIME`` read per pass), as the jobs' are, so a pump or
a delivering worker whose clock is off neither sends a delivery early nor
lets a lost one wait.

**Per-key concurrency.** One API key's receivers must not occupy the whole
delivery pool (a slow or hostile receiver holds a thread for a whole attempt),
so at most ``per_key`` deliveries of one key are in flight, queued or running,
at a time: each key has a sorted set ``ig:webhooks:inflight:<key id>`` of its
leased ids (scored by lease end, so a lost delivery frees its place when its
lease runs out). An id whose key is at its cap is not taken but pushed
:data:`DEFER_SECONDS` back, so it never blocks other keys' due ids behind it.
"""

from __future__ import annotations

import logging
import threading
import time

import redis
from celery import Celery

from shared import lua
from shared.jobs import DELIVER_WEBHOOK_TASK, WEBHOOK_QUEUE, WEBHOOKS_DUE, JobStore, redis_clock

log = logging.getLogger(__name__)

DEFER_SECONDS = 1.0  # how far back an id of a key at its cap is pushed
_INFLIGHT = "ig:webhooks:inflight:{}"


def inflight_key(key_id: str | None) -> str:
    """The sorted set of one API key's deliveries in flight."""
    return _INFLIGHT.format(key_id or "-")


def pump_once(
    client: redis.Redis,
    app: Celery,
    *,
    lease_seconds: float = 120.0,
    per_key: int = 0,
    limit: int = 200,
) -> int:
    """Send the due deliveries (at most ``per_key`` in flight per API key; 0: no cap)."""
    take = lua.register(client, "webhook_take")
    now = redis_clock(client)  # due times and leases are Redis' clock, like the job's
    due = client.zrangebyscore(WEBHOOKS_DUE, "-inf", now, start=0, num=limit)
    if not due:
        return 0
    pipe = client.pipeline(transaction=False)
    for job_id in due:
        pipe.hget(JobStore.record_key(job_id), "key_id")
    key_ids = pipe.execute()
    sent = 0
    for job_id, key_id in zip(due, key_ids, strict=True):
        lease = repr(now + lease_seconds)
        cap = per_key if key_id else 0  # a record that is gone: the delivery cleans up
        defer_until = repr(now + DEFER_SECONDS)
        keys = [WEBHOOKS_DUE, inflight_key(key_id)]
        took = take(
            keys, job_id=job_id, now=repr(now), lease=lease, cap=cap, defer_until=defer_until
        )
        if took != 1:
            continue  # another pump took it, or its key is at its cap
        try:
            app.send_task(DELIVER_WEBHOOK_TASK, args=[job_id, lease], queue=WEBHOOK_QUEUE)
        except Exception:
            client.zadd(WEBHOOKS_DUE, {job_id: now})
            client.zrem(inflight_key(key_id), job_id)
            raise
        sent += 1
    return sent


def start_pump(
    client: redis.Redis,
    app: Celery,
    *,
    lease_seconds: float = 120.0,
    per_key: int = 0,
    interval: float = 0.5,
) -> threading.Thread:
    def loop() -> None:
        while True:
            try:
                pump_once(client, app, lease_seconds=lease_seconds, per_key=per_key)
            except Exception as exc:  # noqa: BLE001 - keep pumping through Redis hiccups
                log.warning("webhook pump: %s", exc)
                time.sleep(2.0)
            time.sleep(interval)

    thread = threading.Thread(target=loop, name="webhook-pump", daemon=True)
    thread.start()
    return thread
