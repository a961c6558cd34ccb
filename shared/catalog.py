"""The model catalog: provider families, models, prices, size rules and limits.

The catalog is a TOML file shipped with the package (``shared/catalog.toml``)
and replaceable by the operator (``IMAGEGATE_CATALOG_PATH``). Its shape::

    [families.<name>]
    queue = "openai"                 # Celery queue of this family's worker pool
    adapter = "openai"               # key of the adapter registry in workers/adapters
    base_url = "https://api.openai.com/v1"
    key_env = "OPENAI_API_KEY"       # env var holding the upstream key ("" = none needed)
    available = true                 # false: listed, but answers 503 with `unavailable_reason`
    max_concurrent = 24              # upstream jobs in flight per key (0 = no cap)
    worker_concurrency = 16          # jobs per worker process (default: planned, workers/pool.py)

    [[models]]
    id = "dall-e-3"                  # what clients send as `model`
    family = "openai"
    upstream = "dall-e-3"            # the upstream's own model name
    price = "0.040"                  # per image, in currency units (kept as integer micro-units);
                                     # or a table by quality x size, or per megapixel, with an
                                     # optional edit form (shared/pricing.py)
    cost = "0.040"                   # what the upstream charges per image, same forms
    token_prices = { input_text = "5.00", output_image = "40.00" }  # per 1M tokens (OpenAI)
    cost_per_second = "0.000975"     # where the upstream bills compute time (Replicate)
    allow_loss = false               # true: may be priced below its cost
    size_rule = { kind = "fixed", sizes = ["1024x1024", "1792x1024", "1024x1792"] }
    default_size = "1024x1024"
    max_n = 1
    max_prompt_length = 4000
    response_formats = ["url", "b64_json"]
    default_response_format = "url"  # without `response_format` (GPT image models: "b64_json")
    params = ["quality", "style", "user"]           # optional request fields it accepts
    choices = { quality = ["standard", "hd"] }      # allowed values, where narrower than the API's
    options = { response_format = "b64_json" }      # adapter-specific settings
    max_reference_images = 1         # images an edit may send (default: 1 if params has
                                     # "image", else 0 = no POST /v1/images/edits)
    mask = true                      # an edit may send a mask (default false)
    variations = true                # serves POST /v1/images/variations (default false)
    generations = false              # edits only: no POST /v1/images/generations (default true)

    [[virtual_models]]
    id = "image-turbo"               # routed per request to one of its candidates
    price = "0.005"                  # its own price (any form; read at the size the chosen
                                     # candidate produces); tier limits use this id too
    allow_loss = false               # true: may cost more (upstream) than the client pays
    candidates = [{ model = "flux-schnell", weight = 4, params = { output_format = "png" } }]

    [accounts]
    default_tier = "free"
    requests_per_minute = 60         # account-level generation calls per minute

    [tiers.free]
    requests_per_minute = 60         # optional override; 0 = no limit
    limits = [{ models = ["flux-schnell"], per_minute = 1, per_day = 5 }]   # in images
    # all_models = true              # every model, no per-model limits
    free_images = { per_day = 5, models = ["flux-schnell"] }  # free before the balance
                                     # (models = [] or absent: every model of the tier)
    per_user = { per_minute = 2, per_day = 20 }  # images per end user (OpenAI's `user`)

Per-minute limits are sliding (any 60 seconds), per-day limits and free images
count per UTC day (see shared/billing.py).

Loading validates everything (an unknown key such as ``max_concurent``, an
unknown family, a bad size rule or price) and fails loudly, naming the file,
the entry and the key: a broken catalog must stop a deployment, not a request.
So does a price below a cost: a model priced below its own cost, or a virtual
model below a candidate's, for any of a grid of requests (quality, size or
ratio, edit; :func:`shared.pricing.sample_queries`), unless ``allow_loss``.
Each kind of table is a pydantic model that refuses keys it does not know
(``FamilyEntry``, ``ModelEntry``, ...); what entries say about each other (a
model's family exists, ids are unique) is checked when the catalog is built.
A model's ``options`` table is the adapter's business and is kept as a dict.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from shared.errors import InvalidRequest, NotFound
from shared.pricing import (
    MICROS_PER_UNIT,
    QUALITY_LEVELS,
    Money,
    PriceEntry,
    PriceQuery,
    PriceSpec,
    Pricing,
    PricingError,
    TokenPrices,
    TokenPricesEntry,
    money,
    query_for,
    sample_queries,
)
from shared.sizing import Size, SizeRule, parse_size, rule_from_spec

__all__ = ["MICROS_PER_UNIT", "QUALITY_LEVELS"]  # re-exported: billing, api.validation

# Optional request fields a model may accept; `prompt`, `model`, `n`, `size` and
# `response_format` are always accepted (response_format is the gateway's own job).
OPTIONAL_PARAMS = frozenset(
    {
        "quality",
        "style",
        "output_format",
        "output_compression",
        "background",
        "moderation",
        "user",
        "aspect_ratio",
        "seed",
        "image",
        "input_fidelity",
    }
)
RESPONSE_FORMATS = ("url", "b64_json")
# OpenAI's edits take up to 16 images; no upstream takes more.
MAX_REFERENCE_IMAGES = 16

# OpenAI clients' tuning fields: accepted by every model unless strict mode is on,
# and mapped to what the model has or ignored (api/validation.py, `fit_tuning`).
TUNING_PARAMS = ("user", "quality", "style")


class CatalogError(ValueError):
    """The catalog file is invalid."""


@dataclass(frozen=True)
class Family:
    name: str
    queue: str
    adapter: str
    base_url: str
    key_env: str | None
    available: bool = True
    unavailable_reason: str = ""
    max_concurrent: int = 0  # upstream jobs in flight per upstream key (0 = no cap)
    worker_concurrency: int = 0  # jobs per worker process (0 = planned: workers/pool.py)


@dataclass(frozen=True)
class Model:
    id: str
    family: str
    upstream: str
    pricing: Pricing  # what the client pays per image (shared.pricing)
    size_rule: SizeRule
    default_size: Size
    max_n: int
    max_prompt_length: int
    response_formats: tuple[str, ...]
    params: frozenset[str]
    default_response_format: str = "url"
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    owned_by: str = ""
    description: str = ""
    # Edits (POST /v1/images/edits): how many reference images the model takes (0: no
    # edits), and whether it takes a mask; variations (POST /v1/images/variations).
    max_reference_images: int = 0
    mask: bool = False
    variations: bool = False
    # What the upstream charges us per image (None: unknown), its prices per million
    # tokens where it bills tokens, and whether the catalog may price it below its cost.
    cost: Pricing | None = None
    token_prices: TokenPrices | None = None
    cost_per_second: int | None = None  # micro-units per second of upstream compute
    allow_loss: bool = False

    def query(self, request: Mapping[str, Any]) -> PriceQuery:
        """The price query of a job request for this model: the size it will produce."""
        return query_for(self.size_rule, self.default_size, request)

    def unit_price(self, request: Mapping[str, Any]) -> int:
        """Micro-units the client pays per image of this job request."""
        return self.pricing.unit(self.query(request))

    def unit_cost(self, request: Mapping[str, Any]) -> int | None:
        """Micro-units the upstream charges per image of this job request (None: unknown)."""
        return None if self.cost is None else self.cost.unit(self.query(request))

    @property
    def price_micros(self) -> int:
        """The price of one image at the default size and quality (``GET /v1/models``)."""
        return self.unit_price({})

    generations: bool = True  # False: an edits-only model (inpainting), no text-to-image

    @property
    def price(self) -> Decimal:
        return Decimal(self.price_micros) / MICROS_PER_UNIT

    @property
    def edits(self) -> bool:
        """Whether the model serves ``POST /v1/images/edits`` (it takes reference images)."""
        return self.max_reference_images > 0


@dataclass(frozen=True)
class Candidate:
    """A real model a virtual model may route to."""

    model: str
    weight: float = 1.0
    overrides: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class VirtualModel:
    """A quality level, not a vendor: routed per request to one of its candidates.

    Tier limits and the price apply to the virtual model's own id.
    """

    id: str
    candidates: tuple[Candidate, ...]
    pricing: Pricing
    description: str = ""
    owned_by: str = "imagegate"
    allow_loss: bool = False  # may route to a candidate costing more than the client pays

    def unit_price(self, model: Model, request: Mapping[str, Any]) -> int:
        """Micro-units per image when ``model`` serves ``request`` (its route's request):
        the size that model will produce."""
        return self.pricing.unit(model.query(request))

    @property
    def price_micros(self) -> int:
        """The price of one image at 1024x1024 and the default quality."""
        return self.pricing.unit(PriceQuery(size=Size(1024, 1024)))

    @property
    def price(self) -> Decimal:
        return Decimal(self.price_micros) / MICROS_PER_UNIT


@dataclass(frozen=True)
class ModelLimit:
    """Images of one model a tier may generate per minute and per UTC day (0 = no limit)."""

    per_minute: int = 0
    per_day: int = 0


@dataclass(frozen=True)
class FreeImages:
    """Images a tier grants free per UTC day, used before the balance (seed 000: Free)."""

    per_day: int = 0  # 0 = none
    models: frozenset[str] = frozenset()  # empty: every model of the tier

    def covers(self, model_id: str) -> bool:
        return self.per_day > 0 and (not self.models or model_id in self.models)


@dataclass(frozen=True)
class Tier:
    name: str
    description: str
    requests_per_minute: int  # account-level generation calls per minute; 0 = no limit
    limits: Mapping[str, ModelLimit]  # model id -> limit
    all_models: bool = False  # every model, without per-model limits
    free_images: FreeImages = FreeImages()
    per_user: ModelLimit = ModelLimit()  # images per end user (`user`), all models together

    def allows(self, model_id: str) -> bool:
        return self.all_models or model_id in self.limits

    def limit_for(self, model_id: str) -> ModelLimit:
        return self.limits.get(model_id, ModelLimit())


@dataclass(frozen=True)
class Catalog:
    families: Mapping[str, Family]
    models: Mapping[str, Model]
    tiers: Mapping[str, Tier] = field(default_factory=lambda: MappingProxyType({}))
    default_tier: str = ""
    virtual: Mapping[str, VirtualModel] = field(default_factory=lambda: MappingProxyType({}))

    def resolve(self, model_id: str) -> Model | VirtualModel:
        """A real or a virtual model by id; NotFound naming `model` otherwise."""
        if model_id in self.virtual:
            return self.virtual[model_id]
        return self.model(model_id)

    def tier(self, name: str) -> Tier:
        try:
            return self.tiers[name]
        except KeyError:
            raise NotFound(
                f"There is no tier '{name}'.", param="tier", code="tier_not_found"
            ) from None

    def tiers_allowing(self, model_id: str) -> list[str]:
        return [t.name for t in self.tiers.values() if t.allows(model_id)]

    def model(self, model_id: str) -> Model:
        try:
            return self.models[model_id]
        except KeyError:
            raise NotFound(
                f"The model '{model_id}' does not exist. GET /v1/models lists the models "
                "this gateway serves.",
                param="model",
                code="model_not_found",
            ) from None

    def family_of(self, model: Model) -> Family:
        return self.families[model.family]

    def key_env_names(self) -> frozenset[str]:
        return frozenset(f.key_env for f in self.families.values() if f.key_env)


DEFAULT_CATALOG = "catalog.toml"


def default_catalog_path() -> Path:
    return Path(str(resources.files("shared").joinpath(DEFAULT_CATALOG)))


def load_catalog(path: str | Path | None = None, overlays: tuple[str, ...] = ()) -> Catalog:
    """Load the catalog at ``path`` (default: the shipped one) with ``overlays`` on top.

    An overlay is a TOML file of the same shape: its families replace or add
    families by name, its models replace or add models by id. Operators use it
    to add a model without copying the whole shipped catalog. Tiers and virtual
    models merge the same way, the ``[accounts]`` table key by key. Each file is
    checked on its own first, so an error names the file it is in.
    """
    path = Path(path) if path else default_catalog_path()
    merged = _read(path)
    for overlay in overlays:
        merged = merged.merged(_read(Path(overlay)))
    return merged.build(" + ".join([str(path), *overlays]))


def parse_catalog(raw: Mapping[str, Any], *, source: str = "<catalog>") -> Catalog:
    """The catalog of an already-parsed TOML document; ``source`` names it in errors."""
    return _validated(raw, source).build(source)


def _read(path: Path) -> CatalogFile:
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CatalogError(f"cannot read catalog {path}: {exc}") from exc
    return _validated(raw, str(path))


# --- the file's tables, one model each -----------------------------------------------


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _size(value: Any) -> Size:
    try:
        return parse_size(value)
    except InvalidRequest as exc:
        raise ValueError(str(exc)) from None


class FamilyEntry(_Entry):
    """A ``[families.<name>]`` table."""

    queue: str = ""  # "": the family's name
    adapter: str = ""  # "": the family's name
    base_url: str = ""
    key_env: str = ""  # "": the family needs no key
    available: bool = True
    unavailable_reason: str = ""
    max_concurrent: int = 0
    worker_concurrency: int = 0

    def build(self, name: str) -> Family:
        return Family(
            name=name,
            queue=self.queue or name,
            adapter=self.adapter or name,
            base_url=self.base_url.rstrip("/"),
            key_env=self.key_env or None,
            available=self.available,
            unavailable_reason=self.unavailable_reason,
            max_concurrent=self.max_concurrent,
            worker_concurrency=self.worker_concurrency,
        )


class ModelEntry(_Entry):
    """A ``[[models]]`` entry."""

    id: str
    family: str
    upstream: str = ""  # "": the id
    price: PriceSpec = PriceEntry(per_image=0)  # shared/pricing.py: flat, table, per megapixel
    cost: PriceSpec | None = None  # what the upstream charges per image (None: unknown)
    token_prices: TokenPricesEntry | None = None  # per million tokens, where it bills tokens
    cost_per_second: Money | None = None  # where it bills compute time (Replicate)
    allow_loss: bool = False  # may be priced below its cost (else refused at load)
    size_rule: Annotated[Any, BeforeValidator(rule_from_spec)]  # a SizeRule once validated
    default_size: Annotated[Size, BeforeValidator(_size)] = Size(1024, 1024)
    max_n: int = Field(1, ge=1)
    max_prompt_length: int = Field(4000, ge=1)
    response_formats: tuple[Literal["url", "b64_json"], ...] = Field(RESPONSE_FORMATS, min_length=1)
    default_response_format: str = "url"
    params: frozenset[str] = frozenset()
    choices: dict[str, tuple[str, ...]] = {}
    options: dict[str, Any] = {}  # the adapter's own settings
    owned_by: str = ""  # "": the family
    description: str = ""
    # Reference images an edit may send (None: 1 if `image` is in params, else 0),
    # whether an edit may send a mask, and whether the model makes variations.
    max_reference_images: int | None = Field(None, ge=0, le=MAX_REFERENCE_IMAGES)
    mask: bool = False
    variations: bool = False
    generations: bool = True  # false: edits only (an inpainting model)

    @field_validator("params")
    @classmethod
    def _known_params(cls, params: frozenset[str]) -> frozenset[str]:
        if unknown := params - OPTIONAL_PARAMS:
            raise ValueError(f"unknown params {sorted(unknown)}")
        return params

    @model_validator(mode="after")
    def _consistent(self) -> ModelEntry:
        if self.default_response_format not in self.response_formats:
            raise ValueError("default_response_format must be one of response_formats")
        if set(self.choices) - self.params:
            raise ValueError("choices given for params the model does not accept")
        if self.mask and self.references == 0:
            raise ValueError("mask = true needs max_reference_images >= 1")
        if not self.generations and self.references == 0 and not self.variations:
            raise ValueError("generations = false needs edits (max_reference_images >= 1)")
        return self

    @property
    def references(self) -> int:
        if self.max_reference_images is not None:
            return self.max_reference_images
        return 1 if "image" in self.params else 0

    def build(self) -> Model:
        return Model(
            id=self.id,
            family=self.family,
            upstream=self.upstream or self.id,
            pricing=self.price.pricing(self.default_size),
            size_rule=self.size_rule,
            default_size=self.default_size,
            max_n=self.max_n,
            max_prompt_length=self.max_prompt_length,
            response_formats=self.response_formats,
            params=self.params,
            default_response_format=self.default_response_format,
            choices=MappingProxyType(dict(self.choices)),
            options=MappingProxyType(dict(self.options)),
            owned_by=self.owned_by or self.family,
            description=self.description,
            max_reference_images=self.references,
            mask=self.mask,
            variations=self.variations,
            cost=self.cost.pricing(self.default_size) if self.cost is not None else None,
            token_prices=self.token_prices.build() if self.token_prices else None,
            cost_per_second=self.cost_per_second,
            allow_loss=self.allow_loss,
            generations=self.generations,
        )


class CandidateEntry(_Entry):
    """One of a virtual model's ``candidates``."""

    model: str
    weight: float = Field(1.0, gt=0)
    params: dict[str, Any] = {}  # request fields set when this candidate serves

    @field_validator("params")
    @classmethod
    def _known_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        if unknown := set(params) - OPTIONAL_PARAMS:
            raise ValueError(f"unknown override params {sorted(unknown)}")
        return params


class VirtualEntry(_Entry):
    """A ``[[virtual_models]]`` entry."""

    id: str
    candidates: list[CandidateEntry] = Field(min_length=1)
    price: PriceSpec = PriceEntry(per_image=0)
    description: str = ""
    owned_by: str = "imagegate"
    allow_loss: bool = False

    def build(self) -> VirtualModel:
        return VirtualModel(
            id=self.id,
            candidates=tuple(
                Candidate(c.model, c.weight, MappingProxyType(dict(c.params)))
                for c in self.candidates
            ),
            pricing=self.price.pricing(),
            description=self.description,
            owned_by=self.owned_by,
            allow_loss=self.allow_loss,
        )


class LimitEntry(_Entry):
    """One of a tier's ``limits``: images per minute and per UTC day (0 = no limit)."""

    models: list[str]
    per_minute: int = Field(0, ge=0)
    per_day: int = Field(0, ge=0)


class FreeImagesEntry(_Entry):
    """A tier's ``free_images``: images per UTC day used before the balance."""

    per_day: int = Field(ge=0)
    models: list[str] = []  # empty: every model the tier allows


class PerUserEntry(_Entry):
    """A tier's ``per_user``: images one end user (``user``) may get, all models together."""

    per_minute: int = Field(0, ge=0)
    per_day: int = Field(0, ge=0)


class TierEntry(_Entry):
    """A ``[tiers.<name>]`` table."""

    description: str = ""
    requests_per_minute: int | None = Field(None, ge=0)  # None: the [accounts] value
    limits: list[LimitEntry] = []
    all_models: bool = False
    free_images: FreeImagesEntry | None = None
    per_user: PerUserEntry | None = None

    def build(self, name: str, routable: Set[str], default_rpm: int, where: str) -> Tier:
        limits: dict[str, ModelLimit] = {}
        for entry in self.limits:
            for model_id in entry.models:
                if model_id not in routable:
                    raise CatalogError(f"{where}: unknown model '{model_id}'")
                if model_id in limits:
                    raise CatalogError(f"{where}: model '{model_id}' is limited twice")
                limits[model_id] = ModelLimit(entry.per_minute, entry.per_day)
        rpm = self.requests_per_minute
        free = FreeImages()
        if self.free_images is not None:
            for model_id in self.free_images.models:
                if model_id not in limits and not (self.all_models and model_id in routable):
                    raise CatalogError(
                        f"{where}: free_images: model '{model_id}' is not one of the tier's"
                    )
            free = FreeImages(self.free_images.per_day, frozenset(self.free_images.models))
        per_user = ModelLimit()
        if self.per_user is not None:
            per_user = ModelLimit(self.per_user.per_minute, self.per_user.per_day)
        return Tier(
            name=name,
            description=self.description,
            requests_per_minute=default_rpm if rpm is None else rpm,
            limits=MappingProxyType(limits),
            all_models=self.all_models,
            free_images=free,
            per_user=per_user,
        )


class AccountsEntry(_Entry):
    """The ``[accounts]`` table."""

    default_tier: str | None = None  # None: the first tier
    requests_per_minute: int = Field(60, ge=0)


class CatalogFile(_Entry):
    """A whole catalog file (or overlay), checked entry by entry."""

    families: dict[str, FamilyEntry] = {}
    models: list[ModelEntry] = []
    virtual_models: list[VirtualEntry] = []
    accounts: AccountsEntry = AccountsEntry()
    tiers: dict[str, TierEntry] = {}

    def merged(self, overlay: CatalogFile) -> CatalogFile:
        """This file with ``overlay`` on top (see :func:`load_catalog`)."""
        accounts = {
            **self.accounts.model_dump(exclude_unset=True),
            **overlay.accounts.model_dump(exclude_unset=True),
        }
        return CatalogFile.model_construct(
            families={**self.families, **overlay.families},
            models=list({m.id: m for m in [*self.models, *overlay.models]}.values()),
            virtual_models=list(
                {v.id: v for v in [*self.virtual_models, *overlay.virtual_models]}.values()
            ),
            accounts=AccountsEntry(**accounts),
            tiers={**self.tiers, **overlay.tiers},
        )

    def build(self, source: str) -> Catalog:
        """The catalog, once what entries say about each other holds."""
        families = {name: entry.build(name) for name, entry in self.families.items()}
        models: dict[str, Model] = {}
        for index, entry in enumerate(self.models):
            if entry.family not in families:
                raise CatalogError(
                    f"{source}: models[{index}] ({entry.id}): unknown family '{entry.family}'"
                )
            if entry.id in models:
                raise CatalogError(f"{source}: model '{entry.id}' is defined twice")
            models[entry.id] = entry.build()
        if not models:
            raise CatalogError(f"{source}: no models defined")
        virtual: dict[str, VirtualModel] = {}
        for index, vm in enumerate(self.virtual_models):
            for candidate in vm.candidates:
                if candidate.model not in models:
                    raise CatalogError(
                        f"{source}: virtual_models[{index}] ({vm.id}): "
                        f"unknown candidate model '{candidate.model}'"
                    )
            if vm.id in virtual or vm.id in models:
                raise CatalogError(f"{source}: model id '{vm.id}' is defined twice")
            virtual[vm.id] = vm.build()
        for index, entry in enumerate(self.models):
            _check_model_losses(models[entry.id], f"{source}: models[{index}] ({entry.id})")
        for index, vm in enumerate(self.virtual_models):
            _check_virtual_losses(
                virtual[vm.id], models, f"{source}: virtual_models[{index}] ({vm.id})"
            )
        routable = models.keys() | virtual.keys()
        rpm = self.accounts.requests_per_minute
        tiers = {
            name: entry.build(name, routable, rpm, f"{source}: tiers.{name}")
            for name, entry in self.tiers.items()
        }
        default_tier = self.accounts.default_tier
        if default_tier is None:
            default_tier = next(iter(tiers), "")
        if tiers and default_tier not in tiers:
            raise CatalogError(f"{source}: accounts.default_tier '{default_tier}' is not a tier")
        return Catalog(
            families=MappingProxyType(families),
            models=MappingProxyType(models),
            tiers=MappingProxyType(tiers),
            default_tier=default_tier,
            virtual=MappingProxyType(virtual),
        )


# --- no silent loss: a price below a cost is refused unless allow_loss ---------------


def _sample_queries(
    model: Model, overrides: Mapping[str, Any] | None = None, *, edits: bool = True
) -> list[PriceQuery]:
    """Price queries of requests a client may send ``model`` (with a virtual model's
    candidate ``overrides``), differing in what prices depend on."""
    overrides = overrides or {}
    if "quality" in overrides:
        qualities: list[str | None] = [overrides["quality"]]
    elif "quality" in model.params:
        qualities = [None, *model.choices.get("quality", ("low", "standard", "medium", "hd"))]
        qualities += [q for q in ("high",) if "quality" not in model.choices]
    else:
        qualities = [None]
    return sample_queries(
        model.size_rule,
        model.default_size,
        qualities,
        edits=edits and model.edits,
        fixed={k: v for k, v in overrides.items() if k in ("size", "aspect_ratio")},
    )


def _check_model_losses(model: Model, where: str) -> None:
    if model.cost is None or model.allow_loss:
        return
    for query in _sample_queries(model):
        try:
            price, cost = model.pricing.unit(query), model.cost.unit(query)
        except PricingError as exc:
            raise CatalogError(f"{where}: {exc} ({query.describe()})") from None
        if price < cost:
            raise CatalogError(
                f"{where}: priced {money(price)} per image, below its upstream cost "
                f"{money(cost)} ({query.describe()}); raise the price or set allow_loss = true"
            )


def _check_virtual_losses(vm: VirtualModel, models: Mapping[str, Model], where: str) -> None:
    if vm.allow_loss:
        return
    for candidate in vm.candidates:
        model = models[candidate.model]
        if model.cost is None:
            continue
        for query in _sample_queries(model, candidate.overrides, edits=False):
            try:
                price, cost = vm.pricing.unit(query), model.cost.unit(query)
            except PricingError as exc:
                raise CatalogError(f"{where}: {exc} ({query.describe()})") from None
            if price < cost:
                raise CatalogError(
                    f"{where}: priced {money(price)} per image, below the cost "
                    f"{money(cost)} of its candidate '{model.id}' ({query.describe()}); "
                    "raise the price or set allow_loss = true"
                )


# --- errors that name the file, the entry and the key ---------------------------------


def _validated(raw: Mapping[str, Any], source: str) -> CatalogFile:
    try:
        return CatalogFile.model_validate(raw)
    except ValidationError as exc:
        lines = [_explain(error, raw, source) for error in exc.errors()]
        raise CatalogError("\n".join(lines)) from None


def _explain(error: Any, raw: Mapping[str, Any], source: str) -> str:
    """One pydantic error as ``<file>: models[3] (dall-e-3): <what is wrong>``."""
    loc = tuple(error["loc"])
    if error["type"] == "extra_forbidden":
        key = str(loc[-1])
        known = _keys_at(loc[:-1])
        near = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean '{near[0]}'?" if near else f"known keys: {', '.join(known)}"
        return _where(source, raw, loc[:-1]) + f"unknown key '{key}' ({hint})"
    ctx = error.get("ctx") or {}
    message = str(ctx["error"]) if error["type"] == "value_error" else error["msg"]
    return _where(source, raw, loc) + message


def _where(source: str, raw: Any, loc: tuple[Any, ...]) -> str:
    """``source: families.openai: `` or ``source: models[3] (dall-e-3).max_n: ``."""
    path, node = "", raw
    for part in loc:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
        if isinstance(part, int):
            name = node.get("id") or node.get("model") if isinstance(node, Mapping) else None
            path += f"[{part}]" + (f" ({name})" if name else "")
        else:
            path += f".{part}" if path else str(part)
    return f"{source}: {path}: " if path else f"{source}: "


def _keys_at(loc: tuple[Any, ...]) -> list[str]:
    """The keys the table at ``loc`` may have: its model's fields."""
    model: type[BaseModel] = CatalogFile
    for part in loc:
        if isinstance(part, str) and part in model.model_fields:
            inner = _model_in(model.model_fields[part].annotation)
            if inner is None:
                return []
            model = inner
    return list(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if found := _model_in(arg):
            return found
    return None
