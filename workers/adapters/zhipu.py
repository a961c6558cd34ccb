"""``zhipu`` family: Zhipu BigModel / Z.AI image generation (GLM-Image, CogView-4).

Base ``https://open.bigmodel.cn/api/paas/v4`` (intl ``https://api.z.ai/api/paas/v4``),
``Authorization: Bearer <key>``, JSON in and out. Two modes, chosen per model
by the catalog's ``options.mode``:

* ``"sync"`` (default; CogView models): ``POST {base}/images/generations``
  answers ``{"created", "data": [{"url"}], "content_filter": [...]}``.
* ``"async"`` (glm-image, whose hd images take ~20 s and would otherwise pin a
  connection): ``POST {base}/async/images/generations`` answers ``{"model",
  "id", "request_id", "task_status": "PROCESSING"}``; then ``GET
  {base}/async-result/{id}`` every ``options.poll_interval`` seconds (default
  :data:`POLL_INTERVAL`) until ``task_status`` is ``SUCCESS`` (images in
  ``image_result[].url``) or ``FAIL``. Zhipu has no cancel API: at the
  deadline the task is simply abandoned.

Field mapping (gateway request -> upstream body):

* ``model.upstream`` -> ``model``; ``prompt`` as is; the clamped size ->
  ``size`` ``"WxH"`` (the model's size rule already fitted it);
* ``quality``: ``hd`` -> ``hd``, ``standard`` -> ``standard`` where the model
  offers it (catalog ``choices.quality``; without one both), ``auto`` -> not
  sent (the upstream's default); anything else -> 400 naming ``quality``;
* ``user`` -> ``user_id`` when it has 6-128 characters, else 400 naming ``user``;
* ``watermark_enabled``: not sent (upstream default) unless the catalog sets
  ``options.watermark_enabled`` (accounts with a signed waiver);
* ``n``: Zhipu makes one image per call, so n calls run concurrently
  (:func:`workers.fanout.fan_out`); images that fail are missing and refunded;
* ``output_format``: not sent (Zhipu answers PNG); the task converts;
  ``background`` auto/opaque and ``moderation`` auto are what Zhipu does anyway;
* ``style``, ``seed``, ``image``, ``output_compression``, ``background``
  transparent, ``moderation`` low and an ``aspect_ratio`` without a size have
  no Zhipu equivalent: 400 naming the param, never silently dropped;
* response ``data[].url`` / ``image_result[].url`` -> fetched by the task at once.

Errors are ``{"error": {"code": "<business code>", "message"}}``, read by
:func:`parse_zhipu_error` through :data:`BUSINESS_CODES`: 1000-1004 auth
(401 -> upstream_auth_failed), 1113 arrears and 1211 unknown model (the
gateway's account or catalog is wrong, not the client: UpstreamError even when
answered with 400), 1210/1214 bad parameters (400 -> InvalidRequest with
Zhipu's message), 1261 prompt too long (InvalidRequest, param ``prompt``), 1301
unsafe content (400 content_policy_violation, also when an async task ends
``FAIL`` with it), 1302/1303/1305 concurrency/frequency/overload (429: retried
by the HTTP helper, then upstream_rate_limited).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import requests
from pydantic import StrictBool

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
    Seconds,
)
from workers.adapters.common import RequestIds, image_of, malformed, unsupported
from workers.fanout import fan_out
from workers.http import UpstreamFault, UpstreamHTTP, request_id_of

POLL_INTERVAL = 1.0
"""Seconds between two polls of an async task (``options.poll_interval`` overrides)."""

USER_ID_LENGTH = (6, 128)
QUALITIES = ("hd", "standard")

_DONE = frozenset({"SUCCESS", "SUCCEEDED"})
_FAILED = frozenset({"FAIL", "FAILED", "FAILURE", "ERROR"})


class ZhipuOptions(AdapterOptions):
    """``options`` of a Zhipu model."""

    mode: Literal["sync", "async"] = "sync"
    """``async``: submit, then poll the task (no connection held meanwhile)."""
    poll_interval: Seconds = POLL_INTERVAL
    watermark_enabled: StrictBool | None = None
    """Sent only when set (accounts with a signed waiver may turn it off)."""


# -- errors ---------------------------------------------------------------------


@dataclass(frozen=True)
class BusinessCode:
    """How one Zhipu business code reaches the client."""

    gateway_code: str
    param: str | None = None
    moderated: bool = False
    not_the_clients_fault: bool = False  # an UpstreamError even when Zhipu answers 400


BUSINESS_CODES: Mapping[str, BusinessCode] = {
    **{
        code: BusinessCode("upstream_auth_failed", not_the_clients_fault=True)
        for code in ("1000", "1001", "1002", "1003", "1004")
    },
    "1113": BusinessCode("upstream_account_in_arrears", not_the_clients_fault=True),
    "1210": BusinessCode("upstream_invalid_parameter"),
    "1211": BusinessCode("upstream_model_not_found", not_the_clients_fault=True),
    "1214": BusinessCode("upstream_invalid_parameter"),
    "1261": BusinessCode("string_above_max_length", param="prompt"),
    "1301": BusinessCode("content_policy_violation", moderated=True),
    "1302": BusinessCode("upstream_concurrency_limited", not_the_clients_fault=True),
    "1303": BusinessCode("upstream_rate_limited", not_the_clients_fault=True),
    "1305": BusinessCode("upstream_overloaded", not_the_clients_fault=True),
}

_NOT_THE_CLIENTS_FAULT = frozenset(
    c.gateway_code for c in BUSINESS_CODES.values() if c.not_the_clients_fault
)


def _code_and_message(body: Any) -> tuple[str | None, str | None]:
    """(business code, message) from ``{"error": {...}}`` or a flat ``{"code", "msg"}``."""
    if not isinstance(body, dict):
        return None, None
    err = body.get("error")
    source = err if isinstance(err, dict) else body
    code = source.get("code")
    message = next(
        (source[k] for k in ("message", "msg", "error_message") if isinstance(source.get(k), str)),
        err if isinstance(err, str) else None,
    )
    return (str(code) if code not in (None, "") else None), message


def parse_zhipu_error(response: requests.Response) -> UpstreamFault:
    """The :data:`workers.http.ErrorParser` for Zhipu's error bodies."""
    try:
        body = response.json()
    except ValueError:
        return UpstreamFault(response.text[:300] or response.reason or "no details")
    code, message = _code_and_message(body)
    if code is None and message is None:
        return UpstreamFault(str(body)[:300])
    text = f"{message or 'no details'} (Zhipu code {code})" if code else str(message)
    known = BUSINESS_CODES.get(code or "")
    if known is None:
        return UpstreamFault(text)
    return UpstreamFault(text, known.gateway_code, known.param, moderated=known.moderated)


