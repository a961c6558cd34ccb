"""What one generation task does, from job id to a finished job record.

    claim (fenced attempt) -> pick the route (virtual models) -> clamp size by the
    model's rule -> read an inline reference image back from storage (by the key
    the job spec names) -> take an upstream slot and key (capacity, key breakers)
    -> adapter.generate -> download URL results at once -> check every image
    with Pillow -> store -> record success (only if our attempt still holds the fence)

Every upstream outcome feeds the circuit breakers of the model and of the key.
For a virtual model, a failure another candidate could fix (an UpstreamError:
5xx, 429, timeout, rejected key) hands the job to the next route — possibly a
queue of another family — while enough of the deadline is left; the job stays
billed once, at the virtual model's price.

Failures end the job with the error the client will see; a passed deadline
ends it ``timed_out``. Running it twice for the same job is harmless: a
terminal job is skipped, and a re-run after a worker died takes a new attempt
number, so the older run can no longer write. Once the job has ended, its
stored reference image is deleted (:mod:`shared.uploads`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from shared import jobevents, logs, metrics, tracing
from shared.capacity import Lease
from shared.catalog import Family, Model
from shared.errors import (
    DeadlineExceeded,
    GatewayError,
    InvalidRequest,
    NotFound,
    ServerError,
    UpstreamError,
)
from shared.jobs import TERMINAL, Job, StoredImage, timeout_error
from shared.netguard import policy_for, policy_with_hosts_of
from shared.progress import PartialSink
from shared.retention import results_folder
from shared.route import key_breaker, model_breaker, route_of
from shared.sizing import Size, parse_size
from shared.uploads import Reference, ReferenceImage, data_url, job_uploads
from workers.adapters import adapter_for
from workers.adapters.base import CallContext, ImageRequest, ImageResult
from workers.context import WorkerContext, result_session
from workers.http import UpstreamHTTP, default_error_parser, redact
from workers.images import check_image
from workers.liveness import RUNNING

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    job_id: str
    status: str
    attempt: int = 0


Handoff = Callable[[str, str], None]  # (job id, queue) -> send the task there


def run_job(
    job_id: str,
    ctx: WorkerContext,
    *,
    worker: str = "",
    handoff: Handoff | None = None,
    key_id: str = "",
) -> Outcome:
    """Run one job; ``key_id`` (the job's API key id, when the task message carries it)
    saves reading it before the claim."""
    claim_started = time.time()
    claim = ctx.jobs.claim(job_id, worker=worker, key_id=key_id)
    if not claim.should_run:
        log.info("job %s not run: %s", job_id, claim.outcome)
        if claim.outcome in ("terminal", "expired"):  # e.g. canceled or overdue while queued
            _release_upload(job_id, ctx)
        return Outcome(job_id, claim.outcome)
    if claim.job is None:  # expired between claim and read
        return Outcome(job_id, "missing")
    job = claim.job
    parent = tracing.context_from(job.meta.get("trace"))
    if parent is not None:  # the request's trace: time in the queue, then the claim
        if claim.waited is not None:
            tracing.past_span("queue", job.created, claim_started, parent=parent)
        tracing.past_span("claim", claim_started, time.time(), parent=parent, attempt=claim.attempt)
    with (
        logs.log_context(
            job_id=job_id,
            key_id=job.key_id,
            model=job.model,
            family=job.family,
            attempt=claim.attempt,
        ),
        tracing.span(
            "job attempt",
            parent=parent,
            **{
                "imagegate.job_id": job_id,
                "imagegate.model": job.model,
                "imagegate.family": job.family,
                "imagegate.attempt": claim.attempt,
            },
        ),
    ):
        return _run_attempt(job, claim.attempt, claim.waited, ctx, handoff)


def _run_attempt(
    job: Job, attempt: int, waited: float | None, ctx: WorkerContext, handoff: Handoff | None
) -> Outcome:
    job_id = job.id
    if waited is not None:
        metrics.JOB_QUEUE_SECONDS.labels(job.family).observe(max(0.0, waited))
    running = metrics.JOBS_RUNNING.labels(job.family)
    running.inc()
    started = time.perf_counter()
    try:
        with RUNNING.track(job_id, attempt):  # the heartbeat thread keeps it fresh
            outcome = _run_claimed(job, attempt, ctx, handoff)
    finally:
        running.dec()
    metrics.JOB_RUN_SECONDS.labels(job.model, job.family, outcome.status).observe(
        time.perf_counter() - started
    )
    if outcome.status in ("succeeded", "failed", "timed_out", "superseded"):
        _release_upload(job_id, ctx, job, ended=outcome.status == "succeeded")
    return outcome


def _release_upload(
    job_id: str, ctx: WorkerContext, job: Job | None = None, *, ended: bool = False
) -> None:
    """Delete the job's stored uploads (a reference image, an edit's images and mask:
    :func:`shared.uploads.job_uploads`) once the job has ended (best effort; ``ended``:
    the caller knows it has).

    Never before: a job taken over, or handed to its next route, still needs it. The
    upload of a job whose task never runs again stays until the janitor deletes its
    folder after the image retention (:mod:`shared.retention`).
    """
    try:
        job = job or ctx.jobs.get(job_id)
        uploads = job_uploads(job.meta) if job else []
        if not uploads:
            return
        if not ended:
            status = ctx.jobs.status(job_id)
            if status is not None and status not in TERMINAL:
                return
        for upload in uploads:
            ctx.storage.delete(upload.key)
    except Exception as exc:  # noqa: BLE001 - a leftover is only storage, expired later
        log.warning("job %s: could not delete its uploaded reference image: %s", job_id, exc)


def _run_claimed(job: Job, attempt: int, ctx: WorkerContext, handoff: Handoff | None) -> Outcome:
    job_id = job.id
    started = time.monotonic()
    try:
        images, cost = _generate(job, ctx, attempt)
    except DeadlineExceeded:
        ctx.jobs.fail(job_id, attempt, timeout_error(job_id), key_id=job.key_id, job=job)
        log.warning("job %s timed out at its deadline", job_id, extra=_ended("timed_out", started))
        return Outcome(job_id, "timed_out", attempt)
    except GatewayError as exc:
        # Errors adapters build from a 2xx poll answer never passed workers.http's
        # redaction: an upstream quoting our key must not reach the client or the log.
        model, _ = route_of(job, ctx.catalog)
        exc.message = redact(
            exc.message, ctx.settings.credentials_for(ctx.catalog.family_of(model).key_env)
        )
        if handoff is not None and _fall_back(job, attempt, exc, ctx, handoff):
            return Outcome(job_id, "handed_off", attempt)
        ctx.jobs.fail(job_id, attempt, exc, key_id=job.key_id, job=job)
        log.warning(
            "job %s failed: %s %s (%s)",
            job_id,
            exc.status,
            exc.code,
            exc.message,
            extra=_ended("failed", started, code=exc.code),
        )
        return Outcome(job_id, "failed", attempt)
    except redis.RedisError as exc:
        # Redis went away mid-job (a restart): the outcome cannot be recorded now, and
        # failing the job would blame the client for our outage. Leave it running without
        # a heartbeat; once Redis is back a reaper hands it to a new attempt.
        log.warning("job %s interrupted, Redis unavailable (%s); to be taken over", job_id, exc)
        return Outcome(job_id, "interrupted", attempt)
    except Exception:
        log.exception("job %s: unexpected error", job_id)
        ctx.jobs.fail(
            job_id,
            attempt,
            ServerError(
                f"The gateway failed while generating. Job id: {job_id}.", code="internal_error"
            ),
            key_id=job.key_id,
            job=job,
        )
        return Outcome(job_id, "failed", attempt)
    if ctx.jobs.succeed(job_id, attempt, images, key_id=job.key_id, cost=cost, job=job):
        log.info(
            "job %s succeeded: model=%s images=%d size=%s in %.2fs",
            job_id,
            job.model,
            len(images),
            images[0].size,
            time.monotonic() - started,
            extra=_ended("succeeded", started),
        )
        return Outcome(job_id, "succeeded", attempt)
    log.warning("job %s finished but lost its fence (a newer attempt or a timeout won)", job_id)
    _discard(images, ctx)  # this attempt's own objects: nothing refers to them
    return Outcome(job_id, "superseded", attempt)


def _ended(outcome: str, started: float, code: str | None = None) -> dict[str, Any]:
    """The structured fields of a line that says how an attempt ended (shared.logs)."""
    fields: dict[str, Any] = {
        "outcome": outcome,
        "duration_s": round(time.monotonic() - started, 3),
    }
    if code:
        fields["code"] = code
    return fields


def _discard(images: list[StoredImage], ctx: WorkerContext) -> None:
    """Delete objects only this attempt wrote (best effort: a leftover is only storage)."""
    for image in images:
        try:
            ctx.storage.delete(image.key)
        except Exception as exc:  # noqa: BLE001 - keep deleting the others
            log.warning("could not delete %s: %s", image.key, exc)


def _fall_back(
    job: Job, attempt: int, error: GatewayError, ctx: WorkerContext, handoff: Handoff
) -> bool:
    routes = job.meta.get("routes") or []
    nxt = job.candidate + 1
    if not isinstance(error, UpstreamError) or nxt >= len(routes):
        return False
    if job.deadline - time.time() < ctx.settings.fallback_min_seconds:
        return False
    next_model = ctx.catalog.model(routes[nxt]["model"])
    queue = ctx.catalog.family_of(next_model).queue
    note = {"model": routes[job.candidate]["model"], "code": error.code, "at": time.time()}
    if not ctx.jobs.handoff(job.id, attempt, nxt, note):
        return False
    try:
        handoff(job.id, queue)
    except Exception:  # noqa: BLE001 - the broker refused: the reaper sends it later
        log.exception("job %s: could not hand off to %s; the reaper will", job.id, queue)
        return True
    ctx.jobs.mark_sent(job.id)
    log.warning(
        "job %s: %s failed (%s); falling back to %s",
        job.id,
        note["model"],
        error.code,
        next_model.id,
    )
    return True


def build_request(job: Job, model: Model, req: dict[str, Any] | None = None) -> ImageRequest:
    """The adapter's request: the client's fields with the size fitted to the model's rule."""
    req = job.request if req is None else req
    requested = parse_size(req["size"]) if req.get("size") else None
    decision = model.size_rule.clamp(requested, req.get("aspect_ratio"), model.default_size)
    size: Size | None = decision.size
    return ImageRequest(
        prompt=req["prompt"],
        model=model,
        n=int(req.get("n", 1)),
        width=size.width if size else None,
        height=size.height if size else None,
        aspect_ratio=decision.aspect_ratio,
        quality=req.get("quality"),
        style=req.get("style"),
        output_format=req.get("output_format"),
        background=req.get("background"),
        seed=req.get("seed"),
        user=req.get("user"),
        image=req.get("image"),
        extra={
            k: req[k] for k in ("output_compression", "moderation", "input_fidelity") if k in req
        },
        operation=req.get("operation", "generate"),
    )


