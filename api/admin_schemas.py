"""Request and response bodies of the admin API (``/admin/v1``), as pydantic models.

Requests are validated strictly (unknown fields are a 400 naming them); the
responses are what :mod:`api.openapi` documents. Money is a string with 6
decimals, as in ``GET /v1/usage``; times are unix seconds.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from api.schemas import Health, JobId, Money, Price
from shared.jobs import JobStatus

# Text an operator types that the console shows back: printable, no control characters.
_NO_CONTROL = r"[^\x00-\x1f\x7f-\x9f\u2028\u2029]"
_PRINTABLE = f"^{_NO_CONTROL}*$"
# ... and not blank: one character that is neither a control character nor a space.
_SOME_TEXT = rf"^{_NO_CONTROL}*[^\s\x00-\x1f\x7f-\x9f\u2028\u2029]{_NO_CONTROL}*$"
Name = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=_SOME_TEXT)]
Reason = Annotated[str, StringConstraints(min_length=1, max_length=500, pattern=_SOME_TEXT)]
MetaKey = Annotated[
    str, StringConstraints(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_.:-]+$")
]
MetaValue = Annotated[str, StringConstraints(max_length=200, pattern=_PRINTABLE)]
Metadata = Annotated[
    dict[MetaKey, MetaValue],
    Field(
        max_length=20,
        description="Your own labels: up to 20 keys of `A-Za-z0-9_.:-`.",
        json_schema_extra={"additionalProperties": False},
    ),
]
ModelId = Annotated[str, StringConstraints(min_length=1, max_length=200)]
AllowedModels = Annotated[
    list[ModelId],
    Field(
        max_length=100,
        description="Models (real or virtual) the key may use, on top of its tier's; "
        "empty: every model of the tier.",
    ),
]
Expires = Annotated[
    int,
    Field(ge=0, le=32503680000, description="Unix seconds after which the key is refused "
          "(401 `expired_api_key`); 0: never."),
]  # fmt: skip
Amount = Annotated[
    str,
    StringConstraints(pattern=r"^-?[0-9]{1,10}(\.[0-9]{1,6})?$"),
    Field(examples=["10.00"], description="Currency units, at most 6 decimals."),
]
Unix = Annotated[float, Field(ge=0)]
KeyId = Annotated[str, Field(pattern=r"^key_[0-9a-f]{16}$")]
Balance = Annotated[
    Money | Literal["unlimited"],
    Field(description="Currency units with 6 decimals, or `unlimited`."),
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class KeyCreate(_Request):
    """A new customer API key; the answer holds its secret, shown this once."""

    name: Name
    tier: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = Field(
        None, description="A tier of the catalog (default: the catalog's default tier)."
    )
    balance: Amount | Literal["unlimited"] = Field(
        "0", description="Starting balance (>= 0), or `unlimited` (no balance)."
    )
    metadata: Metadata = Field(default_factory=dict)
    allowed_models: AllowedModels = Field(default_factory=list)
    expires: Expires = 0


class KeyUpdate(_Request):
    """What to change; a field left out is unchanged."""

    name: Name | None = None
    tier: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = None
    metadata: Metadata | None = None
    allowed_models: AllowedModels | None = None
    expires: Expires | None = None


class BalanceChangeRequest(_Request):
    """A top-up (positive `amount`) or an adjustment (either sign), with why."""

    amount: Amount
    reason: Reason


# --- responses ----------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def answer(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)


class Me(_Body):
    object: Literal["admin_key"]
    id: str
    name: str
    scope: Literal["read", "write"]


class ApiKeyInfo(_Body):
    object: Literal["api_key"]
    id: str
    name: str
    tier: str
    created: int
    revoked: bool
    expired: bool
    unlimited: bool
    strict_params: bool
    metadata: dict[str, str]
    allowed_models: list[str]
    expires: int
    balance: Balance


class ApiKeyCreated(ApiKeyInfo):
    key: Annotated[str, Field(description="The key itself (`ig-...`): shown only this once.")]


class ApiKeyList(_Body):
    object: Literal["list"]
    data: list[ApiKeyInfo]
    next_cursor: Annotated[
        str | None, Field(description="Pass as `cursor` for the next page; null at the end.")
    ]


class BalanceChangeAnswer(_Body):
    object: Literal["balance_change"]
    key_id: str
    kind: Literal["topup", "adjust"]
    amount: Money
    reason: str
    balance: Money
    ledger_entry: str
    replayed: Annotated[
        bool, Field(description="True when this answers a retry (same `Idempotency-Key`).")
    ]


_COST = "What the upstreams charged for these images, where it was known (shared.pricing)."
_MARGIN = "`amount` less `cost`: what the gateway kept."


class UsageRow(_Body):
    key_id: str
    day: Annotated[str, Field(json_schema_extra={"format": "date"})]
    model: str
    images: int
    amount: Money
    cost: Annotated[Money, Field(description=_COST)]
    margin: Annotated[Money, Field(description=_MARGIN)]


class UsageSum(_Body):
    name: str
    images: int
    amount: Money
    cost: Annotated[Money, Field(description=_COST)]
    margin: Annotated[Money, Field(description=_MARGIN)]


class UsageReport(_Body):
    object: Literal["usage_report"]
    data: Annotated[list[UsageRow], Field(description="By key, UTC day and model.")]
    by_key: list[UsageSum]
    by_model: list[UsageSum]
    by_day: list[UsageSum]


class JobSummary(_Body):
    id: JobId
    key_id: str
    model: str
    served_by: str | None
    status: Literal[tuple(s.value for s in JobStatus)]  # type: ignore[valid-type]
    created: Unix
    finished: Unix | None
    n: int
    charged: Money
    settled: Money | None
    refunded: Money | None


class JobSearch(_Body):
    object: Literal["list"]
    data: list[JobSummary]
    next_cursor: str | None


class TimelineEvent(_Body):
    at: Unix | None
    event: Literal[
        "admitted", "queued", "claimed", "fallback", "upstream_attempt", "stored",
        "succeeded", "failed", "timed_out", "canceled", "settled", "webhook_attempt",
    ]  # fmt: skip
    detail: dict[str, Any]


class JobTimeline(JobSummary):
    object: Literal["admin.job"]
    attempt: int
    takeovers: int
    worker: str | None
    deadline: Unix
    request: dict[str, Any]
    error: dict[str, Any] | None
    timeline: list[TimelineEvent]


class Breaker(_Body):
    state: Health
    failures: int
    retry_at: Unix | None


class Capacity(_Body):
    per_key_limit: Annotated[int, Field(description="Upstream jobs per upstream key; 0: no cap.")]
    in_flight: Annotated[int, Field(description="Upstream slots held right now.")]


class AdminModel(_Body):
    id: str
    virtual: bool
    family: str | None
    price_per_image: Price
    available: bool
    unavailable_reason: str | None
    breaker: Breaker | None
    capacity: Capacity | None
    candidates: list[str]


class AdminModelList(_Body):
    object: Literal["list"]
    data: list[AdminModel]


class FamilyWorkers(_Body):
    family: str
    queue: str
    workers: Annotated[list[str], Field(description="Live worker processes (node:pid).")]
    queue_depth: Annotated[
        int | None, Field(description="Tasks waiting in the queue; null when not measurable.")
    ]


class WorkerReport(_Body):
    object: Literal["list"]
    data: list[FamilyWorkers]


class ModelSeries(_Body):
    jobs: list[int]
    errors: Annotated[list[int], Field(description="Jobs that failed or timed out.")]
    images: list[int]
    images_per_minute: list[float]
    error_rate: Annotated[list[float | None], Field(description="null: no jobs then.")]
    p50: Annotated[
        list[float | None],
        Field(description="Seconds from admission to the end (upper bound of a histogram "
              "bucket); null: no jobs then."),
    ]  # fmt: skip
    p95: list[float | None]


class JobStats(_Body):
    object: Literal["job_stats"]
    window: Literal["hour", "day"]
    step: Annotated[int, Field(description="Seconds per point: 60 (hour) or 3600 (day).")]
    times: Annotated[list[int], Field(description="Unix start of each point, oldest first.")]
    models: dict[str, ModelSeries]


class ConsoleSignIn(_Request):
    """Sign in to the operator console (``/console``) with an admin key."""

    key: Annotated[str, StringConstraints(min_length=1, max_length=200)]


class ConsoleAdmin(_Body):
    id: str
    name: str
    scope: Literal["read", "write"]


class ConsoleSession(_Body):
    object: Literal["console.session"]
    admin: Annotated[ConsoleAdmin | None, Field(description="null: not signed in.")]
    csrf_token: Annotated[
        str | None, Field(description="Send it as `X-CSRF-Token` on every admin API write.")
    ]
    idle_timeout_seconds: int | None = None


class ConsoleSignedOut(_Body):
    object: Literal["console.session"]
    signed_out: Literal[True]


class AuditEntry(_Body):
    id: str
    ts: Unix
    admin: str
    action: str
    target: str
    detail: dict[str, Any]
    request_id: str


class AuditList(_Body):
    object: Literal["list"]
    data: list[AuditEntry]
    next_cursor: str | None


ADMIN_RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    Me, ApiKeyInfo, ApiKeyCreated, ApiKeyList, BalanceChangeAnswer, UsageReport, JobSearch,
    JobTimeline, AdminModelList, WorkerReport, AuditList, JobStats, ConsoleSession,
    ConsoleSignedOut,
)  # fmt: skip
ADMIN_REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    KeyCreate, KeyUpdate, BalanceChangeRequest, ConsoleSignIn,
)  # fmt: skip
