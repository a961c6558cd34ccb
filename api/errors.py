"""The one place where errors become HTTP responses.

Every :class:`shared.errors.GatewayError` renders as OpenAI's envelope with its
status and headers; werkzeug's HTTP errors, Redis outages and anything
unexpected are translated here so a client never sees an HTML page or a
stack trace. (Requests gunicorn itself cannot parse are answered by
``api/gunicorn_conf.py`` in the same envelope.)
"""

from __future__ import annotations

import logging

import redis
from flask import Flask, Response, g, jsonify
from gunicorn.http.errors import ParseException as MalformedHTTP
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from shared.errors import (
    GatewayError,
    InvalidRequest,
    NotFound,
    RequestTooLarge,
    ServerError,
    ServiceUnavailable,
)

log = logging.getLogger(__name__)


def render(error: GatewayError) -> Response:
    response = jsonify(error.envelope())
    response.status_code = error.status
    for name, value in error.headers.items():
        response.headers[name] = value
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(GatewayError)
    def _gateway(error: GatewayError) -> Response:
        if error.status >= 500:
            log.warning(
                "request %s failed: %s %s", g.get("request_id"), error.status, error.message
            )
        return render(error)

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(error: RequestEntityTooLarge) -> Response:
        limit = app.config.get("MAX_CONTENT_LENGTH")
        return render(RequestTooLarge(f"The request body is larger than {limit} bytes."))

    @app.errorhandler(MalformedHTTP)
    def _malformed_http(error: MalformedHTTP) -> Response:
        # gunicorn parses a chunked body only as the app reads it, so a bad chunk
        # surfaces here, inside the request, not as one of gunicorn's own 400s.
        return render(
            InvalidRequest(
                f"The request body is not valid HTTP: {error}.", code="malformed_http_request"
            )
        )

    @app.errorhandler(HTTPException)
    def _http(error: HTTPException) -> Response:
        if error.code == 404:
            return render(
                NotFound("Unknown URL. See GET /v1/models and POST /v1/images/generations.")
            )
        if error.code == 405:
            response = render(
                InvalidRequest("Method not allowed for this URL.", code="method_not_allowed")
            )
            response.status_code = 405
            # RFC 9110: a 405 lists the methods the URL does support.
            allowed = getattr(error, "valid_methods", None)
            if allowed:
                response.headers["Allow"] = ", ".join(sorted(allowed))
            return response
        response = render(InvalidRequest(error.description or "Bad request."))
        response.status_code = error.code or 400
        return response

    @app.errorhandler(redis.RedisError)
    def _redis_down(error: redis.RedisError) -> Response:
        log.warning("request %s: Redis unavailable: %s", g.get("request_id"), error)
        return render(
            ServiceUnavailable(
                "The gateway's state store is unavailable; retry shortly.",
                headers={"Retry-After": "2"},
            )
        )

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        log.exception("request %s: unexpected error", g.get("request_id"))
        return render(
            ServerError(
                f"The gateway had an internal error. Request id: {g.get('request_id')}.",
                code="internal_error",
            )
        )
