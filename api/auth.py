"""Bearer-key authentication for the /v1 routes."""

from __future__ import annotations

from flask import g, request

from api.services import services
from shared import logs
from shared.keys import ApiKey


def current_key() -> ApiKey:
    """Authenticate the request once and remember the key on ``g``."""
    key = g.get("api_key")
    if key is None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        plaintext = token.strip() if scheme.lower() == "bearer" else ""
        key = services().keys.authenticate(plaintext)
        g.api_key = key
        logs.bind(key_id=key.id)  # undone with the request's own binding (api/app.py)
    return key
