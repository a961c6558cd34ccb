"""The admin API in-process: Flask's ``test_client`` on a ``fakeredis`` server.

Admin keys and scopes, the browser guards (cross-site refusal, failed sign-ins),
keys (create, search, update, revoke) and what ``/v1`` then enforces (allowed
models, expiry), balance changes that are safe to retry, the ledger as JSON
lines and CSV, usage, job search and a job's timeline, models and workers, and
the audit stream. Every JSON answer is checked against the OpenAPI document.
The live stack's side (schemathesis, hostile input) is in ``test_admin_e2e.py``.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

import fakeredis
import jsonschema
import pytest
from flask import Flask
from flask.testing import FlaskClient

from api.app import create_app
from api.openapi import build_openapi
from api.services import EXTENSION, Services
from shared import jobindex
from shared.adminkeys import AdminKeyStore, AuditLog, AuthFailures, Scope
from shared.keys import KeyStore
from shared.settings import Settings
from shared.storage import StorageConfig

pytestmark = pytest.mark.fast

TEST_CATALOG = Path(__file__).parent / "data" / "test_models.toml"
DOC = build_openapi()


@pytest.fixture()
def app(tmp_path: Path) -> Flask:
    settings = Settings(
        storage=StorageConfig(local_dir=str(tmp_path / "images")),
        catalog_overlays=(str(TEST_CATALOG),),
        admin_auth_failures_per_minute=5,
        admin_allowed_origins=("https://ops.example.com",),
    )
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    return create_app(settings, redis_client=client)


def svc(app: Flask) -> Services:
    return app.extensions[EXTENSION]


@pytest.fixture()
def http(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture()
def writer(app: Flask) -> str:
    return AdminKeyStore(svc(app).redis).create("ops", scope=Scope.WRITE)[0]


@pytest.fixture()
def reader(app: Flask) -> str:
    return AdminKeyStore(svc(app).redis).create("viewer", scope=Scope.READ)[0]


def bearer(key: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **extra}


def documented(response, path: str, method: str = "get") -> Any:
    """The answer, after checking it against the document's schema for its status."""
    operation = DOC["paths"][path][method]
    answer = operation["responses"][str(response.status_code)]
    if "$ref" in answer:
        answer = DOC["components"]["responses"][answer["$ref"].rsplit("/", 1)[1]]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"
    assert "Access-Control-Allow-Origin" not in response.headers
    if response.mimetype != "application/json":
        assert response.mimetype in answer["content"]
        return response.get_data(as_text=True)
    body = response.get_json()
    schema = {**answer["content"]["application/json"]["schema"], "components": DOC["components"]}
    jsonschema.validate(body, schema)
    return body


def new_key(http: FlaskClient, writer: str, **fields: Any) -> dict[str, Any]:
    response = http.post("/admin/v1/keys", json={"name": "acme", **fields}, headers=bearer(writer))
    assert response.status_code == 201, response.get_json()
    return documented(response, "/admin/v1/keys", "post")


# --- who may call what ------------------------------------------------------------------


def test_admin_keys_are_their_own_kind(app: Flask, http: FlaskClient, writer: str) -> None:
    customer, _ = KeyStore(svc(app).redis).create("c", tier="internal", unlimited=True)
    refused = http.get("/admin/v1/keys", headers=bearer(customer))
    assert refused.status_code == 401
    assert documented(refused, "/admin/v1/keys")["error"]["code"] == "not_an_admin_key"
    assert http.get("/admin/v1/keys").status_code == 401
    # An admin key opens nothing on /v1: no images, not even the model list.
    for path in ("/v1/models", "/v1/usage"):
        answer = http.get(path, headers=bearer(writer))
        assert answer.status_code == 401
        assert answer.get_json()["error"]["code"] == "admin_key_not_allowed"
    body = {"prompt": "x", "model": "local/testcard"}
    assert http.post("/v1/images/generations", json=body, headers=bearer(writer)).status_code == 401
    me = documented(http.get("/admin/v1/me", headers=bearer(writer)), "/admin/v1/me")
    assert me["scope"] == "write"


def test_a_read_only_key_reads_but_changes_nothing(
    http: FlaskClient, writer: str, reader: str
) -> None:
    key = new_key(http, writer)
    assert http.get(f"/admin/v1/keys/{key['id']}", headers=bearer(reader)).status_code == 200
    for method, path, body in [
        ("post", "/admin/v1/keys", {"name": "x"}),
        ("patch", f"/admin/v1/keys/{key['id']}", {"name": "y"}),
        ("post", f"/admin/v1/keys/{key['id']}/revoke", None),
        ("post", f"/admin/v1/keys/{key['id']}/topup", {"amount": "1", "reason": "r"}),
    ]:
        answer = getattr(http, method)(path, json=body, headers=bearer(reader))
        assert answer.status_code == 403
        assert answer.get_json()["error"]["code"] == "admin_scope_read_only"
    assert http.get(f"/admin/v1/keys/{key['id']}", headers=bearer(reader)).get_json()["name"] == (
        "acme"
    )


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Sec-Fetch-Site": "cross-site"}, 403),
        ({"Sec-Fetch-Site": "same-site"}, 403),  # another subdomain is another origin
        ({"Origin": "https://evil.example"}, 403),
        ({"Origin": "null"}, 403),
        ({"Origin": "http://localhost.evil.example"}, 403),
        ({"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}, 200),
        ({"Origin": "https://ops.example.com"}, 200),  # IMAGEGATE_ADMIN_ALLOWED_ORIGINS
        ({"Sec-Fetch-Site": "none"}, 200),  # typed into the address bar
        ({}, 200),  # not a browser
    ],
)
def test_cross_site_requests_are_refused(
    http: FlaskClient, writer: str, headers: dict[str, str], status: int
) -> None:
    response = http.post("/admin/v1/keys", json={"name": "x"}, headers=bearer(writer, **headers))
    expected = 201 if status == 200 else status
    assert response.status_code == expected
    if status == 403:
        assert response.get_json()["error"]["code"] == "cross_site_request_refused"


def test_with_allowed_hosts_a_rebound_name_is_refused(tmp_path: Path) -> None:
    settings = Settings(
        storage=StorageConfig(local_dir=str(tmp_path / "images")),
        allowed_hosts=("gateway.example.com",),
    )
    app = create_app(settings, redis_client=fakeredis.FakeRedis(decode_responses=True))
    key = AdminKeyStore(svc(app).redis).create("ops", scope=Scope.READ)[0]
    http = app.test_client()
    for host, status in [("gateway.example.com", 200), ("rebound.evil.example", 403)]:
        answer = http.get("/admin/v1/me", headers=bearer(key, Host=host, Origin=f"https://{host}"))
        assert answer.status_code == status, host


def test_failed_authentications_are_limited_per_address(
    app: Flask, http: FlaskClient, writer: str
) -> None:
    for _ in range(5):
        assert http.get("/admin/v1/me", headers=bearer("iga-wrong")).status_code == 401
    limited = http.get("/admin/v1/me", headers=bearer(writer))  # even the right key, now
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) >= 1
    assert documented(limited, "/admin/v1/me")["error"]["code"] == (
        "too_many_failed_authentications"
    )
    other = {"REMOTE_ADDR": "10.0.0.9"}
    assert http.get("/admin/v1/me", headers=bearer(writer), environ_base=other).status_code == 200
    # The next minute starts afresh.
    failures = AuthFailures(svc(app).redis, 5)
    failures.check("127.0.0.1", now=time.time() + 60)


# --- keys, and what /v1 enforces -------------------------------------------------------------


def test_create_search_update_and_revoke_keys(app: Flask, http: FlaskClient, writer: str) -> None:
    created = new_key(http, writer, tier="free", balance="2.50", metadata={"crm": "C-17"})
    assert created["key"].startswith("ig-") and created["balance"] == "2.500000"
    other = new_key(http, writer, name="<script>alert(1)</script>", balance="unlimited")
    assert other["name"] == "<script>alert(1)</script>"  # JSON, never HTML
    found = http.get("/admin/v1/keys?q=c-17", headers=bearer(writer))
    assert [k["id"] for k in documented(found, "/admin/v1/keys")["data"]] == [created["id"]]
    everything = http.get("/admin/v1/keys", headers=bearer(writer)).get_json()["data"]
    assert {k["id"] for k in everything} == {created["id"], other["id"]}
    page = documented(http.get("/admin/v1/keys?limit=1", headers=bearer(writer)), "/admin/v1/keys")
    rest = http.get(f"/admin/v1/keys?limit=1&cursor={page['next_cursor']}", headers=bearer(writer))
    assert [k["id"] for k in page["data"] + rest.get_json()["data"]] == [
        k["id"] for k in everything
    ]  # oldest first, then by id: a stable order
    assert rest.get_json()["next_cursor"] is None
    assert http.get("/admin/v1/keys?cursor=key_nope", headers=bearer(writer)).status_code == 400

    changed = http.patch(
        f"/admin/v1/keys/{created['id']}",
        json={"name": "acme two", "tier": "internal", "allowed_models": ["test/priced-card"]},
        headers=bearer(writer),
    )
    body = documented(changed, "/admin/v1/keys/{key_id}", "patch")
    assert (body["name"], body["tier"], body["allowed_models"]) == (
        "acme two", "internal", ["test/priced-card"],
    )  # fmt: skip
    assert body["metadata"] == {"crm": "C-17"}  # left out: unchanged
    bad_changes = [
        {"tier": "gold"}, {"allowed_models": ["no/such"]}, {"colour": "red"}, {"name": " "},
        {"name": "\x00"}, {"name": "a\x1b[31m"}, {"metadata": {"bad key": "x"}}, {"expires": -1},
    ]  # fmt: skip
    for bad in bad_changes:
        answer = http.patch(f"/admin/v1/keys/{created['id']}", json=bad, headers=bearer(writer))
        assert answer.status_code == 400, bad
    assert http.get("/admin/v1/keys/key_0000000000000000", headers=bearer(writer)).status_code == (
        404
    )

    # Allowed models are enforced on /v1: another model is a 403 naming the list.
    customer = bearer(created["key"])
    body = {"prompt": "x", "model": "local/testcard", "size": "64x64"}
    refused = http.post("/v1/images/generations", json=body, headers=customer)
    assert refused.status_code == 403
    assert refused.get_json()["error"]["code"] == "model_not_allowed_for_key"
    # Expiry: a key past it is a 401.
    http.patch(f"/admin/v1/keys/{created['id']}", json={"expires": 1}, headers=bearer(writer))
    expired = http.get("/v1/models", headers=customer)
    assert expired.status_code == 401 and expired.get_json()["error"]["code"] == "expired_api_key"
    listed = http.get("/admin/v1/keys?state=expired", headers=bearer(writer)).get_json()["data"]
    assert [k["id"] for k in listed] == [created["id"]]
    http.patch(f"/admin/v1/keys/{created['id']}", json={"expires": 0}, headers=bearer(writer))
    assert http.get("/v1/models", headers=customer).status_code == 200

    revoked = http.post(f"/admin/v1/keys/{created['id']}/revoke", headers=bearer(writer))
    assert documented(revoked, "/admin/v1/keys/{key_id}/revoke", "post")["revoked"] is True
    assert http.get("/v1/models", headers=customer).status_code == 401


# --- money -----------------------------------------------------------------------------------


def test_balance_changes_are_safe_to_retry(http: FlaskClient, writer: str) -> None:
    key = new_key(http, writer, balance="1")
    path = f"/admin/v1/keys/{key['id']}/topup"
    retry = bearer(writer, **{"Idempotency-Key": "invoice-42"})
    first = http.post(path, json={"amount": "10.00", "reason": "invoice 42"}, headers=retry)
    again = http.post(path, json={"amount": "10.00", "reason": "invoice 42"}, headers=retry)
    one, two = documented(first, path.replace(key["id"], "{key_id}"), "post"), again.get_json()
    assert (one["balance"], one["replayed"]) == ("11.000000", False)
    assert (two["balance"], two["replayed"], two["ledger_entry"]) == (
        "11.000000", True, one["ledger_entry"],
    )  # fmt: skip
    other = http.post(path, json={"amount": "99", "reason": "invoice 42"}, headers=retry)
    assert other.status_code == 409
    assert other.get_json()["error"]["code"] == "idempotency_key_reused"
    assert (
        http.post(path, json={"amount": "-1", "reason": "no"}, headers=bearer(writer)).status_code
        == 400
    )  # noqa: E501
    adjust = f"/admin/v1/keys/{key['id']}/adjust"
    down = http.post(adjust, json={"amount": "-0.5", "reason": "refund a bug"},
                     headers=bearer(writer))  # fmt: skip
    assert down.get_json()["balance"] == "10.500000"
    too_far = http.post(adjust, json={"amount": "-11", "reason": "x"}, headers=bearer(writer))
    assert too_far.status_code == 409
    assert too_far.get_json()["error"]["code"] == "balance_would_be_negative"
    assert (
        http.get(f"/admin/v1/keys/{key['id']}", headers=bearer(writer)).get_json()["balance"]
        == "10.500000"
    )

    # The ledger, as JSON lines and as CSV: every change with its reason and admin key.
    me = http.get("/admin/v1/me", headers=bearer(writer)).get_json()["id"]
    lines = http.get(f"/admin/v1/ledger?key_id={key['id']}", headers=bearer(writer))
    entries = [json.loads(line) for line in documented(lines, "/admin/v1/ledger").splitlines()]
    assert [(e["kind"], e["amount"], e["reason"], e["admin"]) for e in entries] == [
        ("topup", "1.000000", "initial balance", me),
        ("topup", "10.000000", "invoice 42", me),
        ("adjust", "-0.500000", "refund a bug", me),
    ]
    http.post(adjust, json={"amount": "1", "reason": '=HYPERLINK("x")'}, headers=bearer(writer))
    table = http.get(f"/admin/v1/ledger?key_id={key['id']}&format=csv", headers=bearer(writer))
    rows = list(csv.DictReader(io.StringIO(documented(table, "/admin/v1/ledger"))))
    assert len(rows) == 4 and rows[2]["amount"] == "-0.500000"
    assert rows[3]["reason"] == '\'=HYPERLINK("x")'  # no formula for a spreadsheet

    # Every write is in the audit stream, newest first, with the admin key.
    audit = documented(http.get("/admin/v1/audit", headers=bearer(writer)), "/admin/v1/audit")
    assert [e["action"] for e in audit["data"]][:3] == [
        "balance.adjust", "balance.adjust", "balance.topup",
    ]  # fmt: skip
    assert {e["admin"] for e in audit["data"]} == {me}
    assert audit["data"][-1]["action"] == "key.create"
    page = http.get("/admin/v1/audit?limit=2", headers=bearer(writer)).get_json()
    after = http.get(f"/admin/v1/audit?limit=2&cursor={page['next_cursor']}",
                     headers=bearer(writer)).get_json()  # fmt: skip
    assert [e["id"] for e in page["data"] + after["data"]] == [e["id"] for e in audit["data"][:4]]


def test_an_idempotency_key_is_scoped_to_the_key_and_the_kind(
    http: FlaskClient, writer: str
) -> None:
    a, b = new_key(http, writer)["id"], new_key(http, writer, name="b")["id"]
    retry = bearer(writer, **{"Idempotency-Key": "same"})
    body = {"amount": "2", "reason": "r"}
    answers = [
        http.post(f"/admin/v1/keys/{key}/{kind}", json=body, headers=retry).get_json()
        for key, kind in [(a, "topup"), (a, "adjust"), (b, "topup")]
    ]
    assert [(x["kind"], x["balance"], x["replayed"]) for x in answers] == [
        ("topup", "2.000000", False), ("adjust", "4.000000", False), ("topup", "2.000000", False),
    ]  # fmt: skip


def test_usage_per_key_model_and_day(app: Flask, http: FlaskClient, writer: str) -> None:
    a, b = new_key(http, writer)["id"], new_key(http, writer, name="b")["id"]
    redis = svc(app).redis
    # usage is read from the settle entries (SQL's, and these not yet moved there); an
    # entry names the upstream's cost where it was known
    for key_id, day, model, images, amount, cost in [
        (a, "2026-12-01", "dall-e-3", 2, 80000, "60000"),
        (a, "2026-12-02", "local/testcard", 1, 0, None),
        (b, "2026-12-02", "dall-e-3", 1, 40000, "30000"),
    ]:
        entry = {"kind": "settle", "job": "j", "model": model, "images": images,
                 "amount": -amount, "ts": "1", "day": day}  # fmt: skip
        redis.xadd(f"ig:ledger:{key_id}", {**entry, **({"cost": cost} if cost else {})})
    report = documented(http.get("/admin/v1/usage", headers=bearer(writer)), "/admin/v1/usage")
    assert len(report["data"]) == 3
    assert report["by_model"] == [
        {"name": "dall-e-3", "images": 3, "amount": "0.120000", "cost": "0.090000",
         "margin": "0.030000"},
        {"name": "local/testcard", "images": 1, "amount": "0.000000", "cost": "0.000000",
         "margin": "0.000000"},
    ]  # fmt: skip
    assert [d["name"] for d in report["by_day"]] == ["2026-12-01", "2026-12-02"]
    one = http.get(f"/admin/v1/usage?key_id={b}&since=2026-12-02", headers=bearer(writer))
    assert one.get_json()["by_key"] == [
        {"name": b, "images": 1, "amount": "0.040000", "cost": "0.030000", "margin": "0.010000"}
    ]
    assert http.get("/admin/v1/usage?since=yesterday", headers=bearer(writer)).status_code == 400


# --- jobs, models, workers ----------------------------------------------------------------------


def test_job_search_and_timeline(app: Flask, http: FlaskClient, writer: str) -> None:
    customer = new_key(http, writer, balance="1", tier="internal")
    ids = []
    for prompt in ("one", "two", "three"):
        accepted = http.post(
            "/v1/images/generations",
            json={"prompt": prompt, "model": "test/priced-card"},
            headers=bearer(customer["key"], Prefer="respond-async"),
        )
        assert accepted.status_code == 202, accepted.get_json()
        ids.append(accepted.get_json()["id"])
    http.post(f"/v1/images/generations/{ids[1]}/cancel", headers=bearer(customer["key"]))

    found = http.get(f"/admin/v1/jobs?key_id={customer['id']}", headers=bearer(writer))
    assert [j["id"] for j in documented(found, "/admin/v1/jobs")["data"]] == ids[::-1]
    canceled = http.get("/admin/v1/jobs?status=canceled", headers=bearer(writer)).get_json()
    assert [j["id"] for j in canceled["data"]] == [ids[1]]
    assert (
        http.get("/admin/v1/jobs?model=dall-e-3", headers=bearer(writer)).get_json()["data"] == []
    )
    page = http.get("/admin/v1/jobs?limit=2", headers=bearer(writer)).get_json()
    rest = http.get(f"/admin/v1/jobs?limit=2&cursor={page['next_cursor']}",
                    headers=bearer(writer)).get_json()  # fmt: skip
    assert [j["id"] for j in page["data"] + rest["data"]] == ids[::-1]
    future = http.get(f"/admin/v1/jobs?since={time.time() + 3600}", headers=bearer(writer))
    assert future.get_json()["data"] == []

    timeline = http.get(f"/admin/v1/jobs/{ids[1]}", headers=bearer(writer))
    job = documented(timeline, "/admin/v1/jobs/{job_id}")
    assert [e["event"] for e in job["timeline"]] == ["admitted", "queued", "canceled", "settled"]
    assert job["timeline"][-1]["detail"]["refunded"] == job["charged"]
    assert job["request"]["prompt"] == "two"
    assert http.get("/admin/v1/jobs/imgjob_nope", headers=bearer(writer)).status_code == 404


