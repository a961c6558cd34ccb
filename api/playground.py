"""GET /playground: the customers' playground, a static page served by the gateway itself.

The page (``api/static/playground/``: one HTML file, one ES module, one style
sheet; no build step, nothing from a CDN) talks to the public API from the
browser with the customer's own API key: ``GET /v1/usage`` to sign in and show
the balance and limits, ``GET /v1/models`` for the models and their prices,
``POST /v1/images/generations`` (or ``/edits`` with reference images), with
``stream: true`` read as Server-Sent Events, and ``GET /v1/images/generations/{id}``
for what a stream does not say (``served_by``). Nothing here reads a key:
the page keeps it in the tab's ``sessionStorage`` and sends it only in the
``Authorization`` header, never in a URL (which the access log would show).

Every answer of these routes carries a strict Content-Security-Policy: scripts
and styles only from this origin (no inline script or style, no ``eval``),
requests only to this origin, images from this origin, ``data:``/``blob:``
(base64 answers) and the image store's origin, no frames, no form posts, no
plugins. The page builds its DOM with ``textContent``, never from HTML strings,
so nothing a customer or an operator wrote (prompts, model descriptions) is
ever parsed as markup.
"""

from __future__ import annotations

from importlib import resources
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app

from api.services import EXTENSION, Services
from api.static_files import PAGE_HEADERS, conditional_file
from shared.errors import NotFound

bp = Blueprint("playground", __name__)

_STATIC = resources.files("api") / "static" / "playground"

# The files the page is made of, by URL name -> content type; nothing else is served.
ASSETS: dict[str, str] = {
    "playground.js": "text/javascript; charset=utf-8",
    "playground.css": "text/css; charset=utf-8",
}
_CSP_CACHE = "playground.csp"


def _origin(url: str | None) -> str | None:
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}"


def image_origins(svc: Services) -> list[str]:
    """Where the images of an answer may live besides this origin: the public base URL
    (local storage behind another host name) and the object store's URLs (S3)."""
    origins = [_origin(svc.settings.public_base_url)]
    storage = svc.settings.storage
    if storage.backend == "s3":
        try:  # a presigned URL is computed offline: its origin is the store's
            origins.append(_origin(svc.storage.url("playground/probe.png", 60)))
        except Exception:  # noqa: BLE001 - no store origin: images from it do not show
            pass
        origins.append(_origin(storage.s3_public_endpoint_url))
    return sorted({o for o in origins if o})


def content_security_policy(svc: Services) -> str:
    images = " ".join(["'self'", "data:", "blob:", *image_origins(svc)])
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            f"img-src {images}",
            "connect-src 'self'",
            "form-action 'none'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
        ]
    )


def _secured(response: Response) -> Response:
    app = current_app
    policy = app.config.get(_CSP_CACHE)
    if policy is None:
        policy = app.config[_CSP_CACHE] = content_security_policy(app.extensions[EXTENSION])
    response.headers["Content-Security-Policy"] = policy
    response.headers.update(PAGE_HEADERS)
    return response


def _file(name: str, mimetype: str) -> Response:
    return _secured(conditional_file(_STATIC / name, mimetype))


@bp.get("/playground")
def page() -> Response:
    return _file("index.html", "text/html; charset=utf-8")


@bp.get("/playground/<name>")
def asset(name: str) -> Response:
    mimetype = ASSETS.get(name)
    if mimetype is None:
        raise NotFound(f"No playground file '{name[:100]}'.")
    return _file(name, mimetype)
