"""The Redis broker transport the workers use: kombu's, with one fix for Redis restarts.

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

Selected with Celery's ``broker_transport`` setting in :mod:`workers.celery_app`.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection is None or self.connection.client is None:
            raise redis.ConnectionError("the broker connection was already closed")
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel
