"""The request and response bodies of the API, as pydantic models.

The request body of POST /v1/images/generations is validated with
:class:`GenerationRequest`; the response bodies (images, job, models, usage,
error) are the models below, used to answer and, by :mod:`api.openapi`, to
describe the answers.

Field names and value sets follow OpenAI's Images API; ``aspect_ratio``,
``seed`` and ``image`` are the gateway's additive extensions. Whether a
particular model accepts a field, and with which values, is decided from the
catalog in :mod:`api.validation`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, StringConstraints, WithJsonSchema
from pydantic.json_schema import SkipJsonSchema

from shared.errors import ERROR_CLASSES
from shared.health import BreakerState
from shared.jobs import JobStatus
from shared.sizing import RULES

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
    """OpenAI's Images API request, plus the additive extensions `aspect_ratio`, `seed`,
    `image` and `webhook_url`. Which optional fields a model accepts, and with which
    values, comes from the catalog (`params` in `GET /v1/models`); others are a 400
    naming the `param`, except OpenAI's tuning fields `user`, `quality` and `style`,
    which every model accepts (mapped or ignored) unless strict mode is on."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    prompt: Prompt = Field(
        description="What to draw. Each model has its own maximum length (`GET /v1/models`)."
    )
    model: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = Field(
        None,
        description="A model id from `GET /v1/models` (real or virtual). Defaults to the "
        "gateway's default model.",
    )
    n: Annotated[int, Field(ge=1, le=100)] | None = Field(
        None, description="How many images (default 1); each model has its own `max_n`."
    )
    size: Annotated[str, StringConstraints(max_length=32)] | None = Field(
        None,
        description="`WxH` or `auto`. Fitted to the model's size rule, not refused; the "
        "response's `size` says what was produced.",
        examples=["256x256", "1024x1024", "auto"],
    )
    quality: Literal["auto", "standard", "hd", "low", "medium", "high"] | None = Field(
        None,
        description="Accepted by every model: a value the model takes is sent as is, another "
        "is mapped to the model's own level (`hd` -> `high`, `high` -> `hd`, `standard` -> "
        "`medium`) or dropped; `x-imagegate-mapped-params` / `x-imagegate-ignored-params` "
        "say which. Strict mode refuses what the model does not take.",
    )
    style: Literal["vivid", "natural"] | None = Field(
        None,
        description="Accepted by every model; dropped (and listed in "
        "`x-imagegate-ignored-params`) where the model has no style, unless strict mode is on.",
    )
    response_format: Literal["url", "b64_json"] | None = Field(
        None,
        description="`url`: signed, expiring URLs served by the gateway; `b64_json`: the "
        "image bytes in base64. Default: the model's `default_response_format` (`b64_json` "
        "for GPT image models, as OpenAI; `url` for the others and virtual models).",
    )
    output_format: Literal["png", "jpeg", "webp"] | None = None
    output_compression: Annotated[int, Field(ge=0, le=100)] | None = None
    background: Literal["transparent", "opaque", "auto"] | None = None
    moderation: Literal["low", "auto"] | None = None
    user: UserId | None = Field(
        None,
        description="Accepted by every model and recorded on the job; sent upstream where "
        "the upstream takes it, else listed in `x-imagegate-ignored-params`, unless strict "
        "mode is on.",
    )
    stream: bool | None = Field(
        None,
        description="`true`: Server-Sent Events in OpenAI's shapes (partial images for GPT "
        "image models, one `image_generation.completed` per image, or one `error` event), "
        "with `: keep-alive` comments; not with `webhook_url`.",
    )
    partial_images: Annotated[int, Field(ge=0, le=3)] | None = Field(
        None,
        description="With `stream`: partial images per image, for models whose upstream "
        "streams them (GPT image models).",
    )
    # extensions
    aspect_ratio: Annotated[str, StringConstraints(max_length=16)] | None = Field(
        None,
        description="Extension: `W:H`, for models whose size rule takes a ratio.",
        examples=["16:9"],
    )
    seed: Annotated[int, Field(ge=0, le=4_294_967_294)] | None = Field(
        None, description="Extension: a seed, for models that take one."
    )
    image: Annotated[str, StringConstraints(min_length=1)] | None = Field(
        None,
        description="Extension: a reference image, as an https URL or a `data:` URL "
        "(models with edit mode only). A `data:` URL must hold a PNG, JPEG or WebP image "
        "of at most 8192x8192 pixels and the gateway's byte limit (400 `invalid_image`, "
        "413 `image_too_large`).",
    )
    webhook_url: Annotated[str, StringConstraints(min_length=1, max_length=2048)] | None = Field(
        None,
        description="Extension: an https URL that receives the job object when the job "
        "ends; makes the request asynchronous (202).",
    )


