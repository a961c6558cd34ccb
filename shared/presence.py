"""Which provider families live workers serve, so the web needs no upstream key.

Only workers call upstreams, so only workers need the upstream keys
(``OPENAI_API_KEY``, ``BFL_API_KEY``, ...). The web must still know whether a
family can be served right now, to refuse its requests at once (503
``upstream_not_configured``) rather than queue jobs nobody will run. It learns
that from the workers:

* **Workers announce.** Every worker process, from its heartbeat thread
  (:class:`workers.liveness.HeartbeatAndReaper`), announces the families it
  serves — those whose queue it consumes and that its own settings can serve
  (``Settings.why_unusable(family) == ""``: the family is on and the worker has
  its key) — every ``heartbeat_seconds``. An announcement holds ``ttl`` seconds
  (the workers use ``job_stale_seconds``: a worker silent that long is taken
  for dead by the reaper too), so a worker that dies stops counting by then; one
  that stops cleanly withdraws at once.
* **The web asks, rarely.** :meth:`Presence.served` reads, in one script, how
  many live announcements each family has, and keeps the answer
  ``cache_seconds`` (1.5 s) per process: a request costs nothing, and a worker
  that starts or stops is noticed within ``cache_seconds`` (plus ``ttl`` for a
  worker that died without withdrawing).
* **The rule** (:func:`why_unusable`): a family is served if the web's own
  settings can serve it (its key is set, as before) **or** a live worker
  announces it. A family switched off in the catalog stays off whatever
  workers say.

Times are Redis' clock (``TIME`` inside the scripts), the one clock of every
host, so no host's clock decides whether an announcement is live.

Keys::

    ig:presence:<family>   zset: member = worker process (node name:pid),
                           score = when its announcement runs out (Redis' clock);
                           expires once no announcement is left

Scripts: ``shared/lua/presence_announce.lua``, ``shared/lua/presence_live.lua``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Collection
from functools import cache

import redis

from shared import lua
from shared.catalog import Family
from shared.settings import Settings

_KEY = "ig:presence:{}"
CACHE_SECONDS = 1.5
"""How long a web process keeps its view of which families live workers serve."""


def presence_key(family: str) -> str:
    """The zset of a family's live announcements."""
    return _KEY.format(family)


class Presence:
    """Announcements of the families each worker serves, and the web's cached view of them."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        cache_seconds: float = CACHE_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = client
        self._announce = lua.register(client, "presence_announce")
        self._live = lua.register(client, "presence_live")
        self._cache_seconds = cache_seconds
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._cached: dict[frozenset[str], tuple[float, frozenset[str]]] = {}

    # -- workers ----------------------------------------------------------------------------

    def announce(self, worker: str, families: Collection[str], ttl: float) -> None:
        """``worker`` serves ``families`` for the next ``ttl`` seconds (renew before then)."""
        if families:
            keys = [presence_key(f) for f in sorted(families)]
            self._announce(keys, worker=worker, ttl_ms=max(1, math.ceil(ttl * 1000)))

    def withdraw(self, worker: str, families: Collection[str]) -> None:
        """``worker`` stops serving ``families`` now (a clean shutdown)."""
        pipe = self._redis.pipeline(transaction=False)
        for family in families:
            pipe.zrem(presence_key(family), worker)
        pipe.execute()

    # -- the web ----------------------------------------------------------------------------

    def live(self, families: Collection[str], *, now: float | None = None) -> dict[str, int]:
        """How many workers announce each family right now (read from Redis, not cached);
        ``now``: a test's unix time instead of Redis' clock."""
        names = sorted(families)
        if not names:
            return {}
        counts = self._live([presence_key(f) for f in names], now="" if now is None else repr(now))
        return {name: int(count) for name, count in zip(names, counts, strict=True)}

    def workers(self, family: str) -> list[str]:
        """The worker processes whose announcement for ``family`` is live now (Redis' clock)."""
        seconds, micros = self._redis.time()
        now = seconds + micros / 1_000_000
        return sorted(self._redis.zrangebyscore(presence_key(family), f"({now!r}", "+inf"))

    def served(self, families: Collection[str]) -> frozenset[str]:
        """The ones of ``families`` that at least one live worker announces, as read at
        most ``cache_seconds`` ago by this process."""
        asked = frozenset(families)
        now = self._monotonic()
        with self._lock:
            hit = self._cached.get(asked)
        if hit is not None and now < hit[0]:
            return hit[1]
        answer = frozenset(f for f, n in self.live(asked).items() if n > 0)
        with self._lock:
            self._cached[asked] = (now + self._cache_seconds, answer)
        return answer


@cache
def presence_for(client: redis.Redis) -> Presence:
    """The one :class:`Presence` (and cache) of a process for ``client``."""
    return Presence(client)


def why_unusable(settings: Settings, family: Family, client: redis.Redis) -> str:
    """Why the web cannot take jobs for ``family`` now, or "" when it can.

    ``settings.why_unusable(family)``, except that a missing upstream key does not
    count while a live worker announces the family (it has the key). Redis is asked
    only when the web's own settings lack the key, at most once per ``CACHE_SECONDS``.
    """
    reason = settings.why_unusable(family)
    if not reason or not family.available:
        return reason
    if family.name in presence_for(client).served([family.name]):
        return ""
    return f"no running worker serves '{family.name}' and {reason}"


def served_here(
    settings: Settings, families: Collection[Family], queues: Collection[str]
) -> list[str]:
    """The families a worker consuming ``queues`` serves: their queue is consumed here and
    this process's settings can serve them (on, and with their key)."""
    return sorted(f.name for f in families if f.queue in queues and not settings.why_unusable(f))
