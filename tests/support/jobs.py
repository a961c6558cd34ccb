"""Making job records directly, for tests below the HTTP layer."""

from __future__ import annotations

import time
from typing import Any

from shared.billing import Accounts
from shared.catalog import Catalog
from shared.jobs import Job, JobStore, new_job_id
from shared.keys import ApiKey


def make_job(store: JobStore, budget: float = 30.0, **request: Any) -> Job:
    """An unbilled local/testcard job with ``budget`` seconds to its deadline."""
    now = time.time()
    return store.create(
        Job(
            id=new_job_id(),
            key_id="key_test",
            model="local/testcard",
            family="local",
            queue="local",
            request={"prompt": "x", "n": 1, **request},
            created=now,
            deadline=now + budget,
        )
    )


def admit_job(
    accounts: Accounts,
    store: JobStore,
    catalog: Catalog,
    key: ApiKey,
    model_id: str,
    *,
    budget: float,
    **request: Any,
) -> Job:
    """A billed job admitted as the API admits it (charged, watched), but never enqueued."""
    model = catalog.model(model_id)
    family = catalog.family_of(model)
    now = time.time()
    job = Job(
        id=new_job_id(),
        key_id=key.id,
        model=model.id,
        family=family.name,
        queue=family.queue,
        request={"prompt": "x", "n": 1, **request},
        created=now,
        deadline=now + budget,
        meta={"mode": "async"},
    )
    accounts.admit(
        key,
        catalog.tier(key.tier),
        model,
        job.request["n"],
        job_key=store.record_key(job.id),
        job_id=job.id,
        spec_json=store.spec_json(job),
        deadline=job.deadline,
        ttl=600,
        now=now,
        watch=store.watch_entry(job),
    )
    return job