class ImageRef(BaseModel):
    """An input image of a JSON edit: `image_url` (an https URL or a `data:` URL). OpenAI's
    `file_id` is refused (400): this gateway has no Files API."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    image_url: Annotated[str, StringConstraints(min_length=1)] | None = Field(
        None,
        description="An https URL (fetched by the gateway behind its SSRF guard) or a "
        "`data:` URL of a PNG, JPEG or WebP image.",
    )
    file_id: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = Field(
        None, description="Not supported: the gateway has no Files API (400)."
    )


class EditRequest(GenerationRequest):
    """`POST /v1/images/edits`: OpenAI's edit request. As JSON, `images` (and `mask`)
    name the input images; as multipart, the files `image` / `image[]` (up to the model's
    `max_reference_images`) and `mask` do, and the other fields are form fields. The
    model's `max_reference_images` and `mask` (`GET /v1/models`) say what it takes."""

    images: Annotated[list[ImageRef], Field(min_length=1, max_length=16)] | None = Field(
        None, description="JSON form: the images to edit, in order (the mask applies to the first)."
    )
    mask: ImageRef | None = Field(
        None,
        description="JSON form: a PNG whose fully transparent areas mark where to edit; the "
        "size of the first image.",
    )
    input_fidelity: Literal["high", "low"] | None = Field(
        None, description="How closely to keep the input images' features (GPT image models)."
    )
    stream: bool | None = Field(
        None,
        description="`true`: answer Server-Sent Events (`image_edit.partial_image`, "
        "`image_edit.completed`, `error`) instead of JSON, as OpenAI does.",
    )
    partial_images: Annotated[int, Field(ge=0, le=3)] | None = Field(
        None,
        description="With `stream`: partial images to relay, where the upstream streams "
        "them (GPT image models).",
    )
    # Generation-only fields an edit does not take.
    image: SkipJsonSchema[None] = None
    moderation: SkipJsonSchema[None] = None


