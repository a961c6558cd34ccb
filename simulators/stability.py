"""Simulator of Stability AI's v2beta Stable Image API (``https://api.stability.ai``).

It stands in for the real upstream in tests and load runs, so it imports
nothing from the gateway. This docstring is its specification: what it
imitates of Stability's v2beta API reference, and where it chooses.

Endpoints (synchronous, one image per call, ``Authorization: Bearer <key>``)::

    POST /v2beta/stable-image/generate/ultra
    POST /v2beta/stable-image/generate/core
    POST /v2beta/stable-image/generate/sd3
    POST /v2beta/stable-image/edit/inpaint

Request body: ``multipart/form-data`` only (anything else is a 400). A dummy
file part named ``none`` (what clients add to force multipart) is ignored.
Fields, all sent as form parts:

=============== ===================== ===================== =========================
field           ultra                 core                  sd3
=============== ===================== ===================== =========================
prompt          required, 1-10000     required, 1-10000     required, 1-10000
negative_prompt <= 10000              <= 10000              <= 10000
aspect_ratio    16:9 1:1 21:9 2:3 3:2 4:5 5:4 9:16 9:21 (default 1:1), text-to-image only
seed            integer 0-4294967294 (0 or absent = random)
output_format   png jpeg webp         png jpeg webp         png jpeg
style_preset    17 presets            17 presets            unknown
image           file part             unknown               file part (image-to-image)
strength        0-1, required with    unknown               0-1, required in
                image                                       image-to-image mode
model           unknown               unknown               sd3.5-large (default),
                                                            sd3.5-large-turbo, ...
mode            unknown               unknown               text-to-image (default) |
                                                            image-to-image
cfg_scale       unknown               unknown               number 1-10
=============== ===================== ===================== =========================

"unknown" fields and unknown file parts are a 400. A reference ``image`` must
be a PNG, JPEG or WebP file whose sides are 64-16384 px and that has at least
4096 pixels; with an image, ``aspect_ratio`` is refused (judgement call: the
upstream documents it as text-to-image only). Bodies over 10 MiB are a 413.

Inpainting (``/edit/inpaint``) takes ``prompt``, ``negative_prompt``,
``seed``, ``output_format`` (png jpeg webp), ``style_preset``, ``grow_mask``
(0-100), the required file ``image`` and the optional file ``mask``: a
black-and-white image whose white pixels are repainted (grey is partial).
Without ``mask`` the image's alpha channel is the mask, so an image without one
is a 400 ``mask: required when the image has no alpha channel``. Judgement
call: a mask must be the image's size (the upstream's reference leaves it
open). ``aspect_ratio`` and ``strength`` are unknown fields there; the answer
has the input image's size.

Response (200): with ``Accept: image/*`` (or none) the raw image bytes in the
requested format (``content-type: image/png`` ...); with ``Accept:
application/json`` ``{"image": "<base64>", "finish_reason", "seed"}``. Other
``Accept`` values are a 400. Both carry headers ``finish-reason`` (``SUCCESS``
or ``CONTENT_FILTERED``) and ``seed`` (a random one when none was asked).
Text-to-image sizes are the upstream's ~1 MP buckets (1:1 1024x1024, 16:9
1344x768, 21:9 1536x640, 3:2 1216x832, 5:4 1088x896 and their transposes);
image-to-image answers ~1 MP at the input image's ratio (sides multiples of
64). Images are real, solid-colour files; the colour follows the seed.

Errors are ``{"id", "name", "errors": ["<field>: <message>", ...]}`` with the
same ``id`` in the ``x-request-id`` header (every response carries one):

* 401 ``unauthorized``: missing or wrong bearer key.
* 400 ``bad_request``: validation, as above.
* 403 ``content_moderation``: a prompt containing the word "forbidden".
* 413 ``payload_too_large``: body over 10 MiB.
* Injected failures (a fault the request names in an ``X-Sim-Fault`` header or
  in its ``prompt`` part, see :mod:`simulators.base`; ``/_sim/config``): 429
  ``rate_limit_exceeded`` (the upstream's 150 requests / 10 s lockout message),
  422 ``invalid_language``,
  500/503/504 ``internal_error``; 502 answers an HTML page, as a proxy in
  front of the upstream would; other 4xx a ``bad_request``-style body named
  after the status. ``retry_after`` adds ``Retry-After``.

Other outcomes, by prompt word or knob:

* the word "filtered", or a positive ``drop_images`` (each answer consumes
  one): 200 with ``finish-reason: CONTENT_FILTERED`` and a grey (blurred)
  image, the way the upstream drops a policy-violating output. Stability makes
  one image per call, so this is how ``drop_images`` shows here.
* the marker ``[sim:garbled]``: 200 ``application/json`` with a truncated
  body (a broken upstream answer).

Order of processing for a generation request: record it in the request log
(form fields, file parts with size/sha256/dimensions, status), sleep
``latency``, check the key, inject a failure (a named fault, then
``fail_next``, then ``failure_rate``), check the size (413), validate, moderate, generate. A
request with a bad key does not use up ``fail_next``.

``poll_steps`` does not apply (the protocol is synchronous). The upstream
returns bytes, not URLs; ``result_ttl`` applies to the files tests host here
as client reference images: ``POST /_sim/files`` (raw body and its
``Content-Type``) answers ``{"url"}``, and ``GET /_sim/files/<name>`` answers
404 once the file is older than ``result_ttl`` seconds.

Test/control endpoints: ``GET|POST /_sim/config`` (POST merges JSON),
``GET|DELETE /_sim/requests``, ``POST /_sim/reset``, ``GET /_sim/health``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import random
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from flask import Response, g, jsonify, request
from PIL import Image, UnidentifiedImageError
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import HTTPException

from simulators.base import (
    CONTENT_TYPES,
    FORBIDDEN_WORD,
    SimError,
    Simulator,
    credential,
    retry_after_headers,
    route,
    solid_image,
    word,
)
from simulators.state import PALETTE, SimConfig

PROVIDER = "stability"

GENERATE_PREFIX = "/v2beta/stable-image/generate"
MAX_BODY_BYTES = 10 * 1024 * 1024
MAX_PROMPT = 10000
MAX_SEED = 4294967294
MIN_SIDE = 64
MAX_SIDE = 16384
MIN_PIXELS = 4096
TARGET_PIXELS = 1024 * 1024

# Text-to-image output sizes by aspect ratio (the upstream's ~1 MP buckets).
ASPECT_SIZES: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "16:9": (1344, 768),
    "9:16": (768, 1344),
    "21:9": (1536, 640),
    "9:21": (640, 1536),
    "3:2": (1216, 832),
    "2:3": (832, 1216),
    "5:4": (1088, 896),
    "4:5": (896, 1088),
}
STYLE_PRESETS = (
    "3d-model",
    "analog-film",
    "anime",
    "cinematic",
    "comic-book",
    "digital-art",
    "enhance",
    "fantasy-art",
    "isometric",
    "line-art",
    "low-poly",
    "modeling-compound",
    "neon-punk",
    "origami",
    "photographic",
    "pixel-art",
    "tile-texture",
)
SD3_MODELS = (
    "sd3.5-large",
    "sd3.5-large-turbo",
    "sd3.5-medium",
    "sd3.5-flash",
    "sd3-large",
    "sd3-large-turbo",
    "sd3-medium",
)
SD3_MODES = ("text-to-image", "image-to-image")
PIL_FORMATS = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}

COMMON_FIELDS = frozenset({"prompt", "negative_prompt", "aspect_ratio", "seed", "output_format"})
IGNORED_FILE_PARTS = frozenset({"none"})

FILTERED_WORD = word("filtered")
GARBLED_MARKER = "[sim:garbled]"

MODERATION_MESSAGE = (
    "Your request was flagged by our content moderation system, as a result your request "
    "was denied and you were not charged."
)
RATE_LIMIT_MESSAGE = (
    "You have exceeded the rate limit of 150 requests within a 10 second period, and have "
    "been blocked for the next 60 seconds."
)
SERVER_ERROR_MESSAGE = "An unexpected server error has occurred, please try again later."

FILTERED_COLOUR = (128, 128, 128)


@dataclass(frozen=True)
class EndpointSpec:
    name: str
    fields: frozenset[str]
    formats: tuple[str, ...]
    takes_image: bool
    inpaint: bool = False  # /edit/inpaint: image required, optional mask, same size out


ENDPOINTS: dict[str, EndpointSpec] = {
    "ultra": EndpointSpec(
        "ultra",
        COMMON_FIELDS | {"style_preset", "strength"},
        ("png", "jpeg", "webp"),
        True,
    ),
    "core": EndpointSpec("core", COMMON_FIELDS | {"style_preset"}, ("png", "jpeg", "webp"), False),
    "sd3": EndpointSpec(
        "sd3",
        COMMON_FIELDS | {"strength", "model", "mode", "cfg_scale"},
        ("png", "jpeg"),
        True,
    ),
    "inpaint": EndpointSpec(
        "inpaint",
        frozenset({"prompt", "negative_prompt", "seed", "output_format"})
        | {"style_preset", "grow_mask"},
        ("png", "jpeg", "webp"),
        True,
        inpaint=True,
    ),
}
EDIT_PREFIX = "/v2beta/stable-image/edit"


class ApiError(SimError):
    """A Stability-style error answer ``{"id", "name", "errors"}``."""

    def __init__(
        self,
        status: int,
        name: str,
        errors: list[str],
        *,
        headers: dict[str, str] | None = None,
        html: bool = False,
    ) -> None:
        super().__init__("; ".join(errors))
        self.status = status
        self.name = name
        self.errors = errors
        self.headers = headers or {}
        self.html = html

    def body(self) -> dict[str, Any]:
        return {"id": g.request_id, "name": self.name, "errors": self.errors}

    def response(self) -> Response:
        if not self.html:
            return super().response()
        # what a proxy in front of the upstream answers
        resp = Response(
            f"<html><head><title>{self.status} Bad Gateway</title></head>"
            f"<body><h1>{self.status} Bad Gateway</h1></body></html>",
            status=self.status,
            content_type="text/html",
        )
        for name, value in self.headers.items():
            resp.headers[name] = value
        return resp


def bad_request(*errors: str) -> ApiError:
    return ApiError(400, "bad_request", list(errors))


# -- parsing ---------------------------------------------------------------------


@dataclass(frozen=True)
class InputImage:
    data: bytes
    width: int
    height: int
    fmt: str


@dataclass(frozen=True)
class GenerationRequest:
    endpoint: EndpointSpec
    prompt: str
    width: int
    height: int
    seed: int  # 0 = random
    output_format: str
    image: InputImage | None
    model: str | None  # sd3 only


def _integer(form: dict[str, str], name: str, low: int, high: int) -> int | None:
    raw = form.get(name)
    if raw is None:
        return None
    if not re.fullmatch(r"[0-9]{1,12}", raw.strip()):
        raise bad_request(f"{name}: must be an integer")
    value = int(raw)
    if not low <= value <= high:
        raise bad_request(f"{name}: must be between {low} and {high}")
    return value


def _number(form: dict[str, str], name: str, low: float, high: float) -> float | None:
    raw = form.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise bad_request(f"{name}: must be a number") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise bad_request(f"{name}: must be between {low:g} and {high:g}")
    return value


def _choice(form: dict[str, str], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = form.get(name)
    if value is None:
        return default
    if value not in allowed:
        raise bad_request(f"{name}: must be one of [{', '.join(allowed)}]")
    return value


def _read_image(part: FileStorage, name: str = "image") -> InputImage:
    data = part.read()
    try:
        with Image.open(io.BytesIO(data)) as probe:
            fmt = PIL_FORMATS.get(probe.format or "")
            width, height = probe.size
            probe.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        fmt = None
        width = height = 0
    if fmt is None:
        raise bad_request(f"{name}: must be a valid png, jpeg or webp image")
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise bad_request(
            f"{name}: each side must be between {MIN_SIDE} and {MAX_SIDE} pixels, "
            f"got {width}x{height}"
        )
    if width * height < MIN_PIXELS:
        raise bad_request(f"{name}: must have at least {MIN_PIXELS} pixels")
    return InputImage(data, width, height, fmt)


def _size_like(image: InputImage) -> tuple[int, int]:
    ratio = image.width / image.height
    width = max(MIN_SIDE, 64 * round(math.sqrt(TARGET_PIXELS * ratio) / 64))
    height = max(MIN_SIDE, 64 * round(math.sqrt(TARGET_PIXELS / ratio) / 64))
    return width, height


def parse_generation(
    endpoint: EndpointSpec, form: dict[str, str], files: dict[str, FileStorage]
) -> GenerationRequest:
    """Validate one generation form like the upstream does; raises :class:`ApiError`."""
    unknown = sorted(set(form) - endpoint.fields)
    if unknown:
        raise bad_request(*(f"{name}: unknown field" for name in unknown))
    for name in files:
        if name in IGNORED_FILE_PARTS or (name == "image" and endpoint.takes_image):
            continue
        if name == "mask" and endpoint.inpaint:
            continue
        raise bad_request(f"{name}: unknown file field")
    if "image" in form or "mask" in form:
        raise bad_request(f"{'image' if 'image' in form else 'mask'}: must be sent as a file")

    prompt = form.get("prompt")
    if prompt is None or not prompt.strip():
        raise bad_request("prompt: cannot be empty")
    if len(prompt) > MAX_PROMPT:
        raise bad_request(f"prompt: must be at most {MAX_PROMPT} characters")
    if len(form.get("negative_prompt", "")) > MAX_PROMPT:
        raise bad_request(f"negative_prompt: must be at most {MAX_PROMPT} characters")
    seed = _integer(form, "seed", 0, MAX_SEED) or 0
    output_format = _choice(form, "output_format", endpoint.formats, "png")
    if "style_preset" in form:
        _choice(form, "style_preset", STYLE_PRESETS, "")
    if "cfg_scale" in form:
        _number(form, "cfg_scale", 1, 10)
    model = None
    if endpoint.name == "sd3":
        model = _choice(form, "model", SD3_MODELS, "sd3.5-large")

    if endpoint.inpaint:
        return _inpainting(endpoint, form, files, prompt, seed, output_format)
    image_part = files.get("image") if endpoint.takes_image else None
    strength = _number(form, "strength", 0, 1)
    if endpoint.name == "sd3":
        mode = _choice(form, "mode", SD3_MODES, "text-to-image")
        if mode == "image-to-image" and image_part is None:
            raise bad_request("image: required in image-to-image mode")
        if mode == "text-to-image" and image_part is not None:
            raise bad_request("image: not allowed in text-to-image mode")
        if mode == "text-to-image" and strength is not None:
            raise bad_request("strength: not allowed in text-to-image mode")
    if image_part is not None:
        if strength is None:
            raise bad_request("strength: required when an image is provided")
        if "aspect_ratio" in form:
            raise bad_request("aspect_ratio: only valid for text-to-image requests")
        image = _read_image(image_part)
        width, height = _size_like(image)
    else:
        if strength is not None:
            raise bad_request("strength: only valid with an image")
        image = None
        width, height = ASPECT_SIZES[_choice(form, "aspect_ratio", tuple(ASPECT_SIZES), "1:1")]
    return GenerationRequest(
        endpoint=endpoint,
        prompt=prompt,
        width=width,
        height=height,
        seed=seed,
        output_format=output_format,
        image=image,
        model=model,
    )


def _inpainting(
    endpoint: EndpointSpec,
    form: dict[str, str],
    files: dict[str, FileStorage],
    prompt: str,
    seed: int,
    output_format: str,
) -> GenerationRequest:
    """An /edit/inpaint request, validated: the image, and a mask of its size or its
    alpha channel; the answer keeps the image's size."""
    if "image" not in files:
        raise bad_request("image: required")
    if "grow_mask" in form:
        _number(form, "grow_mask", 0, 100)
    image = _read_image(files["image"])
    if "mask" in files:
        mask = _read_image(files["mask"], "mask")
        if (mask.width, mask.height) != (image.width, image.height):
            raise bad_request(
                f"mask: must be the image's size, {image.width}x{image.height}; "
                f"got {mask.width}x{mask.height}"
            )
    else:
        with Image.open(io.BytesIO(image.data)) as opened:
            if "A" not in opened.getbands() and "transparency" not in opened.info:
                raise bad_request("mask: required when the image has no alpha channel")
    return GenerationRequest(
        endpoint=endpoint,
        prompt=prompt,
        width=image.width,
        height=image.height,
        seed=seed,
        output_format=output_format,
        image=image,
        model=None,
    )


