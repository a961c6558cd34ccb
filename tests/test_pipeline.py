"""The worker pipeline run in-process against real Redis and local storage."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from shared.jobs import Job, JobStatus
from shared.settings import Settings
from tests.support.jobs import make_job
from workers.context import build_context
from workers.pipeline import run_job


@pytest.fixture()
def ctx(redis_server, tmp_path: Path):
    settings = Settings.from_env(
        {"IMAGEGATE_REDIS_URL": redis_server.url, "IMAGEGATE_STORAGE_DIR": str(tmp_path)}
    )
    return build_context(settings)


def _job(ctx, budget: float = 30.0, **request) -> Job:
    body = {"prompt": "pipeline", "size": "300x200", "response_format": "url", **request}
    return make_job(ctx.jobs, budget, **body)


def test_a_job_runs_once_and_a_redelivery_is_a_no_op(ctx) -> None:
    job = _job(ctx, n=2, output_format="jpeg")
    assert run_job(job.id, ctx).status == "succeeded"
    done = ctx.jobs.get(job.id)
    assert done.status == JobStatus.SUCCEEDED and len(done.images) == 2
    first = done.images[0]
    assert (first.width, first.height, first.content_type) == (300, 200, "image/jpeg")
    with Image.open(io.BytesIO(ctx.storage.get(first.key))) as image:
        assert image.format == "JPEG" and image.size == (300, 200)
    # The broker delivers the same task again: nothing runs, nothing changes.
    assert run_job(job.id, ctx).status == "terminal"
    assert ctx.jobs.get(job.id).images == done.images


def test_a_job_past_its_deadline_is_not_run(ctx) -> None:
    job = _job(ctx, budget=0.0)
    assert run_job(job.id, ctx).status == "expired"
    assert ctx.jobs.get(job.id).status == JobStatus.TIMED_OUT


def test_an_unusable_size_fails_the_job_with_a_400_naming_size(ctx) -> None:
    # The API rejects such sizes before enqueueing; a worker that meets one anyway
    # (an old message, a changed catalog) fails the job cleanly instead of crashing.
    bad = _job(ctx, size="99999x99999")
    assert run_job(bad.id, ctx).status == "failed"
    error = ctx.jobs.get(bad.id).error
    assert (error["status"], error["param"]) == (400, "size")
