"""Simulator of the Black Forest Labs API (``https://api.bfl.ai``): FLUX1.1 [pro], FLUX.1
Kontext, FLUX.2.

It stands in for the real upstream in tests and load runs, so it imports
nothing from the gateway. This docstring is its specification: what it
imitates of BFL's API documentation and OpenAPI document, and where it
chooses ([T]: taken from BFL's examples rather than its reference, so less
certain):

Submit ``POST /v1/<endpoint>`` with header ``x-key: <key>`` and a JSON body;
the answer (200) is ``{"id", "polling_url", "cost", "input_mp", "output_mp"}``.
``polling_url`` is ``<this host>/<region>/v1/get_result?id=<id>`` (BFL hands out
regional hosts; here a path prefix stands in for the host, so a client that
builds the URL itself instead of using the one it got is caught). The task is
then polled with ``GET <polling_url>`` (``/v1/get_result?id=`` works too; as in
the OpenAPI document, polling needs no key) and answers ``ResultResponse``
``{"id", "status", "result", "progress", "details", "preview"}`` with
``status`` one of ``Pending``, ``Ready``, ``Error``, ``Request Moderated``,
``Content Moderated``, ``Task not found``. On ``Ready``, ``result`` is
``{"sample", "prompt", "seed", "start_time", "end_time", "duration"}`` and
``sample`` is a signed URL on this host
(``/delivery/<id>/sample.<ext>?se=<expiry>&sig=<hmac>``) that answers 404 once
``result_ttl`` seconds have passed since the task became ready (BFL: 10
minutes) and 403 if its signature was tampered with. Every task makes one
image: a real PNG/JPEG/WebP file of exactly the produced size, one solid
colour picked by the seed (same seed, same colour), with the task id drawn and
embedded so that every file's bytes are unique.

Endpoints and their bodies (extra fields are a 422 ``extra_forbidden`` here, a
judgement call: the real API may ignore them, but a simulator that rejects
them catches an adapter sending a field the endpoint does not have):

====================== ================== =================================================
endpoint               schema             size of the image
====================== ================== =================================================
flux-pro-1.1, flux-dev FluxPro11Inputs,   ``width``/``height``: integers, multiples of 32 in
                       FluxDevInputs      256-1440 (default 1024x768)
flux-pro-1.1-ultra     FluxUltraInput     ``aspect_ratio`` (default 16:9), ~4 MP
flux-kontext-pro, -max FluxKontextProInp. ``aspect_ratio`` "W:H" between 21:9 and 9:21
                                          (default: the input image's, else 1:1), ~1 MP,
                                          sides multiples of 16; no width/height
flux-2-pro, -max,      Flux2Inputs,       ``width``/``height`` integers >= 64 (default 0:
-flex, -klein-4b, -9b  Flux2FlexInputs,   the first input image's size, else 1024x1024);
                       Flux2KleinInputs   at most 4 MP in total [T]
====================== ================== =================================================

Common fields: ``prompt`` (string; required for Kontext and FLUX.2),
``seed`` (integer or null), ``safety_tolerance`` (integer 0-6; FLUX.2 0-5),
``output_format`` (``jpeg``/``png``/``webp``; default ``png`` for Kontext,
``jpeg`` otherwise), ``prompt_upsampling`` (bool), ``webhook_url`` (URI, 1-2083
chars; accepted, never called), ``webhook_secret``. Reference images:
``input_image`` (Kontext ``..._4``, FLUX.2 pro/max/flex ``..._8``, Klein
``..._4``) are an ``http(s)`` URL or raw base64 of a PNG/JPEG/WebP file; a
``data:`` URL, or base64 that is not an image, is a 422 ``value_error``. The
simulator never fetches URLs (their input megapixels count as 1.0).
``image_prompt`` (FLUX1.1 / dev / ultra) must be base64; steps/guidance/raw/
``image_prompt_strength`` are range-checked and ignored.

Validation errors are FastAPI's 422 ``{"detail": [{"type", "loc", "msg",
"input"[, "ctx"]}]}`` with pydantic's messages (``loc`` is ``["body",
<field>]``). Other errors are ``{"detail": "<message>"}``: 403 for a missing
(``Not authenticated``) or wrong (``Invalid API key``) ``x-key``; 404 for an
unknown endpoint. ``cost`` is in credits (1 credit = $0.01), illustrative.

Concurrency limit ([T], from BFL's published agent skills): at most 24 unfinished
tasks (6 for ``flux-kontext-max``); one more is a 429 with the body
``{"error": "rate_limit_exceeded", "message": "Too many concurrent requests",
"retry_after": 5}``. A task stays unfinished until a poll sees it finish, and
counts for at most ten minutes.

Fault injection (``/_sim/config``, shared knobs of ``SimConfig``):

* ``latency``: seconds a task stays ``Pending`` after submission (the submit
  itself answers at once); ``poll_steps``: polls a task answers ``Pending``
  before it finishes (both must have passed).
* a fault the request names (``X-Sim-Fault`` header or prompt, see
  :mod:`simulators.base`), then ``fail_next`` / ``failure_rate``: the submit
  fails with ``fail_status`` (or the named status):
  429 the concurrency-limit body above, 402 ``{"detail": "Insufficient
  credits"}``, 5xx ``{"detail": "Internal Server Error"}`` (503: "Service
  temporarily unavailable"), other 4xx ``{"detail": "Simulated upstream
  failure (HTTP n)."}``; ``Retry-After`` when ``retry_after`` is set.
* ``drop_images``: the next N submitted tasks end ``Content Moderated`` (one
  image per task, so this is how BFL delivers fewer images than asked); each
  such task uses one up.
* ``result_ttl``: lifetime of ``sample`` URLs. ``api_key``: the required key.

Prompt words decide a task's fate: ``forbidden`` -> ``Request Moderated``
(answered by the first poll, before any processing); ``sim:content-moderated``
-> ``Content Moderated``; ``sim:error`` -> ``Error``; ``sim:lost`` -> the task
is forgotten (``Task not found``). Moderated tasks carry ``details:
{"Moderation Reasons": [...]}`` (a shape BFL's documentation does not pin down).

Order of processing for a submit: record it in the request log, check the
key, inject a failure, validate, check the concurrency limit, create the task.

Test/control endpoints: ``GET|POST /_sim/config`` (POST merges JSON),
``GET|DELETE /_sim/requests``, ``POST /_sim/reset`` (also forgets every task),
``GET /_sim/health``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import json
import math
import re
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flask import Response, jsonify, request
from PIL import Image, ImageDraw, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo
from werkzeug.exceptions import HTTPException

from simulators.base import (
    CONTENT_TYPES,
    FORBIDDEN_WORD,
    SimError,
    Simulator,
    encode,
    retry_after_headers,
    route,
)
from simulators.state import PALETTE, SimConfig

PROVIDER = "bfl"
REGION = "sim-region-1"  # path prefix of the polling URLs handed out
FORMATS = ("jpeg", "png", "webp")
MAX_TASKS = 5000
ACTIVE_WINDOW = 600.0  # an unfinished task counts against the limit this long
CONCURRENCY_LIMIT = 24
ENDPOINT_LIMITS = {"flux-kontext-max": 6}
FLUX2_MAX_PIXELS = 4 * 1024 * 1024

CONTENT_MODERATED_WORD = "sim:content-moderated"
ERROR_WORD = "sim:error"
LOST_WORD = "sim:lost"
RATIO_RE = re.compile(r"([1-9][0-9]{0,2}):([1-9][0-9]{0,2})")


# -- errors -----------------------------------------------------------------------


class ApiError(SimError):
    """A BFL-style error answer: ``{"detail": ...}`` or another JSON body."""

    def __init__(
        self, status: int, detail: Any, *, headers: dict[str, str] | None = None, body: Any = None
    ) -> None:
        super().__init__(str(detail))
        self.status = status
        self.payload = body if body is not None else {"detail": detail}
        self.headers = headers or {}

    def body(self) -> Any:
        return self.payload


def _issue(kind: str, loc: list[Any], msg: str, value: Any, ctx: dict | None = None) -> dict:
    item: dict[str, Any] = {"type": kind, "loc": loc, "msg": msg, "input": value}
    if ctx:
        item["ctx"] = ctx
    return item


def validation_error(issues: list[dict[str, Any]]) -> ApiError:
    return ApiError(422, issues)


def rate_limited(headers: dict[str, str] | None = None) -> ApiError:
    body = {
        "error": "rate_limit_exceeded",
        "message": "Too many concurrent requests",
        "retry_after": 5,
    }
    return ApiError(429, None, headers=headers, body=body)


# -- request schemas ----------------------------------------------------------------


@dataclass(frozen=True)
class FieldSpec:
    """One body field: JSON type, nullability, numeric bounds, extra value check."""

    kind: str  # "string" | "integer" | "number" | "boolean" | "format" | "image" | "uri"
    nullable: bool = True
    minimum: float | None = None
    maximum: float | None = None
    multiple_of: int | None = None
    base64_only: bool = False  # "image": no URLs (image_prompt)


def _string(value: Any) -> bool:
    return isinstance(value, str)


_TYPE_ISSUES: dict[str, tuple[Callable[[Any], bool], str, str]] = {
    "string": (_string, "string_type", "Input should be a valid string"),
    "image": (_string, "string_type", "Input should be a valid string"),
    "uri": (_string, "string_type", "Input should be a valid string"),
    "integer": (
        lambda v: isinstance(v, int) and not isinstance(v, bool),
        "int_type",
        "Input should be a valid integer",
    ),
    "number": (
        lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "float_type",
        "Input should be a valid number",
    ),
    "boolean": (lambda v: isinstance(v, bool), "bool_type", "Input should be a valid boolean"),
    "format": (_string, "enum", "Input should be 'jpeg', 'png' or 'webp'"),
}


def _decode_image(text: str) -> Image.Image | None:
    """The image in raw base64 ``text``, or None if it is not one."""
    try:
        raw = base64.b64decode(text, validate=True)
        image = Image.open(io.BytesIO(raw))
        image.load()
        return image
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError):
        return None


def check_field(name: str, spec: FieldSpec, value: Any) -> list[dict[str, Any]]:
    loc = ["body", name]
    if value is None:
        if spec.nullable:
            return []
        return [_issue(_TYPE_ISSUES[spec.kind][1], loc, _TYPE_ISSUES[spec.kind][2], value)]
    ok, kind, msg = _TYPE_ISSUES[spec.kind]
    if not ok(value):
        return [_issue(kind, loc, msg, value)]
    if spec.kind == "format" and value not in FORMATS:
        return [_issue(kind, loc, msg, value, {"expected": "'jpeg', 'png' or 'webp'"})]
    if spec.minimum is not None and value < spec.minimum:
        return [
            _issue(
                "greater_than_equal",
                loc,
                f"Input should be greater than or equal to {_num(spec.minimum)}",
                value,
                {"ge": _num(spec.minimum)},
            )
        ]
    if spec.maximum is not None and value > spec.maximum:
        return [
            _issue(
                "less_than_equal",
                loc,
                f"Input should be less than or equal to {_num(spec.maximum)}",
                value,
                {"le": _num(spec.maximum)},
            )
        ]
    if spec.multiple_of is not None and value % spec.multiple_of:
        return [
            _issue(
                "multiple_of",
                loc,
                f"Input should be a multiple of {spec.multiple_of}",
                value,
                {"multiple_of": spec.multiple_of},
            )
        ]
    if spec.kind == "uri" and not (1 <= len(value) <= 2083 and re.match(r"https?://\S+$", value)):
        return [_issue("url_parsing", loc, "Input should be a valid URL", value)]
    if spec.kind == "image":
        is_url = re.match(r"https?://\S+$", value) is not None
        if is_url and spec.base64_only:
            return [
                _issue(
                    "value_error", loc, "Value error, expected a base64 encoded image", value[:100]
                )
            ]
        if not is_url and _decode_image(value) is None:
            return [
                _issue(
                    "value_error",
                    loc,
                    "Value error, expected a URL or a base64 encoded image (no data: URL)",
                    value[:100],
                )
            ]
    return []


def _num(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


STRING = FieldSpec("string")
PROMPT = FieldSpec("string")
REQUIRED_PROMPT = FieldSpec("string", nullable=False)
SEED = FieldSpec("integer")
FORMAT = FieldSpec("format")
BOOL = FieldSpec("boolean", nullable=False)
WEBHOOK = {"webhook_url": FieldSpec("uri"), "webhook_secret": STRING}
SIZE32 = FieldSpec("integer", nullable=False, minimum=256, maximum=1440, multiple_of=32)
SIZE64 = FieldSpec("integer", minimum=64)


def _inputs(count: int) -> dict[str, FieldSpec]:
    names = ["input_image", *(f"input_image_{i}" for i in range(2, count + 1))]
    return {name: FieldSpec("image") for name in names}


def _safety(maximum: int) -> FieldSpec:
    return FieldSpec("integer", nullable=False, minimum=0, maximum=maximum)


@dataclass(frozen=True)
class Schema:
    """One OpenAPI input schema and how its images are sized."""

    name: str
    fields: Mapping[str, FieldSpec]
    sizing: str  # "width_height" | "aspect_ratio" | "flux2"
    required: frozenset[str] = frozenset()
    default_format: str = "jpeg"
    default_ratio: str | None = None  # aspect_ratio schemas without an input image
    target_pixels: int = 1024 * 1024
    side_multiple: int = 16


_PRO11_FIELDS: dict[str, FieldSpec] = {
    "prompt": PROMPT,
    "image_prompt": FieldSpec("image", base64_only=True),
    "width": SIZE32,
    "height": SIZE32,
    "prompt_upsampling": BOOL,
    "seed": SEED,
    "safety_tolerance": _safety(6),
    "output_format": FORMAT,
    **WEBHOOK,
}

SCHEMAS: dict[str, Schema] = {
    "FluxPro11Inputs": Schema("FluxPro11Inputs", _PRO11_FIELDS, "width_height"),
    "FluxDevInputs": Schema(
        "FluxDevInputs",
        {
            **_PRO11_FIELDS,
            "steps": FieldSpec("integer", minimum=1, maximum=50),
            "guidance": FieldSpec("number", minimum=1.5, maximum=5),
        },
        "width_height",
    ),
    "FluxUltraInput": Schema(
        "FluxUltraInput",
        {
            "prompt": PROMPT,
            "prompt_upsampling": BOOL,
            "seed": SEED,
            "aspect_ratio": FieldSpec("string", nullable=False),
            "safety_tolerance": _safety(6),
            "output_format": FORMAT,
            "raw": BOOL,
            "image_prompt": FieldSpec("image", base64_only=True),
            "image_prompt_strength": FieldSpec("number", nullable=False, minimum=0, maximum=1),
            **WEBHOOK,
        },
        "aspect_ratio",
        default_ratio="16:9",
        target_pixels=2048 * 2048,
        side_multiple=32,
    ),
    "FluxKontextProInputs": Schema(
        "FluxKontextProInputs",
        {
            "prompt": REQUIRED_PROMPT,
            **_inputs(4),
            "seed": SEED,
            "aspect_ratio": STRING,
            "output_format": FORMAT,
            **WEBHOOK,
            "prompt_upsampling": BOOL,
            "safety_tolerance": _safety(6),
        },
        "aspect_ratio",
        required=frozenset({"prompt"}),
        default_format="png",
    ),
    "Flux2Inputs": Schema(
        "Flux2Inputs",
        {
            "prompt": REQUIRED_PROMPT,
            **_inputs(8),
            "seed": SEED,
            "width": SIZE64,
            "height": SIZE64,
            "safety_tolerance": _safety(5),
            "output_format": FORMAT,
            **WEBHOOK,
        },
        "flux2",
        required=frozenset({"prompt"}),
    ),
    "Flux2FlexInputs": Schema(
        "Flux2FlexInputs",
        {
            "prompt": REQUIRED_PROMPT,
            "prompt_upsampling": FieldSpec("boolean"),
            **_inputs(8),
            "seed": SEED,
            "width": SIZE64,
            "height": SIZE64,
            "guidance": FieldSpec("number", minimum=1.5, maximum=10),
            "steps": FieldSpec("integer", minimum=1, maximum=50),
            "safety_tolerance": _safety(5),
            "output_format": FORMAT,
            **WEBHOOK,
        },
        "flux2",
        required=frozenset({"prompt"}),
    ),
    "Flux2KleinInputs": Schema(
        "Flux2KleinInputs",
        {
            "prompt": REQUIRED_PROMPT,
            **_inputs(4),
            "seed": SEED,
            "width": SIZE64,
            "height": SIZE64,
            "safety_tolerance": _safety(5),
            "output_format": FORMAT,
            **WEBHOOK,
        },
        "flux2",
        required=frozenset({"prompt"}),
    ),
}


@dataclass(frozen=True)
class Endpoint:
    name: str
    schema: Schema
    credits: float  # for the first megapixel
    credits_per_extra_mp: float = 0.0  # FLUX.2: each further output/input megapixel


ENDPOINTS: dict[str, Endpoint] = {
    e.name: e
    for e in (
        Endpoint("flux-pro-1.1", SCHEMAS["FluxPro11Inputs"], 4.0),
        Endpoint("flux-dev", SCHEMAS["FluxDevInputs"], 2.5),
        Endpoint("flux-pro-1.1-ultra", SCHEMAS["FluxUltraInput"], 6.0),
        Endpoint("flux-kontext-pro", SCHEMAS["FluxKontextProInputs"], 4.0),
        Endpoint("flux-kontext-max", SCHEMAS["FluxKontextProInputs"], 8.0),
        Endpoint("flux-2-pro", SCHEMAS["Flux2Inputs"], 3.0, 1.5),
        Endpoint("flux-2-max", SCHEMAS["Flux2Inputs"], 7.0, 3.0),
        Endpoint("flux-2-flex", SCHEMAS["Flux2FlexInputs"], 6.0, 6.0),
        Endpoint("flux-2-klein-4b", SCHEMAS["Flux2KleinInputs"], 1.4, 0.1),
        Endpoint("flux-2-klein-9b", SCHEMAS["Flux2KleinInputs"], 1.5, 0.2),
    )
}


@dataclass(frozen=True)
class Submission:
    """A validated submit: what the task will produce."""

    endpoint: Endpoint
    prompt: str
    width: int
    height: int
    output_format: str
    seed: int | None
    input_mp: float


def _ratio(text: Any, loc: list[Any]) -> tuple[int, int]:
    match = RATIO_RE.fullmatch(text) if isinstance(text, str) else None
    if not match:
        raise validation_error(
            [
                _issue(
                    "value_error", loc, "Value error, aspect ratio must be of the form 'W:H'", text
                )
            ]
        )
    w, h = int(match[1]), int(match[2])
    if not 9 / 21 <= w / h <= 21 / 9:
        raise validation_error(
            [
                _issue(
                    "value_error",
                    loc,
                    "Value error, aspect ratio must be between 21:9 and 9:21",
                    text,
                )
            ]
        )
    return w, h


def _size_at_ratio(w: int, h: int, pixels: int, multiple: int) -> tuple[int, int]:
    width = math.sqrt(pixels * w / h)
    height = math.sqrt(pixels * h / w)
    return (
        max(multiple, multiple * round(width / multiple)),
        max(multiple, multiple * round(height / multiple)),
    )


def parse_submission(endpoint: Endpoint, body: Any) -> Submission:
    """Validate a submit body like BFL's FastAPI app does; raises :class:`ApiError` (422)."""
    schema = endpoint.schema
    if not isinstance(body, dict):
        raise validation_error(
            [
                _issue(
                    "model_attributes_type",
                    ["body"],
                    "Input should be a valid dictionary or object to extract fields from",
                    body,
                )
            ]
        )
    issues: list[dict[str, Any]] = []
    for name in sorted(schema.required - body.keys()):
        issues.append(_issue("missing", ["body", name], "Field required", body))
    for name, value in body.items():
        spec = schema.fields.get(name)
        if spec is None:
            issues.append(
                _issue("extra_forbidden", ["body", name], "Extra inputs are not permitted", value)
            )
        else:
            issues.extend(check_field(name, spec, value))
    if issues:
        raise validation_error(issues)

    images = [body[k] for k in schema.fields if k.startswith("input_image") and body.get(k)]
    decoded = [None if re.match(r"https?://", v) else _decode_image(v) for v in images]
    input_mp = sum(1.0 if d is None else d.width * d.height / 1e6 for d in decoded)

    if schema.sizing == "width_height":
        width, height = int(body.get("width", 1024)), int(body.get("height", 768))
    elif schema.sizing == "aspect_ratio":
        if body.get("aspect_ratio") is not None:
            w, h = _ratio(body["aspect_ratio"], ["body", "aspect_ratio"])
        elif decoded and decoded[0] is not None:
            w, h = decoded[0].width, decoded[0].height
        else:
            w, h = _ratio(schema.default_ratio or "1:1", ["body", "aspect_ratio"])
        width, height = _size_at_ratio(w, h, schema.target_pixels, schema.side_multiple)
    else:  # flux2: width/height, 0/None = from the first input image, else 1024
        first = decoded[0] if decoded else None
        width = body.get("width") or (first.width if first else 1024)
        height = body.get("height") or (first.height if first else 1024)
        if width * height > FLUX2_MAX_PIXELS:
            raise validation_error(
                [
                    _issue(
                        "value_error",
                        ["body", "width"],
                        f"Value error, width x height must be at most {FLUX2_MAX_PIXELS} pixels",
                        body.get("width"),
                    )
                ]
            )
    return Submission(
        endpoint=endpoint,
        prompt=body.get("prompt") or "",
        width=width,
        height=height,
        output_format=body.get("output_format") or schema.default_format,
        seed=body.get("seed"),
        input_mp=round(input_mp, 2),
    )


