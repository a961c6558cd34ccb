"""The request body of POST /v1/images/generations, validated with pydantic.

Field names and value sets follow OpenAI's Images API; ``aspect_ratio``,
``seed`` and ``image`` are the gateway's additive extensions. Whether a
particular model accepts a field, and with which values, is decided from the
catalog in :mod:`api.validation`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# A user id goes into logs and upstream requests (some upstreams take it as an HTTP
# header): printable characters only, so no C0/C1 control characters (CR, LF, NUL,
# NEL) and no Unicode line or paragraph separators.
UserId = Annotated[
    str,
    StringConstraints(max_length=256, pattern=r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]*$"),
]
# A prompt may span lines, but a NUL or another control character is never text: some
# upstreams cut the prompt at a NUL or reject it with an unclear error.
Prompt = Annotated[
    str, StringConstraints(min_length=1, pattern=r"^[^\x00-\x08\x0b\x0c\x0e-\x1f]*$")
]


class GenerationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    prompt: Prompt
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
