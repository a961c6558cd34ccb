"""The worker pipeline run in-process against real Redis and local storage."""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from shared.catalog import load_catalog
from shared.errors import NotFound
from shared.jobs import Job, JobStatus
from shared.route import route_meta, route_of
from shared.settings import Settings
from shared.uploads import ReferenceImage, data_url, upload_key
from tests.support.jobs import make_job
from tests.support.processes import REPO
from workers.context import build_context
from workers.pipeline import _release_upload, _run_claimed, run_job


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


# -- a run that was taken over never touches what the winner delivered ----------------


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_taken_over_run_finishing_late_leaves_the_delivered_images_unchanged(
    ctx, tmp_path: Path
) -> None:
    """Attempt 1 goes silent, attempt 2 takes over and delivers; attempt 1 then finishes
    with other bytes. The delivered objects keep their bytes, the record names attempt
    2's objects, and attempt 1's own objects are deleted."""
    job = _job(ctx, n=2)
    stale = ctx.jobs.claim(job.id)
    later = time.time() + ctx.jobs.liveness.stale_after + 1  # its heartbeat is overdue
    winner = ctx.jobs.claim(job.id, now=later)
    assert (stale.attempt, winner.attempt) == (1, 2)
    assert _run_claimed(winner.job, winner.attempt, ctx, None).status == "succeeded"
    delivered = ctx.jobs.get(job.id).images
    assert all(f"/{job.id}/2/" in image.key for image in delivered)
    files = _files(tmp_path)
    assert set(files) == {image.key for image in delivered}

    # The stale run draws other bytes (another prompt) and only then finds its fence lost.
    other = dataclasses.replace(stale.job, request={**stale.job.request, "prompt": "stale"})
    assert _run_claimed(other, stale.attempt, ctx, None).status == "superseded"
    assert ctx.jobs.get(job.id).images == delivered
    assert _files(tmp_path) == files


def test_an_image_that_fails_its_check_leaves_none_of_the_jobs_objects(
    ctx, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """n=2, the second image is refused: the first, already stored, is deleted."""
    import workers.pipeline as pipeline
    from shared.errors import UpstreamError

    real = pipeline.check_image
    calls = []

    def second_fails(data: bytes, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise UpstreamError("not an image", code="upstream_invalid_image")
        return real(data, **kw)

    monkeypatch.setattr(pipeline, "check_image", second_fails)
    job = _job(ctx, n=2)
    assert run_job(job.id, ctx).status == "failed"
    assert len(calls) == 2
    assert _files(tmp_path) == {}


# -- inline reference images: read back from storage, deleted once the job has ended ----------


def _job_with_upload(ctx, data: bytes | None) -> tuple[Job, str]:
    """A testcard job whose spec names a stored reference image (``None``: never stored)."""
    job = make_job(ctx.jobs, 30.0, prompt="with a reference", size="64x64")
    key = upload_key(job.id, job.created, "png")
    if data is not None:
        ctx.storage.put(key, data, "image/png")
    meta = {"reference_image": ReferenceImage(key, "image/png").to_meta()}
    ctx.redis.delete(ctx.jobs.record_key(job.id))
    return ctx.jobs.create(dataclasses.replace(job, meta=meta)), key


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()


def test_a_jobs_upload_is_read_for_its_run_and_deleted_once_it_succeeded(
    ctx, monkeypatch: pytest.MonkeyPatch
) -> None:
    import workers.adapters.local as local

    seen: list[str | None] = []
    real = local.TestcardAdapter.generate

    def spy(self, request, call):
        seen.append(request.image)
        return real(self, request, call)

    monkeypatch.setattr(local.TestcardAdapter, "generate", spy)
    raw = _png_bytes()
    job, key = _job_with_upload(ctx, raw)
    assert run_job(job.id, ctx).status == "succeeded"
    assert seen == [data_url(raw, "image/png")]
    with pytest.raises(NotFound):
        ctx.storage.get(key)


def test_an_upload_is_kept_while_a_newer_attempt_still_runs(ctx) -> None:
    job, key = _job_with_upload(ctx, _png_bytes())
    assert ctx.jobs.claim(job.id).should_run
    _release_upload(job.id, ctx, job)  # a lost run ending: the job itself is still running
    assert ctx.storage.get(key)
    assert ctx.jobs.cancel(job.id)
    _release_upload(job.id, ctx)  # a redelivered task finds the job ended
    with pytest.raises(NotFound):
        ctx.storage.get(key)


def test_a_lost_upload_fails_the_job_refunded_with_a_500(ctx) -> None:
    job, _ = _job_with_upload(ctx, None)
    assert run_job(job.id, ctx).status == "failed"
    error = ctx.jobs.get(job.id).error
    assert (error["status"], error["code"]) == (500, "reference_image_lost")


# -- the route contract (shared/route.py) ---------------------------------------------


def test_a_route_written_by_the_api_reads_back_as_its_request() -> None:
    catalog = load_catalog()
    base = {"prompt": "p", "n": 2, "size": "1024x1024", "quality": "hd"}
    route = {"prompt": "p", "n": 2, "size": "1024x1024", "style": "vivid"}  # quality unset
    meta = route_meta("dall-e-3", route, base, {"mapped": [], "ignored": []})
    assert meta["changes"] == {"style": "vivid"} and meta["unset"] == ["quality"]
    job = Job(
        id="imgjob_route",
        key_id="k",
        model="image",
        family="openai",
        queue="openai",
        request=base,
        created=0.0,
        deadline=1.0,
        meta={"routes": [{"model": "gpt-image-1", "changes": {}, "unset": []}, meta]},
        candidate=1,
    )
    model, request = route_of(job, catalog)
    assert (model.id, request) == ("dall-e-3", route)


def test_the_liveness_threads_do_not_import_the_pipeline() -> None:
    """No import circle: the reaper reads routes from shared.route, not from the pipeline."""
    code = "import sys, workers.liveness; print('workers.pipeline' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
