"""One way to open Redis connections, used by the web app, the workers and the CLI."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry


def connect(url: str, *, max_connections: int | None = None) -> redis.Redis:
    """A client with short socket timeouts and a few reconnect attempts.

    ``decode_responses`` is on: everything the gateway keeps in Redis is text
    (image bytes never go there).
    """
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=5,
        socket_timeout=10,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        max_connections=max_connections,
    )
