"""Every error status a client can get, through the official client and raw HTTP."""

from __future__ import annotations

import json
import subprocess
import time

import openai
import pytest
import requests
from openai import OpenAI

from shared.jobs import JobStatus, JobStore
from shared.redis_client import connect
from tests.conftest import create_key
from tests.support.processes import BIN
from tests.support.sim import fault, sent_with


def _post(gateway: str, key: str, body, **kw) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}", **kw.pop("headers", {})}
    if isinstance(body, (dict, list)):
        return requests.post(
            f"{gateway}/v1/images/generations", json=body, headers=headers, timeout=30, **kw
        )
    return requests.post(
        f"{gateway}/v1/images/generations", data=body, headers=headers, timeout=30, **kw
    )


def _error(resp: requests.Response) -> dict:
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.headers.get("x-request-id")
    return resp.json()["error"]


# -- 400 ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"model": "local/testcard"}, "prompt", "missing_required_parameter"),
        ({"model": "local/testcard", "prompt": ""}, "prompt", "invalid_value"),
        ({"model": "local/testcard", "prompt": "x", "n": 0}, "n", "invalid_value"),
        ({"model": "local/testcard", "prompt": "x", "n": "2"}, "n", "invalid_value"),
        ({"model": "local/testcard", "prompt": "x", "n": 1_000_000_000}, "n", "invalid_value"),
        ({"model": "local/testcard", "prompt": "x", "n": 11}, "n", "invalid_value"),
        ({"model": "dall-e-3", "prompt": "x", "n": 2}, "n", "invalid_value"),
        ({"model": "local/testcard", "prompt": "x", "size": "99999999x1"}, "size", "invalid_size"),
        ({"model": "local/testcard", "prompt": "x", "size": "-1x-1"}, "size", "invalid_size"),
        ({"model": "local/testcard", "prompt": "x", "size": "1e3x1e3"}, "size", "invalid_size"),
        ({"model": "local/testcard", "prompt": "x", "size": "big"}, "size", "invalid_size"),
        ({"model": "local/testcard", "prompt": "x", "quality": "ultra"}, "quality", "invalid_value"),
        ({"model": "local/testcard", "prompt": "x", "response_format": "gif"}, "response_format", "invalid_value"),
        ({"model": "local/testcard", "prompt": "x", "colour": "red"}, "colour", "unknown_parameter"),
        ({"model": "local/testcard", "prompt": "x", "user": "a\r\nX-Injected: 1"}, "user", "invalid_value"),
        ({"model": "local/testcard", "prompt": "x", "aspect_ratio": "wide"}, "aspect_ratio", "invalid_aspect_ratio"),
        ({"model": "local/testcard", "prompt": "x", "stream": "yes"}, "stream", "invalid_value"),
        # style/quality a model lacks are mapped or ignored unless strict mode is on; their
        # refusals live on as strict-mode tests in test_openai_params_e2e.py.
        ({"model": "dall-e-2", "prompt": "x", "style": "bold"}, "style", "invalid_value"),
        ({"model": "dall-e-2", "prompt": "x", "background": "opaque"}, "background", "unsupported_parameter"),
        ({"model": "dall-e-2", "prompt": "x" * 1001}, "prompt", "string_above_max_length"),
        ({"model": "gpt-image-1", "prompt": "x", "background": "transparent", "output_format": "jpeg"}, "background", "invalid_value"),
    ],
)  # fmt: skip
def test_invalid_bodies_get_400_naming_the_param(
    gateway: str, api_key: str, body: dict, param: str, code: str
) -> None:
    resp = _post(gateway, api_key, body)
    assert resp.status_code == 400, resp.text
    err = _error(resp)
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param
    assert err["code"] == code


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (b'"just a string"', "invalid_json"),
        (b"\xff\xfe\x00garbage", "invalid_json"),
        (b"[" * 100_000, "json_too_complex"),  # refused before it is parsed
        (b"", "invalid_json"),
    ],
)
def test_malformed_json_gets_400(gateway: str, api_key: str, raw: bytes, code: str) -> None:
    resp = _post(gateway, api_key, raw, headers={"Content-Type": "application/json"})
    assert resp.status_code == 400
    assert _error(resp)["code"] == code


