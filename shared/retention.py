"""Image retention: every stored image and upload is deleted once its time has come.

What is stored lives in one folder per job and kind (:func:`results_folder`,
:func:`uploads_folder`): ``{day}/{job id}/{attempt}/{index}.{ext}`` for results
(:mod:`workers.pipeline`), ``uploads/{day}/{job id}/{index}.{ext}`` for the
reference images a client sent (:mod:`shared.uploads`).

* **The index.** Before the first object of a folder is written, the folder is
  noted in the sorted set :data:`INDEX`, scored with the time it is due: Redis'
  clock plus ``IMAGEGATE_IMAGE_RETENTION_SECONDS`` (``shared/lua/retention_track.lua``;
  one clock for every host). A folder is noted once per job and kind (again by a
  later attempt, which only moves it later), never the objects' bytes or anything a
  client sent: a member is a folder name of at most ~60 bytes that the gateway made.
  Noted *before* writing, so no object exists that the index does not name.
* **The janitor** (:meth:`ImageRetention.sweep`), run by a thread in every worker
  process (:mod:`workers.janitor`): one pass takes the lease :data:`LEASE` (redis-py's
  :class:`redis.lock.Lock`: ``SET NX PX`` with a random token, so exactly one janitor
  acts at a time across every worker host; a janitor that dies holding it loses it
  after :data:`LEASE_SECONDS`), reads at most ``batch`` due folders
  (``retention_due.lua``), and for each one renews the lease, deletes the folder in
  storage (:meth:`shared.storage.base.ImageStorage.delete_prefix`) and only then removes
  it from the index. A crash at any point leaves the folder in the index, and the next
  pass deletes it again (deleting what is gone is not an error): restart-safe, and
  nothing is forgotten. A folder whose deletion fails is tried again
  :data:`RETRY_SECONDS` later, so it cannot hold up the folders behind it.
* **The backstop.** A folder the index lost (Redis lost its last second of writes
  in a failover, or its data) would stay forever. So a pass with room left also asks
  storage for job folders of days that ended more than the retention plus
  :data:`BACKSTOP_MARGIN_SECONDS` ago (:meth:`~shared.storage.base.ImageStorage.expired_folders`:
  local storage walks its day folders, oldest first; S3 leaves it to its bucket's
  lifecycle rule) and deletes those too, within the same batch.

Redis cost: one index member per job and kind kept for the retention (about 100 bytes
each, see docs/running/storage.md), plus the lease.

What a client sees afterwards: a local URL of a deleted image answers 404 (or 403
``url_expired`` first, since the retention is longer than the URL lifetime); a
presigned S3 URL gets S3's own 404 ``NoSuchKey``; never a 500.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import redis
from redis.exceptions import LockError

from shared import lua
from shared.storage.base import ImageStorage
from shared.uploads import UPLOADS_PREFIX

log = logging.getLogger(__name__)

INDEX = "ig:storage:retention"
"""Sorted set: job folder -> unix time (Redis' clock) it is to be deleted."""
LEASE = "ig:storage:janitor-lease"
"""The janitors' lease: held by the one janitor acting now."""
LEASE_SECONDS = 300
"""How long a lease outlives its last renewal (once per folder deleted)."""
RETRY_SECONDS = 600
"""A folder whose deletion failed is due again this much later."""
BACKSTOP_MARGIN_SECONDS = 2 * 86400
"""The backstop deletes a day's folders once the day ended this long past the retention
(more than any job's budget, so nothing the index still names as not due)."""


def _day(created: float) -> str:
    return time.strftime("%Y/%m/%d", time.gmtime(created))


def results_folder(job_id: str, created: float) -> str:
    """``{day}/{job id}``: the folder of every attempt's results of the job."""
    return f"{_day(created)}/{job_id}"


def uploads_folder(job_id: str, created: float) -> str:
    """``uploads/{day}/{job id}``: the folder of the job's uploaded reference images."""
    return f"{UPLOADS_PREFIX}/{_day(created)}/{job_id}"


@dataclass(frozen=True)
class Sweep:
    """What one janitor pass did: folders deleted (``orphans`` of them found by the
    backstop, not the index), objects deleted, folders whose deletion failed (tried again
    later)."""

    folders: int = 0
    objects: int = 0
    failed: int = 0
    orphans: int = 0


class ImageRetention:
    """The retention index and the janitor's pass, over one Redis and one storage."""

    def __init__(
        self,
        client: redis.Redis,
        storage: ImageStorage,
        retention_seconds: int,
        *,
        lease_seconds: int = LEASE_SECONDS,
    ) -> None:
        self._client = client
        self._storage = storage
        self.retention_seconds = retention_seconds
        self.lease_seconds = lease_seconds
        self._track = lua.register(client, "retention_track")
        self._due = lua.register(client, "retention_due")

    def track(self, folder: str, *, after: int | None = None, now: float | None = None) -> float:
        """Note ``folder`` to be deleted ``after`` seconds from now (default: the retention);
        the unix time it is due."""
        seconds = self.retention_seconds if after is None else after
        due = self._track([INDEX], prefix=folder, retention=seconds, now=_clock_arg(now))
        return float(due)

    def due(self, *, limit: int, now: float | None = None) -> list[str]:
        """At most ``limit`` folders whose time has come, the longest due first."""
        return [_text(f) for f in self._due([INDEX], now=_clock_arg(now), limit=limit)]

    def pending(self) -> int:
        """How many folders the index holds (due or not)."""
        return int(self._client.zcard(INDEX))

    def sweep(self, *, batch: int, now: float | None = None) -> Sweep | None:
        """One janitor pass: delete up to ``batch`` due folders; None when another janitor
        holds the lease (it is acting now)."""
        lease = self._client.lock(
            LEASE, timeout=self.lease_seconds, blocking=False, thread_local=False
        )
        if not lease.acquire():
            return None
        folders = objects = failed = orphans = 0
        try:
            for folder in self.due(limit=batch, now=now):
                lease.reacquire()  # still ours, for lease_seconds more; LockError if lost
                try:
                    objects += self._storage.delete_prefix(folder)
                except Exception as exc:  # noqa: BLE001 - the others need not wait for it
                    failed += 1
                    log.warning("janitor: could not delete %s (again later): %s", folder, exc)
                    self.track(folder, after=RETRY_SECONDS, now=now)
                    continue
                self._client.zrem(INDEX, folder)
                folders += 1
            room = batch - folders - failed
            for folder in self._lost(room, now) if room > 0 else []:
                lease.reacquire()
                try:
                    objects += self._storage.delete_prefix(folder)
                except Exception as exc:  # noqa: BLE001 - tried again next pass
                    failed += 1
                    log.warning("janitor: could not delete %s (again later): %s", folder, exc)
                    continue
                self._client.zrem(INDEX, folder)
                folders += 1
                orphans += 1
        except LockError:
            log.warning("janitor: lost its lease mid-pass; another janitor goes on")
        finally:
            try:
                lease.release()
            except LockError:
                pass  # it ran out: another janitor may hold it now
        if orphans:
            log.warning("janitor: deleted %d folders the retention index did not name", orphans)
        return Sweep(folders, objects, failed, orphans)

    def _lost(self, limit: int, now: float | None) -> list[str]:
        """Job folders of days long past the retention (the backstop), at most ``limit``."""
        clock = now if now is not None else _redis_time(self._client)
        cutoff = time.strftime(
            "%Y/%m/%d",
            time.gmtime(clock - self.retention_seconds - BACKSTOP_MARGIN_SECONDS),
        )
        found: list[str] = []
        for under in ("", UPLOADS_PREFIX):
            found += self._storage.expired_folders(under, cutoff, limit - len(found))
            if len(found) >= limit:
                break
        return found


def _redis_time(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return seconds + micros / 1e6


def _clock_arg(now: float | None) -> str:
    return "" if now is None else repr(float(now))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
