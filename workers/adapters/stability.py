"""``stability`` family: Stability AI's v2beta Stable Image API (Ultra, Core, SD3.5).

``POST {base_url}{model.options.endpoint}`` — ``/v2beta/stable-image/generate/
ultra``, ``/core`` or ``/sd3`` — with ``Authorization: Bearer <key>`` and
``Accept: image/*``. Synchronous; the body is ``multipart/form-data`` (a dummy
``none`` file part forces multipart when there is no image). One image per
call, so ``n > 1`` is fanned out (:func:`workers.fanout.fan_out`). Field mapping
(gateway request -> form parts):

* ``prompt`` as is; the clamped ``aspect_ratio`` (the model's size rule is
  Stability's ratio enum; a ``WxH`` size is mapped to the nearest ratio) ->
  ``aspect_ratio`` (text-to-image only);
* ``seed`` -> ``seed`` (0-4294967294, 0 = random); image *i* of a fan-out gets
  ``seed + i`` so the n images differ but stay reproducible;
* ``output_format`` -> ``output_format`` (png/jpeg/webp; sd3: png/jpeg);
* sd3 only: ``model.upstream`` -> ``model`` (``sd3.5-large`` ...), and
  ``mode`` = ``text-to-image`` or ``image-to-image``;
* ``image`` (ultra and sd3): a data URL is decoded, an http(s) URL fetched
  with a size cap (Stability wants the file itself) -> the ``image`` file part,
  plus ``strength`` (``model.options.strength``, default
  :data:`DEFAULT_STRENGTH`); ``aspect_ratio`` is then left out (the output
  follows the input image);
* an edit on the inpainting model (``/v2beta/stable-image/edit/inpaint``):
  the first image -> the ``image`` file part, OpenAI's ``mask`` (transparent =
  edit) -> the ``mask`` file part painted white where to repaint
  (:func:`workers.adapters.masks.painted_mask`); without a mask Stability
  takes the image's alpha channel, as dall-e-2 does. No ``aspect_ratio`` or
  ``strength`` (the output keeps the image's size); without an image it is a
  400 naming ``image``, and a mask on any other endpoint one naming ``mask``;
* ``user`` -> the ``stability-client-user-id`` header; ``stability-client-id``
  names the gateway;
* ``quality`` (other than ``auto``), ``style``, ``background`` other than
  ``auto``/``opaque``, ``output_compression`` and ``moderation`` other than
  ``auto`` have no Stability field and are refused naming the param, as is
  ``image`` for core and ``webp`` for sd3. ``negative_prompt`` and
  ``style_preset`` are not OpenAI fields and are not sent.

The answer is the image bytes, with ``finish-reason`` (``SUCCESS`` |
``CONTENT_FILTERED``) and ``seed`` headers; a JSON answer
``{"image", "finish_reason", "seed"}`` is understood too. ``CONTENT_FILTERED``
(a blurred, policy-violating image) is not delivered: it becomes 400
``content_policy_violation``. Errors are ``{"id", "name", "errors": [...]}``,
read by :func:`stability_error_parser`: ``name: "content_moderation"`` (403)
is a moderation refusal, 400/422 reach the client as ``invalid_request_error``
with the upstream's message (and the param when the message names a field),
401/403 are the gateway's credentials, 429 (150 requests / 10 s, then a 60 s
lockout) and 5xx are retried by the HTTP helper. There is no cancel call.
"""

from __future__ import annotations

import binascii
import dataclasses
import json
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Annotated
from urllib.parse import quote, unquote_to_bytes

import pybase64 as base64
import requests
from pydantic import Field

