"""``replicate`` family: the Replicate predictions API (``https://api.replicate.com/v1``).

Asynchronous JSON predictions with ``Authorization: Bearer <token>``:

* ``model.upstream`` ``owner/name`` (an official model) ->
  ``POST {base}/models/{owner}/{name}/predictions`` with ``{"input": {...}}``;
  ``owner/name:<64-hex>`` or a bare 64-hex version id (community models such
  as sdxl) -> ``POST {base}/predictions`` with ``{"version": <64-hex>, "input"}``.
* Headers ``Prefer: wait=N`` (N <= 60, <= the attempt timeout and one second
  short of the job's time left, so fast models finish in this one call) and
  ``Cancel-After: <seconds left>s`` (Replicate stops the prediction itself if
  the worker dies). Create answers 201 with the prediction; while it is
  ``starting``/``processing`` the adapter polls ``urls.get`` every
  :data:`POLL_INTERVAL` seconds (``options.poll_interval`` overrides) until
  ``succeeded``/``failed``/``canceled``/``aborted``. ``urls.get``/``cancel``
  are only followed on the base URL's own origin (the bearer token never
  leaves it); otherwise ``{base}/predictions/{id}[/cancel]`` is used. Polls
  and cancels go through the SSRF guard, like result files. At the
  deadline, or on any error after the prediction exists, it POSTs the cancel
  URL best-effort and re-raises (:class:`DeadlineExceeded` at the deadline).
  A finished prediction's ``metrics.predict_time`` (the seconds Replicate bills
  for models run on its hardware by time) is summed into
  ``ImageResult.compute_seconds``.

Field mapping (gateway request -> ``input``), driven by the catalog entry's
``options`` (all optional):

* ``prompt`` -> ``prompt``; ``options.fixed_input`` (a table) is merged in as is.
* size, by ``options.size_mode``: ``"aspect_ratio"`` -> ``aspect_ratio`` (the
  ratio the size rule picked); ``"width_height"`` -> ``width``/``height``;
  ``"custom"`` -> ``aspect_ratio: "custom"`` plus ``width``/``height``
  (flux-pro). Without it: ``aspect_ratio`` when the rule gave a ratio, else
  ``width``/``height``.
* ``n`` -> ``options.count_field`` (e.g. ``num_outputs``, at most
  ``options.max_count``, default 4; more is an InvalidRequest naming ``n``)
  in one prediction; a model without a count field gets ``n`` predictions via
  :func:`workers.fanout.fan_out` (``seed`` + i for the i-th, so the images differ
  yet stay reproducible).
* ``seed`` -> ``seed``; ``output_format`` -> ``output_format`` with values renamed
  by ``options.output_format_values`` (default ``{jpeg = "jpg"}``);
  ``image`` (URL or data URL, the latter at most 256 KB as Replicate requires)
  -> ``options.image_field`` (default ``image``), wrapped in a list when
  ``options.image_list`` is true (ideogram's ``style_reference_images``); an
  edit's images likewise (all of them in the list, else the first: the
  catalog's ``max_reference_images`` keeps the count within the model's);
* an edit's ``mask`` (OpenAI's: transparent = edit) -> ``options.mask_field``
  (sdxl and playground: ``mask``) as a PNG data URL painted
  ``options.mask_paint`` (white, their convention) where to repaint
  (:func:`workers.adapters.masks.painted_mask`); a model without a
  ``mask_field`` refuses it naming ``mask``.
  Each only when the catalog lists it in the model's ``params``.
* ``user`` is dropped (Replicate has no end-user field), and so are the fields
  named in ``options.ignored_params`` (seed 004's OpenAI-style quality/style
  for FLUX.1-schnell). Any other field the client set is an InvalidRequest
  naming it (``code=UNSUPPORTED_PARAMETER``) before anything is sent.
* response ``output`` (a URL or a list of URLs on replicate.delivery, alive for
  an hour) -> image URLs the task downloads at once; fewer than ``n`` is a
  partial result. ``failed`` with an ``error`` mentioning NSFW/safety/sensitive
  content -> 400 ``content_policy_violation``; other failures, ``canceled``,
  ``aborted`` and malformed predictions -> UpstreamError (the prediction id
  is the upstream request id).

Errors are RFC 7807 ``{type, title, status, detail, instance}`` (429 is a bare
``{"detail"}``); :func:`replicate_error_parser` reads them, turning a 422's
``input.<field>`` back into the gateway's param name.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import requests
from pydantic import StrictBool

from shared.catalog import Model
from shared.errors import (
    CATALOG_MISCONFIGURED,
    IMAGE_TOO_LARGE,
    INVALID_IMAGE,
    INVALID_VALUE,
    DeadlineExceeded,
    InvalidRequest,
    ServerError,
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
from workers.adapters.common import RequestIds, fields_set, malformed, unsupported
from workers.adapters.masks import painted_mask
from workers.fanout import fan_out
from workers.http import UpstreamFault, UpstreamHTTP

POLL_INTERVAL = 0.5  # seconds between polls (Replicate's own clients use 0.5)
PREFER_WAIT_MAX = 60  # Replicate holds a create call at most this long
PREFER_WAIT_MARGIN = 1.0  # seconds kept back from the hold for the poll/cancel
DATA_URL_MAX_BYTES = 256 * 1024
DEFAULT_MAX_COUNT = 4
DEFAULT_OUTPUT_FORMAT_VALUES: Mapping[str, str] = {"jpeg": "jpg"}
ALWAYS_IGNORED = frozenset({"user"})
# Gateway fields this adapter can map, when the model's catalog params list them.
MAPPABLE = frozenset({"seed", "output_format", "image"})

TERMINAL = frozenset({"succeeded", "failed", "canceled", "aborted"})
# How Replicate models word a content refusal in a failed prediction's `error`.
_MODERATION = re.compile(
    r"\bnsfw\b|safety (?:filter|checker|system|settings)|\bunsafe\b|sensitive content"
    r"|potentially sensitive|flagged|content polic|moderation|inappropriate",
    re.IGNORECASE,
)
_VERSIONED = re.compile(r"(?:[\w.-]+/[\w.-]+:)?(?P<version>[0-9a-f]{64})")
_OFFICIAL = re.compile(r"(?P<owner>[\w.-]+)/(?P<name>[\w.-]+)")
_PREDICTION_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")
_DETAIL_FIELD = re.compile(r"^- input\.([\w]+)", re.MULTILINE)


class ReplicateOptions(AdapterOptions):
    """The catalog entry's ``options`` for a Replicate model (see the module docstring)."""

    size_mode: Literal["aspect_ratio", "width_height", "custom"] | None = None
    count_field: str | None = None
    max_count: Count = DEFAULT_MAX_COUNT
    output_format_values: dict[str, str] = dict(DEFAULT_OUTPUT_FORMAT_VALUES)
    image_field: str = "image"
    image_list: StrictBool = False
    mask_field: str | None = None  # the model's inpainting mask input (sdxl: "mask")
    mask_paint: Literal["white", "black"] = "white"  # the colour it repaints
    ignored_params: frozenset[str] = frozenset()
    fixed_input: dict[str, Any] = {}
    poll_interval: Seconds | None = None


