"""Simulator of the fal queue API (``https://queue.fal.run``). It plays the
outside world, so it imports nothing from the gateway; this docstring is its
specification (what it imitates of fal's queue documentation, and where it
chooses).

Protocol (``Authorization: Key <FAL_KEY>`` on every queue call):

* ``POST /{owner}/{app}[/{subpath}]`` with the model input as JSON submits a
  request: 200 ``{"status": "IN_QUEUE", "request_id", "response_url",
  "status_url", "cancel_url", "queue_position"}``. The URLs point at this
  simulator and, like fal's, leave the subpath out:
  ``/{owner}/{app}/requests/{id}[/status|/cancel]``. An optional
  ``X-Fal-Request-Timeout`` header (seconds, > 1; else 400 ``bad_request``)
  makes a request that is not done in time end with ``request_timeout``.
* ``GET .../requests/{id}/status[?logs=1]``: 202 ``IN_QUEUE`` (with
  ``queue_position``, 0-based) on the first poll, 202 ``IN_PROGRESS`` (with
  ``logs``) until the request is done, then 200 ``COMPLETED`` (with ``logs``,
  ``metrics.inference_time``, and ``error``/``error_type`` when the run
  failed). A request is done once it was polled ``poll_steps`` times *and*
  ``latency`` seconds passed since the submission (``latency`` is the run
  time here; the submission itself answers at once).
* ``GET .../requests/{id}``: the app's output, or the app's error answer for a
  failed run; 400 ``Request is still in progress`` before completion.
* ``PUT .../requests/{id}/cancel``: 202 ``{"status": "CANCELLATION_REQUESTED"}``
  (the request then completes with ``error_type: client_cancelled``), 400
  ``ALREADY_COMPLETED``, 404 ``NOT_FOUND``.
* ``GET /files/<name>``: the result images (fal's CDN), 404 after
  ``result_ttl`` seconds.

Apps (:data:`APPS`), each validated like its pydantic input model (unknown
fields are rejected with ``extra_forbidden`` -- stricter than fal, on purpose,
so an adapter cannot send fields that would be silently ignored):

* ``fal-ai/z-image/turbo`` and ``fal-ai/z-image/turbo/image-to-image`` (adds
  the required ``image_url`` -- an http(s) or ``data:image/...`` URL -- and
  ``strength``), ``fal-ai/hunyuan-image/v3/text-to-image``, and
  ``fal-ai/flux-pro/v1/fill`` (FLUX.1 Fill [pro], inpainting: the required
  ``image_url`` and ``mask_url`` -- a black-and-white image, white where to
  repaint -- and no ``image_size``: the output has the input image's size,
  and a ``data:`` mask must have it too, else 422 on ``mask_url``).
* Common fields: ``prompt`` (required), ``image_size`` (a preset such as
  ``square_hd`` or ``{"width", "height"}``, each side 1..14142),
  ``num_images`` 1..4, ``seed`` (>= 0), ``output_format`` ``jpeg|png``,
  ``enable_safety_checker``, ``sync_mode`` (true: images come back as data
  URIs), ``num_inference_steps``, ``enable_prompt_expansion``.

Input validation happens when the request runs, as on fal: the submission is
accepted, the request completes with ``error: "Invalid status code: 422"``,
and the result answers 422 ``{"detail": [{"loc": ["body", field], "msg",
"type", "url", "input", "ctx"}]}``. A body that is not a JSON object is
refused at submission with the same 422 shape (``json_invalid`` /
``model_attributes_type``).

Output: ``{"images": [{"url", "width", "height", "content_type"}], "seed",
"has_nsfw_concepts": [bool], "prompt", "timings": {"inference"}}`` -- real
PNG/JPEG files of exactly the requested size (presets: ``square_hd`` 1024²,
``square`` 512², ``portrait_4_3`` 768x1024, ``portrait_16_9`` 576x1024,
``landscape_4_3`` 1024x768, ``landscape_16_9`` 1024x576), one solid colour
per image (chosen by ``seed``), ``drop_images`` fewer than asked.

Prompt conventions (whole words, case-insensitive), evaluated when the run
ends:

* ``forbidden``: with the safety checker on, every image is black and flagged
  in ``has_nsfw_concepts`` (fal's moderation outcome for these apps).
* ``risque``: the same for the first image only.
* ``crash``: the runner fails: ``error_type: runner_server_error``, the result
  answers 500.
* ``garbled``: the result answers 200 with a body that is not JSON.

Errors are ``{"detail": "..."}`` (plus ``error_type`` and the
``X-Fal-Error-Type`` header for request errors): 401 for a missing or wrong
key; injected failures (submissions only: a fault the request names in its
``X-Sim-Fault`` header or prompt, see :mod:`simulators.base`, then
``fail_next``/``failure_rate``):
429 rate limit, 500 ``internal_error``, 502 ``runner_incomplete_response``,
503 ``runner_scheduling_failure``, 504 ``request_timeout``, other 4xx
``bad_request``, with ``Retry-After`` when configured. Every response carries
``x-fal-request-id``.

Order of a submission: record it, check the key, inject a failure, parse the
body, find the app, queue it. Control endpoints: ``GET|POST /_sim/config``,
``GET|DELETE /_sim/requests`` (every queue call, with ``kind`` submit, status,
result or cancel), ``POST /_sim/reset``, ``GET /_sim/health``.
"""

