"""The Stability adapter against the Stability simulator (a real subprocess over HTTP).

The first half drives :class:`workers.adapters.stability.StabilityAdapter`
directly and checks, at the simulator's request log, what the upstream
received; the second half checks the simulator's own protocol behaviour.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from PIL import Image

from shared.catalog import Model, load_catalog
from shared.errors import DeadlineExceeded, InvalidRequest, UpstreamError
from tests.conftest import SIM_KEY, start_simulator
from workers.adapters.base import CallContext, ImageRequest, ImageResult
from workers.adapters.stability import (
    MAX_IMAGE_BYTES,
    StabilityAdapter,
    stability_error_parser,
)
from workers.http import UpstreamHTTP

CATALOG = load_catalog()
FAMILY = CATALOG.families["stability"]
CORE = "stability/stable-image-core"
ULTRA = "stability/stable-image-ultra"
SD35 = "stability/sd3.5-large"
SD35_TURBO = "stability/sd3.5-large-turbo"
GENERATE = "/v2beta/stable-image/generate"
PROMPT = "a lighthouse on a cliff at dusk"


@pytest.fixture(scope="module")
def sim_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_simulator(tmp_path_factory.mktemp("stability-sim"), "stability")
    yield url
    proc.stop()


@pytest.fixture()
def sim(sim_url: str) -> str:
    requests.post(f"{sim_url}/_sim/reset", timeout=5).raise_for_status()
    return sim_url


# -- helpers -----------------------------------------------------------------------


def configure(sim: str, **changes: Any) -> None:
    requests.post(f"{sim}/_sim/config", json=changes, timeout=5).raise_for_status()


def sim_log(sim: str) -> list[dict[str, Any]]:
    return requests.get(f"{sim}/_sim/requests", timeout=5).json()


def budget_for(sim: str, least: float) -> float:
    """A deadline budget of at least ``least`` seconds, longer on a machine too loaded
    for it: ten round trips to the simulator, as measured now."""
    started = time.monotonic()
    requests.get(f"{sim}/_sim/config", timeout=10).raise_for_status()
    return max(least, 10 * (time.monotonic() - started))


def make_ctx(
    sim: str, *, budget: float = 10.0, max_retries: int = 2, api_key: str = SIM_KEY
) -> CallContext:
    deadline = time.time() + budget
    http = UpstreamHTTP(
        session=requests.Session(),
        deadline=deadline,
        provider="stability",
        max_retries=max_retries,
        backoff_base=0.05,
    )
    base = sim + urlsplit(FAMILY.base_url).path.rstrip("/")
    return CallContext(family=FAMILY, base_url=base, api_key=api_key, http=http, deadline=deadline)


def model(model_id: str, **changes: Any) -> Model:
    found = CATALOG.models[model_id]
    return dataclasses.replace(found, **changes) if changes else found


def image_request(model_id: str = CORE, **kw: Any) -> ImageRequest:
    fields: dict[str, Any] = {
        "prompt": PROMPT,
        "model": model(model_id),
        "n": 1,
        "width": None,
        "height": None,
        "aspect_ratio": "1:1",
    }
    fields.update(kw)
    return ImageRequest(**fields)


def generate(sim: str, request: ImageRequest, **ctx_kw: Any) -> ImageResult:
    return StabilityAdapter().generate(request, make_ctx(sim, **ctx_kw))


def open_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def png_bytes(width: int, height: int, colour: tuple[int, int, int] = (10, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, "PNG")
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def host(sim: str, data: bytes, content_type: str = "image/png") -> str:
    resp = requests.post(
        f"{sim}/_sim/files", data=data, headers={"Content-Type": content_type}, timeout=5
    )
    resp.raise_for_status()
    return resp.json()["url"]


# -- adapter: success ------------------------------------------------------------


def test_core_one_image_sends_the_documented_multipart_form(sim: str) -> None:
    result = generate(
        sim, image_request(CORE, aspect_ratio="16:9", seed=42, output_format="jpeg", user="u-17")
    )

    assert len(result.images) == 1
    image = open_image(result.images[0].data)
    assert (image.format, image.size) == ("JPEG", (1344, 768))
    [entry] = sim_log(sim)
    assert entry["path"] == f"{GENERATE}/core"
    assert entry["status"] == 200
    assert entry["content_type"] == "multipart/form-data"
    assert entry["form"] == {
        "prompt": PROMPT,
        "output_format": "jpeg",
        "aspect_ratio": "16:9",
        "seed": "42",
    }
    assert entry["files"]["none"]["size"] == 0  # the dummy part forcing multipart
    headers = {k.lower(): v for k, v in entry["headers"].items()}
    assert entry["auth_present"]
    assert headers["accept"] == "image/*"
    assert headers["stability-client-user-id"] == "u-17"
    assert headers["stability-client-id"] == "imagegate"
    assert result.upstream_request_id == entry["id"]


@pytest.mark.parametrize(
    ("model_id", "path", "upstream_model"),
    [
        (CORE, "core", None),
        (ULTRA, "ultra", None),
        (SD35, "sd3", "sd3.5-large"),
        (SD35_TURBO, "sd3", "sd3.5-large-turbo"),
    ],
)
def test_each_catalog_model_reaches_its_endpoint(
    sim: str, model_id: str, path: str, upstream_model: str | None
) -> None:
    result = generate(sim, image_request(model_id, aspect_ratio="9:21"))

    image = open_image(result.images[0].data)
    assert (image.format, image.size) == ("PNG", (640, 1536))
    [entry] = sim_log(sim)
    assert entry["path"] == f"{GENERATE}/{path}"
    assert entry["form"].get("model") == upstream_model
    assert entry["form"].get("mode") == ("text-to-image" if upstream_model else None)
    assert "output_format" not in entry["form"]  # png is the upstream's default


def test_non_ascii_user_is_percent_encoded_in_its_header(sim: str) -> None:
    generate(sim, image_request(CORE, user="zoë"))

    headers = {k.lower(): v for k, v in sim_log(sim)[0]["headers"].items()}
    assert headers["stability-client-user-id"] == "zo%C3%AB"


def test_a_size_instead_of_a_ratio_maps_to_the_nearest_ratio(sim: str) -> None:
    result = generate(sim, image_request(CORE, aspect_ratio=None, width=1920, height=1080))

    assert open_image(result.images[0].data).size == (1344, 768)
    assert sim_log(sim)[0]["form"]["aspect_ratio"] == "16:9"


def test_n_images_fan_out_one_call_each_with_consecutive_seeds(sim: str) -> None:
    result = generate(sim, image_request(ULTRA, n=3, seed=4294967293))

    assert len(result.images) == 3
    assert all(open_image(i.data).size == (1024, 1024) for i in result.images)
    log = sim_log(sim)
    assert len(log) == 3
    assert sorted(e["form"]["seed"] for e in log) == ["1", "4294967293", "4294967294"]
    assert result.upstream_request_id in {e["id"] for e in log}


def test_one_filtered_image_of_n_returns_the_others(sim: str) -> None:
    configure(sim, drop_images=1)  # the next answer comes back CONTENT_FILTERED

    result = generate(sim, image_request(CORE, n=3))

    assert len(result.images) == 2
    assert [e["status"] for e in sim_log(sim)] == [200, 200, 200]


def test_one_failed_call_of_n_returns_the_others(sim: str) -> None:
    configure(sim, fail_next=1, fail_status=500)

    result = generate(sim, image_request(CORE, n=3), max_retries=0)

    assert len(result.images) == 2
    assert sorted(e["status"] for e in sim_log(sim)) == [200, 200, 500]


# -- adapter: reference image ------------------------------------------------------


def test_data_url_image_reaches_ultra_as_a_file_part_with_strength(sim: str) -> None:
    source = png_bytes(768, 512)

    result = generate(sim, image_request(ULTRA, image=data_url(source), aspect_ratio="1:1"))

    [entry] = sim_log(sim)
    assert entry["status"] == 200
    part = entry["files"]["image"]
    assert part["sha256"] == hashlib.sha256(source).hexdigest()
    assert (part["content_type"], part["width"], part["height"]) == ("image/png", 768, 512)
    assert "none" not in entry["files"]
    assert entry["form"]["strength"] == "0.6"
    assert "aspect_ratio" not in entry["form"]  # text-to-image only
    assert open_image(result.images[0].data).size == (1280, 832)  # the input's 3:2


def test_url_image_is_fetched_and_sent_to_sd3_in_image_to_image_mode(sim: str) -> None:
    source = png_bytes(512, 512, (200, 10, 10))
    url = host(sim, source)
    strong = model(SD35, options={**CATALOG.models[SD35].options, "strength": 0.35})

    result = generate(sim, image_request(SD35, model=strong, image=url))

    [entry] = sim_log(sim)
    assert entry["form"]["mode"] == "image-to-image"
    assert entry["form"]["model"] == "sd3.5-large"
    assert entry["form"]["strength"] == "0.35"
    assert entry["files"]["image"]["sha256"] == hashlib.sha256(source).hexdigest()
    assert open_image(result.images[0].data).size == (1024, 1024)


def test_image_the_upstream_cannot_read_is_its_400_naming_image(sim: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        generate(sim, image_request(ULTRA, image=data_url(b"not an image", "text/plain")))

    assert caught.value.param == "image"
    assert "image: must be a valid png, jpeg or webp image" in caught.value.message
    assert sim_log(sim)[0]["status"] == 400


def test_expired_reference_url_is_the_clients_bad_image(sim: str) -> None:
    url = host(sim, png_bytes(256, 256))
    configure(sim, result_ttl=0.2)
    time.sleep(0.3)

    with pytest.raises(InvalidRequest) as caught:
        generate(sim, image_request(ULTRA, image=url))

    assert caught.value.param == "image"
    assert sim_log(sim) == []  # nothing was generated


def test_expired_url_fails_a_pipeline_style_download(sim: str) -> None:
    url = host(sim, png_bytes(256, 256))
    ctx = make_ctx(sim)
    assert Image.open(io.BytesIO(ctx.http.download(url, max_bytes=1 << 20)[0])).size == (256, 256)
    configure(sim, result_ttl=0.2)
    time.sleep(0.3)

    with pytest.raises(UpstreamError):
        ctx.http.download(url, max_bytes=1 << 20)


def test_oversized_reference_image_is_refused_before_any_call(sim: str) -> None:
    big = b"\x89PNG\r\n\x1a\n" + b"\0" * MAX_IMAGE_BYTES

    with pytest.raises(InvalidRequest) as caught:
        generate(sim, image_request(ULTRA, image=data_url(big)))

    assert caught.value.param == "image"
    assert sim_log(sim) == []


# -- adapter: refusals before the upstream ---------------------------------------


@pytest.mark.parametrize(
    ("model_id", "fields", "param"),
    [
        (CORE, {"image": "data:image/png;base64,iVBORw0KGgo="}, "image"),
        (SD35, {"output_format": "webp"}, "output_format"),
        (CORE, {"quality": "hd"}, "quality"),
        (CORE, {"style": "vivid"}, "style"),
        (ULTRA, {"background": "transparent"}, "background"),
        (CORE, {"extra": {"output_compression": 50}}, "output_compression"),
        (CORE, {"extra": {"moderation": "low"}}, "moderation"),
        (CORE, {"seed": 4294967295}, "seed"),
        (ULTRA, {"image": "ftp://example.com/a.png"}, "image"),
        (ULTRA, {"image": "data:image/png;base64,@@@"}, "image"),
    ],
)
def test_what_stability_cannot_honour_is_refused_naming_the_param(
    sim: str, model_id: str, fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        generate(sim, image_request(model_id, **fields))

    assert caught.value.param == param
    assert sim_log(sim) == []


def test_webp_is_fine_for_core(sim: str) -> None:
    result = generate(sim, image_request(CORE, output_format="webp", background="opaque"))

    assert open_image(result.images[0].data).format == "WEBP"
    assert sim_log(sim)[0]["form"]["output_format"] == "webp"


# -- adapter: upstream errors ------------------------------------------------------


def test_5xx_is_retried_then_succeeds(sim: str) -> None:
    configure(sim, fail_next=2, fail_status=500)

    result = generate(sim, image_request(CORE))

    assert len(result.images) == 1
    assert [e["status"] for e in sim_log(sim)] == [500, 500, 200]


def test_5xx_exhausted_is_an_upstream_error_with_the_request_id(sim: str) -> None:
    configure(sim, fail_next=5, fail_status=500)

    with pytest.raises(UpstreamError) as caught:
        generate(sim, image_request(CORE))

    log = sim_log(sim)
    assert [e["status"] for e in log] == [500, 500, 500]
    assert caught.value.headers["x-upstream-request-id"] == log[-1]["id"]
    assert "unexpected server error" in caught.value.message
    assert caught.value.code == "upstream_error"


def test_html_502_from_a_proxy_is_an_upstream_error(sim: str) -> None:
    configure(sim, fail_next=5, fail_status=502)

    with pytest.raises(UpstreamError) as caught:
        generate(sim, image_request(CORE), max_retries=1)

    assert "HTTP 502" in caught.value.message
    assert len(sim_log(sim)) == 2


def test_429_retry_after_is_honoured(sim: str) -> None:
    configure(sim, fail_next=1, fail_status=429, retry_after=0.4)

    result = generate(sim, image_request(CORE))

    assert len(result.images) == 1
    first, second = sim_log(sim)
    assert (first["status"], second["status"]) == (429, 200)
    assert second["time"] - first["time"] >= 0.4


def test_429_exhausted_is_rate_limited(sim: str) -> None:
    configure(sim, fail_next=5, fail_status=429, retry_after=0.05)

    with pytest.raises(UpstreamError) as caught:
        generate(sim, image_request(CORE))

    assert caught.value.code == "upstream_rate_limited"
    assert len(sim_log(sim)) == 3


def test_wrong_key_is_upstream_auth_failed_and_not_retried(sim: str) -> None:
    with pytest.raises(UpstreamError) as caught:
        generate(sim, image_request(CORE), api_key="sk-wrong")

    assert caught.value.code == "upstream_auth_failed"
    assert [e["status"] for e in sim_log(sim)] == [401]


def test_upstream_validation_error_is_invalid_request_with_its_message(sim: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        generate(sim, image_request(CORE, prompt="x" * 10001))

    assert "prompt: must be at most 10000 characters" in caught.value.message
    assert caught.value.param == "prompt"
    assert caught.value.code == "upstream_rejected"
    assert [e["status"] for e in sim_log(sim)] == [400]


def test_422_is_invalid_request_with_its_message(sim: str) -> None:
    configure(sim, fail_next=1, fail_status=422)

    with pytest.raises(InvalidRequest) as caught:
        generate(sim, image_request(CORE))

    assert "English is the only supported language" in caught.value.message
    assert caught.value.code == "invalid_language"


def test_moderated_prompt_is_content_policy_violation(sim: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        generate(sim, image_request(CORE, prompt="a forbidden thing"))

    [entry] = sim_log(sim)
    assert entry["status"] == 403
    assert caught.value.code == "content_policy_violation"
    assert caught.value.headers["x-upstream-request-id"] == entry["id"]


def test_content_filtered_output_is_not_delivered(sim: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        generate(sim, image_request(ULTRA, prompt="a filtered scene", n=2))

    assert caught.value.code == "content_policy_violation"
    assert caught.value.headers["x-upstream-request-id"] in {e["id"] for e in sim_log(sim)}
    assert [e["status"] for e in sim_log(sim)] == [200, 200]


def test_malformed_json_answer_is_an_upstream_error(sim: str) -> None:
    with pytest.raises(UpstreamError) as caught:
        generate(sim, image_request(CORE, prompt="a cat [sim:garbled]"))

    assert caught.value.code == "upstream_malformed_response"
    assert caught.value.headers["x-upstream-request-id"] == sim_log(sim)[0]["id"]


def test_slow_upstream_hits_the_deadline(sim: str) -> None:
    budget = budget_for(sim, 0.6)
    configure(sim, latency=5 * budget)

    with pytest.raises(DeadlineExceeded):
        generate(sim, image_request(CORE), budget=budget)

    assert len(sim_log(sim)) == 1  # no retry after the deadline


# -- the error parser on shapes the simulator does not produce ---------------------


def _response(status: int, body: bytes) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = body
    response.headers["Content-Type"] = "application/json"
    return response


@pytest.mark.parametrize(
    ("body", "message", "code", "param", "moderated"),
    [
        (
            b'{"id":"a","name":"content_moderation","errors":["flagged"]}',
            "flagged",
            "content_moderation",
            None,
            True,
        ),
        (
            b'{"id":"a","name":"bad_request","errors":["strength: is required", "x"]}',
            "strength: is required; x",
            None,
            "image",
            False,
        ),
        (
            b'{"id":"a","name":"payload_too_large","errors":"too big"}',
            "too big",
            "payload_too_large",
            None,
            False,
        ),
        (b'{"name":"unauthorized","message":"bad key"}', "bad key", "unauthorized", None, False),
        (b'{"error":{"message":"openai-ish","code":"x"}}', "openai-ish", "x", None, False),
        (b"<html>oops</html>", "<html>oops</html>", None, None, False),
    ],
)
def test_error_parser(
    body: bytes, message: str, code: str | None, param: str | None, moderated: bool
) -> None:
    fault = stability_error_parser(_response(400, body))

    assert (fault.message, fault.code, fault.param, fault.moderated) == (
        message,
        code,
        param,
        moderated,
    )


# -- the simulator itself ----------------------------------------------------------


def post_form(
    sim: str,
    kind: str,
    fields: dict[str, str],
    *,
    files: dict[str, Any] | None = None,
    accept: str | None = "image/*",
    key: str | None = SIM_KEY,
) -> requests.Response:
    headers = {}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    if accept is not None:
        headers["Accept"] = accept
    return requests.post(
        f"{sim}{GENERATE}/{kind}",
        data=fields,
        files=files or {"none": ("", b"")},
        headers=headers,
        timeout=10,
    )


def test_sim_control_endpoints(sim: str) -> None:
    assert requests.get(f"{sim}/_sim/health", timeout=5).json()["provider"] == "stability"
    configure(sim, latency=0.01, drop_images=2)
    assert requests.get(f"{sim}/_sim/config", timeout=5).json()["drop_images"] == 2
    bad = requests.post(f"{sim}/_sim/config", json={"nope": 1}, timeout=5)
    assert bad.status_code == 400
    post_form(sim, "core", {"prompt": PROMPT})
    assert len(sim_log(sim)) == 1
    assert requests.delete(f"{sim}/_sim/requests", timeout=5).json()["cleared"] == 1
    reset = requests.post(f"{sim}/_sim/reset", timeout=5).json()
    assert reset["config"]["drop_images"] == 0 and reset["config"]["latency"] == 0.0


@pytest.mark.parametrize(
    ("ratio", "size"),
    [
        ("1:1", (1024, 1024)),
        ("16:9", (1344, 768)),
        ("21:9", (1536, 640)),
        ("2:3", (832, 1216)),
        ("3:2", (1216, 832)),
        ("4:5", (896, 1088)),
        ("5:4", (1088, 896)),
        ("9:16", (768, 1344)),
        ("9:21", (640, 1536)),
    ],
)
def test_sim_sizes_by_aspect_ratio(sim: str, ratio: str, size: tuple[int, int]) -> None:
    resp = post_form(sim, "core", {"prompt": PROMPT, "aspect_ratio": ratio, "seed": "5"})

    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "image/png"
    assert (resp.headers["finish-reason"], resp.headers["seed"]) == ("SUCCESS", "5")
    assert open_image(resp.content).size == size


def test_sim_json_accept_and_random_seed(sim: str) -> None:
    resp = post_form(
        sim, "ultra", {"prompt": PROMPT, "output_format": "webp"}, accept="application/json"
    )

    body = resp.json()
    assert body["finish_reason"] == "SUCCESS"
    assert 1 <= body["seed"] <= 4294967294
    assert resp.headers["seed"] == str(body["seed"])
    assert open_image(base64.b64decode(body["image"])).format == "WEBP"


def test_sim_auth_errors_have_the_stability_shape(sim: str) -> None:
    for key in (None, "sk-wrong"):
        resp = post_form(sim, "core", {"prompt": PROMPT}, key=key)
        body = resp.json()
        assert resp.status_code == 401
        assert body["name"] == "unauthorized" and isinstance(body["errors"], list)
        assert body["id"] == resp.headers["x-request-id"]


@pytest.mark.parametrize(
    ("kind", "fields", "files", "error"),
    [
        ("core", {}, None, "prompt: cannot be empty"),
        ("core", {"prompt": PROMPT, "n": "2"}, None, "n: unknown field"),
        ("core", {"prompt": PROMPT, "aspect_ratio": "4:3"}, None, "aspect_ratio: must be one of"),
        ("core", {"prompt": PROMPT, "seed": "4294967295"}, None, "seed: must be between"),
        ("core", {"prompt": PROMPT, "model": "sd3.5-large"}, None, "model: unknown field"),
        (
            "sd3",
            {"prompt": PROMPT, "output_format": "webp"},
            None,
            "output_format: must be one of [png, jpeg]",
        ),
        ("sd3", {"prompt": PROMPT, "model": "sd9"}, None, "model: must be one of"),
        (
            "sd3",
            {"prompt": PROMPT, "mode": "image-to-image", "strength": "0.5"},
            None,
            "image: required in image-to-image mode",
        ),
        (
            "core",
            {"prompt": PROMPT, "strength": "0.5"},
            {"image": ("a.png", png_bytes(64, 64))},
            "strength: unknown field",
        ),
        (
            "core",
            {"prompt": PROMPT},
            {"image": ("a.png", png_bytes(64, 64))},
            "image: unknown file field",
        ),
        (
            "ultra",
            {"prompt": PROMPT},
            {"image": ("a.png", png_bytes(64, 64))},
            "strength: required",
        ),
        (
            "ultra",
            {"prompt": PROMPT, "strength": "0.5", "aspect_ratio": "1:1"},
            {"image": ("a.png", png_bytes(64, 64))},
            "aspect_ratio: only valid for text-to-image",
        ),
        (
            "ultra",
            {"prompt": PROMPT, "strength": "1.5"},
            {"image": ("a.png", png_bytes(64, 64))},
            "strength: must be between 0 and 1",
        ),
        (
            "ultra",
            {"prompt": PROMPT, "strength": "0.5"},
            {"image": ("a.png", png_bytes(32, 200))},
            "image: each side must be between 64",
        ),
        (
            "ultra",
            {"prompt": PROMPT, "style_preset": "vaporwave"},
            None,
            "style_preset: must be one of",
        ),
    ],
)
def test_sim_validation(
    sim: str, kind: str, fields: dict[str, str], files: Any, error: str
) -> None:
    resp = post_form(sim, kind, fields, files=files)

    assert resp.status_code == 400
    body = resp.json()
    assert body["name"] == "bad_request"
    assert any(e.startswith(error) for e in body["errors"]), body
    assert body["id"] == resp.headers["x-request-id"]


def test_sim_refuses_a_json_body_and_an_unknown_accept(sim: str) -> None:
    resp = requests.post(
        f"{sim}{GENERATE}/core",
        json={"prompt": PROMPT},
        headers={"Authorization": f"Bearer {SIM_KEY}"},
        timeout=5,
    )
    assert resp.status_code == 400
    assert resp.json()["errors"] == ["content-type: must be multipart/form-data"]
    assert sim_log(sim)[0]["raw_body"] == '{"prompt": "a lighthouse on a cliff at dusk"}'
    assert post_form(sim, "core", {"prompt": PROMPT}, accept="text/html").status_code == 400


def test_sim_unknown_endpoint_is_404(sim: str) -> None:
    resp = post_form(sim, "sd4", {"prompt": PROMPT})
    assert resp.status_code == 404
    assert resp.json()["name"] == "not_found"


def test_sim_sd3_image_to_image_follows_the_input_ratio(sim: str) -> None:
    resp = post_form(
        sim,
        "sd3",
        {"prompt": PROMPT, "mode": "image-to-image", "strength": "0.5", "model": "sd3.5-medium"},
        files={"image": ("a.png", png_bytes(400, 1000))},
    )

    assert resp.status_code == 200
    assert open_image(resp.content).size == (640, 1600)


def test_sim_body_over_10_mib_is_413(sim: str) -> None:
    resp = post_form(
        sim,
        "ultra",
        {"prompt": PROMPT, "strength": "0.5"},
        files={"image": ("a.png", b"\0" * (10 * 1024 * 1024 + 1))},
    )

    assert resp.status_code == 413
    assert resp.json()["name"] == "payload_too_large"


def test_sim_moderation_and_filtering(sim: str) -> None:
    resp = post_form(sim, "core", {"prompt": "something forbidden"})
    assert resp.status_code == 403
    assert resp.json()["name"] == "content_moderation"

    resp = post_form(sim, "core", {"prompt": "something filtered"})
    assert resp.status_code == 200
    assert resp.headers["finish-reason"] == "CONTENT_FILTERED"
    assert open_image(resp.content).getpixel((0, 0)) == (128, 128, 128)


def test_sim_drop_images_filters_that_many_answers(sim: str) -> None:
    configure(sim, drop_images=2)

    reasons = [
        post_form(sim, "core", {"prompt": PROMPT}).headers["finish-reason"] for _ in range(3)
    ]

    assert reasons == ["CONTENT_FILTERED", "CONTENT_FILTERED", "SUCCESS"]


def test_sim_injected_failures_use_the_stability_bodies(sim: str) -> None:
    configure(sim, fail_next=1, fail_status=429, retry_after=60)
    resp = post_form(sim, "core", {"prompt": PROMPT})
    assert resp.status_code == 429
    assert resp.headers["Retry-After"] == "60"
    assert resp.json()["name"] == "rate_limit_exceeded"
    assert "150 requests within a 10 second period" in resp.json()["errors"][0]

    configure(sim, fail_next=1, fail_status=503, retry_after=None)
    resp = post_form(sim, "core", {"prompt": PROMPT})
    assert (resp.status_code, resp.json()["name"]) == (503, "internal_error")
    assert "Retry-After" not in resp.headers

    assert post_form(sim, "core", {"prompt": PROMPT}).status_code == 200  # fail_next used up


def test_sim_bad_key_does_not_use_up_fail_next(sim: str) -> None:
    configure(sim, fail_next=1)

    assert post_form(sim, "core", {"prompt": PROMPT}, key="sk-wrong").status_code == 401
    assert post_form(sim, "core", {"prompt": PROMPT}).status_code == 500