def _send(http: UpstreamHTTP, method: str, url: str, **kw: Any) -> requests.Response:
    """``http.request``, with Zhipu's 400s that are not the client's fault made UpstreamErrors."""
    try:
        return http.request(method, url, **kw)
    except InvalidRequest as exc:
        if exc.code not in _NOT_THE_CLIENTS_FAULT:
            raise
        raise UpstreamError(
            exc.message,
            code=exc.code,
            upstream_request_id=exc.headers.get("x-upstream-request-id"),
        ) from exc


def _malformed(message: str, rid: str | None) -> UpstreamError:
    return malformed(f"zhipu {message}", rid)


# -- request body ---------------------------------------------------------------------


def _unsupported(param: str, model_id: str, what: str = "") -> InvalidRequest:
    return unsupported(
        param, f"'{model_id}' (Zhipu) does not support {what or f'the parameter {param!r}'}."
    )


def build_body(request: ImageRequest) -> dict[str, Any]:
    """The upstream body for one image; raises InvalidRequest for what Zhipu cannot honour."""
    model = request.model
    for name in ("style", "seed", "image"):
        if getattr(request, name) is not None:
            raise _unsupported(name, model.id)
    if request.background not in (None, "auto", "opaque"):
        raise _unsupported("background", model.id, f"background {request.background!r}")
    for name, value in request.extra.items():
        if value is None or (name == "moderation" and value == "auto"):
            continue
        raise _unsupported(name, model.id)

    body: dict[str, Any] = {"model": model.upstream, "prompt": request.prompt}
    if request.size:
        body["size"] = request.size
    elif request.aspect_ratio:
        raise _unsupported("aspect_ratio", model.id, "an aspect_ratio without a size")
    if request.quality not in (None, "auto"):
        offered = tuple(q for q in model.choices.get("quality", QUALITIES) if q in QUALITIES)
        if request.quality not in offered:
            raise InvalidRequest(
                f"'{model.id}' supports quality {' or '.join(offered)}, not {request.quality!r}.",
                param="quality",
                code=INVALID_VALUE,
            )
        body["quality"] = request.quality
    if request.user is not None:
        low, high = USER_ID_LENGTH
        if not low <= len(request.user) <= high:
            raise InvalidRequest(
                f"'{model.id}' (Zhipu) needs a user id of {low}-{high} characters; "
                f"got {len(request.user)}.",
                param="user",
                code=INVALID_VALUE,
            )
        body["user_id"] = request.user
    watermark = ZhipuOptions.of(model).watermark_enabled
    if watermark is not None:
        body["watermark_enabled"] = watermark
    return body


