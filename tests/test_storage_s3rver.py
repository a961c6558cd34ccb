"""S3Storage's presigned URLs against an S3 server that checks them (s3rver).

moto serves any presigned URL, so ``tests/test_storage.py`` can only xfail
these checks. s3rver (the ``@20minutes/s3rver`` fork, see
``tests/support/s3rver.py``) computes the SigV4 signature of every request and
refuses expired query-string auth, like S3. Every refusal test first fetches
the untampered URL successfully, so a 403 can only come from the tampering.

s3rver does not enforce bucket ACLs (anonymous GETs are served), so "objects
are not public" stays tested against moto only.
"""

from __future__ import annotations

import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
import requests

from shared.errors import NotFound
from shared.storage import S3Storage, StorageConfig
from tests.support.s3rver import ACCESS_KEY_ID, SECRET_ACCESS_KEY, S3rverServer

BUCKET = "imagegate-test"
REGION = "us-east-1"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
OTHER_PNG = b"\x89PNG\r\n\x1a\n" + b"other image" * 64


@pytest.fixture(scope="module")
def s3rver_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    run_dir = tmp_path_factory.mktemp("s3rver")
    with S3rverServer(run_dir / "data", log_dir=run_dir, buckets=(BUCKET,)) as server:
        yield server.url


def make_storage(endpoint: str, *, secret: str = SECRET_ACCESS_KEY, prefix: str) -> S3Storage:
    return S3Storage(
        StorageConfig(
            backend="s3",
            s3_bucket=BUCKET,
            s3_endpoint_url=endpoint,
            s3_region=REGION,
            s3_prefix=prefix,
            s3_access_key_id=ACCESS_KEY_ID,
            s3_secret_access_key=secret,
            s3_max_attempts=1,
        )
    )


@pytest.fixture
def prefix() -> str:
    return f"images/{uuid.uuid4().hex[:12]}/"


@pytest.fixture
def storage(s3rver_url: str, prefix: str) -> S3Storage:
    """S3Storage on the s3rver bucket, with a prefix of its own for each test."""
    return make_storage(s3rver_url, prefix=prefix)


def with_query(url: str, **changes: str) -> str:
    """``url`` with some query parameters replaced, the others kept in order."""
    parts = urlsplit(url)
    query = [(name, changes.pop(name, value)) for name, value in parse_qsl(parts.query)]
    assert not changes, f"URL has no parameter(s) {sorted(changes)}"
    return urlunsplit(parts._replace(query=urlencode(query)))


def query_param(url: str, name: str) -> str:
    return dict(parse_qsl(urlsplit(url).query))[name]


def flip_hex(text: str) -> str:
    """Every hex digit replaced by another one: same length, no character kept."""
    return text.translate(str.maketrans("0123456789abcdef", "123456789abcdef0"))


def s3_error(response: requests.Response) -> tuple[str, str]:
    """(Code, Message) of an S3 XML error body."""
    root = ET.fromstring(response.content)
    return root.findtext("Code") or "", root.findtext("Message") or ""


def assert_served(url: str, data: bytes) -> None:
    response = requests.get(url, timeout=10)
    assert response.status_code == 200, response.text[:500]
    assert response.content == data


def assert_refused(url: str, code: str, message: str | None = None) -> requests.Response:
    response = requests.get(url, timeout=10)
    assert response.status_code == 403, (response.status_code, response.content[:300])
    assert s3_error(response)[0] == code, response.text[:500]
    if message is not None:
        assert s3_error(response)[1] == message
    return response


def test_presigned_url_serves_the_object(storage: S3Storage) -> None:
    storage.put("2026/11/21/job_a/0.png", PNG, "image/png")
    url = storage.url("2026/11/21/job_a/0.png", 60)
    assert query_param(url, "X-Amz-Expires") == "60"

    response = requests.get(url, timeout=10)
    assert response.status_code == 200, response.text[:500]
    assert response.content == PNG
    assert response.headers["Content-Type"] == "image/png"


def test_expired_url_is_refused(storage: S3Storage) -> None:
    storage.put("job_b/0.png", PNG, "image/png")
    # X-Amz-Date has whole seconds: sign early in a second, so the URL still has
    # most of its one second left when it is fetched right away.
    time.sleep(1.05 - time.time() % 1)
    url = storage.url("job_b/0.png", 1)
    assert_served(url, PNG)

    time.sleep(2.1)
    assert_refused(url, "AccessDenied", "Request has expired")
    # Reviving it by raising X-Amz-Expires breaks the signature instead.
    assert_refused(with_query(url, **{"X-Amz-Expires": "3600"}), "SignatureDoesNotMatch")


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(
            lambda url: with_query(
                url, **{"X-Amz-Signature": flip_hex(query_param(url, "X-Amz-Signature"))}
            ),
            id="forged-signature",
        ),
        pytest.param(
            lambda url: with_query(url, **{"X-Amz-Expires": "604800"}), id="expires-raised"
        ),
        pytest.param(
            lambda url: with_query(url, **{"X-Amz-Date": "20991231T000000Z"}), id="date-moved"
        ),
    ],
)
def test_tampered_url_is_refused(storage: S3Storage, tamper) -> None:
    storage.put("job_c/0.png", PNG, "image/png")
    url = storage.url("job_c/0.png", 600)
    assert_served(url, PNG)

    tampered = tamper(url)
    assert tampered != url
    assert_refused(tampered, "SignatureDoesNotMatch")


def test_signature_does_not_open_another_key(storage: S3Storage, prefix: str) -> None:
    storage.put("job_d/0.png", PNG, "image/png")
    storage.put("job_d/1.png", OTHER_PNG, "image/png")
    url = storage.url("job_d/0.png", 600)
    assert_served(url, PNG)
    assert_served(storage.url("job_d/1.png", 600), OTHER_PNG)

    path = f"/{BUCKET}/{prefix}job_d/0.png"
    assert urlsplit(url).path == path
    other = url.replace(path, f"/{BUCKET}/{prefix}job_d/1.png", 1)
    response = assert_refused(other, "SignatureDoesNotMatch")
    assert OTHER_PNG not in response.content


def test_url_signed_with_wrong_secret_is_refused(
    s3rver_url: str, storage: S3Storage, prefix: str
) -> None:
    storage.put("job_e/0.png", PNG, "image/png")
    assert_served(storage.url("job_e/0.png", 600), PNG)

    forger = make_storage(s3rver_url, secret="not-the-secret", prefix=prefix)
    assert_refused(forger.url("job_e/0.png", 600), "SignatureDoesNotMatch")


def test_get_of_missing_key_is_not_found(storage: S3Storage) -> None:
    storage.put("job_f/0.png", PNG, "image/png")
    assert storage.get("job_f/0.png") == PNG
    with pytest.raises(NotFound, match="job_f/1.png"):
        storage.get("job_f/1.png")