from __future__ import annotations

import base64
import io
import math
import random
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Response, g, jsonify, request
from PIL import Image, UnidentifiedImageError
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
from simulators.control import parse_json_body
from simulators.state import PALETTE, SimConfig

PROVIDER = "fal"

MAX_TASKS = 2000
MAX_SIDE = 14142
MAX_NUM_IMAGES = 4
MAX_SEED = 2**63 - 1

PRESETS: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}

BLACK = (0, 0, 0)


RISQUE = word("risque")
CRASH = word("crash")
GARBLED = word("garbled")


class FalError(SimError):
    """An error answer: ``{"detail": ...}`` (+ ``error_type``) with a status."""

    def __init__(
        self,
        status: int,
        detail: Any,
        *,
        error_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(str(detail))
        self.status = status
        self.detail = detail
        self.error_type = error_type
        self.headers = headers or {}
        if error_type:
            self.headers = {"X-Fal-Error-Type": error_type, **self.headers}

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"detail": self.detail}
        if self.error_type:
            out["error_type"] = self.error_type
        return out


# -- input validation (pydantic v2 / FastAPI error items) ---------------------------


def _item(kind: str, loc: list[Any], msg: str, value: Any, ctx: dict | None = None) -> dict:
    out: dict[str, Any] = {
        "loc": ["body", *loc],
        "msg": msg,
        "type": kind,
        "url": f"https://docs.fal.ai/errors#{kind}",
        "input": value,
    }
    if ctx:
        out["ctx"] = ctx
    return out


Check = Callable[[list[Any], Any], list[dict]]


def _string(*, min_length: int = 0) -> Check:
    def check(loc: list[Any], value: Any) -> list[dict]:
        if not isinstance(value, str):
            return [_item("string_type", loc, "Input should be a valid string", value)]
        if len(value) < min_length:
            return [
                _item(
                    "string_too_short",
                    loc,
                    f"String should have at least {min_length} character",
                    value,
                    {"min_length": min_length},
                )
            ]
        return []

    return check


def _bounds(loc: list[Any], value: float, low: float | None, high: float | None) -> list[dict]:
    if low is not None and value < low:
        msg = f"Input should be greater than or equal to {low}"
        return [_item("greater_than_equal", loc, msg, value, {"ge": low})]
    if high is not None and value > high:
        msg = f"Input should be less than or equal to {high}"
        return [_item("less_than_equal", loc, msg, value, {"le": high})]
    return []


