"""Tiers, limits counted in images, balances and refunds, through the live stack
(two gunicorn processes, real Celery workers, real Redis, the simulator)."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests
from openai import OpenAI

from shared.billing import Accounts
from shared.redis_client import connect
from shared.settings import Settings
from tests.conftest import cli, create_key
from tests.support.processes import BIN
from tests.support.sim import fault


def _accounts(env: dict[str, str]) -> Accounts:
    settings = Settings.from_env(env)
    return Accounts(connect(settings.redis_url), settings.load_catalog())


def _balance(env: dict[str, str], key_id: str) -> int:
    return _accounts(env).balance(key_id)


def _kinds(env: dict[str, str], key_id: str) -> list[tuple[str, int]]:
    return [(e["kind"], int(e["amount"])) for e in _accounts(env).ledger(key_id)]


def _post(gateway: str, key: str, body: dict) -> requests.Response:
    return requests.post(
        f"{gateway}/v1/images/generations",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )


def _burst(gateway: str, key: str, body: dict, count: int) -> list[requests.Response]:
    barrier = threading.Barrier(min(count, 24))

    def one(_: int) -> requests.Response:
        try:
            barrier.wait(timeout=10)
        except threading.BrokenBarrierError:
            pass
        return _post(gateway, key, body)

    with ThreadPoolExecutor(max_workers=24) as pool:
        return list(pool.map(one, range(count)))


# -- exactness under concurrency -----------------------------------------------------


def test_a_limit_of_L_images_admits_exactly_L_across_web_processes(
    gateway: str, stack_env: dict[str, str]
) -> None:
    key = create_key(stack_env, "limited", tier="test-limited")["key"]
    responses = _burst(gateway, key, {"model": "test/priced-card", "prompt": "x"}, 18)
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == 5, statuses
    assert statuses.count(429) == 13, statuses
    limited = next(r for r in responses if r.status_code == 429)
    err = limited.json()["error"]
    assert err["type"] == "rate_limit_error"
    assert "images per" in err["message"] and "test/priced-card" in err["message"]
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.headers["x-ratelimit-remaining-requests"] == "0"
    assert limited.headers["x-ratelimit-limit-requests"] == "5"


def test_images_count_towards_the_limit_not_calls(gateway: str, stack_env: dict[str, str]) -> None:
    key = create_key(stack_env, "limited-n", tier="test-limited")["key"]
    first = _post(gateway, key, {"model": "test/priced-card", "prompt": "x", "n": 3})
    assert first.status_code == 200
    assert first.headers["x-ratelimit-remaining-requests"] == "2"
    second = _post(gateway, key, {"model": "test/priced-card", "prompt": "x", "n": 3})
    assert second.status_code == 429  # 3 + 3 > 5, and nothing of it was consumed
    third = _post(gateway, key, {"model": "test/priced-card", "prompt": "x", "n": 2})
    assert third.status_code == 200
    assert third.headers["x-ratelimit-remaining-requests"] == "0"


def test_a_balance_for_K_images_pays_for_exactly_K(gateway: str, stack_env: dict[str, str]) -> None:
    created = create_key(stack_env, "billing", tier="test-billing", balance="0.070")
    responses = _burst(gateway, created["key"], {"model": "test/priced-card", "prompt": "x"}, 20)
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == 7, statuses
    assert statuses.count(402) == 13, statuses
    assert _balance(stack_env, created["id"]) == 0
    err = next(r for r in responses if r.status_code == 402).json()["error"]
    assert err["type"] == "insufficient_balance"
    assert "0.010000" in err["message"]
    usage = requests.get(
        f"{gateway}/v1/usage", headers={"Authorization": f"Bearer {created['key']}"}, timeout=10
    ).json()
    assert usage["balance"] == "0.000000"
    assert usage["totals"] == [{"model": "test/priced-card", "images": 7, "amount": "0.070000"}]


def _seconds(duration: str) -> float:
    """``x-ratelimit-reset-*`` (``250ms``, ``37s``, ``1m30s``, ``5h2m0s``) in seconds."""
    if duration.endswith("ms"):
        return int(duration[:-2]) / 1000
    units = {"h": 3600, "m": 60, "s": 1}
    return float(sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([hms])", duration)))


def test_account_requests_per_minute(gateway: str, stack_env: dict[str, str]) -> None:
    key = create_key(stack_env, "account", tier="test-account")["key"]
    client = OpenAI(api_key=key, base_url=f"{gateway}/v1", max_retries=0)
    models = client.models.with_raw_response.list()
    assert models.headers["x-ratelimit-limit-requests"] == "3"
    # The window is the gateway's current UTC minute, and the four calls below must share
    # one: if the gateway says it ends soon, start in the next one.
    left = _seconds(models.headers["x-ratelimit-reset-requests"])
    if left < 20:
        time.sleep(left + 0.5)
    for expected_remaining in ("2", "1", "0"):
        raw = client.images.with_raw_response.generate(
            model="local/testcard", prompt="x", n=4, size="32x32"
        )
        assert raw.headers["x-ratelimit-remaining-requests"] == expected_remaining
    with pytest.raises(openai.RateLimitError) as info:
        client.images.generate(model="local/testcard", prompt="x", size="32x32")
    assert "requests per minute for this account" in info.value.body["message"]


# -- tiers -----------------------------------------------------------------------------


def test_a_model_outside_the_tier_is_403_naming_the_tiers_that_have_it(
    gateway: str, stack_env: dict[str, str]
) -> None:
    key = create_key(stack_env, "free", tier="free", balance="1.00")["key"]
    client = OpenAI(api_key=key, base_url=f"{gateway}/v1", max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.images.generate(model="dall-e-3", prompt="x")
    body = info.value.body
    assert body["type"] == "permission_error" and body["param"] == "model"
    assert "enhanced" in body["message"] and "premium" in body["message"]
    assert "free" in body["message"].split("Tiers that do")[0]


def test_changing_the_tier_applies_to_the_next_request(
    gateway: str, stack_env: dict[str, str]
) -> None:
    created = create_key(stack_env, "upgrade", tier="free", balance="1.00")
    client = OpenAI(api_key=created["key"], base_url=f"{gateway}/v1", max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        client.images.generate(model="dall-e-3", prompt="x")
    cli(stack_env, "keys", "set-tier", created["id"], "enhanced")
    assert client.images.generate(model="dall-e-3", prompt="x").data


# -- refunds ---------------------------------------------------------------------------


def test_partial_delivery_is_charged_only_for_delivered_images(
    client_for, sim: str, stack_env: dict[str, str]
) -> None:
    created, client = client_for("partial", "1.00")
    requests.post(f"{sim}/_sim/config", json={"drop_images": 1}, timeout=5).raise_for_status()
    r = client.images.generate(model="dall-e-2", prompt="four", n=4, size="256x256")
    assert len(r.data) == 3
    # dall-e-2 256x256 is $0.016 an image (OpenAI's table, shared/catalog.toml).
    assert _balance(stack_env, created["id"]) == 1_000_000 - 3 * 16_000
    assert _kinds(stack_env, created["id"])[-3:] == [
        ("reserve", -64_000),
        ("settle", -48_000),
        ("refund", 16_000),
    ]


def test_upstream_failure_is_refunded_in_full(client_for, sim: str, stack_env) -> None:
    created, client = client_for("failure", "1.00")
    with pytest.raises(openai.APIStatusError) as info:  # the first try and both retries fail
        client.images.generate(model="dall-e-2", prompt=fault(500, 3), n=2, size="256x256")
    assert info.value.status_code == 502
    assert _balance(stack_env, created["id"]) == 1_000_000
    assert [k for k, _ in _kinds(stack_env, created["id"])][-3:] == ["reserve", "settle", "refund"]


def test_a_timeout_is_refunded_in_full(start_gateway, workers, sim: str, stack_env) -> None:
    url = start_gateway("web-short-billing", IMAGEGATE_SYNC_BUDGET_SECONDS="1.5")
    created = create_key(stack_env, "timeout", tier="test-billing", balance="1.00")
    client = OpenAI(api_key=created["key"], base_url=f"{url}/v1", max_retries=0)
    requests.post(f"{sim}/_sim/config", json={"latency": 5}, timeout=5).raise_for_status()
    with pytest.raises(openai.APIStatusError) as info:
        client.images.generate(model="dall-e-2", prompt="x", size="256x256")
    assert info.value.status_code == 504
    assert _balance(stack_env, created["id"]) == 1_000_000


# -- CLI ---------------------------------------------------------------------------------


def test_cli_tops_up_lists_and_shows_usage(gateway: str, stack_env: dict[str, str]) -> None:
    created = create_key(stack_env, "cli-user", tier="test-billing", balance="0.010")
    client = OpenAI(api_key=created["key"], base_url=f"{gateway}/v1", max_retries=0)
    client.images.generate(model="test/priced-card", prompt="x")
    with pytest.raises(openai.APIStatusError) as info:
        client.images.generate(model="test/priced-card", prompt="x")
    assert info.value.status_code == 402
    assert "0.030000" in cli(stack_env, "keys", "topup", created["id"], "0.03")
    assert client.images.generate(model="test/priced-card", prompt="x", n=3).data
    listing = cli(stack_env, "keys", "list")
    assert re.search(rf"{created['id']}\tactive\ttest-billing\t0\.000000", listing)
    usage = cli(stack_env, "keys", "usage", created["id"], "--ledger")
    assert "test/priced-card\t4 images\t0.040000" in usage
    assert "topup" in usage and "reserve" in usage


@pytest.fixture()
def client_for(gateway: str, stack_env: dict[str, str]):
    def make(name: str, balance: str) -> tuple[dict[str, str], OpenAI]:
        created = create_key(stack_env, name, tier="test-billing", balance=balance)
        return created, OpenAI(api_key=created["key"], base_url=f"{gateway}/v1", max_retries=0)

    return make


def test_cli_refuses_absurd_amounts_before_creating_anything(stack_env: dict[str, str]) -> None:
    before = cli(stack_env, "keys", "list").count("\n")
    env = {**os.environ, **stack_env}
    made = subprocess.run(
        [str(BIN / "imagegate"), "keys", "create", "--name", "rich", "--balance", "1e30"],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert made.returncode == 2 and "Traceback" not in made.stderr, made.stderr
    assert "--balance" in made.stderr
    assert cli(stack_env, "keys", "list").count("\n") == before  # no unusable key left behind
    created = create_key(stack_env, "topped", tier="test-billing", balance="1.00")
    topped = subprocess.run(
        [str(BIN / "imagegate"), "keys", "topup", created["id"], "1e30"],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert topped.returncode == 2 and "Traceback" not in topped.stderr, topped.stderr
    assert "balance 1.000000" in cli(stack_env, "keys", "usage", created["id"])
