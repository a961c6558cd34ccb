"""Simulator of the OpenAI Images API (``POST https://api.openai.com/v1/images/generations``).

It stands in for the real upstream in tests and load runs, so it imports
nothing from the gateway. This docstring is its specification: what it
imitates of OpenAI's published API reference, and where it chooses.

Request (JSON body, ``Authorization: Bearer <key>``):

================== =================== ================= ================== =====================
field              dall-e-2            dall-e-3          gpt-image-1,       compat-any
                                                         -1-mini, -1.5, -2
================== =================== ================= ================== =====================
prompt (required)  <= 1000 chars       <= 4000 chars     <= 32000 chars     <= 32000 chars
n                  1-10                1 only            1-10               1-10
size               256x256 512x512     1024x1024         auto (= 1024x1024) any WxH, each side
                   1024x1024 (default) 1792x1024         1024x1024          16-8192 (default
                                       1024x1792         1536x1024          1024x1024)
                                                         1024x1536
aspect_ratio       unknown             unknown           unknown            W:H, each 1-64;
                                                                            not with size
quality            standard            standard hd       auto low medium    standard hd auto
                                                         high               low medium high
response_format    url (default)       url (default)     unknown            url (default)
                   b64_json            b64_json                             b64_json
style              unknown             vivid (default)   unknown            unknown
                                       natural
background         unknown             unknown           auto opaque        unknown
                                                         transparent
output_format      unknown             unknown           png (default)      unknown
                                                         jpeg webp
output_compression unknown             unknown           0-100              unknown
moderation         unknown             unknown           auto low           unknown
stream             unknown             unknown           boolean (true:     unknown
                                                         SSE, see below)
partial_images     unknown             unknown           0-3                unknown
seed               unknown             unknown           unknown            integer (optional)
user               string              string            string             string
================== =================== ================= ================== =====================

"unknown" means 400 ``unknown_parameter`` (``Unknown parameter: '<field>'.``).

``gpt-image-2`` (and ``gpt-image-2-2026-04-21``) also takes any ``WxH`` whose
sides are multiples of 16, at most 3840, with a ratio within 1:3..3:1; its
usage for such a size is the 1024x1024 token count scaled by area.

``model`` defaults to ``dall-e-2``, or to ``gpt-image-1`` when a GPT-only field
is present (as OpenAI documents). ``transparent`` needs png or webp.

``compat-any`` (family ``compat``) is not an OpenAI model: it imitates the
OpenAI-compatible third-party upstreams (hosted gateways in front of FLUX,
Seedream and the like) that gateways call with the OpenAI protocol but which
accept any ``WxH`` size and an ``aspect_ratio`` extension. ``size`` is
``<W>x<H>`` in plain ASCII digits with a lower-case ``x``, each side 16-8192
(else 400 ``invalid_value``, ``param: "size"``); ``aspect_ratio`` is
``<W>:<H>``, each 1-64 (else 400 ``param: "aspect_ratio"``). Sending both
(non-null) is a 400 with ``param: "aspect_ratio"`` ("send either size or
aspect_ratio"). With ``aspect_ratio`` alone the image has about 1024*1024
pixels at that ratio, each side rounded to a multiple of 16 (16:9 ->
1360x768); with neither, 1024x1024. ``seed`` picks the colour of the first
image (same seed, same colours). Its ``quality`` is accepted and ignored.

Response (200): ``{"created", "data": [{"url"} | {"b64_json"}]}``; dall-e-3
items add ``revised_prompt`` (the prompt plus a short suffix); ``compat-any``
answers like dall-e plus a top-level ``size`` (``"WxH"`` produced). GPT models always
answer ``b64_json`` and add ``background``, ``output_format``, ``quality``,
``size`` (``auto`` values resolved: quality -> medium, size -> 1024x1024,
background -> opaque) and ``usage`` ``{input_tokens, input_tokens_details:
{text_tokens, image_tokens}, output_tokens, total_tokens,
output_tokens_details: {image_tokens, text_tokens}}`` (text tokens ~ len/4,
image tokens from OpenAI's per-quality/size table). URLs point at
``GET /files/<id>.png`` on this simulator (last 2000 files kept in memory).
Images are real PNG/JPEG/WebP files of exactly the answered size, one solid
colour per index (transparent backgrounds: a coloured square on alpha 0);
PNG/JPEG files also carry the file id in a comment chunk so every file's
bytes are unique.

Streaming (GPT models, ``stream: true``): after the same checks (an error is
still an ordinary JSON answer with its status), ``200 text/event-stream`` with,
for each of the ``n`` images in order, ``partial_images`` events
``event: image_generation.partial_image`` (``data``: ``type``, ``b64_json`` -- a
small preview, the image at 1/8 of each side --, ``created_at``, ``size``,
``quality``, ``background``, ``output_format``, ``partial_image_index``) and then
one ``event: image_generation.completed`` (the same fields without the index,
the full image, and the call's ``usage``). Events are sent ``pace`` seconds
apart: 0.05, or what the prompt says with ``sim-pace=<seconds>`` (at most 10),
so a test can watch partials arrive before the image is done. A prompt with
the word ``streamfail`` gets, after its partial images, ``event: error`` with
``{"type": "error", "error": {"message", "type": "server_error", "param",
"code": "server_error"}}`` and no completed event, as when OpenAI fails
mid-stream.

Errors use OpenAI's envelope ``{"error": {"message", "type", "param", "code"}}``:

* 401 ``invalid_request_error``/``invalid_api_key``: missing/wrong bearer key.
* 400 ``invalid_request_error`` with ``param`` naming the field and codes
  ``unknown_parameter``, ``missing_required_parameter``, ``invalid_type``,
  ``invalid_value``, ``integer_above_max_value``, ``integer_below_min_value``,
  ``string_above_max_length``, ``string_below_min_length``.
* 404 ``invalid_request_error``/``model_not_found`` (``param: "model"``) for an
  unknown model. (Judgement call: OpenAI's documentation does not pin down what the
  Images API answers here, and it may be a 400 ``invalid_value``; the
  simulator uses the 404 ``model_not_found`` of the rest of the OpenAI API so
  the gateway's not-found mapping gets exercised.)
* 400 for a prompt containing the word "forbidden": dall-e and compat
  ``invalid_request_error``/``content_policy_violation``; GPT models
  ``image_generation_user_error``/``moderation_blocked``.
* Injected failures (``/_sim/config``): 500 ``server_error`` by default; 429
  ``requests``/``rate_limit_exceeded``; 503 "engine overloaded"; other 4xx
  ``invalid_request_error``; optional ``Retry-After``.

Every response carries ``x-request-id: req_<hex>``, ``openai-processing-ms``
and static ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` headers.

Order of processing for a generation request: record it in the request log,
sleep ``latency``, check the key, inject a failure (a fault the request names in
its ``X-Sim-Fault`` header or its prompt, see :mod:`simulators.base`; then
``fail_next``; then ``failure_rate``), validate, moderate, generate. A request with a bad key does
therefore not use up ``fail_next`` or a named fault.

Test/control endpoints: ``GET|POST /_sim/config`` (POST merges JSON),
``GET|DELETE /_sim/requests``, ``POST /_sim/reset``, ``GET /_sim/health``.
"""

