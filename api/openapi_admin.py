"""The admin API's part of the OpenAPI document (``/admin/v1/...``, tag ``admin``).

Request bodies and answers come from :mod:`api.admin_schemas`, query parameters
from the query models of :mod:`api.admin` (so the document and the validation
cannot disagree); errors are the document's shared error responses.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from api import admin
from api import admin_schemas as s
from api.openapi import _REF, JSON, _errors, _headers, _ref, _ResponseSchema, _schema, _Titleless

SCHEME = "adminKey"
SECURITY = [{SCHEME: []}]
SECURITY_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "An admin key (`iga-...`) from `imagegate admin-keys create`: scope `read` "
    "for every GET, `write` for changes. Customer keys are refused (401). Browsers: "
    "cross-site requests are refused (403); failed authentications are limited per client "
    "address (429). The operator console (`/console`) calls it with its session cookie "
    "instead, and the session's `X-CSRF-Token` header on writes.",
}


def admin_schemas() -> dict[str, Any]:
    """``components/schemas`` of the admin API: requests and answers, by model name."""
    _, top = models_json_schema(
        [(m, "serialization") for m in s.ADMIN_RESPONSE_MODELS],
        ref_template=_REF.format("schemas", "{model}"),
        schema_generator=_ResponseSchema,
    )
    schemas = top["$defs"]
    for model in s.ADMIN_REQUEST_MODELS:
        schemas[model.__name__] = model.model_json_schema(schema_generator=_Titleless)
    for schema in schemas.values():
        schema.pop("title", None)
    return schemas


def _query(model: type[BaseModel]) -> list[dict[str, Any]]:
    """One optional query parameter per field of ``model`` (absent: its default)."""
    params = []
    for name, prop in model.model_json_schema(schema_generator=_Titleless)["properties"].items():
        if prop.get("default", "") is None:
            prop.pop("default")
        if "anyOf" in prop:
            kept = [p for p in prop.pop("anyOf") if p.get("type") != "null"]
            prop = {**kept[0], **prop} if len(kept) == 1 else {"anyOf": kept, **prop}
        params.append({"name": name, "in": "query", "required": False, "schema": prop})
    return params


def _ok(
    schema: str, description: str, status: str = "200", links: dict[str, Any] | None = None
) -> dict[str, Any]:
    answer = {
        "description": description,
        "headers": _headers(),
        "content": {JSON: {"schema": _schema(schema)}},
    }
    if links:
        answer["links"] = links
    return {status: answer}


# A created key's id into the operations on it (followed by schemathesis' state machine).
_KEY_LINKS = {
    name: {"operationId": op, "parameters": {"key_id": "$response.body#/id"}}
    for name, op in [
        ("ShowKey", "adminShowKey"),
        ("UpdateKey", "adminUpdateKey"),
        ("TopUp", "adminTopUp"),
        ("Adjust", "adminAdjustBalance"),
        ("RevokeKey", "adminRevokeKey"),
    ]
}


_KEY_ID = {
    "name": "key_id",
    "in": "path",
    "required": True,
    "description": "An API key's id, `key_...`.",
    "schema": {"type": "string"},
}
_JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "description": "A job id, `imgjob_...`.",
    "schema": {"type": "string"},
}
_IDEMPOTENCY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Retrying with the same key and body answers the first change again "
    "(`replayed: true`) and changes nothing; the same key with another body is a 409.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}
_READ_ERRORS = (400, 401, 403, 404, 429, 500, 503)
_WRITE_ERRORS = (*_READ_ERRORS, 409, 413)


def _op(op_id: str, summary: str, responses: dict[str, Any], *, params=(), body=None, write=False,
        description: str = "") -> dict[str, Any]:  # fmt: skip
    operation: dict[str, Any] = {
        "operationId": op_id,
        "summary": summary,
        "tags": ["admin"],
        "security": SECURITY,
        "parameters": [_ref("parameters", "RequestId"), *params],
        "responses": {**responses, **_errors(*(_WRITE_ERRORS if write else _READ_ERRORS))},
    }
    if description:
        operation["description"] = description
    if body:
        operation["requestBody"] = {"required": True, "content": {JSON: {"schema": _schema(body)}}}
    return operation


def admin_paths() -> dict[str, Any]:
    change = "Needs a `write` admin key; recorded in the audit stream."
    balance_doc = (
        "A ledger entry (`kind`, `reason`, `admin`) and the new balance, atomically. " + change
    )
    return {
        "/admin/v1/me": {
            "get": _op("adminMe", "The admin key making the call", _ok("Me", "The key."))
        },
        "/admin/v1/keys": {
            "get": _op(
                "adminListKeys",
                "List and search API keys",
                _ok("ApiKeyList", "A page of keys, oldest first."),
                params=_query(admin._KeyQuery),
                description="`q` matches the id, name or a metadata value (case-insensitive); "
                "`cursor` is the previous page's `next_cursor`.",
            ),
            "post": _op(
                "adminCreateKey",
                "Create an API key",
                _ok(
                    "ApiKeyCreated",
                    "The key, with its secret shown this once.",
                    "201",
                    links=_KEY_LINKS,
                ),
                body="KeyCreate",
                write=True,
                description=change,
            ),
        },
        "/admin/v1/keys/{key_id}": {
            "get": _op(
                "adminShowKey",
                "One API key",
                _ok("ApiKeyInfo", "The key (never its secret)."),
                params=[_KEY_ID],
            ),
            "patch": _op(
                "adminUpdateKey",
                "Change a key's name, tier, metadata, allowed models or expiry",
                _ok("ApiKeyInfo", "The key as changed."),
                params=[_KEY_ID],
                body="KeyUpdate",
                write=True,
                description="Fields left out are unchanged; the key's next request is judged "
                "by the new values. " + change,
            ),
        },
        "/admin/v1/keys/{key_id}/revoke": {
            "post": _op(
                "adminRevokeKey",
                "Revoke a key (its next request gets 401)",
                _ok("ApiKeyInfo", "The revoked key."),
                params=[_KEY_ID],
                write=True,
                description=change,
            )
        },
        "/admin/v1/keys/{key_id}/topup": {
            "post": _op(
                "adminTopUp",
                "Add to a key's balance",
                _ok("BalanceChangeAnswer", "The change and the new balance."),
                params=[_KEY_ID, _IDEMPOTENCY],
                body="BalanceChangeRequest",
                write=True,
                description=balance_doc,
            )
        },
        "/admin/v1/keys/{key_id}/adjust": {
            "post": _op(
                "adminAdjustBalance",
                "Correct a key's balance up or down",
                _ok("BalanceChangeAnswer", "The change and the new balance."),
                params=[_KEY_ID, _IDEMPOTENCY],
                body="BalanceChangeRequest",
                write=True,
                description=balance_doc + " A change that would leave the balance below "
                "zero is a 409.",
            )
        },
        "/admin/v1/usage": {
            "get": _op(
                "adminUsage",
                "Images and spend per key, model and UTC day",
                _ok("UsageReport", "Rows and totals."),
                params=_query(admin._UsageQuery),
                description="`since` and `until` are UTC days (inclusive).",
            )
        },
        "/admin/v1/ledger": {
            "get": _op(
                "adminLedger",
                "The ledger, streamed as JSON lines or CSV",
                {
                    "200": {
                        "description": "Every entry of the key (or of every key, key by key), "
                        "oldest first: "
                        + ", ".join(f"`{c}`" for c in admin.LEDGER_COLUMNS)
                        + ". `since`/`until` are unix seconds.",
                        "headers": _headers(),
                        "content": {
                            "application/x-ndjson": {"schema": {"type": "string"}},
                            "text/csv": {"schema": {"type": "string"}},
                        },
                    }
                },
                params=_query(admin._LedgerQuery),
            )
        },
        "/admin/v1/jobs": {
            "get": _op(
                "adminSearchJobs",
                "Search recent jobs",
                _ok("JobSearch", "Matching jobs, newest first."),
                params=_query(admin._JobQuery),
                description="From a bounded index of recent jobs; `since`/`until` are unix "
                "seconds of creation. A page may hold fewer than `limit` jobs and still "
                "have a `next_cursor` (each call looks at a bounded number of jobs).",
            )
        },
        "/admin/v1/jobs/{job_id}": {
            "get": _op(
                "adminShowJob",
                "One job and its timeline",
                _ok("JobTimeline", "The job, its request and what happened to it, in order."),
                params=[_JOB_ID],
            )
        },
        "/admin/v1/models": {
            "get": _op(
                "adminModels",
                "Models with prices, circuit breakers and upstream capacity",
                _ok("AdminModelList", "Every model of the catalog."),
            )
        },
        "/admin/v1/stats": {
            "get": _op(
                "adminStats",
                "Jobs, images, error rate and p50/p95 latency per model over time",
                _ok("JobStats", "Per minute over the last hour, or per hour over the last day."),
                params=_query(admin._StatsQuery),
            )
        },
        "/admin/v1/workers": {
            "get": _op(
                "adminWorkers",
                "Live workers per provider family, and queue depth",
                _ok("WorkerReport", "One entry per family."),
            )
        },
        "/admin/v1/audit": {
            "get": _op(
                "adminAudit",
                "The audit stream: every admin change, newest first",
                _ok("AuditList", "A page of entries."),
                params=_query(admin._AuditQuery),
            )
        },
    }


def console_paths() -> dict[str, Any]:
    """``/console``: the operator console's page, its files and its session (tag ``pages``)."""

    def page(op_id: str, summary: str, content: dict[str, Any], *statuses: int, params=()):
        return {
            "operationId": op_id,
            "summary": summary,
            "tags": ["pages"],
            "security": [],
            "parameters": [_ref("parameters", "RequestId"), *params],
            "responses": {
                "200": {"description": "The file.", "headers": _headers(), "content": content},
                **_errors(403, 500, *statuses),
            },
        }

    def session(op_id: str, summary: str, answer: dict[str, Any], *statuses: int, **extra):
        return {"operationId": op_id, "summary": summary, "tags": ["pages"], "security": [],
                "parameters": [_ref("parameters", "RequestId")],
                "responses": {**answer, **_errors(403, 500, *statuses)}, **extra}  # fmt: skip

    text = {"schema": {"type": "string"}}
    return {
        "/console": {
            "get": page(
                "console",
                "The operator console: run the business in a browser with an admin key",
                {"text/html": text},
            )
        },
        "/console/{name}": {
            "get": page(
                "consoleAsset",
                "A script or style sheet of the console",
                {"text/javascript": text, "text/css": text},
                404,
                params=[
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "examples": ["console.js"]},
                    }
                ],
            )  # fmt: skip
        },
        "/console/session": {
            "get": session(
                "consoleSession",
                "Who is signed in to the console (admin null: nobody), and the CSRF token",
                _ok("ConsoleSession", "The session."),
            ),
            "post": session(
                "consoleSignIn",
                "Sign in with an admin key: a session cookie (HttpOnly, SameSite=Strict)",
                _ok("ConsoleSession", "Signed in; the cookie is set.", status="201"),
                400,
                401,
                413,
                429,
                requestBody={
                    "required": True,
                    "content": {JSON: {"schema": _schema("ConsoleSignIn")}},
                },
                description="Failed sign-ins count against the admin API's per-address limit.",
            ),  # fmt: skip
            "delete": session(
                "consoleSignOut",
                "Sign out (needs the session's `X-CSRF-Token` when signed in)",
                _ok("ConsoleSignedOut", "Signed out; the cookie is cleared."),
            ),
        },
    }
