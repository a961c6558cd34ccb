"""The image-storage interface, its configuration and key rules.

Workers ``put`` generated images under keys such as
``"2026/11/21/<job_id>/0.png"``; the web process hands clients expiring
``url``\\ s or reads the bytes back with ``get`` to answer base64. Every
implementation validates keys with :func:`validate_key` before touching a
file system or a bucket, and raises only the gateway's own errors
(:mod:`shared.errors`) for storage failures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

MAX_KEY_LENGTH = 256
DEFAULT_URL_TTL_SECONDS = 3600

_KEY_CHARS = re.compile(r"[A-Za-z0-9._/-]+")


@dataclass(frozen=True)
class StorageConfig:
    """Storage settings; secrets are left out of ``repr`` so they never reach logs."""

    backend: str = "local"  # "local" | "s3"
    local_dir: str = "var/images"
    # HMAC key for local URLs; url() refuses to sign with an empty one.
    signing_secret: bytes = field(default=b"", repr=False)
    # e.g. "http://127.0.0.1:8080"; local URLs are
    # f"{public_base_url}/v1/files/{key}?expires=..&signature=.."
    public_base_url: str = ""
    s3_bucket: str = ""
    s3_region: str | None = None
    s3_endpoint_url: str | None = None  # MinIO / R2 / moto
    # Where clients reach the bucket, when not where the gateway does (a private MinIO
    # behind a public name): presigned URLs are signed for this endpoint instead.
    s3_public_endpoint_url: str | None = None
    s3_prefix: str = "images/"
    s3_access_key_id: str | None = None  # None → boto3's default credential chain
    s3_secret_access_key: str | None = field(default=None, repr=False)
    s3_addressing_style: str = "path"  # path-style works for MinIO/moto and custom endpoints
    s3_connect_timeout: float = 5.0
    s3_read_timeout: float = 30.0
    s3_max_attempts: int = 3
    # Local storage counts as not writable (StorageHealth.ok false) below this many free bytes.
    local_min_free_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class StorageHealth:
    """Whether storage can take new images now (:func:`shared.storage.storage_health`).

    ``ok`` false with ``reason`` saying why (disk full, read-only, bucket unreachable);
    ``free_bytes`` is what the local file system has left (None for S3).
    """

    ok: bool
    reason: str = ""
    free_bytes: int | None = None


@runtime_checkable
class ImageStorage(Protocol):
    """Where generated images live. Keys are checked by :func:`validate_key`."""

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` under ``key``, replacing any previous object."""
        ...

    def get(self, key: str) -> bytes:
        """Return the bytes under ``key``; :class:`shared.errors.NotFound` if absent."""
        ...

    def url(self, key: str, ttl_seconds: int, *, base_url: str | None = None) -> str:
        """An URL that serves ``key`` for ``ttl_seconds``.

        ``base_url`` overrides ``config.public_base_url`` for local storage (the
        web app passes ``request.host_url`` when none is configured); S3 ignores it.
        """
        ...

    def delete(self, key: str) -> None:
        """Remove ``key``; deleting a missing key is not an error."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under ``prefix + "/"`` (a job's folder); how many went.

        ``prefix`` follows the key rules; an empty or missing folder is not an error."""
        ...

    def expired_folders(self, under: str, before_day: str, limit: int) -> list[str]:
        """At most ``limit`` job folders ``{under/}YYYY/MM/DD/{job}`` of days before
        ``before_day`` (``YYYY/MM/DD``), oldest first: the retention's backstop for folders
        its index lost. [] where the backend expires them by itself (S3's lifecycle rule)."""
        ...

    def health(self) -> StorageHealth:
        """Whether new images can be stored now (see :class:`StorageHealth`); never raises."""
        ...


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative object key, else raise ``ValueError``.

    Allowed: ``[A-Za-z0-9._/-]``, at most :data:`MAX_KEY_LENGTH` characters, no
    ``..`` anywhere, no leading or trailing ``/``, no empty or ``.`` segments.
    Such a key can never name anything outside the storage root.
    """
    if not isinstance(key, str) or not key:
        raise ValueError("storage key must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"storage key is longer than {MAX_KEY_LENGTH} characters")
    if not _KEY_CHARS.fullmatch(key):
        raise ValueError(
            f"storage key {key!r} may only contain letters, digits, '.', '_', '/', '-'"
        )
    if ".." in key:
        raise ValueError(f"storage key {key!r} must not contain '..'")
    if key.startswith("/"):
        raise ValueError(f"storage key {key!r} must be relative (no leading '/')")
    if any(segment in ("", ".") for segment in key.split("/")):
        raise ValueError(f"storage key {key!r} has an empty or '.' path segment")
    return key


def validate_ttl(ttl_seconds: int, *, maximum: int | None = None) -> int:
    """Return ``ttl_seconds`` if it is a positive int (≤ ``maximum``), else ``ValueError``."""
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or ttl_seconds <= 0:
        raise ValueError(f"URL lifetime must be a positive number of seconds, got {ttl_seconds!r}")
    if maximum is not None and ttl_seconds > maximum:
        raise ValueError(f"URL lifetime must be at most {maximum} seconds, got {ttl_seconds}")
    return ttl_seconds
