"""What an image costs: the client's price and the upstream's cost, as catalog data.

Money is integer micro-units (1 unit = 1,000,000). A model's ``price`` (what
the client pays per image) and ``cost`` (what the upstream charges us per
image) are written in the catalog in one of three forms, each with an optional
``edit`` form that applies to ``POST /v1/images/edits``::

    price = "0.040"                                    # flat, per image
    price = { per_image = "0.040" }                    # the same
    price = { table = { standard = { "1024x1024" = "0.040", "1792x1024" = "0.080" },
                        hd = { "1024x1024" = "0.080", "*" = "0.120" } },
              default_quality = "standard" }           # by quality x size
    price = { per_megapixel = "0.015", base = "0.030", included_megapixels = "1",
              minimum = "0.030" }                      # by output megapixels
    price = { per_image = "0.040", edit = { per_image = "0.045" } }

**Table**: the row is the request's ``quality`` (``default_quality`` when it
names none or ``auto``; a row ``"*"`` takes any quality; else the row of the
same :data:`QUALITY_LEVELS` level, so ``hd`` finds ``high``). The column is the
size the job produces (``"*"`` for any other size); a size with no column is
priced like the smallest listed size of at least its area, or, above them all,
like the largest scaled by area.

**Per megapixel** (a megapixel is 1,000,000 pixels, as BFL's ``output_mp``, or
``megapixel`` pixels, e.g. fal's 1024 x 1024):
``max(minimum, base + per_megapixel x max(0, mp - included_megapixels))``.

Amounts are rounded *up* to the micro-unit, so a price written as the same rule
as a cost is never below it. The size is the one the job will really produce:
the model's size rule applied to the request (:func:`query_for`), as the worker
applies it; a ratio-only model (``aspect_ratio`` rule) is priced at its default
area in the chosen ratio.

OpenAI's GPT image models bill tokens: a model's ``token_prices`` (per million
tokens) turn the ``usage`` an answer reports into the upstream's cost
(:meth:`TokenPrices.cost_of`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from fractions import Fraction
from functools import lru_cache
from types import MappingProxyType
from typing import Annotated, Any, Protocol

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from shared.errors import InvalidRequest
from shared.sizing import Size, SizeRule, parse_aspect_ratio, parse_size

MICROS_PER_UNIT = 1_000_000
PIXELS_PER_MEGAPIXEL = 1_000_000
ANY = "*"
SQUARE = Size(1024, 1024)

# OpenAI's quality vocabulary as levels, to map a value onto a model's own choices:
# dall-e-3's `hd` and the GPT models' `high` are the same level.
QUALITY_LEVELS: Mapping[str, int] = MappingProxyType(
    {"low": 0, "standard": 1, "medium": 1, "hd": 2, "high": 2}
)


class PricingError(ValueError):
    """A price form cannot price a query (a catalog mistake, found when it is loaded)."""


@dataclass(frozen=True)
class PriceQuery:
    """What a per-image amount depends on."""

    quality: str | None = None  # the request's (after tuning fields were fitted)
    size: Size | None = None  # the size the job produces; None: the form's own default
    edit: bool = False  # POST /v1/images/edits

    def describe(self) -> str:
        return f"quality={self.quality or 'default'}, size={self.size or 'default'}, " + (
            "edit" if self.edit else "generation"
        )


class PriceForm(Protocol):
    def unit(self, query: PriceQuery) -> int: ...

    def describe(self) -> dict[str, Any]: ...


def money(micros: int) -> str:
    return f"{Decimal(micros) / MICROS_PER_UNIT:.6f}"


def _ceil_micros(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_CEILING))


@dataclass(frozen=True)
class FlatPrice:
    micros: int

    def unit(self, query: PriceQuery) -> int:
        return self.micros

    def describe(self) -> dict[str, Any]:
        return {"per_image": money(self.micros)}


@dataclass(frozen=True)
class TablePrice:
    rows: Mapping[str, Mapping[str, int]]  # quality -> size ("WxH" or "*") -> micros
    default_quality: str

    def row(self, quality: str | None) -> Mapping[str, int]:
        if quality in (None, "auto"):
            quality = self.default_quality
        if quality in self.rows:
            return self.rows[quality]
        if ANY in self.rows:
            return self.rows[ANY]
        level = QUALITY_LEVELS.get(quality)
        for name, row in self.rows.items():
            if level is not None and QUALITY_LEVELS.get(name) == level:
                return row
        raise PricingError(f"no price for quality '{quality}' (rows: {', '.join(self.rows)})")

    def unit(self, query: PriceQuery) -> int:
        row = self.row(query.quality)
        if query.size is None:
            if ANY in row:
                return row[ANY]
            return min(row.values())
        if str(query.size) in row:
            return row[str(query.size)]
        if ANY in row:
            return row[ANY]
        sized = sorted((parse_size(k).pixels, v) for k, v in row.items())
        for pixels, micros in sized:
            if pixels >= query.size.pixels:
                return micros
        pixels, micros = sized[-1]
        return math.ceil(micros * query.size.pixels / pixels)

    def describe(self) -> dict[str, Any]:
        return {
            "table": {q: {s: money(m) for s, m in row.items()} for q, row in self.rows.items()},
            "default_quality": self.default_quality,
        }


@dataclass(frozen=True)
class MegapixelPrice:
    per_megapixel: int
    minimum: int = 0
    base: int = 0
    included_megapixels: Decimal = Decimal(0)
    default_size: Size = SQUARE
    megapixel: int = PIXELS_PER_MEGAPIXEL  # pixels in a megapixel (fal: 1024 x 1024)

    def unit(self, query: PriceQuery) -> int:
        size = query.size or self.default_size
        mp = Decimal(size.pixels) / self.megapixel
        extra = max(Decimal(0), mp - self.included_megapixels)
        return max(self.minimum, _ceil_micros(self.base + self.per_megapixel * extra))

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"per_megapixel": money(self.per_megapixel)}
        if self.base:
            out["base"] = money(self.base)
        if self.included_megapixels:
            out["included_megapixels"] = str(self.included_megapixels)
        if self.minimum:
            out["minimum"] = money(self.minimum)
        if self.megapixel != PIXELS_PER_MEGAPIXEL:
            out["megapixel"] = self.megapixel
        return out


@dataclass(frozen=True)
class Pricing:
    """A model's price (or cost) per image: a form, and another for edits if they differ."""

    form: PriceForm
    edit: PriceForm | None = None

    def unit(self, query: PriceQuery) -> int:
        form = self.edit if query.edit and self.edit is not None else self.form
        return form.unit(query)

    def describe(self) -> dict[str, Any]:
        out = dict(self.form.describe())
        if self.edit is not None:
            out["edit"] = self.edit.describe()
        return out

    @classmethod
    def flat(cls, micros: int) -> Pricing:
        return cls(FlatPrice(micros))