# -- responses --------------------------------------------------------------------------


def _object(http: UpstreamHTTP, response: requests.Response) -> dict[str, Any]:
    payload = http.json(response)
    if not isinstance(payload, dict):
        raise _malformed(
            "answered with a JSON body that is not an object.", request_id_of(response)
        )
    return payload


def _first_image(items: Any, rid: str | None) -> GeneratedImage:
    if not isinstance(items, list) or not items:
        raise UpstreamError(
            "zhipu answered without an image.", code="upstream_no_image", upstream_request_id=rid
        )
    return image_of(items[0], rid, "zhipu")


def _task_failure(payload: dict[str, Any], rid: str | None) -> Exception:
    code, message = _code_and_message(payload)
    if message is None:
        message = next(
            (
                payload[k]
                for k in ("fail_reason", "task_status_msg")
                if isinstance(payload.get(k), str)
            ),
            "no details",
        )
    known = BUSINESS_CODES.get(code or "")
    if known is not None and known.moderated:
        return content_policy_violation(
            f"zhipu refused the content: {message} (Zhipu code {code})", upstream_request_id=rid
        )
    suffix = f" (Zhipu code {code})" if code else ""
    return UpstreamError(
        f"zhipu failed the generation task: {message}{suffix}",
        code="upstream_task_failed",
        upstream_request_id=rid,
    )


def _task_status(payload: dict[str, Any], rid: str | None) -> str:
    status = payload.get("task_status")
    if not isinstance(status, str) or not status:
        raise _malformed("answered without a task_status.", rid)
    return status.upper()


# -- the two modes ------------------------------------------------------------------------


@dataclass
class _Call:
    """One job's calls: what every image shares, and the request ids seen."""

    request: ImageRequest
    ctx: CallContext
    body: dict[str, Any]
    options: ZhipuOptions
    request_ids: RequestIds = dataclasses.field(default_factory=RequestIds)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.ctx.api_key}"}


def _sync_image(call: _Call, index: int, http: UpstreamHTTP) -> GeneratedImage:
    response = _send(
        http,
        "POST",
        f"{call.ctx.base_url}/images/generations",
        json_body=call.body,
        headers=call.headers,
    )
    rid = request_id_of(response)
    payload = _object(http, response)
    body_id = payload.get("request_id") or payload.get("id")
    call.request_ids.add(rid or (str(body_id) if body_id else None), index)
    return _first_image(payload.get("data"), rid)


def _async_image(call: _Call, index: int, http: UpstreamHTTP) -> GeneratedImage:
    response = _send(
        http,
        "POST",
        f"{call.ctx.base_url}/async/images/generations",
        json_body=call.body,
        headers=call.headers,
    )
    payload = _object(http, response)
    # The task's own request_id is what Zhipu support can trace; the header is per call.
    rid = call.request_ids.add(
        str(payload.get("request_id") or "") or request_id_of(response), index
    )
    task_id = payload.get("id") or payload.get("task_id")
    if not isinstance(task_id, str | int) or isinstance(task_id, bool) or not str(task_id):
        raise _malformed("accepted the task without an id.", rid)
    interval = call.options.poll_interval
    status = str(payload.get("task_status") or "PROCESSING").upper()
    # PROCESSING, and any status Zhipu may add, means "not yet"; the deadline bounds it.
    while status not in _DONE:
        if status in _FAILED:
            raise _task_failure(payload, rid)
        http.pause(interval)
        response = _send(
            http,
            "GET",
            f"{call.ctx.base_url}/async-result/{quote(str(task_id), safe='')}",
            headers=call.headers,
        )
        payload = _object(http, response)
        status = _task_status(payload, rid)
    items = payload.get("image_result")
    return _first_image(items if items is not None else payload.get("data"), rid)


MODES: Mapping[str, Callable[[_Call, int, UpstreamHTTP], GeneratedImage]] = {
    "sync": _sync_image,
    "async": _async_image,
}


class ZhipuAdapter:
    options_model = ZhipuOptions

    def generate(self, request: ImageRequest, ctx: CallContext) -> ImageResult:
        options = ZhipuOptions.of(request.model)  # bad options fail before any upstream call
        make_image = MODES[options.mode]
        call = _Call(request=request, ctx=ctx, body=build_body(request), options=options)
        http = dataclasses.replace(ctx.http, error_parser=parse_zhipu_error)
        images = fan_out(request.n, http, lambda index, own: make_image(call, index, own))
        return ImageResult(images=images, upstream_request_id=call.request_ids.first())