def _integer(low: int | None = None, high: int | None = None) -> Check:
    def check(loc: list[Any], value: Any) -> list[dict]:
        if isinstance(value, bool) or not isinstance(value, int):
            return [_item("int_type", loc, "Input should be a valid integer", value)]
        return _bounds(loc, value, low, high)

    return check


def _number(low: float, high: float) -> Check:
    def check(loc: list[Any], value: Any) -> list[dict]:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return [_item("float_type", loc, "Input should be a valid number", value)]
        return _bounds(loc, value, low, high)

    return check


def _boolean(loc: list[Any], value: Any) -> list[dict]:
    if not isinstance(value, bool):
        return [_item("bool_type", loc, "Input should be a valid boolean", value)]
    return []


def _literal(*allowed: str) -> Check:
    expected = " or ".join(f"'{a}'" for a in allowed)
    if len(allowed) > 2:
        expected = ", ".join(f"'{a}'" for a in allowed[:-1]) + f" or '{allowed[-1]}'"

    def check(loc: list[Any], value: Any) -> list[dict]:
        if value not in allowed:
            return [
                _item(
                    "literal_error",
                    loc,
                    f"Input should be {expected}",
                    value,
                    {"expected": expected},
                )
            ]
        return []

    return check


def _image_size(loc: list[Any], value: Any) -> list[dict]:
    if isinstance(value, str):
        return _literal(*PRESETS)(loc, value)
    if not isinstance(value, dict):
        return [
            _item(
                "model_type",
                loc,
                "Input should be a valid dictionary or instance of ImageSize",
                value,
                {"class_name": "ImageSize"},
            )
        ]
    errors: list[dict] = []
    for key in value:
        if key not in ("width", "height"):
            errors.append(
                _item("extra_forbidden", [*loc, key], "Extra inputs are not permitted", value[key])
            )
    side = _integer(1, MAX_SIDE)
    for key in ("width", "height"):
        if key in value:
            errors += side([*loc, key], value[key])
    return errors


def _image_url(loc: list[Any], value: Any) -> list[dict]:
    errors = _string(min_length=1)(loc, value)
    if errors:
        return errors
    if not re.match(r"(https?://\S+|data:image/[\w.+-]+;base64,[A-Za-z0-9+/=\s]+)\Z", value):
        return [
            _item(
                "url_parsing",
                loc,
                "Input should be a valid URL or a base64 data URI of an image",
                value,
            )
        ]
    return []


@dataclass(frozen=True)
class AppSpec:
    """One fal app: its path and its input fields (name -> check)."""

    path: str
    fields: dict[str, Check]
    required: tuple[str, ...] = ("prompt",)
    defaults: dict[str, Any] = field(default_factory=dict)
    sized_by_input: bool = False  # no image_size: the output has the input image's size

    @property
    def root(self) -> str:
        """``owner/app`` -- what fal's queue URLs keep of the path."""
        return "/".join(self.path.split("/")[:2])


_COMMON: dict[str, Check] = {
    "prompt": _string(min_length=1),
    "image_size": _image_size,
    "num_images": _integer(1, MAX_NUM_IMAGES),
    "seed": _integer(0, MAX_SEED),
    "output_format": _literal("jpeg", "png"),
    "enable_safety_checker": _boolean,
    "sync_mode": _boolean,
    "enable_prompt_expansion": _boolean,
}

_SIZING = ("image_size", "enable_prompt_expansion")  # not inputs of the fill app

