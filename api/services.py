"""The long-lived objects a web process uses, built once by the app factory."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import redis
from flask import current_app

from api.parse_limit import ParseLimit
from api.queue import TaskQueue
from api.waiter import CompletionHub
from shared.billing import Accounts
from shared.catalog import Catalog
from shared.db import ensure_schema
from shared.health import Breakers, policy_from
from shared.history import History
from shared.jobs import JobStore, liveness_from
from shared.keys import KeyStore
from shared.metrics import ClusterCollector
from shared.redis_client import connect
from shared.retention import ImageRetention
from shared.settings import Settings
from shared.storage import ImageStorage, storage_for

EXTENSION = "imagegate"


@dataclass(frozen=True)
class Services:
    settings: Settings
    catalog: Catalog
    redis: redis.Redis
    keys: KeyStore
    jobs: JobStore
    accounts: Accounts
    history: History  # usage and ledger: SQL merged with what Redis still holds
    breakers: Breakers
    storage: ImageStorage
    hub: CompletionHub
    queue: TaskQueue
    parse_limit: ParseLimit
    retention: ImageRetention
    cluster_collector: ClusterCollector

    @classmethod
    def build(cls, settings: Settings, client: redis.Redis | None = None) -> Services:
        """Every service of a web process, on ``client`` (default: a pool to
        ``settings.redis_url``; in-process tests pass a ``fakeredis`` client)."""
        client = client or connect(settings.redis_url, max_connections=2000)
        jobs = JobStore(
            client,
            retention_seconds=settings.job_retention_seconds,
            liveness=liveness_from(settings),
        )
        catalog = settings.load_catalog()
        storage = storage_for(settings, client)
        queue = TaskQueue(settings, client)
        return cls(
            settings=settings,
            catalog=catalog,
            redis=client,
            keys=KeyStore(client),
            jobs=jobs,
            accounts=Accounts(
                client, catalog, return_failed_images=settings.limits_return_failed_images
            ),
            history=History(
                client, partial(ensure_schema, settings.database_url, settings.database_migrate)
            ),
            breakers=Breakers(client, policy_from(settings)),
            storage=storage,
            hub=CompletionHub(client, jobs),
            queue=queue,
            parse_limit=ParseLimit.for_settings(client, settings),
            retention=ImageRetention(client, storage, settings.image_retention),
            cluster_collector=ClusterCollector(client, catalog, queue.broker_redis),
        )


def services() -> Services:
    return current_app.extensions[EXTENSION]