def upstream_cost(
    model: Model, request: dict[str, Any], result: ImageResult
) -> tuple[int, str] | None:
    """What the upstream charged for ``result`` (micro-units) and where that comes from.

    Its own answer first: a charge it states (BFL), its token usage times the
    model's ``token_prices`` (OpenAI), its billed compute seconds times
    ``cost_per_second`` (Replicate); else the model's ``cost`` table for the images
    the upstream billed (Ark's count) or returned. None when nothing says.
    """
    if result.cost_micros is not None:
        return result.cost_micros, "upstream"
    usage = result.reported.get("usage") if result.reported else None
    if model.token_prices is not None and isinstance(usage, dict):
        tokens = model.token_prices.cost_of(usage)
        if tokens is not None:
            return tokens, "usage"
    if model.cost_per_second is not None and result.compute_seconds is not None:
        return math.ceil(model.cost_per_second * result.compute_seconds), "compute"
    unit = model.unit_cost(request)
    if unit is None:
        return None
    if result.billed_images is not None:
        return unit * result.billed_images, "upstream"
    return unit * len(result.images), "catalog"


def _generate(
    job: Job, ctx: WorkerContext, attempt: int
) -> tuple[list[StoredImage], tuple[int, str] | None]:
    model, req = route_of(job, ctx.catalog)
    family = ctx.catalog.family_of(model)
    request = build_request(job, model, req)
    adapter = adapter_for(family.adapter, request.operation)
    if adapter is None:
        raise ServerError(f"No adapter '{family.adapter}' in this worker build.", code="no_adapter")
    if req.get("images"):
        request = _with_inputs(request, req, ctx)
    reference = ReferenceImage.from_meta(job.meta.get("reference_image"))
    if reference is not None:
        request = dataclasses.replace(request, image=_reference_image(reference, ctx))
    if job.meta.get("routes"):
        ctx.jobs.set_serving(job.id, model.id)
    base_url = ctx.settings.base_url_for(family.name, family.base_url)
    http = UpstreamHTTP(
        session=ctx.session(),
        # Result URLs: the deployment's policy plus the upstream's own host, so a
        # compromised upstream cannot make a worker fetch another internal address.
        fetch_session=result_session(policy_with_hosts_of(policy_for(ctx.settings), base_url)),
        deadline=job.deadline,
        provider=family.name,
        max_retries=ctx.settings.upstream_max_retries,
        attempt_timeout=ctx.settings.upstream_attempt_timeout_seconds,
        error_parser=default_error_parser,
        on_attempt=lambda entry: jobevents.record(
            ctx.redis, job.id, {**entry, "model": model.id}, ctx.jobs.ttl_for(job)
        ),
        model=model.id,
    )
    keys = ctx.settings.credentials_for(family.key_env)
    lease = _take_slot(job, family, keys, ctx)
    key_index = lease.key_index if lease else 0
    call = CallContext(
        family=family,
        base_url=base_url,
        api_key=keys[key_index] if keys else None,
        http=http,
        deadline=job.deadline,
        client_http=dataclasses.replace(
            http,
            session=ctx.client_session(),
            fetch_session=ctx.client_session(),
            provider="the client's URL",
            metered=False,
        ),
        progress=_progress_sink(job, ctx),
    )
    # DEBUG unless it carries the prompt: the line that says how the attempt ended names
    # the job, and a log line fewer per job is ~1% of a worker's CPU (the job's timeline
    # shows it running).
    log.log(
        logging.INFO if ctx.settings.log_prompts else logging.DEBUG,
        "job %s running: model=%s upstream=%s size=%s aspect=%s n=%d",
        job.id,
        model.id,
        model.upstream,
        request.size,
        request.aspect_ratio,
        request.n,
        extra={"prompt": request.prompt} if ctx.settings.log_prompts else None,
    )
    breakers = [model_breaker(model.id)] + ([key_breaker(family.name, key_index)] if keys else [])
    upstream_started = time.perf_counter()
    try:
        try:
            result = adapter.generate(request, call)
        finally:
            metrics.JOB_UPSTREAM_SECONDS.labels(model.id, family.name).observe(
                time.perf_counter() - upstream_started
            )
        stored = _store(job, result, http, ctx, request, attempt)
    except UpstreamError:
        for name in breakers:
            ctx.breakers.record_failure(name)
        raise
    finally:
        if lease is not None:
            try:
                ctx.capacity.release(lease)
            except redis.RedisError as exc:  # the lease runs out by itself
                log.warning("job %s: could not release its upstream slot: %s", job.id, exc)
    ctx.breakers.record_success(*breakers)
    try:
        cost = upstream_cost(model, {**req, "operation": request.operation}, result)
    except Exception:  # noqa: BLE001 - a missing figure must not fail a delivered job
        log.exception("job %s: could not work out the upstream cost", job.id)
        cost = None
    return stored, cost


