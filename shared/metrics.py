"""Prometheus metrics of every process (web, workers), and how ``/metrics`` reads them.

Multiprocess mode (``prometheus_client.multiprocess``): each gunicorn and Celery
process writes its samples to memory-mapped files in one directory per host
(``IMAGEGATE_METRICS_DIR``); whoever is scraped — the web's ``GET /metrics`` or
``imagegate metrics-serve`` on a host without a web process — merges every file of
the directory. So one scrape of a host sees all its processes, however many
gunicorn and Celery processes there are and whichever of them served the scrape.

* :func:`activate` is called by a server process before it counts anything (gunicorn's
  ``post_worker_init``, Celery's ``worker_init``); a process that never calls it
  (tests, the CLI) keeps its samples in memory, and ``/metrics`` shows only its own.
* Counters of processes that ended stay in the directory (the host's sums never go
  down while it runs); the "live" gauges (requests in progress, jobs running) count
  only processes that are alive. The directory is emptied when the first process of a
  host starts while no process that wrote there is alive any more (a restart of the
  whole host), under a file lock.
* Gauges that describe the cluster, not a process (queue depth, breakers, slots,
  live workers, money in flight) are read from Redis at scrape time by
  :class:`ClusterCollector`: every scraped host reports the same values, so
  dashboards take ``max`` over instances of them.

Labels stay bounded: models and families come from the catalog, error codes from a
bounded set (:func:`bounded`), statuses as classes; never job ids, keys or prompts.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import re
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import redis
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import REGISTRY, Collector

from shared.catalog import Catalog

disable_created_metrics()  # no ``_created`` series: multiprocess mode has none either
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ENV_DIR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own variable, set by activate()

# Seconds: a web request, a job (in the queue, in the worker, at the upstream).
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 900)

# -- the web ------------------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "imagegate_http_requests",
    "HTTP requests answered, by route (URL rule), method, status and model.",
    ["route", "method", "status", "model"],
)
HTTP_DURATION = Histogram(
    "imagegate_http_request_duration_seconds",
    "Time from a request's arrival to its answer (a stream's: to its first event).",
    ["route", "method", "model"],
    buckets=HTTP_BUCKETS,
)
HTTP_IN_PROGRESS = Gauge(
    "imagegate_http_requests_in_progress",
    "Requests being answered now (synchronous ones wait here for their image).",
    ["route"],
    multiprocess_mode="livesum",
)
MONEY_RESERVED = Counter(
    "imagegate_money_reserved_micros",
    "Micro-units deducted from balances at admission (keys with a balance).",
    ["model"],
)

# -- jobs (whoever ends them: worker, reaper, web) ----------------------------------------
JOBS_FINISHED = Counter(
    "imagegate_jobs_finished",
    "Jobs that ended, by model asked for, family, outcome and error code.",
    ["model", "family", "outcome", "code"],
)
MONEY_SETTLED = Counter(
    "imagegate_money_settled_micros",
    "Micro-units spent when jobs ended (delivered images).",
    ["model"],
)
MONEY_REFUNDED = Counter(
    "imagegate_money_refunded_micros",
    "Micro-units given back to balances when jobs ended (images not delivered).",
    ["model"],
)

# -- workers ------------------------------------------------------------------------------
JOB_QUEUE_SECONDS = Histogram(
    "imagegate_job_queue_seconds",
    "Time from admission to a worker's first claim of the job.",
    ["family"],
    buckets=JOB_BUCKETS,
)
JOB_RUN_SECONDS = Histogram(
    "imagegate_job_run_seconds",
    "Time one attempt spent in a worker, by how the attempt ended.",
    ["model", "family", "outcome"],
    buckets=JOB_BUCKETS,
)
JOB_UPSTREAM_SECONDS = Histogram(
    "imagegate_job_upstream_seconds",
    "Time one attempt spent in its adapter (upstream calls, polling, downloads).",
    ["model", "family"],
    buckets=JOB_BUCKETS,
)
JOBS_RUNNING = Gauge(
    "imagegate_jobs_running",
    "Jobs being run now by live worker processes.",
    ["family"],
    multiprocess_mode="livesum",
)
UPSTREAM_REQUESTS = Counter(
    "imagegate_upstream_requests",
    "HTTP exchanges with upstreams (each retry counts), by status class.",
    ["family", "model", "status"],
)
UPSTREAM_DURATION = Histogram(
    "imagegate_upstream_request_duration_seconds",
    "Time of one HTTP exchange with an upstream.",
    ["family", "model"],
    buckets=HTTP_BUCKETS,
)
UPSTREAM_RETRIES = Counter(
    "imagegate_upstream_retries",
    "Upstream exchanges tried again (5xx, 429, a lost connection).",
    ["family", "model"],
)
IMAGES_STORED = Counter("imagegate_images_stored", "Images stored.", ["model"])
IMAGE_BYTES_STORED = Counter(
    "imagegate_image_bytes_stored", "Bytes of the images stored.", ["model"]
)
TAKEOVERS = Counter(
    "imagegate_job_takeovers",
    "Jobs taken over from a worker that stopped beating (sent again, new attempt).",
    ["family"],
)
REAPER_ACTIONS = Counter(
    "imagegate_reaper_actions",
    "What reapers did with due jobs: takeover, requeue, expired.",
    ["action"],
)
WEBHOOK_DELIVERIES = Counter(
    "imagegate_webhook_deliveries",
    "Webhook delivery attempts by outcome.",
    ["outcome"],
)

_activated: list[str] = []
_LOCK_NAME = ".lock"


def default_dir() -> str:
    return str(Path(tempfile.gettempdir()) / f"imagegate-metrics-{os.getuid()}")


def directory(setting: str) -> str:
    return setting or default_dir()


def activate(setting: str) -> str:
    """Make this process write its samples to the host's metrics directory (``setting``,
    or the default under the temporary directory); returns the directory.

    Call before the process counts anything: samples counted before stay in memory."""
    path = directory(setting)
    if _activated:
        return _activated[0]
    os.makedirs(path, exist_ok=True)
    with _locked(path):
        if not any(_alive(pid) for pid in _marked_pids(path)):
            for name in os.listdir(path):
                if name != _LOCK_NAME:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(path, name))
        Path(path, f"live-{os.getpid()}").touch()
    os.environ[ENV_DIR] = path
    values.ValueClass = values.MultiProcessValue()
    _activated.append(path)
    return path


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    with open(os.path.join(path, _LOCK_NAME), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _marked_pids(path: str) -> list[int]:
    pids = []
    for name in os.listdir(path):
        if name.startswith("live-") and name[5:].isdigit():
            pids.append(int(name[5:]))
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_LIVE_FILE = re.compile(r"gauge_live\w*_(\d+)\.db$")


def process_files(path: str) -> list[str]:
    """The directory's sample files, without the live gauges of processes that ended."""
    files = []
    for name in glob.glob(os.path.join(path, "*.db")):
        live = _LIVE_FILE.search(name)
        if live and not _alive(int(live.group(1))):
            continue
        files.append(name)
    return files


