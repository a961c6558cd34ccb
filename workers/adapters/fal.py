"""``fal`` family: the fal queue API (``https://queue.fal.run``).

Every call carries ``Authorization: Key <FAL_KEY>``. The protocol:

1. ``POST {base_url}/{model.upstream}`` (the app path, e.g.
   ``fal-ai/z-image/turbo``) with the model input as JSON and
   ``X-Fal-Request-Timeout`` set to the seconds left before the job's
   deadline; the answer is ``{request_id, response_url, status_url,
   cancel_url, queue_position}``.
2. ``GET status_url`` every :data:`POLL_INTERVAL` seconds (growing to
   :data:`MAX_POLL_INTERVAL`; ``options.poll_interval`` /
   ``options.max_poll_interval`` override) while it says ``IN_QUEUE`` or
   ``IN_PROGRESS``, until ``COMPLETED``. The returned URLs are used as given
   (fal's leave the app's subpath out); they are rebuilt from ``base_url`` when
   missing or not on ``base_url``'s origin (scheme, host and port): they carry
   the key, which goes only to fal's own site (as BFL's and Replicate's keys
   go only to theirs), never to a host an answer names. Being the upstream's
   answer, not our configuration, they are fetched through the SSRF guard
   (``http.fetch_session``), like result files.
3. ``GET response_url`` for the output ``{images: [{url, width, height,
   content_type}], seed, has_nsfw_concepts: [bool], prompt, timings}``.

Field mapping (gateway request -> fal input):

* ``prompt`` -> ``prompt``; ``n`` -> ``num_images`` (at most
  ``options.max_images``, default 4: one submission, no fan-out);
* clamped size -> ``image_size: {"width", "height"}`` (none with
  ``options.image_size = false``: an inpainting app keeps the image's size); for models whose size
  rule is an aspect-ratio enum, ``aspect_ratio`` -> the fal preset of that
  ratio (``1:1`` ``square_hd``, ``4:3`` ``landscape_4_3``, ``3:4``
  ``portrait_4_3``, ``16:9`` ``landscape_16_9``, ``9:16`` ``portrait_16_9``);
* ``seed`` -> ``seed``; ``output_format`` (``jpeg``/``png``) -> ``output_format``;
* ``image`` (URL or data URL) -> the field named by ``options.image_field``
  (``image_url``, or ``image_urls`` as a list: an edit's images in order, up to
  the catalog's ``max_reference_images``) -- only for models that set it; a
  request with input images goes to ``options.edit_app`` when the model's
  image-to-image input is another fal app (``fal-ai/z-image/turbo`` ->
  ``fal-ai/z-image/turbo/image-to-image``);
* an edit's ``mask`` -> ``options.mask_field`` (e.g. ``mask_url``) as a PNG
  data URL painted white where to repaint
  (:func:`workers.adapters.masks.painted_mask`); without one it is a 400;
* always ``enable_safety_checker: true`` and ``sync_mode: false``; fixed
  per-model inputs from ``options.input`` (e.g. ``num_inference_steps``);
* any other request field (quality, style, background, user, moderation,
  output_compression, an aspect ratio without a preset) -> 400 naming the
  param: fal has nowhere to put it, and it is never silently dropped.

Output: ``images[].url`` -> fetched by the task (fal CDN URLs; data URIs are
decoded here); an image flagged in ``has_nsfw_concepts`` is moderated and
left out (the settlement refunds it); all flagged -> 400
``content_policy_violation``. A ``prompt`` that differs from ours (prompt
expansion) becomes ``revised_prompt``.

Errors: fal answers ``{"detail": "..."}`` (+ ``error_type`` / the
``X-Fal-Error-Type`` header) or, for input validation, FastAPI's 422
``{"detail": [{loc, msg, type}]}`` -> :func:`parse_fal_error` gives the
first message and its field (mapped back to the gateway's param name) to the
shared helper. A run that fails shows as ``COMPLETED`` with ``error`` /
``error_type``; its ``response_url`` then answers the app's own error, which
is translated like any other (no retries). When the deadline passes, or the
polling fails, after a submission: ``PUT cancel_url`` best effort, then the
error is raised (``DeadlineExceeded`` for the deadline).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
from pydantic import StrictBool

from shared.errors import (
    INVALID_VALUE,
    DeadlineExceeded,
    GatewayError,
    InvalidRequest,
    UpstreamError,
    content_policy_violation,
)
from shared.uploads import data_url
from workers.adapters.base import (
    AdapterOptions,
    CallContext,
    Count,
    GeneratedImage,
    ImageRequest,
    ImageResult,
    Seconds,
)
from workers.adapters.common import fields_set, image_of, malformed, unsupported
from workers.adapters.masks import painted_mask
from workers.http import UpstreamFault, UpstreamHTTP, default_error_parser, request_id_of

POLL_INTERVAL = 0.5  # seconds before the first status poll
MAX_POLL_INTERVAL = 2.0  # the interval grows by half each poll up to this
DEFAULT_MAX_IMAGES = 4  # fal image apps take num_images 1..4

PRESETS: dict[str, str] = {
    "1:1": "square_hd",
    "4:3": "landscape_4_3",
    "3:4": "portrait_4_3",
    "16:9": "landscape_16_9",
    "9:16": "portrait_16_9",
}

# Not in fal's documented state machine, but seen in third-party schemas [T].
FAILED = frozenset({"FAILED", "ERROR", "CANCELED", "CANCELLED"})

MODERATION_TYPES = frozenset({"content_policy_violation"})
# error_type values of a failed run that are the request's fault, not fal's.
CLIENT_ERROR_TYPES = frozenset(
    {"validation_error", "value_error", "bad_request", "invalid_input", "unprocessable_entity"}
)

# fal input field -> the gateway request field a client set it with.
CLIENT_PARAM = {
    "num_images": "n",
    "image_size": "size",
    "image_url": "image",
    "image_urls": "image",
    "mask_url": "mask",
    "prompt": "prompt",
    "seed": "seed",
    "output_format": "output_format",
}

# Request fields fal has no input for: a client that sets one gets a 400.
_UNSUPPORTED = ("quality", "style", "background", "user")


class FalOptions(AdapterOptions):
    """``options`` of a fal model."""

    poll_interval: Seconds = POLL_INTERVAL
    max_poll_interval: Seconds = MAX_POLL_INTERVAL
    max_images: Count = DEFAULT_MAX_IMAGES
    image_field: str | None = None
    """Where a reference image goes (``image_url``, or ``image_urls`` as a list); unset:
    the model takes none."""
    edit_app: str | None = None
    """The fal app that takes the input images, when not the model's own (``upstream``)."""
    mask_field: str | None = None
    """Where an edit's mask goes (painted white where to repaint); unset: no mask."""
    image_size: StrictBool = True
    """False: the app takes no ``image_size`` (an inpainting app keeps the image's)."""
    input: dict[str, Any] = {}
    """Fixed inputs sent with every request (e.g. ``num_inference_steps``)."""


