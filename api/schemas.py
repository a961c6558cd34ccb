"""The request body of POST /v1/images/generations, validated with pydantic.

Field names and value sets follow OpenAI's Images API; ``aspect_ratio``,
``seed`` and ``image`` are the gateway's additive extensions. Whether a
particular model accepts a field, and with which values, is decided from the
catalog in :mod:`api.validation`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# A user id goes into logs and upstream requests: printable characters only.
UserId = Annotated[str, StringConstraints(max_length=256, pattern=r"^[^\x00-\x1f\x7f]*$")]


class GenerationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    prompt: Annotated[str, StringConstraints(min_length=1)]
    model: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    n: Annotated[int, Field(ge=1, le=100)] | None = None
    size: Annotated[str, StringConstraints(max_length=32)] | None = None
    quality: Literal["auto", "standard", "hd", "low", "medium", "high"] | None = None
    style: Literal["vivid", "natural"] | None = None
    response_format: Literal["url", "b64_json"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    output_compression: Annotated[int, Field(ge=0, le=100)] | None = None
    background: Literal["transparent", "opaque", "auto"] | None = None
    moderation: Literal["low", "auto"] | None = None
    user: UserId | None = None
    stream: Literal[False] | None = None
    # extensions
    aspect_ratio: Annotated[str, StringConstraints(max_length=16)] | None = None
    seed: Annotated[int, Field(ge=0, le=4_294_967_294)] | None = None
    image: Annotated[str, StringConstraints(min_length=1)] | None = None
    webhook_url: Annotated[str, StringConstraints(min_length=1, max_length=2048)] | None = None