class VariationRequest(BaseModel):
    """`POST /v1/images/variations` (multipart): variations of the file `image`."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    model: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = Field(
        None, description="A model with `variations` in `GET /v1/models` (default `dall-e-2`)."
    )
    n: Annotated[int, Field(ge=1, le=100)] | None = Field(
        None, description="How many images (default 1); each model has its own `max_n`."
    )
    size: Annotated[str, StringConstraints(max_length=32)] | None = Field(
        None, description="`WxH`, fitted to the model's size rule.", examples=["256x256"]
    )
    response_format: Literal["url", "b64_json"] | None = None
    user: UserId | None = None
    webhook_url: Annotated[str, StringConstraints(min_length=1, max_length=2048)] | None = Field(
        None,
        description="Extension: an https URL that receives the job object when the job "
        "ends; makes the request asynchronous (202).",
    )


# --- response bodies ---------------------------------------------------------------------------
#
# What the API answers, as models: the views build (or, for the job object and the images
# response made by shared.results, validate) these, and api/openapi.py emits their JSON Schema
# as the document's components. A field typed ``X | Absent = None`` is left out of an answer
# when it does not apply (never ``null``); ``X | None`` may be ``null``.

Absent = SkipJsonSchema[None]

Unix = Annotated[int, Field(description="Unix time in seconds.")]
JobId = Annotated[str, Field(pattern=r"^imgjob_[0-9a-f]{24}$")]
Money = Annotated[str, Field(pattern=r"^-?[0-9]+\.[0-9]{6}$", examples=["0.020000"])]
Price = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?$", examples=["0.02", "0"])]
Size = Annotated[str, Field(pattern=r"^[0-9]+x[0-9]+$", examples=["1024x1024"])]
Health = Annotated[
    Literal[tuple(s.value for s in BreakerState)],  # type: ignore[valid-type]
    Field(description="State of the model's circuit breaker ('open': failing, not routed to)."),
]
ResponseFormat = Literal["url", "b64_json"]
# Base64 image bytes are not validated nor encoded by pydantic: shared.results keeps them as
# bytes (Base64Image) that shared.results.dumps splices into the JSON text.
B64 = Annotated[Any, WithJsonSchema({"type": "string", "contentEncoding": "base64"})]


class _Body(BaseModel):
    """A response body: no field beyond the declared ones."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def answer(self) -> dict[str, Any]:
        """The body as JSON-ready data, without the fields that were not given."""
        return self.model_dump(exclude_unset=True)


class _Open(_Body):
    model_config = ConfigDict(extra="allow", frozen=True)


class Image(_Body):
    """One image: its URL or its bytes."""

    model_config = ConfigDict(
        json_schema_extra={"anyOf": [{"required": ["url"]}, {"required": ["b64_json"]}]}
    )

    url: (
        Annotated[
            str,
            Field(
                json_schema_extra={"format": "uri"},
                description="Signed URL of the stored image; expires (one hour by default).",
            ),
        ]
        | Absent
    ) = None
    b64_json: B64 | Absent = None
    revised_prompt: str | Absent = None


class ImageUsage(_Open):
    """The upstream's token usage, as OpenAI reports it (GPT image models)."""

    input_tokens: int | Absent = None
    output_tokens: int | Absent = None
    total_tokens: int | Absent = None
    input_tokens_details: dict[str, Any] | Absent = None
    output_tokens_details: dict[str, Any] | Absent = None


class ImagesResponse(_Body):
    """OpenAI's images response, plus what was actually produced."""

    created: Unix
    data: list[Image]
    size: Annotated[Size, Field(description="The size produced, read from the image.")] | Absent = (
        None
    )
    output_format: Annotated[str, Field(examples=["png", "jpeg", "webp"])] | Absent = None
    quality: (
        Annotated[
            Literal["low", "medium", "high"],
            Field(description="The quality the upstream reports it used (GPT image models)."),
        ]
        | Absent
    ) = None
    background: (
        Annotated[
            Literal["transparent", "opaque"],
            Field(description="The background the upstream reports it made (GPT image models)."),
        ]
        | Absent
    ) = None
    usage: ImageUsage | Absent = None
    model: Annotated[str, Field(description="The model id the request named.")]
    served_by: Annotated[
        str | None,
        Field(description="Virtual models only: the real model that made the images."),
    ] = None


class ErrorBody(_Open):
    """OpenAI's error object, with the gateway's extra fields where they apply."""

    message: str
    type: Literal[tuple(sorted({c.error_type for c in ERROR_CLASSES}))]  # type: ignore[valid-type]
    param: str | None
    code: str | None
    job_id: (
        Annotated[JobId, Field(description="The job, on a 504 (fetch it later) or a 503.")] | Absent
    ) = None
    limit: Annotated[str, Field(description="The limit that was hit, on a 429.")] | Absent = None


