"""One way to open Redis connections, used by the web app, the workers and the CLI.

Two kinds of URL name the Redis that holds the gateway's state (and, by default,
the Celery broker):

* ``redis://[[user]:password@]host:port/db`` or ``rediss://…`` (TLS): one server.
* ``sentinel://[[user]:password@]sentinel-1:26379;sentinel://sentinel-2:26379;…/<master>/<db>``:
  a primary watched by Redis Sentinel. Every ``sentinel://`` part names one
  sentinel (the ``;``-separated list is kombu's own format for its Sentinel
  transport, so the same URL serves as ``IMAGEGATE_BROKER_URL``); the path,
  written once on any part (usually the last), names the master group and the
  database; a password on any part is the *primary's* password (``AUTH`` on
  the data connections). A sentinel that itself needs a password gets it from
  ``?sentinel_password=`` on the same part that carries the path. Clients ask
  the sentinels who the primary is, and ask again whenever a connection to it
  fails or it answers ``READONLY`` (it was demoted), so a failover costs the
  requests in flight at that moment (503 with ``Retry-After``) and nothing else.

Every client fails fast instead of hanging: connecting gives up after
:data:`CONNECT_TIMEOUT` seconds, a reply that does not come within
:data:`SOCKET_TIMEOUT` is an error, TCP keep-alives notice a silent peer on an
idle connection, and a command whose connection failed is retried once after a
short pause (long enough for a restarted Redis, short enough that a request
still gets its 503 within a few seconds); one that timed out is not retried.
Blocking reads that wait on purpose (the pub/sub listener's
``get_message(timeout=…)``) poll with their own timeout and are not affected
by :data:`SOCKET_TIMEOUT`.
"""

from __future__ import annotations

import socket
import urllib.parse
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

CONNECT_TIMEOUT = 2.0
SOCKET_TIMEOUT = 5.0
# A silent peer on an idle connection: first probe after 5 s, then every 2 s, 3 misses.
KEEPALIVE_OPTIONS = {
    opt: value
    for name, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3))
    if (opt := getattr(socket, name, None)) is not None
}


def client_options(*, max_connections: int | None = None) -> dict[str, Any]:
    """The keyword arguments every gateway client gets (also for the Sentinel's primary)."""
    return {
        "decode_responses": True,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_keepalive": True,
        "socket_keepalive_options": KEEPALIVE_OPTIONS,
        "health_check_interval": 15,
        "retry": Retry(
            ExponentialBackoff(cap=0.5, base=0.05),
            retries=1,
            supported_errors=(redis.ConnectionError,),
        ),
        # A refused or reset connection is retried (Redis restarting, a failover); a
        # reply that never came is not: the host is silent and another wait would only
        # double the time before the request's 503.
        "retry_on_error": [redis.ConnectionError],
        "max_connections": max_connections,
    }


@dataclass(frozen=True)
class SentinelURL:
    """What a ``sentinel://`` URL says (see the module docstring)."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None

    DEFAULT_PORT = 26379

    @classmethod
    def parse(cls, url: str) -> SentinelURL:
        sentinels: list[tuple[str, int]] = []
        path = query = ""
        username = password = None
        for part in filter(None, (p.strip() for p in url.split(";"))):
            split = urllib.parse.urlsplit(part)
            if split.scheme != "sentinel" or not split.hostname:
                raise ValueError(f"not a sentinel://host:port part: {part!r}")
            sentinels.append((split.hostname, split.port or cls.DEFAULT_PORT))
            if split.password is not None and password is None:
                username = urllib.parse.unquote(split.username) if split.username else None
                password = urllib.parse.unquote(split.password)
            if split.path.strip("/"):
                if path:
                    raise ValueError("a sentinel URL names its master and database once")
                path, query = split.path.strip("/"), split.query
        if not sentinels:
            raise ValueError("a sentinel URL needs at least one sentinel://host:port")
        master, _, db = path.partition("/")
        if not master:
            raise ValueError(
                "a sentinel URL must name its master group, e.g. "
                "sentinel://s1:26379;sentinel://s2:26379/mymaster/0"
            )
        try:
            number = int(db or 0)
        except ValueError:
            raise ValueError(f"the database in a sentinel URL is a number, not {db!r}") from None
        params = urllib.parse.parse_qs(query)
        return cls(
            sentinels=tuple(sentinels),
            master=master,
            db=number,
            username=username,
            password=password,
            sentinel_password=(params.get("sentinel_password") or [None])[0],
        )

    def sentinel(self, **options: Any) -> Sentinel:
        """A :class:`redis.sentinel.Sentinel` over these sentinels; ``options`` set up the data
        connections."""
        sentinel_kwargs = {
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "socket_timeout": CONNECT_TIMEOUT,
            "socket_keepalive": True,
        }
        if self.sentinel_password is not None:
            sentinel_kwargs["password"] = self.sentinel_password
        return Sentinel(
            list(self.sentinels),
            sentinel_kwargs=sentinel_kwargs,
            db=self.db,
            username=self.username,
            password=self.password,
            **options,
        )


def is_sentinel(url: str) -> bool:
    return url.partition("://")[0].lower() == "sentinel"


def connect(url: str, *, max_connections: int | None = None) -> redis.Redis:
    """A client with short socket timeouts, keep-alives and one reconnect attempt.

    ``decode_responses`` is on: everything the gateway keeps in Redis is text
    (image bytes never go there). A ``sentinel://`` URL gives a client of the
    current primary that follows failovers.
    """
    options = client_options(max_connections=max_connections)
    if is_sentinel(url):
        spec = SentinelURL.parse(url)
        retry, retry_on_error = options.pop("retry"), options.pop("retry_on_error")
        return spec.sentinel().master_for(
            spec.master,
            redis_class=redis.Redis,
            retry=retry,
            retry_on_error=retry_on_error,
            **options,
        )
    return redis.Redis.from_url(url, **options)
