"""The Celery application of the worker pools.

One pool per provider family, each consuming its family's queue (see the
Procfile): ``celery -A workers.celery_app worker -Q openai ...``.

Delivery settings, and why:

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a task is acknowledged
  only when it has finished, so a worker that dies mid-job leaves the message
  to be delivered again; the job record's fenced attempts make that safe.
* the catalog is checked against the adapters when the worker starts
  (:func:`workers.adapters.validate_catalog`): a model whose ``options`` its
  adapter cannot take stops the worker instead of failing requests later.
* so is local storage (:mod:`shared.storage_marker`): a worker whose
  ``IMAGEGATE_STORAGE_DIR`` is not the directory the web serves from stops.
* pool size planned from the catalog when the worker starts (``workers/pool.py``):
  jobs wait on upstreams for seconds to minutes, so a family's pool holds as
  many as its upstream allows, not a few per core.
* ``worker_prefetch_multiplier = 1``: a busy worker does not hoard messages
  another pool process could start now.
* broker ``visibility_timeout`` above the longest job deadline, so Redis does
  not hand a slow, healthy job to a second worker.
* no result backend: results live in our job records, and image bytes never
  pass through Celery or Redis.
"""

from __future__ import annotations

import logging
import math

from celery import Celery
from celery.signals import after_setup_logger, celeryd_init, setup_logging, worker_ready

from shared import logs, metrics, tracing
from shared.broker import transport_for
from shared.catalog import CatalogError
from shared.memory_tuning import keep_large_buffers
from shared.redis_client import connect
from shared.settings import Settings
from shared.storage_marker import StorageNotShared, check_local_storage
from workers.adapters import validate_catalog
from workers.pool import apply_plan, log_plan

# Image-sized buffers stay mapped between jobs; two malloc arenas for a pool of
# up to thousands of threads that share one GIL (see shared/memory_tuning.py).
keep_large_buffers(arenas=2)

settings = Settings.from_env()

app = Celery("imagegate", broker=settings.effective_broker_url, include=["workers.tasks"])
app.conf.update(
    # kombu's redis transport, fixed to reconnect after a Redis restart (shared/broker.py).
    broker_transport=transport_for(settings.effective_broker_url),
    task_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_ignore_result=True,
    # No result backend: Celery's stand-in is stateless, so one serves every greenlet.
    # Not thread-safe, Celery keeps one per thread -- per greenlet under gevent, where
    # every task runs in a new one: a new backend object per task, ~2.5% of worker CPU.
    result_backend_thread_safe=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,
    broker_transport_options={
        "visibility_timeout": settings.broker_visibility_timeout,
        # Sweep for messages of dead workers every few seconds, not every 100 s.
        "unacked_restore_interval": 5,
        "unacked_restore_throttle": 1,
        # kombu's channel pool is shared by every ack; high concurrency overflows the
        # default of 10 (acks fail, messages are redelivered).
        "max_connections": 2000,
        "socket_connect_timeout": 5,
        "socket_timeout": 10,
    },
    # Off: the threads pool cannot cancel a running task (Celery only warns), and it
    # need not — the job's fenced attempt and heartbeat already make a redelivered
    # duplicate harmless (see workers/liveness.py).
    worker_cancel_long_running_tasks_on_connection_loss=False,
    worker_send_task_events=False,
    task_default_queue="local",
)


@celeryd_init.connect
def _no_banner_in_json(instance: object = None, **_: object) -> None:
    """JSON logs: every line is one JSON object, so no start-up banner (``celery -q``)."""
    if settings.log_format == "json" and instance is not None:
        instance.quiet = True  # type: ignore[attr-defined]


@celeryd_init.connect
def _metrics_to_the_host_directory(**_: object) -> None:
    """Samples go to the host's metrics directory, which /metrics (or ``imagegate
    metrics-serve``) merges (shared/metrics.py). First: nothing is counted yet."""
    metrics.activate(settings.metrics_dir)
    tracing.configure(settings, "worker")


@celeryd_init.connect
def _check_catalog(**_: object) -> None:
    """Before anything else: a catalog an adapter cannot serve stops the worker.

    Celery logs and swallows a signal handler's exceptions; SystemExit is not
    one of them, so the worker exits with the message naming the model and option.
    """
    try:
        validate_catalog(settings.load_catalog())
    except CatalogError as exc:
        logging.getLogger(__name__).critical("%s", exc)
        raise SystemExit(f"imagegate worker: the catalog is invalid: {exc}") from exc


@celeryd_init.connect
def _check_storage(**_: object) -> None:
    """Local storage must be the directory the web (and every other worker) uses: a worker
    writing images where the web cannot read them would charge for URLs that 404."""
    client = connect(settings.redis_url)
    try:
        # Redis away: wait for it, as the broker connection does (no limit).
        check_local_storage(settings, client, role="worker", wait_seconds=math.inf)
    except StorageNotShared as exc:
        logging.getLogger(__name__).critical("%s", exc)
        raise SystemExit(f"imagegate worker: {exc}") from exc
    finally:
        client.close()


@celeryd_init.connect
def _size_pool(conf: object, options: dict, **_: object) -> None:
    """Before the pool is built: its size from the catalog, unless --concurrency says."""
    planned = apply_plan(conf, options, settings).concurrency
    # Every running task acks through the transport's pool: at least one each.
    transport = app.conf.broker_transport_options
    transport["max_connections"] = max(transport["max_connections"], planned + 256)


@worker_ready.connect
def _say_pool(**_: object) -> None:
    log_plan()


def _json_logs(**_: object) -> None:
    """IMAGEGATE_LOG_FORMAT=json: our handler on the root instead of Celery's (shared/logs.py)."""
    logs.configure(settings, "worker", replace=True)
    _quiet()


@after_setup_logger.connect
def _quiet_libraries(logger: logging.Logger, **_: object) -> None:
    for handler in logger.handlers:  # Celery's text handlers: no credentials either
        handler.addFilter(logs.Redact())
    _quiet()


def _quiet() -> None:
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    logging.getLogger("botocore").setLevel(logging.WARNING)
    # Celery's own "Task ... received" / "... succeeded" lines repeat ours (which
    # name the job, its model and outcome) and cost two log writes per job.
    # Failures and retries still show: they are warnings or errors.
    logging.getLogger("celery.worker.strategy").setLevel(logging.WARNING)
    logging.getLogger("celery.app.trace").setLevel(logging.WARNING)


if settings.log_format == "json":  # connected, the signal makes Celery leave logging to us
    setup_logging.connect(_json_logs)
    _json_logs()  # now: Celery warns (e.g. about running as root) before it sets up logging
