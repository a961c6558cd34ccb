"""The web app in-process: Flask's ``test_client`` on a ``fakeredis`` server.

No process is started (``pytest -m fast`` runs these in seconds): validation,
error rendering (every answer is OpenAI's envelope, documented by
``GET /openapi.json``), the OpenAPI document's validity, and the per-key
limit on request bytes parsed (:mod:`api.parse_limit`). What needs real
processes (workers, gunicorn's own limits, the queue) stays in the ``_e2e``
tests.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fakeredis
import jsonschema
import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate

from api.app import create_app
from api.openapi import build_openapi
from api.parse_limit import BURST_BODIES, ParseLimit
from api.services import EXTENSION, Services
from shared.errors import RateLimited
from shared.keys import KeyStore
from shared.settings import Settings
from shared.storage import StorageConfig

pytestmark = pytest.mark.fast

TEST_CATALOG = Path(__file__).parent / "data" / "test_models.toml"
GENERATIONS = "/v1/images/generations"


@pytest.fixture()
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture()
def app(tmp_path: Path, server: fakeredis.FakeServer) -> Flask:
    settings = Settings(
        storage=StorageConfig(local_dir=str(tmp_path / "images")),
        database_url=f"sqlite:///{tmp_path}/records.sqlite3",
        catalog_overlays=(str(TEST_CATALOG),),
        strict_params=True,  # refuse, rather than fit, tuning fields a model does not take
        sync_budget_seconds=2.0,  # no worker runs here: a queued sync job would wait
        credentials={"OPENAI_API_KEY": "sk-test"},
    )
    client = fakeredis.FakeRedis(server=server, decode_responses=True)
    return create_app(settings, redis_client=client)


def services_of(app: Flask) -> Services:
    return app.extensions[EXTENSION]


@pytest.fixture()
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture()
def new_key(app: Flask) -> Callable[..., str]:
    def make(name: str = "fast", tier: str = "internal", balance: int | None = None) -> str:
        """A key of ``tier``: unlimited, or with ``balance`` micros."""
        svc = services_of(app)
        plaintext, key = KeyStore(svc.redis).create(name, tier=tier, unlimited=balance is None)
        if balance is not None:
            svc.accounts.set_balance(key.id, balance)
        return plaintext

    return make


@pytest.fixture()
def auth(new_key: Callable[..., str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {new_key()}"}


# --- the document, and answers checked against it ----------------------------------------------

DOCUMENT = build_openapi()


def _resolve(node: Any) -> Any:
    """``node`` with every local ``$ref`` of the document replaced by its target."""
    if isinstance(node, dict):
        if "$ref" in node and len(node) == 1:
            target: Any = DOCUMENT
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return _resolve(target)
        return {k: _resolve(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v) for v in node]
    return node


def conforms(response, path: str, method: str) -> dict[str, Any]:
    """The JSON body of ``response``, checked against the document's schema of its status."""
    operation = DOCUMENT["paths"][path][method]
    documented = operation["responses"].get(str(response.status_code))
    assert documented is not None, f"{response.status_code} is not documented for {path}"
    documented = _resolve(documented)
    assert response.mimetype == "application/json"
    body = response.get_json()
    schema = documented["content"]["application/json"]["schema"]
    jsonschema.validate(body, {**schema, "components": DOCUMENT["components"]})
    for name, header in documented.get("headers", {}).items():
        if header.get("required"):
            assert name in response.headers, f"{name} missing on {response.status_code}"
    return body


def test_the_document_is_valid_openapi_3_1(client: FlaskClient) -> None:
    served = client.get("/openapi.json").get_json()
    validate(served)
    assert served == json.loads(json.dumps(build_openapi(default_model="local/testcard")))


def test_models_and_usage_answer_as_documented(client: FlaskClient, auth) -> None:
    listed = conforms(client.get("/v1/models", headers=auth), "/v1/models", "get")
    assert {m["id"] for m in listed["data"]} >= {"local/testcard", "test/virtual"}
    virtual = client.get("/v1/models/test/virtual", headers=auth)
    assert conforms(virtual, "/v1/models/{model_id}", "get")["virtual"] is True
    usage = conforms(client.get("/v1/usage", headers=auth), "/v1/usage", "get")
    assert usage["balance"] == "unlimited"
    assert usage["data"] == []


