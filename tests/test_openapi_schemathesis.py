"""The live gateway against its own OpenAPI document (``GET /openapi.json``).

Schemathesis loads the document from the running gateway of ``tests/conftest.py``
(gunicorn, Celery workers, upstream simulators), generates requests from it
(documented examples, boundary and negative cases, fuzzed bodies and headers)
and sends them with a bearer key. Every response must be a documented status
with a documented content type, body and headers, and never a 5xx; invalid
input must be refused, a missing key must matter, and a 405 must say `Allow`.
(Schemathesis leaves out the operation that serves the document itself; the
last tests check that one.) A state machine follows the document's links (a job id into fetching and
cancelling the job). Explicit cases then reach, and validate the same way, what
random data rarely does: sync and async generations, the job, its image, a
cancel, an idempotency conflict, 402/403/404/429/503 by tier and model,
upstream 400/502, a failed job, webhook attempts, a virtual model, a 504, 413
and the HTTP server's 431.

Generations really run, cheaply: the document's examples name the default model
(``local/testcard``, rendered in the worker with no network), random model ids
are 404s, and most generated bodies are 400s. ``OPENAPI_FUZZ_EXAMPLES`` raises
the number of fuzzed requests per operation for a longer hunt.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from openapi_spec_validator import validate
from PIL import Image
from schemathesis import Response
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from api.openapi import build_openapi
from tests.conftest import cli, create_key
from tests.support.sim import fault

JOB_CANCEL = "/v1/images/generations/{job_id}/cancel"
JSON = "application/json"
MULTIPART = "multipart/form-data"
ASYNC = {"Prefer": "respond-async"}
CONFORMANCE = [
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
    ignored_auth,
    unsupported_method,
    allow_header_conformance,
]
CHECKS = [not_a_server_error, *CONFORMANCE]


def _config(api_key: str, admin_key: str) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "auth": {
                "openapi": {
                    "bearerAuth": {"bearer": api_key},
                    "adminKey": {"bearer": admin_key},  # the /admin/v1 operations
                }
            },
            "request-timeout": 30,
            # A fuzzed query string longer than the HTTP server's request line is refused
            # by it with 414 (documented on every operation): a rejection too.
            "checks": {
                "negative_data_rejection": {
                    "expected-statuses": [
                        "400",
                        "401",
                        "403",
                        "404",
                        "405",
                        "406",
                        "409",
                        "414",
                        "415",
                        "422",
                        "428",
                        "429",
                        "5xx",
                    ]  # fmt: skip
                }
            },
            "generation": {"database": "none"},
        }
    )


@pytest.fixture(scope="module")
def own_key(stack_env: dict[str, str]) -> str:
    """This module's own key: its idempotency keys and jobs meet no other test's."""
    return create_key(stack_env, "openapi-fuzz")["key"]


@pytest.fixture(scope="module")
def admin_key(stack_env: dict[str, str]) -> str:
    """A read-write admin key: the admin API is fuzzed like the rest."""
    out = cli(stack_env, "admin-keys", "create", "--name", "openapi-fuzz", "--scope", "write",
              "--json")  # fmt: skip
    return json.loads(out)["key"]


@pytest.fixture(scope="module")
def live_schema(gateway: str, own_key: str, admin_key: str):
    return schemathesis.openapi.from_url(
        f"{gateway}/openapi.json", config=_config(own_key, admin_key)
    )


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    # schemathesis.pytest.from_fixture renames the test node through `node._nodeid`,
    # which pytest 9.2 no longer has (schemathesis 4.32); give it one to rename.
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


schema = schemathesis.pytest.from_fixture("live_schema")


@schema.exclude(tag="admin").parametrize()
@settings(
    max_examples=int(os.environ.get("OPENAPI_FUZZ_EXAMPLES", "60")),
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_the_gateway_conforms_to_its_openapi_document(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=CHECKS)


@schema.include(tag="admin").parametrize()
@settings(
    # Fewer per operation: fifteen operations over a handful of handlers and validators.
    max_examples=int(os.environ.get("OPENAPI_FUZZ_EXAMPLES", "10")),
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_the_admin_api_conforms_to_the_document(case: schemathesis.Case) -> None:
    """With a read-write admin key: keys are created, changed, topped up, revoked."""
    case.call_and_validate(checks=CHECKS)


def test_linked_operations_statefully(live_schema) -> None:
    """Follow the document's links: a generation's job id into fetching and cancelling it."""

    class Links(live_schema.as_state_machine()):  # type: ignore[misc]
        def validate_response(self, response, case, additional_checks=None, **kwargs) -> None:
            case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs)

    Links.run(
        settings=settings(
            max_examples=10,
            stateful_step_count=4,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
    )


# --- explicit cases: the answers random data rarely reaches ----------------------------------

Call = Callable[..., Response]


@pytest.fixture()
def call(live_schema, own_key: str) -> Call:
    """Send one hand-made request of an operation and validate the answer like above."""

    def send(
        method: str,
        path: str,
        *,
        key: str | None = own_key,
        base_url: str | None = None,
        **kwargs: Any,
    ) -> Response:
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers.setdefault("Authorization", f"Bearer {key}")
        case = live_schema[path][method].Case(headers=headers, **kwargs)
        # Documented 5xx answers are what these cases are after: conformance only.
        return case.call_and_validate(base_url=base_url, checks=CONFORMANCE)

    return send


def _header(response: Response, name: str) -> str:
    return response.headers[name.lower()][0]


def test_sync_generation_its_job_and_its_image(call: Call) -> None:
    body = {"prompt": "a red fox", "n": 2, "size": "64x64", "model": "local/testcard"}
    response = call("POST", "/v1/images/generations", body=body)
    assert response.status_code == 200
    job = {"job_id": _header(response, "x-job-id")}
    fetched = call("GET", "/v1/images/generations/{job_id}", path_parameters=job)
    assert fetched.json()["status"] == "succeeded"
    # A job that ended cannot be canceled.
    assert call("POST", JOB_CANCEL, path_parameters=job).status_code == 409
    # The image URL is the documented file endpoint, which needs no key.
    url = response.json()["data"][0]["url"]
    match = re.fullmatch(
        r".*/v1/files/(?P<key>[^?]+)\?expires=(?P<e>\d+)&signature=(?P<s>\w+)", url
    )
    assert match, url
    query = {"expires": match["e"], "signature": match["s"]}
    image = call(
        "GET", "/v1/files/{key}", key=None, path_parameters={"key": match["key"]}, query=query
    )
    assert image.status_code == 200
    assert _header(image, "content-type") == "image/png"


def test_async_generation_and_cancel(call: Call) -> None:
    body = {"prompt": "later", "model": "local/testcard", "size": "64x64"}
    headers = {**ASYNC, "Idempotency-Key": "openapi-async-1"}
    accepted = call("POST", "/v1/images/generations", body=body, headers=headers)
    assert accepted.status_code == 202
    job_id = accepted.json()["id"]
    assert _header(accepted, "location") == f"/v1/images/generations/{job_id}"
    # The same key with another body is a conflict.
    other = {**body, "prompt": "another"}
    assert call("POST", "/v1/images/generations", body=other, headers=headers).status_code == 409
    canceled = call("POST", JOB_CANCEL, path_parameters={"job_id": job_id})
    assert canceled.status_code in (200, 409)  # canceled, or the worker was quicker


def _png(width: int = 24, height: int = 24, mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def test_edits_and_variations_answer_as_documented(call: Call) -> None:
    data_url = "data:image/png;base64," + base64.b64encode(_png()).decode()
    body = {"prompt": "a hat", "model": "local/testcard", "size": "64x64",
            "images": [{"image_url": data_url}]}  # fmt: skip
    assert call("POST", "/v1/images/edits", body=body, media_type=JSON).status_code == 200
    accepted = call("POST", "/v1/images/edits", body=body, media_type=JSON, headers=ASYNC)
    assert accepted.status_code == 202
    refused = {**body, "images": [{"file_id": "file-1"}]}
    assert call("POST", "/v1/images/edits", body=refused, media_type=JSON).status_code == 400
    form = {"prompt": "a hat", "model": "local/testcard", "size": "64x64", "image": _png(),
            "mask": _png(mode="RGBA")}  # fmt: skip
    edited = call("POST", "/v1/images/edits", body=form, media_type=MULTIPART)
    assert edited.status_code == 200, edited.json()
    variation = {"model": "local/testcard", "size": "64x64", "n": 2, "image": _png()}
    answer = call("POST", "/v1/images/variations", body=variation, media_type=MULTIPART)
    assert answer.status_code == 200 and len(answer.json()["data"]) == 2
    bad = {"model": "local/testcard", "image": b"not an image"}
    assert call("POST", "/v1/images/variations", body=bad, media_type=MULTIPART).status_code == 400


@pytest.mark.parametrize(
    ("tier", "balance", "body", "status"),
    [
        ("free", "1.00", {"model": "dall-e-3"}, 403),
        ("free", "1.00", {"model": "local/testcard", "size": "64x64"}, 200),
        ("test-billing", "0.005", {"model": "test/priced-card"}, 402),
        ("test-limited", "1.00", {"model": "test/priced-card", "n": 6}, 400),
        ("internal", "unlimited", {"model": "test/retired"}, 503),
        ("internal", "unlimited", {"model": "no/such-model"}, 404),
    ],
)
def test_accounts_and_models_answer_as_documented(
    call: Call, stack_env: dict[str, str], tier: str, balance: str, body: dict, status: int
) -> None:
    key = create_key(stack_env, f"openapi-{tier}", tier=tier, balance=balance)["key"]
    response = call("POST", "/v1/images/generations", key=key, body={"prompt": "x", **body})
    assert response.status_code == status
    if tier == "test-limited":  # more than the window's whole limit: never a 429
        assert response.json()["error"]["code"] == "n_exceeds_images_per_minute"
        assert response.json()["error"]["max_n"] == 5
        filled = call(
            "POST", "/v1/images/generations", key=key, body={"prompt": "x", **body, "n": 5}
        )
        assert filled.status_code == 200
        refused = call(
            "POST", "/v1/images/generations", key=key, body={"prompt": "x", **body, "n": 1}
        )
        assert refused.status_code == 429
        assert int(_header(refused, "retry-after")) >= 1
        assert _header(refused, "x-ratelimit-limit-requests") == "5"
    if tier == "free":  # the tier has an account-level limit: every answer says where it is
        assert "x-ratelimit-remaining-requests" in response.headers
        usage = call("GET", "/v1/usage", key=key)
        assert _header(usage, "x-ratelimit-limit-requests") == "60"


def test_upstream_failures_answer_as_documented(call: Call) -> None:
    body = {"model": "dall-e-2", "prompt": "something forbidden", "size": "256x256"}
    refused = call("POST", "/v1/images/generations", body=body)
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "content_policy_violation"
    failed = call("POST", "/v1/images/generations", body={**body, "prompt": fault(500, 20)})
    assert failed.status_code == 502


def _until_ended(call: Call, job_id: str, done=lambda job: job["status"] != "queued") -> dict:
    """Poll the job (each answer validated) until ``done`` says so."""
    deadline = time.monotonic() + 20
    while True:
        job = call("GET", "/v1/images/generations/{job_id}", path_parameters={"job_id": job_id})
        body = job.json()
        if done(body) or time.monotonic() > deadline:
            return body
        time.sleep(0.2)


def test_failed_jobs_and_webhooks_answer_as_documented(call: Call) -> None:
    # A job the upstream fails, fetched afterwards: its error and status code.
    body = {"model": "dall-e-2", "prompt": fault(500, 20), "size": "256x256"}
    accepted = call("POST", "/v1/images/generations", body=body, headers=ASYNC)
    failed = _until_ended(call, accepted.json()["id"], lambda job: job["status"] == "failed")
    assert failed["status_code"] == 502
    assert failed["error"]["type"] == "upstream_error"
    # A webhook that cannot be delivered (nothing listens on port 9): its attempts.
    hook = {"model": "local/testcard", "prompt": "hook", "webhook_url": "http://127.0.0.1:9/"}
    accepted = call("POST", "/v1/images/generations", body=hook)
    assert accepted.status_code == 202
    assert accepted.json()["webhook"]["attempts"] == []
    job = _until_ended(call, accepted.json()["id"], lambda job: job["webhook"]["attempts"])
    assert job["webhook"]["attempts"][0]["attempt"] == 1


def test_a_virtual_model_answers_as_documented(call: Call) -> None:
    body = {"model": "test/virtual", "prompt": "routed", "size": "64x64"}
    response = call("POST", "/v1/images/generations", body=body)
    assert response.status_code == 200
    assert response.json()["served_by"] in ("test/max-side", "local/testcard")
    job = {"job_id": _header(response, "x-job-id")}
    assert (
        call("GET", "/v1/images/generations/{job_id}", path_parameters=job).json()["fallbacks"]
        == []
    )
    model = call("GET", "/v1/models/{model_id}", path_parameters={"model_id": "test/virtual"})
    assert model.json()["virtual"] is True


def test_the_deadline_is_a_documented_504(call: Call, start_gateway, sim: str) -> None:
    url = start_gateway("web-openapi-504", IMAGEGATE_SYNC_BUDGET_SECONDS="1")
    requests.post(f"{sim}/_sim/config", json={"latency": 3}, timeout=5).raise_for_status()
    body = {"model": "dall-e-2", "prompt": "too slow", "size": "256x256"}
    response = call("POST", "/v1/images/generations", base_url=url, body=body)
    assert response.status_code == 504
    assert response.json()["error"]["job_id"] == _header(response, "x-job-id")


def test_errors_without_a_key_and_too_large(call: Call) -> None:
    assert call("GET", "/v1/models", key="ig-wrong").status_code == 401
    assert call("GET", "/v1/usage", key=None).status_code == 401
    huge = {"prompt": "x" * (17 * 1024 * 1024)}
    assert call("POST", "/v1/images/generations", body=huge).status_code == 413
    # The HTTP server's own limits, before the app: a header over 8 KB.
    long_id = {"x-request-id": "r" * 9000}
    assert call("GET", "/v1/models", headers=long_id).status_code == 431


# --- the document itself -----------------------------------------------------------------------


def test_the_document_is_valid_openapi_3_1(gateway: str) -> None:
    document = requests.get(f"{gateway}/openapi.json", timeout=10).json()
    validate(document)
    assert document["openapi"].startswith("3.1.")
    assert document == build_openapi(default_model="local/testcard")


def _flask_path(rule: str) -> str:
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule)


def test_every_route_is_documented() -> None:
    """The document cannot fall behind the app: every route and method is in it."""
    from api.app import create_app
    from shared.settings import Settings

    app = create_app(Settings())
    routes = {
        (_flask_path(rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
    }
    documented = {
        (path, method) for path, item in build_openapi()["paths"].items() for method in item
    }
    assert {p for p, _ in routes if p.startswith("/v1")}, "no /v1 routes found"
    assert routes - documented == set(), "served but not documented"
    assert documented - routes == set(), "documented but not served"
