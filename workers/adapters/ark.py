"""``ark`` family: ByteDance Seedream on BytePlus ModelArk / Volcengine Ark.

``POST {base_url}/images/generations`` (``base_url`` ends in ``/api/v3``) with
``Authorization: Bearer <ARK_API_KEY>``: synchronous, JSON in and out, no
cancel (the shared HTTP helper bounds the call by the job's deadline).
Field mapping (gateway request -> upstream body):

* ``model.upstream`` -> ``model``; ``prompt`` as is; the clamped size ->
  ``size`` (``"WxH"``, already inside the model's pixel-area band);
* ``n``: Ark has no ``n``. ``n == 1`` -> ``sequential_image_generation:
  "disabled"`` (exactly one image); ``n > 1`` -> ``"auto"`` with
  ``sequential_image_generation_options: {"max_images": n}`` and a sentence
  appended to the prompt asking for n images. The model decides the actual
  count: fewer images are returned as they came (the job's settlement refunds
  the rest), more are cut to n. Reference images count against Ark's 15 images
  per call, so ``n + references > 15`` is refused naming ``n``;
* ``seed`` -> ``seed``; ``image`` (a URL or ``data:image/<fmt>;base64,...``,
  or a list of them; for models whose catalog ``params`` list ``image``) and
  an edit's ``images`` -> ``image`` as is (a string for one, a list for
  several), up to the catalog's ``max_reference_images`` (Ark: 10 for 4.0, 14
  for 4.5; more is a 400 naming ``image``); Ark has no mask;
  ``output_format`` ``jpeg``/``png`` -> ``output_format`` where
  the catalog lists it (other formats are refused naming the param);
* ``watermark: false`` always (Ark's default stamps "AI generated");
* ``response_format``: ``url`` unless the catalog entry sets
  ``options.response_format = "b64_json"``. URLs keep Ark's JSON answer small
  even for 15 images of 16 MP (base64 of those would be a ~100 MB body read
  whole into memory), and the task then fetches each image with the helper's
  streamed, size-capped, deadline-bounded download; Ark's URLs live 24 h, far
  longer than the moment between answer and download;
* ``quality``, ``style``, ``background``, ``user``, ``output_compression``,
  ``moderation``, an ``aspect_ratio`` without a size: Ark has no such field,
  so they are refused with :class:`InvalidRequest` naming the param, never
  dropped silently.

Response: ``{model, created, data: [{url | b64_json, size}], usage}``
(``usage.generated_images``, the images Ark bills, -> ``ImageResult.billed_images``). In a
batch, an image the content filter refused is a ``data`` item with
``error: {code, message}`` instead of an image: it is skipped. If nothing
came back, a content-filter code becomes ``content_policy_violation``, any
other item error an :class:`UpstreamError`.

Errors are Ark's OpenAI-compatible envelope ``{"error": {code, message,
param, type}}``; :func:`ark_error_parser` reads it and flags the
``*SensitiveContentDetected`` codes as moderation (400 ->
``content_policy_violation``). The request id comes from ``x-request-id``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Literal

import requests

from shared.errors import (
    INVALID_VALUE,
    InvalidRequest,
    UpstreamError,
    content_policy_violation,
)
from workers.adapters.base import (
    AdapterOptions,
    CallContext,
    GeneratedImage,
    ImageRequest,
    ImageResult,
)
from workers.adapters.common import image_of, malformed, unsupported
from workers.http import MODERATION_CODES, UpstreamFault, default_error_parser, request_id_of

log = logging.getLogger(__name__)

MAX_IMAGES_PER_CALL = 15  # reference images + generated images, per Ark
OUTPUT_FORMATS = ("jpeg", "png")
BATCH_PROMPT = "{prompt}\n\nGenerate a set of {n} separate images."

# Request fields Ark has nothing to map to: refused, never dropped.
_UNSUPPORTED = ("quality", "style", "background", "user")
_UNSUPPORTED_EXTRA = ("output_compression", "moderation")


def is_moderation_code(code: str | None) -> bool:
    """Ark's content-filter codes: ``InputTextSensitiveContentDetected``,
    ``InputImageSensitiveContentDetected``, ``OutputImageSensitiveContentDetected``,
    ``SensitiveContentDetected[.Violence|.SevereViolation]`` (and OpenAI-style ones)."""
    return bool(code) and ("SensitiveContentDetected" in code or code in MODERATION_CODES)


def ark_error_parser(response: requests.Response) -> UpstreamFault:
    """Ark's ``{"error": {code, message, param, type}}``, with its moderation codes."""
    fault = default_error_parser(response)
    return dataclasses.replace(fault, moderated=fault.moderated or is_moderation_code(fault.code))


class ArkOptions(AdapterOptions):
    """``options`` of a Seedream model on ModelArk."""

    response_format: Literal["url", "b64_json"] = "url"
    batch_prompt: str = BATCH_PROMPT
    """The prompt of an n > 1 batch; ``{prompt}`` and ``{n}`` are filled in."""


