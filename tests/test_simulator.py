"""The OpenAI Images simulator, run as a real subprocess and driven over HTTP; and
what every simulator shares through ``simulators/base.py`` (named faults,
``fail_next``, request ids, the request log), checked in process."""

from __future__ import annotations

import base64
import importlib
import io
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests
from flask.testing import FlaskClient
from PIL import Image
from werkzeug.test import TestResponse

from tests.support.sim import fault, fault_header

REPO_ROOT = Path(__file__).resolve().parent.parent
API_KEY = "sim-key"
READY_PREFIX = "SIMULATOR READY "


def _start_simulator(*extra: str) -> tuple[subprocess.Popen[str], str]:
    """Start ``python -m simulators openai`` and wait for its READY line."""
    stderr = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators", "openai", "--port", "0", *extra],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=20)
    except queue.Empty:
        line = "<nothing within 20 s>"
    if not line.startswith(READY_PREFIX):
        proc.kill()
        proc.wait()
        stderr.seek(0)
        pytest.fail(f"simulator not ready, first line {line!r}; stderr:\n{stderr.read()}")
    return proc, line[len(READY_PREFIX) :].strip()


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.terminate()
    try:
        return proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


@pytest.fixture(scope="module")
def sim() -> Iterator[str]:
    proc, url = _start_simulator("--api-key", API_KEY, "--latency", "0.0", "--failure-rate", "0")
    yield url
    assert _stop(proc) == 0


@pytest.fixture(autouse=True)
def _reset(sim: str) -> None:
    r = requests.post(f"{sim}/_sim/reset", timeout=5)
    assert r.status_code == 200


@pytest.fixture
def client(sim: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=API_KEY, base_url=f"{sim}/v1", max_retries=0, timeout=20)


def _post(sim: str, body: dict, key: str | None = API_KEY) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return requests.post(f"{sim}/v1/images/generations", json=body, headers=headers, timeout=20)


