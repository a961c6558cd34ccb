"""Every seed's example requests succeed, through the official ``openai`` client against
the whole stack (gunicorn, Celery workers, the upstream simulators), on a shipped tier
that the seed describes — seed 000's on its Free / Enhanced / Premium tiers (Free with a
new key's balance of 0: its turbo images are free), seeds 001-004's on ``payg`` (every
model per image, an account-level limit only).

Each example runs with a key of its own, so no example uses up another's window.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import requests
from openai import OpenAI

from shared.billing import Accounts, parse_money
from shared.keys import KeyStore
from shared.redis_client import connect
from shared.settings import Settings

# (seed, tier, starting balance, the example's arguments of client.images.generate)
EXAMPLES: list[tuple[str, str, str, dict[str, Any]]] = [
    # seed 000: selam-image-turbo "available for all users including FREE tier"
    ("000", "free", "0", {"model": "image-turbo", "prompt": "A red fox", "size": "1024x1024"}),
    ("000", "enhanced", "1.00", {"model": "image", "prompt": "A serene landscape with "
     "mountains and a lake at sunset", "size": "1024x1024", "n": 1}),
    ("000", "premium", "1.00", {"model": "image", "prompt": "A futuristic city at night",
     "size": "1024x1024", "response_format": "b64_json"}),
    ("000", "premium", "1.00", {"model": "image", "prompt": "A cute robot playing with a cat",
     "size": "1024x1024", "n": 3}),
    ("000", "premium", "1.00", {"model": "flux-pro",
     "prompt": "A magical forest with glowing mushrooms", "size": "1024x1024"}),
    ("000", "premium", "1.00", {"model": "image-pro", "prompt": "A beautiful sunset",
     "size": "1024x1024"}),
    ("001", "payg", "1.00", {"model": "bytedance/seedream-4.0", "prompt": "A futuristic city "
     "skyline at sunset, cinematic lighting.", "size": "2048x2048", "n": 1}),
    # seed 001: "Seedream 4.x/5.x accepts up to 15" images a call
    ("001", "payg", "1.00", {"model": "bytedance/seedream-4.0", "prompt": "Fifteen skylines",
     "size": "1920x1920", "n": 15}),
    ("002", "payg", "1.00", {"model": "flux-1.1-pro", "prompt": "A futuristic samurai "
     "warrior in a neon-lit cyberpunk city, high detail, 8k resolution", "n": 1,
     "size": "1024x1024"}),
    ("003", "payg", "1.00", {"model": "gpt-image-1", "prompt": "A cute baby sea otter",
     "n": 1, "size": "1024x1024"}),
    ("004", "payg", "1.00", {"model": "black-forest-labs/FLUX.1-schnell", "prompt": "A cute "
     "baby sea otter floating on its back", "n": 1, "quality": "hd", "response_format": "url",
     "size": "1024x1024", "style": "vivid", "user": "user-1234"}),
]  # fmt: skip


@pytest.fixture(scope="module")
def new_key(stack_env: dict[str, str]) -> Callable[[str, str], str]:
    """A key of a tier with a starting balance, made as ``imagegate keys create`` does."""
    settings = Settings.from_env(stack_env)
    client = connect(settings.redis_url)
    accounts = Accounts(client, settings.load_catalog())

    def make(tier: str, balance: str) -> str:
        plaintext, record = KeyStore(client).create("seed-example", tier=tier)
        if parse_money(balance):
            accounts.top_up(record.id, parse_money(balance))
        return plaintext

    return make


@pytest.mark.parametrize(
    ("seed", "tier", "balance", "example"),
    EXAMPLES,
    ids=[f"seed{s}-{t}-{e['model']}-n{e.get('n', 1)}" for s, t, _, e in EXAMPLES],
)
def test_a_seed_example_succeeds_on_a_tier_the_seed_describes(
    gateway: str,
    new_key: Callable[[str, str], str],
    seed: str,
    tier: str,
    balance: str,
    example: dict[str, Any],
) -> None:
    key = new_key(tier, balance)
    client = OpenAI(api_key=key, base_url=f"{gateway}/v1", max_retries=0, timeout=120)
    response = client.images.generate(**example)
    assert len(response.data) == example.get("n", 1)
    for image in response.data:
        assert image.url or image.b64_json
    usage = requests.get(
        f"{gateway}/v1/usage",
        params={"group_by": "user"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    ).json()
    if tier == "free":  # a new key starts at 0: the image was one of the free ones
        assert usage["balance"] == "0.000000"
        assert usage["free_images"]["remaining"] == usage["free_images"]["per_day"] - 1
    if "user" in example:  # the end user is recorded, and usage is grouped by it
        assert [(u["user"], u["images"]) for u in usage["users"]] == [(example["user"], 1)]
