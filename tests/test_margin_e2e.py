"""What a job cost upstream, next to what the client paid, for every family's simulator,
through the live stack (gunicorn, Celery workers, Redis, the simulators)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest
import requests

from shared.billing import Accounts
from shared.jobrecord import COST_SOURCE, record_key
from shared.redis_client import connect
from shared.settings import Settings
from tests.conftest import cli, create_key

# One request per family (two for Replicate: per-image and compute-time billing), the
# charge its price table gives, and where the upstream's cost must come from.
CASES: list[tuple[dict[str, Any], str, str]] = [
    ({"model": "local/testcard", "size": "64x64"}, "0.000000", "catalog"),
    ({"model": "gpt-image-1", "quality": "low"}, "0.011000", "usage"),  # tokens x prices
    ({"model": "dall-e-3", "quality": "hd", "size": "1792x1024"}, "0.120000", "catalog"),
    ({"model": "black-forest-labs/flux-2-pro"}, "0.030729", "upstream"),  # BFL's `cost`
    ({"model": "flux-schnell"}, "0.003000", "catalog"),
    ({"model": "sdxl", "size": "512x512"}, "0.005000", "compute"),  # predict_time
    ({"model": "zhipu/z-image-turbo"}, "0.005000", "catalog"),
    ({"model": "bytedance/seedream-4.0"}, "0.030000", "upstream"),  # generated_images
    ({"model": "zhipu/glm-image"}, "0.014000", "catalog"),
    ({"model": "stability/stable-image-core"}, "0.030000", "catalog"),
]


@pytest.fixture(scope="module")
def costed_gateway(start_gateway: Callable[..., str], workers: list) -> str:
    """A front-end whose /v1/usage shows upstream cost and margin."""
    return start_gateway("web-costs", IMAGEGATE_USAGE_SHOWS_COST="1")


def test_every_family_records_its_upstream_cost_beside_the_charge(
    costed_gateway: str, stack_env: dict[str, str]
) -> None:
    created = create_key(stack_env, "margins", tier="internal", balance="5.00")
    headers = {"Authorization": f"Bearer {created['key']}"}

    def post(body: dict[str, Any]) -> requests.Response:
        return requests.post(
            f"{costed_gateway}/v1/images/generations",
            json={"prompt": "what it cost", "response_format": "url", **body},
            headers=headers,
            timeout=90,
        )

    with ThreadPoolExecutor(max_workers=len(CASES)) as pool:
        responses = list(pool.map(post, [body for body, _, _ in CASES]))

    settings = Settings.from_env(stack_env)
    redis_client = connect(settings.redis_url)
    accounts = Accounts(redis_client, settings.load_catalog())
    settles = {e["job"]: e for e in accounts.ledger(created["id"], 200) if e["kind"] == "settle"}
    for (body, charge, source), response in zip(CASES, responses, strict=True):
        model = body["model"]
        assert response.status_code == 200, (model, response.text)
        assert response.headers["x-imagegate-charge"] == charge, model
        job_id = response.headers["x-job-id"]
        assert redis_client.hget(record_key(job_id), COST_SOURCE) == source, model
        entry = settles[job_id]
        assert -int(entry["amount"]) == int(Decimal(charge) * 1_000_000), model
        assert entry["cost"] != "", model
        if model != "local/testcard":
            assert int(entry["cost"]) > 0, model

    # BFL said what FLUX.2 cost: 3.07 credits for 1024x1024 (simulators/bfl.py).
    flux = responses[3].headers["x-job-id"]
    assert settles[flux]["cost"] == "30700"

    usage = requests.get(f"{costed_gateway}/v1/usage", headers=headers, timeout=10).json()
    totals = {t["model"]: t for t in usage["totals"]}
    for body, charge, _ in CASES:
        total = totals[body["model"]]
        assert total["amount"] == charge
        margin = Decimal(total["amount"]) - Decimal(total["cost"])
        assert Decimal(total["margin"]) == margin
    # seedream-4.0 sells at its cost; flux-2-pro leaves BFL's rounding.
    assert totals["bytedance/seedream-4.0"]["margin"] == "0.000000"
    assert totals["black-forest-labs/flux-2-pro"]["margin"] == "0.000029"

    # The job object says what was paid; GET /v1/models how prices are worked out.
    job = requests.get(
        f"{costed_gateway}/v1/images/generations/{flux}", headers=headers, timeout=10
    ).json()
    assert job["charge"] == "0.030729"
    model = requests.get(f"{costed_gateway}/v1/models/dall-e-3", headers=headers, timeout=10).json()
    assert model["pricing"]["table"]["hd"]["1792x1024"] == "0.120000"
    assert model["price_per_image"] == "0.04"

    # The operator's view: cost and margin by day and model.
    report = cli(stack_env, "keys", "usage", created["id"])
    assert "black-forest-labs/flux-2-pro\t1 images\t0.030729\tcost 0.030700" in report