APPS: dict[str, AppSpec] = {
    spec.path: spec
    for spec in (
        AppSpec(
            "fal-ai/z-image/turbo",
            {
                **_COMMON,
                "num_inference_steps": _integer(1, 8),
                "acceleration": _literal("none", "regular", "high"),
            },
            defaults={"image_size": "landscape_4_3"},
        ),
        AppSpec(
            "fal-ai/z-image/turbo/image-to-image",
            {
                **_COMMON,
                "num_inference_steps": _integer(1, 8),
                "acceleration": _literal("none", "regular", "high"),
                "image_url": _image_url,
                "strength": _number(0.0, 1.0),
            },
            required=("prompt", "image_url"),
            defaults={"image_size": "square_hd"},
        ),
        AppSpec(
            "fal-ai/hunyuan-image/v3/text-to-image",
            {
                **_COMMON,
                "negative_prompt": _string(),
                "num_inference_steps": _integer(1, 50),
                "guidance_scale": _number(1.0, 20.0),
            },
            defaults={"image_size": "square_hd"},
        ),
        AppSpec(
            "fal-ai/flux-pro/v1/fill",
            {
                **{
                    k: v
                    for k, v in _COMMON.items()
                    if k not in ("image_size", "enable_prompt_expansion")
                },
                "image_url": _image_url,
                "mask_url": _image_url,
                "safety_tolerance": _literal("1", "2", "3", "4", "5", "6"),
            },
            required=("prompt", "image_url", "mask_url"),
            sized_by_input=True,
        ),
    )
}


def validate_input(spec: AppSpec, body: dict[str, Any]) -> list[dict]:
    """The pydantic-style error items for ``body`` (empty if it is valid)."""
    errors: list[dict] = []
    for name in spec.required:
        if name not in body:
            errors.append(_item("missing", [name], "Field required", None))
    for name, value in body.items():
        check = spec.fields.get(name)
        if check is None:
            errors.append(_item("extra_forbidden", [name], "Extra inputs are not permitted", value))
        else:
            errors += check([name], value)
    if not errors and "mask_url" in spec.fields:
        errors += _mask_matches(body)
    return errors


def _data_uri_size(value: Any) -> tuple[int, int] | None:
    """The pixel size of a ``data:`` image URI, None for a URL or what Pillow cannot read."""
    if not isinstance(value, str) or not value.startswith("data:"):
        return None
    try:
        with Image.open(io.BytesIO(base64.b64decode(value.partition(",")[2]))) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def _mask_matches(body: dict[str, Any]) -> list[dict]:
    """A fill request's mask must be readable and the image's size (data URIs only)."""
    image, mask = _data_uri_size(body.get("image_url")), _data_uri_size(body.get("mask_url"))
    if isinstance(body.get("mask_url"), str) and body["mask_url"].startswith("data:"):
        if mask is None:
            return [_item("value_error", ["mask_url"], "Could not read the mask image", None)]
        if image is not None and mask != image:
            message = f"The mask must have the image's size {image[0]}x{image[1]}"
            return [_item("value_error", ["mask_url"], message, f"{mask[0]}x{mask[1]}")]
    return []


def output_size(spec: AppSpec, body: dict[str, Any]) -> tuple[int, int]:
    if spec.sized_by_input:
        return _data_uri_size(body.get("image_url")) or (1024, 1024)
    size = body.get("image_size", spec.defaults.get("image_size", "square_hd"))
    if isinstance(size, str):
        return PRESETS[size]
    return int(size.get("width", 512)), int(size.get("height", 512))


# -- queue state ------------------------------------------------------------------


@dataclass
class Task:
    id: str
    spec: AppSpec
    body: dict[str, Any]
    created: float
    latency: float
    poll_steps: int
    drop_images: int
    timeout: float | None
    polls: int = 0
    cancelled: bool = False
    done: bool = False
    finished: float | None = None
    # outcome once done: the result answer (status, JSON body or raw text)
    result_status: int = 200
    result_body: Any = None
    result_text: str | None = None
    error: str | None = None
    error_type: str | None = None


SERVER_ERRORS: dict[int, tuple[str, str]] = {
    500: ("Internal server error", "internal_error"),
    502: ("The runner sent an incomplete response", "runner_incomplete_response"),
    503: ("No runner could be allocated for the request", "runner_scheduling_failure"),
    504: ("Request timed out", "request_timeout"),
}


