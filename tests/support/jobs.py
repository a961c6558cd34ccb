"""Making job records directly, for tests below the HTTP layer."""

from __future__ import annotations

import time
from typing import Any

from shared.jobs import Job, JobStore, new_job_id


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