class HostCollector(Collector):
    """Every process's samples in a metrics directory, merged."""

    def __init__(self, path: str) -> None:
        self._path = path

    def collect(self) -> Iterable[Any]:
        return MultiProcessCollector.merge(process_files(self._path), accumulate=True)


# -- the cluster, from Redis ----------------------------------------------------------------
MAX_KEYS_PER_FAMILY = 16  # key indexes looked at for slots and breakers


class ClusterCollector(Collector):
    """Gauges read from Redis at scrape time: the same on every host."""

    def __init__(
        self, client: redis.Redis, catalog: Catalog, broker: redis.Redis | None = None
    ) -> None:
        self._redis = client
        self._broker = broker or client
        self._catalog = catalog

    def collect(self) -> Iterable[Any]:
        from shared.capacity import Capacity
        from shared.health import Breakers
        from shared.jobrecord import WATCH, WEBHOOKS_DUE
        from shared.presence import presence_for
        from shared.route import key_breaker, model_breaker

        families = sorted(self._catalog.families.values(), key=lambda f: f.name)
        try:
            with self._broker.pipeline(transaction=False) as pipe:
                for family in families:
                    pipe.llen(family.queue)
                depths = pipe.execute()
            now = self._redis.time()
            now_s = now[0] + now[1] / 1e6
            with self._redis.pipeline(transaction=False) as pipe:
                for family in families:
                    for i in range(MAX_KEYS_PER_FAMILY):
                        pipe.zcount(Capacity.slot_key(family.name, i), f"({now_s!r}", "+inf")
                pipe.zcard(WATCH)
                pipe.zcard(WEBHOOKS_DUE)
                slots = pipe.execute()
            live = presence_for(self._redis).live([f.name for f in families])
            breakers = Breakers(self._redis)
            names = [("model", m.id, "", model_breaker(m.id)) for m in self._models()]
            names += [
                ("key", "", f"{f.name}:{i}", key_breaker(f.name, i))
                for f in families
                for i in range(MAX_KEYS_PER_FAMILY)
            ]
            states = _breaker_states(self._redis, breakers, [n[3] for n in names], now_s)
        except redis.RedisError:
            return []
        depth = GaugeMetricFamily(
            "imagegate_queue_depth", "Jobs waiting in each family's queue.", labels=["family"]
        )
        in_use = GaugeMetricFamily(
            "imagegate_capacity_slots_in_use",
            "Upstream slots held now, per family and key index.",
            labels=["family", "key"],
        )
        workers = GaugeMetricFamily(
            "imagegate_workers_live",
            "Worker processes announcing each family (heartbeat).",
            labels=["family"],
        )
        per = MAX_KEYS_PER_FAMILY
        for n, family in enumerate(families):
            depth.add_metric([family.name], depths[n])
            workers.add_metric([family.name], live.get(family.name, 0))
            for i, count in enumerate(slots[n * per : (n + 1) * per]):
                if count:
                    in_use.add_metric([family.name, str(i)], count)
        unfinished = GaugeMetricFamily(
            "imagegate_jobs_unfinished", "Jobs admitted and not ended yet (all families)."
        )
        unfinished.add_metric([], slots[-2])
        due = GaugeMetricFamily("imagegate_webhooks_due", "Jobs whose webhook delivery is pending.")
        due.add_metric([], slots[-1])
        breaker = GaugeMetricFamily(
            "imagegate_breaker_state",
            "Circuit breakers: 1 for the state each is in (closed, open, half_open); "
            "key breakers only once they have seen a failure.",
            labels=["model", "key", "state"],
        )
        for (kind, model, key, _), state in zip(names, states, strict=True):
            if state == "unused":
                if kind == "key":
                    continue  # keys that do not exist look like this too
                state = "closed"
            for s in ("closed", "open", "half_open"):
                breaker.add_metric([model, key, s], 1 if s == state else 0)
        return [depth, in_use, workers, unfinished, due, breaker]

    def _models(self) -> list[Any]:
        return sorted(self._catalog.models.values(), key=lambda m: m.id)


