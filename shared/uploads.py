"""Reference images a client sends inline: ``image`` as a ``data:`` URL.

Image bytes never travel through Redis or Celery messages. The web side
checks an inline reference image at admission, before anything is charged:

* :func:`decode_data_url`: ``data:[<type>][;base64],<data>``; the media type,
  when given, must be ``image/*`` (400 ``invalid_image``); the decoded bytes
  are at most ``max_bytes`` (413 ``image_too_large``);
* :func:`inspect_image`: Pillow must open the bytes as PNG, JPEG or WebP
  (PNG chunks are CRC-checked) and the image must have at most
  :data:`MAX_REFERENCE_PIXELS` pixels (a decompression bomb is refused
  before anything is decoded); 400 ``invalid_image`` /
  ``image_dimensions_too_large`` otherwise. Every refusal names ``image``.

It then stores the bytes in the gateway's storage under a key of the job's,
``uploads/{day}/{job id}/0.{ext}`` (:func:`upload_key`), and the job spec
carries only a :class:`ReferenceImage` (its key and content type) in
``meta["reference_image"]``, once for all the routes of a virtual model.

A worker reads the bytes back from storage and hands its adapter a
``data:`` URL of them (:func:`data_url`), which every adapter already
understands (sent as is, as raw base64, or decoded to a file part, as the
upstream's protocol wants). The upload is deleted once the job is terminal
(:mod:`workers.pipeline`); one whose task never runs again is deleted with
its folder by the workers' janitor after the image retention
(:mod:`shared.retention`), which the web noted before storing it.

Edits and variations (``POST /v1/images/edits``, ``/variations``) upload
several images and a mask, as multipart files or JSON ``data:`` URLs; each
is checked the same way, with the errors naming its part (``image``,
``image[2]``, ``mask``), stored under ``uploads/{day}/{job id}/{index}.{ext}``,
and named in the job's request by a :class:`Reference` (a storage key, or a
client's URL the worker fetches behind the SSRF guard). ``meta["uploads"]``
lists every key the job stored; :func:`job_uploads` is what is deleted with
the job.
"""

from __future__ import annotations

import base64
import binascii
import io
import time
import urllib.parse
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image

from shared.errors import InvalidRequest, RequestTooLarge

UPLOADS_PREFIX = "uploads"
# Largest reference image, in pixels (8192 x 8192, what workers accept from upstreams).
MAX_REFERENCE_PIXELS = 8192 * 8192
# Pillow format -> (file extension, content type); the only formats accepted.
FORMATS: Mapping[str, tuple[str, str]] = {
    "PNG": ("png", "image/png"),
    "JPEG": ("jpeg", "image/jpeg"),
    "WEBP": ("webp", "image/webp"),
}


@dataclass(frozen=True)
class InspectedImage:
    """What Pillow read from a reference image's header."""

    extension: str
    content_type: str
    width: int
    height: int


@dataclass(frozen=True)
class ReferenceImage:
    """A stored reference image, as the job spec names it (never its bytes)."""

    key: str
    content_type: str

    def to_meta(self) -> dict[str, str]:
        return {"key": self.key, "content_type": self.content_type}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any] | None) -> ReferenceImage | None:
        if not meta:
            return None
        return cls(key=str(meta["key"]), content_type=str(meta["content_type"]))


@dataclass(frozen=True)
class Reference:
    """One image of an edit as its job names it: a stored upload, or a client's URL.

    In the job's request as ``{"key", "content_type"}`` or ``{"url"}``; never bytes.
    """

    stored: ReferenceImage | None = None
    url: str | None = None

    def to_spec(self) -> dict[str, str]:
        return self.stored.to_meta() if self.stored is not None else {"url": str(self.url)}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Reference:
        if "url" in spec:
            return cls(url=str(spec["url"]))
        return cls(stored=ReferenceImage.from_meta(spec))


def job_uploads(meta: Mapping[str, Any]) -> list[ReferenceImage]:
    """Every upload a job's ``meta`` says it stored: a generation's inline
    ``reference_image``, an edit's or variation's ``uploads``."""
    found = [ReferenceImage.from_meta(meta.get("reference_image"))]
    found += [ReferenceImage.from_meta(item) for item in meta.get("uploads") or ()]
    return [item for item in found if item is not None]


