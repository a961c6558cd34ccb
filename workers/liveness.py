"""Heartbeats and the reaper: how a job outlives the worker process running it.

Celery with a Redis broker only hands a dead worker's message to another
worker after the broker's visibility timeout, which must exceed the longest
job budget (so a slow, healthy job is not run twice) — far too late for a
client waiting on it. So every worker process also runs two daemon threads:

* **heartbeat**: every ``heartbeat_seconds`` it refreshes the watch entry of
  each job this process is running (:meth:`shared.jobs.JobStore.beat`, fenced
  by the attempt number, so a run that lost its job stops refreshing it), and
  renews this process's announcement of the families it serves (``announce``,
  see :mod:`shared.presence`: how the web knows a family is served without
  holding its upstream key), once at start and then with every beat;
* **reaper**: every ``reaper_interval_seconds`` it acts on the jobs whose
  watch time has come (:meth:`shared.jobs.JobStore.reap`): a running job whose
  worker stopped beating gets a new attempt number (and one more ``takeovers``)
  and goes back to its queue *at the front*, ahead of new work (``send_front``:
  it waited its turn once, and its client is still waiting); a job nobody sent
  to a queue is sent to its back; an overdue job ends ``timed_out`` and is
  refunded. The Lua script decides, so reapers in many processes act once.

After losing Redis the reaper waits ``stale_after`` seconds of continuous
connection before judging heartbeats again: during an outage nobody could
beat, and a job whose worker is alive must not be taken over just because
Redis came back.

One clock: heartbeats, watch times and deadlines are Redis' clock, read inside
the scripts, so this host's ``time.time()`` is never compared with another
host's. The pause above is a duration measured on this host alone
(``time.monotonic()``), which no clock offset changes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis

from shared.catalog import Catalog
from shared.jobs import JobStore
from shared.route import route_of

log = logging.getLogger(__name__)

Send = Callable[[str, str], None]  # (job id, queue)


class Running:
    """The jobs this process runs right now: job id -> attempt."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, int] = {}

    @contextmanager
    def track(self, job_id: str, attempt: int) -> Iterator[None]:
        with self._lock:
            self._jobs[job_id] = attempt
        try:
            yield
        finally:
            with self._lock:
                if self._jobs.get(job_id) == attempt:
                    del self._jobs[job_id]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._jobs)


RUNNING = Running()


def queue_of(job_id: str, jobs: JobStore, catalog: Catalog) -> str | None:
    """The queue the job's current route runs on (virtual models move between families)."""
    job = jobs.get(job_id)
    if job is None:
        return None
    model, _ = route_of(job, catalog)
    return catalog.family_of(model).queue


def reap_once(
    jobs: JobStore,
    catalog: Catalog,
    send: Send,
    due: list[str] | None = None,
    *,
    send_front: Send | None = None,
) -> dict[str, int]:
    """One pass over the due jobs (``due``, or read now); returns how many got each action.

    A taken-over job is sent with ``send_front`` (ahead of its queue) when given, a job
    that never reached its queue with ``send``."""
    counts: dict[str, int] = {}
    for job_id in jobs.due() if due is None else due:
        action = jobs.reap(job_id)
        counts[action] = counts.get(action, 0) + 1
        if action in ("takeover", "requeue"):
            queue = queue_of(job_id, jobs, catalog)
            if queue is None:
                continue
            if action == "takeover" and send_front is not None:
                send_front(job_id, queue)
            else:
                send(job_id, queue)
            jobs.mark_sent(job_id)
            level = logging.WARNING if action == "takeover" else logging.INFO
            log.log(level, "reaper: job %s %s -> queue %s", job_id, action, queue)
        elif action == "expired":
            log.warning("reaper: job %s passed its deadline unfinished; timed out", job_id)
    return counts


class HeartbeatAndReaper:
    """The heartbeat and reaper threads of one worker process.

    (Not :class:`shared.jobs.Liveness`, which holds the timings these threads keep.)
    """

    def __init__(
        self,
        jobs: JobStore,
        catalog: Catalog,
        send: Send,
        *,
        heartbeat_seconds: float,
        reaper_interval_seconds: float,
        running: Running = RUNNING,
        send_front: Send | None = None,
        announce: Callable[[], None] | None = None,
    ) -> None:
        self._jobs = jobs
        self._catalog = catalog
        self._send = send
        self._send_front = send_front
        self._announce = announce
        self._beat_every = heartbeat_seconds
        self._reap_every = reaper_interval_seconds
        self._running = running
        self._connected_since: float | None = None
        self._stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> HeartbeatAndReaper:
        for target, name in ((self._beat_loop, "job-heartbeat"), (self._reap_loop, "job-reaper")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()

    def _beat_loop(self) -> None:
        self._announce_once()
        while not self._stop.wait(self._beat_every):
            running = self._running.snapshot()
            try:
                self._jobs.beat(running)
            except redis.RedisError as exc:
                log.warning("heartbeat for %d jobs failed: %s", len(running), exc)
            self._announce_once()

    def _announce_once(self) -> None:
        if self._announce is None:
            return
        try:
            self._announce()
        except redis.RedisError as exc:
            log.warning("announcing the families served failed: %s", exc)

    def _reap_loop(self) -> None:
        stale_after = self._jobs.liveness.stale_after
        while not self._stop.wait(self._reap_every):
            try:
                due = self._jobs.due()
            except redis.RedisError as exc:
                if self._connected_since is not None:
                    log.warning("reaper lost Redis (%s); pausing", exc)
                self._connected_since = None
                continue
            now = time.monotonic()
            if self._connected_since is None:
                self._connected_since = now
            if now - self._connected_since < stale_after:
                continue  # heartbeats may be stale only because Redis was away
            try:
                counts = reap_once(
                    self._jobs, self._catalog, self._send, due, send_front=self._send_front
                )
            except redis.RedisError as exc:
                log.warning("reaper pass failed: %s", exc)
                self._connected_since = None
                continue
            except Exception:  # noqa: BLE001 - the broker refused a send: retry next pass
                log.exception("reaper pass failed")
                continue
            if counts:
                log.info("reaper pass: %s", counts)
