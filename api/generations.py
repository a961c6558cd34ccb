"""POST /v1/images/generations, the job endpoints, and the one admission path.

Every image endpoint (generations here, edits and variations in
:mod:`api.edits`) goes through :func:`resolve` (the model, checked for the key;
a virtual model planned into routes) and :func:`submit` (store the uploads,
admit, enqueue, answer), so limits, billing, idempotency and answers cannot
drift apart between them.

Synchronous by default: validate, admit (limits + balance + job record, one
atomic step), enqueue, wait within the budget, answer the images or 504 with
the job id. Asynchronous when the body has ``webhook_url`` or the request
says ``Prefer: respond-async``: the same admission, then ``202 Accepted``
with the job object and a ``Location`` to poll.

OpenAI clients' tuning fields (``user``, ``quality``, ``style``) are fitted to
the model unless strict mode is on (``IMAGEGATE_STRICT_PARAMS`` or the key's
flag); what was mapped or ignored is kept on the job and listed in the
``x-imagegate-mapped-params`` / ``x-imagegate-ignored-params`` headers of its
answer. ``user`` is recorded on the job (``meta.user``) even where it is not
sent upstream.

A reference ``image`` given as an http(s) URL is checked by the SSRF policy and
fetched by the workers; one given as a ``data:`` URL is decoded and checked
here (an image, size limits: 400/413 naming ``image``), kept in storage under
the job's own key and named in the job spec by that key, never by its bytes
(:mod:`shared.uploads`). A refused request deletes it again; so does a job
that could not be queued. The job spec kept in Redis is bounded
(``max_job_spec_bytes``, 413 ``job_too_large``).

The body is parsed only after the cheap checks (size, ``json_too_complex``) and
after its bytes were charged to the key's parse budget (:mod:`api.parse_limit`:
429 ``error.limit: "request_body_bytes"`` once a key sends more than it may).

``Idempotency-Key`` (per API key, kept ``idempotency_ttl_seconds``) makes a
retry with the same body return the same job instead of creating and
charging a new one; the same key with another body is a 409.

``stream: true`` (with ``partial_images`` 0-3) answers the same job as
Server-Sent Events in OpenAI's shapes (:mod:`api.streaming`): partial images
where the upstream streams them, then the completed image(s) or an ``error``
event; the budget, billing and timeout rules are the synchronous ones. It
cannot be combined with ``webhook_url`` (400); ``Prefer: respond-async`` is
ignored for it (a preference, RFC 7240). A replay by ``Idempotency-Key`` streams
too. Until :class:`api.schemas.GenerationRequest` takes the two fields, they are
taken out of the body here (:func:`_parse`) and the rest is validated as usual.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
from flask import Blueprint, g, request

from api.auth import current_key
from api.responses import base_url, images_response, job_object, json_response
from api.routing import Inputs, Route, plan, unit_price
from api.schemas import GenerationRequest
from api.services import Services, services
from api.streaming import stream_response
from api.validation import (
    ParamNotes,
    check_against_model,
    check_generates,
    check_inputs,
    fit_tuning,
    json_budget,
    parse_body,
)
from api.waiter import Waiter
from shared import jobindex, logs, tracing
from shared.billing import Admission, Idempotency, format_money, idempotency_key
from shared.catalog import Family, Model, Tier, VirtualModel
from shared.errors import (
    Conflict,
    GatewayError,
    InvalidRequest,
    NotFound,
    RequestTooLarge,
    ServiceUnavailable,
    error_from_dict,
)
from shared.jobs import Job, JobStatus, new_job_id, timeout_error
from shared.keys import ApiKey
from shared.netguard import check_url, policy_for
from shared.presence import why_unusable
from shared.retention import uploads_folder
from shared.uploads import (
    ReferenceImage,
    decode_data_url,
    inspect_image,
    is_data_url,
    job_uploads,
    upload_key,
)

log = logging.getLogger(__name__)

bp = Blueprint("generations", __name__, url_prefix="/v1/images")

# After the deadline the worker records the timeout itself; give it this long
# to do so before the web side declares the job timed out on its own.
_GRACE_SECONDS = 0.5
_MAX_IDEMPOTENCY_KEY = 255
_STREAM_FIELDS = ("stream", "partial_images")
_MAX_PARTIAL_IMAGES = 3


@dataclass(frozen=True)
class StreamOptions:
    """The client asked for ``stream: true``; ``kind`` names its events
    (``image_generation`` here, ``image_edit`` for edits)."""

    partial_images: int = 0
    kind: str = "image_generation"

    def to_meta(self) -> dict:
        """``job.meta["stream"]``: tells the worker to relay partial images."""
        return {"partial_images": self.partial_images}


def _parse(
    body: bytes, svc: Services, key: ApiKey
) -> tuple[GenerationRequest, StreamOptions | None]:
    """The request and, if it streams, its stream options.

    ``stream``/``partial_images`` that the schema refuses are taken out of the body and
    checked here; the rest is parsed as any request (charged once, to the first parse).
    """
    budget = json_budget(svc.catalog)
    try:
        req = parse_body(
            body, max_tokens=budget, charge=lambda n: svc.parse_limit.charge(key.id, n)
        )
    except InvalidRequest as exc:
        if exc.param not in _STREAM_FIELDS:
            raise
        fields = json.loads(body)  # the schema got to its fields: it is a JSON object
        stream, partials = fields.pop("stream", None), fields.pop("partial_images", None)
        req = parse_body(json.dumps(fields).encode(), max_tokens=budget)
    else:
        stream, partials = getattr(req, "stream", None), getattr(req, "partial_images", None)
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest(  # what the schema says of a non-boolean, once it takes `stream`
            "Invalid value for 'stream': it must be true or false.",
            param="stream",
            code="invalid_value",
        )
    if partials is not None and (
        type(partials) is not int or not 0 <= partials <= _MAX_PARTIAL_IMAGES
    ):
        raise InvalidRequest(
            f"Invalid value for 'partial_images': an integer from 0 to {_MAX_PARTIAL_IMAGES}.",
            param="partial_images",
            code="invalid_value",
        )
    if not stream:
        return req, None
    if req.webhook_url is not None:
        raise InvalidRequest(
            "A streaming request cannot also have a webhook_url: send one or the other.",
            param="stream",
            code="invalid_value",
        )
    return req, StreamOptions(partial_images=partials or 0)


def _wants_async() -> bool:
    # RFC 7240: comma-separated preferences, each maybe with ";"-parameters
    # ("respond-async; wait=10"); names are case-insensitive.
    prefer = request.headers.get("Prefer", "")
    return any(p.split(";", 1)[0].strip().lower() == "respond-async" for p in prefer.split(","))


def _idempotency(key: ApiKey, svc: Services, body: bytes, job_id: str) -> Idempotency | None:
    header = request.headers.get("Idempotency-Key")
    if header is None:
        return None
    if not header or len(header) > _MAX_IDEMPOTENCY_KEY or not header.isprintable():
        raise InvalidRequest(
            f"Idempotency-Key must be 1 to {_MAX_IDEMPOTENCY_KEY} printable characters.",
            code="invalid_idempotency_key",
        )
    digest = hashlib.sha256(body).hexdigest()
    return Idempotency(
        redis_key=idempotency_key(key.id, header),
        value=f"{job_id}|{digest}",
        ttl=svc.settings.idempotency_ttl_seconds,
    )


@dataclass(frozen=True)
class Target:
    """What a request runs on, resolved and checked (:func:`resolve`): the model the
    client asked for (limits, price and usage go by its id), the real model and family
    of the first route, the job's request, and for a virtual model its routes in the
    order they are tried (the first is the job's own request)."""

    asked: Model | VirtualModel
    model: Model
    family: Family
    tier: Tier
    request: dict[str, Any]
    routes: tuple[Route, ...] = ()
    notes: ParamNotes = ParamNotes()  # a real model's; each route has its own

    def requests(self) -> list[dict[str, Any]]:
        """The job's request and every route's: a field the endpoint sets after routing
        (a checked reference URL, an edit's stored images) goes into each."""
        return [self.request, *(route.request for route in self.routes)]

    def set(self, name: str, value: Any) -> None:
        for request_dict in self.requests():
            request_dict[name] = value

    def drop(self, name: str) -> None:
        for request_dict in self.requests():
            request_dict.pop(name, None)


def resolve(
    req: GenerationRequest, key: ApiKey, svc: Services, *, inputs: Inputs | None = None
) -> Target:
    """The model the request names (or the default), checked for this key, and the
    request checked against it: a virtual model is planned into routes
    (:func:`api.routing.plan`), a real one checked as is. The client's tuning fields
    are fitted to each model unless strict mode is on. ``inputs``: an edit's input
    images, which the model (or each candidate) must take."""
    target = svc.catalog.resolve(req.model or svc.settings.default_model)
    g.metrics_model = target.id  # a catalog id: a bounded label (shared.metrics)
    logs.bind(model=target.id)
    strict = svc.settings.strict_params or key.strict_params
    if isinstance(target, VirtualModel):
        tier = svc.accounts.check_model(key, target)
        routes = plan(
            req,
            target,
            catalog=svc.catalog,
            settings=svc.settings,
            breakers=svc.breakers,
            strict=strict,
            client=svc.redis,
            inputs=inputs,
        )
        first = routes[0]
        return Target(target, first.model, first.family, tier, first.request, tuple(routes))
    family = svc.catalog.family_of(target)
    check_family(target, family, svc)
    tier = svc.accounts.check_model(key, target)
    if inputs is not None:
        check_inputs(target, inputs.images, inputs.mask)
    fitted, notes = (req, ParamNotes()) if strict else fit_tuning(req, target)
    job_request = check_against_model(fitted, target)
    if inputs is None:
        check_generates(target)  # after the request's own checks, which name its fields
    return Target(target, target, family, tier, job_request, notes=notes)


@bp.post("/generations")
def create_generation():
    svc = services()
    key = current_key()
    if not request.mimetype or request.mimetype != "application/json":
        raise InvalidRequest(
            "The request body must be JSON, sent with 'Content-Type: application/json'.",
            code="unsupported_content_type",
        )
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        # Not decoded: a compressed body would be a decompression bomb past the size limit.
        raise InvalidRequest(
            f"Content-Encoding '{encoding[:40]}' is not supported; send the JSON uncompressed.",
            code="unsupported_content_encoding",
        )
    body = request.get_data(cache=False)
    req, stream = _parse(body, svc, key)
    target = resolve(req, key, svc)
    inline = req.image is not None and is_data_url(req.image)
    if req.image is not None and not inline:
        # A reference image the workers will fetch on the client's behalf.
        target.set("image", check_url(req.image, policy_for(svc.settings), param="image"))
    job_id, now = new_job_id(), time.time()
    uploads: list[tuple[ReferenceImage, bytes]] = []
    meta: dict[str, Any] = {}
    if inline:
        # Checked here, before anything is charged; kept in storage, never in Redis.
        uploads.append(_inline_reference(str(req.image), job_id, now, svc))
        target.drop("image")
        meta["reference_image"] = uploads[0][0].to_meta()  # once, whatever the route
    return submit(
        target,
        key,
        svc,
        Submission(
            job_id=job_id,
            created=now,
            body=body,
            user=req.user,
            webhook_url=req.webhook_url,
            stream=stream,
            meta=meta,
            uploads=tuple(uploads),
        ),
    )


@dataclass(frozen=True)
class Submission:
    """The rest of what :func:`submit` needs besides the target: the job's id and
    creation time (an endpoint keys its uploads by them), what ``Idempotency-Key``
    compares (``body``: the JSON body, or an edit's fields and file digests), the
    client's ``user`` and ``webhook_url`` (checked here), the stream options, the
    endpoint's own ``meta`` entries, and the checked uploads to store, which nothing
    but the job refers to (deleted again when the request is refused)."""

    job_id: str
    created: float
    body: bytes
    user: str | None = None
    webhook_url: str | None = None
    stream: StreamOptions | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    uploads: tuple[tuple[ReferenceImage, bytes], ...] = ()


def submit(target: Target, key: ApiKey, svc: Services, sub: Submission):
    """The one admission path of every image endpoint (generations, edits, variations):
    store the uploads, admit (limits, balance, idempotency and the job record in one
    atomic step), enqueue, and answer: 202 with the job (``Prefer: respond-async`` or a
    ``webhook_url``), Server-Sent Events (``stream``), or the images within the budget.
    A refused request (429, 402, 403, a duplicate) changes nothing and keeps no upload."""
    webhook_url = None
    if sub.webhook_url is not None:
        webhook_url = check_url(sub.webhook_url, policy_for(svc.settings), param="webhook_url")
    stream = sub.stream
    is_async = stream is None and (webhook_url is not None or _wants_async())
    budget = svc.settings.async_budget_seconds if is_async else svc.settings.sync_budget_seconds
    mode = "async" if is_async else "stream" if stream is not None else "sync"
    meta: dict[str, Any] = {"base_url": base_url(svc), "mode": mode, **sub.meta}
    if stream is not None:  # the worker relays partial images (shared.progress)
        meta["stream"] = stream.to_meta()
    if target.routes:
        meta["routes"] = [route.to_meta(target.request) for route in target.routes]
    else:
        meta["params"] = target.notes.to_meta()
    if sub.user is not None:
        meta["user"] = sub.user  # recorded even where the upstream does not take it
    trace = tracing.carrier()  # the worker's and webhook's spans join this request's trace
    if trace:
        meta["trace"] = trace
    job = Job(
        id=sub.job_id,
        key_id=key.id,
        model=target.asked.id,  # limits, price and usage go by the name the client asked for
        family=target.family.name,
        queue=target.family.queue,
        request=target.request,
        created=sub.created,
        deadline=sub.created + budget,
        meta=meta,
    )
    logs.bind(job_id=job.id, family=target.family.name)
    idempotency = _idempotency(key, svc, sub.body, job.id)
    spec_json = _bounded_spec(job, svc)
    # An upload's price (an edit's form) and its size: the request as the endpoint left it.
    unit = (
        unit_price(target.asked, list(target.routes))
        if isinstance(target.asked, VirtualModel)
        else target.model.unit_price(target.request)
    )
    if sub.uploads:
        svc.retention.track(uploads_folder(job.id, job.created))  # deleted in time
    try:
        for ref, data in sub.uploads:
            svc.storage.put(ref.key, data, ref.content_type)
        # Limits, balance, idempotency and the job record in one atomic step:
        # a 429 / 402 / duplicate changes nothing.
        with tracing.span("admission", **{"imagegate.model": target.asked.id}):
            admission = svc.accounts.admit(
                key,
                target.tier,
                target.asked,
                job.request["n"],
                job_key=svc.jobs.record_key(job.id),
                job_id=job.id,
                spec_json=spec_json,
                deadline=job.deadline,
                ttl=svc.jobs.ttl_for(job),
                now=sub.created,
                idempotency=idempotency,
                webhook_url=webhook_url,
                watch=svc.jobs.watch_entry(job),
                user=sub.user,
                unit_price=unit,
            )
    except (GatewayError, OSError):
        drop_uploads(job, svc)  # refused (429, 402, 403), or not stored: unreferenced
        raise
    if admission.duplicate_of is not None:
        drop_uploads(job, svc)  # the first job of this key has its own
        return _replay(admission.duplicate_of, idempotency, key, svc, is_async, stream)
    g.ratelimit = admission.status
    job = charged(job, unit, admission)
    # A synchronous request listens for its job before sending it, so the worker's
    # notice cannot slip past, and its first look at the record waits for it.
    waiter = None if is_async else svc.hub.expect(job.id, progress=stream is not None)
    try:
        _send(job, svc, idempotency)
        log.info(
            "job %s queued: key=%s model=%s via=%s %s inputs=%d n=%s mode=%s",
            job.id,
            key.id,
            target.asked.id,
            target.model.id,
            job.request.get("operation", "generate"),
            len(sub.uploads) + len(job.request.get("images") or ()),
            job.request["n"],
            mode,
        )
        if waiter is None:
            return _accepted(job.id, svc)
        if stream is not None:
            streaming, waiter = waiter, None  # the stream closes it when it ends
            return stream_answer(streaming, job, job.deadline, svc, stream, read_first=False)
        return _answer(waiter.wait(job.deadline + _GRACE_SECONDS, read_first=False), job.id, svc)
    finally:
        if waiter is not None:
            waiter.close()


def _send(job: Job, svc: Services, idempotency: Idempotency | None) -> None:
    """Enqueue an admitted job; if the broker refuses it, fail it (refunded) with a 503.

    The 503 names the job (``error.job_id``, ``x-job-id``), and the request's
    ``Idempotency-Key`` is released: the job never ran, so a retry with the same
    key must make a new one rather than replay this refusal.
    """
    try:  # the admin API's search index; the job goes on without it
        jobindex.add(svc.redis, job.id, job.key_id, job.created, svc.jobs.ttl_for(job))
    except redis.RedisError as exc:
        log.warning("job %s: not indexed for search: %s", job.id, exc)
    try:
        svc.queue.enqueue(job)
    except Exception as exc:
        error = ServiceUnavailable(
            f"The job queue is unavailable; nothing was charged. Retry shortly. Job id: {job.id}.",
            headers={"Retry-After": "2", "x-job-id": job.id},
            extra={"job_id": job.id},
        )
        try:
            refunded = svc.jobs.fail(job.id, None, error)  # refunds the reservation
            if refunded and idempotency is not None:
                svc.accounts.release_idempotency(idempotency)
            if refunded:
                drop_uploads(job, svc)  # the job never ran and never will
        except redis.RedisError:
            # Redis went away between admission and enqueueing: the job is stored and
            # charged, and a worker's reaper will send it. Go on as if it was sent.
            log.warning("job %s: not enqueued (%s); the reaper will send it", job.id, exc)
        else:
            if refunded:
                raise error from exc
    else:
        try:
            svc.jobs.mark_sent(job.id)
        except redis.RedisError:  # the reaper sends it once more; a duplicate is harmless
            log.warning("job %s: could not record that it was sent", job.id)


def _inline_reference(
    image: str, job_id: str, created: float, svc: Services
) -> tuple[ReferenceImage, bytes]:
    """A ``data:`` URL reference image, decoded and checked (400/413 naming ``image``),
    with the storage key of the job's it will be kept under (:mod:`shared.uploads`)."""
    data = decode_data_url(image, max_bytes=svc.settings.max_reference_image_bytes)
    inspected = inspect_image(data)
    key = upload_key(job_id, created, inspected.extension)
    return ReferenceImage(key=key, content_type=inspected.content_type), data


def drop_uploads(job: Job, svc: Services) -> None:
    """Delete every upload the job stored (a generation's inline reference image, an
    edit's or variation's files): best effort, a leftover only costs storage until the
    janitor deletes its folder after the image retention (:mod:`shared.retention`)."""
    for upload in job_uploads(job.meta):
        try:
            svc.storage.delete(upload.key)
        except Exception as exc:  # noqa: BLE001 - never hide the error being answered
            log.warning("job %s: could not delete its upload %s: %s", job.id, upload.key, exc)


def _bounded_spec(job: Job, svc: Services) -> str:
    """The job's spec as stored in Redis; 413 when it is above ``max_job_spec_bytes``.

    With image bytes kept in storage, only a very long prompt repeated in the routes
    of a virtual model can come near the bound.
    """
    spec = svc.jobs.spec_json(job)
    limit = svc.settings.max_job_spec_bytes
    if len(spec) > limit:
        raise RequestTooLarge(
            f"This request would make a job record of {len(spec)} bytes; the gateway keeps "
            f"at most {limit}. Shorten the prompt.",
            code="job_too_large",
        )
    return spec


def check_family(model: Model, family: Family, svc: Services) -> None:
    """503 unless the model's family is served here: the web's key, or a live worker."""
    reason = why_unusable(svc.settings, family, svc.redis)  # the web's key, or a live worker
    if reason:
        raise ServiceUnavailable(
            f"The model '{model.id}' is not available: {reason}.",
            code="model_unavailable" if not family.available else "upstream_not_configured",
            headers={"x-should-retry": "false"},
        )


def _replay(
    stored: str,
    idempotency,
    key: ApiKey,
    svc: Services,
    is_async: bool,
    stream: StreamOptions | None = None,
):
    job_id, _, digest = stored.partition("|")
    if idempotency is None or digest != idempotency.value.partition("|")[2]:
        raise Conflict(
            "This Idempotency-Key was already used with a different request body.",
            code="idempotency_key_reused",
        )
    job = svc.jobs.get(job_id)
    if job is None or job.key_id != key.id:
        raise Conflict(
            "The job of this Idempotency-Key has expired.", code="idempotency_key_expired"
        )
    if is_async:
        return _accepted(job.id, svc)
    if stream is not None:
        # The stored deadline is on Redis' clock; the stream counts on this host's.
        local_deadline = job.deadline - (svc.jobs.clock() - time.time())
        waiter = svc.hub.expect(job.id, progress=True)
        return stream_answer(waiter, job, local_deadline, svc, stream)
    return _wait_and_answer(job.id, svc)


def stream_answer(
    waiter: Waiter,
    job: Job,
    deadline: float,
    svc: Services,
    stream: StreamOptions,
    *,
    read_first: bool = True,
):
    """The job's answer as Server-Sent Events (:mod:`api.streaming`) until ``deadline``
    (this host's clock) plus the grace the worker gets to record a timeout; it closes
    ``waiter`` (from ``svc.hub.expect(job.id, progress=True)``) when it ends.

    For the edits endpoint too: a job admitted with ``meta["stream"] =
    stream.to_meta()`` and ``StreamOptions(kind="image_edit")`` streams
    ``image_edit.*`` events, with the same budget, billing and 504 rules.
    ``read_first=False`` for a job enqueued after the waiter registered.
    """
    return stream_response(
        waiter,
        deadline + _GRACE_SECONDS,
        svc,
        lambda done, job_id: _settle(done, job_id, svc),
        kind=stream.kind,
        headers=_param_headers(job),
        read_first=read_first,
    )


def _accepted(job_id: str, svc: Services):
    job = svc.jobs.get(job_id)
    if job is None:
        raise NotFound(f"No job '{job_id}'.")
    response = json_response(job_object(job, svc), 202)
    response.headers["Location"] = f"/v1/images/generations/{job.id}"
    response.headers["x-job-id"] = job.id
    response.headers.update(_param_headers(job))
    return response


def charged(job: Job, unit: int, admission: Admission) -> Job:
    """The job as admitted: ``unit`` micro-units per image, and what admission reserved
    (the images beyond the tier's free ones of the day)."""
    return dataclasses.replace(job, unit_price=unit, charge=admission.charged_micros)


def _param_headers(job: Job) -> dict[str, str]:
    """The mapped/ignored tuning fields of the route the job ran (or will run) on, and
    ``x-imagegate-charge``: what the client pays for it (reserved until it ends, then
    what was spent: images not delivered are refunded)."""
    charge = {} if job.charge is None else {CHARGE_HEADER: format_money(job.charge)}
    routes = job.meta.get("routes")
    if routes:
        route = routes[min(job.candidate, len(routes) - 1)]
        return {**ParamNotes.from_meta(route.get("params")).headers(), **charge}
    return {**ParamNotes.from_meta(job.meta.get("params")).headers(), **charge}


CHARGE_HEADER = "x-imagegate-charge"


def _wait_and_answer(job_id: str, svc: Services):
    job = svc.jobs.get(job_id)
    if job is None:
        raise timeout_error(job_id)
    # The stored deadline is on Redis' clock; the waiter counts on this host's.
    local_deadline = job.deadline - (svc.jobs.clock() - time.time())
    return _answer(svc.hub.wait(job.id, local_deadline + _GRACE_SECONDS), job.id, svc)


def _answer(done: Job | None, job_id: str, svc: Services):
    """The synchronous answer from the job record a wait ended with."""
    done = _settle(done, job_id, svc)
    response = json_response(images_response(done, svc))
    response.headers["x-job-id"] = done.id
    response.headers.update(_param_headers(done))
    return response


def _settle(done: Job | None, job_id: str, svc: Services) -> Job:
    """The succeeded job a wait ended with, or raises what the client gets instead: the
    job's own error, a 504 once its deadline passed, a 503 if Redis is gone then."""
    if done is None or not done.terminal:
        try:
            expired = svc.jobs.expire_if_overdue(job_id)
            done = svc.jobs.get(job_id)
            if expired and done is not None:
                drop_uploads(done, svc)  # a queued job may never reach a worker now
        except redis.RedisError as exc:
            # Redis is down at the end of the budget: the job lives on (it is in Redis,
            # which keeps it through a restart); say so, with its id to fetch it later.
            raise ServiceUnavailable(
                "The gateway's state store is unavailable; the job may still finish. "
                f"Fetch it later with GET /v1/images/generations/{job_id}.",
                headers={"Retry-After": "2", "x-job-id": job_id},
                extra={"job_id": job_id},
            ) from exc
    if done is None:
        raise timeout_error(job_id)
    if done.status == JobStatus.SUCCEEDED:
        return done
    if done.status in (JobStatus.FAILED, JobStatus.CANCELED) and done.error:
        error = error_from_dict(done.error)
        error.headers["x-job-id"] = done.id  # the failed job's record can be fetched
        raise error
    raise timeout_error(job_id)


def _own_job(job_id: str) -> Job:
    """The caller's job; another key's job is 'not found', never 'forbidden'."""
    key = current_key()
    job = services().jobs.get(job_id) if job_id.startswith("imgjob_") else None
    if job is None or job.key_id != key.id:
        raise NotFound(f"No job '{job_id}'.", param="id", code="job_not_found")
    return job


@bp.get("/generations/<job_id>")
def get_job(job_id: str):
    svc = services()
    job = _own_job(job_id)
    if not job.terminal and svc.jobs.clock() >= job.deadline + _GRACE_SECONDS:  # Redis' clock
        if svc.jobs.expire_if_overdue(job.id):
            drop_uploads(job, svc)
        job = svc.jobs.get(job.id) or job
    return json_response(job_object(job, svc))


@bp.post("/generations/<job_id>/cancel")
def cancel_job(job_id: str):
    svc = services()
    job = _own_job(job_id)
    if job.terminal:
        raise Conflict(
            f"The job {job.id} has already ended ({job.status.value}).", code="job_already_ended"
        )
    # Refunds; a worker still running it can no longer write, nor needs its upload.
    if svc.jobs.cancel(job.id):
        drop_uploads(job, svc)
    return json_response(job_object(svc.jobs.get(job.id) or job, svc))
