"""A per-key budget of request-body bytes parsed, so parse work counts against a limit.

Cheap rejections come first and cost nothing here: a body above
``max_body_bytes`` (413, never read), a cut chunked body (413), one with more
JSON punctuation than any request needs (400 ``json_too_complex``). What is
left is parsed -- and parsing is the one cost of a request that is paid
before any tier limit, by keys and requests that may be refused right after.
So every body about to be parsed is charged, by its length, to a token bucket
of its API key (except a body of at most :data:`FREE_BYTES`, cheaper to parse
than to charge); a key that has used its budget gets 429
(``error.limit: "request_body_bytes"``) with ``Retry-After``, before its body
is parsed, while every other key goes on as before.

The bucket holds ``burst`` bytes and refills at ``rate`` bytes a second
(``IMAGEGATE_PARSE_BYTES_PER_SECOND``: ``Settings.parse_bytes_per_second``, 64 MiB);
``burst`` is :data:`BURST_BODIES` bodies of ``max_body_bytes`` (or one second of
``rate`` if more), so a single body the gateway accepts always fits a full
bucket and a client's short burst of large bodies passes. The limit is a
backstop for what the cheap checks let through: a body of strings parses in
well under a millisecond per MB (see :mod:`api.validation`), so the default
holds one key to a few per cent of a web process's CPU, and no honest client
meets it. A refused body takes nothing from the bucket. Time is Redis' clock
(``TIME`` inside the script), the one clock of every host.

Keys::

    ig:parse:<key id>   hash {tokens, ts}: bytes left at time ts; expires once full again
"""

from __future__ import annotations

import math

import redis

from shared import lua
from shared.errors import RateLimited
from shared.settings import Settings

BURST_BODIES = 8
"""The bucket holds this many bodies of ``max_body_bytes`` (or one second of ``rate``)."""
FREE_BYTES = 16 * 1024
"""Bodies up to this size are not charged: parsing one costs a few microseconds, the
charge a Redis round trip (~100 µs of the web process's CPU), about 5% of a typical
request's web CPU. What a client can make the gateway parse this way is bounded by the
tier limits that follow, as for any request."""

_BUCKET = "ig:parse:{}"


class ParseLimit:
    """The body-bytes bucket of every key, on one Redis client (see the module docstring)."""

    def __init__(
        self, client: redis.Redis, *, rate: float, burst: int, free_bytes: int = 0
    ) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("a parse limit needs a positive rate and burst")
        self.rate = rate
        self.burst = burst
        self.free_bytes = free_bytes
        self._charge = lua.register(client, "parse_charge")

    @classmethod
    def for_settings(cls, client: redis.Redis, settings: Settings) -> ParseLimit:
        """``rate`` from ``parse_bytes_per_second``, ``burst`` from ``max_body_bytes``."""
        rate = float(settings.parse_bytes_per_second)
        burst = max(int(rate), BURST_BODIES * settings.max_body_bytes)
        return cls(client, rate=rate, burst=burst, free_bytes=FREE_BYTES)

    def charge(self, subject: str, nbytes: int) -> None:
        """Take ``nbytes`` from ``subject``'s bucket, or raise 429 with ``Retry-After``
        (whole seconds, at least 1) when the bucket does not hold them yet."""
        cost = min(max(nbytes, 0), self.burst)
        if cost <= self.free_bytes:
            return
        ok, wait = self._charge(
            [_BUCKET.format(subject)], cost=cost, rate=self.rate, burst=self.burst
        )
        if int(ok):
            return
        retry = max(1, math.ceil(float(wait)))
        raise RateLimited(
            f"This key sent more request bodies than the gateway parses for one key "
            f"({self.rate / 1048576:g} MiB a second on average); retry in {retry} s.",
            headers={"Retry-After": str(retry)},
            extra={"limit": "request_body_bytes"},
        )
