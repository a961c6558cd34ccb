"""Money, durations and tier parsing."""

from __future__ import annotations

import pytest

from shared.billing import format_duration, format_money, parse_money
from shared.catalog import CatalogError, load_catalog, parse_catalog

MODEL = {
    "id": "m",
    "family": "f",
    "size_rule": {"kind": "max_side", "min": 16, "max": 64},
    "default_size": "32x32",
}


def test_money_is_integer_micro_units() -> None:
    assert parse_money("1.5") == 1_500_000
    assert parse_money("0.000001") == 1
    assert format_money(1_234_567) == "1.234567"
    assert format_money(-20_000) == "-0.020000"
    for bad in ("abc", "0.0000001", "nan", "inf", ""):
        with pytest.raises(ValueError):
            parse_money(bad)


def test_durations_look_like_openais() -> None:
    assert format_duration(0.25) == "250ms"
    assert format_duration(37) == "37s"
    assert format_duration(90) == "1m30s"
    assert format_duration(5 * 3600 + 120) == "5h2m0s"


def test_shipped_tiers_follow_seed_000_and_cover_every_model() -> None:
    catalog = load_catalog()
    assert catalog.default_tier == "free"
    free, enhanced, premium = (catalog.tiers[t] for t in ("free", "enhanced", "premium"))
    assert (free.limit_for("flux-schnell").per_minute, free.limit_for("flux-schnell").per_day) == (
        1,
        5,
    )
    assert (
        enhanced.limit_for("flux-schnell").per_minute,
        enhanced.limit_for("flux-schnell").per_day,
    ) == (2, 20)
    assert (enhanced.limit_for("dall-e-3").per_minute, enhanced.limit_for("dall-e-3").per_day) == (
        1,
        10,
    )
    assert (premium.limit_for("flux-pro").per_minute, premium.limit_for("flux-pro").per_day) == (
        3,
        50,
    )
    assert not free.allows("dall-e-3") and not enhanced.allows("flux-pro")
    assert free.requests_per_minute == 60
    seed_tiers = [free, enhanced, premium]
    for model_id in catalog.models:
        assert any(t.allows(model_id) for t in seed_tiers), model_id


@pytest.mark.parametrize(
    "tiers",
    [
        {"t": {"limits": [{"models": ["nope"], "per_minute": 1}]}},
        {"t": {"limits": [{"models": ["m"], "per_minute": -1}]}},
        {"t": {"limits": [{"models": ["m"]}, {"models": ["m"]}]}},
        {"t": {"requests_per_minute": -5}},
    ],
)
def test_bad_tiers_are_rejected(tiers: dict) -> None:
    raw = {"families": {"f": {}}, "models": [MODEL], "tiers": tiers}
    with pytest.raises(CatalogError):
        parse_catalog(raw)


def test_default_tier_must_exist() -> None:
    raw = {
        "families": {"f": {}},
        "models": [MODEL],
        "tiers": {"a": {}},
        "accounts": {"default_tier": "b"},
    }
    with pytest.raises(CatalogError):
        parse_catalog(raw)
    raw["accounts"]["default_tier"] = "a"
    assert parse_catalog(raw).default_tier == "a"
