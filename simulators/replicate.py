"""Simulator of the Replicate predictions API (``https://api.replicate.com/v1``).

It stands in for Replicate in tests and load runs and imports nothing from the
gateway. This docstring is its specification: what it imitates of Replicate's
HTTP API documentation, with facts taken from examples rather than the
reference marked [T] and facts the documentation leaves open marked [?]:

Endpoints (all under ``/v1``, ``Authorization: Bearer <token>``; the legacy
``Token <token>`` scheme is accepted too):

* ``POST /v1/models/{owner}/{name}/predictions`` -- official models only, body
  ``{input, webhook?, webhook_events_filter?, stream?}``. A community model
  (one that needs a version) answers 404 [?].
* ``POST /v1/predictions`` -- body adds the required ``version``: the bare
  64-hex version id, ``owner/name:<64-hex>``, or ``owner/name`` for an
  official model; anything else is 422 "Invalid version or not permitted".
* ``GET /v1/predictions/{id}``, ``POST /v1/predictions/{id}/cancel``,
  ``GET /v1/predictions`` (one page, newest first, ``next: null``),
  ``GET /v1/webhooks/default/secret`` (``{"key": "whsec_..."}``; webhooks
  are validated but not delivered).
* Result files: ``GET /delivery/xezq/<token>/out-<i>.<ext>`` on this
  simulator (Replicate's ``https://replicate.delivery/...``), 404 once
  ``result_ttl`` seconds have passed since the prediction completed; at the
  same moment the prediction's ``output`` becomes ``null`` with
  ``data_removed: true`` (Replicate deletes API data after 1 h).

Request headers: ``Prefer: wait`` (60 s) or ``Prefer: wait=N`` with N in
1..60 (else 400 [?]) holds the create call until the prediction is terminal
or N seconds pass, then answers 201 with the prediction as it stands.
``Cancel-After: <Go duration>`` (``45s``, ``1m30s``, ``500ms``; else 400 [?])
sets the prediction's ``deadline``: reaching it before the prediction
started makes it ``aborted``, while running ``canceled``.

The prediction state machine. Create answers **201** with ``{id, model,
version ("hidden" for official models), input, output, logs, error, status,
created_at, started_at, completed_at, data_removed, deadline?, source,
metrics, urls: {get, cancel, web}}``. A prediction is ``starting`` until its
first ``GET`` (or until a ``Prefer: wait`` hold starts it), then
``processing``; the first ``poll_steps`` polls answer ``processing``; after
that a poll completes it once ``latency`` seconds (the simulated run time)
have passed since creation. ``latency`` is therefore the model's run time,
not a delay before the create answer. With ``poll_steps = 0`` a ``Prefer:
wait`` create completes in the one call. ``POST .../cancel`` moves a running
prediction to ``canceled`` (terminal ones are left alone) and answers 200 with
the prediction. Terminal statuses: succeeded, failed, canceled, aborted.

Models (``MODELS``; inputs are checked against each model's schema like
Replicate's JSON-schema validation, *and unknown input fields are rejected*:
Replicate itself may silently ignore them, which is exactly why the adapter
must never send one, so the simulator is stricter to catch it):

================================= ======= ============== ========== ===============
model                             route   size inputs    count      output
================================= ======= ============== ========== ===============
black-forest-labs/flux-schnell    models  aspect_ratio,  num_outputs list, webp
                                          megapixels     1-4        (jpg, png)
black-forest-labs/flux-dev        models  as schnell,    num_outputs list, webp
                                          + image        1-4
black-forest-labs/flux-pro        models  aspect_ratio   --         one URL, webp
                                          (+ "custom"
                                          width/height
                                          256-1440, /32)
stability-ai/sdxl                 version width/height   num_outputs list, png
                                          (multiple of 8 1-4
                                          at run time)
playgroundai/playground-v2.5-...  version width/height   num_outputs list, png
                                          256-1536, /8   1-4
stability-ai/stable-diffusion-    models  aspect_ratio   --         list, webp
3.5-large                                 (+ image)
stability-ai/stable-diffusion-    models  aspect_ratio   --         one URL, webp
3.5-large-turbo                           (+ image)
ideogram-ai/ideogram-v3-turbo     models  aspect_ratio,  --         one URL, png
                                          resolution,
                                          style_reference_images
google/imagen-3                   models  aspect_ratio   --         one URL, jpg
                                          (5 ratios)                (png) [T]
================================= ======= ============== ========== ===============

Ratio-only inputs give about one megapixel at that ratio (width a multiple
of 64, height the nearest multiple of 64; flux ``megapixels: "0.25"`` gives a
quarter of that). Input files (``image``, ``image_prompt``, ``mask``,
``style_reference_images``) must be http(s) URLs or data URLs of at most
256 KB. A ``mask`` (sdxl, playground: inpainting, white = repaint) works
only with an ``image`` and must be an image of the same size when both are
data URLs; otherwise the prediction fails at run time (as the models' code
does). Images are real PNG/JPEG/WebP files of exactly the size produced, one
solid colour per output index (``seed`` picks the colour).

Run-time failures (prediction ``failed`` with an ``error`` string, as
Replicate reports them): a prompt containing the word "forbidden" fails with
the model's NSFW/safety message at completion; sdxl/playground sizes that are
not multiples of 8 fail like diffusers does; ``drop_images`` returns that
many outputs fewer for ``num_outputs`` models (all dropped: the NSFW
failure), and does not apply to one-image models.

Errors are RFC 7807 ``{type, title, status, detail, instance}``: 401
"Unauthenticated" for a missing/wrong key (on every API endpoint), 404 "Not
found", 422 "Input validation failed" with ``detail`` lines ``- input.<field>:
<message>`` and ``invalid_fields: [{type, field, description}]`` [T], 429
``{"detail": "Request was throttled. Your rate limit resets in ~30s."}``,
5xx "Internal Server Error"/"Service Unavailable". Injected failures
(a fault the request names in its ``X-Sim-Fault`` header or ``input.prompt``,
see :mod:`simulators.base`; then ``fail_next``; then ``failure_rate``) hit
prediction *creates* only,
with ``Retry-After`` when ``retry_after`` is set. Every response carries
``X-Request-Id`` [?]. ``POST /_sim/malformed {"next": N}`` makes the next N
creates answer 201 with a body that is not JSON (reset clears it).

Order of processing for a create: record it in the request log, check the
key, inject a failure, answer malformed if asked, validate, create, hold
(``Prefer: wait``), answer 201.

Test/control endpoints: ``GET|POST /_sim/config`` (POST merges JSON),
``GET|DELETE /_sim/requests`` (every ``/v1`` call with its JSON body, headers
without ``Authorization`` and the status answered), ``POST /_sim/reset``,
``GET /_sim/health``, ``POST /_sim/malformed``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import re
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from flask import Response, g, jsonify, request
from PIL import Image, UnidentifiedImageError
from werkzeug.exceptions import HTTPException

from simulators.base import (
    CONTENT_TYPES as IMAGE_TYPES,
)
from simulators.base import (
    FORBIDDEN_WORD,
    SimError,
    Simulator,
    credential,
    retry_after_headers,
    route,
    solid_image,
)
from simulators.control import parse_json_body
from simulators.state import PALETTE, SimConfig, SimState

PROVIDER = "replicate"

TERMINAL = frozenset({"succeeded", "failed", "canceled", "aborted"})
ID_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
PREFER_RE = re.compile(r"\s*wait\s*(?:=\s*([0-9]{1,4}))?\s*")
DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|h|m|s)")
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_PREFER_WAIT = 60
DATA_URL_MAX_BYTES = 256 * 1024
TARGET_AREA = 1024 * 1024
MAX_PREDICTIONS = 5000
THROTTLED = "Request was throttled. Your rate limit resets in ~30s."
WEBHOOK_EVENTS = ("start", "output", "logs", "completed")
CONTENT_TYPES = {**IMAGE_TYPES, "jpg": "image/jpeg"}  # Replicate says jpg


# -- model schemas ----------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One input of a model's schema (the subset of JSON schema Replicate uses)."""

    kind: str  # string | integer | number | boolean | enum | uri | uri_list
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()


