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

A streaming request (``stream=true``, :mod:`api.streaming`) also asks for its
job's partial images (``expect(job_id, progress=True)``): the same connection
then subscribes to the job's progress channel (:mod:`shared.progress`) until the
last such waiter of that job closes, and queues each partial image on the
waiter, waking it. Only the web process streaming a job receives its partials,
still over one connection however many requests stream. After a reconnect the
listener subscribes to every wanted progress channel again; a partial published
meanwhile is lost (partials are previews, the completed image is read from the
job record).

Under gunicorn's gevent worker the threading primitives here are
monkey-patched into greenlets; under a threaded server they are threads.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque

import redis

from shared import progress
from shared.jobs import DONE_CHANNEL, Job, JobStore
from shared.progress import PartialImage

log = logging.getLogger(__name__)


class CompletionHub:
    def __init__(self, client: redis.Redis, jobs: JobStore, *, poll_interval: float = 10.0) -> None:
        self._redis = client
        self._jobs = jobs
        self._poll = poll_interval
        self._lock = threading.Lock()
        self._waiters: dict[str, list[Waiter]] = {}
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._subscribed = threading.Event()  # the listener is subscribed right now
        self._subscriptions = 0  # confirmed subscriptions so far (reconnects included)
        self._progress: dict[str, int] = {}  # progress channel -> waiters that want it
        self._live: redis.client.PubSub | None = None  # set once it has every wanted channel

    def expect(self, job_id: str, *, progress: bool = False) -> Waiter:
        """Start listening for ``job_id`` now, before it is enqueued, so that its
        notice cannot be missed and the first read can wait for it; with ``progress``,
        also for its partial images (:attr:`Waiter.partials`)."""
        self._ensure_listener()
        waiter = Waiter(self, job_id, notices=self._subscribed.is_set(), progress=progress)
        live = None
        name = _progress_channel(job_id)
        with self._lock:
            self._waiters.setdefault(job_id, []).append(waiter)
            if progress:
                self._progress[name] = self._progress.get(name, 0) + 1
                live = self._live if self._progress[name] == 1 else None
        if live is not None:
            # Not live yet: the listener subscribes to it once it is (see _listen).
            self._pubsub_call(live, "subscribe", name)
        return waiter

    def wait(self, job_id: str, deadline: float) -> Job | None:
        """Block until the job is terminal or ``deadline`` (unix time) passes; see
        :meth:`Waiter.wait`."""
        with self.expect(job_id) as waiter:
            return waiter.wait(deadline)

    def _forget(self, waiter: Waiter) -> None:
        live = None
        name = _progress_channel(waiter.job_id)
        with self._lock:
            waiters = self._waiters.get(waiter.job_id, [])
            if waiter not in waiters:
                return  # closed before
            waiters.remove(waiter)
            if not waiters:
                self._waiters.pop(waiter.job_id, None)
            if waiter.partials is not None:
                self._progress[name] -= 1
                if not self._progress[name]:
                    del self._progress[name]
                    live = self._live
        if live is not None:
            self._pubsub_call(live, "unsubscribe", name)

    @staticmethod
    def _pubsub_call(pubsub: redis.client.PubSub, method: str, name: str) -> None:
        # Sent from the request's greenlet while the listener reads: redis-py sends
        # under the PubSub's lock, and the reply comes to the listener like any other.
        try:
            getattr(pubsub, method)(name)
        except (redis.RedisError, OSError) as exc:  # the listener reconnects and resubscribes
            log.warning("progress channel %s: %s failed (%s)", name, method, exc)

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
                with self._lock:
                    wanted = set(self._progress)
                pubsub.subscribe(DONE_CHANNEL, *wanted)
                with self._lock:
                    missing = set(self._progress) - wanted  # asked for meanwhile
                    self._live = pubsub  # from now on, expect() subscribes itself
                if missing:
                    pubsub.subscribe(*missing)
                while True:
                    message = pubsub.get_message(timeout=30.0)
                    kind = message.get("type") if message else None
                    if kind == "message" and message["channel"] != DONE_CHANNEL:
                        self._relay(str(message["channel"]), str(message["data"]))
                    elif kind == "message":
                        self._wake(str(message["data"]))
                    elif kind == "subscribe" and message["channel"] == DONE_CHANNEL:
                        # Redis confirmed: no notice is missed from now.
                        # After a reconnect (ours, or redis-py's own silent one, which
                        # resubscribes by itself), re-read what finished meanwhile.
                        if self._subscriptions:
                            self._wake_all()
                        self._subscriptions += 1
                        self._subscribed.set()
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                with self._lock:
                    self._live = None
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
            waiters = list(self._waiters.get(job_id, ()))
        for waiter in waiters:
            waiter._notify()

    def _wake_all(self) -> None:
        with self._lock:
            waiters = [w for ws in self._waiters.values() for w in ws]
        for waiter in waiters:
            waiter._notify()

    def _relay(self, name: str, data: str) -> None:
        """A partial image on a progress channel: queued on its job's streaming waiters."""
        job_id = progress.job_of(name)
        partial = PartialImage.from_json(data) if job_id else None
        if partial is None:
            return
        with self._lock:
            waiters = [w for w in self._waiters.get(job_id, ()) if w.partials is not None]
        for waiter in waiters:
            waiter._add_partial(partial)


def _progress_channel(job_id: str) -> str:
    return progress.channel(job_id)


class Waiter:
    """One request waiting for one job (from :meth:`CompletionHub.expect`); a context
    manager that stops listening when it exits."""

    # Partial images kept for a streaming waiter that has not taken them yet: a
    # client reading slowly loses the oldest previews, never the web process' memory.
    MAX_PARTIALS = 8

    def __init__(
        self, hub: CompletionHub, job_id: str, *, notices: bool, progress: bool = False
    ) -> None:
        self._hub = hub
        self.job_id = job_id
        self._event = threading.Event()
        self._notices = notices  # the hub was subscribed when this waiter registered
        self._noticed = False  # a done notice (or a reconnect) since the last pause()
        self.partials: deque[PartialImage] | None = (
            deque(maxlen=self.MAX_PARTIALS) if progress else None
        )
        """The partial images received and not yet taken (None: not asked for)."""

    @property
    def poll_interval(self) -> float:
        """How often a waiter re-reads its job's record with no notice (the safety net)."""
        return self._hub._poll

    @property
    def notices(self) -> bool:
        """Whether no done notice can have been missed since :meth:`CompletionHub.expect`."""
        return self._notices

    def _notify(self) -> None:
        self._noticed = True
        self._event.set()

    def _add_partial(self, partial: PartialImage) -> None:
        if self.partials is not None:
            self.partials.append(partial)
            self._event.set()

    def take_partials(self) -> list[PartialImage]:
        """The partial images received since the last call, oldest first."""
        taken: list[PartialImage] = []
        while self.partials:
            taken.append(self.partials.popleft())
        return taken

    def pause(self, timeout: float) -> bool:
        """Sleep until woken or ``timeout`` seconds pass; True if a done notice (or a
        listener reconnect) came, so the job's record is worth reading again."""
        self._event.wait(max(0.0, timeout))
        self._event.clear()
        noticed, self._noticed = self._noticed, False
        return noticed

    def read(self) -> Job | None:
        """The job's record now; raises redis errors."""
        return self._hub._jobs.get(self.job_id)

    def __enter__(self) -> Waiter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._hub._forget(self)

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
