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

Errors are OpenAI's envelope ``{"error": {message, type, param, code}}``,
which :func:`workers.http.default_error_parser` reads; moderation refusals
(400 ``content_policy_violation`` / ``moderation_blocked``) reach the client
as 400 with that code.
"""

from __future__ import annotations

from typing import Any, Literal

from workers.adapters.base import AdapterOptions, CallContext, ImageRequest, ImageResult
from workers.adapters.common import image_of, malformed
from workers.http import request_id_of

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
        if fmt := OpenAIOptions.of(request.model).response_format:
            body["response_format"] = fmt
        response = ctx.http.request(
            "POST",
            f"{ctx.base_url}/images/generations",
            json_body=body,
            headers={"Authorization": f"Bearer {ctx.api_key}"},
        )
        payload = ctx.http.json(response)
        rid = request_id_of(response)
        items = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(items, list) or not items:
            raise malformed("The upstream answered without images.", rid)
        return ImageResult(
            images=[image_of(item, rid, "The upstream") for item in items],
            upstream_request_id=rid,
            reported=_reported(payload),
        )


# OpenAI's top-level response fields the gateway repeats: the values OpenAI's schema
# allows for each (None: any JSON object). Anything else an upstream sends is dropped.
_REPORTED: dict[str, frozenset[str] | None] = {
    "quality": frozenset({"low", "medium", "high"}),
    "background": frozenset({"transparent", "opaque"}),
    "usage": None,
}


def _reported(payload: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, allowed in _REPORTED.items():
        value = payload.get(name)
        if (allowed is None and isinstance(value, dict)) or (
            allowed is not None and isinstance(value, str) and value in allowed
        ):
            out[name] = value
    return out