def _string(required: bool = False) -> Field:
    return Field("string", required=required)


def _int(lo: float | None = None, hi: float | None = None) -> Field:
    return Field("integer", minimum=lo, maximum=hi)


def _num(lo: float | None = None, hi: float | None = None) -> Field:
    return Field("number", minimum=lo, maximum=hi)


def _enum(*choices: str) -> Field:
    return Field("enum", choices=choices)


BOOL = Field("boolean")
URI = Field("uri")
URI_LIST = Field("uri_list")

FLUX_RATIOS = ("1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21")
IDEOGRAM_RATIOS = (
    "1:3", "3:1", "1:2", "2:1", "9:16", "16:9", "10:16", "16:10",
    "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "1:1",
)  # fmt: skip
IMAGEN_RATIOS = ("1:1", "9:16", "16:9", "3:4", "4:3")
FORMATS = ("webp", "jpg", "png")
SDXL_SCHEDULERS = (
    "DDIM", "DPMSolverMultistep", "HeunDiscrete", "KarrasDPM",
    "K_EULER_ANCESTRAL", "K_EULER", "PNDM",
)  # fmt: skip
PLAYGROUND_SCHEDULERS = (
    "DDIM", "DPMSolverMultistep", "HeunDiscrete", "K_EULER_ANCESTRAL",
    "K_EULER", "PNDM", "DPM++2MKarras", "DPMSolver++",
)  # fmt: skip

NSFW = "NSFW content detected. Try running it again, or try a different prompt."
ALL_NSFW = (
    "All generated images contained NSFW content. Try running it again with a different prompt."
)


@dataclass(frozen=True)
class ModelSpec:
    slug: str
    version_id: str
    official: bool
    fields: Mapping[str, Field]
    size: str  # "ratio" (aspect_ratio enum), "wh" (width/height)
    custom_ratio: bool = False  # aspect_ratio "custom" enables width/height (flux-pro)
    side_multiple: int = 0  # width/height must be multiples of this at run time (sdxl)
    count_field: str | None = None
    formats: tuple[str, ...] = ()  # upstream spellings; () = the default only
    default_format: str = "png"
    list_output: bool = True
    moderation_error: str = NSFW


