"""Simulator of Zhipu BigModel / Z.AI image generation (GLM-Image, CogView-4).

Imitates ``https://open.bigmodel.cn/api/paas/v4``; it imports nothing from the
gateway. This docstring is its specification: what it imitates of Zhipu's
documentation, with what that documentation leaves open marked [unverified].

Endpoints (all under ``/api/paas/v4``, ``Authorization: Bearer <key>``):

* ``POST /images/generations`` -- synchronous, every model. Answers
  ``{"created", "data": [{"url"}], "content_filter": [{"role": "assistant", "level": 3}]}``.
* ``POST /async/images/generations`` -- ``glm-image`` only (other models: 400,
  code 1211). Same body; answers ``{"model", "id", "request_id",
  "task_status": "PROCESSING"}``.
* ``GET /async-result/<id>`` -- ``task_status`` ``PROCESSING`` for ``poll_steps``
  polls, then ``SUCCESS`` with ``image_result: [{"url"}]`` (and
  ``content_filter``), or ``FAIL`` with ``error: {"code", "message"}`` [field
  names of FAIL unverified]. Unknown id: 404, code 1214.
* ``GET /files/<name>`` (outside the API prefix) -- the result PNGs; 404 after
  ``result_ttl`` seconds.

Request body checks (unknown fields are rejected, which the real API may not
do: the strictness catches an adapter that sends fields Zhipu would ignore):

============== ============================= ====================================
field          glm-image                     cogview-4, cogview-4-250304,
                                             cogview-3-flash
============== ============================= ====================================
model          required; unknown -> 400 1211
prompt         required, 1..4000 chars (longer -> 400 1261) [limit unverified]
size           ``WxH``, sides 1024-2048,     ``WxH``, sides 512-2048, multiples
               multiples of 32, <= 2^22 px;  of 16, <= 2^21 px; default 1024x1024
               default 1280x1280
quality        ``hd`` only (default hd)      ``hd`` | ``standard`` (default standard)
user_id        string of 6-128 chars
watermark_     boolean
enabled
============== ============================= ====================================

Bad types, values and unknown fields answer 400 ``{"error": {"code": "1214" |
"1210", "message"}}`` (the message names the field); a body that is not JSON
answers 400 code 1210. Images are PNGs of exactly the requested size.

Errors are ``{"error": {"code": "<business code>", "message"}}``:
401 1001 (no bearer key) / 1000 (wrong key); injected failures (on submissions
only, never on polls: a fault the request names in its ``X-Sim-Fault`` header
or prompt, see :mod:`simulators.base`, then ``fail_next``, then
``failure_rate``): 429 code 1302
(concurrency), 5xx code 500, 401/403 code 1000, 400 code 1210, other statuses
code 1234, each with ``Retry-After`` when ``retry_after`` is set.

Test hooks in the prompt (whole words):

* ``forbidden`` -- the input check refuses it at submission: 400 code 1301.
* ``nsfw`` -- the output check refuses it: the sync call answers 400 code 1301;
  an async task ends ``FAIL`` with error code 1301 at poll time.
* ``doomed`` -- an async task ends ``FAIL`` with error code 500 (sync: HTTP 500).
* ``garbled`` -- the submission answers 200 with a truncated JSON body.

Knobs (``SimConfig``): ``latency`` (before answering a submission),
``failure_rate``/``fail_status``/``retry_after``/``fail_next``, ``api_key``,
``drop_images`` (Zhipu makes one image per call: 1 or more answers an empty
``data``/``image_result``), ``result_ttl``, ``poll_steps``.

Every response carries ``x-request-id`` [the header is not documented for
Zhipu; the simulator sends one so request ids can be followed]; async bodies
carry the task's ``request_id``.

Test/control endpoints: ``GET|POST /_sim/config`` (POST merges JSON),
``GET|DELETE /_sim/requests``, ``POST /_sim/reset`` (also forgets tasks),
``GET /_sim/health``.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from flask import Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from simulators.base import (
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
from simulators.state import SimConfig

PROVIDER = "zhipu"
API_PREFIX = "/api/paas/v4"

MAX_PROMPT = 4000
MAX_TASKS = 2000
USER_ID_LENGTH = (6, 128)

KNOWN_FIELDS = frozenset({"model", "prompt", "size", "quality", "user_id", "watermark_enabled"})

SIZE_RE = re.compile(r"([1-9][0-9]{0,4})x([1-9][0-9]{0,4})")
UNSAFE_OUTPUT_WORD = word("nsfw")
DOOMED_WORD = word("doomed")
GARBLED_WORD = word("garbled")

MESSAGES = {
    "1000": "身份验证失败。",
    "1001": "Header中未收到Authentication参数，无法进行身份验证。",
    "1210": "API 调用参数有误，请检查文档。",
    "1211": "模型不存在，请检查模型代码。",
    "1234": "网络错误，请联系客服。",
    "1261": "Prompt 超长。",
    "1301": (
        "系统检测到输入或生成内容可能包含不安全或敏感内容，"
        "请您避免输入易产生敏感内容的提示语，感谢您的配合。"
    ),
    "1302": "您当前使用该API的并发数过高，请降低并发，或联系客服增加限额。",
    "500": "服务内部错误，请稍后重试。",
}

PALETTE: tuple[tuple[int, int, int], ...] = (
    (220, 60, 60),
    (60, 160, 90),
    (60, 90, 200),
    (230, 180, 40),
    (150, 70, 180),
    (40, 170, 190),
    (240, 120, 40),
    (120, 120, 120),
)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    min_side: int
    max_side: int
    multiple: int
    max_pixels: int
    default_size: tuple[int, int]
    qualities: tuple[str, ...]
    default_quality: str
    async_ok: bool


_COGVIEW = {
    "min_side": 512,
    "max_side": 2048,
    "multiple": 16,
    "max_pixels": 2**21,
    "default_size": (1024, 1024),
    "qualities": ("hd", "standard"),
    "default_quality": "standard",
    "async_ok": False,
}

MODELS: dict[str, ModelSpec] = {
    "glm-image": ModelSpec("glm-image", 1024, 2048, 32, 2**22, (1280, 1280), ("hd",), "hd", True),
    **{
        name: ModelSpec(name, **_COGVIEW)
        for name in ("cogview-4-250304", "cogview-4", "cogview-3-flash")
    },
}


class ZhipuError(SimError):
    """An error answer in Zhipu's shape: ``{"error": {"code", "message"}}``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message or MESSAGES.get(code, "error"))
        self.status = status
        self.code = code
        self.message = message or MESSAGES.get(code, "error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


def _bad(field_name: str, detail: str) -> ZhipuError:
    return ZhipuError(400, "1214", f"{field_name} 参数非法：{detail}")


@dataclass(frozen=True)
class Generation:
    spec: ModelSpec
    prompt: str
    width: int
    height: int
    quality: str


def parse_generation(body: Any) -> Generation:
    """Validate a generations body like the simulated upstream; raises :class:`ZhipuError`."""
    if not isinstance(body, dict):
        raise ZhipuError(400, "1210", MESSAGES["1210"] + " 请求体须为 JSON 对象。")
    unknown = sorted(set(body) - KNOWN_FIELDS)
    if unknown:
        raise ZhipuError(400, "1210", MESSAGES["1210"] + f" 未知参数：{unknown[0]}")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", "必填，须为字符串")
    spec = MODELS.get(model)
    if spec is None:
        raise ZhipuError(400, "1211")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _bad("prompt", "必填，须为非空字符串")
    if len(prompt) > MAX_PROMPT:
        raise ZhipuError(400, "1261", f"Prompt 超长：最多 {MAX_PROMPT} 个字符。")

    width, height = spec.default_size
    size = body.get("size")
    if size is not None:
        if not isinstance(size, str):
            raise _bad("size", "须为 'WxH' 字符串")
        match = SIZE_RE.fullmatch(size)
        if match is None:
            raise _bad("size", f"'{size}' 须为 'WxH'")
        width, height = int(match[1]), int(match[2])
        for side in (width, height):
            if not spec.min_side <= side <= spec.max_side or side % spec.multiple:
                raise _bad(
                    "size",
                    f"'{size}': 边长须在 {spec.min_side}-{spec.max_side} 之间且为 "
                    f"{spec.multiple} 的整数倍",
                )
        if width * height > spec.max_pixels:
            raise _bad("size", f"'{size}': 像素总数不得超过 {spec.max_pixels}")

    quality = body.get("quality", spec.default_quality)
    if not isinstance(quality, str) or quality not in spec.qualities:
        raise _bad("quality", f"{model} 仅支持 {', '.join(spec.qualities)}")

    user_id = body.get("user_id")
    if user_id is not None:
        low, high = USER_ID_LENGTH
        if not isinstance(user_id, str) or not low <= len(user_id) <= high:
            raise _bad("user_id", f"须为 {low}-{high} 个字符的字符串")
    watermark = body.get("watermark_enabled")
    if watermark is not None and not isinstance(watermark, bool):
        raise _bad("watermark_enabled", "须为布尔值")
    return Generation(spec, prompt, width, height, quality)


def render_png(width: int, height: int, colour: int) -> bytes:
    return solid_image(width, height, "png", PALETTE[colour % len(PALETTE)])


@dataclass
class Task:
    id: str
    request_id: str
    gen: Generation
    polls_left: int
    status: str = "PROCESSING"
    urls: list[str] = field(default_factory=list)
    error: dict[str, str] | None = None


class ZhipuSimulator(Simulator):
    """Zhipu's synchronous and asynchronous image endpoints, the task store and the files."""

    provider = PROVIDER

    def __init__(self, config: SimConfig | None = None) -> None:
        self.tasks: OrderedDict[str, Task] = OrderedDict()
        self.expiry: dict[str, float] = {}
        super().__init__(config)
        self.app.json.ensure_ascii = False  # type: ignore[attr-defined]

    def new_request_id(self) -> str:
        return f"{time.strftime('%Y%m%d%H%M%S')}{uuid.uuid4().hex[:16]}"

    def reset(self) -> None:
        with self.lock:
            self.tasks.clear()

    def http_error(self, err: HTTPException) -> Response:
        status = err.code or 500
        return ZhipuError(
            status, str(status), f"{err.name}: {request.method} {request.path}"
        ).response()

    def failure(self, config: SimConfig) -> ZhipuError:
        status = config.fail_status
        if status == 429:
            code = "1302"
        elif status >= 500:
            code = "500"
        elif status in (401, 403):
            code = "1000"
        elif status == 400:
            code = "1210"
        else:
            code = "1234"
        return ZhipuError(status, code, headers=retry_after_headers(config))

    def check_auth(self, config: SimConfig) -> None:
        token = credential()
        if token is None:
            raise ZhipuError(401, "1001")
        if config.api_key is not None and token != config.api_key:
            raise ZhipuError(401, "1000")

    def _record(self) -> tuple[dict[str, Any], Any, str | None]:
        body, raw_text = parse_json_body()
        return self.record(json=body, raw_body=raw_text), body, raw_text

    def _submission(self, body: Any, raw_text: str | None) -> Generation:
        """What every submission goes through before its mode-specific part."""
        self.admit(body.get("prompt") if isinstance(body, dict) else None)
        if raw_text is not None:
            raise ZhipuError(400, "1210", MESSAGES["1210"] + " 请求体不是合法的 JSON。")
        gen = parse_generation(body)
        if FORBIDDEN_WORD.search(gen.prompt):
            raise ZhipuError(400, "1301")
        return gen

    def _store_images(self, gen: Generation) -> list[str]:
        count = max(0, 1 - self.state.config.drop_images)
        urls = []
        colour = uuid.uuid4().int % len(PALETTE)
        for _ in range(count):
            name = f"{uuid.uuid4().hex}.png"
            self.state.put_file(name, render_png(gen.width, gen.height, colour), "image/png")
            with self.lock:
                self.expiry[name] = time.time() + self.state.config.result_ttl
            urls.append(f"{request.host_url}files/{name}")
        return urls

    @staticmethod
    def _garbled() -> Response:
        return Response('{"created": 17, "data": [{"url": "ht', 200, mimetype="application/json")

    @route("POST", f"{API_PREFIX}/images/generations")
    def generations(self) -> Response:
        entry, body, raw_text = self._record()

        def produce() -> Response:
            gen = self._submission(body, raw_text)
            if GARBLED_WORD.search(gen.prompt):
                return self._garbled()
            if UNSAFE_OUTPUT_WORD.search(gen.prompt):
                raise ZhipuError(400, "1301")
            if DOOMED_WORD.search(gen.prompt):
                raise ZhipuError(500, "500")
            return jsonify(
                {
                    "created": int(time.time()),
                    "data": [{"url": url} for url in self._store_images(gen)],
                    "content_filter": [{"role": "assistant", "level": 3}],
                }
            )

        return self.answer(entry, produce)

    @route("POST", f"{API_PREFIX}/async/images/generations")
    def async_generations(self) -> Response:
        entry, body, raw_text = self._record()

        def produce() -> Response:
            gen = self._submission(body, raw_text)
            if not gen.spec.async_ok:
                raise ZhipuError(400, "1211")
            if GARBLED_WORD.search(gen.prompt):
                return self._garbled()
            task = Task(
                id=f"{uuid.uuid4().int % 10**19}-{uuid.uuid4().hex[:8]}",
                request_id=g.request_id,
                gen=gen,
                polls_left=self.state.config.poll_steps,
            )
            with self.lock:
                self.tasks[task.id] = task
                while len(self.tasks) > MAX_TASKS:
                    self.tasks.popitem(last=False)
            return jsonify(
                {
                    "model": gen.spec.name,
                    "id": task.id,
                    "request_id": task.request_id,
                    "task_status": "PROCESSING",
                }
            )

        return self.answer(entry, produce)

    @route("GET", f"{API_PREFIX}/async-result/<task_id>")
    def async_result(self, task_id: str) -> Response:
        entry, _, _ = self._record()
        return self.answer(entry, lambda: self._poll(task_id))

    def _poll(self, task_id: str) -> Response:
        self.check_auth(self.state.config)
        with self.lock:
            task = self.tasks.get(task_id)
            if task is None:
                raise ZhipuError(404, "1214", f"id 参数非法：任务 {task_id} 不存在")
            finish = task.status == "PROCESSING" and task.polls_left <= 0
            if task.status == "PROCESSING" and not finish:
                task.polls_left -= 1
        if finish:
            self._finish_task(task)
        payload: dict[str, Any] = {
            "model": task.gen.spec.name,
            "id": task.id,
            "request_id": task.request_id,
            "task_status": task.status,
        }
        if task.status == "SUCCESS":
            payload["image_result"] = [{"url": url} for url in task.urls]
            payload["content_filter"] = [{"role": "assistant", "level": 3}]
        elif task.status == "FAIL":
            payload["error"] = task.error
        return jsonify(payload)

    def _finish_task(self, task: Task) -> None:
        if UNSAFE_OUTPUT_WORD.search(task.gen.prompt):
            status, error, urls = "FAIL", {"code": "1301", "message": MESSAGES["1301"]}, []
        elif DOOMED_WORD.search(task.gen.prompt):
            status, error, urls = "FAIL", {"code": "500", "message": MESSAGES["500"]}, []
        else:
            status, error, urls = "SUCCESS", None, self._store_images(task.gen)
        with self.lock:
            if task.status == "PROCESSING":
                task.status, task.error, task.urls = status, error, urls

    @route("GET", "/files/<name>")
    def files(self, name: str) -> Response:
        stored = self.state.get_file(name)
        with self.lock:
            expires = self.expiry.get(name, 0.0)
        if stored is None or time.time() > expires:
            raise ZhipuError(404, "404", f"文件 {name} 不存在或已过期。")
        return Response(stored.data, status=200, content_type=stored.content_type)


create_app = ZhipuSimulator.create_app

__all__ = ["MODELS", "SimConfig", "ZhipuError", "ZhipuSimulator", "create_app", "parse_generation"]
