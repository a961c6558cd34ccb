"""``bfl`` family: the Black Forest Labs API (FLUX1.1 [pro], FLUX.1 Kontext, FLUX.2).

Asynchronous, one image per task. ``POST {base_url}/v1/<model.upstream>`` with
header ``x-key: <key>`` answers ``{id, polling_url, cost, input_mp, output_mp}``
(``cost`` in credits of $0.01: summed over the tasks, the job's upstream cost,
``ImageResult.cost_micros``); the adapter then polls ``polling_url`` *verbatim*
(it may name a regional host), through the SSRF guard like a result file (the
catalog's base URL host is allowed, any other internal address refused), until
``status`` is terminal:

* ``Ready``: ``result.sample`` is a signed URL that expires after about ten
  minutes, returned as ``GeneratedImage(url=...)`` for the task to download at
  once;
* ``Request Moderated`` / ``Content Moderated``: 400 ``content_policy_violation``;
* ``Error`` (and ``Failed``, seen in third-party code): 502 ``upstream_task_failed``;
* ``Task not found``: 502 ``upstream_task_lost``;
* anything else (``Pending``, and any in-progress state BFL may add) is polled
  again, with growing pauses, until the job's deadline. BFL has no cancel
  endpoint: at the deadline the adapter just raises ``DeadlineExceeded``.

``n > 1`` runs n tasks concurrently (:func:`workers.fanout.fan_out`); what
succeeded is returned and the settlement refunds the rest.

Field mapping (gateway request -> BFL body), by the endpoint's OpenAPI schema
(``_SCHEMAS``; an endpoint missing from ``_ENDPOINTS`` names its schema in the
catalog as ``options.schema``):

================= ========================= ============================ ===================
gateway           FLUX1.1 [pro] / [dev]     FLUX.1 Kontext / 1.1 ultra   FLUX.2
================= ========================= ============================ ===================
prompt            prompt                    prompt                       prompt
clamped size      width, height (x32,       aspect_ratio (the size rule  width, height (>=64)
                  256-1440)                 already picked the ratio; a
                                            size is reduced to W:H)
seed              seed (+ index of the image, so n images differ and stay reproducible)
output_format     output_format (jpeg/png/webp); absent: ``options.output_format`` or BFL's
                  default (jpeg; Kontext png)
image, images     (rejected: no reference   input_image,                 input_image,
                  image input)              input_image_2..4 (Kontext;   input_image_2..8
                                            ultra rejects them)          (Klein ..4)
-                 safety_tolerance = ``options.safety_tolerance`` or 2, capped at the
                  schema's maximum (6; FLUX.2: 5)
user              not sent (BFL has no end-user field)
================= ========================= ============================ ===================

An edit's images go to ``input_image``, ``input_image_2``, ... in order, up
to the schema's count (more is a 400 naming ``image``; the catalog's
``max_reference_images`` keeps requests within it). Each image is sent as an
``http(s)`` URL as is, or as raw base64: a ``data:`` URL loses its
``data:<type>;base64,`` prefix (a percent-encoded data URL is base64-encoded
first). ``quality``, ``style``, ``output_compression``,
``moderation`` and a transparent ``background`` have no BFL equivalent: a
request carrying them is a 400 naming the field (the catalog lists none of
them for bfl models, so the API normally rejects them first).

Errors: a 422 is FastAPI's ``{"detail": [{"loc", "msg", "type"}]}``, read by
:func:`bfl_error_parser` into a 400 with the messages and the ``param`` from
``loc`` (``width``/``height`` -> ``size``, ``input_image`` -> ``image``); 402
(the gateway's BFL account is out of credits) is a 502
``upstream_insufficient_credits``; 429 (more than 24 concurrent tasks, 6 for
Kontext [max]) is retried by the HTTP helper, honouring ``Retry-After``, then a
502 ``upstream_rate_limited``; 401/403 a 502 ``upstream_auth_failed``.

The ``x-key`` goes with each poll only when the polling URL is on the submit
host's site (same host, or both under the same ``<name>.<tld>``, as
``api.us1.bfl.ai`` is for ``api.bfl.ai``): a key is never handed to a host
that an upstream answer merely named. BFL's OpenAPI does not require the key
for ``get_result``.
"""