def test_non_json_content_type_gets_400(gateway: str, api_key: str) -> None:
    resp = _post(
        gateway, api_key, "prompt=x", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert resp.status_code == 400
    assert _error(resp)["code"] == "unsupported_content_type"


def test_official_client_raises_bad_request(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model="local/testcard", prompt="x", size="12x")
    assert info.value.body["param"] == "size"


def test_upstream_moderation_refusal_is_a_400_with_its_code(client: OpenAI, sim: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model="dall-e-2", prompt="something forbidden")
    assert info.value.body["code"] == "content_policy_violation"
    assert info.value.response.headers.get("x-upstream-request-id")


# -- 401 / 404 / 413 ---------------------------------------------------------------------


def test_missing_and_wrong_keys_get_401(gateway: str) -> None:
    resp = requests.post(f"{gateway}/v1/images/generations", json={"prompt": "x"}, timeout=10)
    assert resp.status_code == 401
    assert _error(resp)["type"] == "authentication_error"
    bad = OpenAI(api_key="ig-not-a-real-key", base_url=f"{gateway}/v1", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.images.generate(model="local/testcard", prompt="x")
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_revoked_key_gets_401_at_once(gateway: str, stack_env: dict[str, str]) -> None:
    created = create_key(stack_env, "to-revoke")
    client = OpenAI(api_key=created["key"], base_url=f"{gateway}/v1", max_retries=0)
    assert client.models.list().data
    subprocess.run(
        [str(BIN / "imagegate"), "keys", "revoke", created["id"]],
        env={**__import__("os").environ, **stack_env},
        check=True,
        capture_output=True,
    )
    with pytest.raises(openai.AuthenticationError) as info:
        client.images.generate(model="local/testcard", prompt="x")
    assert info.value.body["code"] == "revoked_api_key"


def test_unknown_model_gets_404(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.images.generate(model="no-such-model", prompt="x")
    assert info.value.body["param"] == "model"
    assert info.value.body["code"] == "model_not_found"


def test_unknown_route_gets_json_404(gateway: str, api_key: str) -> None:
    resp = requests.get(f"{gateway}/v1/nothing-here", timeout=10)
    assert resp.status_code == 404
    assert _error(resp)["type"] == "not_found_error"


def test_huge_body_gets_413(gateway: str, api_key: str) -> None:
    body = json.dumps({"model": "local/testcard", "prompt": "x" * (17 * 1024 * 1024)})
    resp = _post(gateway, api_key, body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 413
    assert _error(resp)["code"] == "request_too_large"


def test_megabyte_prompt_gets_400_not_500(gateway: str, api_key: str) -> None:
    resp = _post(gateway, api_key, {"model": "local/testcard", "prompt": "y" * 1_000_000})
    assert resp.status_code == 400
    assert _error(resp)["param"] == "prompt"


# -- 502 / 503 / 504 ---------------------------------------------------------------------


def test_upstream_failure_after_retries_is_502_with_upstream_request_id(
    client: OpenAI, sim: str
) -> None:
    prompt = fault(500, 3)
    with pytest.raises(openai.APIStatusError) as info:
        client.images.generate(model="dall-e-2", prompt=prompt, size="256x256")
    assert info.value.status_code == 502
    assert info.value.body["type"] == "upstream_error"
    assert info.value.response.headers.get("x-upstream-request-id", "").startswith("req_")
    # The gateway retried (1 try + 2 retries) before giving up.
    assert [c["status"] for c in sent_with(sim, prompt)] == [500, 500, 500]


def test_upstream_429_with_retry_after_is_retried_and_succeeds(client: OpenAI, sim: str) -> None:
    prompt = fault(429, 1, retry_after=1)
    started = time.monotonic()
    r = client.images.generate(model="dall-e-2", prompt=prompt, size="256x256")
    assert r.data[0].url
    calls = sent_with(sim, prompt)
    assert [c["status"] for c in calls] == [429, 200]
    assert calls[1]["time"] - calls[0]["time"] >= 0.9  # Retry-After: 1 was honoured
    assert time.monotonic() - started >= 0.9


def test_a_web_without_the_upstream_key_serves_a_family_a_live_worker_announces(
    start_gateway, workers, api_key: str
) -> None:
    """Upstream keys live with the workers: a web process without ``OPENAI_API_KEY``
    serves the family while a worker that has it runs (the 503 naming the variable once
    none does is tests/test_presence_e2e.py's)."""
    url = start_gateway("web-nokey", OPENAI_API_KEY=None)
    client = OpenAI(api_key=api_key, base_url=f"{url}/v1", max_retries=0)
    listed = {m.id: m for m in client.models.list().data}
    assert listed["dall-e-3"].model_extra["available"] is True
    assert client.images.generate(model="dall-e-3", prompt="x").data
    assert client.images.generate(model="local/testcard", prompt="x", size="64x64").data


def test_budget_exhausted_gives_504_with_job_id_and_the_worker_stops_too(
    start_gateway, workers, api_key: str, sim: str, redis_server
) -> None:
    url = start_gateway("web-short", IMAGEGATE_SYNC_BUDGET_SECONDS="2")
    requests.post(f"{sim}/_sim/config", json={"latency": 8}, timeout=5).raise_for_status()
    client = OpenAI(api_key=api_key, base_url=f"{url}/v1", max_retries=0, timeout=30)
    with pytest.raises(openai.APIStatusError) as info:
        client.images.generate(model="dall-e-2", prompt="slow", size="256x256")
    assert info.value.status_code == 504
    assert info.value.body["type"] == "timeout_error"
    job_id = info.value.body["job_id"]
    assert job_id in info.value.body["message"]
    assert info.value.response.headers["x-job-id"] == job_id

    jobs = JobStore(connect(redis_server.url))
    assert jobs.get(job_id).status == JobStatus.TIMED_OUT
    worker = next(w for w in workers if w.name == "worker-openai")
    deadline = time.monotonic() + 15
    while f"job {job_id} timed out" not in worker.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert f"job {job_id} timed out" in worker.log()


def test_unavailable_family_gets_503(client: OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client.images.generate(model="test/retired", prompt="x")
    assert info.value.status_code == 503
    assert info.value.body["code"] == "model_unavailable"
    assert "being migrated" in info.value.body["message"]
