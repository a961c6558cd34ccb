"""Start-up refuses local storage that the web and the workers do not share (issue 21 item 5).

With ``IMAGEGATE_STORAGE=local`` the workers write images into
``IMAGEGATE_STORAGE_DIR`` and the web serves them from there: both must see one
directory. Web and workers on different hosts, each with a directory of its own,
used to fail silently after the charge: URLs that 404, a ``b64_json`` answer of
404 for a job settled as delivered. So every process that uses local storage
checks, when it starts, that it sees the directory the others of the deployment
see:

* The deployment's token is a random string kept in Redis (:data:`REDIS_KEY`),
  and in the marker file :data:`MARKER_FILE` at the top of the directory.
* The first process to start (web or worker: whichever comes first) writes the
  marker file, then the token into Redis (``SET NX``: of two first processes,
  one token wins and the other compares with it).
* Every process after it reads the token from Redis and the marker file from its
  own directory: the same token, or it refuses to start with
  :class:`StorageNotShared`, naming ``IMAGEGATE_STORAGE_DIR``.
* A directory that has a marker while Redis has none (Redis lost its data) puts
  its token back into Redis; the check goes on from there.

Where it runs: the web in each gunicorn worker after the app loads
(``post_worker_init`` in ``api/gunicorn_conf.py``: a failed boot stops the whole
server), the workers when Celery starts (``celeryd_init`` in
``workers/celery_app.py``). Redis away at start is waited for, as for the
URL-signing secret (:func:`shared.signing.signing_secret`).

A directory emptied on purpose (or a new one) while Redis keeps the old token is
refused too, as it cannot be told from another host's directory: the error says
to delete :data:`REDIS_KEY` when the directory is the shared one. S3 storage is
shared by nature and is not checked.
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
import time
from pathlib import Path

import redis

from shared.settings import Settings

log = logging.getLogger(__name__)

MARKER_FILE = ".imagegate-storage-marker"
"""The marker file at the top of ``IMAGEGATE_STORAGE_DIR`` (one line: the token)."""
REDIS_KEY = "ig:storage:local-marker"
"""The deployment's token: the content every process's marker file must have."""
WAIT_FOR_REDIS_SECONDS = 60.0


class StorageNotShared(RuntimeError):
    """This process's ``IMAGEGATE_STORAGE_DIR`` is not the directory the others use."""


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip() or None
    except FileNotFoundError:
        return None


def _create(path: Path, token: str) -> str:
    """Create the marker with ``token`` unless one exists; the token the marker holds.

    Written whole to a temporary file, then linked into place (``link`` fails if the
    name exists): of two processes creating it at once, one token is kept, and both
    read it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".marker-")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(token + "\n")
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        Path(tmp).unlink(missing_ok=True)
    return _read(path) or token


def check_local_storage(
    settings: Settings,
    client: redis.Redis,
    *,
    role: str,
    wait_seconds: float = WAIT_FOR_REDIS_SECONDS,
) -> None:
    """Refuse (:class:`StorageNotShared`) a local storage directory that is not the one the
    other processes of the deployment use; ``role`` ("web", "worker") goes into the
    message. Does nothing for S3 storage."""
    if settings.storage.backend != "local":
        return
    directory = Path(settings.storage.local_dir).resolve()
    marker = directory / MARKER_FILE
    deadline = time.monotonic() + wait_seconds
    pause = 0.1
    while True:
        try:
            shared = _agree(client, marker)
            break
        except redis.RedisError as exc:
            if time.monotonic() + pause > deadline:
                raise
            log.warning("waiting for Redis to check the storage directory (%s)", exc)
            time.sleep(pause)
            pause = min(pause * 2, 2.0)
    if shared:
        return
    raise StorageNotShared(
        f"IMAGEGATE_STORAGE_DIR={settings.storage.local_dir} ({directory}) is not the "
        f"storage directory the other processes of this deployment use: it lacks their "
        f"marker file {MARKER_FILE} (token in Redis key {REDIS_KEY}). With local storage "
        f"the web and every worker must share one directory (e.g. one network mount on "
        f"every host); on separate hosts without one, use S3 storage (IMAGEGATE_STORAGE=s3). "
        f"If this is the shared directory and it was emptied on purpose, delete the Redis "
        f"key {REDIS_KEY} and start again. (This {role} process refused to start.)"
    )


def _agree(client: redis.Redis, marker: Path) -> bool:
    """Whether ``marker`` holds the deployment's token, setting both up on a first start."""
    token = client.get(REDIS_KEY)
    if token is None:
        mine = _read(marker) or _create(marker, secrets.token_urlsafe(24))
        if client.set(REDIS_KEY, mine, nx=True):  # the file first: a token always has one
            return True
        token = client.get(REDIS_KEY)  # another process came first
    mine = _read(marker)
    return mine is not None and mine == token
