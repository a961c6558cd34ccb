"""What every simulator shares: its control endpoints (ours, not the upstream's),
reading a JSON body, and the request-log entry of a request.

``GET /_sim/health``; ``GET|POST /_sim/config`` (POST merges the JSON into the
fault-injection knobs of :class:`simulators.state.SimConfig`); ``POST /_sim/reset``
(start-up config back, request log cleared, plus whatever the provider forgets
in ``on_reset``, e.g. its tasks); ``GET|DELETE /_sim/requests`` (the request log).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, jsonify, request

from simulators.state import SimConfig, SimState


def register_control(
    app: Flask,
    state: SimState,
    initial_config: SimConfig,
    provider: str,
    *,
    on_reset: Callable[[], None] | None = None,
) -> None:
    def bad(message: str) -> Response:
        response = jsonify(
            {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "code": "invalid_config",
                }
            }
        )
        response.status_code = 400
        return response

    _trickle_responses(app, state)

    @app.get("/_sim/health")
    def sim_health() -> Response:
        return jsonify({"ok": True, "provider": provider})

    @app.get("/_sim/config")
    def sim_get_config() -> Response:
        return jsonify(state.config.to_dict())

    @app.post("/_sim/config")
    def sim_post_config() -> Response:
        changes = request.get_json(force=True, silent=True)
        if not isinstance(changes, dict):
            return bad("Expected a JSON object with config fields.")
        try:
            return jsonify(state.update_config(changes).to_dict())
        except ValueError as exc:
            return bad(str(exc))

    @app.post("/_sim/reset")
    def sim_reset() -> Response:
        state.update_config(initial_config.to_dict())
        cleared = state.clear_requests()
        if on_reset is not None:
            on_reset()
        return jsonify({"ok": True, "cleared": cleared, "config": state.config.to_dict()})

    @app.get("/_sim/requests")
    def sim_get_requests() -> Response:
        return jsonify(state.requests())

    @app.delete("/_sim/requests")
    def sim_delete_requests() -> Response:
        return jsonify({"ok": True, "cleared": state.clear_requests()})


def _trickle_responses(app: Flask, state: SimState) -> None:
    """The ``trickle`` knob: upstream bodies dribble out (control endpoints never do)."""
    inner = app.wsgi_app

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        delay = state.config.trickle
        body = inner(environ, start_response)
        if delay <= 0 or str(environ.get("PATH_INFO", "")).startswith("/_sim/"):
            return body
        return _dribble(body, delay)

    app.wsgi_app = wsgi  # type: ignore[method-assign]


def _dribble(body: Any, delay: float, piece: int = 16) -> Any:
    try:
        for chunk in body:
            for i in range(0, len(chunk), piece):
                yield chunk[i : i + piece]
                time.sleep(delay)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()


def parse_json_body() -> tuple[Any, str | None]:
    """(parsed JSON or None, the raw text when it was not valid JSON; "" when empty)."""
    raw = request.get_data(cache=True)
    if not raw:
        return None, ""
    try:
        return json.loads(raw), None
    except (ValueError, UnicodeDecodeError):
        return None, raw[:2000].decode("utf-8", "replace")


def request_entry(
    request_id: str,
    *,
    auth_header: str = "Authorization",
    present_as: str = "auth_present",
    **fields: Any,
) -> dict[str, Any]:
    """The log entry of the current request, for ``SimState.record_request``.

    The credential header is left out of ``headers``; only whether it was sent
    is kept (under ``present_as``). ``fields`` add provider-specific details.
    """
    return {
        "id": request_id,
        "time": time.time(),
        "method": request.method,
        "path": request.path,
        "query": request.query_string.decode("latin-1"),
        "headers": {k: v for k, v in request.headers.items() if k.lower() != auth_header.lower()},
        present_as: auth_header in request.headers,
        **fields,
        "status": None,
    }
