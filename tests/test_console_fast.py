"""The operator console in-process (Flask's ``test_client`` on ``fakeredis``): its
session (cookie flags, CSRF on writes, idle timeout, sign-out, revocation), the limit
on failed sign-ins, the cross-site guard and headers of ``/console``, and the job
counters behind its charts (:mod:`shared.jobstats`, ``GET /admin/v1/stats``).
The same page in a real browser: tests/test_console_browser_e2e.py."""

from __future__ import annotations

import json

import fakeredis
import pytest
from flask import Flask
from flask.testing import FlaskClient

from api.console import CSP
from shared import jobrecord as rec
from shared import jobstats
from shared.adminkeys import AdminKeyStore
from shared.consolesessions import COOKIE
from tests.test_admin_fast import app, bearer, documented, http, reader, svc, writer  # noqa: F401

pytestmark = pytest.mark.fast


def sign_in(http: FlaskClient, key: str, **headers: str):  # noqa: F811
    return http.post("/console/session", json={"key": key}, headers=headers)


def test_sign_in_makes_a_strict_http_only_session_and_writes_need_its_csrf_token(
    app: Flask,  # noqa: F811
    http: FlaskClient,  # noqa: F811
    writer: str,  # noqa: F811
) -> None:
    signed = sign_in(http, writer)
    assert signed.status_code == 201, signed.get_json()
    cookie = signed.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie and "Path=/" in cookie
    assert writer not in cookie and writer not in signed.get_data(as_text=True)
    session = documented(signed, "/console/session", "post")
    assert session["admin"]["scope"] == "write"
    token = session["csrf_token"]
    # The admin key itself is stored nowhere: only hashes of the session token.
    stored = svc(app).redis.keys("ig:console:session:*")
    assert len(stored) == 1
    assert svc(app).redis.ttl(stored[0]) == svc(app).settings.console_idle_timeout_seconds
    assert writer not in json.dumps(svc(app).redis.hgetall(stored[0]))

    me = http.get("/admin/v1/me")  # the cookie instead of the bearer header
    assert documented(me, "/admin/v1/me")["name"] == "ops"
    refused = http.post("/admin/v1/keys", json={"name": "acme"})
    assert refused.status_code == 403
    assert refused.get_json()["error"]["code"] == "csrf_token_invalid"
    wrong = http.post("/admin/v1/keys", json={"name": "acme"}, headers={"X-CSRF-Token": "x"})
    assert wrong.status_code == 403
    made = http.post("/admin/v1/keys", json={"name": "acme"}, headers={"X-CSRF-Token": token})
    assert made.status_code == 201
    assert documented(http.get("/console/session"), "/console/session")["csrf_token"] == token

    # Signing out needs the token too, then the cookie opens nothing.
    assert http.delete("/console/session").status_code == 403
    assert http.delete("/console/session", headers={"X-CSRF-Token": token}).status_code == 200
    assert svc(app).redis.keys("ig:console:session:*") == []
    http.set_cookie(COOKIE, signed.headers["Set-Cookie"].split(";")[0].split("=", 1)[1])
    gone = http.get("/admin/v1/me")
    assert gone.status_code == 401
    assert gone.get_json()["error"]["code"] == "console_signed_out"


def test_a_read_session_cannot_write_and_revoking_the_key_ends_it(
    app: Flask,  # noqa: F811
    http: FlaskClient,  # noqa: F811
    reader: str,  # noqa: F811
) -> None:
    token = sign_in(http, reader).get_json()["csrf_token"]
    assert http.get("/admin/v1/keys").status_code == 200
    refused = http.post("/admin/v1/keys", json={"name": "x"}, headers={"X-CSRF-Token": token})
    assert refused.status_code == 403
    store = AdminKeyStore(svc(app).redis)
    store.revoke(store.list()[0].id)
    assert http.get("/admin/v1/keys").status_code == 401
    assert http.get("/console/session").get_json()["admin"] is None


def test_failed_sign_ins_are_limited_and_customer_keys_refused(
    app: Flask,  # noqa: F811
    http: FlaskClient,  # noqa: F811
    writer: str,  # noqa: F811
) -> None:
    customer, _ = svc(app).keys.create("customer", tier=svc(app).catalog.default_tier)
    assert sign_in(http, customer).get_json()["error"]["code"] == "not_an_admin_key"
    assert http.post("/console/session", data=b"{").status_code == 400
    for _ in range(3):
        assert sign_in(http, "iga-guess").status_code == 401
    limited = sign_in(http, writer)  # 5 failures a minute (the app fixture): even the right key
    assert limited.status_code == 429
    assert "Set-Cookie" not in limited.headers


