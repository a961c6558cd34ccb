"""Image storage on the local file system, served through signed URLs.

Files live under ``config.local_dir`` at the path named by their key. Writes
are atomic: the bytes go to a temporary file in the target directory, are
fsynced, and then ``os.replace`` puts them in place, so a reader sees either
the old file or the complete new one, never a partial write.

URLs point at the web app's file route::

    {base}/v1/files/{key}?expires={unix_ts}&signature={hex}

where ``signature = HMAC-SHA256(signing_secret, f"{key}\\n{expires}")`` in
lowercase hex and ``expires`` is an absolute unix timestamp. The route calls
:meth:`LocalStorage.verify` with the query parameters and serves the file
with :func:`content_type_for`.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import tempfile
import time
from pathlib import Path

from shared.errors import NotFound, PermissionDenied, ServerError
from shared.storage.base import StorageConfig, validate_key, validate_ttl

FILES_ROUTE = "/v1/files/"

_CONTENT_TYPES: dict[str, str] = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
}
_DEFAULT_CONTENT_TYPE = "application/octet-stream"

# Canonical decimal only: "0" + expires is the same number, so with leading zeros
# allowed one signature would open many different URLs.
_EXPIRES_RE = re.compile(r"[1-9][0-9]{0,11}")
_SIGNATURE_RE = re.compile(r"[0-9a-f]{64}")
_TEMP_PREFIX = ".tmp-"


def content_type_for(key: str) -> str:
    """The MIME type for ``key`` by its extension (png, jpeg, webp)."""
    return _CONTENT_TYPES.get(os.path.splitext(key)[1].lower(), _DEFAULT_CONTENT_TYPE)


def sign(secret: bytes, key: str, expires: int) -> str:
    """The hex HMAC-SHA256 of ``f"{key}\\n{expires}"`` under ``secret``."""
    message = f"{key}\n{expires}".encode("ascii")
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def verify_signature(
    secret: bytes, key: str, expires: str, signature: str, now: float | None = None
) -> None:
    """Check a local file URL's parameters; return ``None`` if they are good.

    Raises :class:`shared.errors.PermissionDenied` with ``code="invalid_signature"``
    when a parameter is malformed or the signature does not match (any change
    to key, expires or signature), and with ``code="url_expired"`` when a
    correctly signed URL is past its ``expires``.
    """
    if not secret or not isinstance(expires, str) or not isinstance(signature, str):
        raise _invalid()
    try:
        validate_key(key)
    except ValueError:
        raise _invalid() from None
    if not _EXPIRES_RE.fullmatch(expires) or not _SIGNATURE_RE.fullmatch(signature):
        raise _invalid()
    if not hmac.compare_digest(sign(secret, key, int(expires)), signature):
        raise _invalid()
    if (time.time() if now is None else now) > int(expires):
        raise PermissionDenied("This file URL has expired.", code="url_expired")


def _invalid() -> PermissionDenied:
    return PermissionDenied("This file URL is not valid.", code="invalid_signature")


class LocalStorage:
    """:class:`shared.storage.base.ImageStorage` on a local directory."""

    def __init__(self, config: StorageConfig) -> None:
        self.config = config
        self.root = Path(os.path.abspath(config.local_dir))

    def path_for(self, key: str) -> Path:
        """The file that holds ``key`` (always inside :attr:`root`)."""
        return self.root.joinpath(*validate_key(key).split("/"))

    def put(self, key: str, data: bytes, content_type: str) -> None:
        # The content type is not stored: the file route derives it from the
        # key's extension with content_type_for().
        path = self.path_for(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=_TEMP_PREFIX, suffix=".part")
        except OSError as exc:
            raise ServerError(f"could not store image {key!r} on local disk") from exc
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp_name, 0o644)
            os.replace(tmp_name, path)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            if isinstance(exc, OSError):
                raise ServerError(f"could not store image {key!r} on local disk") from exc
            raise

    def get(self, key: str) -> bytes:
        path = self.path_for(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise NotFound(f"image {key!r} not found") from exc
        except OSError as exc:
            raise ServerError(f"could not read image {key!r} from local disk") from exc

    def url(self, key: str, ttl_seconds: int, *, base_url: str | None = None) -> str:
        validate_key(key)
        validate_ttl(ttl_seconds)
        if not self.config.signing_secret:
            raise ServerError("local image storage has no signing secret configured")
        base = (base_url or self.config.public_base_url).rstrip("/")
        if not base:
            raise ServerError("local image storage has no public base URL to build links with")
        expires = int(time.time()) + ttl_seconds
        signature = sign(self.config.signing_secret, key, expires)
        return f"{base}{FILES_ROUTE}{key}?expires={expires}&signature={signature}"

    def verify(self, key: str, expires: str, signature: str, now: float | None = None) -> None:
        """Check a URL's ``key``/``expires``/``signature``; see :func:`verify_signature`."""
        verify_signature(self.config.signing_secret, key, expires, signature, now)

    def delete(self, key: str) -> None:
        path = self.path_for(key)
        try:
            path.unlink()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return
        except OSError as exc:
            raise ServerError(f"could not delete image {key!r} from local disk") from exc
