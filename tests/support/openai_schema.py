"""OpenAI's published Images schema (``shared/reference/openai-images-openapi.json``), as
the conformance tests check the gateway's answers against it.

One decision is applied to it, on purpose. The schema's ``size`` of a response
(``ImagesResponse``) and of the stream events (``image_generation.*``,
``image_edit.*``) is an ``enum`` of OpenAI's own GPT-image sizes. The gateway
answers the size it produced (design.md: "the response's ``size`` field says
what was produced"), which for other models is outside that list: a FLUX model
makes ``1536x864``, dall-e-3 ``1792x1024``. We keep answering the truth rather
than a listed size that is not the image's, because

* OpenAI itself outgrew the enum: the same document lets ``gpt-image-2`` take
  arbitrary ``WxH`` sizes in requests, so its answers carry them too;
* OpenAI's clients read ``size`` as a string: openai-python builds responses
  without validating literals (``construct``), openai-node has TypeScript types
  only, so an unlisted size parses as it is.

So here ``size`` is any ``<width>x<height>`` (or ``auto``) string; everything
else is checked exactly as published.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest

OPENAI_SCHEMA = Path(__file__).resolve().parents[3] / "shared/reference/openai-images-openapi.json"
SIZE = {"type": "string", "pattern": r"^(auto|[1-9][0-9]*x[1-9][0-9]*)$"}
# The answers whose `size` is the produced image's (not the requests' fields).
_ANSWERS = (
    "ImagesResponse",
    "ImageGenCompletedEvent",
    "ImageGenPartialImageEvent",
    "ImageEditCompletedEvent",
    "ImageEditPartialImageEvent",
)


@cache
def _components() -> dict[str, Any]:
    if not OPENAI_SCHEMA.exists():
        pytest.fail(
            f"OpenAI's published schema is missing: {OPENAI_SCHEMA} "
            "(CI lays shared/ beside the checkout)"
        )
    components = copy.deepcopy(json.loads(OPENAI_SCHEMA.read_text())["components"])
    for name in _ANSWERS:
        props = components["schemas"][name]["properties"]
        props["size"] = {**SIZE, "description": props["size"].get("description", "")}
    return components


def openai_schema(name: str) -> dict[str, Any]:
    """The component schema ``name`` with its ``$ref``s resolvable, ``size`` as above."""
    components = _components()
    return {**components["schemas"][name], "components": components}