class FalAdapter:
    options_model = FalOptions

    def generate(self, request: ImageRequest, ctx: CallContext) -> ImageResult:
        body = build_input(request, ctx)
        http = dataclasses.replace(ctx.http, error_parser=parse_fal_error)
        auth = {"Authorization": f"Key {ctx.api_key}"}
        options = FalOptions.of(request.model)

        headers = dict(auth)
        if (left := int(http.remaining())) >= 2:
            headers["X-Fal-Request-Timeout"] = str(left)
        app = request.model.upstream
        if request.image is not None and options.edit_app:
            app = options.edit_app  # the model's image-to-image app
        submitted = http.request("POST", f"{ctx.base_url}/{app}", json_body=body, headers=headers)
        handle = _Handle.from_submit(http.json(submitted), submitted, ctx.base_url, request)

        completed = False
        try:
            status = self._wait(http, handle, auth, options)
            completed = True
            payload = self._fetch_output(http, handle, auth, status)
        except (DeadlineExceeded, GatewayError):
            if not completed:
                http.best_effort("PUT", handle.cancel_url, headers=auth, guarded=True)
            raise
        return _result(payload, handle.request_id, request.prompt)

    def _wait(
        self,
        http: UpstreamHTTP,
        handle: _Handle,
        auth: Mapping[str, str],
        options: FalOptions,
    ) -> dict[str, Any]:
        interval = options.poll_interval
        ceiling = max(interval, options.max_poll_interval)
        while True:
            http.pause(interval)
            interval = min(ceiling, interval * 1.5)
            response = http.request("GET", handle.status_url, headers=auth, guarded=True)
            status = http.json(response)
            if not isinstance(status, dict):
                raise _malformed("a status that is not an object", handle.request_id)
            state = str(status.get("status", "")).upper()
            if state == "COMPLETED" or state in FAILED:
                return status
            # IN_QUEUE / IN_PROGRESS, or a state we do not know: keep polling
            # (the deadline bounds the wait).

    def _fetch_output(
        self,
        http: UpstreamHTTP,
        handle: _Handle,
        auth: Mapping[str, str],
        status: dict[str, Any],
    ) -> Any:
        failed = bool(status.get("error")) or str(status.get("status")).upper() in FAILED
        # A failed run's response_url answers the app's own error (e.g. 422 with
        # the validation details): the best account of what went wrong. Fetched
        # once, as retrying cannot change it.
        response = http.request(
            "GET", handle.response_url, headers=auth, retry=not failed, guarded=True
        )
        if failed:
            raise _run_failure(status, handle.request_id)
        return http.json(response)


