"""How a web process waits for many jobs at once.

One subscriber per web process listens on :data:`shared.jobs.DONE_CHANNEL`
(workers publish a job id there on every terminal transition) and wakes the
requests waiting for that id. A waiting request therefore holds no Redis
connection of its own: a thousand waiters cost one pub/sub connection plus a
cheap status read every few seconds each.

Pub/sub is fire-and-forget, so it is only a fast path: a waiter reads the
job's status before it sleeps and again every ``poll_interval`` seconds, so a
message lost to a reconnect costs at most that long, never a wrong answer.

Under gunicorn's gevent worker the threading primitives here are
monkey-patched into greenlets; under a threaded server they are threads.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import redis

from shared.jobs import DONE_CHANNEL, TERMINAL, JobStatus, JobStore

log = logging.getLogger(__name__)


class CompletionHub:
    def __init__(self, client: redis.Redis, jobs: JobStore, *, poll_interval: float = 2.0) -> None:
        self._redis = client
        self._jobs = jobs
        self._poll = poll_interval
        self._lock = threading.Lock()
        self._waiters: dict[str, list[threading.Event]] = {}
        self._thread: threading.Thread | None = None
        self._pid: int | None = None

    def wait(self, job_id: str, deadline: float) -> JobStatus | None:
        """Block until the job is terminal or ``deadline`` (unix time) passes.

        Returns the terminal status, or the last status seen when time ran out
        (``None`` if the job is gone). Redis being unreachable does not end the
        wait early: the job survives a Redis restart, so the waiter keeps
        reading until the deadline.
        """
        self._ensure_listener()
        event = threading.Event()
        with self._lock:
            self._waiters.setdefault(job_id, []).append(event)
        status: JobStatus | None = JobStatus.QUEUED
        try:
            while True:
                try:
                    status = self._jobs.status(job_id)
                except redis.RedisError as exc:
                    log.warning("waiting for job %s: Redis unavailable (%s)", job_id, exc)
                else:
                    if status is None or status in TERMINAL:
                        return status
                remaining = deadline - time.time()
                if remaining <= 0:
                    return status
                event.wait(min(remaining, self._poll))
                event.clear()
        finally:
            with self._lock:
                events = self._waiters.get(job_id, [])
                if event in events:
                    events.remove(event)
                if not events:
                    self._waiters.pop(job_id, None)

    def _ensure_listener(self) -> None:
        # After a fork (gunicorn preloading) the parent's thread does not exist here.
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._thread = threading.Thread(
                target=self._listen, name="job-done-listener", daemon=True
            )
            self._thread.start()

    def _listen(self) -> None:
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(DONE_CHANNEL)
                while True:
                    message = pubsub.get_message(timeout=30.0)
                    if message and message.get("type") == "message":
                        self._wake(str(message["data"]))
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                log.warning("job notification listener lost Redis (%s); reconnecting", exc)
                self._wake_all()  # let waiters re-read their status now
                time.sleep(1.0)
            finally:
                try:
                    pubsub.close()
                except Exception:  # noqa: BLE001 - closing a broken connection
                    pass

    def _wake(self, job_id: str) -> None:
        with self._lock:
            events = list(self._waiters.get(job_id, ()))
        for event in events:
            event.set()

    def _wake_all(self) -> None:
        with self._lock:
            events = [e for evs in self._waiters.values() for e in evs]
        for event in events:
            event.set()