def test_the_index_is_bounded(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobindex, "MAX_RECENT", 3)
    monkeypatch.setattr(jobindex, "MAX_PER_KEY", 2)
    redis = svc(app).redis
    for i in range(6):
        jobindex.add(redis, f"imgjob_{i}", "key_a", 1000.0 + i, ttl=60)
    assert redis.zrange(jobindex.RECENT, 0, -1) == ["imgjob_3", "imgjob_4", "imgjob_5"]
    assert redis.zrange(jobindex.BY_KEY.format("key_a"), 0, -1) == ["imgjob_4", "imgjob_5"]
    assert 0 < redis.ttl(jobindex.BY_KEY.format("key_a")) <= 60


def test_models_and_workers(app: Flask, http: FlaskClient, reader: str) -> None:
    redis = svc(app).redis
    now = time.time()
    redis.zadd("ig:presence:openai", {"w1:12": now + 60, "gone:1": now - 1})
    redis.lpush("openai", "task-1", "task-2")
    models = documented(http.get("/admin/v1/models", headers=bearer(reader)), "/admin/v1/models")
    by_id = {m["id"]: m for m in models["data"]}
    assert by_id["dall-e-3"]["breaker"]["state"] == "closed"
    assert by_id["dall-e-3"]["price_per_image"]
    assert by_id["test/virtual"]["virtual"] and by_id["test/virtual"]["candidates"]
    report = documented(http.get("/admin/v1/workers", headers=bearer(reader)), "/admin/v1/workers")
    openai = next(f for f in report["data"] if f["family"] == "openai")
    assert openai["workers"] == ["w1:12"]
    assert openai["queue_depth"] == 2


def test_the_cli_makes_and_revokes_admin_keys(app: Flask, monkeypatch) -> None:
    from click.testing import CliRunner

    from shared import cli

    store = AdminKeyStore(svc(app).redis)
    monkeypatch.setattr(cli, "_admin_keys", lambda: store)
    runner = CliRunner()
    made = runner.invoke(cli.main, ["admin-keys", "create", "--name", "ops", "--scope", "write",
                                    "--json"])  # fmt: skip
    assert made.exit_code == 0, made.output
    record = json.loads(made.output)
    assert record["key"].startswith("iga-") and record["scope"] == "write"
    listed = runner.invoke(cli.main, ["admin-keys", "list"])
    assert f"{record['id']}\tactive\twrite" in listed.output
    assert runner.invoke(cli.main, ["admin-keys", "revoke", record["id"]]).exit_code == 0
    assert store.get(record["id"]).revoked
    audit = AuditLog(svc(app).redis).page()
    assert [(e["admin"], e["action"]) for e in audit] == [
        ("cli", "admin_key.revoke"), ("cli", "admin_key.create"),
    ]  # fmt: skip


def test_upstream_calls_are_kept_bounded_for_the_timeline(app: Flask) -> None:
    from shared import jobevents

    redis = svc(app).redis
    for i in range(jobevents.MAX_EVENTS + 10):
        jobevents.record(redis, "imgjob_x", {"at": float(i), "status": 200}, ttl=60)
    kept = jobevents.read(redis, "imgjob_x")
    assert len(kept) == jobevents.MAX_EVENTS and kept[0]["at"] == 10.0  # the latest
    assert 0 < redis.ttl(jobevents.EVENTS.format("imgjob_x")) <= 60


def test_an_amount_out_of_range_is_a_400_whatever_the_reason(
    http: FlaskClient, writer: str
) -> None:
    """Found by schemathesis (a 500): astral characters in the reason and an amount past
    the largest one a single change may move."""
    key = new_key(http, writer)["id"]
    body = {"reason": "\u0118\U000f64cf\u00ab\U00103026&%d{", "amount": "-2834529627"}
    answer = http.post(
        f"/admin/v1/keys/{key}/adjust",
        json=body,
        headers=bearer(writer, **{"Idempotency-Key": "x"}),
    )
    assert answer.status_code == 400, answer.get_json()
    assert answer.get_json()["error"]["param"] == "amount"
    created = http.post("/admin/v1/keys", json={"name": "b", "balance": "2000000000"},
                        headers=bearer(writer))  # fmt: skip
    assert (created.status_code, created.get_json()["error"]["param"]) == (400, "balance")