from __future__ import annotations

import binascii
import ipaddress
import math
import urllib.parse
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal

import pybase64 as base64
import requests
from pydantic import Field

from shared.catalog import Model
from shared.errors import (
    CATALOG_MISCONFIGURED,
    INVALID_IMAGE,
    INVALID_VALUE,
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
from workers.fanout import fan_out
from workers.http import UpstreamFault, UpstreamHTTP, default_error_parser

READY = "Ready"
MODERATED = frozenset({"Request Moderated", "Content Moderated"})
FAILED = frozenset({"Error", "Failed"})
TASK_NOT_FOUND = "Task not found"

OUTPUT_FORMATS = frozenset({"jpeg", "png", "webp"})
DEFAULT_SAFETY_TOLERANCE = 2

# Request fields with no BFL equivalent (the extra ones live in ImageRequest.extra).
_UNSUPPORTED = ("quality", "style")
_UNSUPPORTED_EXTRA = ("output_compression", "moderation")


@dataclass(frozen=True)
class Schema:
    """What one BFL input schema takes, as far as the mapping is concerned."""

    sizing: str  # "width_height" or "aspect_ratio"
    image_field: str | None  # where a reference image goes; None: the schema takes none
    max_safety_tolerance: int
    max_images: int = 1  # input_image, input_image_2, ... input_image_<max_images>


SCHEMAS: dict[str, Schema] = {
    "FluxPro11Inputs": Schema("width_height", None, 6),
    "FluxDevInputs": Schema("width_height", None, 6),
    "FluxUltraInput": Schema("aspect_ratio", None, 6),
    "FluxKontextProInputs": Schema("aspect_ratio", "input_image", 6, max_images=4),
    "Flux2Inputs": Schema("width_height", "input_image", 5, max_images=8),
    "Flux2FlexInputs": Schema("width_height", "input_image", 5, max_images=8),
    "Flux2KleinInputs": Schema("width_height", "input_image", 5, max_images=4),
}

# endpoint (the catalog's `upstream`) -> its schema in BFL's OpenAPI document
ENDPOINTS: dict[str, str] = {
    "flux-pro-1.1": "FluxPro11Inputs",
    "flux-dev": "FluxDevInputs",
    "flux-pro-1.1-ultra": "FluxUltraInput",
    "flux-kontext-pro": "FluxKontextProInputs",
    "flux-kontext-max": "FluxKontextProInputs",
    "flux-2-pro": "Flux2Inputs",
    "flux-2-pro-preview": "Flux2Inputs",
    "flux-2-max": "Flux2Inputs",
    "flux-2-flex": "Flux2FlexInputs",
    "flux-2-klein-4b": "Flux2KleinInputs",
    "flux-2-klein-9b": "Flux2KleinInputs",
}

# BFL body field -> the gateway request field a client would correct
_PARAM_OF_FIELD = {
    "width": "size",
    "height": "size",
    "input_image": "image",
    **{f"input_image_{i}": "image" for i in range(2, 9)},
    "aspect_ratio": "aspect_ratio",
    "output_format": "output_format",
    "seed": "seed",
    "prompt": "prompt",
}


class BflOptions(AdapterOptions):
    """``options`` of a BFL model."""

    schema_name: str | None = Field(None, alias="schema")
    """The endpoint's input schema (one of :data:`SCHEMAS`), for an endpoint missing
    from :data:`ENDPOINTS`."""
    output_format: Literal["jpeg", "png", "webp"] | None = None
    """Sent when the request names none (else BFL's default)."""
    safety_tolerance: Annotated[int, Field(ge=0, strict=True)] = DEFAULT_SAFETY_TOLERANCE
    """Capped at the schema's maximum."""


@dataclass(frozen=True)
class Task:
    id: str
    polling_url: str
    cost_micros: int | None = None  # the submit answer's `cost` (credits of $0.01)


MICROS_PER_CREDIT = 10_000  # 1 BFL credit = $0.01


class BflAdapter:
    options_model = BflOptions

    def __init__(
        self,
        *,
        first_poll_delay: float = 0.4,
        poll_backoff: float = 1.5,
        max_poll_interval: float = 2.0,
    ) -> None:
        self.first_poll_delay = first_poll_delay
        self.poll_backoff = poll_backoff
        self.max_poll_interval = max_poll_interval

    def check_model(self, model: Model) -> None:
        schema_of(model)

    def generate(self, request: ImageRequest, ctx: CallContext) -> ImageResult:
        schema = schema_for(request)
        check_supported(request, schema)
        base = ctx.base_url.rstrip("/")
        submit_url = f"{base}/v1/{request.model.upstream}"
        key = ctx.api_key or ""
        task_ids = RequestIds()
        costs: list[int | None] = []  # each task's `cost`, as its submit answer said

        def make_one(index: int, http: UpstreamHTTP) -> GeneratedImage:
            seed = None if request.seed is None else request.seed + index
            body = build_body(request, schema, seed=seed)
            task = submit(http, submit_url, body, key, base)
            task_ids.add(task.id, index)
            costs.append(task.cost_micros)
            return GeneratedImage(url=self.await_sample(http, task, key, base))

        http = replace(ctx.http, error_parser=bfl_error_parser)
        images = fan_out(request.n, http, make_one)
        known = [c for c in costs if c is not None]
        return ImageResult(
            images=images,
            upstream_request_id=task_ids.joined(),
            # BFL's own figure only if every task stated it (else the catalog's table).
            cost_micros=sum(known) if known and len(known) == len(costs) else None,
        )

    # -- one task ---------------------------------------------------------------------

    def await_sample(self, http: UpstreamHTTP, task: Task, key: str, base: str) -> str:
        """Poll ``task.polling_url`` until the task ends; the sample URL, or raise.

        The polling URL is the upstream's answer, not our configuration: it is
        fetched through the SSRF guard (``http.fetch_session``), like result files.
        """
        headers = {"x-key": key} if key_may_go_to(base, task.polling_url) else {}
        delay = self.first_poll_delay
        while True:
            http.pause(delay)
            response = http.request("GET", task.polling_url, headers=headers, guarded=True)
            payload = http.json(response)
            status = payload.get("status") if isinstance(payload, dict) else None
            if not isinstance(status, str):
                raise malformed(
                    f"{http.provider} answered a poll of task {task.id} without a status.", task.id
                )
            if status == READY:
                return _sample(payload, task, http.provider)
            if status in MODERATED:
                raise content_policy_violation(
                    _moderation_message(status, payload), upstream_request_id=task.id
                )
            if status in FAILED:
                raise UpstreamError(
                    f"{http.provider} failed the generation (status {status!r}"
                    f"{_details(payload)}).",
                    code="upstream_task_failed",
                    upstream_request_id=task.id,
                )
            if status == TASK_NOT_FOUND:
                raise UpstreamError(
                    f"{http.provider} no longer knows task {task.id} (Task not found).",
                    code="upstream_task_lost",
                    upstream_request_id=task.id,
                )
            delay = min(self.max_poll_interval, delay * self.poll_backoff)


def submit(http: UpstreamHTTP, url: str, body: dict[str, Any], key: str, base: str) -> Task:
    response = http.request("POST", url, json_body=body, headers={"x-key": key})
    payload = http.json(response)
    task_id = payload.get("id") if isinstance(payload, dict) else None
    if not isinstance(task_id, str) or not task_id:
        raise malformed(f"{http.provider} accepted the request but returned no task id.")
    polling_url = payload.get("polling_url")
    if polling_url is None:  # older answers carried the id only
        polling_url = f"{base}/v1/get_result?id={urllib.parse.quote(task_id)}"
    if not isinstance(polling_url, str) or urllib.parse.urlsplit(polling_url).scheme not in (
        "http",
        "https",
    ):
        raise malformed(
            f"{http.provider} returned an unusable polling_url for task {task_id}.", task_id
        )
    cost = payload.get("cost")
    if isinstance(cost, int | float) and not isinstance(cost, bool) and 0 <= cost < 1e6:
        return Task(task_id, polling_url, round(cost * MICROS_PER_CREDIT))
    return Task(task_id, polling_url)


# -- the request body ---------------------------------------------------------------


def schema_for(request: ImageRequest) -> Schema:
    return schema_of(request.model)


def schema_of(model: Model) -> Schema:
    """The input schema of ``model``'s endpoint; ServerError if the gateway does not know it."""
    name = BflOptions.of(model).schema_name or ENDPOINTS.get(model.upstream)
    if name not in SCHEMAS:
        raise ServerError(
            f"The catalog entry '{model.id}' names BFL endpoint '{model.upstream}', whose input "
            f"schema this gateway does not know; set options.schema to one of "
            f"{', '.join(sorted(SCHEMAS))}.",
            code=CATALOG_MISCONFIGURED,
        )
    return SCHEMAS[name]


def check_supported(request: ImageRequest, schema: Schema) -> None:
    """400 for request fields BFL cannot honour, naming the first one."""
    model = request.model.id
    present = [name for name in _UNSUPPORTED if getattr(request, name) is not None]
    present += [name for name in _UNSUPPORTED_EXTRA if request.extra.get(name) is not None]
    if request.background == "transparent":
        present.append("background")
    if present:
        raise unsupported(
            present[0],
            f"'{present[0]}' is not supported by '{model}': Black Forest Labs has no such "
            f"setting. Leave {', '.join(repr(p) for p in present)} out.",
        )
    if request.output_format is not None and request.output_format not in OUTPUT_FORMATS:
        raise unsupported(
            "output_format",
            f"'{model}' makes jpeg, png or webp images, not {request.output_format!r}.",
        )
    if request.image is not None and schema.image_field is None:
        raise unsupported("image", f"'{model}' takes no reference image.")
    if request.mask is not None:
        raise unsupported("mask", f"'{model}' takes no mask: Black Forest Labs has none.")
    if len(request.images) > schema.max_images:
        raise InvalidRequest(
            f"'{model}' takes at most {schema.max_images} reference image(s); the request "
            f"has {len(request.images)}.",
            param="image",
            code=INVALID_VALUE,
        )


def build_body(request: ImageRequest, schema: Schema, *, seed: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": request.prompt}
    if schema.sizing == "aspect_ratio":
        ratio = request.aspect_ratio or _ratio_of(request.width, request.height)
        if ratio is not None:
            body["aspect_ratio"] = ratio
    elif request.width is not None and request.height is not None:
        body["width"], body["height"] = request.width, request.height
    elif request.aspect_ratio is not None:
        raise ServerError(
            f"The size rule of '{request.model.id}' gives an aspect ratio, but its BFL endpoint "
            "takes width and height; give the model a size-based rule.",
            code=CATALOG_MISCONFIGURED,
        )
    if seed is not None:
        body["seed"] = seed
    options = BflOptions.of(request.model)
    output_format = request.output_format or options.output_format
    if output_format is not None:
        body["output_format"] = output_format
    body["safety_tolerance"] = min(schema.max_safety_tolerance, options.safety_tolerance)
    if schema.image_field is not None:
        images = request.images or ((request.image,) if request.image is not None else ())
        for index, image in enumerate(images):
            name = schema.image_field if index == 0 else f"{schema.image_field}_{index + 1}"
            body[name] = reference_image(image)
    return body


def _ratio_of(width: int | None, height: int | None) -> str | None:
    if not width or not height:
        return None
    divisor = math.gcd(width, height)
    return f"{width // divisor}:{height // divisor}"


def reference_image(value: str) -> str:
    """An ``http(s)`` URL as is; a ``data:`` URL as the raw base64 BFL takes."""
    if not value.startswith("data:"):
        return value
    header, comma, data = value[5:].partition(",")
    if not comma:
        raise InvalidRequest(
            "The image data URL has no ',' before its data.", param="image", code=INVALID_IMAGE
        )
    if header.lower().endswith(";base64"):
        data = "".join(data.split())
        try:
            base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest(
                "The image data URL is not valid base64.", param="image", code=INVALID_IMAGE
            ) from None
        return data
    return base64.b64encode(urllib.parse.unquote_to_bytes(data)).decode("ascii")


# -- answers ------------------------------------------------------------------------


def _sample(payload: dict[str, Any], task: Task, provider: str) -> str:
    result = payload.get("result")
    sample = result.get("sample") if isinstance(result, dict) else None
    if not isinstance(sample, str) or urllib.parse.urlsplit(sample).scheme not in (
        "http",
        "https",
    ):
        raise malformed(
            f"{provider} reported task {task.id} ready without a usable result.sample URL.", task.id
        )
    return sample


def _moderation_message(status: str, payload: dict[str, Any]) -> str:
    what = "the prompt or reference image" if status == "Request Moderated" else "the result"
    reasons = ""
    details = payload.get("details")
    if isinstance(details, dict):
        listed = details.get("Moderation Reasons") or details.get("moderation_reasons")
        if isinstance(listed, list) and listed:
            reasons = f" Reasons: {'; '.join(str(r) for r in listed[:5])}."
    return f"The upstream's moderation refused {what} ({status}).{reasons}"


def _details(payload: dict[str, Any]) -> str:
    for key in ("details", "error", "message"):
        value = payload.get(key)
        if value:
            text = value if isinstance(value, str) else repr(value)
            return f": {text[:300]}"
    return ""


def bfl_error_parser(response: requests.Response) -> UpstreamFault:
    """Read BFL's error bodies: FastAPI 422 lists, ``{"detail": str}``, the 429 body."""
    try:
        body = response.json()
    except ValueError:
        return default_error_parser(response)
    if not isinstance(body, dict):
        return default_error_parser(response)
    code = "upstream_insufficient_credits" if response.status_code == 402 else None
    detail = body.get("detail")
    if isinstance(detail, list) and detail:
        messages: list[str] = []
        param = None
        for item in detail[:5]:
            if not isinstance(item, dict):
                continue
            path = [str(p) for p in item.get("loc") or [] if p not in ("body", "query")]
            message = str(item.get("msg") or item.get("type") or "invalid value")
            messages.append(f"{'.'.join(path)}: {message}" if path else message)
            if param is None and path:
                param = _PARAM_OF_FIELD.get(path[0], path[0])
        if messages:
            return UpstreamFault("; ".join(messages), code, param)
    if isinstance(detail, str) and detail:
        return UpstreamFault(detail, code)
    if isinstance(body.get("message"), str):  # {"error": "rate_limit_exceeded", "message": ...}
        return UpstreamFault(body["message"], code)
    return default_error_parser(response)


def key_may_go_to(base_url: str, url: str) -> bool:
    """Whether the ``x-key`` may be sent to ``url``: the submit host's own site only."""
    base, target = urllib.parse.urlsplit(base_url), urllib.parse.urlsplit(url)
    if base.scheme == "https" and target.scheme != "https":
        return False
    base_host, host = (base.hostname or "").lower(), (target.hostname or "").lower()
    if not host:
        return False
    if host == base_host:
        return True
    try:
        ipaddress.ip_address(base_host)
        return False  # an address has no site to share
    except ValueError:
        pass
    labels = base_host.split(".")
    return len(labels) >= 2 and host.endswith("." + ".".join(labels[-2:]))
