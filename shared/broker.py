"""The Redis broker transport of the web side and the workers: kombu's, with two fixes.

**Redis restarts.**
When Redis goes away while a worker holds unacknowledged messages (every
running task: we acknowledge late), the consumer closes its channel, and
kombu's redis ``Channel.close`` disconnects its connection pool *before* the
base class tries to restore the unacknowledged messages. Restoring then builds
a new pool from a connection that is already released and fails with
``AttributeError: 'NoneType' object has no attribute 'hostname'`` — which
Celery treats as unrecoverable: the worker shuts down for good instead of
reconnecting (seen with kombu 5.7 and redis-py 8). Here that case is a
connection error, which Celery handles by reconnecting; the messages stay in
the broker's unacked set (Redis keeps them), and our own reaper takes over
their jobs long before the visibility timeout would restore them.

**A client per call.** kombu builds a new ``redis.Redis`` for every publish,
delivery bookkeeping and acknowledgement (``Channel._create_client``); with
redis-py 8 that construction alone costs about 60 µs, a fifth of a
publish. A client is only a handle on the channel's connection pool and is
safe to share between threads, so each channel keeps one per pool.

Selected with Celery's ``broker_transport`` setting in :mod:`workers.celery_app`
and :mod:`api.queue`.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _sync_client: tuple[Any, redis.Redis] | None = None

    def _create_client(self, asynchronous: bool = False) -> redis.Redis:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        pool = self.pool
        cached = self._sync_client
        if cached is None or cached[0] is not pool:
            cached = (pool, super()._create_client())
            self._sync_client = cached
        return cached[1]

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection is None or self.connection.client is None:
            raise redis.ConnectionError("the broker connection was already closed")
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel


def transport_for(broker_url: str) -> str | None:
    """Celery's ``broker_transport`` for a broker URL: ours for Redis, else Celery's choice."""
    scheme = broker_url.partition("://")[0].lower()
    return f"{__name__}:Transport" if scheme in ("redis", "rediss") else None
