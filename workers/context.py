"""Per-process worker state: settings, catalog, Redis, job store, storage, HTTP sessions."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from functools import cache

import redis
import requests
from requests.adapters import HTTPAdapter

from shared.capacity import Capacity
from shared.catalog import Catalog
from shared.health import Breakers, policy_from
from shared.jobs import JobStore, liveness_from
from shared.netguard import policy_for, safe_session
from shared.redis_client import connect
from shared.settings import Settings
from shared.signing import storage_for
from shared.storage import ImageStorage
from workers import pool


@dataclass(frozen=True)
class WorkerContext:
    settings: Settings
    catalog: Catalog
    redis: redis.Redis
    jobs: JobStore
    storage: ImageStorage
    breakers: Breakers
    capacity: Capacity

    def session(self) -> requests.Session:
        """One pooled HTTP session per worker thread (requests sessions are not thread-safe)."""
        session = getattr(_local, "session", None)
        if session is None:
            session = requests.Session()
            adapter = HTTPAdapter(pool_connections=8, pool_maxsize=16, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.headers["User-Agent"] = "imagegate/0.1"
            # With trust_env, requests looks up proxies, ~/.netrc and the CA bundle
            # variables on every call (about 5% of a worker's CPU). Read them once:
            # per call only when a proxy is set (no_proxy is per host).
            session.trust_env = _PROXIES
            if _CA_BUNDLE:
                session.verify = _CA_BUNDLE
            _local.session = session
        return session

    def client_session(self) -> requests.Session:
        """One SSRF-guarded session per worker thread, for URLs a client gave us."""
        session = getattr(_local, "client_session", None)
        if session is None:
            session = safe_session(policy_for(self.settings))
            _local.client_session = session
        return session


_local = threading.local()
_PROXIES = bool(requests.utils.getproxies())
_CA_BUNDLE = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")


def build_context(settings: Settings) -> WorkerContext:
    # A worker runs up to --concurrency tasks at once, each making Redis calls;
    # redis-py caps a pool at 100 connections and raises past it (jobs then
    # failed with 500 in the 1,000-held benchmark). Same ceiling as the web side.
    client = connect(settings.redis_url, max_connections=max(2000, pool.planned() + 256))
    return WorkerContext(
        settings=settings,
        catalog=settings.load_catalog(),
        redis=client,
        jobs=JobStore(
            client,
            retention_seconds=settings.job_retention_seconds,
            liveness=liveness_from(settings),
        ),
        storage=storage_for(settings, client),
        breakers=Breakers(client, policy_from(settings)),
        capacity=Capacity(client),
    )


@cache
def get_context() -> WorkerContext:
    return build_context(Settings.from_env())