@dataclass(frozen=True)
class TokenPrices:
    """An upstream's prices per million tokens (OpenAI's GPT image models bill tokens)."""

    input_text: int = 0
    input_image: int = 0
    output_image: int = 0
    output_text: int = 0

    def cost_of(self, usage: Mapping[str, Any]) -> int | None:
        """The micro-units an OpenAI ``usage`` object costs; None if it is not one."""
        inp, out = _int(usage.get("input_tokens")), _int(usage.get("output_tokens"))
        if inp is None or out is None:
            return None
        in_details = usage.get("input_tokens_details") or {}
        out_details = usage.get("output_tokens_details") or {}
        in_image = _int(in_details.get("image_tokens")) if isinstance(in_details, dict) else None
        out_text = _int(out_details.get("text_tokens")) if isinstance(out_details, dict) else None
        in_image = min(inp, in_image or 0)
        out_text = min(out, out_text or 0)
        total = (
            (inp - in_image) * self.input_text
            + in_image * self.input_image
            + (out - out_text) * self.output_image
            + out_text * self.output_text
        )
        return math.ceil(total / 1_000_000)

    def describe(self) -> dict[str, str]:
        return {
            "input_text": money(self.input_text),
            "input_image": money(self.input_image),
            "output_image": money(self.output_image),
            "output_text": money(self.output_text),
        }


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


# --- what a request will produce -----------------------------------------------------


def produced_size(rule: SizeRule, default: Size, request: Mapping[str, Any]) -> Size:
    """The size a job of ``request`` produces under ``rule`` (the worker's own clamp);
    for a ratio-only model, its default area in the chosen ratio."""
    size = request.get("size")
    try:
        requested = parse_size(size) if size and size != "auto" else None
    except InvalidRequest:
        requested = None
    decision = rule.clamp(requested, request.get("aspect_ratio"), default)
    if decision.size is not None:
        return decision.size
    if decision.aspect_ratio is None:
        return default
    w, h = parse_aspect_ratio(decision.aspect_ratio)
    ratio = Fraction(w, h)
    height = max(1, round(math.sqrt(default.pixels / ratio)))
    return Size(max(1, round(height * ratio)), height)


def query_for(rule: SizeRule, default: Size, request: Mapping[str, Any]) -> PriceQuery:
    """The price query of a job request (the fields the job will run with)."""
    quality = request.get("quality")
    return PriceQuery(
        quality=quality if isinstance(quality, str) else None,
        size=produced_size(rule, default, request),
        edit=request.get("operation") == "edit",
    )


# --- what the catalog file says ------------------------------------------------------


def micros(value: Any) -> int:
    """An amount in currency units (``"0.040"``) as integer micro-units."""
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        amount = Decimal("NaN")
    if not amount.is_finite():
        raise ValueError(f"price {value!r} is not a decimal number")
    scaled = amount * MICROS_PER_UNIT
    if amount < 0 or scaled != scaled.to_integral_value():
        raise ValueError(f"price {value!r} must be >= 0 with at most 6 decimals")
    return int(scaled)


Money = Annotated[int, BeforeValidator(micros)]  # written in currency units, kept in micros


