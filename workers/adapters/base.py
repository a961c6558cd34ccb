"""What every upstream adapter receives and returns.

An adapter turns an :class:`ImageRequest` (OpenAI terms, size already clamped
by the model's rule) into calls to its upstream through the shared
:class:`workers.http.UpstreamHTTP` helper, and returns an :class:`ImageResult`.
It raises only :mod:`shared.errors` classes (the HTTP helper already does so
for transport faults) and never stores anything itself: the task downloads
URL results, checks them and writes them to storage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Protocol, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.catalog import Family, Model
from shared.errors import CATALOG_MISCONFIGURED, ServerError
from shared.progress import PartialSink
from workers.http import UpstreamHTTP


@dataclass(frozen=True)
class ImageRequest:
    """One generation as the adapter must perform it."""

    prompt: str
    model: Model
    n: int
    width: int | None  # None when the model takes an aspect ratio instead of a size
    height: int | None
    aspect_ratio: str | None = None
    quality: str | None = None
    style: str | None = None
    output_format: str | None = None
    background: str | None = None
    seed: int | None = None
    user: str | None = None
    image: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # "generate"; "edit" (POST /v1/images/edits) or "variation" (/variations), whose
    # input images are `images` (`image` is the first) and `mask`: each an http(s) URL
    # or a data: URL of the client's upload, read back from storage by the task.
    operation: str = "generate"
    images: tuple[str, ...] = ()
    mask: str | None = None

    @property
    def size(self) -> str | None:
        if self.width is None or self.height is None:
            return None
        return f"{self.width}x{self.height}"


@dataclass(frozen=True)
class GeneratedImage:
    """One image from the upstream: its bytes, or a URL the task must fetch at once."""

    data: bytes | None = None
    url: str | None = None
    revised_prompt: str | None = None


@dataclass(frozen=True)
class ImageResult:
    images: list[GeneratedImage]
    upstream_request_id: str | None = None
    # OpenAI's top-level response fields the upstream reported for the call
    # (`quality`, `background`, `usage`); the client's response repeats them.
    reported: dict[str, Any] = field(default_factory=dict)
    # What the upstream's answer says about its bill, where it says anything: its own
    # charge in micro-units (BFL's `cost`), the images it billed (Ark's
    # `usage.generated_images`), or the compute seconds it billed (Replicate's
    # `metrics.predict_time`). OpenAI's token `usage` is in `reported`. The task turns
    # these into the job's upstream cost (workers.pipeline.upstream_cost).
    cost_micros: int | None = None
    billed_images: int | None = None
    compute_seconds: float | None = None


@dataclass(frozen=True)
class CallContext:
    """What an adapter needs to reach its upstream for one job."""

    family: Family
    base_url: str
    api_key: str | None
    http: UpstreamHTTP
    deadline: float  # unix time; the HTTP helper enforces it too
    # For URLs the *client* gave (reference images): the SSRF guard checks every address
    # at connection time, connects to the checked one and follows no redirects.
    client_http: UpstreamHTTP | None = None
    # Set when the client streams (stream=true): an adapter whose upstream streams
    # partial images asks it for ``progress.partial_images`` of them and hands each to
    # ``progress.publish`` as it arrives (shared.progress). None: nobody is listening.
    progress: PartialSink | None = None


Seconds = Annotated[float, Field(gt=0, strict=True)]
"""An option that is a positive number of seconds (an int is fine, a bool or string is not)."""
Count = Annotated[int, Field(ge=1, strict=True)]
"""An option that is a positive whole number."""


class AdapterOptions(BaseModel):
    """A catalog model's ``options`` table, as its adapter reads it.

    Each adapter declares one subclass (``options_model``) naming every option
    it reads, with its type and default; a key it does not know is refused.
    :func:`workers.adapters.validate_catalog` checks every model's options
    when a process loads the catalog, so a typo stops the deployment instead
    of failing requests later.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def of(cls, model: Model) -> Self:
        """``model``'s options, checked; ServerError ``catalog_misconfigured`` if they are bad."""
        try:
            return cls.model_validate(dict(model.options))
        except ValidationError as exc:
            raise ServerError(options_problem(model.id, exc), code=CATALOG_MISCONFIGURED) from None


def options_problem(model_id: str, exc: ValidationError) -> str:
    """One sentence naming the model and each bad option."""
    problems = "; ".join(
        f"options.{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"
        if error["loc"]
        else error["msg"]
        for error in exc.errors()
    )
    return f"The catalog entry of '{model_id}' has bad options: {problems}."


class NoOptions(AdapterOptions):
    """For adapters that read no options: any key is a mistake."""


class Adapter(Protocol):
    """An upstream adapter. It may also have ``check_model(model)``, raising
    ServerError ``catalog_misconfigured`` for a model it cannot serve whatever the
    request (e.g. an upstream name it cannot parse); validate_catalog calls it."""

    options_model: ClassVar[type[AdapterOptions]]

    def generate(self, request: ImageRequest, ctx: CallContext) -> ImageResult: ...
