"""The admin API, ``/admin/v1/...``: run the business over HTTP with an admin key.

Authenticated by admin keys only (:mod:`shared.adminkeys`: ``Authorization:
Bearer iga-...``); a customer key is a 401 here, as an admin key is on ``/v1``.
A ``read`` key may call every GET, a ``write`` key everything; every change is
written to the audit stream with the admin key that made it.

For browsers: no CORS (a page of another site cannot read an answer), and a
request a browser marks as cross-site (``Sec-Fetch-Site``) or whose ``Origin``
is not this host is refused with 403 before anything else
(:func:`refuse_cross_site`). Failed authentications are counted per client
address (:class:`shared.adminkeys.AuthFailures`). Answers are JSON (or CSV /
JSON lines for the ledger) with ``nosniff`` and a CSP that loads nothing.

The handlers are thin: keys are :class:`shared.keys.KeyStore`, money
:mod:`shared.billing` and :mod:`shared.balance_changes`, jobs
:mod:`shared.jobs` and :mod:`shared.jobindex`, health
:class:`shared.health.Breakers`, capacity :class:`shared.capacity.Capacity`,
workers :class:`shared.presence.Presence`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from flask import Blueprint, Response, g, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api import admin_schemas as s
from api.services import Services, services
from api.static_files import BROWSER_HEADERS
from api.validation import parse_body
from shared import jobevents, jobindex, jobstats
from shared import jobrecord as rec
from shared.adminkeys import AdminKey, AdminKeyStore, AuditLog, AuthFailures, Scope
from shared.balance_changes import BalanceChanges
from shared.billing import BALANCE, format_money, parse_money
from shared.capacity import Capacity
from shared.consolesessions import COOKIE, CSRF_HEADER, ConsoleSessions, Session
from shared.errors import (
    AuthenticationFailed,
    InvalidRequest,
    NotFound,
    PermissionDenied,
)
from shared.jobs import JobStatus, job_from_fields
from shared.keys import ApiKey
from shared.presence import presence_for, why_unusable
from shared.route import model_breaker

bp = Blueprint("admin", __name__, url_prefix="/admin/v1")

PREFIX = "/admin/"
_CAPACITY_KEYS = 16  # upstream key indexes looked at for leases (the web holds no keys)
_LEDGER_BATCH = 1000
SECURITY_HEADERS = {
    **BROWSER_HEADERS,
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}


# --- guards ------------------------------------------------------------------------------


def refuse_cross_site() -> None:
    """403 for what a browser sends on behalf of another site.

    ``Sec-Fetch-Site`` (sent by every current browser) must be ``same-origin`` or
    ``none`` (typed by the user); an ``Origin``, when sent, must be this host
    (scheme aside: a TLS-terminating proxy may stand in front; and one of
    ``IMAGEGATE_ALLOWED_HOSTS`` when that is set) or one of
    ``IMAGEGATE_ADMIN_ALLOWED_ORIGINS``. Clients that are not browsers send
    neither and pass.
    """
    site = request.headers.get("Sec-Fetch-Site", "").strip().lower()
    if site and site not in ("same-origin", "none"):
        raise PermissionDenied(
            "Cross-site requests are refused here.", code="cross_site_request_refused"
        )
    origin = request.headers.get("Origin")
    if origin is None:
        return
    settings = services().settings
    origin = origin.strip()
    if origin.lower() in settings.admin_allowed_origins:
        return
    try:
        netloc = urlsplit(origin).netloc.lower()
    except ValueError:
        netloc = ""
    # With IMAGEGATE_ALLOWED_HOSTS set, the host must be one of them too: a page whose
    # name was rebound to the gateway's address sends its own name as Host and Origin.
    hosts = settings.allowed_hosts
    if not netloc or netloc != request.host.lower() or (hosts and netloc not in hosts):
        raise PermissionDenied(
            "Requests from another origin are refused here.", code="cross_site_request_refused"
        )


def sessions() -> ConsoleSessions:
    svc = services()
    return ConsoleSessions(svc.redis, svc.settings.console_idle_timeout_seconds)


def current_session() -> Session | None:
    """The signed-in console session of this request's cookie, if any."""
    token = request.cookies.get(COOKIE)
    return sessions().get(token) if token else None


