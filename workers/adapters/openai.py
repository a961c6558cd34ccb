"""``openai`` family: the OpenAI Images API, or any upstream that speaks it.

``POST {base_url}/images/generations`` with ``Authorization: Bearer <key>``,
synchronous, JSON in and out. Field mapping (gateway request -> upstream body):

* ``model.upstream`` -> ``model``; ``prompt``, ``n`` as is;
* clamped size -> ``size`` (``WxH``), or ``aspect_ratio`` for models whose size
  rule is an aspect-ratio enum (OpenAI-compatible upstreams that take it);
  ``seed`` where the catalog lets the model take it; ``quality``, ``style``, ``background``,
  ``output_format``, ``output_compression``, ``moderation``, ``user`` as is,
  only when the client sent them (the catalog decides which a model accepts);
* ``response_format``: sent only when the catalog entry sets
  ``options.response_format`` (dall-e models: ``b64_json``, so no second
  download is needed); GPT image models always answer base64 and reject it;
* response ``data[].b64_json`` -> image bytes, ``data[].url`` -> fetched by the
  task at once (OpenAI's URLs live 60 minutes), ``revised_prompt`` kept;
  top-level ``quality``, ``background`` (strings) and ``usage`` (an object),
  which GPT image models report, -> ``ImageResult.reported`` (the client's
  response repeats them; ``size`` and ``output_format`` are read from the image).

Streaming: when the client streams (``CallContext.progress``) with
``partial_images`` >= 1 and the model streams partial images (GPT image models:
``options.stream_partials``, by default an upstream name starting ``gpt-image``),
the body adds ``stream: true`` and ``partial_images``, and the upstream's SSE
answer is read event by event as it arrives, under the same byte bound, wall
clock, retries and error translation as any exchange (:class:`_StreamingHTTP`):
each ``image_generation.partial_image`` (or ``image_edit.partial_image``) is
published at once (:mod:`shared.progress`; it previews the image of the
completed events seen so far), each ``*.completed`` is one image (``b64_json``; its
``quality``, ``background`` and ``usage`` are reported as above), and an
``error`` event (or a data object with an ``error`` key) fails the call like an
error answer (moderation codes: 400 ``content_policy_violation``; others: 502).
An upstream that answers a streamed request with plain JSON is read as usual.
:func:`post` does all this for any OpenAI Images endpoint, JSON or multipart
(the edits adapter calls it too), and :func:`streams` says when to ask.

Errors are OpenAI's envelope ``{"error": {message, type, param, code}}``,
which :func:`workers.http.default_error_parser` reads; moderation refusals
(400 ``content_policy_violation`` / ``moderation_blocked``) reach the client
as 400 with that code.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any, Literal

import requests

from shared.catalog import Model
from shared.errors import UpstreamError, content_policy_violation
from shared.progress import PartialImage, PartialSink
from workers.adapters.base import AdapterOptions, CallContext, ImageRequest, ImageResult
from workers.adapters.common import image_of, malformed
from workers.http import MAX_RESPONSE_BYTES, MODERATION_CODES, UpstreamHTTP, request_id_of

_PASS_THROUGH = (
    "quality",
    "style",
    "background",
    "output_format",
    "output_compression",
    "moderation",
    "user",
    "seed",
)


class OpenAIOptions(AdapterOptions):
    """``options`` of an OpenAI-compatible model."""

    response_format: Literal["url", "b64_json"] | None = None
    """Sent as is: ``b64_json`` spares the worker a second download."""
    stream_partials: bool | None = None
    """Whether the upstream streams partial images (``stream``, ``partial_images``);
    unset: only for upstream model names starting ``gpt-image``."""


class OpenAIImagesAdapter:
    options_model = OpenAIOptions

    def generate(self, request: ImageRequest, ctx: CallContext) -> ImageResult:
        body: dict[str, Any] = {
            "model": request.model.upstream,
            "prompt": request.prompt,
            "n": request.n,
        }
        if request.size:
            body["size"] = request.size
        elif request.aspect_ratio:
            # Models whose rule is an aspect-ratio enum: OpenAI-compatible upstreams
            # that take the `aspect_ratio` extension (OpenAI itself has no such model).
            body["aspect_ratio"] = request.aspect_ratio
        for name in _PASS_THROUGH:
            value = getattr(request, name, None)
            if value is None:
                value = request.extra.get(name)
            if value is not None:
                body[name] = value
        options = OpenAIOptions.of(request.model)
        if fmt := options.response_format:
            body["response_format"] = fmt
        payload, rid = post(
            ctx,
            f"{ctx.base_url}/images/generations",
            stream=streams(request.model, ctx),
            json_body=body,
        )
        items = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(items, list) or not items:
            raise malformed("The upstream answered without images.", rid)
        return ImageResult(
            images=[image_of(item, rid, "The upstream") for item in items],
            upstream_request_id=rid,
            reported=reported(payload),
        )


def streams(model: Model, ctx: CallContext) -> bool:
    """Whether to ask the upstream for a stream of partial images: the client streams,
    wants some, and the model streams them (``options.stream_partials``)."""
    if ctx.progress is None or ctx.progress.partial_images < 1:
        return False
    wanted = OpenAIOptions.of(model).stream_partials
    return wanted if wanted is not None else model.upstream.startswith("gpt-image")


def post(
    ctx: CallContext,
    url: str,
    *,
    stream: bool = False,
    json_body: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    files: Any = None,
) -> tuple[Any, str | None]:
    """POST to an OpenAI Images endpoint (generations, edits: JSON or multipart);
    the answer's JSON payload and the upstream's request id.

    With ``stream`` (see :func:`streams`), the body also asks for ``stream`` and
    ``partial_images``; partial images are published as they arrive, and the
    payload returned is what the completed events stand for (``data`` with
    ``b64_json`` items, ``quality``, ``background``, ``usage``), so the caller
    reads it like a JSON answer.
    """
    http, reader = ctx.http, None
    if stream and ctx.progress is not None:
        reader = _StreamReader(ctx.progress)
        http = _StreamingHTTP.of(ctx.http, reader)
        if json_body is not None:
            json_body = {**json_body, "stream": True, "partial_images": ctx.progress.partial_images}
        else:  # multipart: the fields as text
            data = {
                **(data or {}),
                "stream": "true",
                "partial_images": str(ctx.progress.partial_images),
            }
    response = http.request(
        "POST",
        url,
        json_body=json_body,
        data=data,
        files=files,
        headers={"Authorization": f"Bearer {ctx.api_key}"},
    )
    rid = request_id_of(response)
    if reader is not None and reader.used:
        return reader.payload(rid), rid
    return ctx.http.json(response), rid


class _StreamReader:
    """Reads one upstream SSE answer: publishes partial images, collects the completed
    ones (reset at each attempt: a retried call starts over)."""

    def __init__(self, sink: PartialSink | None) -> None:
        self._sink = sink
        self.used = False
        self.completed: list[dict[str, Any]] = []

    def start(self) -> None:
        self.used = True
        self.completed = []

    def event(self, name: str, data: bytes, rid: str | None) -> None:
        try:
            body = json.loads(data)
        except ValueError:
            raise malformed("The upstream sent a malformed stream event.", rid) from None
        if not isinstance(body, dict):
            raise malformed("The upstream sent a malformed stream event.", rid)
        kind = body.get("type")
        kind = kind if isinstance(kind, str) else name
        if name == "error" or kind == "error" or "error" in body:
            raise _stream_error(body, rid)
        if kind.endswith(".partial_image"):
            self._partial(body)
        elif kind.endswith(".completed"):
            self.completed.append(body)

    def _partial(self, body: dict[str, Any]) -> None:
        b64, index = body.get("b64_json"), body.get("partial_image_index")
        if self._sink is None or not isinstance(b64, str) or type(index) is not int:
            return  # a preview the client can do without

        def text(name: str) -> str | None:
            value = body.get(name)
            return value if isinstance(value, str) else None

        created = body.get("created_at")
        self._sink.publish(
            PartialImage(
                b64_json=b64,
                partial_image_index=index,
                image_index=len(self.completed),
                size=text("size"),
                quality=text("quality"),
                background=text("background"),
                output_format=text("output_format"),
                created_at=created if type(created) is int else None,
            )
        )

    def payload(self, rid: str | None) -> dict[str, Any]:
        """The completed events as the JSON answer they stand for."""
        if not self.completed:
            raise malformed("The upstream's stream ended without an image.", rid)
        payload: dict[str, Any] = {
            "data": [{"b64_json": e.get("b64_json")} for e in self.completed]
        }
        for name in _REPORTED:
            if name in self.completed[0]:
                payload[name] = self.completed[0][name]
        return payload


def _stream_error(body: dict[str, Any], rid: str | None) -> Exception:
    error = body.get("error") if isinstance(body.get("error"), dict) else body
    message = error.get("message")
    message = message if isinstance(message, str) and message else "The upstream's stream failed."
    code = error.get("code")
    if code in MODERATION_CODES:
        return content_policy_violation(message, upstream_request_id=rid)
    return UpstreamError(f"The upstream failed while streaming: {message}", upstream_request_id=rid)


@dataclasses.dataclass
class _StreamingHTTP(UpstreamHTTP):
    """The job's :class:`UpstreamHTTP` (same sessions, deadline, retries, error
    translation and wall clock) whose 2xx ``text/event-stream`` answers are read
    event by event as they arrive, under the same byte bound, instead of whole."""

    reader: _StreamReader | None = None

    @classmethod
    def of(cls, http: UpstreamHTTP, reader: _StreamReader) -> _StreamingHTTP:
        fields = {f.name: getattr(http, f.name) for f in dataclasses.fields(http)}
        return cls(**fields, reader=reader)

    def _read_body(self, response: requests.Response) -> None:
        content_type = response.headers.get("Content-Type", "")
        ok = 200 <= response.status_code < 300
        if self.reader is None or not ok or not content_type.startswith("text/event-stream"):
            super()._read_body(response)
            return
        self.reader.start()
        rid = request_id_of(response)
        try:
            _read_events(response, self.reader, rid, self.check_deadline, self.provider)
        finally:
            response.close()
        response._content = b""
        response._content_consumed = True


def _read_events(
    response: requests.Response,
    reader: _StreamReader,
    rid: str | None,
    check_deadline: Callable[[], None],
    provider: str,
) -> None:
    """Split an SSE body into events (``event:``/``data:`` lines, a blank line ends
    one; ``:`` comments skipped) and hand each to ``reader``."""
    buffer = b""
    total = 0
    for chunk in response.iter_content(chunk_size=64 * 1024):
        total += len(chunk)
        if total > MAX_RESPONSE_BYTES:
            raise UpstreamError(
                f"The response from {provider} is larger than {MAX_RESPONSE_BYTES} bytes.",
                code="upstream_response_too_large",
            )
        buffer = (buffer + chunk).replace(b"\r\n", b"\n")
        while (end := buffer.find(b"\n\n")) >= 0:
            block, buffer = buffer[:end], buffer[end + 2 :]
            _dispatch(block, reader, rid)
        check_deadline()
    if buffer.strip():
        _dispatch(buffer, reader, rid)


def _dispatch(block: bytes, reader: _StreamReader, rid: str | None) -> None:
    name, data = "message", []
    for line in block.split(b"\n"):
        field, _, value = line.partition(b":")
        value = value[1:] if value.startswith(b" ") else value
        if field == b"event":
            name = value.decode("utf-8", "replace")
        elif field == b"data":
            data.append(value)
    if data and data != [b"[DONE]"]:
        reader.event(name, b"\n".join(data), rid)


# OpenAI's top-level response fields the gateway repeats: the values OpenAI's schema
# allows for each (None: any JSON object). Anything else an upstream sends is dropped.
_REPORTED: dict[str, frozenset[str] | None] = {
    "quality": frozenset({"low", "medium", "high"}),
    "background": frozenset({"transparent", "opaque"}),
    "usage": None,
}


def reported(payload: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, allowed in _REPORTED.items():
        value = payload.get(name)
        if (allowed is None and isinstance(value, dict)) or (
            allowed is not None and isinstance(value, str) and value in allowed
        ):
            out[name] = value
    return out
