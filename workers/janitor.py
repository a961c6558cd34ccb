"""The image janitor: a thread in every worker process that deletes expired images.

Why in the workers, not Celery beat: the workers already run on every worker host
with Redis and the storage credentials, and already run daemon threads of this kind
(:mod:`workers.liveness`); beat would be one more process to deploy, and exactly one
of it, or it would send the task twice. Here every worker process runs a janitor and
the lease in :meth:`shared.retention.ImageRetention.sweep` lets one act at a time;
when that process dies, another takes over within the lease.

Every ``janitor_interval_seconds`` it makes one pass of at most ``janitor_batch``
folders; a full pass (more are due) is followed by the next at once.
"""

from __future__ import annotations

import logging
import threading

import redis

from shared.retention import ImageRetention, Sweep

log = logging.getLogger(__name__)


class Janitor:
    """The janitor thread of one worker process."""

    def __init__(self, retention: ImageRetention, *, interval_seconds: float, batch: int) -> None:
        self._retention = retention
        self._interval = interval_seconds
        self._batch = batch
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> Janitor:
        self.thread = threading.Thread(target=self._loop, name="image-janitor", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        delay = self._interval
        while not self._stop.wait(delay):
            sweep = self.run_once()
            more = sweep is not None and sweep.folders + sweep.failed >= self._batch
            delay = 0 if more else self._interval

    def run_once(self) -> Sweep | None:
        """One pass (None: another janitor acts now, or Redis is away)."""
        try:
            sweep = self._retention.sweep(batch=self._batch)
        except redis.RedisError as exc:
            log.warning("janitor pass failed, Redis unavailable: %s", exc)
            return None
        except Exception:  # noqa: BLE001 - the thread must outlive a bad pass
            log.exception("janitor pass failed")
            return None
        if sweep is not None and (sweep.folders or sweep.failed):
            log.info(
                "janitor: deleted %d objects in %d expired folders (%d failed, tried later)",
                sweep.objects,
                sweep.folders,
                sweep.failed,
            )
        return sweep
