"""``openai`` family, edits and variations: OpenAI's ``/images/edits`` and ``/images/variations``.

Both are ``multipart/form-data`` POSTs with ``Authorization: Bearer <key>``,
synchronous, answering the same JSON as a generation (read as in
:mod:`workers.adapters.openai`). Field mapping (gateway request -> upstream parts):

* edit (``POST {base_url}/images/edits``): each input image as a file part,
  ``image`` when there is one, repeated ``image[]`` when there are several
  (OpenAI's two spellings; dall-e-2 takes one); ``mask`` as a file part;
  ``model.upstream`` -> ``model``; ``prompt``, ``n``; clamped size -> ``size``;
  ``quality``, ``background``, ``input_fidelity``, ``output_format``,
  ``output_compression``, ``user`` as is, only when the client sent them (the
  catalog decides which a model accepts);
* variation (``POST {base_url}/images/variations``): the image as ``image``;
  ``model``, ``n``, ``size``, ``user``;
* ``response_format``: sent only when the catalog entry sets
  ``options.response_format`` (dall-e-2: ``b64_json``, no second download);
* a streaming client's edit (``CallContext.progress``) on a model that streams
  partial images adds ``stream`` and ``partial_images``, and the upstream's
  ``image_edit.*`` events are read as they come
  (:func:`workers.adapters.openai.post`).

Input images reach the adapter as ``data:`` URLs of the client's uploads (read
back from storage by the task) or as the client's https URLs, which are
fetched through the SSRF-guarded client session (``CallContext.client_http``);
a URL that cannot be fetched is the client's 400 ``invalid_image_url`` naming
``image``. Errors are OpenAI's envelope, read by
:func:`workers.http.default_error_parser`.
"""

from __future__ import annotations

import binascii
import urllib.parse
from typing import Any

import pybase64 as base64

from shared.errors import InvalidRequest, UpstreamError
from workers.adapters.base import CallContext, ImageRequest, ImageResult
from workers.adapters.common import image_of, malformed
from workers.adapters.openai import OpenAIOptions, post, reported, streams

# Largest input image fetched from a client's URL (OpenAI's own limit for GPT image models).
MAX_INPUT_BYTES = 50 * 1024 * 1024
_EDIT_FIELDS = (
    "quality",
    "background",
    "output_format",
    "user",
)
_EDIT_EXTRA = ("input_fidelity", "output_compression")
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


class OpenAIEditsAdapter:
    """Serves ``ImageRequest.operation`` "edit" and "variation" of the openai family."""

    options_model = OpenAIOptions

    def generate(self, request: ImageRequest, ctx: CallContext) -> ImageResult:
        if request.operation == "variation":
            path, data = "variations", self._variation_fields(request)
            files = [("image", _file("image", request.images[0], ctx))]
        elif request.operation == "edit":
            path, data = "edits", self._edit_fields(request)
            name = "image" if len(request.images) == 1 else "image[]"
            files = [
                (name, _file(f"image{i}", image, ctx)) for i, image in enumerate(request.images)
            ]
            if request.mask is not None:
                files.append(("mask", _file("mask", request.mask, ctx)))
        else:
            raise ValueError(f"not an edit nor a variation: {request.operation!r}")
        if fmt := OpenAIOptions.of(request.model).response_format:
            data["response_format"] = fmt
        payload, rid = post(
            ctx,
            f"{ctx.base_url}/images/{path}",
            stream=request.operation == "edit" and streams(request.model, ctx),
            data=data,
            files=files,
        )
        items = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(items, list) or not items:
            raise malformed("The upstream answered without images.", rid)
        return ImageResult(
            images=[image_of(item, rid, "The upstream") for item in items],
            upstream_request_id=rid,
            reported=reported(payload),
        )

    @staticmethod
    def _edit_fields(request: ImageRequest) -> dict[str, Any]:
        data: dict[str, Any] = {
            "model": request.model.upstream,
            "prompt": request.prompt,
            "n": str(request.n),
        }
        if request.size:
            data["size"] = request.size
        for name in _EDIT_FIELDS:
            value = getattr(request, name)
            if value is not None:
                data[name] = str(value)
        for name in _EDIT_EXTRA:
            if request.extra.get(name) is not None:
                data[name] = str(request.extra[name])
        return data

    @staticmethod
    def _variation_fields(request: ImageRequest) -> dict[str, Any]:
        data: dict[str, Any] = {"model": request.model.upstream, "n": str(request.n)}
        if request.size:
            data["size"] = request.size
        if request.user is not None:
            data["user"] = request.user
        return data


def _file(stem: str, image: str, ctx: CallContext) -> tuple[str, bytes, str]:
    """A multipart file part ``(filename, bytes, content type)`` of an input image."""
    data, content_type = input_image(image, ctx)
    return f"{stem}.{_EXTENSIONS.get(content_type, 'png')}", data, content_type


def input_image(image: str, ctx: CallContext, param: str = "image") -> tuple[bytes, str]:
    """An input image's bytes and content type: a ``data:`` URL decoded, an https URL of
    the client's fetched behind the SSRF guard (400 ``invalid_image_url`` if it fails)."""
    if image.startswith("data:"):
        header, _, payload = image[5:].partition(",")
        content_type = header.split(";", 1)[0].strip().lower() or "image/png"
        try:
            if header.lower().endswith(";base64"):
                return base64.b64decode(payload, validate=True), content_type
            return urllib.parse.unquote_to_bytes(payload), content_type
        except (binascii.Error, ValueError):
            raise InvalidRequest(
                "The image data URL is not valid base64.", param=param, code="invalid_image"
            ) from None
    try:
        data, content_type = (ctx.client_http or ctx.http).download(
            image, max_bytes=MAX_INPUT_BYTES
        )
    except UpstreamError as exc:
        # The URL is the client's, not the upstream's: its failure is a bad request.
        raise InvalidRequest(
            f"Could not fetch the input image: {exc.message}",
            param=param,
            code="invalid_image_url",
        ) from exc
    return data, (content_type or "image/png").split(";", 1)[0].strip().lower()