def _version_of(slug: str) -> str:
    """A stable made-up 64-hex version id for official models."""
    return hashlib.sha256(slug.encode()).hexdigest()


def _flux_fields(**extra: Field) -> dict[str, Field]:
    return {
        "prompt": _string(required=True),
        "aspect_ratio": _enum(*FLUX_RATIOS),
        "num_outputs": _int(1, 4),
        "seed": _int(),
        "output_format": _enum(*FORMATS),
        "output_quality": _int(0, 100),
        "disable_safety_checker": BOOL,
        "go_fast": BOOL,
        "megapixels": _enum("1", "0.25"),
        **extra,
    }


def _sd35_fields(**extra: Field) -> dict[str, Field]:
    return {
        "prompt": _string(required=True),
        "negative_prompt": _string(),
        "aspect_ratio": _enum(*FLUX_RATIOS),
        "cfg": _num(0, 20),
        "image": URI,
        "prompt_strength": _num(0, 1),
        "steps": _int(1, 50),
        "seed": _int(),
        "output_format": _enum(*FORMATS),
        "output_quality": _int(0, 100),
        **extra,
    }


_SPECS = (
    ModelSpec(
        "black-forest-labs/flux-schnell",
        "c846a69991daf4c0e5d016514849d14ee5b2e6846ce6b9d6f21369e564cfe51e",
        True,
        _flux_fields(num_inference_steps=_int(1, 4)),
        "ratio",
        count_field="num_outputs",
        formats=FORMATS,
        default_format="webp",
        moderation_error=ALL_NSFW,
    ),
    ModelSpec(
        "black-forest-labs/flux-dev",
        _version_of("black-forest-labs/flux-dev"),
        True,
        _flux_fields(
            image=URI,
            prompt_strength=_num(0, 1),
            num_inference_steps=_int(1, 50),
            guidance=_num(0, 10),
        ),
        "ratio",
        count_field="num_outputs",
        formats=FORMATS,
        default_format="webp",
        moderation_error=ALL_NSFW,
    ),
    ModelSpec(
        "black-forest-labs/flux-pro",
        _version_of("black-forest-labs/flux-pro"),
        True,
        {
            "prompt": _string(required=True),
            "image_prompt": URI,
            "aspect_ratio": _enum(*FLUX_RATIOS, "custom"),
            "width": _int(256, 1440),
            "height": _int(256, 1440),
            "steps": _int(1, 50),
            "guidance": _num(2, 5),
            "interval": _num(1, 4),
            "safety_tolerance": _int(1, 6),
            "seed": _int(),
            "output_format": _enum(*FORMATS),
            "output_quality": _int(0, 100),
            "prompt_upsampling": BOOL,
        },
        "ratio",
        custom_ratio=True,
        formats=FORMATS,
        default_format="webp",
        list_output=False,
        moderation_error="Content flagged as potentially sensitive (NSFW). Try a different prompt.",
    ),
    ModelSpec(
        "stability-ai/sdxl",
        "7762fd07cf82c948538e41f63f77d685e02b063e37e496e96eefd46c929f9bdc",
        False,
        {
            "prompt": _string(required=True),
            "negative_prompt": _string(),
            "image": URI,
            "mask": URI,
            "width": _int(64, 4096),
            "height": _int(64, 4096),
            "num_outputs": _int(1, 4),
            "scheduler": _enum(*SDXL_SCHEDULERS),
            "num_inference_steps": _int(1, 500),
            "guidance_scale": _num(1, 50),
            "prompt_strength": _num(0, 1),
            "seed": _int(),
            "refine": _enum("no_refiner", "expert_ensemble_refiner", "base_image_refiner"),
            "high_noise_frac": _num(0, 1),
            "refine_steps": _int(),
            "apply_watermark": BOOL,
            "lora_scale": _num(0, 1),
            "disable_safety_checker": BOOL,
        },
        "wh",
        side_multiple=8,
        count_field="num_outputs",
    ),
    ModelSpec(
        "playgroundai/playground-v2.5-1024px-aesthetic",
        "a45f82a1382bed5c7aeb861dac7c7d191b0fdf74d8d57c4a0e6ed7d4d0bf7d24",
        False,
        {
            "prompt": _string(required=True),
            "negative_prompt": _string(),
            "image": URI,
            "mask": URI,
            "width": _int(256, 1536),
            "height": _int(256, 1536),
            "num_outputs": _int(1, 4),
            "scheduler": _enum(*PLAYGROUND_SCHEDULERS),
            "num_inference_steps": _int(1, 60),
            "guidance_scale": _num(0.1, 20),
            "prompt_strength": _num(0, 1),
            "seed": _int(),
            "apply_watermark": BOOL,
            "disable_safety_checker": BOOL,
        },
        "wh",
        side_multiple=8,
        count_field="num_outputs",
    ),
    ModelSpec(
        "stability-ai/stable-diffusion-3.5-large",
        _version_of("stability-ai/stable-diffusion-3.5-large"),
        True,
        _sd35_fields(),
        "ratio",
        formats=FORMATS,
        default_format="webp",
    ),
    ModelSpec(
        "stability-ai/stable-diffusion-3.5-large-turbo",
        _version_of("stability-ai/stable-diffusion-3.5-large-turbo"),
        True,
        _sd35_fields(),
        "ratio",
        formats=FORMATS,
        default_format="webp",
        list_output=False,
    ),
    ModelSpec(
        "ideogram-ai/ideogram-v3-turbo",
        _version_of("ideogram-ai/ideogram-v3-turbo"),
        True,
        {
            "prompt": _string(required=True),
            "aspect_ratio": _enum(*IDEOGRAM_RATIOS),
            "resolution": _string(),
            "magic_prompt_option": _enum("Auto", "On", "Off"),
            "image": URI,
            "mask": URI,
            "style_type": _enum("None", "Auto", "General", "Realistic", "Design"),
            "style_preset": _string(),
            "style_reference_images": URI_LIST,
            "seed": _int(0, 2147483647),
        },
        "ratio",
        list_output=False,
        moderation_error="The prompt was flagged as unsafe by the safety checker.",
    ),
    ModelSpec(
        "google/imagen-3",
        _version_of("google/imagen-3"),
        True,
        {
            "prompt": _string(required=True),
            "negative_prompt": _string(),
            "aspect_ratio": _enum(*IMAGEN_RATIOS),
            "safety_filter_level": _enum(
                "block_low_and_above", "block_medium_and_above", "block_only_high"
            ),
            "output_format": _enum("jpg", "png"),
        },
        "ratio",
        formats=("jpg", "png"),
        default_format="jpg",
        list_output=False,
        moderation_error="Prompt blocked by the safety filter (sensitive content).",
    ),
)

