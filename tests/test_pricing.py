"""Price forms against the upstreams' published tables, the upstream cost of a job from
each family's answer, and the catalog's refusal of prices below cost (shared/pricing.py)."""

from __future__ import annotations

import copy
import dataclasses
import tomllib
from decimal import Decimal
from typing import Any

import pytest

from api.routing import Route, affordable, unit_price
from shared.catalog import Catalog, CatalogError, default_catalog_path, load_catalog, parse_catalog
from shared.errors import ServiceUnavailable
from shared.pricing import PriceQuery, TokenPrices
from shared.sizing import Size
from workers.adapters.base import GeneratedImage, ImageResult
from workers.pipeline import upstream_cost

pytestmark = pytest.mark.fast


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def _micros(dollars: str) -> int:
    return int(Decimal(dollars) * 1_000_000)


# --- each form against its published table -------------------------------------------

# OpenAI's published per-image prices (openai.com/api/pricing): quality x size.
OPENAI_TABLES: dict[str, dict[str, dict[str, str]]] = {
    "gpt-image-1": {
        "low": {"1024x1024": "0.011", "1024x1536": "0.016", "1536x1024": "0.016"},
        "medium": {"1024x1024": "0.042", "1024x1536": "0.063", "1536x1024": "0.063"},
        "high": {"1024x1024": "0.167", "1024x1536": "0.25", "1536x1024": "0.25"},
    },
    "gpt-image-1-mini": {
        "low": {"1024x1024": "0.005", "1024x1536": "0.006", "1536x1024": "0.006"},
        "medium": {"1024x1024": "0.011", "1024x1536": "0.015", "1536x1024": "0.015"},
        "high": {"1024x1024": "0.036", "1024x1536": "0.052", "1536x1024": "0.052"},
    },
    "gpt-image-1.5": {
        "low": {"1024x1024": "0.009", "1024x1536": "0.013", "1536x1024": "0.013"},
        "medium": {"1024x1024": "0.034", "1024x1536": "0.05", "1536x1024": "0.05"},
        "high": {"1024x1024": "0.133", "1024x1536": "0.2", "1536x1024": "0.2"},
    },
    "dall-e-3": {
        "standard": {"1024x1024": "0.040", "1792x1024": "0.080", "1024x1792": "0.080"},
        "hd": {"1024x1024": "0.080", "1792x1024": "0.120", "1024x1792": "0.120"},
    },
}
CELLS = [
    (model, quality, size, price)
    for model, table in OPENAI_TABLES.items()
    for quality, row in table.items()
    for size, price in row.items()
]


@pytest.mark.parametrize(("model_id", "quality", "size", "price"), CELLS)
def test_table_prices_are_openais(
    catalog: Catalog, model_id: str, quality: str, size: str, price: str
) -> None:
    model = catalog.models[model_id]
    request = {"quality": quality, "size": size}
    assert model.unit_price(request) == _micros(price)
    assert model.unit_cost(request) == _micros(price)  # resold at OpenAI's list price


@pytest.mark.parametrize(("size", "price"), [("256x256", "0.016"), ("512x512", "0.018")])
def test_dall_e_2_is_priced_by_size(catalog: Catalog, size: str, price: str) -> None:
    assert catalog.models["dall-e-2"].unit_price({"size": size}) == _micros(price)


def test_no_quality_or_auto_is_charged_as_the_quality_the_upstream_may_pick(
    catalog: Catalog,
) -> None:
    gpt, dalle = catalog.models["gpt-image-1"], catalog.models["dall-e-3"]
    assert gpt.unit_price({}) == gpt.unit_price({"quality": "auto"}) == _micros("0.167")
    assert dalle.unit_price({}) == _micros("0.040")  # OpenAI's default: standard
    # OpenAI's other spelling of a level finds the row of that level.
    assert gpt.pricing.unit(PriceQuery(quality="hd", size=Size(1024, 1024))) == _micros("0.167")


