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
would redeliver the message.
"""

from __future__ import annotations

import logging
import threading
import time

import redis
from celery import Celery

from shared.jobs import DELIVER_WEBHOOK_TASK, WEBHOOK_QUEUE, WEBHOOKS_DUE

log = logging.getLogger(__name__)


# KEYS[1] the due set; ARGV: job id, now, lease end. 1 if this pump took the id.
_TAKE = """
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not due or tonumber(due) > tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], tonumber(ARGV[3]), ARGV[1])
return 1
"""


def pump_once(
    client: redis.Redis, app: Celery, *, lease_seconds: float = 120.0, limit: int = 200
) -> int:
    take = client.register_script(_TAKE)
    now = time.time()
    sent = 0
    for job_id in client.zrangebyscore(WEBHOOKS_DUE, "-inf", now, start=0, num=limit):
        if not take(keys=[WEBHOOKS_DUE], args=[job_id, repr(now), repr(now + lease_seconds)]):
            continue  # another pump took it
        try:
            app.send_task(DELIVER_WEBHOOK_TASK, args=[job_id], queue=WEBHOOK_QUEUE)
        except Exception:
            client.zadd(WEBHOOKS_DUE, {job_id: now})
            raise
        sent += 1
    return sent


def start_pump(
    client: redis.Redis, app: Celery, *, lease_seconds: float = 120.0, interval: float = 0.5
) -> threading.Thread:
    def loop() -> None:
        while True:
            try:
                pump_once(client, app, lease_seconds=lease_seconds)
            except Exception as exc:  # noqa: BLE001 - keep pumping through Redis hiccups
                log.warning("webhook pump: %s", exc)
                time.sleep(2.0)
            time.sleep(interval)

    thread = threading.Thread(target=loop, name="webhook-pump", daemon=True)
    thread.start()
    return thread
