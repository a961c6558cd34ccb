"""Simulator of OpenAI's ``POST /v1/images/edits`` and ``POST /v1/images/variations``.

The routes of :class:`OpenAIEditsSimulator`, a :class:`simulators.openai_images.OpenAISimulator`
that serves the generation endpoint as well: the answer is a generation's
(same rendering, same ``url`` / ``b64_json`` items, same GPT top-level fields),
so this module only reads and checks the multipart request, as OpenAI's
published API reference says, and then generates. Like every simulator it
imports nothing from the gateway.

Edits (``multipart/form-data``, ``Authorization: Bearer <key>``):

* files ``image`` (one) or repeated ``image[]``; at least one (400
  ``Missing required parameter: 'image'.``, ``param: "image"``);
  ``dall-e-2``: exactly one, a square PNG under 4 MB; GPT image models: up
  to 16 PNG, JPEG or WebP files under 50 MB each. A file Pillow cannot read,
  or of another format, is a 400 ``invalid_image_format`` naming ``image``;
* ``mask``: a PNG with an alpha channel (mode RGBA or LA), the size of the
  first image, under 4 MB; else 400 naming ``mask``;
* ``prompt`` (required), ``model``, ``n``, ``size``, ``quality``,
  ``background``, ``output_format``, ``output_compression``,
  ``response_format``, ``user``: as for a generation of that model (the
  generation table of :mod:`simulators.openai_images`), read from text parts
  (integers in decimal); ``input_fidelity`` ``high`` | ``low`` for
  gpt-image-1, -1.5 and -2 (400 ``unknown_parameter`` for dall-e-2 and
  gpt-image-1-mini). A text part named twice is a 400.
* ``model`` defaults to ``dall-e-2``, or ``gpt-image-1`` when a GPT-only field
  is present, as for a generation.

Variations (``multipart/form-data``): ``image`` (one square PNG under 4 MB),
``model`` (``dall-e-2`` only, the default), ``n`` 1-10, ``size`` (dall-e-2's),
``response_format``, ``user``; any other field is a 400 ``unknown_parameter``.

Every request is logged (``GET /_sim/requests``) with its text fields and, for
each file, ``{"part", "filename", "content_type", "format", "width",
"height", "bytes"}`` under ``files``. Faults, latency and keys work as for
generations (``X-Sim-Fault``, ``/_sim/config``); a named fault may also be
given in the prompt.

Until :mod:`simulators.openai_images` registers these routes itself,
``python -m simulators openai`` serves generations only; :func:`create_app`
here (or :func:`register` on an existing simulator) serves all three.
"""

from __future__ import annotations

import io
from typing import Any

from flask import Response, request
from PIL import Image

from simulators.base import route
from simulators.openai_images import ApiError, OpenAISimulator
from simulators.state import SimConfig

DALLE2_MAX_BYTES = 4 * 1024 * 1024
GPT_MAX_BYTES = 50 * 1024 * 1024
GPT_MAX_IMAGES = 16
FIDELITY_MODELS = ("gpt-image-1", "gpt-image-1.5", "gpt-image-2", "gpt-image-2-2026-04-21")
_INTEGERS = ("n", "output_compression", "partial_images")
_VARIATION_FIELDS = ("model", "n", "size", "response_format", "user")
_FORMATS = ("PNG", "JPEG", "WEBP")


def _fields() -> dict[str, Any]:
    """The text parts, typed like the JSON body of a generation."""
    fields: dict[str, Any] = {}
    for name in request.form:
        values = request.form.getlist(name)
        if len(values) > 1:
            raise ApiError(400, f"Duplicate parameter: '{name}'.", param=name)
        value: Any = values[0]
        if name in _INTEGERS:
            try:
                value = int(value)
            except ValueError:
                raise ApiError(
                    400,
                    f"Invalid type for '{name}': expected an integer, but got a string instead.",
                    param=name,
                    code="invalid_type",
                ) from None
        if name == "stream" and value in ("true", "false"):
            value = value == "true"
        fields[name] = value
    return fields


def _read(part: Any, param: str) -> tuple[bytes, Image.Image | None]:
    data = part.read()
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception:  # noqa: BLE001 - any unreadable upload
        return data, None
    return data, image


def _describe(part: Any, name: str, data: bytes, image: Image.Image | None) -> dict[str, Any]:
    return {
        "part": name,
        "filename": part.filename,
        "content_type": part.mimetype,
        "format": image.format if image else None,
        "width": image.width if image else None,
        "height": image.height if image else None,
        "bytes": len(data),
    }


def _gpt_model(fields: dict[str, Any]) -> bool:
    model = fields.get("model")
    return isinstance(model, str) and model.startswith(("gpt-image", "chatgpt-image"))


class OpenAIEditsSimulator(OpenAISimulator):
    """OpenAI's Images API with its edits and variations endpoints."""

    @route("POST", "/v1/images/edits")
    def edits(self) -> Response:
        return edits_view(self)

    @route("POST", "/v1/images/variations")
    def variations(self) -> Response:
        return variations_view(self)