class WebhookAttempt(_Open):
    attempt: Annotated[int, Field(ge=1)]
    at: Unix
    status: Annotated[int, Field(description="The receiver's HTTP status.")] | Absent = None
    error: str | Absent = None
    duration_ms: Annotated[int, Field(ge=0)] | Absent = None


class Webhook(_Body):
    url: str
    state: Literal["waiting", "pending", "retrying", "delivered", "failed", "disabled"]
    attempts: list[WebhookAttempt]


class Job(_Body):
    """An image generation job (asynchronous requests, and fetching a job)."""

    id: JobId
    object: Literal["image.generation.job"]
    status: Literal[tuple(s.value for s in JobStatus)]  # type: ignore[valid-type]
    created: Unix
    model: str
    expires_at: Annotated[Unix, Field(description="The job's deadline.")]
    finished: Unix | Absent = None
    attempt: Annotated[int, Field(ge=0, description="One more per claim and takeover.")]
    takeovers: Annotated[int, Field(ge=0, description="Runs taken over from a dead worker.")]
    charge: (
        Annotated[
            Money,
            Field(
                description="What the client pays for the job: reserved at admission "
                "(price per image x n) until it ends, then what was spent (images not "
                "delivered are refunded). Also the `x-imagegate-charge` header."
            ),
        ]
        | Absent
    ) = None
    served_by: str | None = None
    fallbacks: (
        Annotated[
            list[dict[str, Any]],
            Field(description="Virtual models: the candidates given up, with why."),
        ]
        | Absent
    ) = None
    result: Annotated[ImagesResponse, Field(description="When `succeeded`.")] | Absent = None
    error: (
        Annotated[ErrorBody, Field(description="When failed, timed out or canceled.")] | Absent
    ) = None
    status_code: (
        Annotated[int, Field(description="The HTTP status the synchronous request would have had.")]
        | Absent
    ) = None
    webhook: Webhook | Absent = None


class SizeRule(_Open):
    """How requested sizes are fitted to what the model makes."""

    kind: Literal[tuple(RULES)]  # type: ignore[valid-type]


class _ModelCommon(_Body):
    id: str
    object: Literal["model"]
    created: Unix
    owned_by: str
    description: str
    price_per_image: Annotated[
        Price, Field(description="One image at the default size and quality (see `pricing`).")
    ]
    pricing: Annotated[
        dict[str, Any],
        Field(
            description="How a request's price per image is worked out: `per_image`; "
            "`table` (quality -> size -> price, `*` for any) with `default_quality` (used "
            "for `auto` or no quality); or `per_megapixel` of the produced size with "
            "`base`, `included_megapixels`, `minimum`; `edit`: the form for edits. The "
            "charge of a request is in the `x-imagegate-charge` header."
        ),
    ]
    available: Annotated[bool, Field(description="Whether it can be used right now.")]


class RealModel(_ModelCommon):
    """A model served by one upstream family."""

    family: Annotated[str, Field(description="The upstream family serving it.")]
    size_rule: SizeRule
    default_size: Size
    max_n: Annotated[int, Field(ge=1)]
    max_prompt_length: Annotated[int, Field(ge=1)]
    response_formats: list[ResponseFormat]
    default_response_format: Annotated[
        ResponseFormat,
        Field(
            description="What the model answers without `response_format` "
            "(`b64_json` for GPT image models, as OpenAI does)."
        ),
    ]
    params: Annotated[
        list[str], Field(description="The optional request fields this model accepts.")
    ]
    max_reference_images: Annotated[
        int,
        Field(
            ge=0,
            description="How many images `POST /v1/images/edits` may send it (0: no edits).",
        ),
    ]
    mask: Annotated[bool, Field(description="Whether an edit may send it a `mask`.")]
    variations: Annotated[
        bool, Field(description="Whether it serves `POST /v1/images/variations`.")
    ]
    generations: Annotated[
        bool,
        Field(
            description="Whether it serves `POST /v1/images/generations` (false: an "
            "edits-only model, such as an inpainting one)."
        ),
    ] = True
    unavailable_reason: str | Absent = None
    virtual: Literal[False]
    health: Health


