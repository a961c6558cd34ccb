"""Per-process worker state: settings, catalog, Redis, job store, storage, HTTP sessions.

**HTTP sessions are lent per job** (:func:`job_sessions`), not kept per thread.
A requests ``Session`` is used by one job at a time, and it keeps its
keep-alive connections (and TLS sessions) for the next job that borrows it.
Per thread would not do: Celery's gevent pool runs every task in a new
greenlet, and greenlet-local sessions meant a new TCP (and TLS) connection
and a DNS lookup for every upstream call. The free list grows to the most
jobs ever run at once and stays there (a few kB per session plus its idle
connections). Outside a job (tests calling the pipeline directly) a
thread-local set is used.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache

import redis
import requests
from requests.adapters import HTTPAdapter

from shared.capacity import Capacity
from shared.catalog import Catalog
from shared.health import Breakers, policy_from
from shared.jobs import JobStore, liveness_from
from shared.netguard import NetPolicy, policy_for, safe_session
from shared.redis_client import connect
from shared.retention import ImageRetention
from shared.settings import Settings
from shared.storage import ImageStorage, storage_for
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
    retention: ImageRetention

    def session(self) -> requests.Session:
        """The upstream session of the current job (requests sessions are not thread-safe)."""
        sessions = _sessions()
        if sessions.upstream is None:
            sessions.upstream = _upstream_session()
        return sessions.upstream

    def client_session(self) -> requests.Session:
        """The current job's SSRF-guarded session, for URLs a client gave us."""
        sessions = _sessions()
        if sessions.client is None:
            sessions.client = safe_session(policy_for(self.settings))
        return sessions.client


@dataclass
class _Sessions:
    """The HTTP sessions one job uses; lent to one job at a time."""

    upstream: requests.Session | None = None
    client: requests.Session | None = None
    results: dict[NetPolicy, requests.Session] = field(default_factory=dict)


_free: list[_Sessions] = []
_free_lock = threading.Lock()
_current: contextvars.ContextVar[_Sessions | None] = contextvars.ContextVar(
    "imagegate_job_sessions", default=None
)


@contextlib.contextmanager
def job_sessions() -> Iterator[_Sessions]:
    """Lend the current job a set of sessions, returned for reuse when it ends."""
    with _free_lock:
        lent = _free.pop() if _free else _Sessions()
    token = _current.set(lent)
    try:
        yield lent
    finally:
        _current.reset(token)
        with _free_lock:
            _free.append(lent)


def _sessions() -> _Sessions:
    lent = _current.get()
    if lent is not None:
        return lent
    own = getattr(_local, "sessions", None)
    if own is None:
        own = _local.sessions = _Sessions()
    return own


def result_session(policy: NetPolicy) -> requests.Session:
    """The current job's SSRF-guarded session for upstream result URLs under ``policy``."""
    sessions = _sessions().results
    session = sessions.get(policy)
    if session is None:
        session = sessions[policy] = safe_session(policy)
    return session


def _upstream_session() -> requests.Session:
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=8, pool_maxsize=16, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = "imagegate/0.1"
    # With trust_env, requests looks up proxies, ~/.netrc and the CA bundle
    # variables on every call (a measurable share of a worker's CPU). Read them once:
    # per call only when a proxy is set (no_proxy is per host).
    session.trust_env = _PROXIES
    if _CA_BUNDLE:
        session.verify = _CA_BUNDLE
    return session


_local = threading.local()
_PROXIES = bool(requests.utils.getproxies())
_CA_BUNDLE = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")


def build_context(settings: Settings) -> WorkerContext:
    # A worker runs up to --concurrency tasks at once, each making Redis calls;
    # redis-py caps a pool at 100 connections and raises past it (jobs then
    # failed with 500 under many held requests). Same ceiling as the web side.
    client = connect(settings.redis_url, max_connections=max(2000, pool.planned() + 256))
    storage = storage_for(settings, client)
    return WorkerContext(
        settings=settings,
        catalog=settings.load_catalog(),
        redis=client,
        jobs=JobStore(
            client,
            retention_seconds=settings.job_retention_seconds,
            liveness=liveness_from(settings),
        ),
        storage=storage,
        breakers=Breakers(client, policy_from(settings)),
        capacity=Capacity(client),
        retention=ImageRetention(client, storage, settings.image_retention),
    )


@cache
def get_context() -> WorkerContext:
    return build_context(Settings.from_env())