MODELS: dict[str, ModelSpec] = {spec.slug: spec for spec in _SPECS}
BY_VERSION: dict[str, ModelSpec] = {spec.version_id: spec for spec in _SPECS}


# -- errors -------------------------------------------------------------------------


class Problem(SimError):
    """An RFC 7807 error answer (or Replicate's bare ``{"detail"}`` for 429)."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        bare: bool = False,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.extra = extra or {}
        self.headers = {"Content-Type": "application/problem+json", **(headers or {})}
        self.bare = bare

    def body(self) -> dict[str, Any]:
        if self.bare:
            return {"detail": self.detail}
        return {
            "type": "about:blank",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "instance": request.path,
            **self.extra,
        }


def not_found(detail: str = "The requested resource could not be found.") -> Problem:
    return Problem(404, "Not found", detail)


def validation_failed(problems: list[tuple[str, str, str]]) -> Problem:
    """422 with gojsonschema-style lines ``- <field>: <description>``."""
    detail = "".join(f"- {where}: {what}\n" for _, where, what in problems)
    return Problem(
        422,
        "Input validation failed",
        detail,
        extra={
            "invalid_fields": [
                {"type": kind, "field": where, "description": what}
                for kind, where, what in problems
            ]
        },
    )


# -- validation ---------------------------------------------------------------------


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _uri_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"Invalid type. Expected: string, given: {_json_type(value)}"
    if value.startswith("data:"):
        if len(value.encode()) > DATA_URL_MAX_BYTES:
            return "Data URLs may be at most 256 KB; upload larger files and pass their URL"
        return None if "," in value else "Does not match format 'uri'"
    if re.match(r"https?://[^\s/]+", value):
        return None
    return "Does not match format 'uri'"


def _field_problems(name: str, spec: Field, value: Any) -> list[tuple[str, str, str]]:
    where = f"input.{name}"
    given = _json_type(value)
    if spec.kind in ("string", "enum"):
        if not isinstance(value, str):
            return [("invalid_type", where, f"Invalid type. Expected: string, given: {given}")]
        if spec.kind == "enum" and value not in spec.choices:
            allowed = ", ".join(f'"{c}"' for c in spec.choices)
            return [("enum", where, f"{where} must be one of the following: {allowed}")]
        return []
    if spec.kind == "boolean":
        if not isinstance(value, bool):
            return [("invalid_type", where, f"Invalid type. Expected: boolean, given: {given}")]
        return []
    if spec.kind in ("integer", "number"):
        ok = given == "integer" or (given == "number" and spec.kind == "number")
        if given == "number" and spec.kind == "integer" and float(value).is_integer():
            ok = True
        if not ok:
            return [("invalid_type", where, f"Invalid type. Expected: {spec.kind}, given: {given}")]
        if spec.minimum is not None and value < spec.minimum:
            text = _number_text(spec.minimum)
            return [("number_gte", where, f"Must be greater than or equal to {text}")]
        if spec.maximum is not None and value > spec.maximum:
            text = _number_text(spec.maximum)
            return [("number_lte", where, f"Must be less than or equal to {text}")]
        return []
    if spec.kind == "uri":
        problem = _uri_problem(value)
        return [("format", where, problem)] if problem else []
    if spec.kind == "uri_list":
        if not isinstance(value, list):
            return [("invalid_type", where, f"Invalid type. Expected: array, given: {given}")]
        out = []
        for index, item in enumerate(value):
            problem = _uri_problem(item)
            if problem:
                out.append(("format", f"{where}.{index}", problem))
        return out
    raise AssertionError(f"unknown field kind {spec.kind}")  # pragma: no cover


def validate_input(spec: ModelSpec, data: Any) -> dict[str, Any]:
    """Check ``input`` against the model's schema; raises a 422 :class:`Problem`."""
    if not isinstance(data, dict):
        raise validation_failed(
            [
                (
                    "invalid_type",
                    "input",
                    f"Invalid type. Expected: object, given: {_json_type(data)}",
                )
            ]
        )
    problems: list[tuple[str, str, str]] = []
    for name, field_spec in spec.fields.items():
        if field_spec.required and name not in data:
            problems.append(("required", "input", f"{name} is required"))
    for name, value in data.items():
        field_spec = spec.fields.get(name)
        if field_spec is None:
            problems.append(
                (
                    "additional_property_not_allowed",
                    "input",
                    f"Additional property {name} is not allowed",
                )
            )
            continue
        problems.extend(_field_problems(name, field_spec, value))
    if problems:
        raise validation_failed(problems)
    return data


