"""Each adapter's options model, checked when a process loads the catalog.

A catalog entry's ``options`` table is the adapter's business; a typo in it
(``max_cout``), a value of the wrong type or an upstream the adapter cannot
parse must stop the deployment with a message naming the model and the
option, not fail requests with a 500 once traffic arrives.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from shared.catalog import CatalogError, load_catalog
from shared.errors import ServerError
from workers.adapters import ADAPTERS, validate_catalog
from workers.adapters.base import AdapterOptions

pytestmark = pytest.mark.fast

TEST_MODELS = str(Path(__file__).parent / "data" / "test_models.toml")


def _with_model(tmp_path: Path, entry: str) -> str:
    overlay = tmp_path / "overlay.toml"
    overlay.write_text(
        "[[models]]\n" + entry.strip() + '\nprice = "0.01"\n'
        'size_rule = { kind = "aspect_ratio", ratios = ["1:1"] }\n'
        'default_size = "1024x1024"\nmax_n = 4\nmax_prompt_length = 1000\n'
    )
    return str(overlay)


def test_every_adapter_declares_an_options_model() -> None:
    for name in ADAPTERS:
        assert issubclass(ADAPTERS[name].options_model, AdapterOptions), name


def test_the_shipped_catalog_and_the_test_models_pass() -> None:
    validate_catalog(load_catalog())
    validate_catalog(load_catalog(overlays=(TEST_MODELS,)))


@pytest.mark.parametrize(
    ("entry", "named"),
    [
        # a typo: the key is not one the adapter reads
        (
            'id = "typo/flux"\nfamily = "replicate"\nupstream = "black-forest-labs/flux-schnell"\n'
            'options = { size_mode = "aspect_ratio", max_cout = 2 }',
            "options.max_cout",
        ),
        # a value outside the choices
        (
            'id = "typo/glm"\nfamily = "zhipu"\nupstream = "glm-image"\n'
            'options = { mode = "batch" }',
            "options.mode",
        ),
        # a value of the wrong type
        (
            'id = "typo/fal"\nfamily = "fal"\nupstream = "fal-ai/z-image/turbo"\n'
            'options = { poll_interval = "fast" }',
            "options.poll_interval",
        ),
        (
            'id = "typo/dalle"\nfamily = "openai"\nupstream = "dall-e-2"\n'
            'options = { response_format = "png" }',
            "options.response_format",
        ),
        # what only the adapter knows: its upstream's endpoints
        (
            'id = "typo/bfl"\nfamily = "bfl"\nupstream = "flux-9-ultra"',
            "flux-9-ultra",
        ),
        (
            'id = "typo/stability"\nfamily = "stability"\nupstream = "sd9"\n'
            'options = { endpoint = "/v2beta/stable-image/generate/turbo" }',
            "options.endpoint",
        ),
        (
            'id = "typo/replicate"\nfamily = "replicate"\nupstream = "not a model name"',
            "not a model name",
        ),
    ],
)
def test_a_bad_model_stops_the_catalog_naming_model_and_option(
    tmp_path: Path, entry: str, named: str
) -> None:
    catalog = load_catalog(overlays=(_with_model(tmp_path, entry),))
    with pytest.raises(CatalogError) as info:
        validate_catalog(catalog)
    model_id = entry.split('"')[1]
    assert f"'{model_id}'" in str(info.value)
    assert named in str(info.value)


def test_the_same_check_refuses_a_request_with_bad_options() -> None:
    """What validate_catalog refuses, the adapter refuses too (a model built in code)."""
    model = load_catalog().model("zhipu/glm-image")
    options = ADAPTERS["zhipu"].options_model
    with pytest.raises(ServerError) as info:
        options.of(dataclasses.replace(model, options={"mode": "batch"}))
    assert info.value.code == "catalog_misconfigured"


def test_a_worker_with_a_bad_catalog_does_not_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers import celery_app

    overlay = _with_model(
        tmp_path, 'id = "typo/glm"\nfamily = "zhipu"\nupstream = "glm-image"\noptions = { x = 1 }'
    )
    monkeypatch.setattr(
        celery_app,
        "settings",
        type("S", (), {"load_catalog": lambda self: load_catalog(overlays=(overlay,))})(),
    )
    with pytest.raises(SystemExit) as info:
        celery_app._check_catalog()
    assert "'typo/glm'" in str(info.value.code) and "options.x" in str(info.value.code)