def _breaker_states(
    client: redis.Redis, breakers: Any, names: list[str], now: float
) -> list[str | None]:
    """Each breaker's state; ``unused`` for one with no record at all."""
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            state, failures = breakers.keys(name)
            pipe.hmget(state, "opened_at", "trial_until")
            pipe.exists(failures)
        raw = pipe.execute()
    out: list[str | None] = []
    for i, name in enumerate(names):
        (opened_at, trial_until), seen = raw[2 * i], raw[2 * i + 1]
        if opened_at is None and not seen:
            out.append("unused")
            continue
        status = breakers._status(
            name, now, 0, float(opened_at) if opened_at else None,
            float(trial_until) if trial_until else None,
        )  # fmt: skip
        out.append(status.state.value)
    return out


def exposition(collectors: Iterable[Collector]) -> bytes:
    """The text format of what ``collectors`` hold, with this process's samples (or the
    host's, once :func:`activate` ran)."""
    registry = CollectorRegistry(auto_describe=False)
    if _activated or os.environ.get(ENV_DIR):
        registry.register(HostCollector(_activated[0] if _activated else os.environ[ENV_DIR]))
    else:
        registry.register(_Own())
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry)


def exposition_of_directory(path: str) -> str:
    """The text format of every sample in a metrics directory (tests, tools)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HostCollector(path))
    return generate_latest(registry).decode()


class _Own(Collector):
    """This process's own metrics (not activated: tests, a single process)."""

    def collect(self) -> Iterable[Any]:
        return REGISTRY.collect()


# -- helpers the hot path calls ---------------------------------------------------------------
_CODE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
_SEEN_CODES: set[str] = set()
_SEEN_LOCK = threading.Lock()
MAX_CODES = 100  # distinct error codes a process labels; then "other"


def bounded(code: str | None) -> str:
    """An error code as a label: the code when it looks like one of ours and fewer than
    :data:`MAX_CODES` distinct ones were seen, else ``other`` (upstream text stays out)."""
    if not code:
        return ""
    if code in _SEEN_CODES:
        return code
    if not _CODE.match(code):
        return "other"
    with _SEEN_LOCK:
        if len(_SEEN_CODES) >= MAX_CODES:
            return "other"
        _SEEN_CODES.add(code)
    return code


def status_class(status: int | None) -> str:
    """An upstream answer as a label: ``2xx``, ``4xx``, ``429``, ``5xx`` (None: ``error``,
    no answer at all: a timeout or a lost connection)."""
    if status is None:
        return "error"
    if status == 429:
        return "429"
    return f"{status // 100}xx"


def job_ended(
    model: str,
    family: str,
    outcome: str,
    code: str | None = None,
    *,
    settled: int = 0,
    refunded: int = 0,
) -> None:
    """Count a job that became terminal (once: the caller made the transition)."""
    JOBS_FINISHED.labels(model, family, outcome, bounded(code)).inc()
    if settled:
        MONEY_SETTLED.labels(model).inc(settled)
    if refunded:
        MONEY_REFUNDED.labels(model).inc(refunded)