def validate_envelope(body: Any, *, needs_version: bool) -> None:
    if not isinstance(body, dict):
        raise validation_failed(
            [
                (
                    "invalid_type",
                    "(root)",
                    f"Invalid type. Expected: object, given: {_json_type(body)}",
                )
            ]
        )
    allowed = {"input", "webhook", "webhook_events_filter", "stream"}
    if needs_version:
        allowed.add("version")
    problems: list[tuple[str, str, str]] = []
    for key in body:
        if key not in allowed:
            problems.append(
                (
                    "additional_property_not_allowed",
                    "(root)",
                    f"Additional property {key} is not allowed",
                )
            )
    if "input" not in body:
        problems.append(("required", "(root)", "input is required"))
    if needs_version:
        if "version" not in body:
            problems.append(("required", "(root)", "version is required"))
        elif not isinstance(body["version"], str):
            given = _json_type(body["version"])
            problems.append(
                ("invalid_type", "version", f"Invalid type. Expected: string, given: {given}")
            )
    webhook = body.get("webhook")
    if webhook is not None and not (isinstance(webhook, str) and webhook.startswith("https://")):
        problems.append(("format", "webhook", "Does not match format 'uri' (HTTPS required)"))
    events = body.get("webhook_events_filter")
    if events is not None and (
        not isinstance(events, list) or any(e not in WEBHOOK_EVENTS for e in events)
    ):
        allowed_events = ", ".join(f'"{e}"' for e in WEBHOOK_EVENTS)
        problems.append(
            (
                "enum",
                "webhook_events_filter",
                f"items must be one of the following: {allowed_events}",
            )
        )
    if problems:
        raise validation_failed(problems)


def resolve_version(version: str) -> ModelSpec:
    spec: ModelSpec | None = None
    slug, _, version_id = version.partition(":")
    if re.fullmatch(r"[0-9a-f]{64}", version):
        spec = BY_VERSION.get(version)
    elif version_id:
        candidate = MODELS.get(slug)
        if candidate is not None and candidate.version_id == version_id:
            spec = candidate
    else:
        candidate = MODELS.get(version)
        if candidate is not None and candidate.official:
            spec = candidate
    if spec is None:
        raise Problem(
            422,
            "Invalid version or not permitted",
            "The specified version does not exist (or perhaps you don't have permission "
            "to use it?)",
        )
    return spec


def parse_prefer(value: str | None) -> int | None:
    """Seconds to hold the create call, or None (no ``Prefer: wait``)."""
    if value is None:
        return None
    match = PREFER_RE.fullmatch(value)
    if match is None:
        raise Problem(400, "Invalid Prefer header", f"Unsupported Prefer header: {value!r}.")
    if match.group(1) is None:
        return MAX_PREFER_WAIT
    seconds = int(match.group(1))
    if not 1 <= seconds <= MAX_PREFER_WAIT:
        raise Problem(
            400,
            "Invalid Prefer header",
            f"Prefer: wait=N must be between 1 and {MAX_PREFER_WAIT} seconds, got {seconds}.",
        )
    return seconds