def edits_view(sim: OpenAISimulator) -> Response:
    fields = _fields() if request.mimetype == "multipart/form-data" else {}
    files = [(name, part) for name in ("image", "image[]") for part in request.files.getlist(name)]
    masks = request.files.getlist("mask")
    read = [(name, part, *_read(part, name)) for name, part in files]
    mask = [(name, part, *_read(part, "mask")) for name, part in [("mask", m) for m in masks]]
    entry = sim.record(
        json={**fields, "files": [_describe(p, n, d, i) for n, p, d, i in [*read, *mask]]}
    )

    def produce() -> Response:
        sim.check_auth(sim.state.config)
        if request.mimetype != "multipart/form-data":
            raise ApiError(400, "The edits endpoint expects multipart/form-data in this simulator.")
        gpt = _gpt_model(fields) or any(
            k in fields for k in ("background", "output_format", "output_compression")
        )
        if not read:
            raise ApiError(400, "Missing required parameter: 'image'.", param="image")
        _check_images(read, gpt)
        if mask:
            _check_mask(mask[0], read[0])
        body = dict(fields)
        fidelity = body.pop("input_fidelity", None)
        if fidelity is not None:
            model = body.get("model", "gpt-image-1")
            if model not in FIDELITY_MODELS:
                raise ApiError(
                    400,
                    "Unknown parameter: 'input_fidelity'.",
                    param="input_fidelity",
                    code="unknown_parameter",
                )
            if fidelity not in ("high", "low"):
                raise ApiError(
                    400,
                    f"Invalid value: '{fidelity}'. Supported values are: 'high' and 'low'.",
                    param="input_fidelity",
                    code="invalid_value",
                )
        if "prompt" not in body:
            raise ApiError(400, "Missing required parameter: 'prompt'.", param="prompt")
        return sim._generate(body, None)

    return sim.answer(entry, produce)


def _check_images(read: list[tuple[str, Any, bytes, Image.Image | None]], gpt: bool) -> None:
    if not gpt and len(read) > 1:
        raise ApiError(
            400, "dall-e-2 takes exactly one image to edit.", param="image", code="invalid_value"
        )
    if len(read) > GPT_MAX_IMAGES:
        raise ApiError(
            400,
            f"Too many images: at most {GPT_MAX_IMAGES}.",
            param="image",
            code="invalid_value",
        )
    for _, _, data, image in read:
        if image is None or image.format not in (_FORMATS if gpt else ("PNG",)):
            allowed = "'image/png', 'image/jpeg' and 'image/webp'" if gpt else "'image/png'"
            raise ApiError(
                400,
                f"Invalid file format. Supported formats are: {allowed}.",
                param="image",
                code="invalid_image_format",
            )
        if len(data) > (GPT_MAX_BYTES if gpt else DALLE2_MAX_BYTES):
            raise ApiError(400, "Image file is too large.", param="image", code="image_too_large")
        if not gpt and image.width != image.height:
            raise ApiError(
                400, "Uploaded image must be square.", param="image", code="invalid_value"
            )


def _check_mask(mask: tuple[Any, ...], first: tuple[Any, ...]) -> None:
    _, _, data, image = mask
    if image is None or image.format != "PNG":
        raise ApiError(
            400,
            "Invalid file format. Supported formats are: 'image/png'.",
            param="mask",
            code="invalid_image_format",
        )
    if image.mode not in ("RGBA", "LA") and "transparency" not in image.info:
        raise ApiError(
            400,
            f"Invalid input image - format must be in ['RGBA', 'LA'], got {image.mode}.",
            param="mask",
        )
    if len(data) > DALLE2_MAX_BYTES:
        raise ApiError(400, "Mask file is too large.", param="mask", code="image_too_large")
    reference = first[3]
    if reference is not None and image.size != reference.size:
        raise ApiError(
            400,
            "Invalid mask image - the mask must have the same dimensions as the image.",
            param="mask",
        )


def variations_view(sim: OpenAISimulator) -> Response:
    fields = _fields() if request.mimetype == "multipart/form-data" else {}
    parts = request.files.getlist("image")
    read = [("image", part, *_read(part, "image")) for part in parts]
    entry = sim.record(json={**fields, "files": [_describe(p, n, d, i) for n, p, d, i in read]})

    def produce() -> Response:
        sim.check_auth(sim.state.config)
        for name in [*fields, *request.files]:
            if name not in (*_VARIATION_FIELDS, "image"):
                raise ApiError(
                    400, f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter"
                )
        if len(read) != 1:
            raise ApiError(400, "Missing required parameter: 'image'.", param="image")
        _check_images(read, gpt=False)
        model = fields.get("model", "dall-e-2")
        if model != "dall-e-2":
            raise ApiError(
                400,
                f"Invalid value: '{model}'. Variations are supported for dall-e-2 only.",
                param="model",
                code="invalid_value",
            )
        body = {**fields, "model": "dall-e-2", "prompt": "a variation of the image"}
        return sim._generate(body, None)

    return sim.answer(entry, produce)


def register(sim: OpenAISimulator) -> None:
    """Serve the edits and variations routes on an existing simulator's app; what
    ``OpenAISimulator.__init__`` can call to serve all three endpoints."""
    sim.app.add_url_rule("/v1/images/edits", "edits", lambda: edits_view(sim), methods=["POST"])
    sim.app.add_url_rule(
        "/v1/images/variations", "variations", lambda: variations_view(sim), methods=["POST"]
    )


def create_app(config: SimConfig | None = None):
    return OpenAIEditsSimulator.create_app(config)
