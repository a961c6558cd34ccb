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
    price = "0.040"                  # per image, in currency units (kept as integer micro-units)
    size_rule = { kind = "fixed", sizes = ["1024x1024", "1792x1024", "1024x1792"] }
    default_size = "1024x1024"
    max_n = 1
    max_prompt_length = 4000
    response_formats = ["url", "b64_json"]
    default_response_format = "url"  # without `response_format` (GPT image models: "b64_json")
    params = ["quality", "style", "user"]           # optional request fields it accepts
    choices = { quality = ["standard", "hd"] }      # allowed values, where narrower than the API's
    options = { response_format = "b64_json" }      # adapter-specific settings

    [[virtual_models]]
    id = "image-turbo"               # routed per request to one of its candidates
    price = "0.005"                  # its own price; tier limits use this id too
    candidates = [{ model = "flux-schnell", weight = 4, params = { output_format = "png" } }]

    [accounts]
    default_tier = "free"
    requests_per_minute = 60         # account-level generation calls per minute

    [tiers.free]
    requests_per_minute = 60         # optional override; 0 = no limit
    limits = [{ models = ["flux-schnell"], per_minute = 1, per_day = 5 }]   # in images
    # all_models = true              # every model, no per-model limits

Loading validates everything (unknown family, bad size rule, bad price) and
fails loudly: a broken catalog must stop a deployment, not a request.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from shared.errors import NotFound
from shared.sizing import Size, SizeRule, parse_size, rule_from_spec

MICROS_PER_UNIT = 1_000_000

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
    }
)
RESPONSE_FORMATS = ("url", "b64_json")

# OpenAI clients' tuning fields: accepted by every model unless strict mode is on,
# and mapped to what the model has or ignored (api/validation.py, `fit_tuning`).
TUNING_PARAMS = ("user", "quality", "style")

# OpenAI's quality vocabulary as levels, to map a value onto a model's own choices:
# dall-e-3's `hd` and the GPT models' `high` are the same level.
QUALITY_LEVELS: Mapping[str, int] = MappingProxyType(
    {"low": 0, "standard": 1, "medium": 1, "hd": 2, "high": 2}
)


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
    price_micros: int
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

    @property
    def price(self) -> Decimal:
        return Decimal(self.price_micros) / MICROS_PER_UNIT


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
    price_micros: int
    description: str = ""
    owned_by: str = "imagegate"

    @property
    def price(self) -> Decimal:
        return Decimal(self.price_micros) / MICROS_PER_UNIT


@dataclass(frozen=True)
class ModelLimit:
    """Images of one model a tier may generate per minute and per UTC day (0 = no limit)."""

    per_minute: int = 0
    per_day: int = 0


