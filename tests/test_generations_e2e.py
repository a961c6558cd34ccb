"""The official openai client against gunicorn + Celery workers + Redis + simulator."""

from __future__ import annotations

import base64
import io
import os
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import redis
import requests
from openai import OpenAI
from PIL import Image

from shared.jobs import JobStore
from tests.support.sim import sent_with, tagged


def _png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def test_testcard_urls_serve_two_different_pngs_of_the_asked_size(client: OpenAI) -> None:
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


def test_testcard_b64_json_is_a_png_of_the_default_size_and_no_url(client: OpenAI) -> None:
    r = client.images.generate(model="local/testcard", prompt="x", response_format="b64_json")
    data = base64.b64decode(r.data[0].b64_json)
    assert _png_size(data) == (1024, 1024)
    assert r.data[0].url is None


def _received(sim: str, prompt: str) -> list[dict]:
    """The bodies the simulator got for this test's prompt (and no other test's)."""
    return [r["json"] for r in sent_with(sim, prompt) if r["path"].endswith("/images/generations")]


def test_openai_family_dalle3_fixed_size_is_mapped_and_revised_prompt_kept(
    client: OpenAI, sim: str
) -> None:
    prompt = tagged("a lighthouse")
    r = client.images.generate(model="dall-e-3", prompt=prompt, size="1000x600")
    sent = _received(sim, prompt)
    assert len(sent) == 1
    assert sent[0]["size"] == "1792x1024"
    assert sent[0]["model"] == "dall-e-3"
    assert sent[0]["response_format"] == "b64_json"
    assert r.size == "1792x1024"
    assert r.data[0].revised_prompt and r.data[0].revised_prompt.startswith(prompt)
    image = requests.get(r.data[0].url, timeout=10)
    assert _png_size(image.content) == (1792, 1024)


def test_gpt_image_n3_sends_n_and_quality_and_no_response_format_upstream(
    client: OpenAI, sim: str
) -> None:
    prompt = tagged("three cats")
    r = client.images.generate(
        model="gpt-image-1", prompt=prompt, n=3, quality="low", response_format="b64_json"
    )
    assert len(r.data) == 3
    assert {_png_size(base64.b64decode(d.b64_json)) for d in r.data} == {(1024, 1024)}
    [sent] = _received(sim, prompt)
    assert sent["n"] == 3 and sent["quality"] == "low"
    assert "response_format" not in sent  # GPT image models reject it upstream


def test_upstream_url_results_are_downloaded_and_served_by_the_gateway(
    client: OpenAI, sim: str
) -> None:
    prompt = tagged("city")
    r = client.images.generate(model="test/area-band", prompt=prompt, size="1024x1024")
    assert not r.data[0].url.startswith(sim)  # our own URL, not the upstream's
    assert [sent["response_format"] for sent in _received(sim, prompt)] == ["url"]
    got = requests.get(r.data[0].url, timeout=10)
    assert got.status_code == 200 and _png_size(got.content) == (1920, 1920)


def test_local_urls_expire_and_cannot_be_tampered_with(
    start_gateway, workers, api_key: str
) -> None:
    ttl = 5  # seconds; the gateway truncates the signing time, so a URL lives ttl - 1 s or more
    url = start_gateway("web-ttl", IMAGEGATE_URL_TTL_SECONDS=str(ttl))
    client = OpenAI(api_key=api_key, base_url=f"{url}/v1", max_retries=0)
    asked = time.time()
    r = client.images.generate(model="local/testcard", prompt="short-lived", size="64x64", n=2)
    first, second = r.data[0].url, r.data[1].url
    # The expiry the gateway signed, read from the URL rather than assumed.
    expires = int(parse_qs(urlsplit(first).query)["expires"][0])
    assert int(asked) + ttl <= expires <= time.time() + ttl
    assert requests.get(first, timeout=10).status_code == 200

    def refused_as(url: str) -> str:
        answer = requests.get(url, timeout=10)
        assert answer.status_code == 403
        return answer.json()["error"]["code"]

    tampered = first[:-4] + ("0000" if not first.endswith("0000") else "1111")
    assert refused_as(tampered) == "invalid_signature"
    # The signature of one image does not open another.
    other_path = second.split("?")[0] + "?" + first.split("?")[1]
    assert refused_as(other_path) == "invalid_signature"
    # Extending the expiry breaks the signature.
    extended = first.replace(f"expires={expires}", f"expires={expires + 3600}")
    assert extended != first and refused_as(extended) == "invalid_signature"

    time.sleep(max(0.0, expires + 1 - time.time()))  # past the signed expiry, by our clock
    assert refused_as(first) == "url_expired"


