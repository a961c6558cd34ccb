"""The whole stack with S3 storage: workers write to an S3-compatible server
(moto, started by the tests), the web side answers with presigned URLs or
reads the bytes back for base64.

It runs on its own Redis database, so its worker never takes jobs of the
local-storage stack used by the other tests.
"""

from __future__ import annotations

import base64
import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import requests
from openai import OpenAI
from PIL import Image

from tests.conftest import create_key, start_worker
from tests.support.processes import Process, RedisServer

BUCKET = f"imagegate-e2e-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def s3_env(
    stack_env: dict[str, str], redis_server: RedisServer, moto_endpoint: str
) -> dict[str, str]:
    boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    ).create_bucket(Bucket=BUCKET)
    return {
        **stack_env,
        "IMAGEGATE_REDIS_URL": redis_server.url.rsplit("/", 1)[0] + "/1",
        "IMAGEGATE_STORAGE": "s3",
        "IMAGEGATE_S3_BUCKET": BUCKET,
        "IMAGEGATE_S3_REGION": "us-east-1",
        "IMAGEGATE_S3_ENDPOINT_URL": moto_endpoint,
        "IMAGEGATE_S3_PREFIX": "generated/",
        "IMAGEGATE_S3_ACCESS_KEY_ID": "test",
        "IMAGEGATE_S3_SECRET_ACCESS_KEY": "test",
    }


@pytest.fixture(scope="module")
def s3_worker(run_dir: Path, s3_env: dict[str, str]) -> Iterator[Process]:
    proc = start_worker(run_dir, s3_env, "local", name="worker-local-s3")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def s3_client(start_gateway, s3_env: dict[str, str], s3_worker: Process) -> OpenAI:
    url = start_gateway("web-s3", **{k: v for k, v in s3_env.items() if k not in ("PORT",)})
    key = create_key(s3_env, "s3-tests")["key"]
    return OpenAI(api_key=key, base_url=f"{url}/v1", max_retries=0, timeout=60)


def test_presigned_urls_serve_the_stored_images(s3_client: OpenAI, moto_endpoint: str) -> None:
    r = s3_client.images.generate(model="local/testcard", prompt="s3 fox", size="512x512", n=2)
    assert len(r.data) == 2
    for item in r.data:
        assert item.url.startswith(f"{moto_endpoint}/{BUCKET}/generated/")
        assert "X-Amz-Signature=" in item.url and "X-Amz-Expires=3600" in item.url
        got = requests.get(item.url, timeout=10)
        assert got.status_code == 200
        assert got.headers["Content-Type"] == "image/png"
        assert Image.open(io.BytesIO(got.content)).size == (512, 512)


def test_b64_json_is_read_back_from_s3(s3_client: OpenAI, moto_endpoint: str) -> None:
    r = s3_client.images.generate(
        model="local/testcard", prompt="s3 b64", size="256x128", response_format="b64_json"
    )
    assert Image.open(io.BytesIO(base64.b64decode(r.data[0].b64_json))).size == (256, 128)
    listed = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    ).list_objects_v2(Bucket=BUCKET, Prefix="generated/")
    assert listed["KeyCount"] >= 1
