"""Reading the multipart bodies of ``POST /v1/images/edits`` and ``/variations``.

OpenAI's multipart form: files ``image`` (or repeated ``image[]``) and
``mask``, the other fields as text. Werkzeug parses the body
(:attr:`flask.Request.files`, spooled to a temporary file above 500 KB, so a
large upload does not sit in the web process' memory while it is read);
this module bounds what it may cost and checks what it got:

* the body is at most ``max_upload_bytes`` (413 before it is read when its
  Content-Length says so; a chunked body is cut there, also 413), and its
  length is charged to the key's parse budget before parsing
  (:mod:`api.parse_limit`);
* at most ``max_upload_files`` files (400 ``too_many_images`` naming the
  part) and a bounded number of parts overall (werkzeug's ``max_form_parts``);
* each file at most ``max_upload_file_bytes`` (413 ``image_too_large`` naming
  the part: ``image``, ``image[2]``, ``mask``) and a real PNG, JPEG or WebP
  image within the pixel limit (:func:`shared.uploads.inspect_image`: 400
  ``invalid_image`` / ``image_dimensions_too_large`` naming the part);
* the mask a PNG of the first image's size (400 ``invalid_mask``);
* every text field once (400 ``duplicate_parameter``), no file where a text
  field belongs and no text where a file belongs, no unknown file part
  (400 ``unknown_parameter``). Integer and boolean fields are typed here
  (400 ``invalid_value`` naming them) so the request models
  (:mod:`api.schemas`) validate them as they validate JSON.

Nothing is stored nor charged here: :mod:`api.edits` does that once every
check passed, so a refused upload costs the client nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import request
from werkzeug.datastructures import FileStorage

from shared.errors import (
    INVALID_VALUE,
    MISSING_REQUIRED_PARAMETER,
    UNKNOWN_PARAMETER,
    InvalidRequest,
)
from shared.settings import Settings
from shared.uploads import InspectedImage, inspect_image, too_large

MULTIPART = "multipart/form-data"
IMAGE_PARTS = ("image", "image[]")
MASK_PART = "mask"
# Text parts besides the files: OpenAI's edit request has fifteen fields.
_TEXT_PARTS = 64
_INTEGER_FIELDS = frozenset({"n", "output_compression", "seed", "partial_images"})
_BOOLEAN_FIELDS = frozenset({"stream"})


@dataclass(frozen=True)
class Upload:
    """One checked file: the part it came in (as errors name it), its bytes, its header."""

    part: str
    data: bytes
    image: InspectedImage


@dataclass(frozen=True)
class UploadForm:
    """A checked multipart body: its typed text fields, its images (in order) and mask."""

    fields: dict[str, Any]
    images: list[Upload]
    mask: Upload | None


def read_form(
    settings: Settings,
    *,
    charge: Callable[[int], None],
    mask_allowed: bool = True,
) -> UploadForm:
    """The current request's multipart body, bounded and checked (see the module docstring).

    ``charge`` is called with the body's length (or the limit, for a chunked body)
    before anything is parsed; it may refuse (429).
    """
    request.max_content_length = settings.max_upload_bytes
    request.max_form_parts = settings.max_upload_files + _TEXT_PARTS
    length = request.content_length
    if length is not None and length > settings.max_upload_bytes:
        request.form  # noqa: B018 - werkzeug refuses it (413) without reading it
    charge(length if length is not None else settings.max_upload_bytes)
    files, form = request.files, request.form
    fields = _text_fields(form, files)
    images, mask = _files(files, settings, mask_allowed=mask_allowed)
    return UploadForm(fields=fields, images=images, mask=mask)


def _text_fields(form: Any, files: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name in form:
        values = form.getlist(name)
        if name in IMAGE_PARTS or name == MASK_PART:
            raise InvalidRequest(
                f"'{_base(name)}' must be an image file part of the multipart body, not text; "
                "JSON edits name images by URL in `images: [{image_url}]`.",
                param=_base(name),
                code=INVALID_VALUE,
            )
        if len(values) > 1:
            raise InvalidRequest(
                f"The parameter '{name}' appears more than once in the request body.",
                param=name,
                code="duplicate_parameter",
            )
        fields[name] = _typed(name, values[0])
    for name in files:
        if name not in IMAGE_PARTS and name != MASK_PART:
            raise InvalidRequest(
                f"Unknown parameter: '{name}' (a file part; only 'image', 'image[]' and "
                "'mask' are files).",
                param=name,
                code=UNKNOWN_PARAMETER,
            )
    return fields


def _typed(name: str, value: str) -> Any:
    """A form field's text as the JSON value it stands for (integers, booleans)."""
    if name in _INTEGER_FIELDS:
        text = value.strip()
        if not (text.isascii() and text.lstrip("-").isdigit()) or len(text) > 12:
            raise InvalidRequest(
                f"Invalid value for '{name}': expected an integer, got {value[:40]!r}.",
                param=name,
                code=INVALID_VALUE,
            )
        return int(text)
    if name in _BOOLEAN_FIELDS:
        text = value.strip().lower()
        if text not in ("true", "false"):
            raise InvalidRequest(
                f"Invalid value for '{name}': expected true or false, got {value[:40]!r}.",
                param=name,
                code=INVALID_VALUE,
            )
        return text == "true"
    return value