def test_an_async_generation_is_a_documented_job(client: FlaskClient, auth, app: Flask) -> None:
    body = {"prompt": "a fox", "model": "local/testcard", "size": "64x64"}
    accepted = client.post(GENERATIONS, json=body, headers={**auth, "Prefer": "respond-async"})
    assert accepted.status_code == 202
    job = conforms(accepted, GENERATIONS, "post")
    assert job["status"] == "queued"
    assert accepted.headers["Location"] == f"{GENERATIONS}/{job['id']}"
    fetched = client.get(f"{GENERATIONS}/{job['id']}", headers=auth)
    assert conforms(fetched, f"{GENERATIONS}/{{job_id}}", "get")["id"] == job["id"]
    canceled = client.post(f"{GENERATIONS}/{job['id']}/cancel", headers=auth)
    assert conforms(canceled, f"{GENERATIONS}/{{job_id}}/cancel", "post")["status"] == "canceled"
    # The job went onto its family's queue (the web's own Redis is the broker).
    assert services_of(app).redis.llen(services_of(app).catalog.models["local/testcard"].family)


# --- errors: one envelope, documented ------------------------------------------------------------


def _error(response, status: int, code: str | None, path: str = GENERATIONS, method="post"):
    assert response.status_code == status, response.get_data(as_text=True)
    error = conforms(response, path, method)["error"]
    assert error["code"] == code
    assert response.headers["x-request-id"]
    return error


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        (b"{", "invalid_json", None),
        (b"[]", "invalid_json", None),
        (b'{"prompt": "x", "nope": 1}', "unknown_parameter", "nope"),
        (b'{"size": "64x64"}', "missing_required_parameter", "prompt"),
        (b'{"prompt": "x", "n": 0}', "invalid_value", "n"),
        (b'{"prompt": "a\\u0000b"}', "invalid_value", "prompt"),
        (b'{"prompt": "x", "stream": "yes"}', "invalid_value", "stream"),
        (b'{"prompt": "x", "prompt": "y"}', "duplicate_parameter", "prompt"),
        (b'{"prompt": "\\u200b\\u200d"}', "invalid_value", "prompt"),
        (b'{"prompt": "x", "model": "test/area-band", "seed": 1}', "unsupported_parameter", "seed"),
        (b'{"prompt": "x", "model": "local/testcard", "n": 11}', "invalid_value", "n"),
        (b'{"prompt": "x", "model": "dall-e-3", "quality": "low"}', "invalid_value", "quality"),
        (b"[" * 100_000, "json_too_complex", None),
    ],
)
def test_bad_bodies_are_400_naming_the_param(
    client: FlaskClient, auth, app: Flask, body: bytes, code: str, param: str | None
) -> None:
    headers = {**auth, "Content-Type": "application/json"}
    error = _error(client.post(GENERATIONS, data=body, headers=headers), 400, code)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    # Refused before admission: no job record, nothing charged or queued.
    svc = services_of(app)
    assert svc.redis.keys(svc.jobs.record_key("*")) == []


def test_content_type_and_encoding(client: FlaskClient, auth) -> None:
    plain = client.post(GENERATIONS, data="{}", headers={**auth, "Content-Type": "text/plain"})
    _error(plain, 400, "unsupported_content_type")
    gzip = {**auth, "Content-Type": "application/json", "Content-Encoding": "gzip"}
    _error(
        client.post(GENERATIONS, data=b"\x1f\x8b", headers=gzip),
        400,
        "unsupported_content_encoding",
    )


