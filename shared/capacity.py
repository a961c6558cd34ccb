"""A cap on concurrent upstream jobs per provider family, spread over its keys.

An upstream limits concurrent tasks per API key (BFL: 24). An operator may
configure several keys for one family (``BFL_API_KEY="k1,k2"``); a job takes a
:class:`Lease` on one key index before calling the upstream and releases it
afterwards, so no key ever has more than ``per_key`` jobs in flight, across
every worker process.

Keys::

    ig:cap:<family>:<i>     zset per key index: member = lease token, score = expires_at
    ig:cap:<family>:rr      the key index where the next tie-break starts

:meth:`Capacity.acquire` is one Lua script: it drops expired leases, picks the
key index with the fewest active leases that is below ``per_key`` and not in
``skip``, and adds the lease. Ties go to the first index in round-robin order
starting after the previously chosen one, so consecutive short jobs (each
finding every key idle) still rotate over the keys and share their rate limits.
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

_SLOT = "ig:cap:{}:{}"
_ROTATION = "ig:cap:{}:rr"


@dataclass(frozen=True)
class Lease:
    family: str
    key_index: int
    token: str
    expires_at: float


# KEYS[1] rotation counter, KEYS[2..n+1] the zsets of key indexes 0..n-1;
# ARGV: now, per_key, expires_at, token, ttl in ms, skipped indexes (comma-separated)
_ACQUIRE = """
local n = #KEYS - 1
local per_key = tonumber(ARGV[2])
local skip = {}
for i in string.gmatch(ARGV[6], '%d+') do skip[tonumber(i)] = true end
local counts = {}
for i = 0, n - 1 do
  redis.call('ZREMRANGEBYSCORE', KEYS[i + 2], '-inf', ARGV[1])
  counts[i] = redis.call('ZCARD', KEYS[i + 2])
end
local start = (tonumber(redis.call('GET', KEYS[1]) or '0') or 0) % n
local best = -1
for j = 0, n - 1 do
  local i = (start + j) % n
  if not skip[i] and (per_key <= 0 or counts[i] < per_key)
     and (best < 0 or counts[i] < counts[best]) then
    best = i
  end
end
if best < 0 then return false end
local slot = KEYS[best + 2]
redis.call('ZADD', slot, ARGV[3], ARGV[4])
if redis.call('PTTL', slot) < tonumber(ARGV[5]) then redis.call('PEXPIRE', slot, ARGV[5]) end
redis.call('SET', KEYS[1], (best + 1) % n)
return best
"""

# KEYS[1] the lease's zset; ARGV: token, now, new expires_at, ttl in ms
_EXTEND = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) <= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', ARGV[3], ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[4]) then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
return 1
"""


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


class Capacity:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._acquire = client.register_script(_ACQUIRE)
        self._extend = client.register_script(_EXTEND)

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
            keys=[_ROTATION.format(family), *(self.slot_key(family, i) for i in range(keys))],
            args=[
                repr(now),
                per_key,
                repr(expires_at),
                token,
                _ms(ttl),
                ",".join(str(i) for i in skip if 0 <= i < keys),
            ],
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
            keys=[self.slot_key(lease.family, lease.key_index)],
            args=[lease.token, repr(now), repr(expires_at), _ms(ttl)],
        )
        return Lease(lease.family, lease.key_index, lease.token, expires_at) if kept else None

    def active(self, family: str, keys: int, *, now: float | None = None) -> list[int]:
        """Unexpired leases per key index."""
        now = time.time() if now is None else now
        with self._redis.pipeline(transaction=False) as pipe:
            for i in range(keys):
                pipe.zcount(self.slot_key(family, i), f"({now!r}", "+inf")
            return [int(c) for c in pipe.execute()]