def check_csrf(session: Session) -> None:
    if not session.csrf_ok(request.headers.get(CSRF_HEADER)):
        raise PermissionDenied(
            f"Missing or wrong {CSRF_HEADER} header for this console session.",
            code="csrf_token_invalid",
        )


def _authenticate(svc: Services) -> AdminKey:
    address = request.remote_addr or "-"
    failures = AuthFailures(svc.redis, svc.settings.admin_auth_failures_per_minute)
    failures.check(address)
    header = request.headers.get("Authorization", "")
    if not header and COOKIE in request.cookies:
        # The console (api/console.py): its session instead of the key, CSRF-checked on
        # writes. A random 256-bit token: an unknown one is expired, not a guess to count.
        session = current_session()
        if session is None:
            raise AuthenticationFailed(
                "The console session has ended; sign in again.", code="console_signed_out"
            )
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            check_csrf(session)
        return session.admin
    scheme, _, token = header.partition(" ")
    plaintext = token.strip() if scheme.lower() == "bearer" else ""
    if not plaintext:
        failures.record(address)
        raise AuthenticationFailed(
            "You didn't provide an admin key. Send it as 'Authorization: Bearer iga-...'.",
            code="missing_api_key",
        )
    try:
        return AdminKeyStore(svc.redis).authenticate(plaintext)
    except AuthenticationFailed:
        failures.record(address)
        raise


@bp.before_request
def _admin_only() -> None:
    svc = services()
    admin = _authenticate(svc)
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        admin.require(Scope.WRITE)
    g.admin = admin


def _audit(action: str, target: str, detail: dict[str, Any]) -> None:
    AuditLog(services().redis).record(g.admin.id, action, target, detail, g.get("request_id", ""))


def _answer(model: BaseModel, status: int = 200) -> Response:
    return Response(
        json.dumps(model.model_dump(mode="json", exclude_unset=False)),
        status=status,
        mimetype="application/json",
    )


