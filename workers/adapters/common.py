"""The pieces every adapter needs in the same shape.

* :func:`malformed` — the one error for an upstream answer that breaks its own
  protocol (502 ``upstream_malformed_response``, with the upstream request id).
* :func:`image_of` — an ``{"url" | "b64_json" [, "revised_prompt"]}`` entry,
  as OpenAI-style upstreams (OpenAI, Ark, Zhipu) answer, as a
  :class:`GeneratedImage`; a ``data:`` URL in ``url`` (fal) is decoded.
* :func:`fields_set` and :func:`unsupported` — what a client set that is
  not required, and the 400 ``unsupported_parameter`` naming a field an
  upstream has nowhere to put (a field is refused, never silently dropped).
* :class:`RequestIds` — the upstream request ids of a fan-out's images,
  collected from its threads and reported in image order.
"""

from __future__ import annotations

import binascii
import threading
from typing import Any

import pybase64 as base64

from shared.errors import (
    UNSUPPORTED_PARAMETER,
    UPSTREAM_MALFORMED_RESPONSE,
    InvalidRequest,
    UpstreamError,
)
from workers.adapters.base import GeneratedImage, ImageRequest

# The optional request fields an adapter must send, map, or refuse.
OPTIONAL_FIELDS = ("quality", "style", "background", "output_format", "seed", "image", "user")


def malformed(message: str, rid: str | None = None) -> UpstreamError:
    """502 ``upstream_malformed_response``: the upstream's answer breaks its protocol."""
    return UpstreamError(message, code=UPSTREAM_MALFORMED_RESPONSE, upstream_request_id=rid)


def image_of(
    item: Any, rid: str | None, who: str, *, revised_prompt: str | None = None
) -> GeneratedImage:
    """One image entry ``{"url"}`` or ``{"b64_json"}`` (base64 first when both are there).

    ``who`` starts the error messages ("The upstream", "Ark"). A ``data:`` URL
    in ``url`` is decoded here; an ``http(s)`` URL is left for the task to
    fetch. The entry's own ``revised_prompt`` wins over ``revised_prompt``.
    """
    if not isinstance(item, dict):
        raise malformed(f"{who} sent a malformed image entry.", rid)
    revised = item.get("revised_prompt")
    revised = revised if isinstance(revised, str) else revised_prompt
    encoded, url = item.get("b64_json"), item.get("url")
    if isinstance(url, str) and url.startswith("data:") and not isinstance(encoded, str):
        header, _, encoded = url.partition(",")
        if not header.endswith(";base64"):
            raise malformed(f"{who} sent a data URI that is not base64.", rid)
    if isinstance(encoded, str) and encoded:
        try:
            return GeneratedImage(
                data=base64.b64decode(encoded, validate=True), revised_prompt=revised
            )
        except (binascii.Error, ValueError) as exc:
            raise malformed(f"{who} sent invalid base64 image data.", rid) from exc
    if isinstance(url, str) and url:
        return GeneratedImage(url=url, revised_prompt=revised)
    raise malformed(f"{who} sent an image entry with neither b64_json nor url.", rid)


def fields_set(request: ImageRequest) -> dict[str, Any]:
    """The optional fields the client set (``extra`` ones too), in a stable order."""
    given = {name: getattr(request, name) for name in OPTIONAL_FIELDS}
    given.update(sorted(request.extra.items()))
    return {name: value for name, value in given.items() if value is not None}


def unsupported(param: str, message: str) -> InvalidRequest:
    """400 ``unsupported_parameter`` naming ``param``: the model has no such setting."""
    return InvalidRequest(message, param=param, code=UNSUPPORTED_PARAMETER)


class RequestIds:
    """Upstream request ids of one job's calls, added from any fan-out thread."""

    def __init__(self) -> None:
        self._ids: dict[int, list[str]] = {}
        self._lock = threading.Lock()

    def add(self, rid: str | None, index: int = 0) -> str | None:
        """Record ``rid`` (if any) for image ``index``; returns ``rid``."""
        if rid:
            with self._lock:
                self._ids.setdefault(index, []).append(rid)
        return rid

    def _ordered(self) -> list[str]:
        with self._lock:
            return [rid for index in sorted(self._ids) for rid in self._ids[index]]

    def first(self) -> str | None:
        """The id of the first image that has one."""
        ids = self._ordered()
        return ids[0] if ids else None

    def joined(self, limit: int | None = None) -> str | None:
        """All ids in image order, comma-separated (cut to ``limit`` characters)."""
        return ",".join(self._ordered())[:limit] or None
