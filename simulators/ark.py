"""Simulator of ByteDance Seedream on BytePlus ModelArk / Volcengine Ark.

It imitates ``POST https://ark.ap-southeast.bytepluses.com/api/v3/images/generations``,
a **synchronous** JSON call with ``Authorization: Bearer <ARK_API_KEY>``. It
imports nothing from the gateway; this docstring is its specification (what it
imitates of BytePlus' ModelArk documentation, and where it chooses).

Models (``model``), with the limits the simulator enforces:

=================== ========================== ========== ======================= =============
model               total pixels of ``size``   references size keywords           output_format
=================== ========================== ========== ======================= =============
seedream-4-0-250828 1280*720 .. 4096*4096      <= 10      1K 2K 4K                ignored (jpeg)
seedream-4-5-251128 2560*1440 .. 4096*4096     <= 14      2K 4K                   ignored (jpeg)
seedream-5-0-260128 2560*1440 .. 10404496      <= 14      2K 3K                   jpeg | png
=================== ========================== ========== ======================= =============

(The 4.0 band is BytePlus' documented one; the 4.5 lower bound and the 5.0-lite
upper bound come from copies of BytePlus' documentation and are less certain.)
Any other model is a 404 ``InvalidEndpointOrModel.NotFound``.

Request body (JSON object; ``null`` values count as absent, as the Ark SDK sends
``null`` for every field it was not given):

* ``model``, ``prompt`` (required, non-empty strings; else 400 ``MissingParameter``);
* ``size``: ``"WxH"`` (digits, lower-case ``x``) with the total pixels inside the
  model's band and the aspect ratio in [1/16, 16], or a size keyword (a square of
  1024/2048/3072/4096 px); default ``2048x2048``;
* ``image``: a string or a list of strings, each an ``http(s)://`` URL (not
  fetched) or ``data:image/<fmt>;base64,<data>`` with a lower-case format
  (png, jpeg, jpg, webp, bmp, tiff, gif) whose bytes Pillow opens as that kind of
  image, each side > 14 px and <= 6000 px, ratio in [1/3, 3], <= 10 MB;
* ``response_format``: ``url`` (default) | ``b64_json``;
* ``seed``: integer in [-1, 2147483647] (it picks the colour of the first image);
* ``watermark``: boolean, default **true** (a white "AI generated" box is drawn in
  the bottom-right corner);
* ``sequential_image_generation``: ``disabled`` (default, exactly one image) |
  ``auto`` with ``sequential_image_generation_options: {"max_images": 1..15}``
  (default 15); references + max_images must not exceed 15. In ``auto`` mode the
  simulator answers exactly ``max_images`` images (minus ``drop_images``);
* ``output_format``: ``jpeg`` | ``png`` (honoured by 5.0-lite only, the others
  answer JPEG);
* ``optimize_prompt`` (bool), ``optimize_prompt_options`` (``{mode, thinking}``):
  accepted and ignored; ``tools`` (``[{"type": "web_search"}]``, 5.0-lite only);
* ``guidance_scale`` (Seedream 3.0 only), ``layer_decomposition: true`` and
  ``stream: true`` (no SSE here) are rejected; any other field (``n``,
  ``quality``, ...) is a 400 ``InvalidParameter`` naming it.

Response (200)::

    {"model", "created", "data": [{"url" | "b64_json", "size": "WxH"}, ...],
     "usage": {"generated_images", "output_tokens", "total_tokens"}}

``output_tokens`` is width*height/256 per image, as Ark bills. URLs point at
``GET /files/<id>-<expiry ms>.<ext>`` on this simulator and answer 404 (an
object-storage style XML body) after ``result_ttl`` seconds.

Moderation: a prompt with the word "forbidden" gets, with
``sequential_image_generation: disabled``, a 400 ``InputTextSensitiveContentDetected``;
in ``auto`` mode the batch goes on and its first item is
``{"error": {"code": "OutputImageSensitiveContentDetected", "message"}}`` instead
of an image, as Ark reports per-image content-filter failures in a batch.

A prompt containing ``sim-malformed-json`` is answered 200 with a truncated
JSON body (to test the gateway's handling of garbage).

Errors use Ark's OpenAI-compatible envelope
``{"error": {"code", "message", "param", "type"}}`` (``param`` is ``""`` when no
field is at fault; messages end with ``Request id: <id>``):

* 401 ``Unauthorized``/``AuthenticationError``: missing or wrong bearer key;
* 400 ``BadRequest``/``InvalidParameter`` or ``MissingParameter`` (``param`` names
  the field), ``InputTextSensitiveContentDetected``;
* 404 ``NotFound``/``InvalidEndpointOrModel.NotFound`` (unknown model);
* injected failures (a fault the request names in its ``X-Sim-Fault`` header or
  prompt, see :mod:`simulators.base`; ``/_sim/config``): 429 ``TooManyRequests``/
  ``RateLimitExceeded.EndpointRPMExceeded``, 500 ``InternalServerError``/
  ``InternalServiceError``, 503 ``ServiceUnavailable``, others a generic body of
  the status; optional ``Retry-After``.

Every response carries ``x-request-id`` (the Ark SDK reads the request id there).

Order of processing for a generation: record it in the request log, sleep
``latency``, check the key, inject a failure (a named fault, then
``fail_next``, then ``failure_rate``), parse and validate the body, moderate, generate.

Test/control endpoints: ``GET|POST /_sim/config`` (POST merges JSON),
``GET|DELETE /_sim/requests``, ``POST /_sim/reset``, ``GET /_sim/health``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import Response, g, jsonify, request
from PIL import Image, ImageDraw, UnidentifiedImageError
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
)
from simulators.control import parse_json_body
from simulators.state import PALETTE, SimConfig

PROVIDER = "ark"
API_PREFIX = "/api/v3"

MIN_RATIO = 1 / 16
MAX_RATIO = 16.0
DEFAULT_SIZE = "2048x2048"
MAX_IMAGES = 15  # references + generated images per call
SEED_MAX = 2147483647
MAX_REFERENCE_BYTES = 10 * 1024 * 1024
MAX_REFERENCE_SIDE = 6000
MIN_REFERENCE_SIDE = 15  # "sides > 14 px"
REFERENCE_FORMATS = {
    "png": "PNG",
    "jpeg": "JPEG",
    "jpg": "JPEG",
    "webp": "WEBP",
    "bmp": "BMP",
    "tiff": "TIFF",
    "gif": "GIF",
}
KEYWORD_SIDES = {"1K": 1024, "2K": 2048, "3K": 3072, "4K": 4096}

SIZE_RE = re.compile(r"([0-9]{1,6})x([0-9]{1,6})")
DATA_URL_RE = re.compile(r"data:image/([a-z]+);base64,(.*)", re.DOTALL)
MALFORMED_TOKEN = "sim-malformed-json"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    min_pixels: int
    max_pixels: int
    max_references: int
    keywords: tuple[str, ...]
    output_formats: bool  # honours output_format (else always JPEG)
    tools: bool  # accepts tools=[{"type": "web_search"}]


_4K = 4096 * 4096
MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("seedream-4-0-250828", 1280 * 720, _4K, 10, ("1K", "2K", "4K"), False, False),
        ModelSpec("seedream-4-5-251128", 2560 * 1440, _4K, 14, ("2K", "4K"), False, False),
        ModelSpec("seedream-5-0-260128", 2560 * 1440, 10404496, 14, ("2K", "3K"), True, True),
    )
}

KNOWN_FIELDS = frozenset(
    {
        "model",
        "prompt",
        "image",
        "response_format",
        "size",
        "seed",
        "guidance_scale",
        "watermark",
        "sequential_image_generation",
        "sequential_image_generation_options",
        "optimize_prompt",
        "optimize_prompt_options",
        "output_format",
        "tools",
        "layer_decomposition",
        "stream",
    }
)


class ArkError(SimError):
    """An Ark-style error answer: ``{"error": {"code", "message", "param", "type"}}``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        error_type: str = "BadRequest",
        param: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.error_type = error_type
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        rid = g.get("request_id", "")
        return {
            "error": {
                "code": self.code,
                "message": f"{self.message} Request id: {rid}",
                "param": self.param,
                "type": self.error_type,
            }
        }


