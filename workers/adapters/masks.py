"""OpenAI's edit mask in the form inpainting upstreams take.

OpenAI's mask is a PNG the size of the first image whose *fully transparent*
pixels mark the area to edit. Stability's ``/edit/inpaint``, Replicate's SDXL
and Playground ``mask`` inputs take a black-and-white image instead, white
where to repaint (``paint="white"``); some models want the opposite
(``paint="black"``: Ideogram). :func:`painted_mask` turns one into the other
with Pillow; the mask arrives as the adapters get every input image (a
``data:`` URL of the client's upload, or the client's https URL, fetched here
through the SSRF-guarded client session, bounded in bytes).
"""

from __future__ import annotations

import io
from typing import Literal

from PIL import Image, UnidentifiedImageError

from shared.errors import INVALID_IMAGE, InvalidRequest, UpstreamError
from shared.uploads import decode_data_url
from workers.adapters.base import CallContext

MAX_MASK_BYTES = 16 * 1024 * 1024  # a mask is a PNG the size of an upload (OpenAI: < 50 MB)
_TRANSPARENT = 0


def painted_mask(
    mask: str,
    ctx: CallContext,
    *,
    paint: Literal["white", "black"] = "white",
    max_bytes: int = MAX_MASK_BYTES,
) -> bytes:
    """A greyscale PNG of ``mask``'s size: ``paint`` where OpenAI's mask is fully
    transparent (the area to edit), the other colour elsewhere."""
    data = _mask_bytes(mask, ctx, max_bytes)
    try:
        with Image.open(io.BytesIO(data)) as image:
            alpha = image.convert("RGBA").getchannel("A")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidRequest(
            "The mask is not an image Pillow can read.", param="mask", code=INVALID_IMAGE
        ) from exc
    edit, keep = (255, 0) if paint == "white" else (0, 255)
    painted = alpha.point(lambda a: edit if a == _TRANSPARENT else keep)
    out = io.BytesIO()
    painted.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _mask_bytes(mask: str, ctx: CallContext, max_bytes: int) -> bytes:
    if mask[:5].lower() == "data:":
        return decode_data_url(mask, max_bytes=max_bytes, param="mask")
    if not mask.startswith(("https://", "http://")):
        raise InvalidRequest(
            "mask must be an https URL or a data URL.", param="mask", code=INVALID_IMAGE
        )
    try:
        data, _ = (ctx.client_http or ctx.http).download(mask, max_bytes=max_bytes)
    except UpstreamError as exc:
        # The URL is the client's, not the upstream's: its failure is a bad request.
        raise InvalidRequest(
            f"Could not fetch the mask: {exc.message}", param="mask", code="invalid_image_url"
        ) from exc
    return data