def is_data_url(value: str) -> bool:
    return value[:5].lower() == "data:"


def decode_data_url(value: str, *, max_bytes: int, param: str = "image") -> bytes:
    """The bytes of a ``data:`` URL that claims to be an image, at most ``max_bytes`` long;
    errors name ``param``."""
    header, comma, payload = value[5:].partition(",")
    if not comma:
        raise _invalid("The image data URL has no ',' before its data.", param)
    media_type, *params = (part.strip().lower() for part in header.split(";"))
    if media_type and not media_type.startswith("image/"):
        raise _invalid(
            f"The image data URL says its data is '{media_type[:60]}'; it must be a PNG, "
            "JPEG or WebP image (data:image/png;base64,...).",
            param,
        )
    if "base64" in params:
        compact = "".join(payload.split())
        # Four base64 characters make three bytes: refuse before decoding what is too long.
        if len(compact) // 4 * 3 - compact[-2:].count("=") > max_bytes:
            raise too_large(max_bytes, param)
        try:
            data = base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError):
            raise _invalid("The image data URL is not valid base64.", param) from None
    else:
        data = urllib.parse.unquote_to_bytes(payload)
    if len(data) > max_bytes:
        raise too_large(max_bytes, param)
    if not data:
        raise _invalid("The image data URL holds no data.", param)
    return data


def inspect_image(
    data: bytes,
    *,
    max_pixels: int = MAX_REFERENCE_PIXELS,
    param: str = "image",
    what: str = "The image data URL",
) -> InspectedImage:
    """Format and size of a PNG/JPEG/WebP image, read without decoding its pixels.

    Errors name ``param`` and start with ``what`` (``The file 'mask'``)."""
    try:
        with warnings.catch_warnings():
            # Above Pillow's own limit it only warns (twice that, it raises); ours is lower.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=list(FORMATS)) as image:
                fmt, (width, height) = image.format or "", image.size
                if width * height <= max_pixels:
                    image.verify()
    except Image.DecompressionBombError:
        raise _too_many_pixels(0, 0, max_pixels, param) from None
    except Exception:  # noqa: BLE001 - Pillow raises many kinds of error for bad bytes
        raise _invalid(f"{what} does not hold a valid PNG, JPEG or WebP image.", param) from None
    if width * height > max_pixels:
        raise _too_many_pixels(width, height, max_pixels, param)
    if fmt not in FORMATS or width <= 0 or height <= 0:
        raise _invalid(f"{what} does not hold a valid PNG, JPEG or WebP image.", param)
    extension, content_type = FORMATS[fmt]
    return InspectedImage(extension, content_type, width, height)


def upload_key(job_id: str, created: float, extension: str, index: int = 0) -> str:
    """``uploads/{day}/{job id}/{index}.{ext}``: the job's own key, by its creation day."""
    day = time.strftime("%Y/%m/%d", time.gmtime(created))
    return f"{UPLOADS_PREFIX}/{day}/{job_id}/{index}.{extension}"


def data_url(data: bytes, content_type: str) -> str:
    """``data:<type>;base64,<data>``: the form every adapter takes a reference image in."""
    return f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"


def _invalid(message: str, param: str = "image") -> InvalidRequest:
    return InvalidRequest(message, param=param, code="invalid_image")


def too_large(max_bytes: int, param: str = "image") -> RequestTooLarge:
    """413 ``image_too_large`` naming ``param``."""
    what = "The reference image" if param == "image" else f"The image '{param}'"
    return RequestTooLarge(
        f"{what} is larger than {max_bytes} bytes, this gateway's limit; "
        "send a smaller image or an https URL of it.",
        param=param,
        code="image_too_large",
    )


def _too_many_pixels(width: int, height: int, max_pixels: int, param: str) -> InvalidRequest:
    size = f"{width}x{height} " if width and height else ""
    what = "The reference image" if param == "image" else f"The image '{param}'"
    return InvalidRequest(
        f"{what} {size}has more than {max_pixels} pixels, this gateway's limit.",
        param=param,
        code="image_dimensions_too_large",
    )
