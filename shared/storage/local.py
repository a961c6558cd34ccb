"""Image storage on the local file system, served through signed URLs.

Files live under ``config.local_dir`` at the path named by their key. Writes
are atomic: the bytes go to a temporary file in the target directory, are
fsynced, and then ``os.replace`` puts them in place, so a reader sees either
the old file or the complete new one, never a partial write.

URLs point at the web app's file route::

    {base}/v1/files/{key}?expires={unix_ts}&signature={hex}

Disk full: a write that fails with ``ENOSPC`` (no space), ``EDQUOT`` (quota) or
``EFBIG`` (a file-size limit) raises :class:`shared.errors.ServiceUnavailable`
with code :data:`shared.errors.STORAGE_FULL`, so the job fails with a clear 503
and is refunded; :meth:`LocalStorage.health` says whether the directory can take
images now (free space above ``local_min_free_bytes`` and a probe file written),
for a readiness check.

Deleting a key or a job's folder also removes the directories it leaves empty
(up to the root), so retention does not leave a tree of empty day folders.

where ``signature = HMAC-SHA256(signing_secret, f"{key}\\n{expires}")`` in
lowercase hex and ``expires`` is an absolute unix timestamp. The route calls
:meth:`LocalStorage.verify` with the query parameters and serves the file
with :func:`content_type_for`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from shared.errors import STORAGE_FULL, NotFound, PermissionDenied, ServerError, ServiceUnavailable
from shared.storage.base import StorageConfig, StorageHealth, validate_key, validate_ttl

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
# Day folders (YYYY, MM, DD) and job folders, as expired_folders() walks them.
_DAY_PARTS = (re.compile(r"[0-9]{4}"), re.compile(r"[0-9]{2}"), re.compile(r"[0-9]{2}"))
_JOB_NAME = re.compile(r"[A-Za-z0-9_-]+")


def _sorted_names(folder: Path, pattern: re.Pattern[str]) -> list[str]:
    """The sub-folders of ``folder`` whose names match ``pattern``, sorted; [] if none."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(e.name for e in entries if pattern.fullmatch(e.name) and e.is_dir())


# A write failing with one of these means "no room", not "broken": 503 storage_full.
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _write_error(exc: OSError, key: str) -> ServerError | ServiceUnavailable:
    """The gateway error for a failed write of ``key``."""
    if exc.errno in _NO_ROOM:
        return ServiceUnavailable(
            "The gateway's image storage is full, so the image could not be stored; "
            "the job was not charged. Try again later.",
            code=STORAGE_FULL,
        )
    return ServerError(f"could not store image {key!r} on local disk")


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
            fd, tmp_name = self._temp_file(path.parent)
        except OSError as exc:
            raise _write_error(exc, key) from exc
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
                raise _write_error(exc, key) from exc
            raise

    @staticmethod
    def _temp_file(directory: Path) -> tuple[int, str]:
        """A new temporary file in ``directory`` (made if missing). Twice: a deletion may
        remove the folder as empty between the ``mkdir`` and the file's creation."""
        for last in (False, True):
            directory.mkdir(parents=True, exist_ok=True)
            try:
                return tempfile.mkstemp(dir=directory, prefix=_TEMP_PREFIX, suffix=".part")
            except FileNotFoundError:
                if last:
                    raise
        raise AssertionError("unreachable")

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
        self._prune(path.parent)

    def delete_prefix(self, prefix: str) -> int:
        folder = self.path_for(prefix)
        if not folder.is_dir():
            return 0
        count = sum(1 for p in folder.rglob("*") if not p.is_dir())
        try:
            shutil.rmtree(folder)
        except FileNotFoundError:
            pass  # deleted meanwhile (another janitor whose lease ran out)
        except OSError as exc:
            raise ServerError(f"could not delete {prefix!r} from local disk") from exc
        self._prune(folder.parent)
        return count

    def expired_folders(self, under: str, before_day: str, limit: int) -> list[str]:
        base = self.path_for(under) if under else self.root
        found: list[str] = []

        def walk(folder: Path, parts: tuple[str, ...]) -> None:
            for name in _sorted_names(folder, _DAY_PARTS[len(parts)]):
                day = (*parts, name)
                partial = "/".join(day)
                if len(day) < 3:  # a year or a month: go in unless it is after the day's
                    if partial > before_day[: len(partial)]:
                        return
                    walk(folder / name, day)
                else:
                    if partial >= before_day:
                        return
                    for job in _sorted_names(folder / name, _JOB_NAME):
                        found.append("/".join(p for p in (under, partial, job) if p))
                        if len(found) >= limit:
                            return
                if len(found) >= limit:
                    return

        walk(base, ())
        return found[:limit]

    def _prune(self, folder: Path) -> None:
        """Remove ``folder`` and its parents while they are empty, never :attr:`root`."""
        while folder != self.root and self.root in folder.parents:
            try:
                folder.rmdir()
            except OSError:  # not empty (or gone): the folders above are not empty either
                return
            folder = folder.parent

    def health(self) -> StorageHealth:
        """Writable when the file system has ``local_min_free_bytes`` free and a probe file
        can be written, synced and removed in :attr:`root`."""
        minimum = self.config.local_min_free_bytes
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            stat = os.statvfs(self.root)
        except OSError as exc:
            return StorageHealth(False, f"image storage {self.root} is unusable: {exc.strerror}")
        free = stat.f_bavail * stat.f_frsize
        if free < minimum:
            return StorageHealth(
                False,
                f"image storage {self.root} is full: {free} bytes free, below the "
                f"{minimum} bytes of IMAGEGATE_STORAGE_MIN_FREE_BYTES",
                free,
            )
        try:
            fd, name = tempfile.mkstemp(dir=self.root, prefix=_TEMP_PREFIX, suffix=".probe")
            try:
                os.write(fd, b"imagegate storage probe\n")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(name)
        except OSError as exc:
            return StorageHealth(
                False, f"image storage {self.root} is not writable: {exc.strerror}", free
            )
        return StorageHealth(True, "", free)
