"""Image storage: one :class:`ImageStorage` interface, local and S3 implementations.

``build_storage(config)`` picks the implementation named by ``config.backend``
from :data:`BACKENDS`; ``storage_for(settings, redis)`` is the configured one
with the deployment's URL-signing secret (:mod:`shared.signing`), as every web
and worker process builds it.

``storage_health(storage)`` is what a readiness check asks: can new images be
stored now (local: free space and a probe write; S3: the bucket answers)?
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shared.signing import signing_secret
from shared.storage.base import (
    DEFAULT_URL_TTL_SECONDS,
    MAX_KEY_LENGTH,
    ImageStorage,
    StorageConfig,
    StorageHealth,
    validate_key,
)
from shared.storage.local import LocalStorage, content_type_for, verify_signature

if TYPE_CHECKING:
    import redis

    from shared.settings import Settings
    from shared.storage.s3 import S3Storage


def _s3(config: StorageConfig) -> ImageStorage:
    # Imported when chosen: boto3 costs memory and start-up time in every process
    # that never uses it (each family's worker, the web processes).
    from shared.storage.s3 import S3Storage

    return S3Storage(config)


def __getattr__(name: str) -> Any:
    if name == "S3Storage":
        from shared.storage.s3 import S3Storage

        return S3Storage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


BACKENDS: dict[str, Callable[[StorageConfig], ImageStorage]] = {
    "local": LocalStorage,
    "s3": _s3,
}


def build_storage(config: StorageConfig) -> ImageStorage:
    """The storage implementation for ``config.backend``."""
    try:
        factory = BACKENDS[config.backend]
    except KeyError:
        known = ", ".join(sorted(BACKENDS))
        raise ValueError(
            f"unknown storage backend {config.backend!r}; expected one of: {known}"
        ) from None
    return factory(config)


def storage_health(storage: ImageStorage) -> StorageHealth:
    """Whether ``storage`` can take new images now, for a readiness check; never raises.

    Not ok when the local disk is full (below ``IMAGEGATE_STORAGE_MIN_FREE_BYTES`` free,
    or a probe file cannot be written) or the S3 bucket does not answer; ``reason``
    says which. Jobs that meet a full disk fail with 503 ``storage_full`` and a refund.
    """
    try:
        return storage.health()
    except Exception as exc:  # noqa: BLE001 - a probe reports, it does not fail
        logging.getLogger(__name__).warning("storage health check failed: %s", exc)
        return StorageHealth(False, f"storage health check failed: {type(exc).__name__}")


def storage_for(settings: Settings, client: redis.Redis) -> ImageStorage:
    """The configured storage, able to sign URLs (local) or presign them (S3)."""
    secret = signing_secret(settings, client).encode()
    return build_storage(dataclasses.replace(settings.storage, signing_secret=secret))


__all__ = [
    "BACKENDS",
    "DEFAULT_URL_TTL_SECONDS",
    "MAX_KEY_LENGTH",
    "ImageStorage",
    "LocalStorage",
    "S3Storage",
    "StorageConfig",
    "StorageHealth",
    "build_storage",
    "storage_health",
    "storage_for",
    "content_type_for",
    "validate_key",
    "verify_signature",
]