def _files(
    files: Any, settings: Settings, *, mask_allowed: bool
) -> tuple[list[Upload], Upload | None]:
    parts = [f for name in IMAGE_PARTS for f in files.getlist(name)]
    masks = files.getlist(MASK_PART)
    if len(parts) + len(masks) > settings.max_upload_files:
        raise InvalidRequest(
            f"The request uploads {len(parts) + len(masks)} files; this gateway takes at most "
            f"{settings.max_upload_files}.",
            param="image",
            code="too_many_images",
        )
    if not parts:
        raise InvalidRequest(
            "Missing required parameter: 'image' (an image file part).",
            param="image",
            code=MISSING_REQUIRED_PARAMETER,
        )
    if len(masks) > 1:
        raise InvalidRequest(
            "The parameter 'mask' appears more than once in the request body.",
            param=MASK_PART,
            code="duplicate_parameter",
        )
    if masks and not mask_allowed:
        raise InvalidRequest("Unknown parameter: 'mask'.", param=MASK_PART, code=UNKNOWN_PARAMETER)
    names = ["image"] if len(parts) == 1 else [f"image[{i}]" for i in range(len(parts))]
    images = [_checked(part, name, settings) for part, name in zip(parts, names, strict=True)]
    mask = _checked(masks[0], MASK_PART, settings) if masks else None
    if mask is not None:
        check_mask(mask.image, images[0].image)
    return images, mask


def _checked(part: FileStorage, name: str, settings: Settings) -> Upload:
    """One file part, read up to the per-file limit and inspected."""
    limit = settings.max_upload_file_bytes
    data = part.stream.read(limit + 1)
    if len(data) > limit:
        raise too_large(limit, name)
    if not data:
        raise InvalidRequest(f"The file '{name}' is empty.", param=name, code="invalid_image")
    return Upload(name, data, inspect_image(data, param=name, what=f"The file '{name}'"))


def check_mask(mask: InspectedImage, first: InspectedImage | None) -> None:
    """400 ``invalid_mask`` unless the mask is a PNG of the first image's size (when known)."""
    if mask.extension != "png":
        raise InvalidRequest(
            f"The mask must be a PNG image (with transparency marking where to edit), not "
            f"{mask.extension.upper()}.",
            param=MASK_PART,
            code="invalid_mask",
        )
    if first is not None and (mask.width, mask.height) != (first.width, first.height):
        raise InvalidRequest(
            f"The mask is {mask.width}x{mask.height}; it must be the size of the first "
            f"image, {first.width}x{first.height}.",
            param=MASK_PART,
            code="invalid_mask",
        )


def _base(name: str) -> str:
    return "image" if name in IMAGE_PARTS else name
