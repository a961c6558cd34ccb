"""The admin API on the live stack (gunicorn, Celery workers, simulators), and hostile input.

One flow through everything an operator does: an admin key from the CLI makes a
customer key over HTTP, tops it up, the customer generates with the official
``openai`` client, and the operator finds the job, reads its timeline (the
worker's claim, each upstream call, the stored image, the settlement) and the
ledger. Then what a hostile client or page tries: cross-site requests, guessing
admin keys (rate-limited per address, on a gateway of its own with a low
limit), malformed and oversized bodies, markup and control characters in what
the console will show — each answered with a 4xx in the error envelope, never a
5xx, HTML or a reflected page.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable

import openai
import pytest
import requests
from openai import OpenAI

from tests.conftest import cli

TIMEOUT = 30


@pytest.fixture(scope="module")
def admin(stack_env: dict[str, str]) -> dict[str, str]:
    out = cli(stack_env, "admin-keys", "create", "--name", "e2e", "--scope", "write", "--json")
    return {"Authorization": f"Bearer {json.loads(out)['key']}"}


def _error(response: requests.Response, status: int) -> dict:
    assert response.status_code == status, response.text[:500]
    assert response.headers["Content-Type"].startswith("application/json"), response.text[:300]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers.get("x-request-id")
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert "Traceback" not in error["message"]
    return error


def test_an_operator_runs_a_customer_end_to_end(gateway: str, admin: dict[str, str]) -> None:
    api = f"{gateway}/admin/v1"
    made = requests.post(
        f"{api}/keys",
        json={"name": "acme", "tier": "internal", "metadata": {"crm": "A-1"}},
        headers=admin,
        timeout=TIMEOUT,
    )
    assert made.status_code == 201, made.text
    key = made.json()
    topped = requests.post(
        f"{api}/keys/{key['id']}/topup",
        json={"amount": "1.00", "reason": "first invoice"},
        headers={**admin, "Idempotency-Key": f"inv-{key['id']}"},
        timeout=TIMEOUT,
    )
    assert topped.json()["balance"] == "1.000000"

    client = OpenAI(api_key=key["key"], base_url=f"{gateway}/v1", max_retries=0, timeout=60)
    result = client.images.generate(model="dall-e-2", prompt="a lighthouse", size="256x256")
    assert result.data
    # The admin key cannot do the same.
    as_admin = OpenAI(
        api_key=admin["Authorization"].split()[1], base_url=f"{gateway}/v1", max_retries=0
    )
    with pytest.raises(openai.AuthenticationError):
        as_admin.images.generate(model="local/testcard", prompt="x")

    found = requests.get(f"{api}/jobs", params={"key_id": key["id"]}, headers=admin,
                         timeout=TIMEOUT).json()["data"]  # fmt: skip
    assert [j["status"] for j in found] == ["succeeded"]
    job = requests.get(f"{api}/jobs/{found[0]['id']}", headers=admin, timeout=TIMEOUT).json()
    events = [e["event"] for e in job["timeline"]]
    assert events[:3] == ["admitted", "queued", "claimed"]
    assert "upstream_attempt" in events and "stored" in events
    assert events.index("upstream_attempt") < events.index("stored")
    calls = [e["detail"] for e in job["timeline"] if e["event"] == "upstream_attempt"]
    assert calls[0]["status"] == 200 and calls[0]["model"] == "dall-e-2"
    assert "?" not in calls[0]["url"]
    assert events[-2:] == ["succeeded", "settled"]

    ledger = requests.get(f"{api}/ledger", params={"key_id": key["id"], "format": "csv"},
                          headers=admin, timeout=TIMEOUT)  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(ledger.text)))
    assert [r["kind"] for r in rows][:2] == ["topup", "reserve"]
    usage = requests.get(f"{api}/usage", params={"key_id": key["id"]}, headers=admin,
                         timeout=TIMEOUT).json()  # fmt: skip
    assert usage["by_model"][0]["name"] == "dall-e-2" and usage["by_model"][0]["images"] == 1
    workers = requests.get(f"{api}/workers", headers=admin, timeout=TIMEOUT).json()["data"]
    assert any(f["family"] == "openai" and f["workers"] for f in workers)


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors"},
        {"Origin": "https://attacker.example"},
        {"Origin": "null"},
    ],
)
def test_cross_site_requests_are_refused(
    gateway: str, admin: dict[str, str], headers: dict[str, str]
) -> None:
    for method, path in [("GET", "/admin/v1/keys"), ("POST", "/admin/v1/keys")]:
        response = requests.request(method, f"{gateway}{path}", json={"name": "csrf"},
                                    headers={**admin, **headers}, timeout=TIMEOUT)  # fmt: skip
        assert _error(response, 403)["code"] == "cross_site_request_refused"
        assert "Access-Control-Allow-Origin" not in response.headers
    preflight = requests.options(
        f"{gateway}/admin/v1/keys",
        headers={"Origin": "https://attacker.example", "Access-Control-Request-Method": "POST"},
        timeout=TIMEOUT,
    )
    assert "Access-Control-Allow-Origin" not in preflight.headers


def test_guessing_admin_keys_is_rate_limited(
    start_gateway: Callable[..., str], admin: dict[str, str]
) -> None:
    url = start_gateway("web-admin-guard", IMAGEGATE_ADMIN_AUTH_FAILURES_PER_MINUTE="3")
    statuses = [
        requests.get(
            f"{url}/admin/v1/me", headers={"Authorization": f"Bearer iga-guess{i}"}, timeout=TIMEOUT
        ).status_code  # fmt: skip
        for i in range(4)
    ]
    assert 429 in statuses  # at most 3 failures a minute from this address (fewer if the
    # minute's counter already held some)
    assert set(statuses) <= {401, 429}
    limited = requests.get(f"{url}/admin/v1/me", headers=admin, timeout=TIMEOUT)
    assert _error(limited, 429)["code"] == "too_many_failed_authentications"
    assert int(limited.headers["Retry-After"]) >= 1


HOSTILE_BODIES = [
    (b'{"name": "a", "name": "b"}', 400),  # a duplicate key: which one wins?
    (b'{"name": "x"' + b" " * 10, 400),  # cut short
    (b"[" * 100_000 + b"]" * 100_000, 400),  # nesting bomb
    (b'{"name": "\\u0000nul"}', 400),
    (b'{"name": "line\\u2028break"}', 400),
    (b'{"name": "x", "metadata": {"k": "' + b"v" * 300 + b'"}}', 400),
    (b'{"name": "x", "metadata": {' + b",".join(b'"k%d": "v"' % i for i in range(30)) + b"}}", 400),
    (b'{"name": "x", "balance": "1e9999"}', 400),
    (b'{"name": "x", "balance": "NaN"}', 400),
    (b'{"name": "x", "expires": 1e300}', 400),
    (b'{"name": "x", "allowed_models": ["../../etc/passwd"]}', 400),
    (b'{"name": "x", "is_admin": true}', 400),
    (b"\xff\xfe{}", 400),
]


@pytest.mark.parametrize(("body", "status"), HOSTILE_BODIES)
def test_hostile_bodies(gateway: str, admin: dict[str, str], body: bytes, status: int) -> None:
    response = requests.post(f"{gateway}/admin/v1/keys", data=body, timeout=TIMEOUT,
                             headers={**admin, "Content-Type": "application/json"})  # fmt: skip
    error = _error(response, status)
    assert "<" not in error["message"]


def test_oversized_and_odd_requests(gateway: str, admin: dict[str, str]) -> None:
    big = requests.post(f"{gateway}/admin/v1/keys", data=b"{" + b" " * (17 << 20) + b"}",
                        headers={**admin, "Content-Type": "application/json"}, timeout=60)  # fmt: skip
    _error(big, 413)
    for path in [
        "/admin/v1/keys/..%2F..%2Fetc",
        "/admin/v1/keys/%3Cscript%3Ealert(1)%3C%2Fscript%3E",
        "/admin/v1/jobs/imgjob_%00",
        "/admin/v1/jobs/" + "a" * 3000,
    ]:
        response = requests.get(f"{gateway}{path}", headers=admin, timeout=TIMEOUT)
        error = _error(response, 404)
        assert "<script>" not in response.text
        assert len(error["message"]) < 200
    bad_query = requests.get(f"{gateway}/admin/v1/jobs", params={"since": "nan", "limit": "0"},
                             headers=admin, timeout=TIMEOUT)  # fmt: skip
    _error(bad_query, 400)


def test_markup_is_kept_as_data_never_as_html(gateway: str, admin: dict[str, str]) -> None:
    hostile = '<img src=x onerror="alert(1)">'
    made = requests.post(f"{gateway}/admin/v1/keys", headers=admin, timeout=TIMEOUT,
                         json={"name": hostile, "metadata": {"note": hostile}})  # fmt: skip
    assert made.status_code == 201
    assert made.headers["Content-Type"] == "application/json"
    assert made.headers["Content-Security-Policy"].startswith("default-src 'none'")
    shown = requests.get(f"{gateway}/admin/v1/keys/{made.json()['id']}", headers=admin,
                         timeout=TIMEOUT)  # fmt: skip
    assert shown.json()["name"] == hostile and shown.json()["metadata"]["note"] == hostile
    # A customer key gets nothing here, whatever it tries.
    customer = {"Authorization": f"Bearer {made.json()['key']}"}
    for method, path in [("GET", "/admin/v1/keys"), ("POST", "/admin/v1/keys"),
                         ("GET", "/admin/v1/audit")]:  # fmt: skip
        response = requests.request(method, f"{gateway}{path}", headers=customer, json={},
                                    timeout=TIMEOUT)  # fmt: skip
        assert _error(response, 401)["code"] == "not_an_admin_key"