@pytest.mark.parametrize(
    "headers",
    [{"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://evil.example"},
     {"Sec-Fetch-Site": "same-site"}],
)  # fmt: skip
def test_cross_site_sign_in_and_pages_are_refused(
    http: FlaskClient,  # noqa: F811
    writer: str,  # noqa: F811
    headers: dict[str, str],
) -> None:
    refused = sign_in(http, writer, **headers)
    assert refused.status_code == 403
    assert refused.get_json()["error"]["code"] == "cross_site_request_refused"
    assert "Set-Cookie" not in refused.headers
    assert http.get("/console", headers=headers).status_code == 403


def test_the_page_and_its_files_carry_a_strict_policy(http: FlaskClient) -> None:  # noqa: F811
    for path, kind in [("/console", "text/html"), ("/console/console.js", "text/javascript"),
                       ("/console/uPlot.iife.min.js", "text/javascript"),
                       ("/console/console.css", "text/css")]:  # fmt: skip
        answer = http.get(path)
        assert answer.status_code == 200 and answer.mimetype == kind
        assert answer.headers["Content-Security-Policy"] == CSP
        assert answer.headers["X-Frame-Options"] == "DENY"
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert "script-src 'self';" in CSP and "unsafe" not in CSP
    page = http.get("/console").get_data(as_text=True)
    assert "<style" not in page and " style=" not in page and "<script>" not in page
    assert http.get("/console/VENDOR.md").status_code == 404
    assert http.get("/console/..%2fapp.py").status_code == 404


def _finished(client, job_id: str, model: str, status: str, waited: float, end: float,
              images: int = 1) -> None:  # fmt: skip
    client.hset(rec.record_key(job_id), mapping={
        rec.MODEL: model, rec.STATUS: status, rec.CREATED: end - waited, rec.FINISHED: end,
        rec.RESULT: json.dumps([{"content_type": "image/png"}] * images),
    })  # fmt: skip
    jobstats.record(client, job_id)


def test_job_counters_per_minute_and_hour_give_rates_and_percentiles() -> None:
    client = fakeredis.FakeRedis(decode_responses=True)
    now = 1_800_000_000.0
    minute = now - now % 60
    for i in range(19):
        _finished(client, f"imgjob_ok{i}", "local/testcard", "succeeded", 0.1, minute + 5, 2)
    _finished(client, "imgjob_slow", "local/testcard", "failed", 100.0, minute + 6)
    _finished(client, "imgjob_old", "dall-e-2", "timed_out", 2.5, minute - 120)
    _finished(client, "imgjob_cancel", "dall-e-2", "canceled", 1, minute + 1)

    hour = jobstats.series(client, "hour", now=minute + 30)
    assert hour["step"] == 60 and len(hour["times"]) == 60 and hour["times"][-1] == minute
    card = hour["models"]["local/testcard"]
    assert card["jobs"][-1] == 20 and card["errors"][-1] == 1 and card["images"][-1] == 38
    assert card["images_per_minute"][-1] == 38 and card["error_rate"][-1] == 0.05
    assert card["p50"][-1] == 0.25 and card["p95"][-1] == 0.25  # 19 of 20 in the first bucket
    assert card["p50"][0] is None and card["error_rate"][0] is None
    e2 = hour["models"]["dall-e-2"]
    assert e2["jobs"][-3] == 1 and e2["error_rate"][-3] == 1.0 and e2["p95"][-3] == 3.0
    assert sum(e2["jobs"]) == 1  # the canceled job is not counted

    day = jobstats.series(client, "day", now=minute + 30)
    assert day["step"] == 3600 and len(day["times"]) == 24
    assert sum(day["models"]["local/testcard"]["images"]) == 38
    assert client.ttl(jobstats.MINUTE.format(int(minute // 60))) == jobstats.MINUTE_TTL


def test_stats_route_is_documented(http: FlaskClient, writer: str) -> None:  # noqa: F811
    for window in ("hour", "day"):
        answer = http.get(f"/admin/v1/stats?window={window}", headers=bearer(writer))
        body = documented(answer, "/admin/v1/stats")
        assert body["window"] == window
    assert http.get("/admin/v1/stats?window=week", headers=bearer(writer)).status_code == 400


@pytest.mark.parametrize(
    "body",
    [b"", b"[]", b'{"key": 1}', b'{"key": "iga-x", "extra": 1}', b'{"key": "' + b"a" * 300 + b'"}',
     b"\xff\xfe", b'{"key": "<script>alert(1)</script>"}'],
)  # fmt: skip
def test_hostile_sign_in_bodies_are_4xx_envelopes(
    http: FlaskClient,  # noqa: F811
    body: bytes,
) -> None:
    answer = http.post("/console/session", data=body, content_type="application/json")
    assert 400 <= answer.status_code < 500
    error = answer.get_json()["error"]
    assert set(error) >= {"message", "type", "code"}
    assert "<script>" not in answer.get_data(as_text=True)
    assert "Set-Cookie" not in answer.headers
