"""GET /console: the operator console, a static page served by the gateway itself.

The page (``api/static/console/``: one HTML file, one ES module, one style sheet,
and the charting library uPlot, vendored from npm -- see ``VENDOR.md`` there; no
build step, nothing from a CDN) signs an operator in with an admin key into a
server-side session (:mod:`shared.consolesessions`) and then calls the admin API
(:mod:`api.admin`) with the session's cookie instead of the key, sending the
session's CSRF token in ``X-CSRF-Token`` on every write.

Routes: ``POST /console/session`` (sign in: ``{"key": "iga-..."}``; failures count
against the admin API's per-address limit), ``GET /console/session`` (who is signed
in, and the CSRF token, for a reloaded page), ``DELETE /console/session`` (sign out;
CSRF-checked). Every ``/console`` request a browser marks as cross-site is refused
(:func:`api.admin.refuse_cross_site`), and every answer carries a strict
Content-Security-Policy: scripts, styles and requests only to this origin, no
inline script or style, no frames, no form posts. The page builds its DOM with
``textContent``: key names, metadata and prompts are never parsed as markup.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from flask import Blueprint, Response, request
from pydantic import BaseModel

from api import admin_schemas as s
from api.admin import check_csrf, current_session, refuse_cross_site, sessions
from api.services import services
from api.static_files import PAGE_HEADERS, conditional_file
from api.validation import parse_body
from shared.adminkeys import AdminKeyStore, AuthFailures
from shared.consolesessions import COOKIE, Session
from shared.errors import NotFound

bp = Blueprint("console", __name__)

PREFIX = "/console"
_STATIC = resources.files("api") / "static" / "console"
ASSETS: dict[str, str] = {
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
}
CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)
HEADERS = {"Content-Security-Policy": CSP, **PAGE_HEADERS}


def _file(name: str, mimetype: str) -> Response:
    return conditional_file(_STATIC / name, mimetype)


@bp.get("/console")
def page() -> Response:
    return _file("index.html", "text/html; charset=utf-8")


@bp.get("/console/<name>")
def asset(name: str) -> Response:
    mimetype = ASSETS.get(name)
    if mimetype is None:
        raise NotFound(f"No console file '{name[:100]}'.")
    return _file(name, mimetype)


def _who(session: Session) -> s.ConsoleSession:
    admin = session.admin
    return s.ConsoleSession(
        object="console.session",
        admin=s.ConsoleAdmin(id=admin.id, name=admin.name, scope=admin.scope.value),
        csrf_token=session.csrf,
        idle_timeout_seconds=services().settings.console_idle_timeout_seconds,
    )


def _json(body: BaseModel, status: int = 200) -> Response:
    response = Response(body.model_dump_json(), status=status, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/console/session")
def sign_in() -> Response:
    svc = services()
    address = request.remote_addr or "-"
    failures = AuthFailures(svc.redis, svc.settings.admin_auth_failures_per_minute)
    failures.check(address)
    try:
        body = parse_body(request.get_data(cache=False), model=s.ConsoleSignIn)  # type: ignore[arg-type]
        admin = AdminKeyStore(svc.redis).authenticate(body.key.strip())
    except Exception:
        failures.record(address)
        raise
    old = request.cookies.get(COOKIE)
    console = sessions()
    console.end(old)  # a new session id on each sign-in (no fixation)
    token, session = console.start(admin)
    response = _json(_who(session), 201)
    response.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="Strict",
        secure=request.is_secure,
        path="/",
    )
    return response


@bp.get("/console/session")
def whoami() -> Response:
    """Who is signed in: a page loaded without a session is a normal state, not an error
    (``admin`` and ``csrf_token`` are null then)."""
    session = current_session()
    if session is None:
        return _json(s.ConsoleSession(object="console.session", admin=None, csrf_token=None))
    return _json(_who(session))


@bp.delete("/console/session")
def sign_out() -> Response:
    session = current_session()
    if session is not None:
        check_csrf(session)
        sessions().end(request.cookies.get(COOKIE))
    response = _json(s.ConsoleSignedOut(object="console.session", signed_out=True))
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="Strict")
    return response


def install(app: Any) -> None:
    """The blueprint, the cross-site guard and the headers on every ``/console`` URL."""

    def _ours() -> bool:
        return request.path == PREFIX or request.path.startswith(PREFIX + "/")

    @app.before_request
    def _cross_site() -> None:
        if _ours():
            refuse_cross_site()

    @app.after_request
    def _headers(response: Response) -> Response:
        if _ours():
            for name, value in HEADERS.items():
                response.headers[name] = value
        return response

    app.register_blueprint(bp)
