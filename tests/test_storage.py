"""Image storage: the shared contract, local signed URLs, and S3 against a real moto server.

The S3 tests start ``moto_server`` as a subprocess and talk to it over HTTP
through boto3 and ``requests``. moto 5.x does not check query-string (presigned)
signatures or ``X-Amz-Expires`` at all: it serves any URL that merely contains
``Signature=``. The tests therefore check what moto can verify (bytes, content
type, objects not public, the URL's signed parameters); expiry and tampering
are checked against an S3 server that enforces them in
``tests/test_storage_s3rver.py``.
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

import boto3
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import BotoCoreError
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import NotFound, PermissionDenied, ServerError, ServiceUnavailable
from shared.storage import (
    BACKENDS,
    ImageStorage,
    LocalStorage,
    S3Storage,
    StorageConfig,
    build_storage,
    content_type_for,
    validate_key,
)
from shared.storage.local import sign
from tests.support.processes import free_port

KEY = "2026/11/21/job_0123abcd-ef/0.png"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
SECRET = b"local-signing-secret"
REGION = "us-east-1"

BAD_KEYS = [
    "",
    "../x",
    "a/../b.png",
    "..",
    "a..png",
    "/abs/path.png",
    "a b.png",
    "a\\b.png",
    "a\x00b.png",
    "ä.png",
    "a/b.png?x=1",
    "a//b.png",
    "a/./b.png",
    "./a.png",
    "a/",
    "x" * 257,
]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def local_config(tmp_path: Path) -> StorageConfig:
    return StorageConfig(
        backend="local",
        local_dir=str(tmp_path / "images"),
        signing_secret=SECRET,
        public_base_url="http://files.test:8080",
    )


@pytest.fixture
def local(local_config: StorageConfig) -> LocalStorage:
    return LocalStorage(local_config)


@pytest.fixture(scope="session")
def raw_s3(moto_endpoint: str):
    """A plain boto3 client, to set up buckets and look behind S3Storage."""
    return boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name=REGION,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


@pytest.fixture(scope="session")
def s3_bucket(raw_s3) -> str:
    bucket = f"imagegate-{uuid.uuid4().hex[:12]}"
    raw_s3.create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture
def s3_config(moto_endpoint: str, s3_bucket: str) -> StorageConfig:
    """One bucket for the session; each test gets its own prefix inside it."""
    return StorageConfig(
        backend="s3",
        s3_bucket=s3_bucket,
        s3_region=REGION,
        s3_endpoint_url=moto_endpoint,
        s3_prefix=f"images/{uuid.uuid4().hex[:12]}/",
        s3_access_key_id="test",
        s3_secret_access_key="test",
    )


@pytest.fixture
def s3(s3_config: StorageConfig) -> S3Storage:
    return S3Storage(s3_config)


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest) -> ImageStorage:
    """Each implementation, built through the factory, for the shared contract."""
    config = request.getfixturevalue(f"{request.param}_config")
    return build_storage(config)


# --------------------------------------------------------------------------- contract


def test_factory_dispatches_through_registry(local_config, s3_config) -> None:
    assert set(BACKENDS) == {"local", "s3"}
    assert type(build_storage(local_config)) is LocalStorage
    assert type(build_storage(s3_config)) is S3Storage


def test_factory_rejects_unknown_backend() -> None:
    with pytest.raises(ValueError, match="unknown storage backend 'gcs'"):
        build_storage(StorageConfig(backend="gcs"))


def test_s3_needs_a_bucket() -> None:
    with pytest.raises(ValueError, match="bucket"):
        build_storage(StorageConfig(backend="s3", s3_bucket=""))


def test_config_repr_hides_secrets() -> None:
    config = StorageConfig(signing_secret=b"hmac-key-123", s3_secret_access_key="aws-secret-456")
    assert "hmac-key-123" not in repr(config)
    assert "aws-secret-456" not in repr(config)


def test_contract_put_get_roundtrip(storage: ImageStorage) -> None:
    assert isinstance(storage, ImageStorage)
    storage.put(KEY, PNG, "image/png")
    assert storage.get(KEY) == PNG


def test_contract_put_replaces(storage: ImageStorage) -> None:
    storage.put(KEY, b"old", "image/png")
    storage.put(KEY, PNG, "image/png")
    assert storage.get(KEY) == PNG


def test_contract_missing_key_is_not_found(storage: ImageStorage) -> None:
    storage.put(KEY, PNG, "image/png")
    with pytest.raises(NotFound) as info:
        storage.get("2026/11/21/other/0.png")
    assert info.value.status == 404


def test_contract_delete(storage: ImageStorage) -> None:
    storage.put(KEY, PNG, "image/png")
    storage.delete(KEY)
    with pytest.raises(NotFound):
        storage.get(KEY)
    storage.delete(KEY)  # deleting again is not an error


def test_contract_rejects_bad_keys(storage: ImageStorage) -> None:
    accepted = []
    for key in BAD_KEYS:
        for name, method, args in (
            ("put", storage.put, (key, PNG, "image/png")),
            ("get", storage.get, (key,)),
            ("url", storage.url, (key, 60)),
            ("delete", storage.delete, (key,)),
        ):
            try:
                method(*args)
            except ValueError:
                continue
            except Exception as exc:  # a translated storage error means the key got through
                accepted.append((name, key, type(exc).__name__))
            else:
                accepted.append((name, key, "no error"))
    assert accepted == []


# --------------------------------------------------------------------------- keys


@pytest.mark.parametrize("key", BAD_KEYS)
def test_validate_key_rejects(key: str) -> None:
    with pytest.raises(ValueError, match="storage key"):
        validate_key(key)


@pytest.mark.parametrize("key", [KEY, "a.png", "A-b_c.9/x.webp", "x" * 256])
def test_validate_key_accepts(key: str) -> None:
    assert validate_key(key) == key


@settings(max_examples=300, deadline=None)
@given(key=st.text(alphabet="./a_-\\~% \x00", max_size=24))
def test_no_key_escapes_the_local_directory(tmp_path_factory, key: str) -> None:
    root = tmp_path_factory.getbasetemp() / "escape"
    storage = LocalStorage(StorageConfig(local_dir=str(root)))
    try:
        path = storage.path_for(key)
    except ValueError:
        return
    resolved = path.resolve()
    assert resolved != root.resolve()
    assert resolved.is_relative_to(root.resolve())


# --------------------------------------------------------------------------- local


def test_local_writes_under_local_dir(local: LocalStorage, local_config: StorageConfig) -> None:
    local.put(KEY, PNG, "image/png")
    assert (Path(local_config.local_dir) / KEY).read_bytes() == PNG


def test_local_write_leaves_no_temp_files(local: LocalStorage, local_config) -> None:
    local.put(KEY, b"first", "image/png")
    local.put(KEY, PNG, "image/png")
    root = Path(local_config.local_dir)
    files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    assert files == [KEY]


def test_local_write_replaces_atomically(local: LocalStorage, monkeypatch) -> None:
    """The new bytes are complete in a sibling temp file before one os.replace swaps them in."""
    local.put(KEY, b"old bytes", "image/png")
    target = local.path_for(KEY)
    real_replace = os.replace
    calls: list[tuple[Path, Path]] = []

    def watching_replace(src, dst, *args, **kwargs):
        src, dst = Path(src), Path(dst)
        calls.append((src, dst))
        assert dst == target
        assert src.parent == dst.parent  # same directory → same file system → atomic
        assert dst.read_bytes() == b"old bytes"  # readers still see the old file
        assert src.read_bytes() == PNG  # and the new one is already complete
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", watching_replace)
    local.put(KEY, PNG, "image/png")
    assert len(calls) == 1
    assert target.read_bytes() == PNG


def test_local_failed_write_cleans_up_and_raises_server_error(local: LocalStorage) -> None:
    target = local.path_for(KEY)
    target.mkdir(parents=True)  # a directory where the file should go: os.replace fails
    with pytest.raises(ServerError) as info:
        local.put(KEY, PNG, "image/png")
    assert isinstance(info.value.__cause__, OSError)
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]


def test_local_get_of_a_directory_is_not_found(local: LocalStorage) -> None:
    local.put(KEY, PNG, "image/png")
    with pytest.raises(NotFound):
        local.get("2026/11/21")


def test_local_url_shape(local: LocalStorage) -> None:
    before = int(time.time())
    url = local.url(KEY, 3600)
    after = int(time.time())
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == (
        "http",
        "files.test:8080",
        f"/v1/files/{KEY}",
    )
    query = parse_qs(parts.query, strict_parsing=True)
    assert set(query) == {"expires", "signature"}
    assert before + 3600 <= int(query["expires"][0]) <= after + 3600
    assert len(query["signature"][0]) == 64


def test_local_url_base_url_overrides_config(local: LocalStorage) -> None:
    url = local.url(KEY, 60, base_url="http://10.0.0.5:9000/")
    assert url.startswith(f"http://10.0.0.5:9000/v1/files/{KEY}?expires=")


def test_local_url_needs_secret_and_base(tmp_path: Path) -> None:
    no_secret = LocalStorage(StorageConfig(local_dir=str(tmp_path), public_base_url="http://x"))
    with pytest.raises(ServerError, match="signing secret"):
        no_secret.url(KEY, 60)
    no_base = LocalStorage(StorageConfig(local_dir=str(tmp_path), signing_secret=SECRET))
    with pytest.raises(ServerError, match="base URL"):
        no_base.url(KEY, 60)
    assert no_base.url(KEY, 60, base_url="http://host/").startswith("http://host/v1/files/")


@pytest.mark.parametrize("ttl", [0, -5, 1.5, True])
def test_local_url_rejects_bad_ttl(local: LocalStorage, ttl) -> None:
    with pytest.raises(ValueError, match="lifetime"):
        local.url(KEY, ttl)


def url_params(url: str) -> tuple[str, str, str]:
    """(key, expires, signature) as the file route would read them."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    return parts.path.removeprefix("/v1/files/"), query["expires"], query["signature"]


