"""How a web process waits for many jobs at once.

One subscriber per web process listens on :data:`shared.jobs.DONE_CHANNEL`
(workers publish a job id there on every terminal transition) and wakes the
requests waiting for that id. A waiting request therefore holds no Redis
connection of its own: a thousand waiters cost one pub/sub connection plus a
read of their job's record every ``poll_interval`` seconds each.

Pub/sub is fire-and-forget: a notice published while the listener is
disconnected is lost. So when the listener loses Redis, and again once it is
subscribed anew, it wakes every waiter to re-read its job's record; and each
waiter also re-reads every ``poll_interval`` seconds, a safety net for what
nothing else catches (at worst an answer that late, never a wrong one). The
net is wide (10 s) because it is paid per waiting request: with 2 s, a
thousand requests held for 20 s made 10,000 reads, a third of the web
side's CPU in the held benchmark.

A request that registers (:meth:`CompletionHub.expect`) before it enqueues its
job cannot miss the notice and skips the read before its first sleep; every
wake-up reads the whole record, which is what the answer is built from.

Under gunicorn's gevent worker the threading primitives here are
monkey-patched into greenlets; under a threaded server they are threads.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import redis

from shared.jobs import DONE_CHANNEL, Job, JobStore

log = logging.getLogger(__name__)


class CompletionHub:
    def __init__(self, client: redis.Redis, jobs: JobStore, *, poll_interval: float = 10.0) -> None:
        self._redis = client
        self._jobs = jobs
        self._poll = poll_interval
        self._lock = threading.Lock()
        self._waiters: dict[str, list[threading.Event]] = {}
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._subscribed = threading.Event()  # the listener is subscribed right now
        self._subscriptions = 0  # confirmed subscriptions so far (reconnects included)

    def expect(self, job_id: str) -> Waiter:
        """Start listening for ``job_id`` now, before it is enqueued, so that its
        notice cannot be missed and the first read can wait for it."""
        self._ensure_listener()
        event = threading.Event()
        with self._lock:
            self._waiters.setdefault(job_id, []).append(event)
        return Waiter(self, job_id, event, notices=self._subscribed.is_set())

    def wait(self, job_id: str, deadline: float) -> Job | None:
        """Block until the job is terminal or ``deadline`` (unix time) passes; see
        :meth:`Waiter.wait`."""
        with self.expect(job_id) as waiter:
            return waiter.wait(deadline)

    def _forget(self, job_id: str, event: threading.Event) -> None:
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
            pubsub = self._redis.pubsub()
            try:
                pubsub.subscribe(DONE_CHANNEL)
                while True:
                    message = pubsub.get_message(timeout=30.0)
                    kind = message.get("type") if message else None
                    if kind == "message":
                        self._wake(str(message["data"]))
                    elif kind == "subscribe":  # Redis confirmed: no notice is missed from now
                        # After a reconnect (ours, or redis-py's own silent one, which
                        # resubscribes by itself), re-read what finished meanwhile.
                        if self._subscriptions:
                            self._wake_all()
                        self._subscriptions += 1
                        self._subscribed.set()
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                self._subscribed.clear()
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


class Waiter:
    """One request waiting for one job (from :meth:`CompletionHub.expect`); a context
    manager that stops listening when it exits."""

    def __init__(
        self, hub: CompletionHub, job_id: str, event: threading.Event, *, notices: bool
    ) -> None:
        self._hub = hub
        self.job_id = job_id
        self._event = event
        self._notices = notices  # the hub was subscribed when this waiter registered

    def __enter__(self) -> Waiter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._hub._forget(self.job_id, self._event)

    def wait(self, deadline: float, *, read_first: bool = True) -> Job | None:
        """The job's record once it is terminal, or the last record read when
        ``deadline`` (unix time) passes (``None`` if the job is gone or was never
        read).

        ``read_first=False`` skips the read before the first sleep: right for a job
        enqueued after :meth:`CompletionHub.expect`, whose notice cannot be missed
        (unless the hub was not subscribed yet then: it reads first anyway).
        Redis being unreachable does not end the wait early: the job survives a
        Redis restart, so the waiter keeps reading until the deadline.
        """
        job: Job | None = None
        skip_read = not read_first and self._notices
        while True:
            if not skip_read:
                try:
                    job = self._hub._jobs.get(self.job_id)
                except redis.RedisError as exc:
                    log.warning("waiting for job %s: Redis unavailable (%s)", self.job_id, exc)
                else:
                    if job is None or job.terminal:
                        return job
            skip_read = False
            remaining = deadline - time.time()
            if remaining <= 0:
                return job
            self._event.wait(min(remaining, self._hub._poll))
            self._event.clear()
