"""``local`` family: renders a test card in the worker, no upstream at all.

Model ``local/testcard`` draws a real image of the requested (clamped) size
with Pillow: a gradient whose colours come from the prompt and seed, a grid,
and the prompt, model, size and image index written on it. It lets the
gateway run end to end with no upstream keys, and makes results checkable
(the size is real, distinct prompts give distinct images).

Field mapping: prompt -> text and colours; seed -> colours (same seed and
prompt, same image); output_format -> encoding; background "transparent" ->
RGBA with a transparent margin; n -> n distinct cards.

Edits and variations work with no upstream: an edit's input images are drawn
into the card as a row of framed thumbnails along its bottom, in order, and
its mask tints the area it marks for editing (its fully transparent pixels,
scaled to the card) red; a variation's card is drawn over its input image,
scaled to the card's size. Input images come as ``data:`` URLs of the
client's uploads or as the client's URLs, fetched through the SSRF-guarded
client session.
"""

from __future__ import annotations

import hashlib
import io
import textwrap
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from shared.errors import InvalidRequest
from workers.adapters.base import (
    CallContext,
    GeneratedImage,
    ImageRequest,
    ImageResult,
    NoOptions,
)
from workers.adapters.openai_edits import input_image

_PIL = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


class TestcardAdapter:
    options_model = NoOptions

    def generate(self, request: ImageRequest, ctx: CallContext) -> ImageResult:
        width = request.width or request.model.default_size.width
        height = request.height or request.model.default_size.height
        inputs = [_open(image, ctx) for image in request.images]
        mask = _open(request.mask, ctx) if request.mask is not None else None
        images = []
        for index in range(request.n):
            ctx.http.check_deadline()
            data = render(request, width, height, index, inputs=inputs, mask=mask)
            images.append(GeneratedImage(data=data))
        return ImageResult(images=images)


def _open(image: str, ctx: CallContext) -> Image.Image:
    """An input image (checked by the gateway when uploaded), decoded, as RGBA."""
    data, _ = input_image(image, ctx)
    try:
        with Image.open(io.BytesIO(data)) as opened:
            return opened.convert("RGBA")
    except Exception:  # noqa: BLE001 - a URL's bytes were never checked by the gateway
        raise InvalidRequest(
            "An input image is not a readable PNG, JPEG or WebP image.",
            param="image",
            code="invalid_image",
        ) from None


def _colours(
    request: ImageRequest, index: int
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    digest = hashlib.sha256(f"{request.prompt}|{request.seed}|{index}".encode()).digest()
    return (digest[0], digest[1], digest[2]), (digest[3], digest[4], digest[5])


def render(
    request: ImageRequest,
    width: int,
    height: int,
    index: int,
    *,
    inputs: Sequence[Image.Image] = (),
    mask: Image.Image | None = None,
) -> bytes:
    fmt = request.output_format or "png"
    transparent = request.background == "transparent" and fmt != "jpeg"
    top, bottom = _colours(request, index)
    if request.operation == "variation" and inputs:
        image = inputs[0].convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    else:
        # A vertical gradient, built small and resized: cheap at any size.
        strip = Image.new("RGB", (1, 256))
        for y in range(256):
            t = y / 255
            strip.putpixel(
                (0, y), tuple(int(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
            )
        image = strip.resize((width, height), Image.Resampling.BILINEAR)
    if mask is not None:
        _tint_masked(image, mask)
    if request.operation == "edit":
        _draw_thumbnails(image, inputs)
    if transparent:
        image = image.convert("RGBA")
    draw = ImageDraw.Draw(image)
    step = max(16, min(width, height) // 8)
    grid = (255, 255, 255, 90) if transparent else (255, 255, 255)
    for x in range(0, width, step):
        draw.line([(x, 0), (x, height)], fill=grid, width=1)
    for y in range(0, height, step):
        draw.line([(0, y), (width, y)], fill=grid, width=1)
    draw.rectangle([0, 0, width - 1, height - 1], outline=(255, 255, 255), width=max(1, step // 16))

    font_size = max(8, min(width, height) // 20)
    font = ImageFont.load_default(size=font_size)
    lines = [
        f"{request.model.id}  #{index + 1}",
        f"{width}x{height}" + (f"  seed {request.seed}" if request.seed is not None else ""),
        "",
        *textwrap.wrap(request.prompt, width=max(10, int(width / (font_size * 0.6))))[:6],
    ]
    y = step // 2
    for line in lines:
        draw.text(
            (step // 2, y),
            line,
            fill=(255, 255, 255),
            font=font,
            stroke_width=1,
            stroke_fill=(0, 0, 0),
        )
        y += int(font_size * 1.3)
    if transparent:
        margin = max(1, min(width, height) // 32)
        alpha = Image.new("L", (width, height), 0)
        ImageDraw.Draw(alpha).rectangle([margin, margin, width - margin, height - margin], fill=255)
        image.putalpha(alpha)
    out = io.BytesIO()
    options = {"compress_level": 1} if fmt == "png" else {"quality": 90}
    image.save(out, format=_PIL[fmt], **options)
    return out.getvalue()


def _tint_masked(image: Image.Image, mask: Image.Image) -> None:
    """Tint red where the mask is fully transparent (the area to edit), scaled to the card."""
    area = mask.getchannel("A").resize(image.size, Image.Resampling.NEAREST)
    editable = area.point(lambda alpha: 255 if alpha == 0 else 0)
    red = Image.new("RGB", image.size, (220, 30, 30))
    image.paste(Image.blend(image.convert("RGB"), red, 0.5), (0, 0), editable)


def _draw_thumbnails(image: Image.Image, inputs: Sequence[Image.Image]) -> None:
    """The input images in a row along the bottom, framed, as many as fit."""
    if not inputs:
        return
    width, height = image.size
    side = max(8, min(width, height) // 5)
    gap = max(2, side // 16)
    x, y = gap, height - side - gap
    draw = ImageDraw.Draw(image)
    for source in inputs:
        if x + side > width:
            break
        thumb = source.copy()
        thumb.thumbnail((side, side))
        draw.rectangle([x - 1, y - 1, x + side, y + side], outline=(255, 255, 255), width=1)
        image.paste(thumb, (x, y), thumb)
        x += side + gap