from __future__ import annotations

import functools
import json
import math
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pybase64 as base64
from flask import Response, g, jsonify, request
from PIL import Image
from werkzeug.exceptions import HTTPException

from simulators.base import (
    CONTENT_TYPES,
    FORBIDDEN_WORD,
    SimError,
    Simulator,
    credential,
    encode,
    retry_after_headers,
    route,
    tag_file,
    word,
)
from simulators.control import parse_json_body
from simulators.state import PALETTE, SimConfig

PROVIDER = "openai"

GPT_MODELS = (
    "gpt-image-1",
    "gpt-image-1-mini",
    "gpt-image-1.5",
    "gpt-image-2",
    "gpt-image-2-2026-04-21",
)

COMMON_PARAMS = frozenset({"prompt", "model", "n", "size", "quality", "user"})
DALLE_PARAMS = frozenset({"response_format"})
DALLE3_PARAMS = frozenset({"style"})
GPT_PARAMS = frozenset(
    {"background", "output_format", "output_compression", "moderation", "stream", "partial_images"}
)
COMPAT_PARAMS = frozenset({"response_format", "aspect_ratio", "seed"})

# gpt-image-2's free sizes: sides multiples of 16, ratio within 1:3..3:1, edges <= 3840.
GPT2_MULTIPLE = 16
GPT2_MAX_SIDE = 3840
GPT2_MAX_RATIO = 3

