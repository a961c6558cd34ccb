"""The Flask application factory."""

from __future__ import annotations

import re
import secrets
import time

import redis
from flask import Flask, Response, g, jsonify, request

from api import admin, console, edits, files, generations, models, playground, usage
from api.errors import register_error_handlers
from api.openapi import build_openapi
from api.readiness import readiness
from api.services import EXTENSION, Services
from shared import logs, metrics, tracing
from shared.settings import Settings

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def create_app(
    settings: Settings | None = None, *, redis_client: redis.Redis | None = None
) -> Flask:
    """The web application; ``redis_client`` replaces the one built from
    ``settings.redis_url`` (the fast tests pass a ``fakeredis`` client)."""
    settings = settings or Settings.from_env()
    logs.configure(settings, "web")  # gunicorn's JSON config, when set, was there first
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
        g.log_token = logs.bind(request_id=g.request_id)  # on every line of this request
        g.metrics_route = request.url_rule.rule if request.url_rule else "unmatched"
        g.metrics_started = time.perf_counter()
        metrics.HTTP_IN_PROGRESS.labels(g.metrics_route).inc()
        g.trace = tracing.start_request(
            f"{request.method} {g.metrics_route}",
            request.headers,
            **{"http.route": g.metrics_route},
        )

    @app.teardown_request
    def _in_progress(_exc: BaseException | None) -> None:
        route = g.get("metrics_route")
        if route is not None:
            metrics.HTTP_IN_PROGRESS.labels(route).dec()
        tracing.end_request(g.pop("trace", None), g.get("status"))
        token = g.pop("log_token", None)
        if token is not None:
            try:
                logs.unbind(token)
            except ValueError:  # a streamed answer ends in another context
                pass

    @app.after_request
    def _stamp(response: Response) -> Response:
        response.headers["x-request-id"] = g.get("request_id", "")
        g.status = response.status_code
        started = g.get("metrics_started")
        if started is not None:  # the model: a catalog id the endpoint resolved, or ""
            route, model = g.metrics_route, g.get("metrics_model", "")
            metrics.HTTP_REQUESTS.labels(
                route, request.method, str(response.status_code), model
            ).inc()
            metrics.HTTP_DURATION.labels(route, request.method, model).observe(
                time.perf_counter() - started
            )
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
        """Liveness: this process answers and reaches Redis (cheap; see /readyz)."""
        app.extensions[EXTENSION].redis.ping()
        return {"ok": True}

    @app.get("/readyz")
    def readyz():
        """Readiness: Redis answers, storage takes a write, and every family that must
        be served has a live worker (api/readiness.py); 503 naming what is missing."""
        missing = readiness(app.extensions[EXTENSION])
        if missing:
            return {"ready": False, "missing": missing}, 503
        return {"ready": True, "missing": []}

    @app.get("/metrics")
    def metrics_endpoint():
        """Prometheus' text format: every process of this host (shared/metrics.py) and
        the cluster's gauges read from Redis now."""
        svc = app.extensions[EXTENSION]
        body = metrics.exposition([svc.cluster_collector])
        return Response(body, mimetype=None, content_type=metrics.CONTENT_TYPE)

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
