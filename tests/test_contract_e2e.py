"""One contract, every upstream family: the same scenarios through the live stack
(the official openai client → gunicorn → Celery worker of the family → the
family's protocol simulator), for one model of each available family.

The scenarios only use the knobs every simulator shares (``/_sim/config``:
fail_next, fail_status, retry_after, api_key, latency, drop_images; a prompt
with the word "forbidden" triggers the upstream's moderation outcome), so a
new family joins the contract by being available with a simulator.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import openai
import pytest
import requests
from openai import OpenAI
from PIL import Image

from shared.catalog import load_catalog
from tests.conftest import available_families, simulated_providers
from tests.support.models import REPRESENTATIVE

FAMILIES = [f for f in available_families() if f in REPRESENTATIVE and f in simulated_providers()]
CATALOG = load_catalog()
# Families whose upstream returns several images from one call, so it can return fewer.
NATIVE_BATCH = [
    f
    for f in FAMILIES
    if f in ("openai", "replicate", "fal", "ark") and CATALOG.models[REPRESENTATIVE[f]].max_n > 1
]


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest, simulators: dict[str, str]) -> Iterator[str]:
    url = simulators[request.param]
    requests.post(f"{url}/_sim/reset", timeout=5).raise_for_status()
    yield request.param
    requests.post(f"{url}/_sim/reset", timeout=5)


def _configure(simulators: dict[str, str], family: str, **config) -> None:
    requests.post(f"{simulators[family]}/_sim/config", json=config, timeout=5).raise_for_status()


def _decode(item) -> Image.Image:
    if item.b64_json:
        return Image.open(io.BytesIO(base64.b64decode(item.b64_json)))
    got = requests.get(item.url, timeout=10)
    assert got.status_code == 200
    return Image.open(io.BytesIO(got.content))


def test_every_seed_family_is_in_the_contract() -> None:
    # Families become available as their adapters land; each must then be covered here.
    for name in available_families():
        if name != "local":
            assert name in FAMILIES, f"family {name} is available but not in the contract"


def test_success_single_image(client: OpenAI, family: str) -> None:
    model = CATALOG.models[REPRESENTATIVE[family]]
    r = client.images.generate(model=model.id, prompt="a lighthouse at dusk")
    assert len(r.data) == 1
    image = _decode(r.data[0])
    assert f"{image.width}x{image.height}" == r.size


def test_success_several_images_and_b64(client: OpenAI, family: str) -> None:
    model = CATALOG.models[REPRESENTATIVE[family]]
    n = min(2, model.max_n)
    r = client.images.generate(model=model.id, prompt="two foxes", n=n, response_format="b64_json")
    assert len(r.data) == n
    assert all(_decode(item).width > 0 for item in r.data)


@pytest.mark.parametrize("batch_family", NATIVE_BATCH)
def test_partial_delivery_returns_what_succeeded(
    client: OpenAI, batch_family: str, simulators: dict[str, str]
) -> None:
    # (Fan-out families lose one image of n to a failed task: see their adapter tests.)
    requests.post(f"{simulators[batch_family]}/_sim/reset", timeout=5).raise_for_status()
    _configure(simulators, batch_family, drop_images=1)
    try:
        r = client.images.generate(model=REPRESENTATIVE[batch_family], prompt="partial", n=2)
    finally:
        requests.post(f"{simulators[batch_family]}/_sim/reset", timeout=5)
    assert len(r.data) == 1


def test_upstream_5xx_exhausted_is_502(
    client: OpenAI, family: str, simulators: dict[str, str]
) -> None:
    _configure(simulators, family, fail_next=20, fail_status=500)
    with pytest.raises(openai.APIStatusError) as info:
        client.images.generate(model=REPRESENTATIVE[family], prompt="boom")
    assert info.value.status_code == 502
    assert info.value.body["type"] == "upstream_error"


def test_upstream_429_is_retried_then_succeeds(
    client: OpenAI, family: str, simulators: dict[str, str]
) -> None:
    _configure(simulators, family, fail_next=1, fail_status=429, retry_after=0.2)
    assert client.images.generate(model=REPRESENTATIVE[family], prompt="patience").data


def test_a_rejected_upstream_key_is_the_operators_problem_not_the_clients(
    client: OpenAI, family: str, simulators: dict[str, str]
) -> None:
    _configure(simulators, family, api_key="another-key")
    with pytest.raises(openai.APIStatusError) as info:
        client.images.generate(model=REPRESENTATIVE[family], prompt="who am i")
    assert info.value.status_code == 502
    assert info.value.body["code"] == "upstream_auth_failed"


def test_moderation_is_a_400_content_policy_violation(client: OpenAI, family: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model=REPRESENTATIVE[family], prompt="something forbidden")
    assert info.value.body["code"] == "content_policy_violation"


def test_the_deadline_is_a_504_naming_the_job(
    start_gateway, workers, api_key: str, family: str, simulators: dict[str, str]
) -> None:
    url = start_gateway(f"web-contract-{family}", IMAGEGATE_SYNC_BUDGET_SECONDS="1.5")
    _configure(simulators, family, latency=4)
    client = OpenAI(api_key=api_key, base_url=f"{url}/v1", max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        client.images.generate(model=REPRESENTATIVE[family], prompt="too slow")
    assert info.value.status_code == 504
    assert info.value.body["job_id"].startswith("imgjob_")


SEED_MODELS = sorted(m.id for m in CATALOG.models.values() if CATALOG.family_of(m).available)


@pytest.mark.parametrize("model_id", SEED_MODELS)
def test_every_catalog_model_is_reachable_through_its_adapter(
    client: OpenAI, model_id: str, simulators: dict[str, str]
) -> None:
    model = CATALOG.models[model_id]
    family = CATALOG.family_of(model)
    if family.name in simulators:
        requests.post(f"{simulators[family.name]}/_sim/reset", timeout=5).raise_for_status()
    if model.generations:
        r = client.images.generate(model=model_id, prompt="a red fox in the snow")
    else:  # an edits-only (inpainting) model: an edit, the mask (all transparent) says where
        picture = io.BytesIO()
        Image.new("RGBA", (256, 256), (200, 30, 30, 0)).save(picture, format="PNG")
        image = ("fox.png", picture.getvalue(), "image/png")
        mask = ("mask.png", picture.getvalue(), "image/png")
        r = client.images.edit(model=model_id, image=image, mask=mask, prompt="a red fox")
    assert len(r.data) == 1
    image = _decode(r.data[0])
    assert f"{image.width}x{image.height}" == r.size
    if family.name in simulators:
        # The simulator of the family saw the request for this model's upstream.
        log = requests.get(f"{simulators[family.name]}/_sim/requests", timeout=5).json()
        # (community Replicate models are called by their version id, the part after ':')
        name = model.upstream.rsplit(":", 1)[-1]
        assert any(name in str(entry) for entry in log), model.upstream


def test_every_seed_model_is_available() -> None:
    # Every model the seed pages name is served by an available family.
    assert all(CATALOG.family_of(m).available for m in CATALOG.models.values())
