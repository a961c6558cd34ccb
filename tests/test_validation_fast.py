"""Request validation without a server: :mod:`api.validation` on the catalog's models.

``parse_body`` (OpenAI's schema, cheap rejections before parsing, duplicate
keys), ``check_against_model`` (the catalog's ``params`` and ``choices``,
limits) and ``fit_tuning`` (OpenAI's tuning fields fitted to a model).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from api.validation import (
    ParamNotes,
    check_against_model,
    fit_tuning,
    json_budget,
    parse_body,
)
from shared import errors
from shared.catalog import load_catalog
from shared.errors import InvalidRequest

pytestmark = pytest.mark.fast

CATALOG = load_catalog(None, (str(Path(__file__).parent / "data" / "test_models.toml"),))
# The request-fault codes the API shares with the adapters.
SHARED_CODES = {
    errors.UNKNOWN_PARAMETER,
    errors.MISSING_REQUIRED_PARAMETER,
    errors.UNSUPPORTED_PARAMETER,
    errors.INVALID_VALUE,
}


def body(**fields) -> bytes:
    return json.dumps(fields).encode()


def refusal(call, *args, **kwargs) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as refused:
        call(*args, **kwargs)
    return refused.value


def test_a_valid_body_parses() -> None:
    req = parse_body(body(prompt="a fox", n=2, size="64x64", quality="hd"))
    assert (req.prompt, req.n, req.size, req.quality) == ("a fox", 2, "64x64", "hd")


@pytest.mark.parametrize(
    ("raw", "param", "code"),
    [
        (body(prompt="x", colour="red"), "colour", errors.UNKNOWN_PARAMETER),
        (body(size="64x64"), "prompt", errors.MISSING_REQUIRED_PARAMETER),
        (body(prompt="x", n="2"), "n", errors.INVALID_VALUE),  # strict: no coercion
        (body(prompt="x", n=101), "n", errors.INVALID_VALUE),
        (body(prompt="x", quality="ultra"), "quality", errors.INVALID_VALUE),
        (body(prompt="x", user="a\nb"), "user", errors.INVALID_VALUE),
        (body(prompt="x\x00"), "prompt", errors.INVALID_VALUE),
        (body(prompt="x", stream="yes"), "stream", errors.INVALID_VALUE),
        (b'{"prompt": "x", "n": 1, "n": 2}', "n", "duplicate_parameter"),
        (b'{"prompt": "x"', None, "invalid_json"),
        (b'"x"', None, "invalid_json"),
    ],
)
def test_the_schema_refuses_naming_the_param(raw: bytes, param, code: str) -> None:
    error = refusal(parse_body, raw)
    assert (error.param, error.code, error.status) == (param, code, 400)


def test_costly_json_is_refused_before_parsing_but_an_inline_image_is_not_counted() -> None:
    budget = json_budget(CATALOG)
    nested = b"[" * (budget + 1)
    assert refusal(parse_body, nested, max_tokens=budget).code == "json_too_complex"
    # The same number of commas inside a data: URL is the image, not JSON structure.
    image = "data:image/png;base64," + "," * (budget + 1)
    assert parse_body(body(prompt="x", image=image), max_tokens=budget).image == image


def test_the_parse_charge_comes_after_the_cheap_checks() -> None:
    charged: list[int] = []
    raw = body(prompt="x" * 100)
    parse_body(raw, max_tokens=10_000, charge=charged.append)
    assert charged == [len(raw)]
    with pytest.raises(InvalidRequest):
        parse_body(b"[" * 10_001, max_tokens=10_000, charge=charged.append)
    assert charged == [len(raw)]  # refused cheaply: nothing charged, nothing parsed


@pytest.mark.parametrize(
    ("model_id", "fields", "param", "code"),
    [
        ("test/area-band", {"seed": 1}, "seed", errors.UNSUPPORTED_PARAMETER),
        ("dall-e-3", {"quality": "low"}, "quality", errors.INVALID_VALUE),  # catalog choices
        ("black-forest-labs/flux-2-pro", {"output_format": "webp"}, "output_format",
         errors.INVALID_VALUE),
        ("dall-e-3", {"n": 2}, "n", errors.INVALID_VALUE),
        ("dall-e-2", {"response_format": "b64_json", "prompt": "y" * 1001}, "prompt",
         "string_above_max_length"),
        ("local/testcard", {"prompt": "\u200b \u2060"}, "prompt", errors.INVALID_VALUE),
        ("local/testcard", {"background": "transparent", "output_format": "jpeg"}, "background",
         errors.INVALID_VALUE),
        ("local/testcard", {"size": "big"}, "size", "invalid_size"),
    ],
)  # fmt: skip
def test_the_model_refuses_what_its_catalog_entry_does_not_take(
    model_id: str, fields: dict, param: str, code: str
) -> None:
    req = parse_body(body(**{"prompt": "x", **fields}))
    error = refusal(check_against_model, req, CATALOG.models[model_id])
    assert (error.param, error.code) == (param, code)


def test_every_choice_of_every_model_is_accepted_and_checked_before_queueing() -> None:
    """The catalog's choices are what the API enforces: each listed value passes
    ``check_against_model`` and a value outside the list is refused there."""
    checked = 0
    for model in CATALOG.models.values():
        for name, allowed in model.choices.items():
            if name not in ("quality", "style", "output_format", "background", "moderation"):
                continue
            for value in allowed:
                request = check_against_model(parse_body(body(prompt="x", **{name: value})), model)
                assert request[name] == value
                checked += 1
    assert checked > 20


def test_the_job_request_says_what_the_worker_needs() -> None:
    req = parse_body(body(prompt="x", size="100x80", webhook_url="https://example.com/h"))
    request = check_against_model(req, CATALOG.models["local/testcard"])
    assert request["model"] == "local/testcard" and request["n"] == 1
    assert request["size"] == "100x80" and request["requested_size"] == "100x80"
    assert "webhook_url" not in request and "stream" not in request


def test_tuning_fields_are_fitted_and_noted() -> None:
    req = parse_body(body(prompt="x", quality="hd", style="vivid", user="u1"))
    fitted, notes = fit_tuning(req, CATALOG.models["gpt-image-1"])
    assert fitted.quality == "high" and fitted.style is None
    assert notes == ParamNotes(mapped=(("quality", "hd", "high"),), ignored=("style",))
    assert notes.headers() == {
        "x-imagegate-mapped-params": "quality=hd->high",
        "x-imagegate-ignored-params": "style",
    }
    assert ParamNotes.from_meta(notes.to_meta()) == notes
    # In strict mode (no fitting) the same request is refused by the catalog.
    assert refusal(check_against_model, req, CATALOG.models["gpt-image-1"]).code in SHARED_CODES
