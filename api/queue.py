"""Sending generation tasks by name onto a provider family's queue.

The web side never imports worker code: it only knows the task name
(:data:`shared.jobs.GENERATE_TASK`) and the queue from the catalog.
"""

from __future__ import annotations

from celery import Celery

from shared.broker import transport_for
from shared.jobs import GENERATE_TASK, Job
from shared.settings import Settings


class TaskQueue:
    def __init__(self, settings: Settings) -> None:
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

    def enqueue(self, job: Job) -> None:
        self._celery.send_task(
            GENERATE_TASK,
            args=[job.id],
            queue=job.queue,
            routing_key=job.queue,
            retry=True,
            retry_policy={"max_retries": 3, "interval_start": 0.1, "interval_step": 0.5},
        )
