"""The shipped model catalog (shared/catalog.toml) and the catalog parser."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest

from shared.catalog import (
    OPTIONAL_PARAMS,
    Catalog,
    CatalogError,
    default_catalog_path,
    load_catalog,
    parse_catalog,
)
from shared.sizing import Size, SizeDecision, parse_size
from workers.adapters import ADAPTERS

pytestmark = pytest.mark.fast

# Every model id the seed pages name (shared/seeds/*), per seed.
SEED_MODEL_IDS: dict[str, tuple[str, ...]] = {
    "000": (
        "flux-pro",
        "flux-dev",
        "flux-schnell",
        "sd-3.5-large",
        "sd-3.5-turbo",
        "sdxl",
        "playground-v2.5",
    ),
    "001": (
        "zhipu/z-image-turbo",
        "zhipu/glm-image",
        "bytedance/seedream-4.0",
        "bytedance/seedream-4.5",
        "bytedance/seedream-5.0-lite",
        "black-forest-labs/flux-2-pro",
        "black-forest-labs/flux.1-kontext-max",
        "tencent/hunyuan-image-3",
    ),
    "002": ("flux-schnell", "flux-1.1-pro", "dall-e-3", "ideogram-v3", "imagen-3"),
    "003": ("gpt-image-1", "gpt-image-1.5"),
    "004": ("black-forest-labs/FLUX.1-schnell",),
}
ALL_SEED_IDS = sorted({mid for ids in SEED_MODEL_IDS.values() for mid in ids})

# Seed 001 publishes its per-image prices; they must be ours to the micro-unit.
SEED_001_PRICE_MICROS = {
    "zhipu/z-image-turbo": 5_000,
    "zhipu/glm-image": 14_000,
    "bytedance/seedream-4.0": 30_000,
    "bytedance/seedream-4.5": 30_000,
    "bytedance/seedream-5.0-lite": 35_000,
    "black-forest-labs/flux-2-pro": 30_000,
    "black-forest-labs/flux.1-kontext-max": 72_000,
    "tencent/hunyuan-image-3": 100_000,
}

# Ids read straight from the TOML so a broken catalog fails tests, not collection.
with default_catalog_path().open("rb") as _fh:
    SHIPPED_IDS = sorted(str(m.get("id")) for m in tomllib.load(_fh).get("models", []))

ALL_FAMILIES = {"local", "openai", "bfl", "replicate", "fal", "ark", "zhipu", "stability"}
# Families whose adapter is not in this build: listed, but answering 503.


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


# --- the shipped catalog ----------------------------------------------------


def test_shipped_catalog_loads(catalog: Catalog) -> None:
    assert isinstance(catalog, Catalog)
    assert "local/testcard" in catalog.models
    assert set(catalog.families) == ALL_FAMILIES


@pytest.mark.parametrize("model_id", ALL_SEED_IDS)
def test_every_seed_model_is_in_the_catalog(catalog: Catalog, model_id: str) -> None:
    assert model_id in catalog.models, f"seed model {model_id!r} missing from catalog.toml"
    assert catalog.model(model_id).id == model_id


@pytest.mark.parametrize(("model_id", "micros"), sorted(SEED_001_PRICE_MICROS.items()))
def test_seed_001_prices(catalog: Catalog, model_id: str, micros: int) -> None:
    # A 1024x1024 image; FLUX.2 is priced per megapixel of 10^6 pixels as BFL bills it,
    # and seed 001's price is its first megapixel's.
    size = "1000x1000" if model_id == "black-forest-labs/flux-2-pro" else "1024x1024"
    assert catalog.models[model_id].unit_price({"size": size}) == micros


def test_openai_prices_and_limits(catalog: Catalog) -> None:
    expected = {
        # id: (medium/standard 1024x1024 price, max_n, max_prompt_length)
        "dall-e-2": (20_000, 10, 1000),
        "dall-e-3": (40_000, 1, 4000),
        "gpt-image-1": (42_000, 10, 32000),
        "gpt-image-1-mini": (11_000, 10, 32000),
        "gpt-image-1.5": (34_000, 1, 32000),  # seed 003: n=1 only
    }
    medium = {"size": "1024x1024", "quality": "medium"}
    got = {
        mid: (m.unit_price(medium), m.max_n, m.max_prompt_length)
        for mid, m in catalog.models.items()
        if mid in expected
    }
    assert got == expected


def test_dall_e_asks_upstream_for_base64_and_gpt_models_do_not(catalog: Catalog) -> None:
    for mid in ("dall-e-2", "dall-e-3"):
        assert catalog.models[mid].options.get("response_format") == "b64_json"
    for mid in ("gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5"):
        assert "response_format" not in catalog.models[mid].options


@pytest.mark.parametrize(
    "model_id",
    [*SEED_MODEL_IDS["002"], *SEED_MODEL_IDS["004"]],
)
def test_seed_002_004_prompt_limit(catalog: Catalog, model_id: str) -> None:
    # Both pages cap prompts at 1000 characters; dall-e-3 keeps OpenAI's 4000.
    limit = 4000 if model_id == "dall-e-3" else 1000
    assert catalog.models[model_id].max_prompt_length == limit


def test_seed_001_limits(catalog: Catalog) -> None:
    models = catalog.models
    for mid in ("bytedance/seedream-4.0", "bytedance/seedream-4.5", "bytedance/seedream-5.0-lite"):
        assert models[mid].max_n == 15
    assert models["zhipu/glm-image"].default_size == Size(1280, 1280)
    assert "image" in models["bytedance/seedream-4.5"].params
    assert "aspect_ratio" in models["black-forest-labs/flux.1-kontext-max"].params


@pytest.mark.parametrize("model_id", SHIPPED_IDS)
def test_default_size_survives_its_rule(catalog: Catalog, model_id: str) -> None:
    model = catalog.models[model_id]
    decision = model.size_rule.clamp(None, None, model.default_size)
    assert isinstance(decision, SizeDecision)
    if model.size_rule.kind == "aspect_ratio":
        assert decision.size is None
        assert decision.aspect_ratio in model.size_rule.describe()["ratios"]
    else:
        assert decision.size == model.default_size, f"{model_id}: default size is not kept"


# Sizes each seed page promises for its own models (seed 000: all models).
SEED_SIZES = {
    "000": ("256x256", "512x512", "1024x1024", "1792x1024", "1024x1792"),
    "002": ("256x256", "512x512", "1024x1024"),
}


@pytest.mark.parametrize(
    ("model_id", "size"),
    [
        (mid, size)
        for seed, sizes in SEED_SIZES.items()
        for mid in SEED_MODEL_IDS[seed]
        for size in sizes
    ],
)
def test_seed_advertised_sizes_are_served(catalog: Catalog, model_id: str, size: str) -> None:
    # The gateway clamps rather than rejects the sizes the seeds advertise.
    model = catalog.models[model_id]
    decision = model.size_rule.clamp(parse_size(size), None, model.default_size)
    assert decision.size is not None or decision.aspect_ratio is not None
    if decision.size is not None:  # what the rule decided is a size it serves as it is
        again = model.size_rule.clamp(decision.size, None, model.default_size)
        assert again.size == decision.size


@pytest.mark.parametrize("model_id", SHIPPED_IDS)
def test_model_fields_are_sane(catalog: Catalog, model_id: str) -> None:
    model = catalog.models[model_id]
    assert model.family in catalog.families
    assert model.upstream
    assert model.description
    assert model.owned_by
    assert model.params <= OPTIONAL_PARAMS
    assert set(model.response_formats) == {"url", "b64_json"}
    assert set(model.choices) <= model.params


def test_family_availability(catalog: Catalog) -> None:
    """An available family has its adapter and a worker line; an unavailable one says why."""
    procfile = (Path(__file__).parents[1] / "Procfile").read_text()
    for family in catalog.families.values():
        if family.available:
            assert ADAPTERS[family.adapter] is not None, family.name
            assert f" -Q {family.queue} " in procfile, family.name
        else:
            assert family.unavailable_reason, family.name
    assert catalog.families["local"].available and catalog.families["openai"].available
    for family in catalog.families.values():
        assert family.queue == family.name
        assert family.adapter == family.name


def test_key_env_names(catalog: Catalog) -> None:
    names = catalog.key_env_names()
    assert "OPENAI_API_KEY" in names
    assert "" not in names
    assert catalog.families["local"].key_env is None


# --- parser rejections -----------------------------------------------------


def _minimal() -> dict[str, Any]:
    return {
        "families": {"openai": {"base_url": "https://example.test/v1", "key_env": "K"}},
        "models": [
            {
                "id": "m1",
                "family": "openai",
                "price": "0.040",
                "size_rule": {"kind": "fixed", "sizes": ["1024x1024", "512x512"]},
                "default_size": "1024x1024",
                "params": ["quality"],
                "choices": {"quality": ["standard", "hd"]},
            }
        ],
    }


def test_minimal_catalog_parses() -> None:
    # The rejection tests below mutate this; it must be valid to begin with.
    cat = parse_catalog(_minimal())
    assert cat.models["m1"].price_micros == 40_000
    assert cat.models["m1"].choices["quality"] == ("standard", "hd")


def _with(**changes: Any) -> dict[str, Any]:
    raw = copy.deepcopy(_minimal())
    raw["models"][0].update(changes)
    return raw


def test_rejects_unknown_family() -> None:
    with pytest.raises(CatalogError, match="unknown family"):
        parse_catalog(_with(family="nope"))


def test_rejects_unknown_key() -> None:
    # A typo is refused, not ignored (tests/test_settings.py: the message, file by file).
    with pytest.raises(CatalogError, match=r"models\[0\] \(m1\): unknown key 'max_nn'"):
        parse_catalog(_with(max_nn=4))
    raw = _minimal()
    raw["families"]["openai"]["key_evn"] = "K"
    with pytest.raises(CatalogError, match="families.openai: unknown key 'key_evn'"):
        parse_catalog(raw)


def test_rejects_unknown_param() -> None:
    with pytest.raises(CatalogError, match="unknown params"):
        parse_catalog(_with(params=["quality", "negative_prompt"]))


@pytest.mark.parametrize("price", ["abc", "-1", "0.0000001"])
def test_rejects_bad_price(price: str) -> None:
    with pytest.raises(CatalogError, match="price"):
        parse_catalog(_with(price=price))


def test_rejects_duplicate_id() -> None:
    raw = _minimal()
    raw["models"].append(copy.deepcopy(raw["models"][0]))
    with pytest.raises(CatalogError, match="defined twice"):
        parse_catalog(raw)


def test_rejects_unknown_size_rule_kind() -> None:
    with pytest.raises(CatalogError):
        parse_catalog(_with(size_rule={"kind": "whatever", "sizes": ["1024x1024"]}))


def test_rejects_choices_for_params_not_accepted() -> None:
    with pytest.raises(CatalogError, match="choices"):
        parse_catalog(_with(params=["quality"], choices={"style": ["vivid"]}))


def test_rejects_catalog_without_models() -> None:
    with pytest.raises(CatalogError, match="no models"):
        parse_catalog({"families": _minimal()["families"], "models": []})


def test_load_catalog_reports_unreadable_file(tmp_path) -> None:
    bad = tmp_path / "catalog.toml"
    bad.write_text("this is = = not toml")
    with pytest.raises(CatalogError, match="cannot read catalog"):
        load_catalog(bad)


# --- edits and variations ----------------------------------------------------


def test_edit_capabilities_of_the_shipped_models(catalog: Catalog) -> None:
    # OpenAI: GPT image models take 16 images and a mask, dall-e-2 one image, a mask and
    # variations; dall-e-3 has no edits. Seed 001: Kontext [max] 4 references.
    for model_id in ("gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5", "gpt-image-2"):
        model = catalog.models[model_id]
        assert (model.max_reference_images, model.mask, model.variations) == (16, True, False)
    dalle2 = catalog.models["dall-e-2"]
    assert (dalle2.max_reference_images, dalle2.mask, dalle2.variations) == (1, True, True)
    assert not catalog.models["dall-e-3"].edits
    assert catalog.models["black-forest-labs/flux.1-kontext-max"].max_reference_images == 4
    assert catalog.models["local/testcard"].max_reference_images == 16
    assert catalog.models["local/testcard"].variations
    assert "input_fidelity" not in catalog.models["gpt-image-1-mini"].params
    assert "input_fidelity" in catalog.models["gpt-image-1"].params


def test_max_reference_images_defaults_from_the_image_param() -> None:
    assert parse_catalog(_minimal()).models["m1"].max_reference_images == 0
    cat = parse_catalog(_with(params=["quality", "image"]))
    assert cat.models["m1"].max_reference_images == 1
    assert cat.models["m1"].edits and not cat.models["m1"].mask


def test_rejects_a_mask_without_reference_images() -> None:
    with pytest.raises(CatalogError, match="mask = true needs max_reference_images"):
        parse_catalog(_with(mask=True))
    with pytest.raises(CatalogError, match="max_reference_images"):
        parse_catalog(_with(max_reference_images=17))
