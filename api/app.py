"""The Flask application factory."""

from __future__ import annotations

import logging
import re
import secrets

import redis
from flask import Flask, Response, g, jsonify, request

from api import admin, console, edits, files, generations, models, playground, usage
from api.errors import register_error_handlers
from api.openapi import build_openapi
from api.services import EXTENSION, Services
from shared.settings import Settings

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def create_app(
    settings: Settings | None = None, *, redis_client: redis.Redis | None = None
) -> Flask:
    """The web application; ``redis_client`` replaces the one built from
    ``settings.redis_url`` (the fast tests pass a ``fakeredis`` client)."""
    settings = settings or Settings.from_env()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # No static route: Flask's default one would serve the working directory's static/.
    app = Flask("imagegate", static_folder=None)
    # "//v1/models" is an unknown URL (404 JSON), not a 308 whose Location comes from Host.
    app.url_map.merge_slashes = False
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[EXTENSION] = Services.build(settings, redis_client)

    @app.before_request
    def _request_id() -> None:
        incoming = request.headers.get("x-request-id", "")
        g.request_id = incoming if _REQUEST_ID.match(incoming) else "req_" + secrets.token_hex(12)

    @app.after_request
    def _stamp(response: Response) -> Response:
        response.headers["x-request-id"] = g.get("request_id", "")
        key = g.get("api_key")
        if key is not None and "x-ratelimit-limit-requests" not in response.headers:
            status = g.get("ratelimit")
            if status is None:
                try:
                    status = app.extensions[EXTENSION].accounts.account_status(key)
                except Exception:  # noqa: BLE001 - headers are best effort
                    status = None
            if status is not None:
                response.headers.update(status.headers())
        return response

    @app.get("/healthz")
    def healthz():
        app.extensions[EXTENSION].redis.ping()
        return {"ok": True}

    document = build_openapi(default_model=settings.default_model)

    @app.get("/openapi.json")
    def openapi_json():
        return jsonify(document)  # public, like the API's documentation

    register_error_handlers(app)
    app.register_blueprint(generations.bp)
    app.register_blueprint(edits.bp)
    app.register_blueprint(models.bp)
    app.register_blueprint(files.bp)
    app.register_blueprint(usage.bp)
    app.register_blueprint(playground.bp)
    admin.install(app)
    console.install(app)
    return app