def _flat_shorthand(value: Any) -> Any:
    """``price = "0.040"`` is ``price = { per_image = "0.040" }``."""
    if isinstance(value, str | int | float | Decimal):
        return {"per_image": value}
    return value


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FormEntry(_Entry):
    """One price form (see the module docstring); exactly one of its three kinds."""

    per_image: Money | None = None
    table: dict[str, dict[str, Money]] | None = None
    default_quality: str | None = None
    per_megapixel: Money | None = None
    minimum: Money = 0
    base: Money = 0
    included_megapixels: Decimal = Field(Decimal(0), ge=0)
    megapixel: int = Field(PIXELS_PER_MEGAPIXEL, gt=0)  # pixels per megapixel

    @model_validator(mode="after")
    def _one_kind(self) -> FormEntry:
        kinds = [k for k in ("per_image", "table", "per_megapixel") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("a price needs exactly one of per_image, table, per_megapixel")
        if self.table is not None:
            if not self.table or any(not row for row in self.table.values()):
                raise ValueError("a price table needs rows, each with sizes")
            for row in self.table.values():
                for size in row:
                    if size != ANY:
                        try:
                            parse_size(size)
                        except InvalidRequest:
                            raise ValueError(f"price table size '{size}' is not WxH or *") from None
            default = self.default_quality or next(iter(self.table))
            if default not in self.table:
                raise ValueError(f"default_quality '{default}' is not a row of the table")
        elif self.default_quality is not None:
            raise ValueError("default_quality belongs to a price table")
        if self.per_megapixel is None and (
            self.base or self.included_megapixels or self.megapixel != PIXELS_PER_MEGAPIXEL
        ):
            raise ValueError(
                "base, included_megapixels and megapixel belong to per_megapixel prices"
            )
        return self

    def build(self, default_size: Size) -> PriceForm:
        if self.per_image is not None:
            return FlatPrice(self.per_image)
        if self.table is not None:
            rows = {q: MappingProxyType(dict(row)) for q, row in self.table.items()}
            return TablePrice(MappingProxyType(rows), self.default_quality or next(iter(rows)))
        assert self.per_megapixel is not None
        return MegapixelPrice(
            self.per_megapixel,
            self.minimum,
            self.base,
            self.included_megapixels,
            default_size,
            self.megapixel,
        )


class PriceEntry(FormEntry):
    """A model's ``price`` or ``cost``: a form, and optionally another one for edits."""

    edit: Annotated[FormEntry | None, BeforeValidator(_flat_shorthand)] = None

    def pricing(self, default_size: Size = SQUARE) -> Pricing:
        edit = self.edit.build(default_size) if self.edit is not None else None
        return Pricing(self.build(default_size), edit)


PriceSpec = Annotated[PriceEntry, BeforeValidator(_flat_shorthand)]


class TokenPricesEntry(_Entry):
    """``token_prices``: an upstream's prices per million tokens."""

    input_text: Money = 0
    input_image: Money = 0
    output_image: Money = 0
    output_text: Money = 0

    def build(self) -> TokenPrices:
        return TokenPrices(self.input_text, self.input_image, self.output_image, self.output_text)


# --- the grid of requests the catalog checks for losses -------------------------------

# Sizes clients ask for (the seeds' and OpenAI's lists, and the large ones), each
# clamped by a model's rule; None is "no size".
SAMPLE_SIZES: tuple[str | None, ...] = (
    None,
    "256x256",
    "512x512",
    "1024x1024",
    "1536x1024",
    "1024x1536",
    "1792x1024",
    "1024x1792",
    "1280x720",
    "1536x1536",
    "2048x2048",
    "3840x2160",
    "4096x4096",
)


def sample_queries(
    rule: SizeRule,
    default: Size,
    qualities: Iterable[str | None],
    *,
    edits: bool,
    fixed: Mapping[str, Any] | None = None,
) -> list[PriceQuery]:
    """The price queries of requests a client may send a model of ``rule``: each
    quality, each sample size (and each of the rule's ratios) as the rule produces it,
    generation and (``edits``) edit; ``fixed`` request fields (a virtual model's
    candidate overrides) apply to each. Requests the rule refuses are left out."""
    fixed = fixed or {}
    asked: list[dict[str, Any]] = [{"size": size} if size else {} for size in SAMPLE_SIZES]
    asked += [{"aspect_ratio": ratio} for ratio in rule.describe().get("ratios") or []]
    sizes: list[Size] = []
    for request in asked:
        merged = {**request, **fixed}
        try:
            sizes.append(_produced(rule, default, merged.get("size"), merged.get("aspect_ratio")))
        except InvalidRequest:
            continue
    operations = [False, True] if edits else [False]
    return [
        PriceQuery(quality=quality, size=size, edit=edit)
        for size in dict.fromkeys(sizes)
        for quality in qualities
        for edit in operations
    ]


@lru_cache(maxsize=4096)
def _produced(rule: SizeRule, default: Size, size: str | None, ratio: str | None) -> Size:
    return produced_size(rule, default, {"size": size, "aspect_ratio": ratio})
