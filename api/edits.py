"""POST /v1/images/edits and POST /v1/images/variations.

An edit is a generation with input images: OpenAI's two forms are taken,

* multipart: files ``image`` (or repeated ``image[]``) and ``mask``, the other
  fields as text (read and checked by :mod:`api.uploads`);
* JSON: ``images: [{"image_url"}]`` and ``mask: {"image_url"}``, each an https
  URL (checked by the SSRF policy, fetched by the worker) or a ``data:`` URL
  (decoded and checked here like a file). A ``file_id`` is a 400: the gateway
  has no Files API.

A variation is multipart only: one file ``image``, ``model``, ``n``, ``size``,
``response_format``, ``user``.

An edit's model may be a real one whose catalog entry takes the request's
inputs (``max_reference_images`` images, ``mask``: ``GET /v1/models``) or a
virtual one, routed to a candidate that takes them (:func:`api.routing.plan`);
a variation's must be a real model with ``variations``. The other fields are
checked as a generation's (:func:`api.generations.resolve`, with ``fit_tuning``
unless strict mode is on). ``stream=true`` answers Server-Sent Events of
``image_edit.*`` events (:mod:`api.streaming`), with partial images where the
upstream streams them (GPT image models).

Uploaded bytes never reach Redis or Celery: once every check passed, each
image is stored under the job's own key (``uploads/{day}/{job id}/{i}.{ext}``,
:mod:`shared.uploads`), the job's request names it by that key (a client's
URL by the URL), and ``meta["uploads"]`` lists the keys; a refused request
deletes them again, and the worker deletes them when the job ends. Nothing
is charged before the uploads passed their checks.

From there it is a generation, through the one admission path
(:func:`api.generations.submit`): the same admission (limits, balance, job
record, ``Idempotency-Key`` -- the key of an edit is its fields and the
SHA-256 of each file), the same synchronous wait within the budget, 202 with
the job for ``Prefer: respond-async`` or ``webhook_url``, and the job
endpoints under ``/v1/images/generations/{id}``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, g, request

from api import generations
from api.auth import current_key
from api.routing import Inputs
from api.schemas import EditRequest, ImageRef, VariationRequest
from api.services import Services, services
from api.uploads import MULTIPART, Upload, check_mask, read_form
from api.validation import (
    ParamNotes,
    check_variation,
    json_budget,
    parse_body,
    validate_fields,
)
from shared import logs
from shared.catalog import Model, VirtualModel
from shared.errors import (
    INVALID_VALUE,
    MISSING_REQUIRED_PARAMETER,
    UNSUPPORTED_PARAMETER,
    InvalidRequest,
)
from shared.jobs import new_job_id
from shared.keys import ApiKey
from shared.netguard import check_url, policy_for
from shared.uploads import (
    Reference,
    ReferenceImage,
    decode_data_url,
    inspect_image,
    is_data_url,
    upload_key,
)

log = logging.getLogger(__name__)

bp = Blueprint("edits", __name__, url_prefix="/v1/images")

JSON_TYPE = "application/json"


@dataclass(frozen=True)
class Source:
    """An input image before the job exists: checked bytes to store, or a checked URL."""

    upload: Upload | None = None
    url: str | None = None


@bp.post("/edits")
def create_edit():
    svc = services()
    key = current_key()
    _identity_encoding()
    if request.mimetype == MULTIPART:
        form = read_form(svc.settings, charge=lambda n: svc.parse_limit.charge(key.id, n))
        req = validate_fields(form.fields, EditRequest)
        images = [Source(upload=upload) for upload in form.images]
        mask = Source(upload=form.mask) if form.mask is not None else None
        digest_of = _digest(form.fields, [*form.images, *([form.mask] if form.mask else [])])
    elif request.mimetype == JSON_TYPE:
        request.max_content_length = svc.settings.max_upload_bytes
        body = request.get_data(cache=False)
        req = parse_body(
            body,
            max_tokens=json_budget(svc.catalog),
            charge=lambda nbytes: svc.parse_limit.charge(key.id, nbytes),
            model=EditRequest,
        )
        if req.images is None:
            raise InvalidRequest(
                "Missing required parameter: 'images' (a JSON edit names its images as "
                '`images: [{"image_url": ...}]`).',
                param="images",
                code=MISSING_REQUIRED_PARAMETER,
            )
        images = [_json_source(ref, f"images[{i}]", svc) for i, ref in enumerate(req.images)]
        mask = _json_source(req.mask, "mask", svc) if req.mask is not None else None
        digest_of = body
    else:
        raise InvalidRequest(
            "Send the edit as multipart/form-data (image files) or as application/json "
            "(images by URL).",
            code="unsupported_content_type",
        )
    if mask is not None and mask.upload is not None:
        first = images[0].upload.image if images[0].upload is not None else None
        check_mask(mask.upload.image, first)
    stream = None
    if req.stream:
        if req.webhook_url is not None:
            raise InvalidRequest(
                "A streaming request cannot also have a webhook_url: send one or the other.",
                param="stream",
                code=INVALID_VALUE,
            )
        stream = generations.StreamOptions(
            partial_images=req.partial_images or 0, kind="image_edit"
        )
    base = req.model_copy(update={"images": None, "mask": None, "stream": None})
    # A real model must take these inputs; a virtual one routes to a candidate that does.
    target = generations.resolve(base, key, svc, inputs=Inputs(len(images), mask is not None))
    target.set("operation", "edit")
    return _submit(target, key, svc, images, mask, req.user, req.webhook_url, digest_of, stream)


@bp.post("/variations")
def create_variation():
    svc = services()
    key = current_key()
    _identity_encoding()
    if request.mimetype != MULTIPART:
        raise InvalidRequest(
            "Send the variation as multipart/form-data with the image file in 'image'.",
            code="unsupported_content_type",
        )
    form = read_form(
        svc.settings, charge=lambda n: svc.parse_limit.charge(key.id, n), mask_allowed=False
    )
    req = validate_fields(form.fields, VariationRequest)
    if len(form.images) > 1:
        raise InvalidRequest(
            f"A variation takes one image; the request has {len(form.images)}.",
            param="image",
            code="too_many_images",
        )
    model = _real_model(req.model, "variations", svc)
    tier = svc.accounts.check_model(key, model)
    job_request = check_variation(req, model)
    job_request["operation"] = "variation"
    notes = ParamNotes()
    if req.user is not None and "user" not in model.params:
        if svc.settings.strict_params or key.strict_params:
            raise InvalidRequest(
                f"'{model.id}' does not support the parameter 'user'.",
                param="user",
                code=UNSUPPORTED_PARAMETER,
            )
        notes = ParamNotes(ignored=("user",))
    target = generations.Target(
        model, model, svc.catalog.family_of(model), tier, job_request, notes=notes
    )
    return _submit(
        target,
        key,
        svc,
        [Source(upload=form.images[0])],
        None,
        req.user,
        req.webhook_url,
        _digest(form.fields, form.images),
    )


def _identity_encoding() -> None:
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise InvalidRequest(
            f"Content-Encoding '{encoding[:40]}' is not supported; send the body uncompressed.",
            code="unsupported_content_encoding",
        )


def _real_model(model_id: str | None, operation: str, svc: Services) -> Model:
    target = svc.catalog.resolve(model_id or svc.settings.default_model)
    g.metrics_model = target.id  # a catalog id: a bounded label (shared.metrics)
    logs.bind(model=target.id)
    if isinstance(target, VirtualModel):
        raise InvalidRequest(
            f"'{target.id}' is a virtual model; {operation} need a real model (GET /v1/models).",
            param="model",
            code=INVALID_VALUE,
        )
    generations.check_family(target, svc.catalog.family_of(target), svc)
    return target


def _json_source(ref: ImageRef, param: str, svc: Services) -> Source:
    """A JSON image reference, checked: a ``data:`` URL decoded and inspected, an https
    URL through the SSRF policy; ``file_id`` is a 400 (no Files API)."""
    if ref.file_id is not None:
        raise InvalidRequest(
            "This gateway has no Files API, so 'file_id' cannot name an image; send "
            "'image_url' (an https URL or a data: URL) or upload the file as multipart.",
            param=f"{param}.file_id",
            code=UNSUPPORTED_PARAMETER,
        )
    if ref.image_url is None:
        raise InvalidRequest(
            f"Missing required parameter: '{param}.image_url'.",
            param=f"{param}.image_url",
            code=MISSING_REQUIRED_PARAMETER,
        )
    if is_data_url(ref.image_url):
        data = decode_data_url(
            ref.image_url, max_bytes=svc.settings.max_upload_file_bytes, param=param
        )
        inspected = inspect_image(data, param=param, what=f"The data URL of '{param}'")
        return Source(upload=Upload(param, data, inspected))
    return Source(url=check_url(ref.image_url, policy_for(svc.settings), param=param))


def _digest(fields: dict[str, Any], files: list[Upload]) -> bytes:
    """What an ``Idempotency-Key`` compares for a multipart request: its fields and files."""
    return json.dumps(
        {"fields": fields, "files": [[f.part, hashlib.sha256(f.data).hexdigest()] for f in files]},
        sort_keys=True,
    ).encode()


def _submit(
    target: generations.Target,
    key: ApiKey,
    svc: Services,
    images: list[Source],
    mask: Source | None,
    user: str | None,
    webhook_url: str | None,
    digest_of: bytes,
    stream: generations.StreamOptions | None = None,
):
    """Name the input images in the job's request (and each route's) -- a client's URL
    by the URL, an upload by the storage key it will be kept under -- and hand the job
    to :func:`api.generations.submit`, which stores the uploads once it is admitted."""
    job_id, now = new_job_id(), time.time()
    stored: list[tuple[ReferenceImage, bytes]] = []

    def reference(source: Source) -> dict[str, str]:
        if source.upload is None:
            return Reference(url=source.url).to_spec()
        ref = ReferenceImage(
            key=upload_key(job_id, now, source.upload.image.extension, len(stored)),
            content_type=source.upload.image.content_type,
        )
        stored.append((ref, source.upload.data))
        return Reference(stored=ref).to_spec()

    target.set("images", [reference(source) for source in images])
    if mask is not None:
        target.set("mask", reference(mask))
    return generations.submit(
        target,
        key,
        svc,
        generations.Submission(
            job_id=job_id,
            created=now,
            body=digest_of,
            user=user,
            webhook_url=webhook_url,
            stream=stream,
            meta={"uploads": [ref.to_meta() for ref, _ in stored]},
            uploads=tuple(stored),
        ),
    )
