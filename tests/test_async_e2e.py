"""Asynchronous mode, job endpoints, signed webhooks, SSRF refusals and idempotency,
through the live stack with a real webhook receiver on loopback."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import openai
import pytest
import requests
from openai import OpenAI
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from shared.billing import Accounts
from shared.redis_client import connect
from shared.settings import Settings
from tests.conftest import cli, create_key
from tests.support.processes import free_port
from tests.support.sim import fault


@dataclass
class Receiver:
    """A webhook receiver: records deliveries; can fail or hang on purpose."""

    url: str
    deliveries: list[dict] = field(default_factory=list)
    fail_first: int = 0
    hang_seconds: float = 0.0

    def wait_for(self, count: int, timeout: float = 20.0) -> list[dict]:
        end = time.monotonic() + timeout
        while len(self.deliveries) < count and time.monotonic() < end:
            time.sleep(0.05)
        return self.deliveries


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            state.deliveries.append(
                {"headers": dict(self.headers), "body": body, "path": self.path}
            )
            if state.hang_seconds:
                time.sleep(state.hang_seconds)
            status = 500 if len(state.deliveries) <= state.fail_first else 204
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/images"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _job(gateway: str, key: str, job_id: str) -> requests.Response:
    return requests.get(f"{gateway}/v1/images/generations/{job_id}", headers=_auth(key), timeout=10)


def _poll(gateway: str, key: str, job_id: str, *, until=("succeeded",), timeout=30.0) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        job = _job(gateway, key, job_id).json()
        if job["status"] in until:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached {until}: {job}")


# -- submit then fetch -------------------------------------------------------------------


def test_prefer_respond_async_answers_202_then_the_job_succeeds(
    client: OpenAI, gateway: str, api_key: str
) -> None:
    raw = client.images.with_raw_response.generate(
        model="local/testcard",
        prompt="later",
        size="96x64",
        n=2,
        extra_headers={"Prefer": "respond-async"},
    )
    assert raw.http_response.status_code == 202
    accepted = raw.http_response.json()
    assert accepted["object"] == "image.generation.job"
    assert accepted["status"] in ("queued", "running", "succeeded")
    assert raw.headers["Location"] == f"/v1/images/generations/{accepted['id']}"
    job = _poll(gateway, api_key, accepted["id"])
    assert job["result"]["size"] == "96x64" and len(job["result"]["data"]) == 2
    image = requests.get(job["result"]["data"][0]["url"], timeout=10)
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    # Each fetch signs fresh URLs: once the clock has passed the next second, a fetch
    # gives the same image a later expiry and another signature, and that URL works too.
    first = job["result"]["data"][0]["url"]
    time.sleep(1.1)
    again = _job(gateway, api_key, accepted["id"]).json()["result"]["data"][0]["url"]
    assert again.split("?")[0] == first.split("?")[0]
    first_q, again_q = parse_qs(urlsplit(first).query), parse_qs(urlsplit(again).query)
    assert int(again_q["expires"][0]) > int(first_q["expires"][0])
    assert again_q["signature"] != first_q["signature"]
    assert requests.get(again, timeout=10).content == image.content


def test_a_sync_504_names_a_job_that_can_be_fetched(
    start_gateway, workers, api_key: str, sim: str
) -> None:
    url = start_gateway("web-short-async", IMAGEGATE_SYNC_BUDGET_SECONDS="1.5")
    requests.post(f"{sim}/_sim/config", json={"latency": 4}, timeout=5).raise_for_status()
    client = OpenAI(api_key=api_key, base_url=f"{url}/v1", max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        client.images.generate(model="dall-e-2", prompt="slow", size="256x256")
    job = _job(url, api_key, info.value.body["job_id"]).json()
    assert job["status"] == "timed_out"
    assert job["error"]["type"] == "timeout_error" and job["status_code"] == 504


def test_failures_are_kept_on_the_job_with_the_sync_envelope(
    client: OpenAI, gateway: str, api_key: str, sim: str
) -> None:
    raw = client.images.with_raw_response.generate(
        model="dall-e-2",
        prompt=fault(500, 5),  # more failures than the upstream retries
        size="256x256",
        extra_headers={"Prefer": "respond-async"},
    )
    job = _poll(gateway, api_key, raw.http_response.json()["id"], until=("failed",))
    assert job["status_code"] == 502 and job["error"]["type"] == "upstream_error"
    assert "result" not in job


# -- webhooks ----------------------------------------------------------------------------


def test_webhook_is_delivered_signed_and_verifies_with_standardwebhooks(
    client: OpenAI, gateway: str, api_key: str, stack_env: dict[str, str], receiver: Receiver
) -> None:
    key_id = _key_id(stack_env, api_key)
    secret = cli(stack_env, "keys", "webhook-secret", key_id)
    assert secret.startswith("whsec_")
    raw = client.images.with_raw_response.generate(
        model="local/testcard",
        prompt="hook",
        size="64x64",
        extra_body={"webhook_url": receiver.url},
    )
    assert raw.http_response.status_code == 202
    job_id = raw.http_response.json()["id"]
    [delivery] = receiver.wait_for(1)
    payload = Webhook(secret).verify(delivery["body"], delivery["headers"])
    assert payload["id"] == job_id and payload["status"] == "succeeded"
    assert payload["result"]["data"][0]["url"]
    assert delivery["headers"]["webhook-id"] == f"msg_{job_id}"
    # A tampered body does not verify.
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(delivery["body"] + b" ", delivery["headers"])
    job = _poll(gateway, api_key, job_id)
    deadline = time.monotonic() + 5
    while job["webhook"]["state"] != "delivered" and time.monotonic() < deadline:
        time.sleep(0.1)
        job = _job(gateway, api_key, job_id).json()
    assert job["webhook"]["state"] == "delivered"
    assert [a["status"] for a in job["webhook"]["attempts"]] == [204]


def test_webhook_retries_until_the_receiver_accepts(
    client: OpenAI, gateway: str, api_key: str, receiver: Receiver
) -> None:
    receiver.fail_first = 2
    raw = client.images.with_raw_response.generate(
        model="local/testcard",
        prompt="retry",
        size="64x64",
        extra_body={"webhook_url": receiver.url},
    )
    job_id = raw.http_response.json()["id"]
    deliveries = receiver.wait_for(3)
    assert len(deliveries) == 3
    assert len({d["headers"]["webhook-id"] for d in deliveries}) == 1  # same message, retried
    end = time.monotonic() + 5
    while time.monotonic() < end:
        webhook = _job(gateway, api_key, job_id).json()["webhook"]
        if webhook["state"] == "delivered":
            break
        time.sleep(0.1)
    assert [a["status"] for a in webhook["attempts"]] == [500, 500, 204]


def test_a_receiver_that_never_answers_does_not_block_deliveries_or_generations(
    client: OpenAI, gateway: str, api_key: str, receiver: Receiver
) -> None:
    hanging = receiver
    hanging.hang_seconds = 30
    stuck = [
        client.images.with_raw_response.generate(
            model="local/testcard", prompt=f"hang {i}", size="32x32",
            extra_body={"webhook_url": hanging.url},
        ).http_response.json()["id"]
        for i in range(3)
    ]  # fmt: skip
    # Meanwhile a synchronous generation and another key's... another receiver still work.
    good = Receiver(url="")
    ok_server, good.url = _start_receiver(good)
    try:
        assert client.images.generate(
            model="local/testcard", prompt="still fine", size="32x32"
        ).data
        raw = client.images.with_raw_response.generate(
            model="local/testcard",
            prompt="good",
            size="32x32",
            extra_body={"webhook_url": good.url},
        )
        assert raw.http_response.status_code == 202
        assert len(good.wait_for(1, timeout=15)) == 1
    finally:
        ok_server.shutdown()
    # The hanging receiver's deliveries time out (1 s each) and end as failed after the retries.
    end = time.monotonic() + 30
    states = {}
    while time.monotonic() < end:
        states = {j: _job(gateway, api_key, j).json()["webhook"] for j in stuck}
        if all(s["state"] == "failed" for s in states.values()):
            break
        time.sleep(0.2)
    for state in states.values():
        assert state["state"] == "failed"
        assert len(state["attempts"]) == 4
        assert all(a.get("error") == "ReadTimeout" for a in state["attempts"])


def _start_receiver(state: Receiver):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            state.deliveries.append({"headers": dict(self.headers), "body": body})
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/hook"


# -- SSRF --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/hook",
        "http://172.16.0.5/hook",
        "http://192.168.1.10/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/hook",
        "http://localhost:8080/hook",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[fd00::1]/hook",
        "http://[fe80::1]/hook",
        "http://2130706433/hook",
        "http://0.0.0.0/hook",
        "ftp://example.com/hook",
        "file:///etc/passwd",
        "http://user:pw@example.com/hook",
        "not a url",
    ],
)
def test_unsafe_webhook_urls_are_refused_at_submit(gateway: str, api_key: str, url: str) -> None:
    resp = requests.post(
        f"{gateway}/v1/images/generations",
        json={"model": "local/testcard", "prompt": "x", "webhook_url": url},
        headers=_auth(api_key),
        timeout=10,
    )
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["param"] == "webhook_url" and err["code"] == "unsafe_url"


def test_a_name_resolving_to_a_private_address_is_refused_at_delivery(
    start_gateway, workers, api_key: str, receiver: Receiver
) -> None:
    # This front-end lets "localhost" through at submit time; the webhook workers do not,
    # so the delivery-time check (which resolves the name again) must refuse it.
    url = start_gateway("web-lax", IMAGEGATE_ALLOWED_INTERNAL_HOSTS="127.0.0.1,localhost")
    hook = receiver.url.replace("127.0.0.1", "localhost")
    resp = requests.post(
        f"{url}/v1/images/generations",
        json={"model": "local/testcard", "prompt": "x", "size": "32x32", "webhook_url": hook},
        headers=_auth(api_key),
        timeout=10,
    )
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["id"]
    end = time.monotonic() + 15
    webhook = {}
    while time.monotonic() < end:
        webhook = _job(url, api_key, job_id).json().get("webhook", {})
        if webhook.get("state") == "failed":
            break
        time.sleep(0.1)
    assert webhook["state"] == "failed"
    assert webhook["attempts"][0]["error"].startswith("refused: ")
    assert "refused: refused" not in webhook["attempts"][0]["error"]
    assert receiver.deliveries == []


# -- idempotency, isolation, cancel --------------------------------------------------------


def test_concurrent_duplicates_with_one_idempotency_key_make_one_job_and_one_charge(
    gateway: str, stack_env: dict[str, str]
) -> None:
    created = create_key(stack_env, "idem", tier="test-billing", balance="1.00")
    body = {"model": "test/priced-card", "prompt": "once", "n": 2}
    headers = {**_auth(created["key"]), "Idempotency-Key": "order-42"}

    def submit(_: int) -> requests.Response:
        return requests.post(
            f"{gateway}/v1/images/generations", json=body, headers=headers, timeout=30
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(submit, range(8)))
    assert {r.status_code for r in responses} == {200}
    assert len({r.headers["x-job-id"] for r in responses}) == 1
    settings = Settings.from_env(stack_env)
    accounts = Accounts(connect(settings.redis_url), settings.load_catalog())
    assert accounts.balance(created["id"]) == 1_000_000 - 2 * 10_000
    assert [e["kind"] for e in accounts.ledger(created["id"])] == ["topup", "reserve", "settle"]
    # Same key, different body: 409.
    other = requests.post(
        f"{gateway}/v1/images/generations",
        json={**body, "prompt": "twice"},
        headers=headers,
        timeout=30,
    )
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"


def test_a_job_refused_before_it_was_queued_releases_its_idempotency_key(
    gateway: str, start_gateway, stack_env: dict[str, str]
) -> None:
    # A front-end whose broker is down (nothing listens there) refuses with 503 before
    # anything is queued; the client retries with the same key, as it should.
    broken = start_gateway(
        "web-nobroker", IMAGEGATE_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0"
    )
    created = create_key(stack_env, "idem-outage", tier="test-billing", balance="1.00")
    body = {"model": "test/priced-card", "prompt": "after the outage", "size": "32x32"}
    headers = {**_auth(created["key"]), "Idempotency-Key": "order-outage"}
    first = requests.post(f"{broken}/v1/images/generations", json=body, headers=headers, timeout=30)
    assert first.status_code == 503, first.text
    refused = first.json()["error"]
    assert refused["job_id"] == first.headers["x-job-id"]
    assert _job(gateway, created["key"], refused["job_id"]).json()["status"] == "failed"
    retry = requests.post(
        f"{gateway}/v1/images/generations", json=body, headers=headers, timeout=30
    )
    assert retry.status_code == 200, retry.text
    assert retry.headers["x-job-id"] != refused["job_id"]
    again = requests.post(
        f"{gateway}/v1/images/generations", json=body, headers=headers, timeout=30
    )
    assert again.headers["x-job-id"] == retry.headers["x-job-id"]  # the key now holds that job
    settings = Settings.from_env(stack_env)
    accounts = Accounts(connect(settings.redis_url), settings.load_catalog())
    assert accounts.balance(created["id"]) == 1_000_000 - 10_000  # one image, charged once


def test_another_key_can_neither_read_nor_cancel_a_job(
    client: OpenAI, gateway: str, api_key: str, stack_env: dict[str, str]
) -> None:
    raw = client.images.with_raw_response.generate(
        model="local/testcard",
        prompt="mine",
        size="32x32",
        extra_headers={"Prefer": "respond-async"},
    )
    job_id = raw.http_response.json()["id"]
    stranger = create_key(stack_env, "stranger")["key"]
    assert _job(gateway, stranger, job_id).status_code == 404
    cancel = requests.post(
        f"{gateway}/v1/images/generations/{job_id}/cancel", headers=_auth(stranger), timeout=10
    )
    assert cancel.status_code == 404
    assert _job(gateway, api_key, job_id).status_code == 200
    assert _job(gateway, api_key, "imgjob_doesnotexist").status_code == 404


def test_cancel_stops_a_running_job_and_refunds_it(
    gateway: str, stack_env: dict[str, str], sim: str
) -> None:
    created = create_key(stack_env, "cancel", tier="test-billing", balance="1.00")
    requests.post(f"{sim}/_sim/config", json={"latency": 3}, timeout=5).raise_for_status()
    resp = requests.post(
        f"{gateway}/v1/images/generations",
        json={"model": "dall-e-2", "prompt": "never mind", "size": "256x256"},
        headers={**_auth(created["key"]), "Prefer": "respond-async"},
        timeout=10,
    )
    job_id = resp.json()["id"]
    _poll(gateway, created["key"], job_id, until=("running",), timeout=10)
    cancel = requests.post(
        f"{gateway}/v1/images/generations/{job_id}/cancel",
        headers=_auth(created["key"]),
        timeout=10,
    )
    assert cancel.status_code == 200 and cancel.json()["status"] == "canceled"
    again = requests.post(
        f"{gateway}/v1/images/generations/{job_id}/cancel",
        headers=_auth(created["key"]),
        timeout=10,
    )
    assert again.status_code == 409
    time.sleep(3.5)  # the worker finishes its upstream call, and must not overwrite the cancel
    job = _job(gateway, created["key"], job_id).json()
    assert job["status"] == "canceled" and job["error"]["code"] == "job_canceled"
    settings = Settings.from_env(stack_env)
    accounts = Accounts(connect(settings.redis_url), settings.load_catalog())
    assert accounts.balance(created["id"]) == 1_000_000


def _key_id(env: dict[str, str], plaintext: str) -> str:
    from shared.keys import KeyStore

    return KeyStore(connect(env["IMAGEGATE_REDIS_URL"])).authenticate(plaintext).id


def test_an_unknown_job_is_a_json_404(gateway: str, api_key: str) -> None:
    resp = requests.get(
        f"{gateway}/v1/images/generations/not-a-job", headers=_auth(api_key), timeout=10
    )
    assert resp.status_code == 404
    assert json.loads(resp.text)["error"]["type"] == "not_found_error"


def test_reference_image_urls_get_the_same_guard(gateway: str, api_key: str) -> None:
    # test/edit (tests/data/test_models.toml) takes a reference image.
    resp = requests.post(
        f"{gateway}/v1/images/generations",
        json={"model": "test/edit", "prompt": "x", "image": "https://169.254.169.254/x.png"},
        headers=_auth(api_key),
        timeout=10,
    )
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "image"
    assert resp.json()["error"]["code"] == "unsafe_url"


def test_prefer_respond_async_may_carry_parameters_and_company(gateway: str, api_key: str) -> None:
    resp = requests.post(
        f"{gateway}/v1/images/generations",
        json={"model": "local/testcard", "prompt": "prefer"},
        headers={**_auth(api_key), "Prefer": "wait=5, Respond-Async; foo=bar"},
        timeout=10,
    )
    assert resp.status_code == 202, resp.text


def test_a_failed_sync_generation_names_its_job(gateway: str, api_key: str, sim: str) -> None:
    resp = requests.post(
        f"{gateway}/v1/images/generations",
        json={"model": "dall-e-2", "prompt": fault(500, 10), "size": "256x256"},
        headers=_auth(api_key),
        timeout=60,
    )
    assert resp.status_code == 502, resp.text
    job = requests.get(
        f"{gateway}/v1/images/generations/{resp.headers['x-job-id']}",
        headers=_auth(api_key),
        timeout=10,
    ).json()
    assert job["status"] == "failed" and job["status_code"] == 502