def test_the_price_follows_the_size_the_job_will_produce(catalog: Catalog) -> None:
    # dall-e-3 has no 1536x1024: the worker clamps it to 1792x1024, which costs double.
    assert catalog.models["dall-e-3"].unit_price({"size": "1536x1024"}) == _micros("0.080")
    # gpt-image-1 has no 1792x1024: clamped to 1536x1024.
    gpt = catalog.models["gpt-image-1"]
    assert gpt.unit_price({"size": "1792x1024", "quality": "low"}) == _micros("0.016")


def test_free_sizes_beyond_the_table_are_priced_by_area(catalog: Catalog) -> None:
    gpt2 = catalog.models["gpt-image-2"]
    small = gpt2.unit_price({"size": "1024x768", "quality": "low"})  # below 1024x1024
    assert small == _micros("0.011")
    # 2048x2048 is 4194304 px, the largest listed (1536x1024) 1572864 px at $0.25.
    big = gpt2.unit_price({"size": "2048x2048", "quality": "high"})
    assert big == -(-250_000 * 4_194_304 // 1_572_864) == 666_667


# BFL FLUX.2 [pro] (bfl.ai/pricing): $0.03 the first megapixel (10^6 px), $0.015 each
# further output megapixel; an edit's input megapixel too.
@pytest.mark.parametrize(
    ("size", "edit", "price"),
    [
        ("1000x1000", False, 30_000),
        ("1024x1024", False, 30_729),  # 30_000 + 15_000 x 0.048576, rounded up
        ("1536x1536", False, 50_390),  # 30_000 + 15_000 x 1.359296
        ("512x512", False, 30_000),
        ("1000x1000", True, 45_000),
        ("1536x1536", True, 65_390),
    ],
)
def test_flux_2_is_priced_per_megapixel(
    catalog: Catalog, size: str, edit: bool, price: int
) -> None:
    model = catalog.models["black-forest-labs/flux-2-pro"]
    request = {"size": size, **({"operation": "edit"} if edit else {})}
    assert model.unit_price(request) == price == model.unit_cost(request)


# fal bills per megapixel of 1024x1024; seed 001's price is the 1024x1024 image's.
@pytest.mark.parametrize(
    ("model_id", "size", "price", "cost"),
    [
        ("tencent/hunyuan-image-3", "1024x1024", "0.100", "0.100"),
        ("tencent/hunyuan-image-3", "512x512", "0.100", "0.025"),  # the minimum
        ("tencent/hunyuan-image-3", "1536x1536", "0.225", "0.225"),
        ("zhipu/z-image-turbo", "1024x1024", "0.005", "0.005"),
        ("zhipu/z-image-turbo", "1536x1536", "0.01125", "0.01125"),
    ],
)
def test_fal_models_are_priced_per_megapixel_with_a_minimum(
    catalog: Catalog, model_id: str, size: str, price: str, cost: str
) -> None:
    model = catalog.models[model_id]
    assert model.unit_price({"size": size}) == _micros(price)
    assert model.unit_cost({"size": size}) == _micros(cost)


def test_models_list_describes_each_form(catalog: Catalog) -> None:
    assert catalog.models["flux-dev"].pricing.describe() == {"per_image": "0.025000"}
    flux2 = catalog.models["black-forest-labs/flux-2-pro"].pricing.describe()
    assert flux2["per_megapixel"] == "0.015000" and flux2["edit"]["base"] == "0.045000"
    table = catalog.models["dall-e-3"].pricing.describe()
    assert table["default_quality"] == "standard"
    assert table["table"]["hd"]["1792x1024"] == "0.120000"


# --- what a job cost upstream --------------------------------------------------------


def _result(n: int = 1, **fields: Any) -> ImageResult:
    return ImageResult(images=[GeneratedImage(data=b"x")] * n, **fields)


def test_openai_usage_times_token_prices(catalog: Catalog) -> None:
    # The simulator's (and OpenAI's) usage of one high 1024x1024 gpt-image-1 image.
    usage = {
        "input_tokens": 20,
        "input_tokens_details": {"text_tokens": 20, "image_tokens": 0},
        "output_tokens": 4160,
        "output_tokens_details": {"image_tokens": 4160, "text_tokens": 0},
        "total_tokens": 4180,
    }
    model = catalog.models["gpt-image-1"]
    cost = upstream_cost(model, {"quality": "high"}, _result(reported={"usage": usage}))
    # 20 x $5/1M + 4160 x $40/1M = 0.0001 + 0.1664
    assert cost == (166_500, "usage")
    # An edit's input image tokens at the image-input price.
    edit = {**usage, "input_tokens": 1020, "input_tokens_details": {"image_tokens": 1000}}
    assert TokenPrices(5_000_000, 10_000_000, 40_000_000).cost_of(edit) == 176_500


def test_upstream_figures_win_over_the_cost_table(catalog: Catalog) -> None:
    flux2 = catalog.models["black-forest-labs/flux-2-pro"]
    assert upstream_cost(flux2, {}, _result(2, cost_micros=61_400)) == (61_400, "upstream")
    seedream = catalog.models["bytedance/seedream-4.0"]
    assert upstream_cost(seedream, {}, _result(2, billed_images=3)) == (90_000, "upstream")
    sdxl = catalog.models["sdxl"]
    assert upstream_cost(sdxl, {}, _result(1, compute_seconds=4.0)) == (3_900, "compute")
    glm = catalog.models["zhipu/glm-image"]
    assert upstream_cost(glm, {}, _result(3)) == (42_000, "catalog")
    dalle = catalog.models["dall-e-3"]  # no token usage: the table, at the quality asked
    assert upstream_cost(dalle, {"quality": "hd"}, _result(1)) == (80_000, "catalog")


def test_a_model_without_a_cost_records_none() -> None:
    cat = parse_catalog(_minimal(models=[_model("m", price="0.01")]))
    assert upstream_cost(cat.models["m"], {}, _result(1)) is None


# --- no silent loss ------------------------------------------------------------------


def _model(mid: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": mid,
        "family": "local",
        "size_rule": {"kind": "max_side", "min": 64, "max": 2048},
        **fields,
    }


def _minimal(**tables: Any) -> dict[str, Any]:
    return {"families": {"local": {}}, **tables}


def test_a_model_priced_below_its_cost_is_refused_unless_allowed() -> None:
    entry = _model("cheap", price="0.010", cost={"per_megapixel": "0.010"})
    with pytest.raises(CatalogError, match=r"models\[0\] \(cheap\).*below its upstream cost"):
        parse_catalog(_minimal(models=[entry]))  # 2048x2048 costs 0.042
    assert parse_catalog(_minimal(models=[{**entry, "allow_loss": True}]))


def test_an_edit_priced_below_its_cost_is_refused() -> None:
    entry = _model(
        "e",
        params=["image"],
        price={"per_image": "0.02"},
        cost={"per_image": "0.02", "edit": "0.03"},
    )
    with pytest.raises(CatalogError, match="edit"):
        parse_catalog(_minimal(models=[entry]))


def test_a_virtual_model_below_a_candidates_cost_is_refused_unless_allowed() -> None:
    models = [_model("a", price="0.01", cost="0.01"), _model("b", price="0.05", cost="0.04")]
    virtual = {"id": "v", "price": "0.02", "candidates": [{"model": "a"}, {"model": "b"}]}
    with pytest.raises(CatalogError, match=r"virtual_models\[0\] \(v\).*candidate 'b'"):
        parse_catalog(_minimal(models=models, virtual_models=[virtual]))
    assert parse_catalog(_minimal(models=models, virtual_models=[{**virtual, "allow_loss": True}]))


@pytest.mark.parametrize(
    ("vm_id", "old_price", "loser"),
    [
        ("image-turbo", "0.005", "zhipu/z-image-turbo"),  # 1536x1536 costs 0.01125
        ("image", "0.030", "black-forest-labs/flux-2-pro"),
        ("image-pro", "0.080", "gpt-image-1.5"),  # at quality=high
    ],
)
def test_the_shipped_virtual_models_old_prices_are_refused(
    vm_id: str, old_price: str, loser: str
) -> None:
    with default_catalog_path().open("rb") as fh:
        raw = tomllib.load(fh)
    raw = copy.deepcopy(raw)
    entry = next(v for v in raw["virtual_models"] if v["id"] == vm_id)
    entry["price"] = old_price
    with pytest.raises(CatalogError, match=f"candidate '{loser}'"):
        parse_catalog(raw)


def test_the_old_image_turbo_candidate_stable_image_core_would_lose(catalog: Catalog) -> None:
    core = catalog.models["stability/stable-image-core"]
    assert core.unit_cost({}) > unit_price_of(catalog, "image-turbo", core)


def unit_price_of(catalog: Catalog, vm_id: str, model: Any) -> int:
    return catalog.virtual[vm_id].unit_price(model, {})


def test_routing_never_picks_a_candidate_costing_more_than_the_client_pays() -> None:
    models = [
        _model("a", price="0.01", cost="0.01"),
        _model("b", price="0.05", cost="0.04"),
        _model("c", price="0.01", cost="0.005"),
    ]
    # A table price: small images cheap, so b (0.04 at any size) loses on them.
    virtual = {
        "id": "v",
        "price": {"table": {"*": {"*": "0.05", "512x512": "0.02"}}},
        "candidates": [{"model": "a"}, {"model": "b"}, {"model": "c"}],
        "allow_loss": True,  # loads; routing must still not sell b at 0.02 ...
    }
    cat = parse_catalog(_minimal(models=models, virtual_models=[virtual]))
    vm = cat.virtual["v"]
    family = cat.families["local"]

    def routes(order: str, size: str) -> list[Route]:
        return [Route(cat.models[m], family, {"size": size, "n": 1}) for m in order]

    # ... unless allow_loss: then every candidate stays.
    assert [r.model.id for r in affordable(vm, routes("bac", "512x512"))] == ["b", "a", "c"]
    vm_strict = dataclasses.replace(vm, allow_loss=False)
    small = affordable(vm_strict, routes("bac", "512x512"))
    assert [r.model.id for r in small] == ["a", "c"]  # b costs 0.04 > 0.02: dropped
    assert unit_price(vm_strict, small) == 20_000
    large = affordable(vm_strict, routes("bac", "1024x1024"))
    assert [r.model.id for r in large] == ["b", "a", "c"]
    with pytest.raises(ServiceUnavailable) as refused:
        affordable(vm_strict, routes("b", "512x512"))
    assert refused.value.code == "priced_below_cost"


@pytest.mark.parametrize(
    ("price", "message"),
    [
        ({"per_image": "0.01", "per_megapixel": "0.01"}, "exactly one"),
        ({"table": {"high": {"big": "0.1"}}}, "not WxH"),
        ({"table": {"high": {"*": "0.1"}}, "default_quality": "low"}, "default_quality"),
        ({"per_image": "0.01", "base": "0.01"}, "per_megapixel"),
        ({"per_image": "0.01", "colour": "red"}, "unknown key 'colour'"),
    ],
)
def test_malformed_price_forms_are_refused(price: dict[str, Any], message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        parse_catalog(_minimal(models=[_model("m", price=price)]))


def test_a_virtual_price_follows_what_the_chosen_candidate_will_produce(
    catalog: Catalog,
) -> None:
    image, dalle = catalog.virtual["image"], catalog.models["dall-e-3"]
    assert image.unit_price(dalle, {"quality": "hd", "size": "1792x1024"}) == 120_000
    assert image.unit_price(dalle, {"size": "1024x1792"}) == 80_000
    assert image.unit_price(catalog.models["bytedance/seedream-4.0"], {}) == 55_000
