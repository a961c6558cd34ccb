"""Celery tasks: thin wrappers that take a job id and hand it on."""

from __future__ import annotations

import os
import socket
from functools import cache
from typing import Any

import redis
from celery import Task
from celery.signals import worker_ready, worker_shutdown

from shared.broker import push_front, transport_for
from shared.jobs import DELIVER_WEBHOOK_TASK, GENERATE_TASK, WEBHOOK_QUEUE
from shared.memory_tuning import freeze_startup_objects
from shared.presence import Presence, served_here
from shared.redis_client import connect
from workers.celery_app import app
from workers.context import get_context, job_sessions
from workers.janitor import Janitor
from workers.liveness import HeartbeatAndReaper
from workers.pipeline import run_job
from workers.webhook_pump import start_pump
from workers.webhooks import deliver


@app.task(name=GENERATE_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
def generate(self: Task, job_id: str, key_id: str = "") -> str:
    """Run a job. The web side also sends the job's API key id (saves a read); messages
    sent by reapers and fallbacks carry only the job id."""
    with job_sessions():  # HTTP sessions lent to this job, kept for the next one
        outcome = run_job(
            job_id,
            get_context(),
            worker=self.request.hostname or "",
            handoff=_send_to_queue,
            key_id=key_id,
        )
    return outcome.status


def _send_to_queue(job_id: str, queue: str) -> None:
    """Send a job's task to the back of a queue: a virtual model's fallback, or the reaper
    sending a job that never reached its queue."""
    app.send_task(GENERATE_TASK, args=[job_id], queue=queue)


def _send_to_front(job_id: str, queue: str) -> None:
    """Send a taken-over job's task ahead of every queued one: it has waited its turn once
    already, and its client has been waiting since (with a Redis broker; another broker
    has no such order to choose, and the job goes to the back)."""
    client = _broker_client()
    if client is None:
        _send_to_queue(job_id, queue)
    else:
        push_front(client, GENERATE_TASK, [job_id], queue)


@cache
def _broker_client() -> redis.Redis | None:
    """A client of the broker's Redis (the jobs' own client when they are the same), or
    None when the broker is not Redis."""
    settings = get_context().settings
    url = settings.effective_broker_url
    if transport_for(url) is None:
        return None
    return get_context().redis if url == settings.redis_url else connect(url)


@app.task(name=DELIVER_WEBHOOK_TASK, acks_late=True, reject_on_worker_lost=True)
def deliver_webhook(job_id: str, lease: str | None = None) -> str:
    """One delivery attempt; ``lease`` is the pump's token (absent in older messages)."""
    ctx = get_context()
    return deliver(
        job_id,
        settings=ctx.settings,
        client=ctx.redis,
        jobs=ctx.jobs,
        storage=ctx.storage,
        lease=lease,
    )


# What this process announces (shared.presence), to withdraw it when the worker stops.
_ANNOUNCED: dict[str, Any] = {}


@worker_ready.connect
def _start_background_threads(sender: Any = None, **_: Any) -> None:
    """Every worker beats for its jobs, announces the families it serves, reaps stale
    jobs and runs the image janitor (one acts at a time); webhooks workers also pump."""
    ctx = get_context()
    queues = {q.name for q in getattr(getattr(sender, "task_consumer", None), "queues", [])}
    presence = Presence(ctx.redis)
    worker = f"{getattr(sender, 'hostname', None) or socket.gethostname()}:{os.getpid()}"
    families = served_here(ctx.settings, ctx.catalog.families.values(), queues)
    _ANNOUNCED.update(presence=presence, worker=worker, families=families)
    HeartbeatAndReaper(
        ctx.jobs,
        ctx.catalog,
        _send_to_queue,
        send_front=_send_to_front,
        heartbeat_seconds=ctx.settings.heartbeat_seconds,
        reaper_interval_seconds=ctx.settings.reaper_interval_seconds,
        announce=lambda: presence.announce(worker, families, ttl=ctx.settings.job_stale_seconds),
    ).start()
    Janitor(
        ctx.retention,
        interval_seconds=ctx.settings.janitor_interval_seconds,
        batch=ctx.settings.janitor_batch,
    ).start()
    if WEBHOOK_QUEUE in queues:
        # A delivery lease outlasts one attempt (timeout) plus time queued behind others.
        start_pump(
            ctx.redis,
            app,
            lease_seconds=3 * ctx.settings.webhook_timeout_seconds + 60,
            per_key=ctx.settings.webhook_concurrency_per_key,
        )
    freeze_startup_objects()  # after the context: full GCs need not walk it ever again


@worker_shutdown.connect
def _withdraw(**_: Any) -> None:
    """A worker that stops cleanly stops counting for its families at once."""
    if _ANNOUNCED.get("families"):
        try:
            _ANNOUNCED["presence"].withdraw(_ANNOUNCED["worker"], _ANNOUNCED["families"])
        except redis.RedisError:
            pass  # the announcement runs out by itself