COMPAT_QUALITIES = ("standard", "hd", "auto", "low", "medium", "high")
COMPAT_MIN_SIDE = 16
COMPAT_MAX_SIDE = 8192
COMPAT_MAX_RATIO_TERM = 64
COMPAT_TARGET_AREA = 1024 * 1024
COMPAT_SIZE_RE = re.compile(r"([0-9]{1,6})x([0-9]{1,6})")
COMPAT_RATIO_RE = re.compile(r"([0-9]{1,3}):([0-9]{1,3})")

# Streaming: seconds between events (or the prompt's sim-pace=<seconds>), the preview's
# scale, and the prompt word that makes the stream fail after its partial images.
STREAM_PACE = 0.05
STREAM_MAX_PACE = 10.0
STREAM_PACE_RE = re.compile(r"\bsim-pace=([0-9]{1,2}(?:\.[0-9]{1,3})?)\b")
PARTIAL_SCALE = 8
STREAM_FAIL_WORD = word("streamfail")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str  # "dall-e", "gpt" or "compat"
    sizes: tuple[str, ...]  # empty for "compat" (any WxH)
    max_n: int
    max_prompt: int
    qualities: tuple[str, ...]
    default_quality: str
    params: frozenset[str]
    free_size: bool = False  # gpt-image-2: any WxH within GPT2_* besides the listed sizes


MODELS: dict[str, ModelSpec] = {
    "dall-e-2": ModelSpec(
        "dall-e-2",
        "dall-e",
        ("256x256", "512x512", "1024x1024"),
        10,
        1000,
        ("standard",),
        "standard",
        COMMON_PARAMS | DALLE_PARAMS,
    ),
    "dall-e-3": ModelSpec(
        "dall-e-3",
        "dall-e",
        ("1024x1024", "1792x1024", "1024x1792"),
        1,
        4000,
        ("standard", "hd"),
        "standard",
        COMMON_PARAMS | DALLE_PARAMS | DALLE3_PARAMS,
    ),
    **{
        name: ModelSpec(
            name,
            "gpt",
            ("auto", "1024x1024", "1536x1024", "1024x1536"),
            10,
            32000,
            ("auto", "low", "medium", "high"),
            "auto",
            COMMON_PARAMS | GPT_PARAMS,
            free_size=name.startswith("gpt-image-2"),
        )
        for name in GPT_MODELS
    },
    "compat-any": ModelSpec(
        "compat-any",
        "compat",
        (),
        10,
        32000,
        COMPAT_QUALITIES,
        "auto",
        COMMON_PARAMS | COMPAT_PARAMS,
    ),
}

ALL_PARAMS = COMMON_PARAMS | DALLE_PARAMS | DALLE3_PARAMS | GPT_PARAMS | COMPAT_PARAMS