def cost_of(sub: Submission) -> float:
    output_mp = sub.width * sub.height / 1e6
    extra = max(0.0, output_mp - 1.0) + sub.input_mp
    return round(sub.endpoint.credits + sub.endpoint.credits_per_extra_mp * extra, 2)


# -- tasks ---------------------------------------------------------------------------

PENDING = "Pending"
READY = "Ready"
ERROR = "Error"
REQUEST_MODERATED = "Request Moderated"
CONTENT_MODERATED = "Content Moderated"
NOT_FOUND = "Task not found"


@dataclass
class Task:
    id: str
    submission: Submission
    created: float
    fate: str  # READY, ERROR, REQUEST_MODERATED, CONTENT_MODERATED or NOT_FOUND ("lost")
    seed: int
    polls: int = 0
    finished: float | None = None  # when a poll first saw it finish
    sample: str | None = None
    expires: float = 0.0


def _fate(prompt: str) -> str:
    if FORBIDDEN_WORD.search(prompt):
        return REQUEST_MODERATED
    if LOST_WORD in prompt:
        return NOT_FOUND
    if CONTENT_MODERATED_WORD in prompt:
        return CONTENT_MODERATED
    if ERROR_WORD in prompt:
        return ERROR
    return READY


def render_sample(task: Task) -> bytes:
    sub = task.submission
    colour = PALETTE[task.seed % len(PALETTE)]
    image = Image.new("RGB", (sub.width, sub.height), colour)
    digest = hashlib.sha256(task.id.encode()).digest()
    side = max(1, min(sub.width, sub.height) // 8)
    ImageDraw.Draw(image).rectangle([0, 0, side, side], fill=tuple(digest[:3]))
    text = f"imagegate-simulator {task.id}"
    if sub.output_format == "png":
        info = PngInfo()
        info.add_text("Comment", text)
        return encode(image, "png", pnginfo=info)
    if sub.output_format == "jpeg":
        return encode(image, "jpeg", quality=90, comment=text.encode())
    return encode(image, "webp", quality=80)


# -- app ------------------------------------------------------------------------------


def _parse_body() -> Any:
    raw = request.get_data(cache=True)
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise validation_error(
            [
                _issue(
                    "json_invalid", ["body", 0], "JSON decode error", {}, {"error": str(exc)[:100]}
                )
            ]
        ) from None


class BflSimulator(Simulator):
    """BFL's task API: submissions, result polls (with regional polling URLs) and signed
    deliveries."""

    provider = PROVIDER
    request_id_header = None  # BFL sends no request id
    auth_header = "x-key"
    auth_logged_as = "key_present"

    def __init__(self, config: SimConfig | None = None) -> None:
        self.secret = secrets.token_bytes(16)
        self.tasks: OrderedDict[str, Task] = OrderedDict()
        super().__init__(config)

    def reset(self) -> None:
        with self.lock:
            self.tasks.clear()

    def http_error(self, err: HTTPException) -> Response:
        status = err.code or 500
        detail = {404: "Not Found", 405: "Method Not Allowed"}.get(status, err.name)
        return ApiError(status, detail).response()

    def failure(self, config: SimConfig) -> ApiError:
        status = config.fail_status
        headers = retry_after_headers(config)
        if status == 429:
            return rate_limited(headers)
        if status == 402:
            return ApiError(402, "Insufficient credits", headers=headers)
        if status == 503:
            return ApiError(503, "Service temporarily unavailable", headers=headers)
        if status >= 500:
            return ApiError(status, "Internal Server Error", headers=headers)
        return ApiError(status, f"Simulated upstream failure (HTTP {status}).", headers=headers)

    def check_auth(self, config: SimConfig) -> None:
        key = request.headers.get("x-key", "").strip()
        if not key:
            raise ApiError(403, "Not authenticated")
        if config.api_key is not None and key != config.api_key:
            raise ApiError(403, "Invalid API key")

    def sign(self, name: str, expires: str) -> str:
        return hmac.new(self.secret, f"{name}:{expires}".encode(), hashlib.sha256).hexdigest()[:32]

    def active_count(self, endpoint: str | None, now: float) -> int:
        return sum(
            1
            for t in self.tasks.values()
            if t.finished is None
            and now - t.created < ACTIVE_WINDOW
            and (endpoint is None or t.submission.endpoint.name == endpoint)
        )

    @route("POST", "/v1/<endpoint>")
    def submit(self, endpoint: str) -> Response:
        raw = request.get_data(cache=True)
        try:
            logged: Any = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            logged = None
        entry = self.record(json=logged)
        prompt = logged.get("prompt") if isinstance(logged, dict) else None
        return self.answer(entry, lambda: self._submit(endpoint, prompt))

    def _submit(self, name: str, prompt: Any) -> Response:
        config = self.state.config
        endpoint = ENDPOINTS.get(name)
        if endpoint is None:
            raise ApiError(404, "Not Found")
        self.check_auth(config)
        self.inject_fault(prompt)
        sub = parse_submission(endpoint, _parse_body())
        now = time.time()
        with self.lock:
            limit = ENDPOINT_LIMITS.get(name)
            if self.active_count(None, now) >= CONCURRENCY_LIMIT or (
                limit is not None and self.active_count(name, now) >= limit
            ):
                raise rate_limited()
            fate = _fate(sub.prompt)
            current = self.state.config
            if fate == READY and current.drop_images > 0:
                self.state.update_config({"drop_images": current.drop_images - 1})
                fate = CONTENT_MODERATED
            task = Task(
                id=str(uuid.uuid4()),
                submission=sub,
                created=now,
                fate=fate,
                seed=sub.seed if sub.seed is not None else secrets.randbelow(2**32),
            )
            self.tasks[task.id] = task
            while len(self.tasks) > MAX_TASKS:
                self.tasks.popitem(last=False)
            remaining = CONCURRENCY_LIMIT - self.active_count(None, now)
        resp = jsonify(
            {
                "id": task.id,
                "polling_url": f"{request.host_url}{REGION}/v1/get_result?id={task.id}",
                "cost": cost_of(sub),
                "input_mp": sub.input_mp,
                "output_mp": round(sub.width * sub.height / 1e6, 2),
            }
        )
        resp.headers["X-RateLimit-Limit"] = str(CONCURRENCY_LIMIT)
        resp.headers["X-RateLimit-Remaining"] = str(max(0, remaining))
        return resp

    @route("GET", "/v1/get_result")
    @route("GET", f"/{REGION}/v1/get_result")
    def get_result(self) -> Response:
        entry = self.record(json=None)
        return self.answer(entry, lambda: jsonify(self._poll(request.args.get("id"))))

    def _poll(self, task_id: str | None) -> dict[str, Any]:
        if task_id is None:
            raise validation_error([_issue("missing", ["query", "id"], "Field required", None)])
        config = self.state.config
        now = time.time()
        with self.lock:
            task = self.tasks.get(task_id)
            if task is None or task.fate == NOT_FOUND:
                self.tasks.pop(task_id, None)
                return _result(task_id, NOT_FOUND)
            task.polls += 1
            if task.fate == REQUEST_MODERATED:  # refused before any processing
                task.finished = task.finished or now
                return _result(task_id, REQUEST_MODERATED, details=_reasons("input"))
            done = task.polls > config.poll_steps and now - task.created >= config.latency
            if not done:
                steps = max(1, config.poll_steps + 1)
                return _result(task_id, PENDING, progress=round(min(0.99, task.polls / steps), 2))
            if task.finished is None:
                task.finished = now
                if task.fate == READY:
                    self._publish(task, config)
        if task.fate == CONTENT_MODERATED:
            return _result(task_id, CONTENT_MODERATED, details=_reasons("output"))
        if task.fate == ERROR:
            return _result(task_id, ERROR, details={"error": "Simulated generation failure."})
        return _result(
            task_id,
            READY,
            progress=1.0,
            result={
                "sample": task.sample,
                "prompt": task.submission.prompt,
                "seed": task.seed,
                "start_time": task.created,
                "end_time": task.finished,
                "duration": round((task.finished or now) - task.created, 3),
            },
        )

    def _publish(self, task: Task, config: SimConfig) -> None:
        """Render the task's image and sign its URL (called once, under ``lock``)."""
        fmt = task.submission.output_format
        name = f"{task.id}.{fmt}"
        self.state.put_file(name, render_sample(task), CONTENT_TYPES[fmt])
        expires = f"{(task.finished or time.time()) + config.result_ttl:.3f}"
        task.expires = float(expires)
        task.sample = (
            f"{request.host_url}delivery/{task.id}/sample.{fmt}"
            f"?se={expires}&sp=r&sig={self.sign(name, expires)}"
        )

    @route("GET", "/delivery/<task_id>/sample.<fmt>")
    def delivery(self, task_id: str, fmt: str) -> Response:
        entry = self.record(json=None)
        resp = self._deliver(f"{task_id}.{fmt}")
        self.state.set_request_status(entry, resp.status_code)
        return resp

    def _deliver(self, name: str) -> Response:
        expires = request.args.get("se", "")
        if not hmac.compare_digest(request.args.get("sig", ""), self.sign(name, expires)):
            return Response("Signature did not match.", status=403, content_type="text/plain")
        try:
            expired = time.time() > float(expires)
        except ValueError:
            expired = True
        stored = self.state.get_file(name)
        if expired or stored is None:
            return Response("The result has expired.", status=404, content_type="text/plain")
        return Response(stored.data, status=200, content_type=stored.content_type)


def _reasons(where: str) -> dict[str, Any]:
    return {"Moderation Reasons": [f"Simulated {where} moderation"]}


def _result(
    task_id: str,
    status: str,
    *,
    result: dict[str, Any] | None = None,
    progress: float | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": task_id,
        "status": status,
        "result": result,
        "progress": progress,
        "details": details,
        "preview": None,
    }


create_app = BflSimulator.create_app

__all__ = [
    "ENDPOINTS",
    "SCHEMAS",
    "ApiError",
    "BflSimulator",
    "SimConfig",
    "create_app",
    "parse_submission",
]