def test_models_list_in_openai_format(client: OpenAI) -> None:
    models = {m.id: m for m in client.models.list().data}
    assert {"local/testcard", "dall-e-3", "bytedance/seedream-4.0"} <= set(models)
    m = models["zhipu/z-image-turbo"]
    assert m.object == "model"
    assert m.model_extra["price_per_image"] == "0.005"
    assert m.model_extra["size_rule"] == {"kind": "max_side", "min": 256, "max": 1536}
    assert client.models.retrieve("dall-e-3").model_extra["max_n"] == 1


def test_an_openai_compatible_upstream_added_by_configuration_alone(
    client: OpenAI, sim: str
) -> None:
    prompt = tagged("configured")
    r = client.images.generate(
        model="compat/any-size", prompt=prompt, size="640x480", extra_body={"seed": 7}
    )
    [call] = sent_with(sim, prompt)
    sent = call["json"]
    assert sent["model"] == "compat-any" and sent["size"] == "640x480" and sent["seed"] == 7
    assert r.size == "640x480"
    assert call["auth_present"] is True


# -- inline reference images (data: URLs) -------------------------------------------------


def _noise_png(side: int) -> bytes:
    """A PNG of random pixels: it does not compress, so it is about 3 * side**2 bytes."""
    image = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _record_bytes(redis_url: str, job_id: str) -> int:
    """What the job's record holds in Redis, keys and values."""
    fields = redis.Redis.from_url(redis_url).hgetall(JobStore.record_key(job_id))
    assert fields, job_id
    return sum(len(name) + len(value) for name, value in fields.items())


def _uploads_of(stack_env: dict[str, str], job_id: str) -> list[Path]:
    return list(Path(stack_env["IMAGEGATE_STORAGE_DIR"]).glob(f"uploads/*/*/*/{job_id}/*"))


def _gone(paths_of: Callable[[], list[Path]], within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while paths_of():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_a_data_url_reference_image_reaches_the_upstream_and_stays_out_of_redis(
    client: OpenAI, simulators: dict[str, str], redis_server, stack_env: dict[str, str]
) -> None:
    raw = _noise_png(256)  # ~200 KB
    prompt = tagged("the same scene at dusk")
    response = client.images.with_raw_response.generate(
        model="black-forest-labs/flux.1-kontext-max",
        prompt=prompt,
        extra_body={"image": "data:image/png;base64," + base64.b64encode(raw).decode()},
    )
    assert response.parse().data[0].url
    # Kontext takes the reference as raw base64; the simulator decodes and loads it.
    # (Every submission of this prompt: the shared simulator may answer a first one with
    # 429 when earlier tests left tasks running, and the worker then retries.)
    sent = [call["json"] for call in sent_with(simulators["bfl"], prompt)]
    assert sent and all(base64.b64decode(s["input_image"]) == raw for s in sent)
    job_id = response.headers["x-job-id"]
    assert _record_bytes(redis_server.url, job_id) < 8 * 1024  # no image bytes in Redis
    # The worker deletes the stored upload once the job has ended.
    assert _gone(lambda: _uploads_of(stack_env, job_id))


def test_a_data_url_reference_image_is_kept_once_for_a_virtual_models_routes(
    client: OpenAI, redis_server, stack_env: dict[str, str]
) -> None:
    # "image" has two candidates that take a reference image (flux-2-pro, flux-dev); both
    # routes were stored with the whole data URL, as was the job's own request.
    raw = _noise_png(128)  # ~50 KB: under Replicate's 256 KB data URL limit
    response = client.images.with_raw_response.generate(
        model="image",
        prompt=tagged("a lighthouse, same framing"),
        extra_body={"image": "data:image/png;base64," + base64.b64encode(raw).decode()},
    )
    result = response.parse()
    assert result.data[0].url
    assert result.model_extra["served_by"] in ("black-forest-labs/flux-2-pro", "flux-dev")
    assert _record_bytes(redis_server.url, response.headers["x-job-id"]) < 8 * 1024
    assert _gone(lambda: _uploads_of(stack_env, response.headers["x-job-id"]))