# -- images ----------------------------------------------------------------------


def render_image(req: GenerationRequest, seed: int, filtered: bool) -> bytes:
    rgb = FILTERED_COLOUR if filtered else PALETTE[seed % len(PALETTE)]
    quality = 90 if req.output_format == "jpeg" else 80
    return solid_image(req.width, req.height, req.output_format, rgb, quality)


# -- app -------------------------------------------------------------------------


def _file_meta(part: FileStorage) -> dict[str, Any]:
    data = part.stream.read()
    part.stream.seek(0)
    meta: dict[str, Any] = {
        "filename": part.filename,
        "content_type": part.content_type,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    try:
        with Image.open(io.BytesIO(data)) as probe:
            meta["format"] = PIL_FORMATS.get(probe.format or "")
            meta["width"], meta["height"] = probe.size
    except (UnidentifiedImageError, OSError, ValueError):
        pass
    return meta


class StabilitySimulator(Simulator):
    """Stability's synchronous multipart endpoints, and files tests host as reference images."""

    provider = PROVIDER

    def __init__(self, config: SimConfig | None = None) -> None:
        self.hosted: dict[str, float] = {}  # hosted file name -> creation time
        super().__init__(config)

    def take_drop(self) -> bool:
        """Consume one ``drop_images`` if any is left."""
        with self.lock:
            left = self.state.config.drop_images
            if left <= 0:
                return False
            self.state.update_config({"drop_images": left - 1})
            return True

    def http_error(self, err: HTTPException) -> Response:
        status = err.code or 500
        if status in (404, 405):
            return ApiError(
                status, "not_found", [f"path: no route for {request.method} {request.path}"]
            ).response()
        return ApiError(status, "bad_request", [err.description or err.name]).response()

    def failure(self, config: SimConfig) -> ApiError:
        status = config.fail_status
        headers = retry_after_headers(config)
        if status == 429:
            return ApiError(429, "rate_limit_exceeded", [RATE_LIMIT_MESSAGE], headers=headers)
        if status == 422:
            return ApiError(
                422,
                "invalid_language",
                ["English is the only supported language for this service."],
                headers=headers,
            )
        if status == 403:
            return ApiError(403, "content_moderation", [MODERATION_MESSAGE], headers=headers)
        if status == 502:
            return ApiError(502, "bad_gateway", ["bad gateway"], headers=headers, html=True)
        if status >= 500:
            return ApiError(status, "internal_error", [SERVER_ERROR_MESSAGE], headers=headers)
        return ApiError(
            status,
            f"http_{status}",
            [f"Simulated upstream failure (HTTP {status})."],
            headers=headers,
        )

    def check_auth(self, config: SimConfig) -> None:
        token = credential()
        if token is None:
            raise ApiError(401, "unauthorized", ["authorization: missing authorization header"])
        if config.api_key is not None and token != config.api_key:
            raise ApiError(401, "unauthorized", ["authorization: invalid API key"])

    @route("POST", f"{EDIT_PREFIX}/<kind>")
    def edit(self, kind: str) -> Response:
        if kind != "inpaint":
            raise ApiError(404, "not_found", [f"path: no route for POST {request.path}"])
        return self.generate(kind)

    @route("POST", f"{GENERATE_PREFIX}/<kind>")
    def generate(self, kind: str) -> Response:
        endpoint = ENDPOINTS.get(kind)
        if endpoint is None or (endpoint.inpaint and not request.path.startswith(EDIT_PREFIX)):
            raise ApiError(404, "not_found", [f"path: no route for POST {request.path}"])
        too_large = (request.content_length or 0) > MAX_BODY_BYTES
        form: dict[str, str] = {}
        files: dict[str, FileStorage] = {}
        raw_text = None
        if too_large:
            while request.stream.read(1024 * 1024):  # drain, so the client sees the answer
                pass
        elif request.mimetype == "multipart/form-data":
            form = {k: request.form[k] for k in request.form}
            files = {k: request.files[k] for k in request.files}
        else:
            raw_text = request.get_data(cache=True)[:2000].decode("utf-8", "replace")
        entry = self.record(
            endpoint=kind,
            content_type=request.mimetype,
            content_length=request.content_length,
            form=form,
            files={name: _file_meta(part) for name, part in files.items()},
            raw_body=raw_text,
        )
        return self.answer(entry, lambda: self._generate(endpoint, form, files, too_large))

    def _generate(
        self,
        endpoint: EndpointSpec,
        form: dict[str, str],
        files: dict[str, FileStorage],
        too_large: bool,
    ) -> Response:
        self.admit(form.get("prompt"))
        if too_large:
            raise ApiError(
                413,
                "payload_too_large",
                [f"body: the request must be smaller than {MAX_BODY_BYTES} bytes"],
            )
        if request.mimetype != "multipart/form-data":
            raise bad_request("content-type: must be multipart/form-data")
        accept = request.headers.get("Accept", "image/*").strip() or "image/*"
        if accept not in ("image/*", "application/json", "*/*"):
            raise bad_request("accept: must be one of [image/*, application/json]")
        req = parse_generation(endpoint, form, files)
        if FORBIDDEN_WORD.search(req.prompt):
            raise ApiError(403, "content_moderation", [MODERATION_MESSAGE])
        if GARBLED_MARKER in req.prompt:
            return Response('{"image": "iVBORw0KGgo', status=200, content_type="application/json")
        filtered = bool(FILTERED_WORD.search(req.prompt)) or self.take_drop()
        seed = req.seed or random.randint(1, MAX_SEED)
        data = render_image(req, seed, filtered)
        finish = "CONTENT_FILTERED" if filtered else "SUCCESS"
        if accept == "application/json":
            resp = jsonify(
                {
                    "image": base64.b64encode(data).decode("ascii"),
                    "finish_reason": finish,
                    "seed": seed,
                }
            )
        else:
            resp = Response(data, status=200, content_type=CONTENT_TYPES[req.output_format])
        resp.headers["finish-reason"] = finish
        resp.headers["seed"] = str(seed)
        return resp

    # -- files tests host here as client reference images ------------------------

    @route("POST", "/_sim/files")
    def host_file(self) -> Response:
        ext = {v: k for k, v in CONTENT_TYPES.items()}.get(request.mimetype, "bin")
        name = f"{uuid.uuid4().hex}.{ext}"
        data = request.get_data()
        self.state.put_file(name, data, request.mimetype or "application/octet-stream")
        with self.lock:
            self.hosted[name] = time.time()
        return jsonify({"url": f"{request.host_url}_sim/files/{name}"})

    @route("GET", "/_sim/files/<name>")
    def hosted_file(self, name: str) -> Response:
        stored = self.state.get_file(name)
        with self.lock:
            created = self.hosted.get(name)
        if (
            stored is None
            or created is None
            or time.time() - created > self.state.config.result_ttl
        ):
            raise ApiError(404, "not_found", [f"file: '{name}' not found or expired"])
        return Response(stored.data, status=200, content_type=stored.content_type)


create_app = StabilitySimulator.create_app

__all__ = [
    "ApiError",
    "ENDPOINTS",
    "SimConfig",
    "StabilitySimulator",
    "create_app",
    "parse_generation",
]