def test_authentication_and_unknowns(client: FlaskClient, auth) -> None:
    _error(client.get("/v1/models"), 401, "missing_api_key", "/v1/models", "get")
    wrong = {"Authorization": "Bearer ig-wrong"}
    _error(client.get("/v1/usage", headers=wrong), 401, "invalid_api_key", "/v1/usage", "get")
    missing = client.get("/v1/models/no/such-model", headers=auth)
    assert missing.status_code == 404
    conforms(missing, "/v1/models/{model_id}", "get")
    job = client.get(f"{GENERATIONS}/imgjob_{'0' * 24}", headers=auth)
    _error(job, 404, "job_not_found", f"{GENERATIONS}/{{job_id}}", "get")
    unknown = client.get("/v2/nothing")
    assert unknown.status_code == 404 and unknown.get_json()["error"]["type"] == "not_found_error"
    double = client.get("//v1/models", headers=auth)
    assert double.status_code == 404 and "Location" not in double.headers


def test_a_wrong_method_is_405_with_allow(client: FlaskClient, auth) -> None:
    response = client.delete("/v1/models", headers=auth)
    assert response.status_code == 405
    assert response.get_json()["error"]["code"] == "method_not_allowed"
    assert "GET" in response.headers["Allow"]


def test_a_body_over_the_limit_is_413(client: FlaskClient, auth, app: Flask) -> None:
    limit = app.config["MAX_CONTENT_LENGTH"]
    body = b'{"prompt": "' + b"x" * limit + b'"}'
    headers = {**auth, "Content-Type": "application/json"}
    _error(client.post(GENERATIONS, data=body, headers=headers), 413, "request_too_large")


def test_tiers_and_models_refuse_as_documented(client: FlaskClient, new_key) -> None:
    free = {"Authorization": f"Bearer {new_key('free', tier='free')}"}
    refused = client.post(GENERATIONS, json={"prompt": "x", "model": "dall-e-3"}, headers=free)
    assert _error(refused, 403, refused.get_json()["error"]["code"])["type"] == "permission_error"
    internal = {"Authorization": f"Bearer {new_key()}"}
    retired = client.post(
        GENERATIONS, json={"prompt": "x", "model": "test/retired"}, headers=internal
    )
    assert retired.status_code == 503 and retired.headers["x-should-retry"] == "false"
    conforms(retired, GENERATIONS, "post")


def test_balance_limits_and_idempotency_answer_as_documented(client: FlaskClient, new_key) -> None:
    poor = {"Authorization": f"Bearer {new_key('poor', tier='test-billing', balance=5000)}"}
    body = {"prompt": "x", "model": "test/priced-card", "size": "64x64"}
    _error(client.post(GENERATIONS, json=body, headers=poor), 402, "insufficient_balance")
    limited = {"Authorization": f"Bearer {new_key('limited', tier='test-limited')}"}
    # More images than the window's whole limit: 400 with the largest n, never a 429.
    too_many = client.post(GENERATIONS, json={**body, "n": 6}, headers=limited)
    assert _error(too_many, 400, "n_exceeds_images_per_minute")["max_n"] == 5
    filled = client.post(
        GENERATIONS, json={**body, "n": 5}, headers={**limited, "Prefer": "respond-async"}
    )
    assert filled.status_code == 202
    over = client.post(GENERATIONS, json=body, headers=limited)
    assert _error(over, 429, "rate_limit_exceeded")["limit"]
    assert int(over.headers["Retry-After"]) >= 1
    assert over.headers["x-ratelimit-limit-requests"] == "5"
    # The same Idempotency-Key: the same job; with another body, a conflict.
    auth = {"Authorization": f"Bearer {new_key()}", "Prefer": "respond-async"}
    once = {**auth, "Idempotency-Key": "fast-1"}
    first = client.post(GENERATIONS, json=body, headers=once)
    again = client.post(GENERATIONS, json=body, headers=once)
    assert first.status_code == again.status_code == 202
    assert first.get_json()["id"] == again.get_json()["id"]
    other = client.post(GENERATIONS, json={**body, "prompt": "y"}, headers=once)
    _error(other, 409, "idempotency_key_reused")