def test_local_verify_accepts_fresh_url(local: LocalStorage) -> None:
    key, expires, signature = url_params(local.url(KEY, 3600))
    assert key == KEY
    assert local.verify(key, expires, signature) is None
    assert local.verify(key, expires, signature, now=int(expires)) is None  # last valid second


def assert_denied(code: str, call) -> None:
    with pytest.raises(PermissionDenied) as info:
        call()
    assert info.value.code == code
    assert info.value.status == 403


def test_local_verify_rejects_tampered_key(local: LocalStorage) -> None:
    key, expires, signature = url_params(local.url(KEY, 3600))
    other = key.replace("0.png", "1.png")
    assert_denied("invalid_signature", lambda: local.verify(other, expires, signature))


def test_local_verify_rejects_tampered_signature(local: LocalStorage) -> None:
    key, expires, signature = url_params(local.url(KEY, 3600))
    flipped = ("1" if signature[0] == "0" else "0") + signature[1:]
    assert_denied("invalid_signature", lambda: local.verify(key, expires, flipped))


def test_local_verify_rejects_extended_expires(local: LocalStorage) -> None:
    key, expires, signature = url_params(local.url(KEY, 60))
    later = str(int(expires) + 3600)
    assert_denied("invalid_signature", lambda: local.verify(key, later, signature))