from shared.catalog import Model
from shared.errors import (
    CATALOG_MISCONFIGURED,
    IMAGE_TOO_LARGE,
    INVALID_IMAGE,
    INVALID_VALUE,
    MISSING_REQUIRED_PARAMETER,
    InvalidRequest,
    ServerError,
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
from workers.adapters.common import RequestIds, malformed, unsupported
from workers.adapters.masks import painted_mask
from workers.fanout import fan_out
from workers.http import UpstreamFault, UpstreamHTTP, default_error_parser, request_id_of

MAX_SEED = 4294967294
DEFAULT_STRENGTH = 0.6
CLIENT_ID = "imagegate"
# Stability refuses bodies over 10 MiB (413); leave room for the other parts.
MAX_REQUEST_BYTES = 10 * 1024 * 1024
MAX_IMAGE_BYTES = MAX_REQUEST_BYTES - 64 * 1024
MAX_USER_HEADER = 256

RATIOS = ("1:1", "16:9", "21:9", "2:3", "3:2", "4:5", "5:4", "9:16", "9:21")

# Form fields whose name, when an upstream error message starts with it, is the
# gateway param to blame (fields the adapter sets itself blame nothing, or `image`).
_PARAM_OF_FIELD: dict[str, str | None] = {
    "prompt": "prompt",
    "negative_prompt": None,
    "aspect_ratio": "aspect_ratio",
    "seed": "seed",
    "output_format": "output_format",
    "image": "image",
    "mask": "mask",
    "strength": "image",
    "style_preset": None,
    "model": None,
    "mode": None,
    "cfg_scale": None,
}
# Error names too generic to be worth passing on as the error code.
_GENERIC_NAMES = frozenset({"bad_request", "internal_error", "error", "unknown"})
_MODERATION_NAMES = frozenset({"content_moderation"})


@dataclass(frozen=True)
class EndpointSpec:
    """What one v2beta endpoint takes."""

    kind: str
    formats: tuple[str, ...]
    takes_image: bool
    sends_model: bool  # sd3: `model` and `mode` form fields
    inpaint: bool = False  # /edit/inpaint: image required, mask, no ratio or strength


ENDPOINTS: dict[str, EndpointSpec] = {
    "ultra": EndpointSpec("ultra", ("png", "jpeg", "webp"), True, False),
    "core": EndpointSpec("core", ("png", "jpeg", "webp"), False, False),
    "sd3": EndpointSpec("sd3", ("png", "jpeg"), True, True),
    "inpaint": EndpointSpec("inpaint", ("png", "jpeg", "webp"), True, False, inpaint=True),
}
_DEFAULT_PATH = "/v2beta/stable-image/generate/{kind}"
_INPAINT_PATH = "/v2beta/stable-image/edit/inpaint"


def stability_error_parser(response: requests.Response) -> UpstreamFault:
    """Read Stability's ``{"id", "name", "errors": [...]}`` error body (tolerantly)."""
    try:
        body = response.json()
    except ValueError:
        return default_error_parser(response)
    if not isinstance(body, dict) or not ({"errors", "name"} & body.keys()):
        return default_error_parser(response)
    name = body.get("name") if isinstance(body.get("name"), str) else None
    errors = body.get("errors")
    if isinstance(errors, str):
        messages = [errors]
    elif isinstance(errors, list):
        messages = [e if isinstance(e, str) else json.dumps(e) for e in errors]
    else:
        messages = []
    if not messages and isinstance(body.get("message"), str):
        messages = [body["message"]]
    message = "; ".join(messages)[:1000] or name or response.reason or "no details"
    param = None
    if messages:
        field = re.match(r"\s*([a-z_]+)\s*:", messages[0])
        if field:
            param = _PARAM_OF_FIELD.get(field.group(1))
    return UpstreamFault(
        message,
        code=name if name and name not in _GENERIC_NAMES else None,
        param=param,
        moderated=name in _MODERATION_NAMES,
    )


class StabilityOptions(AdapterOptions):
    """``options`` of a Stability model."""

    endpoint: str | None = None
    """The v2beta path, ending in /ultra, /core or /sd3 (default: by the upstream name)."""
    strength: Annotated[float, Field(ge=0, le=1)] = DEFAULT_STRENGTH
    """How far an image-to-image result may stray from the reference image."""


class StabilityAdapter:
    options_model = StabilityOptions

    def check_model(self, model: Model) -> None:
        _endpoint(model, StabilityOptions.of(model))

    def generate(self, request: ImageRequest, ctx: CallContext) -> ImageResult:
        options = StabilityOptions.of(request.model)
        spec = _endpoint(request.model, options)
        _refuse_unsupported(request, spec)
        http = dataclasses.replace(ctx.http, error_parser=stability_error_parser)
        fields: dict[str, str] = {"prompt": request.prompt}
        if request.output_format:
            fields["output_format"] = request.output_format
        files: dict[str, tuple[str, bytes] | tuple[str, bytes, str]]
        if spec.inpaint:
            files = _inpainting(request, ctx)
        elif request.image is not None:
            data, content_type = _reference_image(request.image, ctx)
            fields["strength"] = str(options.strength)
            files = {"image": (f"image.{_EXTENSIONS.get(content_type, 'bin')}", data, content_type)}
        else:
            fields["aspect_ratio"] = _aspect_ratio(request)
            files = {"none": ("", b"")}
        if spec.sends_model:  # (sd3)
            fields["model"] = request.model.upstream
            fields["mode"] = "image-to-image" if request.image is not None else "text-to-image"
        headers = {"Authorization": f"Bearer {ctx.api_key}", "Accept": "image/*"}
        headers["stability-client-id"] = CLIENT_ID
        if request.user:
            user = request.user if request.user.isascii() else quote(request.user, safe="")
            headers["stability-client-user-id"] = user[:MAX_USER_HEADER]
        url = f"{ctx.base_url.rstrip('/')}{_path(options, spec)}"
        request_ids = RequestIds()

        def make_one(index: int, http: UpstreamHTTP) -> GeneratedImage:
            part = dict(fields)
            if request.seed is not None:
                part["seed"] = str(_seed_for(request.seed, index))
            response = http.request("POST", url, data=part, files=files, headers=headers)
            request_ids.add(request_id_of(response), index)
            return _image_of(response, http)

        images = fan_out(request.n, http, make_one)
        return ImageResult(images=images, upstream_request_id=request_ids.first())


# -- request ---------------------------------------------------------------------


def _endpoint(model: Model, options: StabilityOptions) -> EndpointSpec:
    path = options.endpoint or ""
    if path:
        kind = path.rstrip("/").rsplit("/", 1)[-1]
    else:  # no endpoint configured: the upstream name says which one
        upstream = model.upstream
        kind = "sd3" if upstream.startswith("sd3") else upstream
    spec = ENDPOINTS.get(kind)
    if spec is None:
        raise ServerError(
            f"The catalog entry '{model.id}' names no Stability endpoint "
            "(options.endpoint must end in /ultra, /core, /sd3 or /inpaint).",
            code=CATALOG_MISCONFIGURED,
        )
    return spec


def _path(options: StabilityOptions, spec: EndpointSpec) -> str:
    default = _INPAINT_PATH if spec.inpaint else _DEFAULT_PATH.format(kind=spec.kind)
    path = options.endpoint or default
    return path if path.startswith("/") else f"/{path}"


def _refuse_unsupported(request: ImageRequest, spec: EndpointSpec) -> None:
    """Refuse what Stability cannot honour, naming the param (never drop it silently)."""

    def refuse(param: str, why: str) -> InvalidRequest:
        return unsupported(param, f"'{request.model.id}' (Stability {spec.kind}) {why}.")

    if request.quality not in (None, "auto"):
        raise refuse("quality", "has no quality setting")
    if request.style is not None:
        raise refuse("style", "has no style setting")
    if request.background not in (None, "auto", "opaque"):
        raise refuse("background", "makes opaque images only")
    for name, value in request.extra.items():
        if name == "moderation" and value == "auto":
            continue
        raise refuse(name, f"does not support '{name}'")
    if request.output_format is not None and request.output_format not in spec.formats:
        raise InvalidRequest(
            f"'{request.model.id}' (Stability {spec.kind}) makes "
            f"{', '.join(spec.formats)} images, not {request.output_format}.",
            param="output_format",
            code=INVALID_VALUE,
        )
    if request.seed is not None and not 0 <= request.seed <= MAX_SEED:
        raise InvalidRequest(
            f"seed must be between 0 and {MAX_SEED}.", param="seed", code=INVALID_VALUE
        )
    if request.image is not None and not spec.takes_image:
        raise refuse("image", "does not take a reference image")
    if request.mask is not None and not spec.inpaint:
        raise refuse("mask", "takes no mask (Stability's inpainting model does)")
    if spec.inpaint and request.image is None:
        raise InvalidRequest(
            f"'{request.model.id}' repaints an image: send it to POST /v1/images/edits with "
            "the image and a mask (or an image whose transparent pixels are the mask).",
            param="image",
            code=MISSING_REQUIRED_PARAMETER,
        )


def _inpainting(request: ImageRequest, ctx: CallContext) -> dict[str, tuple[str, bytes, str]]:
    """The file parts of an inpainting call: the image, and OpenAI's mask painted white
    where to repaint (without one, Stability takes the image's alpha channel, as OpenAI's
    dall-e-2 does)."""
    assert request.image is not None  # _refuse_unsupported
    data, content_type = _reference_image(request.image, ctx)
    files = {"image": (f"image.{_EXTENSIONS.get(content_type, 'bin')}", data, content_type)}
    if request.mask is not None:
        files["mask"] = ("mask.png", painted_mask(request.mask, ctx), "image/png")
    return files


def _aspect_ratio(request: ImageRequest) -> str:
    if request.aspect_ratio in RATIOS:
        return request.aspect_ratio
    if request.aspect_ratio:
        w, _, h = request.aspect_ratio.partition(":")
        try:
            target = Fraction(int(w), int(h))
            if target <= 0:
                raise ValueError(request.aspect_ratio)
        except (ValueError, ZeroDivisionError):
            raise InvalidRequest(
                f"Invalid aspect_ratio '{request.aspect_ratio}'.",
                param="aspect_ratio",
                code=INVALID_VALUE,
            ) from None
    elif request.width and request.height:
        target = Fraction(request.width, request.height)
    else:
        return "1:1"

    def spread(ratio: str) -> float:
        w, _, h = ratio.partition(":")
        return abs(math.log(Fraction(int(w), int(h)) / target))

    return min(RATIOS, key=spread)


def _seed_for(seed: int, index: int) -> int:
    """Image ``index``'s seed: ``seed + index`` within 1..MAX_SEED (0 stays random)."""
    if seed == 0:
        return 0
    return (seed - 1 + index) % MAX_SEED + 1


_DATA_URL = re.compile(r"data:(?P<type>[^;,]*)(?P<params>(?:;[^;,]*)*),(?P<data>.*)", re.DOTALL)


def _reference_image(image: str, ctx: CallContext) -> tuple[bytes, str]:
    """The reference image's bytes and content type, from a data URL or a download."""
    if image.startswith("data:"):
        data = _decode_data_url(image)
    elif image.startswith(("https://", "http://")):
        try:
            data, _ = (ctx.client_http or ctx.http).download(image, max_bytes=MAX_IMAGE_BYTES)
        except UpstreamError as exc:
            # The URL is the client's, not the upstream's: its failure is a bad request.
            raise InvalidRequest(
                f"Could not fetch the reference image: {exc.message}",
                param="image",
                code="invalid_image_url",
            ) from exc
    else:
        raise InvalidRequest(
            "image must be an https URL or a data URL.", param="image", code=INVALID_VALUE
        )
    if not data:
        raise InvalidRequest("The reference image is empty.", param="image", code=INVALID_IMAGE)
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidRequest(
            f"The reference image is larger than {MAX_IMAGE_BYTES} bytes, Stability's limit.",
            param="image",
            code=IMAGE_TOO_LARGE,
        )
    return data, _sniff(data)


def _decode_data_url(url: str) -> bytes:
    match = _DATA_URL.fullmatch(url)
    if match is None:
        raise InvalidRequest("image is not a valid data URL.", param="image", code=INVALID_IMAGE)
    payload = match["data"]
    if len(payload) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise InvalidRequest(
            f"The reference image is larger than {MAX_IMAGE_BYTES} bytes, Stability's limit.",
            param="image",
            code=IMAGE_TOO_LARGE,
        )
    if ";base64" in match["params"].lower():
        try:
            return base64.b64decode("".join(payload.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidRequest(
                "image is a data URL with invalid base64.", param="image", code=INVALID_IMAGE
            ) from exc
    return unquote_to_bytes(payload)


_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp"}


def _sniff(data: bytes) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"  # Stability judges it (400 naming `image`)


# -- response --------------------------------------------------------------------


def _image_of(response: requests.Response, http: UpstreamHTTP) -> GeneratedImage:
    rid = request_id_of(response)
    content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    finish = response.headers.get("finish-reason")
    if content_type == "application/json":
        payload = http.json(response)
        if not isinstance(payload, dict) or not isinstance(payload.get("image"), str):
            raise malformed("The upstream answered JSON without an image.", rid)
        if isinstance(payload.get("finish_reason"), str):
            finish = payload["finish_reason"]
        try:
            data = base64.b64decode(payload["image"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise malformed("The upstream sent invalid base64 image data.", rid) from exc
    elif content_type.startswith("image/"):
        data = response.content
    else:
        raise malformed(
            f"The upstream answered {content_type or 'no content type'} instead of an image.", rid
        )
    finish = (finish or "SUCCESS").strip().upper()
    if finish == "CONTENT_FILTERED":
        raise content_policy_violation(
            "stability filtered the generated image: it may violate the content policy.",
            upstream_request_id=rid,
        )
    if finish == "ERROR":
        raise UpstreamError(
            "stability reported an error generating the image.",
            code="upstream_generation_failed",
            upstream_request_id=rid,
        )
    if not data:
        raise malformed("The upstream answered an empty image.", rid)
    return GeneratedImage(data=data)