@dataclasses.dataclass(frozen=True)
class _Handle:
    request_id: str
    status_url: str
    response_url: str
    cancel_url: str

    @classmethod
    def from_submit(
        cls, payload: Any, response: requests.Response, base_url: str, request: ImageRequest
    ) -> _Handle:
        if not isinstance(payload, dict):
            raise _malformed("a submission answer that is not an object", request_id_of(response))
        rid = payload.get("request_id")
        if not isinstance(rid, str) or not rid:
            raise _malformed("a submission answer without request_id", request_id_of(response))
        # fal's queue URLs keep only owner/app of the app path.
        root = "/".join(request.model.upstream.strip("/").split("/")[:2])
        fallback = f"{base_url}/{root}/requests/{rid}"

        def url(name: str, default: str) -> str:
            value = payload.get(name)
            ok = isinstance(value, str) and same_origin(value, base_url)
            return value if ok else default

        return cls(
            request_id=rid,
            status_url=url("status_url", f"{fallback}/status"),
            response_url=url("response_url", fallback),
            cancel_url=url("cancel_url", f"{fallback}/cancel"),
        )


def same_origin(url: str, base_url: str) -> bool:
    """Whether ``url`` is on ``base_url``'s origin: the same scheme, host and port
    (a default port written out or not), so a request to it may carry the key."""
    try:
        target, base = urlsplit(url), urlsplit(base_url)
        ports = target.port, base.port
    except ValueError:  # a malformed port
        return False
    defaults = {"http": 80, "https": 443}
    return (
        target.scheme.lower() in defaults
        and target.scheme.lower() == base.scheme.lower()
        and (target.hostname or "") == (base.hostname or "")
        and (ports[0] or defaults[target.scheme.lower()])
        == (ports[1] or defaults.get(base.scheme.lower()))
    )


def build_input(request: ImageRequest, ctx: CallContext | None = None) -> dict[str, Any]:
    """The fal model input for ``request``; InvalidRequest for what fal cannot take."""
    options = FalOptions.of(request.model)
    given = fields_set(request)
    for name in (*_UNSUPPORTED, *sorted(request.extra)):
        if name in given:
            raise _unsupported(name, request)

    max_images = options.max_images
    if not 1 <= request.n <= max_images:
        raise InvalidRequest(
            f"n must be between 1 and {max_images} for model '{request.model.id}'.",
            param="n",
            code=INVALID_VALUE,
        )
    body: dict[str, Any] = {"prompt": request.prompt, "num_images": request.n}
    if not options.image_size:
        pass  # the output follows the input image
    elif request.width is not None and request.height is not None:
        body["image_size"] = {"width": request.width, "height": request.height}
    elif request.aspect_ratio is not None:
        preset = PRESETS.get(request.aspect_ratio)
        if preset is None:
            raise InvalidRequest(
                f"aspect_ratio {request.aspect_ratio} is not supported by model "
                f"'{request.model.id}'; supported: {', '.join(PRESETS)}.",
                param="aspect_ratio",
                code=INVALID_VALUE,
            )
        body["image_size"] = preset
    if request.seed is not None:
        body["seed"] = request.seed
    if request.output_format is not None:
        if request.output_format not in ("jpeg", "png"):
            raise InvalidRequest(
                f"output_format '{request.output_format}' is not supported by model "
                f"'{request.model.id}'; use 'jpeg' or 'png'.",
                param="output_format",
                code=INVALID_VALUE,
            )
        body["output_format"] = request.output_format
    if request.image is not None:
        image_field = options.image_field
        if not image_field:
            raise _unsupported("image", request)
        images = request.images or (request.image,)
        body[image_field] = list(images) if image_field.endswith("s") else images[0]
    if request.mask is not None:
        if not options.mask_field or ctx is None:
            raise _unsupported("mask", request)
        body[options.mask_field] = data_url(painted_mask(request.mask, ctx), "image/png")
    body.update({k: v for k, v in options.input.items() if k not in body})
    body["enable_safety_checker"] = True
    body["sync_mode"] = False
    return body