@dataclass(frozen=True)
class _Target:
    """Where predictions of one model are created."""

    url: str
    version: str | None  # body "version" for community models


class ReplicateAdapter:
    options_model = ReplicateOptions

    def check_model(self, model: Model) -> None:
        _target(model, "")

    def generate(self, request: ImageRequest, ctx: CallContext) -> ImageResult:
        model = request.model
        opts = ReplicateOptions.of(model)  # ServerError catalog_misconfigured if bad
        _reject_unsupported(request, opts)
        base_input, sources = _build_input(request, opts, ctx)
        target = _target(model, ctx.base_url)
        http = dataclasses.replace(ctx.http, error_parser=replicate_error_parser(sources))
        run = _Runner(ctx, target, opts)

        if opts.count_field:
            if request.n > opts.max_count:
                raise InvalidRequest(
                    f"The model '{model.id}' makes at most {opts.max_count} images per request.",
                    param="n",
                    code=INVALID_VALUE,
                )
            urls = run.predict({**base_input, opts.count_field: request.n}, http)
            return ImageResult(
                images=[GeneratedImage(url=u) for u in urls],
                upstream_request_id=run.request_id,
                compute_seconds=run.compute_seconds,
            )

        def make_one(index: int, own: UpstreamHTTP) -> GeneratedImage:
            one = dict(base_input)
            if request.seed is not None and index:
                one["seed"] = request.seed + index
            urls = run.predict(one, own, index)
            if not urls:
                raise malformed(
                    "Replicate's prediction succeeded without an image.", run.request_id
                )
            return GeneratedImage(url=urls[0])

        images = fan_out(request.n, http, make_one)
        return ImageResult(
            images=images, upstream_request_id=run.request_id, compute_seconds=run.compute_seconds
        )