class Candidate(_Body):
    model: str
    weight: float
    params: Annotated[dict[str, Any], Field(description="Request fields it overrides.")]
    available: bool
    health: Health


class VirtualModel(_ModelCommon):
    """A gateway model that routes each request to one of its candidates."""

    virtual: Literal[True]
    candidates: list[Candidate]


class Model(RootModel[RealModel | VirtualModel]):
    """A model of the catalog, real or virtual."""

    def answer(self) -> dict[str, Any]:
        return self.root.answer()


class ModelList(_Body):
    object: Literal["list"]
    data: list[Model]


_COST = Field(
    description="What the upstreams charged for these images (only where the gateway "
    "shows costs: `IMAGEGATE_USAGE_SHOWS_COST`)."
)
_MARGIN = Field(description="`amount` less `cost`: the gateway's margin (with `cost`).")


class UsageTotal(_Body):
    model: str
    images: int
    amount: Money
    cost: Annotated[Money, _COST] | Absent = None
    margin: Annotated[Money, _MARGIN] | Absent = None


class UsageDay(_Body):
    day: Annotated[str, Field(json_schema_extra={"format": "date"})]
    model: str
    images: int
    amount: Money
    cost: Annotated[Money, _COST] | Absent = None
    margin: Annotated[Money, _MARGIN] | Absent = None


class UsageUserDay(_Body):
    day: Annotated[str, Field(json_schema_extra={"format": "date"})]
    user: Annotated[str, Field(description="The `user` the requests named.")]
    images: int
    amount: Money


class FreeImages(_Body):
    per_day: Annotated[int, Field(description="Free images the tier grants a UTC day.")]
    used: int
    remaining: int
    resets_at: Annotated[int, Field(description="Unix time of the next UTC midnight.")]


class Budget(_Body):
    period: Literal["day", "month"]
    cap: Annotated[Money | None, Field(description="The key's spending cap; null: none.")]
    spent: Money
    resets_at: Annotated[int, Field(description="Unix time the UTC period ends.")]


class TierModelLimit(_Body):
    model: Annotated[str, Field(description="A model id, real or virtual.")]
    per_minute: Annotated[int, Field(ge=0, description="Images per minute; 0: no limit.")]
    per_day: Annotated[int, Field(ge=0, description="Images per UTC day; 0: no limit.")]


class TierLimits(_Body):
    """What the key's tier allows (the catalog's `[tiers]`)."""

    requests_per_minute: Annotated[
        int, Field(ge=0, description="Generation calls per minute, any model; 0: no limit.")
    ]
    all_models: Annotated[
        bool, Field(description="Every model, without per-model limits beyond `models`.")
    ]
    models: Annotated[
        list[TierModelLimit], Field(description="The models the tier allows, with their limits.")
    ]


class Usage(_Body):
    object: Literal["usage"]
    key_id: str
    tier: str
    balance: Annotated[
        Money | Literal["unlimited"],
        Field(description="Currency units with 6 decimals, or `unlimited`."),
    ]
    limits: TierLimits | Absent = None
    data: Annotated[list[UsageDay], Field(description="By UTC day and model.")]
    totals: Annotated[list[UsageTotal], Field(description="By model.")]
    free_images: Annotated[
        FreeImages | None,
        Field(description="Today's free images of the tier, used before the balance."),
    ] = None
    budgets: Annotated[
        list[Budget], Field(description="Spending of this UTC day and month, and the caps.")
    ] = []
    users: Annotated[
        list[UsageUserDay],
        Field(description="By UTC day and end user (`user`); only with `group_by=user`."),
    ] = []


RESPONSE_MODELS: tuple[type[BaseModel], ...] = (ImagesResponse, Job, Model, ModelList, Usage)
"""The response bodies the document describes (with every model they refer to)."""
