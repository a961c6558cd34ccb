"""Celery tasks: thin wrappers that take a job id and hand it to the pipeline."""

from __future__ import annotations

from celery import Task

from shared.jobs import GENERATE_TASK
from workers.celery_app import app
from workers.context import get_context
from workers.pipeline import run_job


@app.task(name=GENERATE_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
def generate(self: Task, job_id: str) -> str:
    outcome = run_job(job_id, get_context(), worker=self.request.hostname or "")
    return outcome.status
