"""The URL-signing secret shared by every web and worker process."""

from __future__ import annotations

import logging
import secrets
import time
from typing import TYPE_CHECKING

import redis

if TYPE_CHECKING:
    from shared.settings import Settings

log = logging.getLogger(__name__)

_SECRET_KEY = "ig:signing-secret"
# How long a starting process waits for Redis to give it the secret before it gives up.
WAIT_FOR_REDIS_SECONDS = 300.0


def signing_secret(
    settings: Settings, client: redis.Redis, *, wait_seconds: float = WAIT_FOR_REDIS_SECONDS
) -> str:
    """``IMAGEGATE_SIGNING_SECRET``, or one random secret made on first start and kept in Redis.

    Read when a process starts. If Redis cannot be reached then (a restart, a
    failover), the process waits for it, retrying with a growing pause, instead
    of failing: a gunicorn worker that fails while booting makes its master shut
    the whole web server down, and one that only waits is restarted by the
    master's timeout or serves once Redis is back.
    """
    if settings.signing_secret:
        return settings.signing_secret
    deadline = time.monotonic() + wait_seconds
    pause = 0.1
    while True:
        try:
            client.set(_SECRET_KEY, secrets.token_urlsafe(32), nx=True)
            return str(client.get(_SECRET_KEY))
        except redis.RedisError as exc:
            if time.monotonic() + pause > deadline:
                raise
            log.warning("waiting for Redis to read the URL-signing secret (%s)", exc)
            time.sleep(pause)
            pause = min(pause * 2, 2.0)