def test_local_verify_rejects_expired_url(local: LocalStorage) -> None:
    key, expires, signature = url_params(local.url(KEY, 60))
    assert_denied(
        "url_expired", lambda: local.verify(key, expires, signature, now=int(expires) + 1)
    )


def test_local_verify_rejects_other_secret(local: LocalStorage, local_config) -> None:
    key, expires, signature = url_params(local.url(KEY, 3600))
    other = LocalStorage(StorageConfig(local_dir=local_config.local_dir, signing_secret=b"other"))
    assert_denied("invalid_signature", lambda: other.verify(key, expires, signature))
    unset = LocalStorage(StorageConfig(local_dir=local_config.local_dir))
    assert_denied("invalid_signature", lambda: unset.verify(key, expires, signature))
    # Without a configured secret nothing verifies, not even an empty-key HMAC.
    forged = sign(b"", key, int(expires))
    assert_denied("invalid_signature", lambda: unset.verify(key, expires, forged))


@pytest.mark.parametrize(
    "field, value",
    [
        ("key", "../0.png"),
        ("key", ""),
        ("expires", ""),
        ("expires", "12.5"),
        ("expires", "-1"),
        ("expires", "1e9"),
        ("signature", ""),
        ("signature", "zz"),
        ("signature", "é" * 64),
    ],
)
def test_local_verify_rejects_malformed_params(local: LocalStorage, field: str, value: str) -> None:
    params = dict(
        zip(("key", "expires", "signature"), url_params(local.url(KEY, 3600)), strict=True)
    )
    params[field] = value
    assert_denied("invalid_signature", lambda: local.verify(**params))


def test_local_verify_uppercase_signature_is_rejected(local: LocalStorage) -> None:
    key, expires, signature = url_params(local.url(KEY, 3600))
    assert signature != signature.upper()  # hex digest has letters with overwhelming odds
    assert_denied("invalid_signature", lambda: local.verify(key, expires, signature.upper()))


@pytest.mark.parametrize(
    "key, expected",
    [
        ("a/0.png", "image/png"),
        ("a/0.PNG", "image/png"),
        ("a/0.jpg", "image/jpeg"),
        ("a/0.jpeg", "image/jpeg"),
        ("a/0.webp", "image/webp"),
        ("a/0.bin", "application/octet-stream"),
        ("a/png", "application/octet-stream"),
    ],
)
def test_content_type_for(key: str, expected: str) -> None:
    assert content_type_for(key) == expected