def _configure(sim: str, **changes: object) -> dict:
    r = requests.post(f"{sim}/_sim/config", json=changes, timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def _decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


# -- lifecycle and headers --------------------------------------------------------


def test_health_and_common_headers(sim: str) -> None:
    r = requests.get(f"{sim}/_sim/health", timeout=5)
    assert r.status_code == 200
    assert r.json()["ok"] is True
    assert r.headers["x-request-id"].startswith("req_")
    for name in (
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    ):
        assert r.headers.get(name)


def test_request_ids_are_unique_and_exposed_to_sdk(client: openai.OpenAI) -> None:
    raw = client.images.with_raw_response.generate(model="dall-e-2", prompt="a cat", size="256x256")
    other = client.images.with_raw_response.generate(
        model="dall-e-2", prompt="a dog", size="256x256"
    )
    assert raw.request_id and raw.request_id.startswith("req_")
    assert raw.request_id != other.request_id


def test_sigint_exits_cleanly() -> None:
    proc, url = _start_simulator()
    assert requests.get(f"{url}/_sim/health", timeout=5).json() == {
        "ok": True,
        "provider": "openai",
    }
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 0
    assert proc.stdout.read() == ""  # nothing after the READY line


# -- dall-e ----------------------------------------------------------------------


def test_dalle2_url_results_are_served_pngs(sim: str, client: openai.OpenAI) -> None:
    resp = client.images.generate(model="dall-e-2", prompt="a red fox", n=2, size="256x256")
    assert isinstance(resp.created, int) and resp.created > 0
    assert len(resp.data) == 2
    blobs = []
    for item in resp.data:
        assert item.b64_json is None
        assert item.url and item.url.startswith(f"{sim}/files/")
        r = requests.get(item.url, timeout=5)
        assert r.status_code == 200
        assert r.headers["Content-Type"] == "image/png"
        image = Image.open(io.BytesIO(r.content))
        assert image.format == "PNG"
        assert image.size == (256, 256)
        blobs.append(image.convert("RGB").getpixel((0, 0)))
    assert blobs[0] != blobs[1]  # each index is a distinct image


def test_dalle2_b64_json(client: openai.OpenAI) -> None:
    resp = client.images.generate(
        model="dall-e-2", prompt="a fox", size="512x512", response_format="b64_json"
    )
    assert resp.data[0].url is None
    image = _decode(resp.data[0].b64_json)
    assert image.format == "PNG"
    assert image.size == (512, 512)
    assert resp.usage is None


def test_dalle3_revised_prompt_and_size(client: openai.OpenAI) -> None:
    resp = client.images.generate(
        model="dall-e-3",
        prompt="a lighthouse",
        size="1792x1024",
        quality="hd",
        style="natural",
        response_format="b64_json",
    )
    assert resp.data[0].revised_prompt.startswith("a lighthouse")
    assert resp.data[0].revised_prompt != "a lighthouse"
    assert _decode(resp.data[0].b64_json).size == (1792, 1024)


def test_dalle3_n2_is_rejected_with_param_n(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model="dall-e-3", prompt="two cats", n=2)
    err = info.value
    assert err.status_code == 400
    assert err.body["param"] == "n"
    assert err.body["type"] == "invalid_request_error"
    assert err.response.json()["error"]["param"] == "n"


def test_missing_file_is_404_json(sim: str) -> None:
    r = requests.get(f"{sim}/files/img_doesnotexist.png", timeout=5)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "file_not_found"


# -- gpt-image -------------------------------------------------------------------


def test_gpt_image_returns_b64_usage_and_size(client: openai.OpenAI) -> None:
    resp = client.images.generate(
        model="gpt-image-1", prompt="a watercolour boat", size="1536x1024", quality="low", n=2
    )
    assert len(resp.data) == 2
    for item in resp.data:
        assert item.url is None
        image = _decode(item.b64_json)
        assert image.format == "PNG"
        assert image.size == (1536, 1024)
    assert resp.size == "1536x1024"
    assert resp.quality == "low"
    assert resp.output_format == "png"
    assert resp.background == "opaque"
    usage = resp.usage
    assert usage is not None
    assert usage.input_tokens_details.text_tokens == usage.input_tokens > 0
    assert usage.output_tokens == 2 * 400
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


@pytest.mark.parametrize(
    ("model", "extra", "fmt", "mode"),
    [
        ("gpt-image-1-mini", {"output_format": "jpeg", "output_compression": 50}, "JPEG", "RGB"),
        ("gpt-image-1.5", {"output_format": "webp", "background": "transparent"}, "WEBP", "RGBA"),
    ],
)
def test_gpt_image_auto_size_and_formats(
    sim: str, model: str, extra: dict, fmt: str, mode: str
) -> None:
    r = _post(sim, {"model": model, "prompt": "a logo", "size": "auto", **extra})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["size"] == "1024x1024"
    image = _decode(body["data"][0]["b64_json"])
    assert image.format == fmt
    assert image.size == (1024, 1024)
    assert image.mode == mode


def test_gpt_image_rejects_response_format(sim: str) -> None:
    r = _post(sim, {"model": "gpt-image-1", "prompt": "x", "response_format": "url"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == "response_format"
    assert error["code"] == "unknown_parameter"
    assert error["message"] == "Unknown parameter: 'response_format'."


# -- compat-any (OpenAI-compatible third-party upstream) ---------------------------


def test_compat_arbitrary_size_is_honoured(sim: str) -> None:
    r = _post(
        sim,
        {
            "model": "compat-any",
            "prompt": "a wide banner",
            "size": "1536x640",
            "response_format": "b64_json",
            "n": 2,
            "quality": "hd",
            "seed": 42,
            "user": "u-1",
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"created", "data", "size"}
    assert body["size"] == "1536x640"
    assert len(body["data"]) == 2
    for item in body["data"]:
        assert set(item) == {"b64_json"}
        image = _decode(item["b64_json"])
        assert image.format == "PNG"
        assert image.size == (1536, 640)


def test_compat_url_default_and_default_size(sim: str, client: openai.OpenAI) -> None:
    resp = client.images.generate(model="compat-any", prompt="a square")
    assert resp.size == "1024x1024"
    url = resp.data[0].url
    assert url and url.startswith(f"{sim}/files/")
    r = requests.get(url, timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (1024, 1024)


def test_compat_large_size_is_fast(sim: str) -> None:
    started = time.monotonic()
    r = _post(sim, {"model": "compat-any", "prompt": "x", "size": "4096x4096"})
    assert r.status_code == 200, r.text
    assert r.json()["size"] == "4096x4096"
    assert time.monotonic() - started < 5


def test_compat_aspect_ratio_keeps_area_about_1m(sim: str) -> None:
    r = _post(
        sim,
        {
            "model": "compat-any",
            "prompt": "a landscape",
            "aspect_ratio": "16:9",
            "response_format": "b64_json",
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    width, height = _decode(body["data"][0]["b64_json"]).size
    assert body["size"] == f"{width}x{height}"
    assert width % 16 == 0 and height % 16 == 0
    assert width / height == pytest.approx(16 / 9, rel=0.02)
    assert width * height == pytest.approx(1024 * 1024, rel=0.03)


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        ({"size": "1024x1024", "aspect_ratio": "1:1"}, "aspect_ratio", "invalid_value"),
        ({"size": "0x5"}, "size", "invalid_value"),
        ({"size": "abc"}, "size", "invalid_value"),
        ({"size": "8208x1024"}, "size", "invalid_value"),
        ({"size": "15x1024"}, "size", "invalid_value"),
        ({"size": " 512x512"}, "size", "invalid_value"),
        ({"size": "+512x512"}, "size", "invalid_value"),
        ({"size": 512}, "size", "invalid_type"),
        ({"aspect_ratio": "16/9"}, "aspect_ratio", "invalid_value"),
        ({"aspect_ratio": "65:1"}, "aspect_ratio", "invalid_value"),
        ({"aspect_ratio": "0:1"}, "aspect_ratio", "invalid_value"),
        ({"response_format": "svg"}, "response_format", "invalid_value"),
        ({"quality": "ultra"}, "quality", "invalid_value"),
        ({"n": 11}, "n", "integer_above_max_value"),
        ({"seed": "7"}, "seed", "invalid_type"),
        ({"style": "vivid"}, "style", "unknown_parameter"),
        ({"prompt": "x" * 32001}, "prompt", "string_above_max_length"),
    ],
)
def test_compat_invalid_requests(sim: str, extra: dict, param: str, code: str) -> None:
    r = _post(sim, {"model": "compat-any", "prompt": "x", **extra})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] == code


def test_compat_fields_stay_unknown_for_openai_models(sim: str) -> None:
    for body in (
        {"model": "gpt-image-1", "prompt": "x", "aspect_ratio": "1:1"},
        {"model": "dall-e-3", "prompt": "x", "aspect_ratio": "1:1"},
        {"prompt": "x", "aspect_ratio": "1:1"},
    ):
        r = _post(sim, body)
        assert r.status_code == 400, body
        assert r.json()["error"]["code"] == "unknown_parameter"
        assert r.json()["error"]["param"] == "aspect_ratio"


def test_compat_request_log_records_aspect_ratio(sim: str) -> None:
    requests.delete(f"{sim}/_sim/requests", timeout=5)
    r = _post(sim, {"model": "compat-any", "prompt": "logged", "aspect_ratio": "9:16"})
    assert r.status_code == 200, r.text
    log = requests.get(f"{sim}/_sim/requests", timeout=5).json()
    assert len(log) == 1
    assert log[0]["json"]["aspect_ratio"] == "9:16"
    assert log[0]["json"]["model"] == "compat-any"
    assert "size" not in log[0]["json"]
    assert log[0]["status"] == 200


# -- validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"model": "dall-e-2", "prompt": "x", "size": "1792x1024"}, "size", "invalid_value"),
        ({"model": "dall-e-2", "prompt": "x" * 1001}, "prompt", "string_above_max_length"),
        ({"model": "dall-e-3", "prompt": "x" * 4001}, "prompt", "string_above_max_length"),
        ({"model": "dall-e-2", "prompt": "x", "n": 11}, "n", "integer_above_max_value"),
        ({"model": "gpt-image-1", "prompt": "x", "n": 0}, "n", "integer_below_min_value"),
        ({"model": "gpt-image-1", "prompt": "x", "n": "2"}, "n", "invalid_type"),
        ({"model": "dall-e-2", "prompt": "x", "quality": "hd"}, "quality", "invalid_value"),
        ({"model": "dall-e-3", "prompt": "x", "style": "noir"}, "style", "invalid_value"),
        ({"model": "dall-e-2", "prompt": "x", "style": "vivid"}, "style", "unknown_parameter"),
        ({"model": "dall-e-3", "prompt": "x", "background": "auto"}, "background", None),
        ({"model": "gpt-image-1", "prompt": "x", "quality": "hd"}, "quality", "invalid_value"),
        ({"model": "gpt-image-1", "prompt": "x", "size": "256x256"}, "size", "invalid_value"),
        (
            {
                "model": "gpt-image-1",
                "prompt": "x",
                "output_format": "jpeg",
                "background": "transparent",
            },
            "background",
            "invalid_value",
        ),
        (
            {"model": "gpt-image-1", "prompt": "x", "output_compression": 101},
            "output_compression",
            None,
        ),
        ({"model": "gpt-image-1", "prompt": "x", "moderation": "off"}, "moderation", None),
        ({"model": "gpt-image-1"}, "prompt", "missing_required_parameter"),
        ({"model": "gpt-image-1", "prompt": "x", "seed": 3}, "seed", "unknown_parameter"),
    ],
)
def test_invalid_requests_name_the_param(
    sim: str, body: dict, param: str, code: str | None
) -> None:
    r = _post(sim, body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    assert set(error) == {"message", "type", "param", "code"}


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.images.generate(model="dall-e-4", prompt="x")
    assert info.value.body["code"] == "model_not_found"
    assert info.value.body["type"] == "invalid_request_error"


def test_invalid_json_body(sim: str) -> None:
    r = requests.post(
        f"{sim}/v1/images/generations",
        data="{not json",
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        timeout=5,
    )
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_moderation_dalle(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model="dall-e-3", prompt="something Forbidden here")
    assert info.value.body["code"] == "content_policy_violation"
    assert info.value.body["type"] == "invalid_request_error"


def test_moderation_gpt_image(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model="gpt-image-1", prompt="a forbidden picture")
    assert info.value.body["code"] == "moderation_blocked"
    assert info.value.body["type"] == "image_generation_user_error"


# -- auth ------------------------------------------------------------------------


def test_wrong_key_is_authentication_error(sim: str) -> None:
    bad = openai.OpenAI(api_key="not-the-key", base_url=f"{sim}/v1", max_retries=0, timeout=20)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.images.generate(model="dall-e-2", prompt="x")
    assert info.value.status_code == 401
    assert info.value.body["code"] == "invalid_api_key"
    assert info.value.body["type"] == "invalid_request_error"
    assert "not-the-key" not in info.value.body["message"]


def test_missing_key_is_401(sim: str) -> None:
    r = _post(sim, {"model": "dall-e-2", "prompt": "x"}, key=None)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"


def test_api_key_can_be_changed_at_runtime(sim: str) -> None:
    _configure(sim, api_key="rotated")
    assert _post(sim, {"prompt": "x", "size": "256x256"}).status_code == 401
    assert _post(sim, {"prompt": "x", "size": "256x256"}, key="rotated").status_code == 200


# -- fault injection -------------------------------------------------------------


def test_fail_next_then_success(sim: str, client: openai.OpenAI) -> None:
    assert _configure(sim, fail_next=1)["fail_next"] == 1
    with pytest.raises(openai.InternalServerError) as info:
        client.images.generate(model="dall-e-2", prompt="x", size="256x256")
    assert info.value.status_code == 500
    assert info.value.body == {
        "message": "The server had an error while processing your request.",
        "type": "server_error",
        "param": None,
        "code": None,
    }
    assert requests.get(f"{sim}/_sim/config", timeout=5).json()["fail_next"] == 0
    resp = client.images.generate(model="dall-e-2", prompt="x", size="256x256")
    assert resp.data[0].url


def test_a_fault_named_in_the_prompt_fails_only_requests_that_carry_it(sim: str) -> None:
    """``sim-fault=<status>x<times>[,retry-after=<s>]@<token>``: per request, not global."""
    prompt = "x sim-fault=429x2,retry-after=3@t1"
    body = {"model": "dall-e-2", "size": "256x256"}
    first = _post(sim, {**body, "prompt": prompt})
    assert first.status_code == 429 and first.headers["Retry-After"] == "3"
    assert _post(sim, {**body, "prompt": "x"}).status_code == 200  # others are not affected
    assert _post(sim, {**body, "prompt": prompt}).status_code == 429
    assert _post(sim, {**body, "prompt": prompt}).status_code == 200  # used up after 2
    other = _post(sim, {**body, "prompt": "y sim-fault=503x1@t2"})
    assert other.status_code == 503 and "Retry-After" not in other.headers
    assert requests.get(f"{sim}/_sim/config", timeout=5).json()["fail_next"] == 0


def test_fail_status_429_with_retry_after(sim: str, client: openai.OpenAI) -> None:
    _configure(sim, fail_next=2, fail_status=429, retry_after=7)
    r = _post(sim, {"model": "dall-e-2", "prompt": "x"})
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "7"
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    assert r.headers["x-ratelimit-limit-requests"]
    assert r.headers["x-ratelimit-reset-requests"]
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    with pytest.raises(openai.RateLimitError) as info:
        client.images.generate(model="dall-e-2", prompt="x")
    assert info.value.response.headers["retry-after"] == "7"


def test_failure_rate(sim: str) -> None:
    _configure(sim, failure_rate=1.0, fail_status=503)
    assert [_post(sim, {"prompt": "x", "size": "256x256"}).status_code for _ in range(3)] == [
        503
    ] * 3
    _configure(sim, failure_rate=0.0)
    assert _post(sim, {"prompt": "x", "size": "256x256"}).status_code == 200


def test_latency_is_applied(sim: str) -> None:
    _configure(sim, latency=0.3)
    started = time.monotonic()
    r = _post(sim, {"model": "dall-e-2", "prompt": "x", "size": "256x256"})
    assert r.status_code == 200
    assert time.monotonic() - started >= 0.3


def test_config_endpoint_merges_and_validates(sim: str) -> None:
    config = _configure(sim, latency=0.01)
    assert config["latency"] == 0.01
    assert config["api_key"] == API_KEY  # untouched fields kept
    assert requests.get(f"{sim}/_sim/config", timeout=5).json() == config
    for bad in ({"failure_rate": 2}, {"fail_next": -1}, {"nonsense": 1}, {"fail_status": 200}):
        r = requests.post(f"{sim}/_sim/config", json=bad, timeout=5)
        assert r.status_code == 400, bad
    assert requests.get(f"{sim}/_sim/config", timeout=5).json() == config


def test_drop_images_answers_with_fewer_images(sim: str, client: openai.OpenAI) -> None:
    _configure(sim, drop_images=1)
    r = client.images.generate(model="dall-e-2", prompt="partial", n=4, size="256x256")
    assert len(r.data) == 3
    assert (
        requests.post(f"{sim}/_sim/config", json={"drop_images": -1}, timeout=5).status_code == 400
    )


# -- request log -----------------------------------------------------------------


def test_request_log_records_body_without_secret(sim: str, client: openai.OpenAI) -> None:
    requests.delete(f"{sim}/_sim/requests", timeout=5)
    client.images.generate(model="dall-e-2", prompt="logged", size="512x512")
    _post(sim, {"model": "dall-e-2", "prompt": "anon"}, key=None)
    log = requests.get(f"{sim}/_sim/requests", timeout=5).json()
    assert len(log) == 2
    first, second = log
    assert first["method"] == "POST"
    assert first["path"] == "/v1/images/generations"
    assert first["json"]["size"] == "512x512"
    assert first["json"]["prompt"] == "logged"
    assert first["auth_present"] is True
    assert first["status"] == 200
    assert all(name.lower() != "authorization" for name in first["headers"])
    assert API_KEY not in str(first)
    assert second["auth_present"] is False
    assert second["status"] == 401
    assert first["time"] <= second["time"]

    assert requests.delete(f"{sim}/_sim/requests", timeout=5).status_code == 200
    assert requests.get(f"{sim}/_sim/requests", timeout=5).json() == []


# -- every simulator, in process: the shared base (named faults, fail_next, request ids) --

# provider -> (generation path, auth headers, how a prompt goes in, request-id header)
_GENERATIONS: dict[str, tuple[str, dict[str, str], str, str | None]] = {
    "openai": ("/v1/images/generations", {"Authorization": "Bearer k"}, "json", "x-request-id"),
    "bfl": ("/v1/flux-pro-1.1", {"x-key": "k"}, "json", None),
    "replicate": (
        "/v1/models/black-forest-labs/flux-schnell/predictions",
        {"Authorization": "Bearer k"},
        "input",
        "X-Request-Id",
    ),
    "fal": ("/fal-ai/z-image/turbo", {"Authorization": "Key k"}, "json", "x-fal-request-id"),
    "ark": ("/api/v3/images/generations", {"Authorization": "Bearer k"}, "json", "x-request-id"),
    "zhipu": (
        "/api/paas/v4/images/generations",
        {"Authorization": "Bearer k"},
        "json",
        "x-request-id",
    ),
    "stability": (
        "/v2beta/stable-image/generate/core",
        {"Authorization": "Bearer k", "Accept": "application/json"},
        "form",
        "x-request-id",
    ),
}
# the smallest valid body besides the prompt
_BODIES: dict[str, dict[str, object]] = {
    "openai": {"model": "dall-e-2", "size": "256x256"},
    "bfl": {"width": 256, "height": 256},
    "ark": {"model": "seedream-4-0-250828", "size": "1280x720"},
    "zhipu": {"model": "cogview-4", "size": "512x512"},
}


def _in_process(provider: str) -> FlaskClient:
    from simulators import PROVIDERS
    from simulators.state import SimConfig

    module = importlib.import_module(PROVIDERS[provider])
    return module.create_app(SimConfig(api_key="k")).test_client()


def _generate(
    client: FlaskClient, provider: str, prompt: str, headers: dict[str, str] | None = None
) -> TestResponse:
    path, auth, where, _ = _GENERATIONS[provider]
    all_headers = {**auth, **(headers or {})}
    if where == "form":
        return client.post(
            path, headers=all_headers, data={"prompt": prompt}, content_type="multipart/form-data"
        )
    body = (
        {"input": {"prompt": prompt}}
        if where == "input"
        else {**_BODIES.get(provider, {}), "prompt": prompt}
    )
    return client.post(path, headers=all_headers, json=body)


@pytest.mark.fast
@pytest.mark.parametrize("provider", sorted(_GENERATIONS))
def test_every_simulator_fails_only_the_requests_that_name_a_fault_in_their_prompt(
    provider: str,
) -> None:
    client = _in_process(provider)
    prompt = fault(503, 2, retry_after=2, prompt="a red fox")
    first = _generate(client, provider, prompt)
    assert first.status_code == 503 and first.headers["Retry-After"] == "2"
    assert _generate(client, provider, "a red fox").status_code < 300  # others go through
    assert _generate(client, provider, prompt).status_code == 503
    assert _generate(client, provider, prompt).status_code < 300  # used up after two
    assert client.get("/_sim/config").get_json()["fail_next"] == 0


@pytest.mark.fast
@pytest.mark.parametrize("provider", sorted(_GENERATIONS))
def test_every_simulator_fails_the_requests_that_name_a_fault_in_a_header(provider: str) -> None:
    client = _in_process(provider)
    header = fault_header(429, 1)
    failed = _generate(client, provider, "a red fox", header)
    assert failed.status_code == 429 and "Retry-After" not in failed.headers
    assert _generate(client, provider, "a red fox").status_code < 300
    assert _generate(client, provider, "a red fox", header).status_code < 300  # used up


@pytest.mark.fast
@pytest.mark.parametrize("provider", sorted(_GENERATIONS))
def test_every_simulator_keeps_the_global_fail_next_and_its_request_id_header(
    provider: str,
) -> None:
    client = _in_process(provider)
    assert client.post("/_sim/config", json={"fail_next": 1, "fail_status": 500}).status_code == 200
    failed = _generate(client, provider, "a red fox")
    assert failed.status_code == 500 and failed.is_json
    ok = _generate(client, provider, "a red fox")
    assert ok.status_code < 300
    header = _GENERATIONS[provider][3]
    if header is not None:
        assert failed.headers[header] and ok.headers[header] != failed.headers[header]
    log = client.get("/_sim/requests").get_json()
    assert [entry["status"] for entry in log][-2:] == [500, ok.status_code]
    assert client.post("/_sim/reset").get_json()["ok"] is True
    assert client.get("/_sim/requests").get_json() == []