def parse_duration(value: str | None) -> float | None:
    """A Go-style duration (``1m30s``, ``45s``, ``500ms``) in seconds."""
    if value is None:
        return None
    text = value.strip()
    parts = DURATION_PART.findall(text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise Problem(
            400,
            "Invalid Cancel-After header",
            f"Cancel-After must be a duration such as '30s' or '1m', got {value!r}.",
        )
    seconds = sum(float(n) * DURATION_UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise Problem(400, "Invalid Cancel-After header", "Cancel-After must be positive.")
    return seconds


# -- generation parameters ---------------------------------------------------------


@dataclass(frozen=True)
class Generation:
    width: int
    height: int
    count: int
    fmt: str  # upstream spelling: png | jpg | webp
    colour: int
    run_error: str | None = None  # the prediction fails with this at run time


def ratio_size(ratio: str, area: float = TARGET_AREA) -> tuple[int, int]:
    w_term, h_term = (int(part) for part in ratio.split(":"))
    width = max(64, 64 * round(math.sqrt(area * w_term / h_term) / 64))
    height = max(64, 64 * round(width * h_term / w_term / 64))
    return width, height


def plan_generation(spec: ModelSpec, data: dict[str, Any]) -> Generation:
    run_error = None
    if spec.size == "wh":
        width, height = int(data.get("width", 1024)), int(data.get("height", 1024))
        if spec.side_multiple and (width % spec.side_multiple or height % spec.side_multiple):
            run_error = (
                f"`height` and `width` have to be divisible by {spec.side_multiple} "
                f"but are {height} and {width}."
            )
    else:
        ratio = data.get("aspect_ratio", "1:1")
        if ratio == "custom" and spec.custom_ratio:
            if "width" in data and "height" in data:
                width = 32 * round(int(data["width"]) / 32)
                height = 32 * round(int(data["height"]) / 32)
            else:
                width = height = 1024
                run_error = "width and height are required when aspect_ratio is 'custom'."
        elif data.get("resolution") not in (None, "None"):
            match = re.fullmatch(r"([0-9]{3,4})x([0-9]{3,4})", str(data["resolution"]))
            if match is None:
                width = height = 1024
                run_error = f"Invalid resolution {data['resolution']!r}."
            else:
                width, height = int(match[1]), int(match[2])
        else:
            area = TARGET_AREA * (0.25 if data.get("megapixels") == "0.25" else 1.0)
            width, height = ratio_size(ratio, area)
        if "image" in data and "mask" not in data and "style_reference_images" in spec.fields:
            run_error = "An inpainting image needs a mask; pass style_reference_images instead."
    if "mask" in data and "style_reference_images" not in spec.fields:
        run_error = run_error or _mask_problem(data)
    count = int(data.get(spec.count_field, 1)) if spec.count_field else 1
    fmt = data.get("output_format", spec.default_format) if spec.formats else spec.default_format
    seed = data.get("seed")
    colour = int(seed) % len(PALETTE) if isinstance(seed, int) else secrets.randbelow(len(PALETTE))
    return Generation(width, height, count, fmt, colour, run_error)


def _data_url_size(value: Any) -> tuple[int, int] | None:
    """The pixel size of a ``data:`` URL image; None for an https URL or no image."""
    if not isinstance(value, str) or not value.startswith("data:"):
        return None
    try:
        with Image.open(io.BytesIO(base64.b64decode(value.partition(",")[2]))) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def _mask_problem(data: dict[str, Any]) -> str | None:
    """Why an inpainting ``mask`` cannot be used (sdxl/playground), or None."""
    if "image" not in data:
        return "mask is only used for inpainting: provide an image with it."
    mask, image = _data_url_size(data["mask"]), _data_url_size(data["image"])
    if str(data["mask"]).startswith("data:") and mask is None:
        return "cannot identify image file (mask)"
    if mask is not None and image is not None and mask != image:
        return f"The mask ({mask[0]}x{mask[1]}) must have the image's size ({image[0]}x{image[1]})."
    return None


def encode_image(width: int, height: int, fmt: str, colour: int) -> bytes:
    return solid_image(width, height, fmt, PALETTE[colour % len(PALETTE)], 80)


# -- predictions --------------------------------------------------------------------


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def new_prediction_id() -> str:
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(26))


@dataclass
class Prediction:
    id: str
    spec: ModelSpec
    input: dict[str, Any]
    gen: Generation
    host: str  # "http://host:port/" of the create call, for URLs
    created: float
    ready_at: float
    polls_left: int
    deadline: float | None
    status: str = "starting"
    started: float | None = None
    completed: float | None = None
    output: Any = None
    error: str | None = None
    data_removed: bool = False
    files: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        base = f"{self.host}v1/predictions/{self.id}"
        body: dict[str, Any] = {
            "id": self.id,
            "model": self.spec.slug,
            "version": "hidden" if self.spec.official else self.spec.version_id,
            "input": {} if self.data_removed else self.input,
            "logs": "" if self.started is None else "Generating...\n",
            "output": self.output,
            "data_removed": self.data_removed,
            "error": self.error,
            "status": self.status,
            "source": "api",
            "created_at": _iso(self.created),
            "started_at": _iso(self.started),
            "completed_at": _iso(self.completed),
            "urls": {
                "get": base,
                "cancel": f"{base}/cancel",
                "web": f"https://replicate.com/p/{self.id}",
            },
            "metrics": {},
        }
        if self.deadline is not None:
            body["deadline"] = _iso(self.deadline)
        if self.completed is not None and self.started is not None:
            body["metrics"] = {
                "predict_time": round(self.completed - self.started, 6),
                "total_time": round(self.completed - self.created, 6),
            }
        return body


class PredictionStore:
    """Predictions, result-file expiry and the malformed-answer counter."""

    def __init__(self, state: SimState) -> None:
        self._lock = threading.Lock()
        self._state = state
        self._predictions: OrderedDict[str, Prediction] = OrderedDict()
        self._expiry: OrderedDict[str, float] = OrderedDict()
        self.malformed_next = 0

    def add(self, pred: Prediction) -> None:
        with self._lock:
            self._predictions[pred.id] = pred
            while len(self._predictions) > MAX_PREDICTIONS:
                self._predictions.popitem(last=False)

    def get(self, pred_id: str) -> Prediction | None:
        with self._lock:
            return self._predictions.get(pred_id)

    def newest(self, limit: int = 100) -> list[Prediction]:
        with self._lock:
            return list(reversed(self._predictions.values()))[:limit]

    def take_malformed(self) -> bool:
        with self._lock:
            if self.malformed_next > 0:
                self.malformed_next -= 1
                return True
            return False

    def file_alive(self, name: str, now: float) -> bool:
        with self._lock:
            expires = self._expiry.get(name)
            return expires is not None and now < expires

    def refresh(self, pred: Prediction, now: float, *, poll: bool = False) -> dict[str, Any]:
        """Advance ``pred`` to what it is at ``now``; returns its JSON."""
        config = self._state.config
        with self._lock:
            self._advance(pred, now, poll, config)
            return pred.to_json()

    def start(self, pred: Prediction, now: float) -> None:
        with self._lock:
            if pred.status == "starting":
                pred.started = now
                pred.status = "processing"

    def cancel(self, pred: Prediction, now: float) -> dict[str, Any]:
        config = self._state.config
        with self._lock:
            self._advance(pred, now, False, config)
            if pred.status not in TERMINAL:
                pred.status = "canceled"
                pred.completed = now
            return pred.to_json()

    # -- internals (lock held) -----------------------------------------------------

    def _advance(self, pred: Prediction, now: float, poll: bool, config: SimConfig) -> None:
        if pred.status in TERMINAL:
            if (
                pred.completed is not None
                and now >= pred.completed + config.result_ttl
                and not pred.data_removed
            ):
                pred.output = None
                pred.data_removed = True
            return
        if pred.deadline is not None and now >= pred.deadline:
            pred.status = "aborted" if pred.started is None else "canceled"
            pred.completed = now
            return
        if poll:
            if pred.started is None:
                pred.started = now
                pred.status = "processing"
            if pred.polls_left > 0:
                pred.polls_left -= 1
                return
        if pred.started is not None and pred.polls_left == 0 and now >= pred.ready_at:
            self._complete(pred, now, config)

    def _complete(self, pred: Prediction, now: float, config: SimConfig) -> None:
        pred.completed = now
        prompt = str(pred.input.get("prompt", ""))
        if FORBIDDEN_WORD.search(prompt):
            pred.status, pred.error = "failed", pred.spec.moderation_error
            return
        if pred.gen.run_error:
            pred.status, pred.error = "failed", pred.gen.run_error
            return
        count = pred.gen.count
        if pred.spec.count_field:
            count -= config.drop_images
            if count <= 0:
                pred.status, pred.error = "failed", ALL_NSFW
                return
        token = uuid.uuid4().hex
        urls = []
        for index in range(count):
            gen = pred.gen
            data = encode_image(gen.width, gen.height, gen.fmt, gen.colour + index)
            name = f"{token}/out-{index}.{gen.fmt}"
            self._state.put_file(name, data, CONTENT_TYPES[gen.fmt])
            self._expiry[name] = now + config.result_ttl
            while len(self._expiry) > 4 * MAX_PREDICTIONS:
                self._expiry.popitem(last=False)
            pred.files.append(name)
            urls.append(f"{pred.host}delivery/xezq/{name}")
        pred.output = urls if pred.spec.list_output else urls[0]
        pred.status = "succeeded"


# -- app ----------------------------------------------------------------------------


class ReplicateSimulator(Simulator):
    """Replicate's predictions API: creates, polls, cancels, listings and result files."""

    provider = PROVIDER
    request_id_header = "X-Request-Id"

    def __init__(self, config: SimConfig | None = None) -> None:
        self.webhook_secret = "whsec_" + secrets.token_urlsafe(32)
        super().__init__(config)
        self.store = PredictionStore(self.state)
        self.app.config["SIM_PREDICTIONS"] = self.store

    def reset(self) -> None:
        self.store.malformed_next = 0

    def _before_request(self) -> None:
        super()._before_request()
        g.entry = None
        if request.path.startswith("/v1/"):
            body, raw_text = parse_json_body()
            g.body, g.raw_text = body, raw_text
            g.entry = self.record(json=body, raw_body=raw_text)

    def _after_request(self, resp: Response) -> Response:
        resp = super()._after_request(resp)
        if g.get("entry") is not None:
            self.state.set_request_status(g.entry, resp.status_code)
        return resp

    def http_error(self, err: HTTPException) -> Response:
        status = err.code or 500
        if status == 404:
            return not_found().response()
        return Problem(status, err.name, err.description or err.name).response()

    def failure(self, config: SimConfig) -> Problem:
        status = config.fail_status
        headers = retry_after_headers(config)
        if status == 429:
            return Problem(429, "Too Many Requests", THROTTLED, headers=headers, bare=True)
        if status == 503:
            return Problem(
                503,
                "Service Unavailable",
                "The service is temporarily unavailable. Please try again later.",
                headers=headers,
            )
        if status >= 500:
            return Problem(
                status, "Internal Server Error", "An unexpected error occurred.", headers=headers
            )
        if status == 422:
            return validation_failed([("simulated", "(root)", "Simulated upstream failure (422).")])
        return Problem(
            status,
            "Simulated failure",
            f"Simulated upstream failure (HTTP {status}).",
            headers=headers,
        )

    def check_auth(self, config: SimConfig) -> None:
        token = credential(("bearer", "token"))
        if token is None:
            raise Problem(401, "Unauthenticated", "You did not pass an authentication token")
        if config.api_key is not None and token != config.api_key:
            raise Problem(401, "Unauthenticated", "You did not pass a valid authentication token")

    # -- predictions -----------------------------------------------------------------

    @route("POST", "/v1/models/<owner>/<name>/predictions")
    def create_official(self, owner: str, name: str) -> Response:
        self.check_auth(self.state.config)
        self._inject()
        spec = MODELS.get(f"{owner}/{name}")
        if spec is None or not spec.official:
            raise not_found()
        return self._create(spec, needs_version=False)

    @route("POST", "/v1/predictions")
    def create_versioned(self) -> Response:
        self.check_auth(self.state.config)
        self._inject()
        return self._create(None, needs_version=True)

    def _inject(self) -> None:
        body = g.body
        data = body.get("input") if isinstance(body, dict) else None
        self.inject_fault(data.get("prompt") if isinstance(data, dict) else None)

    def _create(self, spec: ModelSpec | None, *, needs_version: bool) -> Response:
        store = self.store
        if store.take_malformed():
            return Response('{"id": "truncated', status=201, content_type="application/json")
        if g.raw_text:
            raise Problem(400, "Invalid JSON", "The request body is not valid JSON.")
        body = g.body
        validate_envelope(body, needs_version=needs_version)
        if spec is None:
            spec = resolve_version(body["version"])
        data = validate_input(spec, body["input"])
        hold = parse_prefer(request.headers.get("Prefer"))
        cancel_after = parse_duration(request.headers.get("Cancel-After"))

        config = self.state.config
        now = time.time()
        pred = Prediction(
            id=new_prediction_id(),
            spec=spec,
            input=data,
            gen=plan_generation(spec, data),
            host=request.host_url,
            created=now,
            ready_at=now + config.latency,
            polls_left=config.poll_steps,
            deadline=now + cancel_after if cancel_after is not None else None,
        )
        store.add(pred)
        if hold is not None and config.poll_steps == 0:
            # Held: the prediction runs now; answer when it is done or the hold ends.
            store.start(pred, now)
            until = min(now + hold, pred.ready_at)
            if pred.deadline is not None:
                until = min(until, pred.deadline)
            if until > now:
                time.sleep(until - now)
        payload = store.refresh(pred, time.time())
        resp = jsonify(payload)
        resp.status_code = 201
        return resp

    def _prediction(self, pred_id: str) -> Prediction:
        self.check_auth(self.state.config)
        pred = self.store.get(pred_id)
        if pred is None:
            raise not_found()
        return pred

    @route("GET", "/v1/predictions/<pred_id>")
    def get_prediction(self, pred_id: str) -> Response:
        pred = self._prediction(pred_id)
        return jsonify(self.store.refresh(pred, time.time(), poll=True))

    @route("POST", "/v1/predictions/<pred_id>/cancel")
    def cancel_prediction(self, pred_id: str) -> Response:
        pred = self._prediction(pred_id)
        return jsonify(self.store.cancel(pred, time.time()))

    @route("GET", "/v1/predictions")
    def list_predictions(self) -> Response:
        self.check_auth(self.state.config)
        now = time.time()
        results = [self.store.refresh(p, now) for p in self.store.newest()]
        return jsonify({"previous": None, "next": None, "results": results})

    @route("GET", "/v1/webhooks/default/secret")
    def webhook_secret_endpoint(self) -> Response:
        self.check_auth(self.state.config)
        return jsonify({"key": self.webhook_secret})

    @route("GET", "/delivery/xezq/<path:name>")
    def delivery(self, name: str) -> Response:
        stored = self.state.get_file(name)
        if stored is None or not self.store.file_alive(name, time.time()):
            return Response("Not Found", status=404, content_type="text/plain")
        return Response(stored.data, status=200, content_type=stored.content_type)

    # -- control endpoints for tests -------------------------------------------

    @route("POST", "/_sim/malformed")
    def post_malformed(self) -> Response:
        body = request.get_json(force=True, silent=True)
        count = body.get("next") if isinstance(body, dict) else None
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise Problem(400, "Invalid request", 'Expected {"next": <int >= 0>}.')
        self.store.malformed_next = count
        return jsonify({"ok": True, "next": count})


create_app = ReplicateSimulator.create_app

__all__ = [
    "MODELS",
    "Problem",
    "ReplicateSimulator",
    "SimConfig",
    "create_app",
    "ratio_size",
    "validate_input",
]
