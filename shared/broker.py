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

**Ahead of the line.** kombu's Redis consumer takes a queue's next message with
``BRPOP`` (the list's right end) and publishes with ``LPUSH`` (its left end), so a
queue is first in, first out. :func:`push_front` ``RPUSH``es the same message: it
is taken before everything already queued (the reaper sends a taken-over job this
way, see :mod:`workers.liveness`).

**Publishing without kombu's producer.** Celery's ``send_task`` spends ~0.5 ms
of CPU per task on the web side (message headers, producer pool, connection
``ensure`` wrappers, a second serialization of the body) — a quarter of a
synchronous request's web CPU — to end in one ``LPUSH``. :func:`task_message`
builds the same Celery protocol 2 message that kombu's Redis transport stores
(checked against ``send_task``'s by ``tests/test_broker_publish.py``), so the
web side pushes it with its own Redis client.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from typing import Any

import redis
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis

from shared.redis_client import KEEPALIVE_OPTIONS, SentinelURL


class Channel(kombu_redis.Channel):
    _sync_client: tuple[Any, redis.Redis] | None = None

    # A consumer waits in BRPOP on a socket that only becomes readable when Redis answers:
    # a broker host that went silent (no reset) would hold it forever. TCP keep-alives, as
    # on every client of shared.redis_client, turn that into a connection error in ~11 s,
    # and Celery reconnects (to the new primary, with Sentinel). Transport options win.
    socket_keepalive = True
    socket_keepalive_options = KEEPALIVE_OPTIONS

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


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """kombu's Sentinel channel with the fixes above, reading the gateway's ``sentinel://`` URL.

    kombu wants the master group in a transport option; here it comes from the
    URL itself (``…/<master>/<db>``, see :mod:`shared.redis_client`), so that
    one URL configures the web side, the workers and the broker alike, and no
    process can be started with a Sentinel URL but no master name.
    """

    _master_option: str | None = None

    def _spec(self) -> SentinelURL:
        if self.connection is None or self.connection.client is None:  # not AttributeError:
            raise redis.ConnectionError("the broker connection was already closed")  # see above
        alt = self.connection.client.alt
        return SentinelURL.parse(";".join(u for u in alt if isinstance(u, str)))

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        params = super()._connparams(asynchronous=asynchronous)
        spec = self._spec()  # the primary's credentials may sit on any part of the URL
        params["username"], params["password"] = spec.username, spec.password
        return params

    @property
    def master_name(self) -> str:  # read by kombu's _sentinel_managed_pool
        return self._master_option or self._spec().master

    @master_name.setter
    def master_name(self, value: str) -> None:  # a ``master_name`` transport option still wins
        self._master_option = value

    def _prepare_virtual_host(self, vhost: Any) -> int:
        return self._spec().db

    def _sentinel_managed_pool(self, asynchronous: bool = False) -> Any:
        password = self._spec().sentinel_password
        if password is not None and not getattr(self, "sentinel_kwargs", None):
            self.sentinel_kwargs = {"password": password}
        return super()._sentinel_managed_pool(asynchronous)


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


# When a connection fails, kombu moves on to the next ``;``-separated part of the URL
# and re-resolves the transport from that part's scheme (``Connection.switch``), which
# would swap this transport for kombu's own (no master name, no fixes) in the middle of
# a failover. Sentinel URLs therefore resolve to this transport in every process that
# uses the broker (all of them import this module before connecting).
TRANSPORT_ALIASES["sentinel"] = f"{__name__}:SentinelTransport"


def transport_for(broker_url: str) -> str | None:
    """Celery's ``broker_transport`` for a broker URL: ours for Redis and Sentinel, else Celery's
    choice."""
    scheme = broker_url.partition("://")[0].lower()
    if scheme == "sentinel":
        return f"{__name__}:SentinelTransport"
    return f"{__name__}:Transport" if scheme in ("redis", "rediss") else None


_ORIGIN = f"gen{os.getpid()}@{socket.gethostname()}"
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def task_message(task: str, args: list[Any], queue: str) -> str:
    """A Celery protocol 2 task message as kombu's Redis transport keeps it in the queue's list.

    What ``Celery.send_task(task, args=args, queue=queue)`` would ``LPUSH`` onto
    ``queue`` (priority 0, JSON, no result, no ETA): ``LPUSH queue <this>``
    enqueues the task for any Celery worker consuming ``queue``.
    """
    task_id = str(uuid.uuid4())
    body = json.dumps([args, {}, _EMBED]).encode()
    return json.dumps(
        {
            "body": base64.b64encode(body).decode("ascii"),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py",
                "task": task,
                "id": task_id,
                "shadow": None,
                "eta": None,
                "expires": None,
                "group": None,
                "group_index": None,
                "retries": 0,
                "timelimit": [None, None],
                "root_id": task_id,
                "parent_id": None,
                "argsrepr": repr(args),
                "kwargsrepr": "{}",
                "origin": _ORIGIN,
                "ignore_result": None,
                "replaced_task_nesting": 0,
                "stamped_headers": None,
                "stamps": {},
            },
            "properties": {
                "correlation_id": task_id,
                "reply_to": str(uuid.uuid4()),
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )


def push_front(client: redis.Redis, task: str, args: list[Any], queue: str) -> None:
    """Enqueue a task ahead of every message already on ``queue`` (``RPUSH`` of
    :func:`task_message`: the end kombu's consumers take the next message from)."""
    client.rpush(queue, task_message(task, args, queue))
