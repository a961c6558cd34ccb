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

Retention: :meth:`S3Storage.delete_prefix` deletes a job's folder (listed, then
deleted 1000 keys per request) for the gateway's janitor (:mod:`shared.retention`);
a bucket lifecycle rule (:meth:`S3Storage.install_lifecycle`, checked by
:meth:`S3Storage.lifecycle_problems`; ``imagegate storage lifecycle``) expires
the same objects on S3's side, a backstop that needs no gateway process.
"""

from __future__ import annotations

import math
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from shared.errors import GatewayError, NotFound, ServiceUnavailable
from shared.storage.base import StorageConfig, StorageHealth, validate_key, validate_ttl

# SigV4 presigned URLs cannot live longer than seven days.
MAX_PRESIGN_SECONDS = 7 * 24 * 3600

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
# DeleteObjects takes at most 1000 keys per request.
_DELETE_BATCH = 1000
LIFECYCLE_RULE_ID = "imagegate-image-retention"
"""The ``ID`` of the gateway's rule among the bucket's lifecycle rules."""
_DAY = 86400


def lifecycle_days(retention_seconds: int) -> int:
    """S3 expires objects in whole days (at the next midnight UTC after them): the
    retention rounded up, at least one day."""
    return max(1, math.ceil(retention_seconds / _DAY))


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

    def delete_prefix(self, prefix: str) -> int:
        folder = self.object_key(prefix) + "/"
        count = 0
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=folder, PaginationConfig={"PageSize": _DELETE_BATCH}
            )
            for page in pages:
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if not keys:
                    continue
                answer = self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True}
                )
                failed = answer.get("Errors") or []
                if failed:
                    code = failed[0].get("Code", "unknown error")
                    raise ServiceUnavailable(
                        f"image storage is unavailable: S3 DeleteObjects failed for "
                        f"{len(failed)} of {len(keys)} objects ({code})"
                    )
                count += len(keys)
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, "DeleteObjects", prefix) from exc
        return count

    def expired_folders(self, under: str, before_day: str, limit: int) -> list[str]:
        """[]: the bucket's lifecycle rule (:meth:`install_lifecycle`) is the backstop for
        objects the retention index lost; listing a bucket by day would cost requests
        for what S3 does by itself."""
        return []

    def health(self) -> StorageHealth:
        """Ok when the bucket answers HeadBucket with these credentials (S3 has no "full")."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            error = _translate(exc, "HeadBucket", "")
            missing = isinstance(error, NotFound)
            return StorageHealth(
                False, f"bucket {self.bucket} does not exist" if missing else error.message
            )
        return StorageHealth(True)

    # -- the bucket's lifecycle rule ------------------------------------------------------

    def lifecycle_rule(self, retention_seconds: int) -> dict[str, Any]:
        """The rule that expires this gateway's objects (``s3_prefix``) after the retention."""
        return {
            "ID": LIFECYCLE_RULE_ID,
            "Filter": {"Prefix": self.config.s3_prefix},
            "Status": "Enabled",
            "Expiration": {"Days": lifecycle_days(retention_seconds)},
        }

    def _lifecycle_rules(self) -> list[dict[str, Any]]:
        try:
            answer = self._client.get_bucket_lifecycle_configuration(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchLifecycleConfiguration":
                return []
            raise _translate(exc, "GetBucketLifecycleConfiguration", "") from exc
        except BotoCoreError as exc:
            raise _translate(exc, "GetBucketLifecycleConfiguration", "") from exc
        return list(answer.get("Rules", []))

    def install_lifecycle(self, retention_seconds: int) -> dict[str, Any]:
        """Put the gateway's rule into the bucket's lifecycle configuration, keeping the
        bucket's other rules (PutBucketLifecycleConfiguration replaces them all); the rule."""
        rule = self.lifecycle_rule(retention_seconds)
        others = [r for r in self._lifecycle_rules() if r.get("ID") != LIFECYCLE_RULE_ID]
        try:
            self._client.put_bucket_lifecycle_configuration(
                Bucket=self.bucket, LifecycleConfiguration={"Rules": [*others, rule]}
            )
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, "PutBucketLifecycleConfiguration", "") from exc
        return rule

    def lifecycle_problems(self, retention_seconds: int) -> list[str]:
        """What is wrong with the bucket's rule for this retention; empty when it is right."""
        want = self.lifecycle_rule(retention_seconds)
        rules = [r for r in self._lifecycle_rules() if r.get("ID") == LIFECYCLE_RULE_ID]
        if not rules:
            return [f"bucket {self.bucket} has no lifecycle rule {LIFECYCLE_RULE_ID!r}"]
        rule, problems = rules[0], []
        if rule.get("Status") != "Enabled":
            problems.append(f"rule {LIFECYCLE_RULE_ID!r} is {rule.get('Status')}, not Enabled")
        prefix = (rule.get("Filter") or {}).get("Prefix", rule.get("Prefix"))
        if prefix != self.config.s3_prefix:
            problems.append(
                f"rule {LIFECYCLE_RULE_ID!r} covers prefix {prefix!r}, not "
                f"{self.config.s3_prefix!r} (IMAGEGATE_S3_PREFIX)"
            )
        days = (rule.get("Expiration") or {}).get("Days")
        if days != want["Expiration"]["Days"]:
            problems.append(
                f"rule {LIFECYCLE_RULE_ID!r} expires objects after {days} days, not "
                f"{want['Expiration']['Days']} (IMAGEGATE_IMAGE_RETENTION_SECONDS)"
            )
        return problems


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
