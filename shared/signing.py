"""The URL-signing secret shared by every web and worker process."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis

    from shared.settings import Settings

_SECRET_KEY = "ig:signing-secret"


def signing_secret(settings: Settings, client: redis.Redis) -> str:
    """``IMAGEGATE_SIGNING_SECRET``, or one random secret made on first start and kept in Redis."""
    if settings.signing_secret:
        return settings.signing_secret
    client.set(_SECRET_KEY, secrets.token_urlsafe(32), nx=True)
    return str(client.get(_SECRET_KEY))
