"""Checks of inline reference images (shared/uploads.py) on crafted bytes, and the parse
pre-check of api/validation.py."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from api.validation import parse_body
from shared.errors import InvalidRequest, RequestTooLarge
from shared.uploads import MAX_REFERENCE_PIXELS, data_url, decode_data_url, inspect_image


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(buf, format="PNG")
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` and holds almost no data (a bomb's head)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b""))
        + _chunk(b"IEND", b"")
    )


def test_a_png_round_trips_through_a_data_url() -> None:
    raw = _png(40, 30)
    decoded = decode_data_url(data_url(raw, "image/png"), max_bytes=1 << 20)
    assert decoded == raw
    inspected = inspect_image(decoded)
    assert (inspected.extension, inspected.content_type) == ("png", "image/png")
    assert (inspected.width, inspected.height) == (40, 30)


def test_a_labelled_jpeg_that_is_a_png_is_stored_as_what_it_is() -> None:
    raw = _png(8, 8)
    decoded = decode_data_url(
        "data:image/jpeg;base64," + base64.b64encode(raw).decode(), max_bytes=1 << 20
    )
    assert inspect_image(decoded).content_type == "image/png"


def test_whitespace_in_base64_is_ignored_and_percent_encoding_decoded() -> None:
    raw = _png(8, 8)
    encoded = base64.b64encode(raw).decode()
    spaced = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    assert decode_data_url("data:image/png;base64," + spaced, max_bytes=1 << 20) == raw
    percent = "".join(f"%{b:02X}" for b in raw)
    assert decode_data_url("data:image/png," + percent, max_bytes=1 << 20) == raw


@pytest.mark.parametrize("side", [9000, 100_000])
def test_too_many_pixels_is_refused_before_decoding(side: int) -> None:
    # 9000^2 is above our limit and below Pillow's; 100000^2 is above both.
    assert side * side > MAX_REFERENCE_PIXELS
    with pytest.raises(InvalidRequest) as caught:
        inspect_image(_png_header(side, side))
    assert caught.value.param == "image" and caught.value.code == "image_dimensions_too_large"


def test_size_limit_is_on_the_decoded_bytes() -> None:
    raw = _png(8, 8)
    url = data_url(raw, "image/png")
    assert decode_data_url(url, max_bytes=len(raw)) == raw
    with pytest.raises(RequestTooLarge) as caught:
        decode_data_url(url, max_bytes=len(raw) - 1)
    assert caught.value.param == "image" and caught.value.status == 413


@pytest.mark.parametrize(
    "url", ["data:text/plain;base64,aGVsbG8=", "data:image/png;base64,aGVsbG8=", "data:image/png"]
)
def test_what_is_not_an_image_is_400_naming_image(url: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        inspect_image(decode_data_url(url, max_bytes=1 << 20))
    assert caught.value.param == "image" and caught.value.code == "invalid_image"


def test_punctuation_is_counted_outside_the_inline_image_only() -> None:
    image = "data:image/png;base64," + base64.b64encode(b"x" * 3000).decode()
    body = b'{"prompt": "x", "image": "' + image.encode() + b'"}'
    assert parse_body(body, max_tokens=5).image == image
    many = b'{"prompt": "x", "user": "' + b"," * 100 + b'"}'
    parse_body(many, max_tokens=200)
    with pytest.raises(InvalidRequest) as caught:
        parse_body(many, max_tokens=50)
    assert caught.value.code == "json_too_complex"