def parse_fal_error(response: requests.Response) -> UpstreamFault:
    """fal's error bodies: ``{"detail": str | [{loc, msg, type}], "error_type"?}``."""
    try:
        body = response.json()
    except ValueError:
        return default_error_parser(response)
    if not isinstance(body, dict) or "detail" not in body:
        return default_error_parser(response)
    detail = body["detail"]
    error_type = body.get("error_type") or response.headers.get("x-fal-error-type") or None
    if isinstance(detail, list) and detail:
        items = [d for d in detail if isinstance(d, dict)]
        if not items:
            return UpstreamFault(json.dumps(detail)[:300], error_type)
        first = items[0]
        field = _field_of(first.get("loc"))
        messages = []
        for item in items[:3]:
            where = _field_of(item.get("loc"))
            msg = str(item.get("msg") or item.get("type") or "invalid")
            messages.append(f"{where}: {msg}" if where else msg)
        types = {str(i.get("type")) for i in items}
        code = str(first.get("type")) if first.get("type") else error_type
        return UpstreamFault(
            "; ".join(messages),
            code,
            CLIENT_PARAM.get(field, field) if field else None,
            moderated=bool(types & MODERATION_TYPES) or error_type in MODERATION_TYPES,
        )
    message = detail if isinstance(detail, str) else json.dumps(detail)[:300]
    return UpstreamFault(
        message or response.reason or "no details",
        str(error_type) if error_type else None,
        moderated=error_type in MODERATION_TYPES,
    )


def _field_of(loc: Any) -> str | None:
    if not isinstance(loc, list):
        return None
    parts = [str(p) for p in loc if p != "body"]
    return parts[0] if parts else None


def _run_failure(status: dict[str, Any], rid: str) -> GatewayError:
    """The error of a run that fal reported failed but whose result did not say why."""
    error = str(status.get("error") or status.get("status") or "failed")
    error_type = str(status["error_type"]) if status.get("error_type") else None
    message = f"fal failed the generation: {error}" + (f" ({error_type})" if error_type else "")
    if error_type in MODERATION_TYPES:
        return content_policy_violation(message, upstream_request_id=rid)
    if error_type in CLIENT_ERROR_TYPES or re.search(r"\b(400|422)\b", error):
        return InvalidRequest(
            message,
            code=error_type or "upstream_rejected",
            headers={"x-upstream-request-id": rid},
        )
    return UpstreamError(message, code=error_type or "upstream_failed", upstream_request_id=rid)


def _result(payload: Any, rid: str, prompt: str) -> ImageResult:
    if not isinstance(payload, dict) or not isinstance(payload.get("images"), list):
        raise _malformed("an output without an images list", rid)
    flags = payload.get("has_nsfw_concepts")
    flags = flags if isinstance(flags, list) else []
    revised = payload.get("prompt")
    revised = revised if isinstance(revised, str) and revised != prompt else None
    images: list[GeneratedImage] = []
    moderated = 0
    for index, item in enumerate(payload["images"]):
        if index < len(flags) and flags[index] is True:
            moderated += 1
            continue
        images.append(image_of(item, rid, "fal", revised_prompt=revised))
    if not images:
        if moderated:
            raise content_policy_violation(
                "fal's safety checker flagged every generated image.", upstream_request_id=rid
            )
        raise _malformed("an output without images", rid)
    return ImageResult(images=images, upstream_request_id=rid)


def _unsupported(name: str, request: ImageRequest) -> InvalidRequest:
    return unsupported(name, f"'{name}' is not supported by model '{request.model.id}'.")


def _malformed(what: str, rid: str | None) -> UpstreamError:
    return malformed(f"fal sent {what}.", rid)