def invalid(param: str, detail: str) -> ArkError:
    return ArkError(
        400,
        "InvalidParameter",
        f"The parameter `{param}` specified in the request is not valid: {detail}.",
        param=param,
    )


def missing(param: str) -> ArkError:
    return ArkError(
        400,
        "MissingParameter",
        "The request failed because it is missing one or multiple required parameters.",
        param=param,
    )


# -- validation -----------------------------------------------------------------------


@dataclass(frozen=True)
class Generation:
    spec: ModelSpec
    prompt: str
    width: int
    height: int
    references: tuple[str, ...]
    response_format: str
    seed: int | None
    watermark: bool
    batch: bool  # sequential_image_generation == "auto"
    max_images: int
    output_format: str  # what is produced: "jpeg" or "png"


def _string(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise invalid(name, "expected a string")
    return value


def _choice(body: dict[str, Any], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = _string(body, name)
    if value is None:
        return default
    if value not in allowed:
        raise invalid(name, f"'{value}' is not one of {', '.join(allowed)}")
    return value


def _boolean(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid(name, "expected a boolean")
    return value


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _size(body: dict[str, Any], spec: ModelSpec) -> tuple[int, int]:
    size = _string(body, "size")
    if size is None:
        size = DEFAULT_SIZE
    if size in spec.keywords:
        side = KEYWORD_SIDES[size]
        return side, side
    match = SIZE_RE.fullmatch(size)
    if match is None:
        keywords = ", ".join(spec.keywords)
        raise invalid("size", f"expected '<width>x<height>' or one of {keywords}, got '{size}'")
    width, height = int(match[1]), int(match[2])
    if width < 1 or height < 1:
        raise invalid("size", f"'{size}' has an empty side")
    pixels = width * height
    if not spec.min_pixels <= pixels <= spec.max_pixels:
        raise invalid(
            "size",
            f"the total pixels of '{size}' ({pixels}) must be between {spec.min_pixels} "
            f"and {spec.max_pixels}",
        )
    if not MIN_RATIO <= width / height <= MAX_RATIO:
        raise invalid("size", f"the aspect ratio of '{size}' must be between 1/16 and 16")
    return width, height


def _check_reference(index: int, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise invalid("image", f"image {index} must be a non-empty string")
    if value.startswith(("http://", "https://")):
        return value
    match = DATA_URL_RE.fullmatch(value)
    if match is None:
        raise invalid(
            "image",
            f"image {index} must be an http(s) URL or 'data:image/<format>;base64,<data>' "
            "with a lower-case format",
        )
    label, payload = match[1], match[2]
    if label not in REFERENCE_FORMATS:
        raise invalid("image", f"image {index} has the unsupported format '{label}'")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise invalid("image", f"image {index} is not valid base64") from None
    if len(data) > MAX_REFERENCE_BYTES:
        raise invalid("image", f"image {index} is larger than 10 MB")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            fmt, width, height = probe.format, probe.width, probe.height
    except (UnidentifiedImageError, OSError):
        raise invalid("image", f"image {index} cannot be decoded as an image") from None
    if fmt != REFERENCE_FORMATS[label]:
        raise invalid("image", f"image {index} is declared as {label} but is {fmt}")
    if min(width, height) < MIN_REFERENCE_SIDE or max(width, height) > MAX_REFERENCE_SIDE:
        raise invalid("image", f"image {index} is {width}x{height}; sides must be 15-6000 px")
    if not 1 / 3 <= width / height <= 3:
        raise invalid("image", f"the aspect ratio of image {index} must be between 1/3 and 3")
    return value


def _references(body: dict[str, Any], spec: ModelSpec) -> tuple[str, ...]:
    value = body.get("image")
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    if not items:
        raise invalid("image", "expected at least one image")
    if len(items) > spec.max_references:
        raise invalid(
            "image", f"{spec.name} accepts at most {spec.max_references} reference images"
        )
    return tuple(_check_reference(i, item) for i, item in enumerate(items))


def parse_generation(body: Any) -> Generation:
    """Validate a generation body as Ark does; raises :class:`ArkError`."""
    if not isinstance(body, dict):
        raise ArkError(400, "InvalidParameter", "The request body must be a JSON object.")
    for key, value in body.items():
        if key not in KNOWN_FIELDS and value is not None:
            raise invalid(key, "unknown parameter")

    model = _string(body, "model")
    if not model:
        raise missing("model")
    spec = MODELS.get(model)
    if spec is None:
        raise ArkError(
            404,
            "InvalidEndpointOrModel.NotFound",
            f"The model or endpoint {model} does not exist or you do not have access to it.",
            error_type="NotFound",
            param="model",
        )
    prompt = _string(body, "prompt")
    if not prompt:
        raise missing("prompt")

    width, height = _size(body, spec)
    references = _references(body, spec)
    response_format = _choice(body, "response_format", ("url", "b64_json"), "url")
    seed = body.get("seed")
    if seed is not None and (not _int(seed) or not -1 <= seed <= SEED_MAX):
        raise invalid("seed", f"expected an integer between -1 and {SEED_MAX}")
    watermark = _boolean(body, "watermark", True)
    mode = _choice(body, "sequential_image_generation", ("auto", "disabled"), "disabled")
    options = body.get("sequential_image_generation_options")
    max_images = MAX_IMAGES
    if options is not None:
        if not isinstance(options, dict) or set(options) - {"max_images"}:
            raise invalid("sequential_image_generation_options", "expected {max_images}")
        value = options.get("max_images")
        if value is not None:
            if not _int(value) or not 1 <= value <= MAX_IMAGES:
                raise invalid(
                    "sequential_image_generation_options.max_images",
                    f"expected an integer between 1 and {MAX_IMAGES}",
                )
            max_images = value
    batch = mode == "auto"
    if batch and len(references) + max_images > MAX_IMAGES:
        raise invalid(
            "sequential_image_generation_options.max_images",
            f"reference images ({len(references)}) plus max_images ({max_images}) "
            f"must not exceed {MAX_IMAGES}",
        )
    requested_format = _choice(body, "output_format", ("jpeg", "png"), "jpeg")
    output_format = requested_format if spec.output_formats else "jpeg"

    if body.get("guidance_scale") is not None:
        raise invalid("guidance_scale", f"{spec.name} does not support guidance_scale")
    _boolean(body, "optimize_prompt", False)
    prompt_options = body.get("optimize_prompt_options")
    if prompt_options is not None:
        if not isinstance(prompt_options, dict) or set(prompt_options) - {"mode", "thinking"}:
            raise invalid("optimize_prompt_options", "expected {mode, thinking}")
        _choice(prompt_options, "mode", ("standard", "fast"), "standard")
    tools = body.get("tools")
    if tools is not None:
        if not spec.tools:
            raise invalid("tools", f"{spec.name} does not support tools")
        if not isinstance(tools, list) or any(t != {"type": "web_search"} for t in tools):
            raise invalid("tools", 'expected [{"type": "web_search"}]')
    if _boolean(body, "layer_decomposition", False):
        raise invalid("layer_decomposition", f"{spec.name} does not support layer decomposition")
    if _boolean(body, "stream", False):
        raise invalid("stream", "streaming is not supported by this simulator; send stream=false")

    return Generation(
        spec=spec,
        prompt=prompt,
        width=width,
        height=height,
        references=references,
        response_format=response_format,
        seed=seed if seed is not None and seed >= 0 else None,
        watermark=watermark,
        batch=batch,
        max_images=max_images,
        output_format=output_format,
    )


# -- images ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=128)
def _encode(width: int, height: int, fmt: str, colour: int, watermark: bool) -> bytes:
    image = Image.new("RGB", (width, height), PALETTE[colour])
    if watermark:
        # The "AI generated" mark Ark puts in the bottom-right corner.
        box_w, box_h = max(4, width // 8), max(2, height // 24)
        ImageDraw.Draw(image).rectangle(
            (width - box_w - 8, height - box_h - 8, width - 9, height - 9), fill=(255, 255, 255)
        )
    return encode(image, fmt, quality=85)


def _not_found_xml(name: str) -> Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code>'
        f"<Message>The specified key does not exist.</Message><Key>{name}</Key></Error>"
    )
    return Response(body, status=404, content_type="application/xml")


# -- app ------------------------------------------------------------------------------


class ArkSimulator(Simulator):
    """ModelArk's synchronous image generation endpoint and the files it links to."""

    provider = PROVIDER

    def new_request_id(self) -> str:
        return f"021{int(time.time() * 1000)}{uuid.uuid4().hex[:24]}"

    def http_error(self, err: HTTPException) -> Response:
        status = err.code or 500
        if status == 404:
            return ArkError(
                404, "NotFound", f"Invalid URL ({request.method} {request.path}).",
                error_type="NotFound",
            ).response()  # fmt: skip
        return ArkError(status, err.name.replace(" ", ""), err.description or err.name).response()

    def failure(self, config: SimConfig) -> ArkError:
        status = config.fail_status
        headers = retry_after_headers(config)
        if status == 429:
            return ArkError(
                429,
                "RateLimitExceeded.EndpointRPMExceeded",
                "The Requests Per Minute (RPM) limit of the associated endpoint for your account "
                "has been exceeded.",
                error_type="TooManyRequests",
                headers=headers,
            )
        if status == 503:
            return ArkError(
                503,
                "ServiceUnavailable",
                "The service is temporarily unavailable. Please try again later.",
                error_type="ServiceUnavailable",
                headers=headers,
            )
        if status >= 500:
            return ArkError(
                status,
                "InternalServiceError",
                "The service encountered an unexpected internal error.",
                error_type="InternalServerError",
                headers=headers,
            )
        return ArkError(
            status,
            "SimulatedFailure",
            f"Simulated upstream failure (HTTP {status}).",
            error_type="BadRequest",
            headers=headers,
        )

    def check_auth(self, config: SimConfig) -> None:
        token = credential()
        if token is None or (config.api_key is not None and token != config.api_key):
            raise ArkError(
                401,
                "AuthenticationError",
                "The API key or AK/SK in the request is missing or invalid.",
                error_type="Unauthorized",
            )

    @route("POST", f"{API_PREFIX}/images/generations")
    def generations(self) -> Response:
        body, raw_text = parse_json_body()
        entry = self.record(json=body, raw_body=raw_text)
        return self.answer(entry, lambda: self._generate(body, raw_text))

    def _generate(self, body: Any, raw_text: str | None) -> Response:
        config = self.admit(body.get("prompt") if isinstance(body, dict) else None)
        if raw_text is not None:
            raise ArkError(400, "InvalidParameter", "The request body is not valid JSON.")
        gen = parse_generation(body)
        if FORBIDDEN_WORD.search(gen.prompt) and not gen.batch:
            raise ArkError(
                400,
                "InputTextSensitiveContentDetected",
                "The request failed because the input text may contain sensitive information.",
            )
        if MALFORMED_TOKEN in gen.prompt:
            return Response('{"model": "' + gen.spec.name + '", "data": [{"url": ', 200,
                            content_type="application/json")  # fmt: skip

        count = max(0, gen.max_images - config.drop_images) if gen.batch else 1
        filtered = {0} if gen.batch and FORBIDDEN_WORD.search(gen.prompt) else set()
        if gen.seed is not None:
            base_colour = gen.seed % len(PALETTE)
        else:
            base_colour = uuid.uuid4().int % len(PALETTE)
        expires_ms = int((time.time() + config.result_ttl) * 1000)
        items: list[dict[str, Any]] = []
        tokens = 0
        for index in range(count):
            if index in filtered:
                items.append(
                    {
                        "error": {
                            "code": "OutputImageSensitiveContentDetected",
                            "message": "The request failed because the output image may "
                            "contain sensitive information.",
                        }
                    }
                )
                continue
            file_id = uuid.uuid4().hex
            colour = (base_colour + index) % len(PALETTE)
            data = _encode(gen.width, gen.height, gen.output_format, colour, gen.watermark)
            data = tag_file(data, gen.output_format, file_id)
            item: dict[str, Any] = {}
            if gen.response_format == "url":
                name = f"{file_id}-{expires_ms}.{gen.output_format}"
                self.state.put_file(name, data, CONTENT_TYPES[gen.output_format])
                item["url"] = f"{request.host_url}files/{name}"
            else:
                item["b64_json"] = base64.b64encode(data).decode("ascii")
            item["size"] = f"{gen.width}x{gen.height}"
            items.append(item)
            tokens += gen.width * gen.height // 256
        generated = count - len(filtered)
        return jsonify(
            {
                "model": gen.spec.name,
                "created": int(time.time()),
                "data": items,
                "usage": {
                    "generated_images": generated,
                    "output_tokens": tokens,
                    "total_tokens": tokens,
                },
            }
        )

    @route("GET", "/files/<name>")
    def files(self, name: str) -> Response:
        match = re.fullmatch(r"[0-9a-f]+-([0-9]+)\.(?:jpeg|png)", name)
        stored = self.state.get_file(name)
        if match is None or stored is None or time.time() * 1000 > int(match[1]):
            return _not_found_xml(name)
        return Response(stored.data, status=200, content_type=stored.content_type)


create_app = ArkSimulator.create_app

__all__ = ["ArkError", "ArkSimulator", "MODELS", "SimConfig", "create_app", "parse_generation"]
