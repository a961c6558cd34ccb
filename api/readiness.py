"""``GET /readyz``: may a load balancer send this process requests?

Ready when all of these hold, else 503 with each missing piece named:

* Redis answers (``PING``);
* storage takes a write: a small object is put and deleted again
  (``readyz/<host>-<pid>``), so a full disk, a read-only mount or a bucket
  without write permission shows here rather than as failed jobs; and it says it
  has room (:func:`shared.storage.storage_health`: local storage with less than
  ``IMAGEGATE_STORAGE_MIN_FREE_BYTES`` free is not ready before jobs fail with
  503 ``storage_full``);
* every family that must be served has a live worker (by heartbeat,
  :mod:`shared.presence`): those named in ``IMAGEGATE_READY_FAMILIES``, or by
  default the families this process holds an upstream key for (a web without
  keys — the recommended setup — names them in that setting).

``/healthz`` stays a cheap liveness check (the process answers and reaches
Redis): a Kubernetes liveness probe must not restart web processes because a
worker host is down.
"""

from __future__ import annotations

import os
import re
import socket

import redis

from api.services import Services
from shared.presence import presence_for
from shared.storage import storage_health

_PROBE = b"readyz"


def families_to_serve(svc: Services) -> list[str]:
    settings, catalog = svc.settings, svc.catalog
    if settings.ready_families:
        return sorted(settings.ready_families)
    return sorted(
        f.name
        for f in catalog.families.values()
        if f.available and f.key_env and not settings.why_unusable(f)
    )


def readiness(svc: Services) -> list[str]:
    """What is missing for this process to be ready ([] when ready)."""
    try:
        svc.redis.ping()
    except redis.RedisError as exc:
        return [f"redis: {type(exc).__name__}"]
    missing = []
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:64]
    key = f"readyz/{host}-{os.getpid()}"
    try:
        svc.storage.put(key, _PROBE, "application/octet-stream")
        svc.storage.delete(key)
    except Exception as exc:  # noqa: BLE001 - any failure to write is "not writable"
        missing.append(f"storage: not writable ({type(exc).__name__})")
    else:
        health = storage_health(svc.storage)
        if not health.ok:
            missing.append(f"storage: {health.reason}")
    families = families_to_serve(svc)
    try:
        live = presence_for(svc.redis).live(families)
    except redis.RedisError as exc:
        return [*missing, f"redis: {type(exc).__name__}"]
    missing += [f"workers: no live worker for '{f}'" for f in families if not live.get(f)]
    return missing
