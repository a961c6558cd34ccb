"""Celery tasks: thin wrappers that take a job id and hand it on."""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.signals import worker_ready

from shared.jobs import DELIVER_WEBHOOK_TASK, GENERATE_TASK, WEBHOOK_QUEUE
from workers.celery_app import app
from workers.context import get_context
from workers.pipeline import run_job
from workers.webhook_pump import start_pump
from workers.webhooks import deliver


@app.task(name=GENERATE_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
def generate(self: Task, job_id: str) -> str:
    outcome = run_job(
        job_id, get_context(), worker=self.request.hostname or "", handoff=_send_to_queue
    )
    return outcome.status


def _send_to_queue(job_id: str, queue: str) -> None:
    """Fallback of a virtual model: the job continues on another family's queue."""
    app.send_task(GENERATE_TASK, args=[job_id], queue=queue)


@app.task(name=DELIVER_WEBHOOK_TASK, acks_late=True, reject_on_worker_lost=True)
def deliver_webhook(job_id: str) -> str:
    ctx = get_context()
    return deliver(
        job_id, settings=ctx.settings, client=ctx.redis, jobs=ctx.jobs, storage=ctx.storage
    )


@worker_ready.connect
def _start_webhook_pump(sender: Any = None, **_: Any) -> None:
    """Workers of the webhooks queue also run the pump that feeds it."""
    queues = {q.name for q in getattr(getattr(sender, "task_consumer", None), "queues", [])}
    if WEBHOOK_QUEUE in queues:
        start_pump(get_context().redis, app)
