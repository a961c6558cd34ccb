"""Image storage in an S3-compatible bucket (AWS S3, MinIO, Cloudflare R2, moto).

Objects are stored at ``config.s3_prefix + key`` with their ``ContentType``;
clients receive SigV4 presigned ``GetObject`` URLs, signed for
``s3_public_endpoint_url`` when clients reach the bucket by another name than
the gateway does. One boto3 client is made per instance (boto3 clients are
thread-safe), plus one that only presigns when there is a public endpoint.

boto errors are translated here: a missing object becomes
:class:`shared.errors.NotFound`, everything else (unreachable endpoint, missing
bucket, bad credentials, throttling) becomes
:class:`shared.errors.ServiceUnavailable`. Messages name the S3 operation and
the error code only, never credentials; the original error stays chained.
"""

from __future__ import annotations

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from shared.errors import GatewayError, NotFound, ServiceUnavailable
from shared.storage.base import StorageConfig, validate_key, validate_ttl

# SigV4 presigned URLs cannot live longer than seven days.
MAX_PRESIGN_SECONDS = 7 * 24 * 3600

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})


class S3Storage:
    """:class:`shared.storage.base.ImageStorage` on an S3-compatible bucket."""

    def __init__(self, config: StorageConfig) -> None:
        if not config.s3_bucket:
            raise ValueError("S3 image storage needs a bucket name (s3_bucket)")
        self.config = config
        self.bucket = config.s3_bucket
        session = boto3.session.Session(
            aws_access_key_id=config.s3_access_key_id,
            aws_secret_access_key=config.s3_secret_access_key,
            region_name=config.s3_region,
        )
        client_config = Config(
            signature_version="s3v4",
            s3={"addressing_style": config.s3_addressing_style},
            retries={"mode": "standard", "max_attempts": config.s3_max_attempts},
            connect_timeout=config.s3_connect_timeout,
            read_timeout=config.s3_read_timeout,
        )
        self._client = session.client(
            "s3", endpoint_url=config.s3_endpoint_url, config=client_config
        )
        # A SigV4 signature covers the Host: URLs for clients are signed for the
        # endpoint they will use. Presigning is local; this client never connects.
        self._presigner = (
            session.client("s3", endpoint_url=config.s3_public_endpoint_url, config=client_config)
            if config.s3_public_endpoint_url
            else self._client
        )

    def object_key(self, key: str) -> str:
        """The bucket key that holds ``key``."""
        return self.config.s3_prefix + validate_key(key)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        object_key = self.object_key(key)
        try:
            self._client.put_object(
                Bucket=self.bucket, Key=object_key, Body=bytes(data), ContentType=content_type
            )
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, "PutObject", key) from exc

    def get(self, key: str) -> bytes:
        object_key = self.object_key(key)
        try:
            body = self._client.get_object(Bucket=self.bucket, Key=object_key)["Body"]
            try:
                return body.read()
            finally:
                body.close()
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, "GetObject", key) from exc

    def url(self, key: str, ttl_seconds: int, *, base_url: str | None = None) -> str:
        # base_url only matters for local storage; presigned URLs name the bucket.
        object_key = self.object_key(key)
        validate_ttl(ttl_seconds, maximum=MAX_PRESIGN_SECONDS)
        try:
            return self._presigner.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": object_key},
                ExpiresIn=ttl_seconds,
            )
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, "presign GetObject", key) from exc

    def delete(self, key: str) -> None:
        object_key = self.object_key(key)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=object_key)
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, "DeleteObject", key) from exc


def _translate(exc: ClientError | BotoCoreError, operation: str, key: str) -> GatewayError:
    """The gateway error for a boto error; the message carries no credentials."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "unknown error")
        if code in _NOT_FOUND_CODES:
            return NotFound(f"image {key!r} not found")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        detail = f"{code}, HTTP {status}" if status else code
    else:
        detail = type(exc).__name__
    return ServiceUnavailable(f"image storage is unavailable: S3 {operation} failed ({detail})")
