"""How many jobs one worker process runs at once: planned from the catalog, not a fixed count.

A generation job spends nearly all its life waiting on the upstream (5-60 s per
image for real providers), so a pool sized by CPU would queue jobs that could be
running. The plan, for the queues a worker consumes (``-Q``):

    queue of a family with ``worker_concurrency`` set in the catalog
        -> that number (``local`` renders images in the worker: CPU-bound, small)
    queue of a family with ``max_concurrent`` (per upstream key)
        -> max_concurrent x the number of keys configured (BFL: 24 per key);
           more jobs in flight would only wait for a capacity slot
    queue of any other family (nothing upstream caps it)
        -> IMAGEGATE_WORKER_UNCAPPED_CONCURRENCY (default 2000)
    the webhooks queue
        -> IMAGEGATE_WEBHOOK_CONCURRENCY (default 16)

summed over the queues consumed, at least 1. ``IMAGEGATE_WORKER_CONCURRENCY``
(a number) or ``celery worker --concurrency N`` override the plan.

The Procfile runs upstream families on Celery's ``gevent`` pool: a job waiting
on its upstream is a parked greenlet (a few kB plus its job's buffers), and
2,000 of them in one process cost no more CPU per job than 60 do. (With the
``threads`` pool, which starts threads only as jobs arrive, thousands of
threads waking at once fight for the GIL: the benchmark's 2,000-at-once burst
cost 2-4x the CPU per job, and twice the memory.) The CPU-bound ``local``
family and the webhooks line keep ``threads``. See docs/internals/benchmarks.md
for what one held job costs in each process.

``plan`` is pure; ``apply_plan`` is what the ``celeryd_init`` signal in
``workers/celery_app.py`` calls before the pool is built.
"""

from __future__ import annotations

import logging
import resource
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from shared.catalog import Catalog
from shared.jobs import WEBHOOK_QUEUE
from shared.settings import Settings

log = logging.getLogger(__name__)  # logging is set up after apply_plan: see log_plan

_applied: Plan | None = None  # this process's plan, once apply_plan has run


def planned() -> int:
    """The pool size ``apply_plan`` chose in this process (0 before, or outside a worker)."""
    return _applied.concurrency if _applied else 0


# Besides one socket per job in flight: Redis connections, the broker, log files.
FD_HEADROOM = 256


@dataclass(frozen=True)
class Share:
    """One consumed queue's part of the pool, and why it is that large."""

    queue: str
    concurrency: int
    reason: str


@dataclass(frozen=True)
class Plan:
    shares: tuple[Share, ...]
    override: int = 0  # IMAGEGATE_WORKER_CONCURRENCY or --concurrency, when given

    @property
    def concurrency(self) -> int:
        if self.override:
            return self.override
        return max(1, sum(s.concurrency for s in self.shares))

    def describe(self) -> str:
        if self.override:
            return f"{self.override} (set explicitly)"
        parts = ", ".join(f"{s.queue}: {s.concurrency} ({s.reason})" for s in self.shares)
        return f"{self.concurrency} = {parts}"


def plan(settings: Settings, catalog: Catalog, queues: Iterable[str], override: int = 0) -> Plan:
    """The pool size for a worker consuming ``queues`` (see the module docstring)."""
    by_queue = {f.queue: f for f in catalog.families.values()}
    shares = []
    for queue in dict.fromkeys(queues):  # in order, once each
        family = by_queue.get(queue)
        if queue == WEBHOOK_QUEUE:
            shares.append(Share(queue, settings.webhook_concurrency, "webhook deliveries"))
        elif family is None:
            shares.append(
                Share(queue, settings.worker_uncapped_concurrency, "not a family of the catalog")
            )
        elif family.worker_concurrency > 0:
            shares.append(Share(queue, family.worker_concurrency, "catalog worker_concurrency"))
        elif family.max_concurrent > 0:
            keys = max(1, len(settings.credentials_for(family.key_env)))
            shares.append(
                Share(
                    queue,
                    family.max_concurrent * keys,
                    f"max_concurrent {family.max_concurrent} x {keys} key(s)",
                )
            )
        else:
            shares.append(
                Share(queue, settings.worker_uncapped_concurrency, "no upstream cap in the catalog")
            )
    return Plan(tuple(shares), override=override or settings.worker_concurrency)


def queues_of(option: object) -> list[str]:
    """Celery's ``-Q`` option as a list: ``"a,b"``, ``["a", "b"]`` or nothing."""
    if not option:
        return []
    items = option.split(",") if isinstance(option, str) else list(option)  # type: ignore[call-overload]
    return [str(q).strip() for q in items if str(q).strip()]


def apply_plan(conf: object, options: Mapping[str, object], settings: Settings) -> Plan:
    """Size the pool of the worker being started (``celeryd_init``) and its file limit.

    ``--concurrency N`` on the command line wins; otherwise the plan is written
    to ``conf.worker_concurrency``, which Celery reads right after this signal.
    """
    given = options.get("concurrency")
    override = given if isinstance(given, int) and given > 0 else 0
    queues = queues_of(options.get("queues")) or [str(getattr(conf, "task_default_queue", ""))]
    result = plan(settings, settings.load_catalog(), queues, override=override)
    if not override:
        conf.worker_concurrency = result.concurrency  # type: ignore[attr-defined]
    global _applied
    _applied = result
    raise_file_limit(result.concurrency + FD_HEADROOM)
    return result


def raise_file_limit(wanted: int) -> int:
    """Raise this process's soft open-files limit towards ``wanted`` (up to the hard limit).

    Each job in flight holds a socket to its upstream; many systems start
    processes with a soft limit of 1,024.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < ceiling:
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
        soft = ceiling
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning(
            "open-files limit %d is below the %d this pool may need; raise it (ulimit -n)",
            soft,
            wanted,
        )
    return soft


def log_plan() -> None:
    """Say at start what the pool holds and why (called once logging is set up)."""
    if _applied is not None:
        log.info("worker pool: %s jobs at once", _applied.describe())
