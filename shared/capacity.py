"""A cap on concurrent upstream jobs per provider family, spread over its keys.

An upstream limits concurrent tasks per API key (BFL: 24). An operator may
configure several keys for one family (``BFL_API_KEY="k1,k2"``); a job takes a
:class:`Lease` on one key index before calling the upstream and releases it
afterwards, so no key ever has more than ``per_key`` jobs in flight, across
every worker process.

Keys::

    ig:cap:<family>:<i>     zset per key index: member = lease token, score = expires_at
    ig:cap:<family>:rr      the key index where the next tie-break starts

:meth:`Capacity.acquire` is one Lua script (``shared/lua/capacity_acquire.lua``):
it drops expired leases, picks the key index with the fewest active leases
that is below ``per_key`` and not in ``skip``, and adds the lease. Ties go to
the first index in round-robin order starting after the previously chosen one,
so consecutive short jobs (each finding every key idle) still rotate over the
keys and share their rate limits.
``per_key <= 0`` means no cap: the lease only picks a key.

A lease expires ``ttl`` seconds after it was taken or last extended, so a
worker that dies holding one gives the slot back; long jobs call
:meth:`Capacity.extend` as a heartbeat. Times are the callers' ``now``
(default ``time.time()``); each zset also gets a real-time expiry as long as
its longest lease, so an idle family leaves nothing behind.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Collection
from dataclasses import dataclass

import redis

from shared import lua

_SLOT = "ig:cap:{}:{}"
_ROTATION = "ig:cap:{}:rr"


@dataclass(frozen=True)
class Lease:
    family: str
    key_index: int
    token: str
    expires_at: float


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


class Capacity:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._acquire = lua.register(client, "capacity_acquire")
        self._extend = lua.register(client, "capacity_extend")

    @staticmethod
    def slot_key(family: str, key_index: int) -> str:
        return _SLOT.format(family, key_index)

    def acquire(
        self,
        family: str,
        keys: int,
        per_key: int,
        *,
        ttl: float,
        now: float | None = None,
        skip: Collection[int] = (),
    ) -> Lease | None:
        """A lease on the least busy key index with room, or None when every key is full."""
        if keys < 1:
            raise ValueError("a family needs at least one key")
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        now = time.time() if now is None else now
        expires_at = now + ttl
        token = secrets.token_hex(12)
        index = self._acquire(
            [_ROTATION.format(family), *(self.slot_key(family, i) for i in range(keys))],
            now=repr(now),
            per_key=per_key,
            expires_at=repr(expires_at),
            token=token,
            ttl_ms=_ms(ttl),
            skip=sorted({i for i in skip if 0 <= i < keys}),
        )
        if index is None:
            return None
        return Lease(family, int(index), token, expires_at)

    def acquire_blocking(
        self,
        family: str,
        keys: int,
        per_key: int,
        *,
        ttl: float,
        deadline: float,
        poll: float = 0.1,
        skip: Collection[int] = (),
    ) -> Lease | None:
        """:meth:`acquire`, retried every ``poll`` seconds until the unix time ``deadline``."""
        while True:
            lease = self.acquire(family, keys, per_key, ttl=ttl, skip=skip)
            if lease is not None:
                return lease
            left = deadline - time.time()
            if left <= 0:
                return None
            time.sleep(min(poll, left))

    def release(self, lease: Lease) -> None:
        self._redis.zrem(self.slot_key(lease.family, lease.key_index), lease.token)

    def extend(self, lease: Lease, ttl: float, *, now: float | None = None) -> Lease | None:
        """Heartbeat: the lease now expires ``ttl`` seconds from ``now``. Returns the renewed
        lease, or None if it had already expired (its slot may be someone else's now)."""
        now = time.time() if now is None else now
        expires_at = now + ttl
        kept = self._extend(
            [self.slot_key(lease.family, lease.key_index)],
            token=lease.token,
            now=repr(now),
            expires_at=repr(expires_at),
            ttl_ms=_ms(ttl),
        )
        return Lease(lease.family, lease.key_index, lease.token, expires_at) if kept else None

    def active(self, family: str, keys: int, *, now: float | None = None) -> list[int]:
        """Unexpired leases per key index."""
        now = time.time() if now is None else now
        with self._redis.pipeline(transaction=False) as pipe:
            for i in range(keys):
                pipe.zcount(self.slot_key(family, i), f"({now!r}", "+inf")
            return [int(c) for c in pipe.execute()]