# OpenAI's published output-token cost per image for GPT image models.
GPT_IMAGE_TOKENS: dict[str, dict[str, int]] = {
    "low": {"1024x1024": 272, "1024x1536": 408, "1536x1024": 400},
    "medium": {"1024x1024": 1056, "1024x1536": 1584, "1536x1024": 1568},
    "high": {"1024x1024": 4160, "1024x1536": 6240, "1536x1024": 6208},
}

REVISED_PROMPT_SUFFIX = ", rendered as a detailed digital illustration"

SERVER_ERROR_MESSAGE = "The server had an error while processing your request."


class ApiError(SimError):
    """An OpenAI-style error answer ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


# -- validation helpers ---------------------------------------------------------


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _invalid_type(param: str, expected: str, value: Any) -> ApiError:
    return ApiError(
        400,
        f"Invalid type for '{param}': expected {expected}, but got {_json_type(value)} instead.",
        param=param,
        code="invalid_type",
    )


def _quoted_list(values: tuple[str, ...]) -> str:
    quoted = [f"'{v}'" for v in values]
    if len(quoted) == 1:
        return quoted[0]
    if len(quoted) == 2:
        return f"{quoted[0]} and {quoted[1]}"
    return ", ".join(quoted[:-1]) + f", and {quoted[-1]}"


def _gpt2_size_ok(size: str) -> bool:
    match = COMPAT_SIZE_RE.fullmatch(size)
    if not match:
        return False
    w, h = int(match.group(1)), int(match.group(2))
    return (
        w % GPT2_MULTIPLE == 0
        and h % GPT2_MULTIPLE == 0
        and 0 < w <= GPT2_MAX_SIDE
        and 0 < h <= GPT2_MAX_SIDE
        and max(w, h) <= GPT2_MAX_RATIO * min(w, h)
    )


def _choice(body: dict[str, Any], param: str, allowed: tuple[str, ...], default: str) -> str:
    value = body.get(param)
    if value is None:
        return default
    if not isinstance(value, str):
        raise _invalid_type(param, "a string", value)
    if value not in allowed:
        raise ApiError(
            400,
            f"Invalid value: '{value}'. Supported values are: {_quoted_list(allowed)}.",
            param=param,
            code="invalid_value",
        )
    return value


def _integer(body: dict[str, Any], param: str, low: int, high: int, default: int) -> int:
    value = body.get(param)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid_type(param, "an integer", value)
    if value < low:
        raise ApiError(
            400,
            f"Invalid '{param}': integer below minimum value. "
            f"Expected a value >= {low}, but got {value} instead.",
            param=param,
            code="integer_below_min_value",
        )
    if value > high:
        raise ApiError(
            400,
            f"Invalid '{param}': integer above maximum value. "
            f"Expected a value <= {high}, but got {value} instead.",
            param=param,
            code="integer_above_max_value",
        )
    return value


@dataclass(frozen=True)
class GenerationRequest:
    spec: ModelSpec
    prompt: str
    n: int
    size: str  # as requested (may be "auto")
    width: int
    height: int
    quality: str  # resolved
    response_format: str  # "url" or "b64_json"
    style: str | None
    background: str | None  # resolved, GPT only
    output_format: str  # "png" for dall-e and compat
    output_compression: int
    aspect_ratio: str | None = None  # compat only, as requested
    seed: int | None = None  # compat only
    stream: bool = False  # GPT only
    partial_images: int = 0  # GPT only


def _compat_dimensions(body: dict[str, Any]) -> tuple[str, int, int, str | None]:
    """(size as requested or the produced size, width, height, aspect_ratio) for compat."""
    size = body.get("size")
    ratio = body.get("aspect_ratio")
    if size is not None and ratio is not None:
        raise ApiError(
            400,
            "Invalid 'aspect_ratio': send either size or aspect_ratio, not both.",
            param="aspect_ratio",
            code="invalid_value",
        )
    if ratio is not None:
        if not isinstance(ratio, str):
            raise _invalid_type("aspect_ratio", "a string", ratio)
        match = COMPAT_RATIO_RE.fullmatch(ratio)
        terms = (int(match[1]), int(match[2])) if match else (0, 0)
        if not all(1 <= t <= COMPAT_MAX_RATIO_TERM for t in terms):
            raise ApiError(
                400,
                f"Invalid value: '{ratio}'. Expected an aspect ratio 'W:H' with each term "
                f"an integer between 1 and {COMPAT_MAX_RATIO_TERM}.",
                param="aspect_ratio",
                code="invalid_value",
            )
        w, h = terms
        exact_w = math.sqrt(COMPAT_TARGET_AREA * w / h)
        exact_h = math.sqrt(COMPAT_TARGET_AREA * h / w)
        width, height = (
            min(COMPAT_MAX_SIDE, max(COMPAT_MIN_SIDE, 16 * round(side / 16)))
            for side in (exact_w, exact_h)
        )
        return f"{width}x{height}", width, height, ratio
    if size is None:
        return "1024x1024", 1024, 1024, None
    if not isinstance(size, str):
        raise _invalid_type("size", "a string", size)
    match = COMPAT_SIZE_RE.fullmatch(size)
    sides = (int(match[1]), int(match[2])) if match else (0, 0)
    if not all(COMPAT_MIN_SIDE <= s <= COMPAT_MAX_SIDE for s in sides):
        raise ApiError(
            400,
            f"Invalid value: '{size}'. Expected a size 'WxH' with each side an integer "
            f"between {COMPAT_MIN_SIDE} and {COMPAT_MAX_SIDE}.",
            param="size",
            code="invalid_value",
        )
    width, height = sides
    return size, width, height, None


def parse_generation(body: Any) -> GenerationRequest:
    """Validate a generations body like OpenAI does; raises :class:`ApiError`."""
    if not isinstance(body, dict):
        raise ApiError(
            400,
            f"Invalid type for body: expected an object, but got {_json_type(body)} instead.",
            code="invalid_type",
        )
    for key in body:
        if key not in ALL_PARAMS:
            raise ApiError(400, f"Unknown parameter: '{key}'.", param=key, code="unknown_parameter")

    model = body.get("model")
    if model is None:
        model = "gpt-image-1" if any(k in GPT_PARAMS for k in body) else "dall-e-2"
    if not isinstance(model, str):
        raise _invalid_type("model", "a string", model)
    spec = MODELS.get(model)
    if spec is None:
        raise ApiError(
            404,
            f"The model '{model}' does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )
    for key in body:
        if key not in spec.params:
            raise ApiError(400, f"Unknown parameter: '{key}'.", param=key, code="unknown_parameter")

    prompt = body.get("prompt")
    if prompt is None:
        raise ApiError(
            400,
            "Missing required parameter: 'prompt'.",
            param="prompt",
            code="missing_required_parameter",
        )
    if not isinstance(prompt, str):
        raise _invalid_type("prompt", "a string", prompt)
    if not prompt:
        raise ApiError(
            400,
            "Invalid 'prompt': string too short. Expected a string with minimum length 1, "
            "but got an empty string instead.",
            param="prompt",
            code="string_below_min_length",
        )
    if len(prompt) > spec.max_prompt:
        raise ApiError(
            400,
            f"Invalid 'prompt': string too long. Expected a string with maximum length "
            f"{spec.max_prompt}, but got a string with length {len(prompt)} instead.",
            param="prompt",
            code="string_above_max_length",
        )

    n = _integer(body, "n", 1, spec.max_n, 1)
    aspect_ratio = None
    if spec.family == "compat":
        size, width, height, aspect_ratio = _compat_dimensions(body)
    else:
        size = body.get("size")
        if not (spec.free_size and isinstance(size, str) and _gpt2_size_ok(size)):
            default = "auto" if spec.family == "gpt" else "1024x1024"
            size = _choice(body, "size", spec.sizes, default)
        actual = "1024x1024" if size == "auto" else size
        width, height = (int(part) for part in actual.split("x"))
    quality = _choice(body, "quality", spec.qualities, spec.default_quality)
    if quality == "auto":
        quality = "medium"

    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _invalid_type("user", "a string", user)

    response_format = "b64_json"
    style = None
    background = None
    output_format = "png"
    output_compression = 100
    seed = None
    stream = False
    partial_images = 0
    if spec.family == "compat":
        response_format = _choice(body, "response_format", ("url", "b64_json"), "url")
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise _invalid_type("seed", "an integer", seed)
    elif spec.family == "dall-e":
        response_format = _choice(body, "response_format", ("url", "b64_json"), "url")
        if spec.name == "dall-e-3":
            style = _choice(body, "style", ("vivid", "natural"), "vivid")
    else:
        background = _choice(body, "background", ("transparent", "opaque", "auto"), "auto")
        output_format = _choice(body, "output_format", ("png", "jpeg", "webp"), "png")
        output_compression = _integer(body, "output_compression", 0, 100, 100)
        _choice(body, "moderation", ("low", "auto"), "auto")
        partial_images = _integer(body, "partial_images", 0, 3, 0)
        stream = body.get("stream")
        if stream is not None and not isinstance(stream, bool):
            raise _invalid_type("stream", "a boolean", stream)
        stream = bool(stream)
        if background == "transparent" and output_format == "jpeg":
            raise ApiError(
                400,
                "Transparent background requires output_format 'png' or 'webp'.",
                param="background",
                code="invalid_value",
            )
        if background == "auto":
            background = "opaque"

    return GenerationRequest(
        spec=spec,
        prompt=prompt,
        n=n,
        size=size,
        width=width,
        height=height,
        quality=quality,
        response_format=response_format,
        style=style,
        background=background,
        output_format=output_format,
        output_compression=output_compression,
        aspect_ratio=aspect_ratio,
        seed=seed,
        stream=stream,
        partial_images=partial_images,
    )


def moderate(req: GenerationRequest) -> None:
    if not FORBIDDEN_WORD.search(req.prompt):
        return
    if req.spec.family == "gpt":
        raise ApiError(
            400,
            "Your request was rejected by the safety system. If you believe this is an "
            "error, contact us and include the request ID.",
            error_type="image_generation_user_error",
            code="moderation_blocked",
        )
    raise ApiError(
        400,
        "Your request was rejected as a result of our safety system. Your prompt may "
        "contain text that is not allowed by our safety system.",
        code="content_policy_violation",
    )


# -- images ---------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _encode(
    width: int, height: int, fmt: str, transparent: bool, colour: int, compression: int
) -> bytes:
    """One image file; ``bench/simulator.py`` swaps this for photo-sized noise."""
    rgb = PALETTE[colour]
    if transparent:
        image = Image.new("RGBA", (width, height), (0, 0, 0, 0))
        box = (width // 4, height // 4, width - width // 4, height - height // 4)
        image.paste((*rgb, 255), box)
    else:
        image = Image.new("RGB", (width, height), rgb)
    quality = max(1, min(95, compression)) if fmt == "jpeg" else compression
    return encode(image, fmt, quality)


def render_image(req: GenerationRequest, index: int, base_colour: int, file_id: str) -> bytes:
    colour = (base_colour + index) % len(PALETTE)
    data = _encode(
        req.width,
        req.height,
        req.output_format,
        req.background == "transparent",
        colour,
        req.output_compression,
    )
    return tag_file(data, req.output_format, file_id)


def render_partial(req: GenerationRequest, index: int, base_colour: int) -> bytes:
    """A streamed preview of image ``index``: the same colour at 1/8 of each side."""
    return _encode(
        max(1, req.width // PARTIAL_SCALE),
        max(1, req.height // PARTIAL_SCALE),
        req.output_format,
        req.background == "transparent",
        (base_colour + index) % len(PALETTE),
        req.output_compression,
    )


def stream_pace(prompt: str) -> float:
    match = STREAM_PACE_RE.search(prompt)
    return min(STREAM_MAX_PACE, float(match.group(1))) if match else STREAM_PACE


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def stream_events(req: GenerationRequest, base_colour: int, images: int) -> Iterator[bytes]:
    """The SSE body of a streamed GPT generation (see the module's docstring)."""
    pace = stream_pace(req.prompt)
    fields = {
        "size": f"{req.width}x{req.height}",
        "quality": req.quality,
        "background": req.background,
        "output_format": req.output_format,
    }
    usage = usage_for(req)
    for index in range(images):
        for partial in range(req.partial_images):
            time.sleep(pace)
            data = render_partial(req, index, base_colour)
            yield sse(
                "image_generation.partial_image",
                {
                    "type": "image_generation.partial_image",
                    "b64_json": base64.b64encode(data).decode("ascii"),
                    "created_at": int(time.time()),
                    **fields,
                    "partial_image_index": partial,
                },
            )
        time.sleep(pace)
        if STREAM_FAIL_WORD.search(req.prompt):
            yield sse(
                "error",
                {
                    "type": "error",
                    "error": {
                        "message": SERVER_ERROR_MESSAGE,
                        "type": "server_error",
                        "param": None,
                        "code": "server_error",
                    },
                },
            )
            return
        data = render_image(req, index, base_colour, f"img_{uuid.uuid4().hex}")
        yield sse(
            "image_generation.completed",
            {
                "type": "image_generation.completed",
                "b64_json": base64.b64encode(data).decode("ascii"),
                "created_at": int(time.time()),
                **fields,
                "usage": usage,
            },
        )


def usage_for(req: GenerationRequest) -> dict[str, Any]:
    text_tokens = max(1, math.ceil(len(req.prompt) / 4))
    table = GPT_IMAGE_TOKENS[req.quality]
    # Free gpt-image-2 sizes: the square's cost scaled by area.
    per_image = table.get(
        f"{req.width}x{req.height}",
        table["1024x1024"] * req.width * req.height // (1024 * 1024),
    )
    output_tokens = per_image * req.n
    return {
        "input_tokens": text_tokens,
        "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": 0},
        "output_tokens": output_tokens,
        "total_tokens": text_tokens + output_tokens,
        "output_tokens_details": {"image_tokens": output_tokens, "text_tokens": 0},
    }