# -- request building ----------------------------------------------------------------


def _reject_unsupported(request: ImageRequest, opts: ReplicateOptions) -> None:
    """Every field the client set must be sent or deliberately ignored, never dropped."""
    given = fields_set(request)
    supported = MAPPABLE & request.model.params
    for name in given:
        if name in ALWAYS_IGNORED or name in opts.ignored_params:
            continue
        if name not in supported:
            raise unsupported(
                name,
                f"The model '{request.model.id}' does not support '{name}' (served by Replicate).",
            )


def _build_input(
    request: ImageRequest, opts: ReplicateOptions, ctx: CallContext | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """The prediction ``input`` (without the count) and upstream field -> gateway param."""
    body: dict[str, Any] = dict(opts.fixed_input)
    sources: dict[str, str] = {"prompt": "prompt"}
    body["prompt"] = request.prompt

    mode = opts.size_mode or (
        "aspect_ratio" if request.aspect_ratio and request.width is None else "width_height"
    )
    if mode == "aspect_ratio":
        if not request.aspect_ratio:
            raise _size_mismatch(request, mode)
        body["aspect_ratio"] = request.aspect_ratio
        sources["aspect_ratio"] = "aspect_ratio"
    else:
        if request.width is None or request.height is None:
            raise _size_mismatch(request, mode)
        if mode == "custom":
            body["aspect_ratio"] = "custom"
            sources["aspect_ratio"] = "size"
        body["width"], body["height"] = request.width, request.height
        sources.update(width="size", height="size")
    if opts.count_field:
        sources[opts.count_field] = "n"

    if request.seed is not None:
        body["seed"] = request.seed
        sources["seed"] = "seed"
    if request.output_format:
        body["output_format"] = opts.output_format_values.get(
            request.output_format, request.output_format
        )
        sources["output_format"] = "output_format"
    if request.image:
        images = request.images or (request.image,)  # an edit's, or a generation's one
        for image in images:
            _check_image(image)
        body[opts.image_field] = list(images) if opts.image_list else images[0]
        sources[opts.image_field] = "image"
    if request.mask is not None:
        if not opts.mask_field or ctx is None:
            raise unsupported(
                "mask", f"The model '{request.model.id}' takes no mask (served by Replicate)."
            )
        mask = data_url(painted_mask(request.mask, ctx, paint=opts.mask_paint), "image/png")
        _check_image(mask, "mask")
        body[opts.mask_field] = mask
        sources[opts.mask_field] = "mask"
    return body, sources


def _size_mismatch(request: ImageRequest, mode: str) -> ServerError:
    return ServerError(
        f"The catalog entry of '{request.model.id}' says size_mode '{mode}', but its size "
        "rule gave something else.",
        code=CATALOG_MISCONFIGURED,
    )


def _check_image(image: str, param: str = "image") -> None:
    scheme = urlsplit(image).scheme.lower()
    if scheme not in ("http", "https", "data"):
        raise InvalidRequest(
            f"'{param}' must be an http(s) URL or a data URL.", param=param, code=INVALID_IMAGE
        )
    if scheme == "data" and len(image.encode()) > DATA_URL_MAX_BYTES:
        raise InvalidRequest(
            "Replicate takes data URLs of at most 256 KB; pass a larger image as an https URL.",
            param=param,
            code=IMAGE_TOO_LARGE,
        )


def _target(model: Model, base_url: str) -> _Target:
    base = base_url.rstrip("/")
    if match := _VERSIONED.fullmatch(model.upstream):
        return _Target(f"{base}/predictions", match["version"])
    if match := _OFFICIAL.fullmatch(model.upstream):
        owner, name = quote(match["owner"], safe=""), quote(match["name"], safe="")
        return _Target(f"{base}/models/{owner}/{name}/predictions", None)
    raise ServerError(
        f"The catalog entry of '{model.id}' names Replicate model '{model.upstream}', which is "
        "neither 'owner/name' nor a version id.",
        code=CATALOG_MISCONFIGURED,
    )


# -- running predictions ---------------------------------------------------------------


class _Runner:
    """Creates one prediction and follows it to its end; remembers the prediction ids."""

    def __init__(self, ctx: CallContext, target: _Target, opts: ReplicateOptions) -> None:
        self.ctx = ctx
        self.target = target
        self.interval = opts.poll_interval if opts.poll_interval is not None else POLL_INTERVAL
        self.auth = {"Authorization": f"Bearer {ctx.api_key}"}
        self.ids = RequestIds()
        self.seconds: list[float] = []  # metrics.predict_time of each finished prediction

    @property
    def compute_seconds(self) -> float | None:
        """The compute seconds Replicate billed (``metrics.predict_time``), if it said."""
        return sum(self.seconds) if self.seconds else None

    @property
    def request_id(self) -> str | None:
        return self.ids.joined(200)

    def predict(self, input_: dict[str, Any], http: UpstreamHTTP, index: int = 0) -> list[str]:
        """Run one prediction (image ``index`` of a fan-out) through ``http``; its output
        URLs, or the translated failure. ``urls.get``/``cancel`` come from the answer:
        they go through the SSRF guard (``http.fetch_session``), like result files."""
        body: dict[str, Any] = {"input": input_}
        if self.target.version:
            body = {"version": self.target.version, **body}
        response = http.request(
            "POST", self.target.url, json_body=body, headers=self._create_headers(http)
        )
        prediction = _prediction(http.json(response), None)
        pred_id = prediction["id"]
        self.ids.add(pred_id, index)
        get_url = self._own_url(prediction, "get", f"/predictions/{pred_id}")
        try:
            while prediction["status"] not in TERMINAL:
                http.pause(self.interval)
                response = http.request("GET", get_url, headers=self.auth, guarded=True)
                prediction = _prediction(http.json(response), pred_id)
        except Exception:
            # Deadline, or the poll broke: stop paying for a prediction nobody will read.
            cancel_url = self._own_url(prediction, "cancel", f"/predictions/{pred_id}/cancel")
            http.best_effort("POST", cancel_url, headers=self.auth, guarded=True)
            raise
        return self._outcome(prediction, http)

    def _create_headers(self, http: UpstreamHTTP) -> dict[str, str]:
        headers = dict(self.auth)
        left = http.remaining()
        wait = math.floor(min(PREFER_WAIT_MAX, left - PREFER_WAIT_MARGIN, http.attempt_timeout - 1))
        if wait >= 1:
            headers["Prefer"] = f"wait={wait}"
        headers["Cancel-After"] = f"{max(1, math.ceil(left))}s"
        return headers

    def _own_url(self, prediction: Mapping[str, Any], name: str, fallback: str) -> str:
        """``urls.<name>`` if it is on the base URL's origin, else the documented path."""
        urls = prediction.get("urls")
        url = urls.get(name) if isinstance(urls, dict) else None
        base = self.ctx.base_url.rstrip("/")
        if isinstance(url, str) and _origin(url) == _origin(base):
            return url
        return base + fallback

    def _outcome(self, prediction: Mapping[str, Any], http: UpstreamHTTP) -> list[str]:
        pred_id = prediction["id"]
        status = prediction["status"]
        metrics = prediction.get("metrics")
        seconds = metrics.get("predict_time") if isinstance(metrics, dict) else None
        if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds >= 0:
            self.seconds.append(float(seconds))
        if status == "succeeded":
            return _output_urls(prediction, pred_id)
        if status == "failed":
            error = prediction.get("error")
            message = error if isinstance(error, str) and error else "no error message"
            if _MODERATION.search(message):
                raise content_policy_violation(
                    f"replicate refused the content: {message}", upstream_request_id=pred_id
                )
            raise UpstreamError(
                f"replicate's prediction failed: {message}",
                code="upstream_prediction_failed",
                upstream_request_id=pred_id,
            )
        # canceled / aborted: by its Cancel-After deadline (ours) or by someone else.
        if http.remaining() < PREFER_WAIT_MARGIN:
            raise DeadlineExceeded(f"replicate {status} prediction {pred_id} at its deadline")
        raise UpstreamError(
            f"replicate's prediction ended '{status}' before it produced an image.",
            code="upstream_canceled",
            upstream_request_id=pred_id,
        )


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _prediction(payload: Any, expected_id: str | None) -> dict[str, Any]:
    """The prediction object, checked enough to drive the state machine."""
    ok = (
        isinstance(payload, dict)
        and isinstance(payload.get("id"), str)
        and _PREDICTION_ID.fullmatch(payload["id"]) is not None
        and isinstance(payload.get("status"), str)
        and (expected_id is None or payload["id"] == expected_id)
    )
    if not ok:
        raise malformed(
            "replicate answered something that is not the expected prediction.", expected_id
        )
    return payload


def _output_urls(prediction: Mapping[str, Any], pred_id: str) -> list[str]:
    output = prediction.get("output")
    if output is None and prediction.get("data_removed"):
        raise malformed(
            "replicate already removed the prediction's output.",
            code="upstream_output_removed",
            upstream_request_id=pred_id,
        )
    items = [output] if isinstance(output, str) else output
    if not isinstance(items, list) or not all(
        isinstance(u, str) and urlsplit(u).scheme in ("http", "https") for u in items
    ):
        raise UpstreamError(
            "replicate's prediction output is not a URL or a list of URLs.", pred_id
        )
    return list(items)


# -- errors -----------------------------------------------------------------------------


def replicate_error_parser(
    sources: Mapping[str, str] | None = None,
) -> Callable[[requests.Response], UpstreamFault]:
    """An error parser for RFC 7807 bodies; ``sources`` maps input fields to gateway params."""
    sources = dict(sources or {})

    def parse(response: requests.Response) -> UpstreamFault:
        try:
            body = response.json()
        except ValueError:
            return UpstreamFault(response.text[:300].strip() or response.reason or "no details")
        if not isinstance(body, dict):
            return UpstreamFault(json.dumps(body)[:300])
        detail, title = body.get("detail"), body.get("title")
        if isinstance(detail, str) and detail.strip():
            lines = [line.strip().removeprefix("- ") for line in detail.strip().splitlines()]
            message = "; ".join(line for line in lines if line)
        elif isinstance(title, str) and title:
            message = title
        else:
            message = json.dumps(body)[:300]
        field = None
        invalid = body.get("invalid_fields")
        if isinstance(invalid, list) and invalid and isinstance(invalid[0], dict):
            where = str(invalid[0].get("field", ""))
            field = (
                where.removeprefix("input.").split(".")[0] if where.startswith("input.") else None
            )
        if field is None and isinstance(detail, str) and (m := _DETAIL_FIELD.search(detail)):
            field = m.group(1)
        status = response.status_code
        # Replicate reports refusals in failed predictions; a 4xx that names no input
        # field but reads like one is treated the same way.
        moderated = status in (400, 422) and field is None and bool(_MODERATION.search(message))
        return UpstreamFault(
            message[:500], None, sources.get(field) if field else None, moderated=moderated
        )

    return parse
