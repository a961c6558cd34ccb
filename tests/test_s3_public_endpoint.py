"""``IMAGEGATE_S3_PUBLIC_ENDPOINT_URL``: clients get URLs for the bucket's public name, signed
for it, while the gateway stores through its internal endpoint.

The s3rver server checks every SigV4 signature, Host included; it is reached
internally as ``127.0.0.1`` and "publicly" as ``localhost`` (both loopback).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import requests

from shared.settings import Settings
from shared.storage.s3 import S3Storage
from tests.support.s3rver import ACCESS_KEY_ID, SECRET_ACCESS_KEY, S3rverServer

BUCKET = "imagegate-public"
PNG = b"\x89PNG\r\n\x1a\n" + b"public" * 100


@pytest.fixture(scope="module")
def s3rver_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    run_dir = tmp_path_factory.mktemp("s3rver-public")
    with S3rverServer(run_dir / "data", log_dir=run_dir, buckets=(BUCKET,)) as server:
        yield server.url


def storage_from_env(internal: str, public: str | None) -> S3Storage:
    env = {
        "IMAGEGATE_STORAGE": "s3",
        "IMAGEGATE_S3_BUCKET": BUCKET,
        "IMAGEGATE_S3_ENDPOINT_URL": internal,
        "IMAGEGATE_S3_REGION": "us-east-1",
        "IMAGEGATE_S3_PREFIX": f"images/{uuid.uuid4().hex[:8]}/",
        "IMAGEGATE_S3_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "IMAGEGATE_S3_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
    }
    if public is not None:
        env["IMAGEGATE_S3_PUBLIC_ENDPOINT_URL"] = public
    return S3Storage(Settings.from_env(env).storage)


def _named(url: str, host: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{host}:{parts.port}").geturl()


def test_urls_name_and_are_signed_for_the_public_endpoint(s3rver_url: str) -> None:
    internal, public = _named(s3rver_url, "127.0.0.1"), _named(s3rver_url, "localhost")
    storage = storage_from_env(internal, public)
    storage.put("2026-12-05/job/1/0.png", PNG, "image/png")

    url = storage.url("2026-12-05/job/1/0.png", 300)
    assert urlsplit(url).netloc == urlsplit(public).netloc
    response = requests.get(url, timeout=10)
    assert response.status_code == 200, response.text[:300]
    assert response.content == PNG
    # Signed for the public Host: the same query sent to the internal name is refused.
    assert requests.get(_named(url, "127.0.0.1"), timeout=10).status_code == 403


def test_without_a_public_endpoint_urls_use_the_endpoint_the_gateway_uses(s3rver_url: str) -> None:
    internal = _named(s3rver_url, "127.0.0.1")
    storage = storage_from_env(internal, None)
    storage.put("2026-12-05/job/1/0.png", PNG, "image/png")
    url = storage.url("2026-12-05/job/1/0.png", 300)
    assert urlsplit(url).netloc == urlsplit(internal).netloc
    assert requests.get(url, timeout=10).content == PNG