# -- app ------------------------------------------------------------------------


def _mask_key(key: str) -> str:
    if len(key) <= 8:
        return "*" * len(key)
    return f"{key[:3]}{'*' * (len(key) - 7)}{key[-4:]}"


class OpenAISimulator(Simulator):
    """The OpenAI Images API: one synchronous generation endpoint and its files."""

    provider = PROVIDER

    def new_request_id(self) -> str:
        return f"req_{uuid.uuid4().hex}"

    def add_headers(self, resp: Response) -> None:
        elapsed = time.monotonic() - g.get("started", time.monotonic())
        resp.headers["openai-processing-ms"] = str(int(elapsed * 1000))
        resp.headers["openai-version"] = "2020-10-01"
        resp.headers["x-ratelimit-limit-requests"] = "500"
        resp.headers["x-ratelimit-remaining-requests"] = "0" if g.get("rate_limited") else "499"
        resp.headers["x-ratelimit-reset-requests"] = "120ms"
        resp.headers["x-ratelimit-limit-tokens"] = "100000"
        resp.headers["x-ratelimit-remaining-tokens"] = "99000"
        resp.headers["x-ratelimit-reset-tokens"] = "600ms"

    def _before_request(self) -> None:
        super()._before_request()
        g.started = time.monotonic()
        g.rate_limited = False

    def http_error(self, err: HTTPException) -> Response:
        status = err.code or 500
        if status in (404, 405):
            message = f"Invalid URL ({request.method} {request.path})"
        else:
            message = err.description or err.name
        return ApiError(status, message).response()

    def failure(self, config: SimConfig) -> ApiError:
        status = config.fail_status
        headers = retry_after_headers(config)
        g.rate_limited = status == 429
        if status == 429:
            return ApiError(
                429,
                "Rate limit reached for requests. Please try again later.",
                error_type="requests",
                code="rate_limit_exceeded",
                headers=headers,
            )
        if status == 503:
            return ApiError(
                503,
                "The engine is currently overloaded, please try again later.",
                error_type="server_error",
                headers=headers,
            )
        if status >= 500:
            return ApiError(
                status, SERVER_ERROR_MESSAGE, error_type="server_error", headers=headers
            )
        return ApiError(status, f"Simulated upstream failure (HTTP {status}).", headers=headers)

    def check_auth(self, config: SimConfig) -> None:
        token = credential()
        if token is None:
            raise ApiError(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code="invalid_api_key",
            )
        if config.api_key is not None and token != config.api_key:
            raise ApiError(
                401,
                f"Incorrect API key provided: {_mask_key(token)}. You can find your API key "
                "at https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )

    @route("POST", "/v1/images/generations")
    def generations(self) -> Response:
        body, raw_text = parse_json_body()
        entry = self.record(json=body, raw_body=raw_text)
        return self.answer(entry, lambda: self._generate(body, raw_text))

    def _generate(self, body: Any, raw_text: str | None) -> Response:
        config = self.admit(body.get("prompt") if isinstance(body, dict) else None)
        if raw_text is not None:
            raise ApiError(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means "
                "you aren't using your HTTP library correctly. The OpenAI API expects a JSON "
                "payload, but what was sent was not valid JSON.)",
            )
        req = parse_generation(body)
        moderate(req)

        if req.seed is not None:
            base_colour = req.seed % len(PALETTE)
        else:
            base_colour = int.from_bytes(uuid.uuid4().bytes[:2], "big") % len(PALETTE)
        if req.stream:
            events = stream_events(req, base_colour, max(0, req.n - config.drop_images))
            return Response(events, status=200, mimetype="text/event-stream")
        items: list[dict[str, Any]] = []
        for index in range(max(0, req.n - config.drop_images)):
            file_id = f"img_{uuid.uuid4().hex}"
            data = render_image(req, index, base_colour, file_id)
            item: dict[str, Any] = {}
            if req.response_format == "url":
                name = f"{file_id}.{req.output_format}"
                self.state.put_file(name, data, CONTENT_TYPES[req.output_format])
                item["url"] = f"{config.result_url_base or request.host_url}files/{name}"
            else:
                item["b64_json"] = base64.b64encode(data).decode("ascii")
            if req.spec.name == "dall-e-3":
                item["revised_prompt"] = req.prompt + REVISED_PROMPT_SUFFIX
            items.append(item)

        payload: dict[str, Any] = {"created": int(time.time()), "data": items}
        if req.spec.family == "gpt":
            payload.update(
                {
                    "background": req.background,
                    "output_format": req.output_format,
                    "quality": req.quality,
                    "size": f"{req.width}x{req.height}",
                    "usage": usage_for(req),
                }
            )
        elif req.spec.family == "compat":
            payload["size"] = f"{req.width}x{req.height}"
        return jsonify(payload)

    @route("GET", "/files/<name>")
    def files(self, name: str) -> Response:
        stored = self.state.get_file(name)
        if stored is None:
            raise ApiError(
                404,
                f"File '{name}' not found or expired.",
                param="name",
                code="file_not_found",
            )
        return Response(stored.data, status=200, content_type=stored.content_type)


create_app = OpenAISimulator.create_app

__all__ = ["ApiError", "MODELS", "OpenAISimulator", "SimConfig", "create_app", "parse_generation"]
