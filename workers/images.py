"""Checking and converting the image bytes an upstream returned (Pillow).

Nothing reaches storage unless Pillow can open it as an image within the
pixel limit; what we store and report (size, content type) is read from the
bytes themselves, not from what the upstream claimed.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from shared.errors import UpstreamError

# Largest image we accept from an upstream (about 8K x 8K).
MAX_PIXELS = 8192 * 8192 + 1

_FORMATS = {
    "PNG": ("png", "image/png"),
    "JPEG": ("jpeg", "image/jpeg"),
    "WEBP": ("webp", "image/webp"),
}
_PIL_NAME = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


@dataclass(frozen=True)
class CheckedImage:
    data: bytes
    width: int
    height: int
    extension: str
    content_type: str


def check_image(data: bytes, *, provider: str, want_format: str | None = None) -> CheckedImage:
    """Verify ``data`` is a PNG/JPEG/WebP image; convert it when another format was asked for."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            probe.verify()
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_PIXELS:
            raise UpstreamError(
                f"{provider} returned a {image.width}x{image.height} image, above the limit.",
                code="upstream_image_too_large",
            )
        fmt = image.format or ""
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise UpstreamError(
            f"{provider} returned data that is not a valid image.", code="upstream_invalid_image"
        ) from exc
    if fmt not in _FORMATS:
        want_format = want_format or "png"
    if want_format and _PIL_NAME.get(want_format) != fmt:
        data = convert(image, want_format)
        fmt = _PIL_NAME[want_format]
    extension, content_type = _FORMATS[fmt]
    return CheckedImage(data, image.width, image.height, extension, content_type)


def convert(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    if fmt == "jpeg" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    image.save(
        out, format=_PIL_NAME[fmt], **({"compress_level": 6} if fmt == "png" else {"quality": 92})
    )
    return out.getvalue()
