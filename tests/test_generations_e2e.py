"""The official openai client against gunicorn + Celery workers + Redis + simulator."""

from __future__ import annotations

import base64
import io

import requests
from openai import OpenAI
from PIL import Image


def _png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def test_testcard_url_n2(client: OpenAI) -> None:
    r = client.images.generate(model="local/testcard", prompt="a red fox", size="512x512", n=2)
    assert len(r.data) == 2
    urls = [d.url for d in r.data]
    assert all(urls) and urls[0] != urls[1]
    bodies = []
    for url in urls:
        got = requests.get(url, timeout=10)
        assert got.status_code == 200
        assert got.headers["Content-Type"] == "image/png"
        assert _png_size(got.content) == (512, 512)
        bodies.append(got.content)
    assert bodies[0] != bodies[1]


def test_testcard_b64(client: OpenAI) -> None:
    r = client.images.generate(model="local/testcard", prompt="x", response_format="b64_json")
    data = base64.b64decode(r.data[0].b64_json)
    assert _png_size(data) == (1024, 1024)
    assert r.data[0].url is None