def test_a_spending_cap_is_a_402_and_usage_shows_caps_and_end_users(
    client: FlaskClient, app: Flask, new_key
) -> None:
    plaintext = new_key("capped", tier="test-billing", balance=10**9)
    svc = services_of(app)
    key = svc.keys.authenticate(plaintext)
    svc.keys.set_budget(key.id, day_micros=1)
    headers = {"Authorization": f"Bearer {plaintext}"}
    body = {"prompt": "x", "model": "test/priced-card", "size": "64x64"}
    capped = client.post(GENERATIONS, json=body, headers=headers)
    assert _error(capped, 402, "daily_budget_exceeded")["budget"] == "0.000001"
    usage = client.get("/v1/usage?group_by=user", headers=headers)
    assert usage.status_code == 200, usage.get_data(as_text=True)
    conforms(usage, "/v1/usage", "get")
    budgets = {b["period"]: b for b in usage.get_json()["budgets"]}
    assert budgets["day"]["cap"] == "0.000001" and budgets["month"]["cap"] is None
    assert budgets["day"]["spent"] == "0.000000"  # the refused request spent nothing
    assert usage.get_json()["users"] == []
    _error(client.get("/v1/usage?group_by=model", headers=headers), 400, "invalid_value",
           "/v1/usage", "get")  # fmt: skip


def test_redis_down_is_503_with_retry_after(client: FlaskClient, auth, server) -> None:
    server.connected = False
    response = client.get("/v1/models", headers=auth)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "2"
    assert response.get_json()["error"]["type"] == "service_unavailable"


# --- parse work counts against a per-key limit ------------------------------------------------


@pytest.fixture()
def small_parse_budget(app: Flask) -> ParseLimit:
    """A bucket of 1 MiB refilled at 64 KiB/s per key (instead of the default)."""
    svc = services_of(app)
    limit = ParseLimit(svc.redis, rate=64 * 1024, burst=1024 * 1024)
    app.extensions[EXTENSION] = dataclasses.replace(svc, parse_limit=limit)
    return limit


def test_many_large_bodies_from_one_key_get_429_and_another_key_is_served(
    client: FlaskClient, new_key, small_parse_budget: ParseLimit
) -> None:
    greedy = {"Authorization": f"Bearer {new_key('greedy')}"}
    # Valid JSON that passes the cheap checks (no punctuation to count) and costs a parse.
    large = json.dumps({"prompt": "p" * 200_000, "model": "local/testcard"})
    statuses = [
        client.post(GENERATIONS, data=large, headers={**greedy, "Content-Type": "application/json"})
        for _ in range(10)
    ]
    codes = [r.status_code for r in statuses]
    assert codes[:5] == [400] * 5  # parsed (and refused: the prompt is too long)
    assert 429 in codes[5:], codes
    limited = next(r for r in statuses if r.status_code == 429)
    error = _error(limited, 429, "rate_limit_exceeded")
    assert error["limit"] == "request_body_bytes"
    assert int(limited.headers["Retry-After"]) >= 1
    # Another key is not held by the first one's budget.
    other = {"Authorization": f"Bearer {new_key('other')}", "Prefer": "respond-async"}
    body = {"prompt": "a fox", "model": "local/testcard", "size": "64x64"}
    assert client.post(GENERATIONS, json=body, headers=other).status_code == 202


def test_the_default_budget_takes_any_body_the_gateway_accepts(app: Flask) -> None:
    limit = services_of(app).parse_limit
    assert limit.burst >= BURST_BODIES * app.config["MAX_CONTENT_LENGTH"]
    for _ in range(BURST_BODIES):
        limit.charge("key_fast", app.config["MAX_CONTENT_LENGTH"])


def test_parse_limit_refuses_without_taking_and_refills(app: Flask) -> None:
    client = services_of(app).redis
    slow = ParseLimit(client, rate=100, burst=1000)
    slow.charge("k", 900)
    with pytest.raises(RateLimited) as refused:
        slow.charge("k", 500)  # 100 left: 4 s to wait
    assert refused.value.headers["Retry-After"] in ("4", "5")
    slow.charge("k", 100)  # the refusal took nothing
    slow.charge("other", 1000)  # another subject has its own bucket
    fast = ParseLimit(client, rate=1_000_000, burst=1000)
    fast.charge("f", 1000)
    time.sleep(0.01)
    fast.charge("f", 1000)  # refilled at a million bytes a second