def _progress_sink(job: Job, ctx: WorkerContext) -> PartialSink | None:
    """Where the adapter publishes partial images, when the job's client streams them
    (``meta.stream``, set by api/generations.py; :mod:`shared.progress`)."""
    stream = job.meta.get("stream")
    if not isinstance(stream, dict):
        return None
    return PartialSink(
        ctx.redis,
        job.id,
        partial_images=int(stream.get("partial_images") or 0),
        max_bytes=ctx.settings.stream_partial_image_max_bytes,
    )


def _with_inputs(request: ImageRequest, req: dict[str, Any], ctx: WorkerContext) -> ImageRequest:
    """An edit's or variation's input images and mask, as the adapters take them: a
    client's URL as is, an upload read back from storage as a ``data:`` URL
    (:class:`shared.uploads.Reference`); ``image`` is the first of them."""

    def resolve(spec: dict[str, Any]) -> str:
        ref = Reference.from_spec(spec)
        return ref.url if ref.stored is None else _reference_image(ref.stored, ctx)

    images = tuple(resolve(spec) for spec in req["images"])
    mask = resolve(req["mask"]) if req.get("mask") else None
    return dataclasses.replace(request, images=images, image=images[0], mask=mask)


def _reference_image(reference: ReferenceImage, ctx: WorkerContext) -> str:
    """The client's inline reference image, read back from storage, as a ``data:`` URL:
    every adapter takes that form and sends what its upstream's protocol wants."""
    try:
        data = ctx.storage.get(reference.key)
    except NotFound as exc:
        raise ServerError(
            "The reference image of this job is no longer stored.", code="reference_image_lost"
        ) from exc
    return data_url(data, reference.content_type)


