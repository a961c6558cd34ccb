"""Sending generation tasks by name onto a provider family's queue.

The web side never imports worker code: it only knows the task name
(:data:`shared.jobs.GENERATE_TASK`) and the queue from the catalog. With a
Redis broker the message is pushed straight onto the queue's list
(:func:`shared.broker.task_message`: the same message, a quarter of the web
CPU of ``send_task``); another broker goes through Celery's ``send_task``.
"""

from __future__ import annotations

import redis
from celery import Celery

from shared.broker import task_message, transport_for
from shared.jobs import GENERATE_TASK, Job
from shared.redis_client import connect
from shared.settings import Settings


class TaskQueue:
    def __init__(self, settings: Settings, redis_client: redis.Redis | None = None) -> None:
        """``redis_client``: the web's own client, used when the broker is that Redis."""
        self._celery = Celery("imagegate-api", broker=settings.effective_broker_url)
        self._celery.conf.update(
            broker_transport=transport_for(settings.effective_broker_url),
            task_serializer="json",
            accept_content=["json"],
            broker_connection_retry_on_startup=True,
            broker_transport_options={
                "visibility_timeout": settings.broker_visibility_timeout,
                "socket_connect_timeout": 5,
                "socket_timeout": 10,
            },
            broker_pool_limit=50,
        )
        # The same retries as send_task's policy: redis-py reconnects a few times.
        self._redis: redis.Redis | None = None
        if transport_for(settings.effective_broker_url) is not None:
            same = redis_client is not None and settings.effective_broker_url == settings.redis_url
            self._redis = (
                redis_client
                if same
                else connect(settings.effective_broker_url, max_connections=2000)
            )

    @property
    def broker_redis(self) -> redis.Redis | None:
        """The broker's Redis client (None when the broker is not Redis)."""
        return self._redis

    def enqueue(self, job: Job) -> None:
        if self._redis is not None:
            args = [job.id, job.key_id]  # the key id saves the worker a read
            self._redis.lpush(job.queue, task_message(GENERATE_TASK, args, job.queue))
            return
        self._celery.send_task(
            GENERATE_TASK,
            args=[job.id, job.key_id],
            queue=job.queue,
            routing_key=job.queue,
            retry=True,
            retry_policy={"max_retries": 3, "interval_start": 0.1, "interval_step": 0.5},
        )

    def depth(self, queue: str) -> int | None:
        """Tasks waiting in ``queue`` (a Redis broker's list); None for another broker."""
        if self._redis is None:
            return None
        return int(self._redis.llen(queue))