# --------------------------------------------------------------------------- s3


def test_s3_put_stores_content_type_under_prefix(s3: S3Storage, s3_config, raw_s3) -> None:
    s3.put(KEY, PNG, "image/png")
    head = raw_s3.head_object(Bucket=s3_config.s3_bucket, Key=s3_config.s3_prefix + KEY)
    assert head["ContentType"] == "image/png"
    assert head["ContentLength"] == len(PNG)


def test_s3_presigned_url_serves_bytes(s3: S3Storage) -> None:
    s3.put(KEY, PNG, "image/png")
    response = requests.get(s3.url(KEY, 3600), timeout=5)
    assert response.status_code == 200
    assert response.content == PNG
    assert response.headers["Content-Type"] == "image/png"


def test_s3_presigned_url_is_signed_for_the_requested_lifetime(
    s3: S3Storage, s3_config: StorageConfig, moto_endpoint: str
) -> None:
    """moto ignores expiry, so check the signed parameters a real S3 enforces."""
    url = s3.url(KEY, 1, base_url="http://ignored.example")
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == moto_endpoint
    # path-style addressing: /bucket/prefix/key
    assert parts.path == f"/{s3_config.s3_bucket}/{s3_config.s3_prefix}{KEY}"
    query = dict(parse_qsl(parts.query, strict_parsing=True))
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"  # SigV4
    assert query["X-Amz-Expires"] == "1"
    assert query["X-Amz-SignedHeaders"] == "host"
    signed_at = datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - signed_at).total_seconds()) < 60
    assert query["X-Amz-Credential"] == f"test/{signed_at:%Y%m%d}/{REGION}/s3/aws4_request"
    assert len(query["X-Amz-Signature"]) == 64
    assert dict(parse_qsl(urlsplit(s3.url(KEY, 3600)).query))["X-Amz-Expires"] == "3600"


def test_s3_url_rejects_lifetimes_s3_cannot_sign(s3: S3Storage) -> None:
    with pytest.raises(ValueError, match="at most 604800"):
        s3.url(KEY, 7 * 24 * 3600 + 1)
    with pytest.raises(ValueError, match="positive"):
        s3.url(KEY, 0)


def _with_query(url: str, **changes: str | None) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    for name, value in changes.items():
        name = name.replace("_", "-")
        if value is None:
            query.pop(name, None)
        else:
            query[name] = value
    return urlunsplit(parts._replace(query=urlencode(query)))


def test_s3_objects_are_not_public(s3: S3Storage) -> None:
    """Without its signature the URL is refused: objects are stored private."""
    s3.put(KEY, PNG, "image/png")
    url = s3.url(KEY, 3600)
    unsigned = _with_query(url, X_Amz_Signature=None)
    assert "Signature=" not in unsigned
    assert requests.get(unsigned, timeout=5).status_code == 403
    bare = urlunsplit(urlsplit(url)._replace(query=""))
    assert requests.get(bare, timeout=5).status_code == 403


def test_s3_missing_bucket_is_unavailable_not_not_found(s3_config: StorageConfig) -> None:
    storage = S3Storage(dataclasses.replace(s3_config, s3_bucket="no-such-bucket-x"))
    with pytest.raises(ServiceUnavailable, match="GetObject failed \\(NoSuchBucket"):
        storage.get(KEY)
    with pytest.raises(ServiceUnavailable, match="PutObject failed \\(NoSuchBucket"):
        storage.put(KEY, PNG, "image/png")


def test_s3_unreachable_endpoint_is_unavailable_quickly() -> None:
    key_id, secret = "AKIAIMAGEGATETESTKEY", "imagegate-super-secret-value"
    storage = S3Storage(
        StorageConfig(
            backend="s3",
            s3_bucket="images",
            s3_region=REGION,
            s3_endpoint_url=f"http://127.0.0.1:{free_port()}",  # nothing listens there
            s3_access_key_id=key_id,
            s3_secret_access_key=secret,
            s3_connect_timeout=1,
            s3_read_timeout=1,
            s3_max_attempts=1,
        )
    )
    for call in (lambda: storage.get(KEY), lambda: storage.put(KEY, PNG, "image/png")):
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable) as info:
            call()
        assert time.monotonic() - started < 3
        assert isinstance(info.value.__cause__, BotoCoreError)
        assert info.value.status == 503
        rendered = f"{info.value} {info.value.envelope()}"
        assert key_id not in rendered
        assert secret not in rendered
