"""Moves due webhook deliveries from Redis onto the ``webhooks`` queue.

Retries wait minutes to hours, far longer than the broker's visibility
timeout, so they are not Celery countdowns (which a Redis broker would
redeliver early and hold in worker memory): the next due time of each job is
a score in the ``ig:webhooks:due`` sorted set, and this pump enqueues what is
due. It runs as a thread in every worker that consumes the ``webhooks``
queue; ``ZREM`` decides which pump owns an id, so several pumps never enqueue
the same delivery twice.
"""

from __future__ import annotations

import logging
import threading
import time

import redis
from celery import Celery

from shared.jobs import DELIVER_WEBHOOK_TASK, WEBHOOK_QUEUE, WEBHOOKS_DUE

log = logging.getLogger(__name__)


def pump_once(client: redis.Redis, app: Celery, *, limit: int = 200) -> int:
    now = time.time()
    sent = 0
    for job_id in client.zrangebyscore(WEBHOOKS_DUE, "-inf", now, start=0, num=limit):
        if not client.zrem(WEBHOOKS_DUE, job_id):
            continue  # another pump took it
        try:
            app.send_task(DELIVER_WEBHOOK_TASK, args=[job_id], queue=WEBHOOK_QUEUE)
        except Exception:
            client.zadd(WEBHOOKS_DUE, {job_id: now})
            raise
        sent += 1
    return sent


def start_pump(client: redis.Redis, app: Celery, *, interval: float = 0.5) -> threading.Thread:
    def loop() -> None:
        while True:
            try:
                pump_once(client, app)
            except Exception as exc:  # noqa: BLE001 - keep pumping through Redis hiccups
                log.warning("webhook pump: %s", exc)
                time.sleep(2.0)
            time.sleep(interval)

    thread = threading.Thread(target=loop, name="webhook-pump", daemon=True)
    thread.start()
    return thread