@dataclass(frozen=True)
class Tier:
    name: str
    description: str
    requests_per_minute: int  # account-level generation calls per minute; 0 = no limit
    limits: Mapping[str, ModelLimit]  # model id -> limit
    all_models: bool = False  # every model, without per-model limits

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
    to add a model without copying the whole shipped catalog. Tiers and the
    ``[accounts]`` table merge the same way.
    """
    path = Path(path) if path else default_catalog_path()
    raw = _read(path)
    sources = [str(path)]
    for overlay in overlays:
        extra = _read(Path(overlay))
        raw.setdefault("families", {}).update(extra.get("families", {}))
        raw.setdefault("tiers", {}).update(extra.get("tiers", {}))
        by_vid = {m.get("id"): m for m in raw.get("virtual_models", [])}
        by_vid.update({m.get("id"): m for m in extra.get("virtual_models", [])})
        raw["virtual_models"] = list(by_vid.values())
        raw.setdefault("accounts", {}).update(extra.get("accounts", {}))
        by_id = {m.get("id"): m for m in raw.get("models", [])}
        by_id.update({m.get("id"): m for m in extra.get("models", [])})
        raw["models"] = list(by_id.values())
        sources.append(overlay)
    return parse_catalog(raw, source=" + ".join(sources))


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CatalogError(f"cannot read catalog {path}: {exc}") from exc


def parse_catalog(raw: Mapping[str, Any], *, source: str = "<catalog>") -> Catalog:
    families = {
        name: _parse_family(name, spec, source) for name, spec in raw.get("families", {}).items()
    }
    models: dict[str, Model] = {}
    for index, spec in enumerate(raw.get("models", [])):
        model = _parse_model(spec, families, f"{source}: models[{index}]")
        if model.id in models:
            raise CatalogError(f"{source}: model '{model.id}' is defined twice")
        models[model.id] = model
    if not models:
        raise CatalogError(f"{source}: no models defined")
    virtual: dict[str, VirtualModel] = {}
    for index, spec in enumerate(raw.get("virtual_models", [])):
        vm = _parse_virtual(spec, models, f"{source}: virtual_models[{index}]")
        if vm.id in virtual or vm.id in models:
            raise CatalogError(f"{source}: model id '{vm.id}' is defined twice")
        virtual[vm.id] = vm
    accounts = raw.get("accounts", {})
    default_rpm = int(accounts.get("requests_per_minute", 60))
    routable = {**models, **virtual}
    tiers = {
        name: _parse_tier(name, spec, routable, default_rpm, source)
        for name, spec in raw.get("tiers", {}).items()
    }
    default_tier = str(accounts.get("default_tier", next(iter(tiers), "")))
    if tiers and default_tier not in tiers:
        raise CatalogError(f"{source}: accounts.default_tier '{default_tier}' is not a tier")
    return Catalog(
        families=MappingProxyType(families),
        models=MappingProxyType(models),
        tiers=MappingProxyType(tiers),
        default_tier=default_tier,
        virtual=MappingProxyType(virtual),
    )


def _parse_virtual(
    spec: Mapping[str, Any], models: Mapping[str, Model], where: str
) -> VirtualModel:
    try:
        vm_id = str(spec["id"])
        where = f"{where} ({vm_id})"
        candidates = []
        for entry in spec["candidates"]:
            model_id = str(entry["model"])
            if model_id not in models:
                raise CatalogError(f"{where}: unknown candidate model '{model_id}'")
            weight = float(entry.get("weight", 1))
            if weight <= 0:
                raise CatalogError(f"{where}: candidate '{model_id}' needs a positive weight")
            overrides = dict(entry.get("params", {}))
            unknown = set(overrides) - OPTIONAL_PARAMS
            if unknown:
                raise CatalogError(f"{where}: unknown override params {sorted(unknown)}")
            candidates.append(Candidate(model_id, weight, MappingProxyType(overrides)))
        if not candidates:
            raise CatalogError(f"{where}: no candidates")
        return VirtualModel(
            id=vm_id,
            candidates=tuple(candidates),
            price_micros=_parse_price(spec.get("price", "0"), where),
            description=str(spec.get("description", "")),
            owned_by=str(spec.get("owned_by", "imagegate")),
        )
    except CatalogError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise CatalogError(f"{where}: {exc}") from exc


def _parse_tier(
    name: str, spec: Mapping[str, Any], models: Mapping[str, Any], default_rpm: int, source: str
) -> Tier:
    where = f"{source}: tiers.{name}"
    limits: dict[str, ModelLimit] = {}
    for entry in spec.get("limits", []):
        try:
            limit = ModelLimit(int(entry.get("per_minute", 0)), int(entry.get("per_day", 0)))
            ids = [str(m) for m in entry["models"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise CatalogError(f"{where}: bad limits entry {entry!r}: {exc}") from exc
        if limit.per_minute < 0 or limit.per_day < 0:
            raise CatalogError(f"{where}: limits must be >= 0")
        for model_id in ids:
            if model_id not in models:
                raise CatalogError(f"{where}: unknown model '{model_id}'")
            if model_id in limits:
                raise CatalogError(f"{where}: model '{model_id}' is limited twice")
            limits[model_id] = limit
    rpm = int(spec.get("requests_per_minute", default_rpm))
    if rpm < 0:
        raise CatalogError(f"{where}: requests_per_minute must be >= 0")
    return Tier(
        name=name,
        description=str(spec.get("description", "")),
        requests_per_minute=rpm,
        limits=MappingProxyType(limits),
        all_models=bool(spec.get("all_models", False)),
    )


def _parse_family(name: str, spec: Mapping[str, Any], source: str) -> Family:
    where = f"{source}: families.{name}"
    try:
        return Family(
            name=name,
            queue=str(spec.get("queue", name)),
            adapter=str(spec.get("adapter", name)),
            base_url=str(spec.get("base_url", "")).rstrip("/"),
            key_env=str(spec["key_env"]) if spec.get("key_env") else None,
            available=bool(spec.get("available", True)),
            unavailable_reason=str(spec.get("unavailable_reason", "")),
            max_concurrent=int(spec.get("max_concurrent", 0)),
            worker_concurrency=int(spec.get("worker_concurrency", 0)),
        )
    except (TypeError, ValueError) as exc:
        raise CatalogError(f"{where}: {exc}") from exc


def _parse_price(value: Any, where: str) -> int:
    try:
        price = Decimal(str(value))
    except InvalidOperation as exc:
        raise CatalogError(f"{where}: price {value!r} is not a decimal number") from exc
    micros = price * MICROS_PER_UNIT
    if price < 0 or micros != micros.to_integral_value():
        raise CatalogError(f"{where}: price {value!r} must be >= 0 with at most 6 decimals")
    return int(micros)


def _parse_model(spec: Mapping[str, Any], families: Mapping[str, Family], where: str) -> Model:
    try:
        model_id = str(spec["id"])
        where = f"{where} ({model_id})"
        family = str(spec["family"])
        if family not in families:
            raise CatalogError(f"{where}: unknown family '{family}'")
        params = frozenset(spec.get("params", []))
        unknown = params - OPTIONAL_PARAMS
        if unknown:
            raise CatalogError(f"{where}: unknown params {sorted(unknown)}")
        formats = tuple(spec.get("response_formats", RESPONSE_FORMATS))
        if not formats or set(formats) - set(RESPONSE_FORMATS):
            raise CatalogError(f"{where}: response_formats must be a subset of {RESPONSE_FORMATS}")
        default_format = str(spec.get("default_response_format", "url"))
        if default_format not in formats:
            raise CatalogError(f"{where}: default_response_format must be one of response_formats")
        choices = {str(k): tuple(str(v) for v in vs) for k, vs in spec.get("choices", {}).items()}
        if set(choices) - params:
            raise CatalogError(f"{where}: choices given for params the model does not accept")
        max_n = int(spec.get("max_n", 1))
        max_prompt = int(spec.get("max_prompt_length", 4000))
        if max_n < 1 or max_prompt < 1:
            raise CatalogError(f"{where}: max_n and max_prompt_length must be >= 1")
        return Model(
            id=model_id,
            family=family,
            upstream=str(spec.get("upstream", model_id)),
            price_micros=_parse_price(spec.get("price", "0"), where),
            size_rule=rule_from_spec(spec["size_rule"]),
            default_size=parse_size(str(spec.get("default_size", "1024x1024"))),
            max_n=max_n,
            max_prompt_length=max_prompt,
            response_formats=formats,
            params=params,
            default_response_format=default_format,
            choices=MappingProxyType(choices),
            options=MappingProxyType(dict(spec.get("options", {}))),
            owned_by=str(spec.get("owned_by", family)),
            description=str(spec.get("description", "")),
        )
    except CatalogError:
        raise
    except Exception as exc:  # KeyError, ValueError from rules, InvalidRequest from sizes
        raise CatalogError(f"{where}: {exc}") from exc