class _Query(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


def _query(model: type[BaseModel]) -> Any:
    try:
        return model.model_validate(request.args.to_dict())
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        param = str(first["loc"][0]) if first.get("loc") else None
        raise InvalidRequest(
            f"Invalid value for '{param}': {first.get('msg', 'invalid value')}.",
            param=param,
            code="invalid_value",
        ) from None


Text = Annotated[str, Field(max_length=200)]
Limit = Annotated[int, Field(ge=1, le=200)]
Time = Annotated[float, Field(ge=0, le=1e11)]
Day = Annotated[str, Field(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]


# --- keys --------------------------------------------------------------------------------


def _key_info(key: ApiKey, svc: Services, balance: int | None = None) -> dict[str, Any]:
    if not key.unlimited and balance is None:
        balance = svc.accounts.balance(key.id)
    return {
        "object": "api_key",
        "id": key.id,
        "name": key.name,
        "tier": key.tier,
        "created": key.created,
        "revoked": key.revoked,
        "expired": key.expired(),
        "unlimited": key.unlimited,
        "strict_params": key.strict_params,
        "metadata": dict(key.metadata),
        "allowed_models": list(key.allowed_models),
        "expires": key.expires,
        "balance": "unlimited" if key.unlimited else format_money(balance or 0),
    }


def _checked_tier(name: str | None, svc: Services) -> str:
    name = name or svc.catalog.default_tier
    if name not in svc.catalog.tiers:
        raise InvalidRequest(
            f"No tier '{name}'. Tiers: {', '.join(svc.catalog.tiers)}.",
            param="tier",
            code="invalid_value",
        )
    return name


def _checked_models(models: list[str] | None, svc: Services) -> list[str] | None:
    if models is None:
        return None
    known = svc.catalog.models.keys() | svc.catalog.virtual.keys()
    for i, model_id in enumerate(models):
        if model_id not in known:
            raise InvalidRequest(
                f"No model '{model_id}' in the catalog.",
                param=f"allowed_models[{i}]",
                code="invalid_value",
            )
    return models


@bp.get("/me")
def me():
    admin: AdminKey = g.admin
    return _answer(s.Me(object="admin_key", id=admin.id, name=admin.name, scope=admin.scope.value))


class _KeyQuery(_Query):
    q: Text = ""
    tier: Text = ""
    state: Literal["all", "active", "revoked", "expired"] = "all"
    cursor: Text = ""
    limit: Limit = 50


def _state(key: ApiKey) -> str:
    return "revoked" if key.revoked else "expired" if key.expired() else "active"


@bp.get("/keys")
def list_keys():
    """Keys oldest first, filtered; ``cursor`` is the last id of the previous page."""
    svc = services()
    query: _KeyQuery = _query(_KeyQuery)
    needle = query.q.strip().lower()
    keys = svc.keys.list()
    if query.cursor:
        ids = [k.id for k in keys]
        if query.cursor not in ids:
            raise InvalidRequest("Unknown cursor.", param="cursor", code="invalid_value")
        keys = keys[ids.index(query.cursor) + 1 :]
    page: list[ApiKey] = []
    more = False
    for key in keys:
        if query.tier and key.tier != query.tier:
            continue
        if query.state != "all" and _state(key) != query.state:
            continue
        if needle and not any(
            needle in text.lower() for text in (key.id, key.name, *key.metadata.values())
        ):
            continue
        if len(page) == query.limit:
            more = True
            break
        page.append(key)
    pipe = svc.redis.pipeline(transaction=False)
    for key in page:
        pipe.get(BALANCE.format(key.id))
    balances = [int(b or 0) for b in pipe.execute()]
    return _answer(
        s.ApiKeyList(
            object="list",
            data=[_key_info(k, svc, b) for k, b in zip(page, balances, strict=True)],
            next_cursor=page[-1].id if more and page else None,
        )
    )


@bp.post("/keys")
def create_key():
    svc = services()
    body = parse_body(request.get_data(cache=False), model=s.KeyCreate)
    tier = _checked_tier(body.tier, svc)
    models = _checked_models(body.allowed_models, svc)
    unlimited = body.balance == "unlimited"
    micros = 0 if unlimited else _money(body.balance, "balance")
    if micros < 0:
        raise InvalidRequest("The balance must be >= 0.", param="balance", code="invalid_value")
    plaintext, key = svc.keys.create(body.name, tier=tier, unlimited=unlimited)
    key = svc.keys.update(
        key.id, metadata=body.metadata, allowed_models=models, expires=body.expires
    )
    if micros:
        BalanceChanges(svc.redis, svc.settings.idempotency_ttl_seconds).apply(
            key.id,
            micros,
            kind="topup",
            reason="initial balance",
            admin=g.admin.id,
            body=b"",
        )
    _audit(
        "key.create",
        key.id,
        {"name": key.name, "tier": tier, "balance": body.balance, "expires": key.expires},
    )
    info = _key_info(key, svc, micros)
    return _answer(s.ApiKeyCreated(**info, key=plaintext), 201)


def _key(key_id: str, svc: Services) -> ApiKey:
    if not key_id.startswith("key_") or len(key_id) > 40:
        raise NotFound(f"No API key with id '{key_id[:40]}'.", code="key_not_found")
    return svc.keys.get(key_id)


@bp.get("/keys/<key_id>")
def show_key(key_id: str):
    svc = services()
    return _answer(s.ApiKeyInfo(**_key_info(_key(key_id, svc), svc)))


@bp.patch("/keys/<key_id>")
def update_key(key_id: str):
    svc = services()
    _key(key_id, svc)
    body = parse_body(request.get_data(cache=False), model=s.KeyUpdate)
    tier = _checked_tier(body.tier, svc) if body.tier is not None else None
    key = svc.keys.update(
        key_id,
        name=body.name,
        tier=tier,
        metadata=body.metadata,
        allowed_models=_checked_models(body.allowed_models, svc),
        expires=body.expires,
    )
    _audit("key.update", key.id, body.model_dump(exclude_none=True))
    return _answer(s.ApiKeyInfo(**_key_info(key, svc)))


@bp.post("/keys/<key_id>/revoke")
def revoke_key(key_id: str):
    svc = services()
    _key(key_id, svc)
    key = svc.keys.revoke(key_id)
    _audit("key.revoke", key.id, {})
    return _answer(s.ApiKeyInfo(**_key_info(key, svc)))


def _money(text: str, param: str) -> int:
    """Micro-units of an amount the schema let through (its form); 400 for one out of range."""
    try:
        return parse_money(text)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param=param, code="invalid_value") from exc


def _change_balance(key_id: str, kind: str):
    svc = services()
    _key(key_id, svc)
    raw = request.get_data(cache=False)
    body = parse_body(raw, model=s.BalanceChangeRequest)
    micros = _money(body.amount, "amount")
    if kind == "topup" and micros <= 0:
        raise InvalidRequest("A top-up must be positive.", param="amount", code="invalid_value")
    if micros == 0:
        raise InvalidRequest(
            "An adjustment must not be zero.", param="amount", code="invalid_value"
        )
    idem = request.headers.get("Idempotency-Key", "")
    if len(idem) > 255:
        raise InvalidRequest(
            "The Idempotency-Key header is at most 255 characters.",
            code="invalid_idempotency_key",
        )
    change = BalanceChanges(svc.redis, svc.settings.idempotency_ttl_seconds).apply(
        key_id,
        micros,
        kind=kind,
        reason=body.reason,
        admin=g.admin.id,
        body=raw,
        idempotency_key=idem,
    )
    if not change.replayed:
        _audit(f"balance.{kind}", key_id, {"amount": body.amount, "reason": body.reason,
                                           "entry": change.entry_id})  # fmt: skip
    return _answer(
        s.BalanceChangeAnswer(
            object="balance_change",
            key_id=key_id,
            kind=kind,  # type: ignore[arg-type]
            amount=format_money(micros),
            reason=body.reason,
            balance=format_money(change.balance_micros),
            ledger_entry=change.entry_id,
            replayed=change.replayed,
        )
    )


@bp.post("/keys/<key_id>/topup")
def top_up(key_id: str):
    return _change_balance(key_id, "topup")


@bp.post("/keys/<key_id>/adjust")
def adjust(key_id: str):
    return _change_balance(key_id, "adjust")


# --- usage and ledger ------------------------------------------------------------------------


class _UsageQuery(_Query):
    key_id: Text = ""
    model: Text = ""
    since: Day | None = None
    until: Day | None = None


def _key_ids(key_id: str, svc: Services) -> list[str]:
    return [_key(key_id, svc).id] if key_id else [k.id for k in svc.keys.list()]


@bp.get("/usage")
def usage():
    """Images, spend, upstream cost and margin by key, UTC day and model (inclusive day
    bounds)."""
    svc = services()
    query: _UsageQuery = _query(_UsageQuery)
    rows: list[s.UsageRow] = []
    sums: dict[str, dict[str, list[int]]] = {"key": {}, "model": {}, "day": {}}
    for key_id in _key_ids(query.key_id, svc):
        for row in svc.history.usage(key_id):
            if query.model and row.model != query.model:
                continue
            if (query.since and row.day < query.since) or (query.until and row.day > query.until):
                continue
            rows.append(
                s.UsageRow(key_id=key_id, day=row.day, model=row.model, images=row.images,
                           amount=format_money(row.amount_micros),
                           cost=format_money(row.cost_micros),
                           margin=format_money(row.margin_micros))
            )  # fmt: skip
            for what, name in (("key", key_id), ("model", row.model), ("day", row.day)):
                total = sums[what].setdefault(name, [0, 0, 0])
                total[0] += row.images
                total[1] += row.amount_micros
                total[2] += row.cost_micros

    def listed(what: str) -> list[s.UsageSum]:
        return [
            s.UsageSum(name=name, images=t[0], amount=format_money(t[1]),
                       cost=format_money(t[2]), margin=format_money(t[1] - t[2]))
            for name, t in sorted(sums[what].items())
        ]  # fmt: skip

    return _answer(
        s.UsageReport(
            object="usage_report",
            data=rows,
            by_key=listed("key"),
            by_model=listed("model"),
            by_day=listed("day"),
        )
    )


class _LedgerQuery(_Query):
    key_id: Text = ""
    format: Literal["jsonl", "csv"] = "jsonl"
    since: Time | None = None
    until: Time | None = None


LEDGER_COLUMNS = (
    "key_id", "entry_id", "ts", "kind", "job", "model", "images", "amount", "reason", "admin",
)  # fmt: skip


def _csv_cell(value: Any) -> Any:
    """No formula injection: a text cell a spreadsheet would evaluate is quoted with '."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        try:
            float(value)
        except ValueError:
            return "'" + value
    return value


@bp.get("/ledger")
def ledger():
    """Every ledger entry of one key or of all keys (key by key, oldest first), streamed."""
    svc = services()
    query: _LedgerQuery = _query(_LedgerQuery)
    key_ids = _key_ids(query.key_id, svc)
    since = None if query.since is None else int(query.since * 1000)
    until = None if query.until is None else int(query.until * 1000)

    def entries() -> Iterator[dict[str, Any]]:
        # SQL's history merged with the entries the sink has not moved yet (shared.history)
        for key_id in key_ids:
            for fields in svc.history.entries(key_id, since, until):
                yield {
                    "key_id": key_id,
                    "entry_id": fields["id"],
                    "ts": float(fields.get("ts") or 0),
                    "kind": fields.get("kind", ""),
                    "job": fields.get("job", ""),
                    "model": fields.get("model", ""),
                    "images": int(fields.get("images") or 0),
                    "amount": format_money(int(fields.get("amount") or 0)),
                    "reason": fields.get("reason", ""),
                    "admin": fields.get("admin", ""),
                }

    if query.format == "csv":

        def rows() -> Iterator[str]:
            out = io.StringIO()
            writer = csv.writer(out)
            writer.writerow(LEDGER_COLUMNS)
            for entry in entries():
                writer.writerow([_csv_cell(entry[c]) for c in LEDGER_COLUMNS])
                if out.tell() > 64 * 1024:
                    yield out.getvalue()
                    out.seek(0)
                    out.truncate()
            yield out.getvalue()

        response = Response(rows(), mimetype="text/csv")
        response.headers["Content-Disposition"] = 'attachment; filename="ledger.csv"'
        return response
    lines = (json.dumps(entry) + "\n" for entry in entries())
    return Response(lines, mimetype="application/x-ndjson")


# --- jobs ----------------------------------------------------------------------------------


class _JobQuery(_Query):
    key_id: Text = ""
    model: Text = ""
    status: Literal[tuple(st.value for st in JobStatus)] | None = None  # type: ignore[valid-type]
    since: Time | None = None
    until: Time | None = None
    cursor: Annotated[str, Field(max_length=200, pattern=r"^[0-9.e+-]+:[A-Za-z0-9_]*$")] | None = (
        None
    )
    limit: Limit = 50


def _money_or_none(micros: int | None) -> str | None:
    return None if micros is None else format_money(micros)


def _summary(job: jobindex.JobSummary) -> dict[str, Any]:
    return {
        "id": job.id,
        "key_id": job.key_id,
        "model": job.model,
        "served_by": job.serving,
        "status": job.status,
        "created": job.created,
        "finished": job.finished,
        "n": job.n,
        "charged": format_money(job.charged_micros),
        "settled": _money_or_none(job.settled_micros),
        "refunded": _money_or_none(job.refunded_micros),
    }


@bp.get("/jobs")
def search_jobs():
    """Recent jobs newest first (the bounded index of :mod:`shared.jobindex`)."""
    svc = services()
    query: _JobQuery = _query(_JobQuery)
    try:
        page = jobindex.search(
            svc.redis,
            key_id=query.key_id or None,
            model=query.model or None,
            status=query.status,
            since=query.since,
            until=query.until,
            cursor=query.cursor or None,
            limit=query.limit,
        )
    except ValueError as exc:
        raise InvalidRequest("Invalid cursor.", param="cursor", code="invalid_value") from exc
    return _answer(
        s.JobSearch(
            object="list",
            data=[s.JobSummary(**_summary(j)) for j in page.jobs],
            next_cursor=page.next_cursor,
        )
    )


def timeline(fields: dict[str, str], calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What happened to a job, in order: its record (see :mod:`shared.jobrecord`) and
    its upstream calls (:mod:`shared.jobevents`)."""
    job = job_from_fields(fields)
    assert job is not None
    events: list[dict[str, Any]] = [
        {"at": job.created, "event": "admitted",
         "detail": {"model": job.model, "n": int(fields.get(rec.N) or 1),
                    "charged": format_money(int(fields.get(rec.CHARGED) or 0))}},
        {"at": job.created, "event": "queued",
         "detail": {"queue": job.queue, "sends": int(fields.get(rec.SENDS) or 0)}},
    ]  # fmt: skip
    if job.started is not None:
        events.append(
            {
                "at": job.started,
                "event": "claimed",
                "detail": {
                    "worker": fields.get(rec.WORKER, ""),
                    "attempt": job.attempt,
                    "takeovers": job.takeovers,
                },
            }
        )
    for note in job.fallbacks:
        events.append({"at": note.get("at"), "event": "fallback", "detail": dict(note)})
    for call in calls:
        events.append({"at": call.get("at"), "event": "upstream_attempt", "detail": call})
    if job.images:
        events.append(
            {
                "at": job.finished,
                "event": "stored",
                "detail": {"images": [{"size": i.size, "content_type": i.content_type}
                                      for i in job.images]},
            }
        )  # fmt: skip
    if job.terminal:
        detail: dict[str, Any] = {"served_by": job.serving} if job.serving else {}
        if job.error:
            detail["error"] = {k: job.error.get(k) for k in ("status", "type", "code", "message")}
        events.append({"at": job.finished, "event": job.status.value, "detail": detail})
    if fields.get(rec.SETTLED):
        events.append(
            {
                "at": job.finished,
                "event": "settled",
                "detail": {
                    "spent": format_money(int(fields[rec.SETTLED])),
                    "refunded": format_money(int(fields.get(rec.REFUNDED) or 0)),
                },
            }
        )
    for attempt in (job.webhook or {}).get("attempts", []):
        events.append(
            {"at": attempt.get("at"), "event": "webhook_attempt", "detail": dict(attempt)}
        )
    return sorted(events, key=lambda e: (e["at"] is None, e["at"] or 0))


@bp.get("/jobs/<job_id>")
def show_job(job_id: str):
    svc = services()
    fields = svc.redis.hgetall(rec.record_key(job_id)) if job_id.startswith("imgjob_") else {}
    job = job_from_fields(fields)
    if job is None or len(job_id) > 40:
        raise NotFound(f"No job '{job_id[:40]}'.", param="id", code="job_not_found")
    summary = jobindex.summarize([fields.get(f) for f in jobindex.SUMMARY_FIELDS])
    assert summary is not None
    request_fields = {k: v for k, v in job.request.items() if k != "prompt"}
    request_fields["prompt"] = str(job.request.get("prompt", ""))[:2000]
    return _answer(
        s.JobTimeline(
            **_summary(summary),
            object="admin.job",
            attempt=job.attempt,
            takeovers=job.takeovers,
            worker=fields.get(rec.WORKER),
            deadline=job.deadline,
            request=request_fields,
            error=job.error,
            timeline=[
                s.TimelineEvent(**e) for e in timeline(fields, jobevents.read(svc.redis, job_id))
            ],
        )
    )


# --- models, workers, audit --------------------------------------------------------------------


@bp.get("/models")
def models():
    svc = services()
    capacity = Capacity(svc.redis)
    data: list[s.AdminModel] = []
    for vm in svc.catalog.virtual.values():
        data.append(
            s.AdminModel(
                id=vm.id,
                virtual=True,
                family=None,
                price_per_image=str(vm.price),
                available=any(
                    not why_unusable(
                        svc.settings, svc.catalog.family_of(svc.catalog.models[c.model]), svc.redis
                    )
                    for c in vm.candidates
                ),
                unavailable_reason=None,
                breaker=None,
                capacity=None,
                candidates=[c.model for c in vm.candidates],
            )
        )
    for model in svc.catalog.models.values():
        family = svc.catalog.family_of(model)
        reason = why_unusable(svc.settings, family, svc.redis)
        breaker = svc.breakers.status(model_breaker(model.id))
        data.append(
            s.AdminModel(
                id=model.id,
                virtual=False,
                family=family.name,
                price_per_image=str(model.price),
                available=not reason,
                unavailable_reason=reason or None,
                breaker=s.Breaker(
                    state=breaker.state.value, failures=breaker.failures, retry_at=breaker.retry_at
                ),
                capacity=s.Capacity(
                    per_key_limit=family.max_concurrent,
                    in_flight=sum(capacity.active(family.name, _CAPACITY_KEYS)),
                ),
                candidates=[],
            )
        )
    return _answer(s.AdminModelList(object="list", data=data))


class _StatsQuery(_Query):
    window: Literal["hour", "day"] = "hour"


@bp.get("/stats")
def stats():
    """Jobs, images, errors and latency per model: per minute over the last hour, or per
    hour over the last day (:mod:`shared.jobstats`, counted when each job ends)."""
    svc = services()
    query: _StatsQuery = _query(_StatsQuery)
    data = jobstats.series(svc.redis, query.window)
    return _answer(
        s.JobStats(
            object="job_stats",
            window=data["window"],
            step=data["step"],
            times=data["times"],
            models={m: s.ModelSeries(**v) for m, v in data["models"].items()},
        )
    )


@bp.get("/workers")
def workers():
    svc = services()
    presence = presence_for(svc.redis)
    data = [
        s.FamilyWorkers(
            family=family.name,
            queue=family.queue,
            workers=presence.workers(family.name),
            queue_depth=svc.queue.depth(family.queue),
        )
        for family in svc.catalog.families.values()
    ]
    return _answer(s.WorkerReport(object="list", data=data))


class _AuditQuery(_Query):
    # 19 digits: within Redis' 64-bit stream ids whatever they are.
    cursor: Annotated[str, Field(pattern=r"^[0-9]{1,19}-[0-9]{1,19}$")] | None = None
    limit: Limit = 50


@bp.get("/audit")
def audit():
    """Admin writes, newest first."""
    svc = services()
    query: _AuditQuery = _query(_AuditQuery)
    entries = AuditLog(svc.redis).page(before=query.cursor or "+", limit=query.limit + 1)
    more = len(entries) > query.limit
    entries = entries[: query.limit]
    return _answer(
        s.AuditList(
            object="list",
            data=[s.AuditEntry(**e) for e in entries],
            next_cursor=entries[-1]["id"] if more else None,
        )
    )


def install(app: Any) -> None:
    """The blueprint, and the browser guards and headers on every ``/admin/`` URL."""

    @app.before_request
    def _cross_site() -> None:
        if request.path.startswith(PREFIX):
            refuse_cross_site()

    @app.after_request
    def _headers(response: Response) -> Response:
        if request.path.startswith(PREFIX):
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
        return response

    app.register_blueprint(bp)