def _take_slot(job: Job, family: Family, keys: list[str], ctx: WorkerContext) -> Lease | None:
    """An upstream slot (``max_concurrent`` per key) on a key whose breaker is not open.

    Waits for a slot up to the deadline; families without a cap get a lease
    only to rotate among their keys, and need none with a single key (whose
    breaker cannot steer anything: with every key failing we try anyway).
    """
    if not keys or (len(keys) == 1 and family.max_concurrent <= 0):
        return None
    skip = [
        i for i in range(len(keys)) if not ctx.breakers.would_allow(key_breaker(family.name, i))
    ]
    if len(skip) == len(keys):
        skip = []  # every key is failing: try anyway rather than refuse
    lease = ctx.capacity.acquire_blocking(
        family.name,
        len(keys),
        family.max_concurrent,
        ttl=max(1.0, job.deadline - time.time()) + 30.0,
        deadline=job.deadline,
        skip=skip,
    )
    if lease is None:
        raise DeadlineExceeded(f"no free {family.name} upstream slot before the deadline")
    return lease


def _store(
    job: Job,
    result: ImageResult,
    http: UpstreamHTTP,
    ctx: WorkerContext,
    request: ImageRequest,
    attempt: int,
) -> list[StoredImage]:
    """Check and store the images under keys of this attempt's own.

    ``{day}/{job id}/{attempt}/{index}.{ext}``: a run that was taken over and
    finishes late writes next to the winner's objects, never over them, so an
    image a client already has never changes. If one image fails, the ones
    already stored are deleted. The job's folder is noted for deletion after the
    image retention before anything is written (:mod:`shared.retention`).
    """
    if not result.images:
        raise InvalidRequest(
            "The upstream returned no images (the request may have been filtered).",
            code="no_images",
        )
    folder = results_folder(job.id, job.created)
    ctx.retention.track(folder)
    stored: list[StoredImage] = []
    try:
        _store_each(result, http, ctx, request, f"{folder}/{attempt}", stored)
    except BaseException:
        _discard(stored, ctx)
        raise
    return stored


def _store_each(
    result: ImageResult,
    http: UpstreamHTTP,
    ctx: WorkerContext,
    request: ImageRequest,
    prefix: str,
    stored: list[StoredImage],
) -> None:
    for index, image in enumerate(result.images[: request.n]):
        data = image.data
        if data is None and image.url:
            with tracing.span("download", **{"imagegate.index": index}):
                data, _ = http.download(image.url, max_bytes=ctx.settings.max_image_bytes)
        if data is None:
            raise ServerError("An adapter returned an image with neither bytes nor URL.")
        checked = check_image(data, provider=http.provider, want_format=request.output_format)
        key = f"{prefix}/{index}.{checked.extension}"
        with tracing.span("store", **{"imagegate.bytes": len(checked.data)}):
            ctx.storage.put(key, checked.data, checked.content_type)
        metrics.IMAGES_STORED.labels(request.model.id).inc()
        metrics.IMAGE_BYTES_STORED.labels(request.model.id).inc(len(checked.data))
        stored.append(
            StoredImage(
                key=key,
                width=checked.width,
                height=checked.height,
                content_type=checked.content_type,
                revised_prompt=image.revised_prompt,
                reported=dict(result.reported) if result.reported and index == 0 else None,
            )
        )
