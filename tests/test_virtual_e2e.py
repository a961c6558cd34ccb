"""Virtual models: weighted selection, fallback across families, circuit breakers,
and the per-family cap on concurrent upstream jobs — through the live stack."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fakeredis
import pytest
import requests
from openai import OpenAI

from api.routing import plan
from api.schemas import GenerationRequest
from shared.billing import Accounts
from shared.health import BreakerPolicy, Breakers
from shared.redis_client import connect
from shared.settings import Settings
from tests.conftest import create_key, start_worker
from tests.support.processes import Process
from tests.support.sim import fault, sent_with, tagged


def _settings(env: dict[str, str]) -> Settings:
    return Settings.from_env(env)


def test_weighted_choice_follows_the_weights() -> None:
    settings = Settings.from_env(
        {
            "IMAGEGATE_CATALOG_OVERLAYS": str(Path(__file__).parent / "data" / "test_models.toml"),
            "OPENAI_API_KEY": "configured",
        }
    )
    catalog = settings.load_catalog()
    breakers = Breakers(fakeredis.FakeRedis(decode_responses=True), BreakerPolicy())
    rng = random.Random(7)
    req = GenerationRequest(prompt="x", model="test/virtual")
    firsts = Counter(
        plan(req, catalog.virtual["test/virtual"], catalog=catalog, settings=settings,
             breakers=breakers, rng=rng)[0].model.id
        for _ in range(4000)
    )  # fmt: skip
    share = firsts["test/max-side"] / 4000
    assert 0.72 <= share <= 0.78, firsts  # weights 3:1 -> 0.75


def test_candidates_that_cannot_honour_the_request_are_not_chosen() -> None:
    settings = Settings.from_env(
        {
            "IMAGEGATE_CATALOG_OVERLAYS": str(Path(__file__).parent / "data" / "test_models.toml"),
            "OPENAI_API_KEY": "configured",
        }
    )
    catalog = settings.load_catalog()
    breakers = Breakers(fakeredis.FakeRedis(decode_responses=True), BreakerPolicy())
    # n=8: test/max-side takes at most 4, local/testcard 10.
    routes = plan(
        GenerationRequest(prompt="x", n=8), catalog.virtual["test/virtual"],
        catalog=catalog, settings=settings, breakers=breakers,
    )  # fmt: skip
    assert [r.model.id for r in routes] == ["local/testcard"]


def test_the_response_and_the_job_say_which_model_served(
    client: OpenAI, sim: str, gateway: str, api_key: str
) -> None:
    """Until each candidate has served once (the weights are the seeded test's above): the
    response and the job record name the same real model, the virtual one stays the model."""
    served: Counter[str] = Counter()
    for _ in range(200):  # both served within 200 draws at 3:1 but for odds of 0.75**200
        raw = client.images.with_raw_response.generate(model="test/virtual", prompt="which")
        body = raw.http_response.json()
        assert body["model"] == "test/virtual"
        job = requests.get(
            f"{gateway}/v1/images/generations/{raw.headers['x-job-id']}",
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=10,
        ).json()
        assert (job["model"], job["served_by"]) == ("test/virtual", body["served_by"])
        served[body["served_by"]] += 1
        if len(served) == 2:
            break
    assert set(served) == {"test/max-side", "local/testcard"}, served


def test_models_list_marks_virtual_models_and_their_candidates(client: OpenAI) -> None:
    listed = {m.id: m.model_extra for m in client.models.list().data}
    turbo = listed["image-turbo"]
    assert turbo["virtual"] is True
    assert [c["model"] for c in turbo["candidates"]][:2] == ["zhipu/z-image-turbo", "flux-schnell"]
    assert {"weight", "health", "available"} <= set(turbo["candidates"][0])
    assert listed["dall-e-3"]["virtual"] is False and "health" in listed["dall-e-3"]


def test_fallback_serves_the_image_charged_once_and_the_breaker_opens_then_recovers(
    gateway: str, stack_env: dict[str, str], sim: str
) -> None:
    created = create_key(stack_env, "virtual", tier="test-billing", balance="1.00")
    client = OpenAI(api_key=created["key"], base_url=f"{gateway}/v1", max_retries=0)
    settings = _settings(stack_env)
    accounts = Accounts(connect(settings.redis_url), settings.load_catalog())

    # 1. The first candidate fails (5xx after retries) and the job falls back. Only the
    # requests whose prompt names the fault fail upstream.
    failing = fault(500, 1000)
    raw = client.images.with_raw_response.generate(model="test/virtual-fallback", prompt=failing)
    body = raw.http_response.json()
    assert body["served_by"] == "test/priced-card"
    job = requests.get(
        f"{gateway}/v1/images/generations/{raw.headers['x-job-id']}",
        headers={"Authorization": f"Bearer {created['key']}"},
        timeout=10,
    ).json()
    assert [f["model"] for f in job["fallbacks"]] == ["test/flaky"]
    assert accounts.balance(created["id"]) == 1_000_000 - 20_000  # the virtual price, once
    assert [e["kind"] for e in accounts.ledger(created["id"])] == ["topup", "reserve", "settle"]

    # 2. Two more failures open test/flaky's breaker (threshold 3 in the test stack)...
    for _ in range(2):
        assert client.images.generate(model="test/virtual-fallback", prompt=failing).data
    listed = {m.id: m.model_extra for m in client.models.list().data}
    assert listed["test/flaky"]["health"] == "open"
    # ...so the next request skips it without calling its upstream at all.
    skipped = tagged("skip")
    raw = client.images.with_raw_response.generate(model="test/virtual-fallback", prompt=skipped)
    assert raw.http_response.json()["served_by"] == "test/priced-card"
    assert sent_with(sim, skipped) == []

    # 3. After the cool-down (3 s) it is tried again; the upstream has recovered (this
    # request names no fault).
    time.sleep(3.2)
    back = tagged("back")
    raw = client.images.with_raw_response.generate(model="test/virtual-fallback", prompt=back)
    assert raw.http_response.json()["served_by"] == "test/flaky"
    assert [c["status"] for c in sent_with(sim, back)] == [200]
    listed = {m.id: m.model_extra for m in client.models.list().data}
    assert listed["test/flaky"]["health"] == "closed"


@pytest.fixture()
def second_openai_worker(run_dir: Path, stack_env: dict[str, str]) -> Iterator[Process]:
    proc = start_worker(run_dir, stack_env, "openai", name="worker-openai-extra")
    yield proc
    proc.stop()


def test_the_concurrency_cap_holds_with_many_workers(
    client: OpenAI, sim: str, second_openai_worker: Process
) -> None:
    requests.post(f"{sim}/_sim/config", json={"latency": 0.8}, timeout=5).raise_for_status()
    barrier = threading.Barrier(8)

    def one(_: int) -> int:
        barrier.wait(timeout=10)
        return len(client.images.generate(model="test/capped", prompt=prompt).data)

    prompt = tagged("queue up")
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert sum(pool.map(one, range(8))) == 8
    log = sent_with(sim, prompt)
    assert len(log) == 8
    # Each upstream call lasts 0.8 s from its start: never more than 2 overlap (the cap).
    starts = sorted(e["time"] for e in log)
    overlap = max(sum(1 for t in starts if s <= t < s + 0.75) for s in starts)
    assert overlap <= 2, starts
    # And the cap is used: calls ran two at a time, not one. A call is logged before its
    # 0.8 s of latency, so one that starts less than 0.8 s after another overlaps it, however
    # slowly the machine picks calls up.
    assert any(b - a < 0.8 for a, b in zip(starts, starts[1:], strict=False)), starts