class ArkAdapter:
    options_model = ArkOptions

    def generate(self, request: ImageRequest, ctx: CallContext) -> ImageResult:
        body = build_body(request)
        http = dataclasses.replace(ctx.http, error_parser=ark_error_parser)
        response = http.request(
            "POST",
            f"{ctx.base_url}/images/generations",
            json_body=body,
            headers={"Authorization": f"Bearer {ctx.api_key}"},
        )
        payload = http.json(response)
        rid = request_id_of(response)
        items = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(items, list):
            raise malformed("Ark answered without a data list.", rid)
        images: list[GeneratedImage] = []
        failures: list[dict[str, Any]] = []
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("error"), dict):
                failures.append(item["error"])
                continue
            images.append(image_of(item, rid, "Ark"))
        if isinstance(payload.get("error"), dict):  # a batch stopped by an internal error
            failures.append(payload["error"])
        if failures:
            log.warning(
                "ark: %d of %d image(s) failed (request %s): %s",
                len(failures),
                request.n,
                rid,
                ", ".join(str(f.get("code")) for f in failures),
            )
        if not images:
            raise _no_images(failures, rid)
        usage = payload.get("usage")
        billed = usage.get("generated_images") if isinstance(usage, dict) else None
        return ImageResult(
            images=images[: request.n],
            upstream_request_id=rid,
            # Ark bills the images it generated (usage.generated_images).
            billed_images=billed if isinstance(billed, int) and billed >= 0 else None,
        )


def build_body(request: ImageRequest) -> dict[str, Any]:
    """The Ark request body for ``request``; :class:`InvalidRequest` for what Ark cannot do."""
    model = request.model
    _refuse_unsupported(request)
    if request.size is None:
        raise unsupported(
            "aspect_ratio", f"'{model.id}' takes an explicit size, not an aspect ratio."
        )
    options = ArkOptions.of(model)
    fmt = options.response_format
    body: dict[str, Any] = {
        "model": model.upstream,
        "prompt": request.prompt,
        "size": request.size,
        "response_format": fmt,
        "watermark": False,
    }
    if request.mask is not None:
        raise unsupported("mask", f"'{model.id}' takes no mask: Seedream has none.")
    images = list(request.images)
    if not images and request.image is not None:
        images = list(request.image) if isinstance(request.image, list | tuple) else [request.image]
    references = len(images)
    if images:
        # A generation's `image` where the catalog lists it; an edit's images up to its count.
        takes = "image" in model.params if request.operation == "generate" else True
        if not takes or model.max_reference_images == 0:
            raise unsupported("image", f"'{model.id}' does not take a reference image.")
        if references > model.max_reference_images:
            raise InvalidRequest(
                f"'{model.id}' takes at most {model.max_reference_images} reference image(s); "
                f"the request has {references}.",
                param="image",
                code=INVALID_VALUE,
            )
        body["image"] = images[0] if references == 1 else images
    if request.n > 1:
        if request.n + references > MAX_IMAGES_PER_CALL:
            raise InvalidRequest(
                f"'{model.id}' makes at most {MAX_IMAGES_PER_CALL - references} image(s) per "
                f"request with {references} reference image(s); you asked for {request.n}.",
                param="n",
                code=INVALID_VALUE,
            )
        template = options.batch_prompt
        body["prompt"] = template.format(prompt=request.prompt, n=request.n)
        body["sequential_image_generation"] = "auto"
        body["sequential_image_generation_options"] = {"max_images": request.n}
    else:
        body["sequential_image_generation"] = "disabled"
    if request.seed is not None:
        body["seed"] = request.seed
    if request.output_format is not None:
        body["output_format"] = request.output_format
    return body


def _refuse_unsupported(request: ImageRequest) -> None:
    model = request.model
    given = [name for name in _UNSUPPORTED if getattr(request, name) is not None]
    given += [name for name in _UNSUPPORTED_EXTRA if request.extra.get(name) is not None]
    if request.seed is not None and "seed" not in model.params:
        given.append("seed")
    if request.output_format is not None and "output_format" not in model.params:
        given.append("output_format")
    if given:
        raise unsupported(
            given[0],
            f"'{model.id}' (Seedream on ModelArk) does not support the parameter '{given[0]}'.",
        )
    if request.output_format is not None and request.output_format not in OUTPUT_FORMATS:
        raise InvalidRequest(
            f"'{model.id}' makes jpeg or png images, not '{request.output_format}'.",
            param="output_format",
            code=INVALID_VALUE,
        )


def _no_images(failures: list[dict[str, Any]], rid: str | None) -> Exception:
    if not failures:
        return malformed("Ark answered without images.", rid)
    for failure in failures:
        code = str(failure.get("code") or "")
        if is_moderation_code(code):
            return content_policy_violation(
                f"ark refused the content: {failure.get('message') or code}",
                upstream_request_id=rid,
            )
    first = failures[0]
    return UpstreamError(
        f"ark failed every image: {first.get('message') or first.get('code')}",
        code=str(first.get("code") or "upstream_error"),
        upstream_request_id=rid,
    )
