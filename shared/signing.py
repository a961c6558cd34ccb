"""The URL-signing secret shared by every web and worker process."""

from __future__ import annotations

import dataclasses
import secrets

import redis

from shared.settings import Settings
from shared.storage import ImageStorage, build_storage

_SECRET_KEY = "ig:signing-secret"


def signing_secret(settings: Settings, client: redis.Redis) -> str:
    """``IMAGEGATE_SIGNING_SECRET``, or one random secret made on first start and kept in Redis."""
    if settings.signing_secret:
        return settings.signing_secret
    client.set(_SECRET_KEY, secrets.token_urlsafe(32), nx=True)
    return str(client.get(_SECRET_KEY))


def storage_for(settings: Settings, client: redis.Redis) -> ImageStorage:
    """The configured storage, able to sign URLs (local) or presign them (S3)."""
    secret = signing_secret(settings, client).encode()
    return build_storage(dataclasses.replace(settings.storage, signing_secret=secret))