class FalSimulator(Simulator):
    """fal's queue: submissions become tasks, answered by polls, results and cancels."""

    provider = PROVIDER
    request_id_header = "x-fal-request-id"

    def __init__(self, config: SimConfig | None = None) -> None:
        self.tasks: OrderedDict[str, Task] = OrderedDict()
        self.file_times: OrderedDict[str, float] = OrderedDict()
        self.rng = random.Random()
        super().__init__(config)

    def new_request_id(self) -> str:
        return str(uuid.uuid4())

    def reset(self) -> None:
        with self.lock:
            self.tasks.clear()

    def http_error(self, err: HTTPException) -> Response:
        status = err.code or 500
        return FalError(status, err.name if status in (404, 405) else err.description).response()

    def failure(self, config: SimConfig) -> FalError:
        status = config.fail_status
        headers = retry_after_headers(config)
        if status == 429:
            return FalError(429, "Rate limit exceeded. Please try again later.", headers=headers)
        if status == 401:
            return FalError(401, "Unauthorized", headers=headers)
        if status == 403:
            return FalError(
                403, "Forbidden: this key may not use this application", headers=headers
            )
        if status >= 500:
            detail, error_type = SERVER_ERRORS.get(status, SERVER_ERRORS[500])
            return FalError(status, detail, error_type=error_type, headers=headers)
        return FalError(
            status,
            f"Simulated upstream failure (HTTP {status}).",
            error_type="bad_request",
            headers=headers,
        )

    def check_auth(self, config: SimConfig) -> None:
        header = request.headers.get("Authorization", "")
        if not header:
            raise FalError(401, "Missing authorization header")
        token = credential(("key",))
        if token is None:
            raise FalError(401, "Invalid authorization header, expected 'Key <FAL_KEY>'")
        if config.api_key is not None and token != config.api_key:
            raise FalError(401, f"No user found for Key ID and Secret ({_mask(token)})")

    def _urls(self, task: Task) -> dict[str, str]:
        base = f"{request.host_url}{task.spec.root}/requests/{task.id}"
        return {
            "response_url": base,
            "status_url": f"{base}/status",
            "cancel_url": f"{base}/cancel",
        }

    def _task(self, root: str, request_id: str) -> Task:
        with self.lock:
            task = self.tasks.get(request_id)
        if task is None or task.spec.root != root:
            raise FalError(404, f"Request {request_id} not found")
        return task

    # -- the run -----------------------------------------------------------------------

    def _finish(self, task: Task, now: float) -> None:
        """Decide the outcome of a task whose run is over (called with the lock held)."""
        task.done = True
        task.finished = now
        prompt = task.body.get("prompt") if isinstance(task.body.get("prompt"), str) else ""
        if task.cancelled:
            task.error, task.error_type = "Request was cancelled", "client_cancelled"
            task.result_status = 499
            task.result_body = {"detail": task.error, "error_type": task.error_type}
            return
        if task.timeout is not None and now - task.created > task.timeout:
            task.error, task.error_type = "Request timed out", "request_timeout"
            task.result_status = 504
            task.result_body = {"detail": task.error, "error_type": task.error_type}
            return
        errors = validate_input(task.spec, task.body)
        if errors:
            task.error = "Invalid status code: 422"
            task.result_status = 422
            task.result_body = {"detail": errors}
            return
        if CRASH.search(prompt):
            task.error, task.error_type = "Invalid status code: 500", "runner_server_error"
            task.result_status = 500
            task.result_body = {"detail": "Internal Server Error", "error_type": task.error_type}
            return
        if GARBLED.search(prompt):
            task.result_text = "<html><body>502 Bad Gateway</body></html>"
            return
        task.result_body = self._render(task)

    def _render(self, task: Task) -> dict[str, Any]:
        body = task.body
        width, height = output_size(task.spec, body)
        fmt = body.get("output_format", "png")
        count = max(0, int(body.get("num_images", 1)) - task.drop_images)
        seed = body.get("seed")
        if seed is None:
            seed = self.rng.randrange(0, 2**31)
        checker = body.get("enable_safety_checker", True)
        prompt = body["prompt"]
        images: list[dict[str, Any]] = []
        flags: list[bool] = []
        for index in range(count):
            flagged = bool(checker) and (
                bool(FORBIDDEN_WORD.search(prompt)) or (index == 0 and bool(RISQUE.search(prompt)))
            )
            rgb = BLACK if flagged else PALETTE[(seed + index) % len(PALETTE)]
            data = solid_image(width, height, fmt, rgb)
            if body.get("sync_mode"):
                url = f"data:{CONTENT_TYPES[fmt]};base64,{base64.b64encode(data).decode()}"
            else:
                name = f"{uuid.uuid4().hex}.{'jpg' if fmt == 'jpeg' else 'png'}"
                self.state.put_file(name, data, CONTENT_TYPES[fmt])
                self.file_times[name] = time.time()
                while len(self.file_times) > MAX_TASKS:
                    self.file_times.popitem(last=False)
                url = f"{request.host_url}files/{name}"
            images.append(
                {"url": url, "width": width, "height": height, "content_type": CONTENT_TYPES[fmt]}
            )
            flags.append(flagged)
        return {
            "images": images,
            "timings": {"inference": round(max(task.latency, 0.05), 3)},
            "seed": seed,
            "has_nsfw_concepts": flags,
            "prompt": prompt,
        }

    def _advance(self, task: Task, *, poll: bool) -> None:
        """Count a status poll and finish the task when its time has come (lock held)."""
        if task.done:
            return
        now = time.time()
        if poll:
            task.polls += 1
        if task.cancelled and poll:
            self._finish(task, now)
            return
        if task.timeout is not None and now - task.created > task.timeout:
            self._finish(task, now)
            return
        # A status poll answers pending for the first poll_steps polls; a result
        # fetch finds the request done once those polls have happened.
        polled_enough = task.polls > task.poll_steps if poll else task.polls >= task.poll_steps
        if polled_enough and now - task.created >= task.latency:
            self._finish(task, now)

    # -- queue endpoints -----------------------------------------------------------------

    @route("POST", "/<path:app_path>")
    def submit(self, app_path: str) -> Response:
        # An empty body is a JSON null here (refused as not an object), not invalid JSON.
        body, raw_text = parse_json_body() if request.get_data(cache=True) else (None, None)
        entry = self.record(kind="submit", json=body, raw_body=raw_text)
        return self.answer(entry, lambda: self._submit(app_path, body, raw_text))

    def _submit(self, app_path: str, body: Any, raw_text: str | None) -> Response:
        self.check_auth(self.state.config)
        config = self.state.config
        self.inject_fault(body.get("prompt") if isinstance(body, dict) else None)
        spec = APPS.get(app_path.strip("/"))
        if spec is None:
            raise FalError(404, f"Application '{app_path}' not found")
        if raw_text is not None:
            raise FalError(422, [_item("json_invalid", [0], "JSON decode error", raw_text[:100])])
        if not isinstance(body, dict):
            raise FalError(
                422,
                [_item("model_attributes_type", [], "Input should be a valid dictionary", body)],
            )
        timeout = None
        header = request.headers.get("X-Fal-Request-Timeout")
        if header is not None:
            try:
                timeout = float(header)
            except ValueError:
                timeout = -1.0
            if not math.isfinite(timeout) or timeout <= 1:
                raise FalError(
                    400,
                    "X-Fal-Request-Timeout must be a number of seconds greater than 1",
                    error_type="bad_request",
                )
        task = Task(
            id=g.request_id,
            spec=spec,
            body=body,
            created=time.time(),
            latency=config.latency,
            poll_steps=config.poll_steps,
            drop_images=config.drop_images,
            timeout=timeout,
        )
        with self.lock:
            self.tasks[task.id] = task
            while len(self.tasks) > MAX_TASKS:
                self.tasks.popitem(last=False)
            position = sum(
                1
                for t in self.tasks.values()
                if not t.done and t.polls == 0 and t.spec.root == spec.root and t is not task
            )
        return jsonify(
            {
                "status": "IN_QUEUE",
                "request_id": task.id,
                **self._urls(task),
                "queue_position": position,
            }
        )

    @route("GET", "/<owner>/<name>/requests/<request_id>/status")
    def status(self, owner: str, name: str, request_id: str) -> Response:
        g.request_id = request_id
        entry = self.record(kind="status", json=None, raw_body=None)
        return self.answer(entry, lambda: self._status(f"{owner}/{name}", request_id))

    def _status(self, root: str, request_id: str) -> Response:
        self.check_auth(self.state.config)
        task = self._task(root, request_id)
        with_logs = request.args.get("logs") in ("1", "true")
        with self.lock:
            self._advance(task, poll=True)
            if task.done:
                payload: dict[str, Any] = {
                    "status": "COMPLETED",
                    "request_id": task.id,
                    **self._urls(task),
                    "logs": [] if with_logs else None,
                    "metrics": {"inference_time": round(max(task.latency, 0.05), 3)},
                }
                if task.error:
                    payload["error"] = task.error
                    payload["error_type"] = task.error_type
                return jsonify(payload)
            if task.polls == 1:
                position = sum(
                    1
                    for t in self.tasks.values()
                    if not t.done
                    and t.spec.root == task.spec.root
                    and t.created < task.created
                    and t.polls <= 1
                )
                payload = {
                    "status": "IN_QUEUE",
                    "request_id": task.id,
                    **self._urls(task),
                    "queue_position": position,
                }
            else:
                payload = {
                    "status": "IN_PROGRESS",
                    "request_id": task.id,
                    **self._urls(task),
                    "logs": [] if with_logs else None,
                }
        resp = jsonify(payload)
        resp.status_code = 202
        return resp

    @route("GET", "/<owner>/<name>/requests/<request_id>")
    def result(self, owner: str, name: str, request_id: str) -> Response:
        g.request_id = request_id
        entry = self.record(kind="result", json=None, raw_body=None)
        return self.answer(entry, lambda: self._result(f"{owner}/{name}", request_id))

    def _result(self, root: str, request_id: str) -> Response:
        self.check_auth(self.state.config)
        task = self._task(root, request_id)
        with self.lock:
            self._advance(task, poll=False)
            done = task.done
        if not done:
            raise FalError(400, "Request is still in progress")
        if task.result_text is not None:
            return Response(task.result_text, status=200, content_type="application/json")
        if task.result_status != 200:
            raise FalError(
                task.result_status,
                task.result_body["detail"],
                error_type=task.result_body.get("error_type"),
            )
        return jsonify(task.result_body)

    @route("PUT", "/<owner>/<name>/requests/<request_id>/cancel")
    def cancel(self, owner: str, name: str, request_id: str) -> Response:
        g.request_id = request_id
        entry = self.record(kind="cancel", json=None, raw_body=None)
        return self.answer(entry, lambda: self._cancel(f"{owner}/{name}", request_id))

    def _cancel(self, root: str, request_id: str) -> Response:
        self.check_auth(self.state.config)
        with self.lock:
            task = self.tasks.get(request_id)
            if task is None or task.spec.root != root:
                resp = jsonify({"status": "NOT_FOUND"})
                resp.status_code = 404
                return resp
            if task.done:
                resp = jsonify({"status": "ALREADY_COMPLETED"})
                resp.status_code = 400
                return resp
            task.cancelled = True
        resp = jsonify({"status": "CANCELLATION_REQUESTED"})
        resp.status_code = 202
        return resp

    @route("GET", "/files/<name>")
    def files(self, name: str) -> Response:
        stored = self.state.get_file(name)
        created = self.file_times.get(name)
        if (
            stored is None
            or created is None
            or time.time() - created > self.state.config.result_ttl
        ):
            raise FalError(404, "File not found")
        return Response(stored.data, status=200, content_type=stored.content_type)


def _mask(key: str) -> str:
    return key[:4] + "*" * max(0, len(key) - 4)


create_app = FalSimulator.create_app

__all__ = [
    "APPS",
    "PRESETS",
    "FalError",
    "FalSimulator",
    "SimConfig",
    "create_app",
    "validate_input",
]
