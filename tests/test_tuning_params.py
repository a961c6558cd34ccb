"""Fitting OpenAI clients' tuning fields to each model of the shipped catalog, and the
catalog's ``default_response_format`` (no stack needed: pure functions)."""

from __future__ import annotations

from typing import Any

import pytest

from api.schemas import GenerationRequest
from api.validation import ParamNotes, check_against_model, fit_tuning
from shared.catalog import CatalogError, load_catalog, parse_catalog
from shared.errors import InvalidRequest

pytestmark = pytest.mark.fast

CATALOG = load_catalog()


def _fit(model_id: str, **fields: Any) -> tuple[dict[str, Any], ParamNotes]:
    model = CATALOG.model(model_id)
    fitted, notes = fit_tuning(GenerationRequest(prompt="x", model=model_id, **fields), model)
    return check_against_model(fitted, model), notes


@pytest.mark.parametrize(
    ("model", "asked", "sent"),
    [
        ("gpt-image-1", "hd", "high"),
        ("gpt-image-1", "standard", "medium"),
        ("gpt-image-2", "hd", "high"),
        ("dall-e-3", "high", "hd"),
        ("dall-e-3", "medium", "standard"),
        ("dall-e-3", "low", "standard"),  # no lower level: the nearest
        ("zhipu/glm-image", "high", "hd"),
        ("zhipu/glm-image", "low", "auto"),  # no such level: the model's auto
    ],
)
def test_quality_maps_to_the_models_own_level(model: str, asked: str, sent: str) -> None:
    request, notes = _fit(model, quality=asked)
    assert request["quality"] == sent
    assert notes.mapped == (("quality", asked, sent),)
    assert notes.headers() == {"x-imagegate-mapped-params": f"quality={asked}->{sent}"}


def test_every_model_accepts_the_tuning_fields_of_dall_e_3() -> None:
    for model_id in CATALOG.models:
        request, notes = _fit(model_id, quality="hd", style="vivid", user="u1")
        sent = {k for k in ("quality", "style", "user") if k in request}
        # each field is sent (as is or mapped) or listed as ignored, never both
        assert sent.isdisjoint(notes.ignored), model_id
        assert sent | set(notes.ignored) == {"quality", "style", "user"}, model_id
        assert {m[0] for m in notes.mapped} <= sent, model_id


def test_auto_is_dropped_where_the_model_has_no_auto() -> None:
    request, notes = _fit("dall-e-3", quality="auto", style="natural")
    assert "quality" not in request and request["style"] == "natural"
    assert notes == ParamNotes(ignored=("quality",))


def test_options_ignored_params_count_as_ignored() -> None:
    # Seed 004's id accepts quality/style only so OpenAI-style requests pass; unused upstream.
    request, notes = _fit("black-forest-labs/FLUX.1-schnell", quality="hd", style="vivid")
    assert "quality" not in request and "style" not in request
    assert notes.ignored == ("quality", "style")


def test_other_fields_are_not_fitted() -> None:
    model = CATALOG.model("dall-e-3")
    req = GenerationRequest(prompt="x", background="opaque", quality="high")
    fitted, _ = fit_tuning(req, model)
    with pytest.raises(InvalidRequest) as info:
        check_against_model(fitted, model)
    assert info.value.param == "background"


def test_notes_round_trip_through_the_job_meta() -> None:
    notes = ParamNotes(mapped=(("quality", "hd", "high"),), ignored=("style", "user"))
    assert ParamNotes.from_meta(notes.to_meta()) == notes
    assert ParamNotes.from_meta(None).headers() == {}
    assert notes.headers()["x-imagegate-ignored-params"] == "style, user"


def test_default_response_format_comes_from_the_catalog() -> None:
    for model_id in ("gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5", "gpt-image-2"):
        assert CATALOG.model(model_id).default_response_format == "b64_json"
        request, _ = _fit(model_id)
        assert request["response_format"] == "b64_json"
        request, _ = _fit(model_id, response_format="url")
        assert request["response_format"] == "url"
    assert _fit("dall-e-3")[0]["response_format"] == "url"


def test_a_default_response_format_outside_the_models_formats_is_refused() -> None:
    raw = {
        "families": {"local": {"queue": "local", "adapter": "local", "key_env": ""}},
        "models": [
            {
                "id": "m",
                "family": "local",
                "size_rule": {"kind": "max_side", "min": 64, "max": 2048},
                "response_formats": ["url"],
                "default_response_format": "b64_json",
            }
        ],
    }
    with pytest.raises(CatalogError, match="default_response_format"):
        parse_catalog(raw)
