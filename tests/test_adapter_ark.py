"""The ``ark`` adapter (Seedream on BytePlus ModelArk) against the ark simulator.

The simulator runs as a real subprocess (``python -m simulators ark``); the
adapter is driven directly with a real :class:`UpstreamHTTP`, and what reached
the upstream is read back from the simulator's request log. The second half
tests the simulator's own protocol: validation, error bodies, batches, knobs.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from PIL import Image

from shared.catalog import Model, load_catalog
from shared.errors import DeadlineExceeded, InvalidRequest, UpstreamError
from tests.conftest import SIM_KEY, start_simulator
from tests.support.sim import fault
from workers.adapters import ADAPTERS
from workers.adapters.ark import ArkAdapter, is_moderation_code
from workers.adapters.base import CallContext, ImageRequest, ImageResult
from workers.http import UpstreamHTTP

CATALOG = load_catalog()
FAMILY = CATALOG.families["ark"]
API_PATH = urlsplit(FAMILY.base_url).path.rstrip("/")  # /api/v3
SEEDREAM_40 = CATALOG.models["bytedance/seedream-4.0"]
SEEDREAM_45 = CATALOG.models["bytedance/seedream-4.5"]
# The catalog's 5.0-lite id is unverified; BytePlus documents seedream-5-0-260128.
SEEDREAM_50 = dataclasses.replace(
    CATALOG.models["bytedance/seedream-5.0-lite"], upstream="seedream-5-0-260128"
)
MAX_BYTES = 64 * 1024 * 1024
AUTH = {"Authorization": f"Bearer {SIM_KEY}"}


# -- fixtures and helpers ---------------------------------------------------------------


@pytest.fixture(scope="module")
def sim_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_simulator(Path(tmp_path_factory.mktemp("ark-sim")), "ark")
    yield url
    proc.stop()


@pytest.fixture(autouse=True)
def sim(sim_url: str) -> str:
    requests.post(f"{sim_url}/_sim/reset", timeout=5).raise_for_status()
    return sim_url


def budget_for(sim: str, least: float) -> float:
    """A deadline budget of at least ``least`` seconds, longer on a machine too loaded
    for it: ten round trips to the simulator, as measured now."""
    started = time.monotonic()
    requests.get(f"{sim}/_sim/config", timeout=10).raise_for_status()
    return max(least, 10 * (time.monotonic() - started))


def _ctx(sim: str, *, budget: float = 20.0, key: str = SIM_KEY) -> CallContext:
    deadline = time.time() + budget
    return CallContext(
        family=FAMILY,
        base_url=sim + API_PATH,
        api_key=key,
        http=UpstreamHTTP(
            session=requests.Session(),
            deadline=deadline,
            provider="ark",
            max_retries=2,
            backoff_base=0.05,
        ),
        deadline=deadline,
    )


def _request(model: Model = SEEDREAM_40, **kw) -> ImageRequest:
    fields = {"prompt": "a lighthouse at dusk", "n": 1, "width": 2048, "height": 2048, **kw}
    return ImageRequest(model=model, **fields)


def _generate(sim: str, request: ImageRequest, **ctx_kw) -> ImageResult:
    return ArkAdapter().generate(request, _ctx(sim, **ctx_kw))


def _config(sim: str, **config) -> None:
    requests.post(f"{sim}/_sim/config", json=config, timeout=5).raise_for_status()


def _calls(sim: str) -> list[dict]:
    return requests.get(f"{sim}/_sim/requests", timeout=5).json()


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _data_url(size: tuple[int, int] = (64, 48), fmt: str = "PNG", label: str = "png") -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, fmt)
    return f"data:image/{label};base64,{base64.b64encode(buf.getvalue()).decode()}"


def _post(sim: str, body: dict, headers: dict | None = AUTH) -> requests.Response:
    return requests.post(
        f"{sim}{API_PATH}/images/generations", json=body, headers=headers or {}, timeout=10
    )


# -- the adapter ------------------------------------------------------------------------


def test_the_registry_serves_this_adapter() -> None:
    assert isinstance(ADAPTERS[FAMILY.adapter], ArkAdapter)


def test_one_image_as_a_url_with_the_fields_ark_expects(sim: str) -> None:
    ctx = _ctx(sim)
    result = ArkAdapter().generate(_request(width=2560, height=1440, seed=42), ctx)

    assert len(result.images) == 1
    image = result.images[0]
    assert image.data is None and image.url
    data, content_type = ctx.http.download(image.url, max_bytes=MAX_BYTES)
    picture = _open(data)
    assert (picture.format, picture.size) == ("JPEG", (2560, 1440))
    assert content_type == "image/jpeg"
    # watermark: false reached the upstream: the bottom-right corner is not stamped
    assert picture.getpixel((2560 - 20, 1440 - 20)) == picture.getpixel((100, 100))

    (call,) = _calls(sim)
    assert call["path"] == "/api/v3/images/generations"
    assert call["status"] == 200
    assert call["auth_present"]
    assert call["json"] == {
        "model": "seedream-4-0-250828",
        "prompt": "a lighthouse at dusk",
        "size": "2560x1440",
        "response_format": "url",
        "watermark": False,
        "sequential_image_generation": "disabled",
        "seed": 42,
    }
    assert result.upstream_request_id == call["id"]


def test_b64_json_when_the_catalog_asks_for_it(sim: str) -> None:
    model = dataclasses.replace(SEEDREAM_45, options={"response_format": "b64_json"})
    result = _generate(sim, _request(model, width=1920, height=1920))
    (image,) = result.images
    assert image.url is None
    assert _open(image.data).size == (1920, 1920)
    assert _calls(sim)[0]["json"]["response_format"] == "b64_json"


def test_several_images_come_from_one_batch_call(sim: str) -> None:
    result = _generate(sim, _request(n=3, seed=7))
    assert len(result.images) == 3
    assert len({image.url for image in result.images}) == 3
    (call,) = _calls(sim)
    body = call["json"]
    assert "n" not in body
    assert body["sequential_image_generation"] == "auto"
    assert body["sequential_image_generation_options"] == {"max_images": 3}
    assert body["prompt"].startswith("a lighthouse at dusk")
    assert "3 separate images" in body["prompt"]
    assert body["seed"] == 7
    http = _ctx(sim).http
    for image in result.images:
        assert _open(http.download(image.url, max_bytes=MAX_BYTES)[0]).size == (2048, 2048)


def test_a_batch_that_comes_back_short_returns_what_came(sim: str) -> None:
    _config(sim, drop_images=1)
    result = _generate(sim, _request(n=3))
    assert len(result.images) == 2
    assert len(_calls(sim)) == 1  # no second call to make up the difference


def test_a_filtered_image_in_a_batch_is_skipped(sim: str) -> None:
    result = _generate(sim, _request(n=3, prompt="a forbidden garden"))
    assert len(result.images) == 2
    assert all(image.url for image in result.images)


def test_a_batch_with_every_image_filtered_is_a_content_policy_violation(sim: str) -> None:
    _config(sim, drop_images=1)  # max_images=2 minus one: only the filtered item comes back
    with pytest.raises(InvalidRequest) as info:
        _generate(sim, _request(n=2, prompt="a forbidden garden"))
    assert info.value.code == "content_policy_violation"
    assert info.value.headers["x-upstream-request-id"] == _calls(sim)[0]["id"]


def test_moderation_of_a_single_image_is_a_content_policy_violation(sim: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        _generate(sim, _request(prompt="something forbidden"))
    assert info.value.code == "content_policy_violation"
    assert "sensitive information" in info.value.message
    assert info.value.headers["x-upstream-request-id"] == _calls(sim)[0]["id"]


def test_a_5xx_is_retried_then_succeeds(sim: str) -> None:
    _config(sim, fail_next=2, fail_status=500)
    result = _generate(sim, _request())
    assert len(result.images) == 1
    assert [c["status"] for c in _calls(sim)] == [500, 500, 200]


def test_5xx_exhausted_is_an_upstream_error_with_the_request_id(sim: str) -> None:
    _config(sim, fail_next=10, fail_status=503)
    with pytest.raises(UpstreamError) as info:
        _generate(sim, _request())
    calls = _calls(sim)
    assert [c["status"] for c in calls] == [503, 503, 503]
    assert info.value.headers["x-upstream-request-id"] == calls[-1]["id"]
    assert "ServiceUnavailable" in (info.value.code or "")


def test_a_429_waits_for_retry_after_then_succeeds(sim: str) -> None:
    _config(sim, fail_next=1, fail_status=429, retry_after=0.6)
    result = _generate(sim, _request())
    assert len(result.images) == 1
    first, second = _calls(sim)
    assert (first["status"], second["status"]) == (429, 200)
    assert second["time"] - first["time"] >= 0.55


def test_429_exhausted_is_upstream_rate_limited(sim: str) -> None:
    _config(sim, fail_next=10, fail_status=429, retry_after=0)
    with pytest.raises(UpstreamError) as info:
        _generate(sim, _request())
    assert info.value.code == "upstream_rate_limited"
    assert len(_calls(sim)) == 3


def test_a_wrong_key_is_upstream_auth_failed_and_not_retried(sim: str) -> None:
    with pytest.raises(UpstreamError) as info:
        _generate(sim, _request(), key="not-the-key")
    assert info.value.code == "upstream_auth_failed"
    (call,) = _calls(sim)
    assert call["status"] == 401
    assert info.value.headers["x-upstream-request-id"] == call["id"]


def test_an_upstream_validation_error_is_an_invalid_request_with_its_message(sim: str) -> None:
    # Below the 4.0 band of 1280*720 pixels (the gateway's clamp would never send it).
    with pytest.raises(InvalidRequest) as info:
        _generate(sim, _request(width=800, height=800))
    assert info.value.param == "size"
    assert info.value.code == "InvalidParameter"
    assert "total pixels of '800x800' (640000)" in info.value.message
    assert _calls(sim)[0]["status"] == 400


def test_a_slow_upstream_hits_the_deadline(sim: str) -> None:
    budget = budget_for(sim, 1.0)
    _config(sim, latency=3 * budget)
    with pytest.raises(DeadlineExceeded):
        _generate(sim, _request(), budget=budget)


def test_an_expired_result_url_fails_the_download(sim: str) -> None:
    _config(sim, result_ttl=0.3)
    ctx = _ctx(sim)
    (image,) = ArkAdapter().generate(_request(), ctx).images
    time.sleep(0.5)
    with pytest.raises(UpstreamError) as info:
        ctx.http.download(image.url, max_bytes=MAX_BYTES)
    assert "404" in info.value.message


def test_a_malformed_json_answer_is_an_upstream_error(sim: str) -> None:
    with pytest.raises(UpstreamError) as info:
        _generate(sim, _request(prompt="please sim-malformed-json"))
    assert info.value.code == "upstream_malformed_response"
    assert info.value.headers["x-upstream-request-id"] == _calls(sim)[0]["id"]


@pytest.mark.parametrize(
    ("model", "fields", "param"),
    [
        (SEEDREAM_40, {"quality": "hd"}, "quality"),
        (SEEDREAM_40, {"style": "vivid"}, "style"),
        (SEEDREAM_40, {"background": "transparent"}, "background"),
        (SEEDREAM_40, {"user": "u-1"}, "user"),
        (SEEDREAM_40, {"extra": {"output_compression": 80}}, "output_compression"),
        (SEEDREAM_40, {"extra": {"moderation": "low"}}, "moderation"),
        (SEEDREAM_40, {"output_format": "png"}, "output_format"),  # not in the catalog params
        (dataclasses.replace(SEEDREAM_50, params=SEEDREAM_50.params | {"output_format"}),
         {"output_format": "webp"}, "output_format"),
        (SEEDREAM_40, {"image": "https://example.com/cat.png"}, "image"),  # 4.0 lists no image
        (dataclasses.replace(SEEDREAM_40, params=frozenset()), {"seed": 3}, "seed"),
        (SEEDREAM_45, {"image": "https://example.com/cat.png", "n": 15}, "n"),
        (SEEDREAM_40, {"width": None, "height": None, "aspect_ratio": "16:9"}, "aspect_ratio"),
    ],
)  # fmt: skip
def test_what_ark_cannot_do_is_refused_naming_the_param(
    sim: str, model: Model, fields: dict, param: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        _generate(sim, _request(model, **fields))
    assert info.value.param == param
    assert _calls(sim) == []  # refused before anything reached the upstream


def test_a_data_url_reference_reaches_the_upstream_as_is(sim: str) -> None:
    reference = _data_url()
    result = _generate(sim, _request(SEEDREAM_45, image=reference, n=2))
    assert len(result.images) == 2
    body = _calls(sim)[0]["json"]
    assert body["image"] == reference
    assert body["sequential_image_generation_options"] == {"max_images": 2}


def test_an_edit_sends_its_images_as_a_list(sim: str) -> None:
    # Seedream 4.0 takes no generation `image`, but edits with up to 10 references.
    references = (_data_url(), "https://example.com/cat.png")
    _generate(sim, _request(SEEDREAM_40, operation="edit", images=references, n=2))
    body = _calls(sim)[0]["json"]
    assert body["image"] == list(references)
    assert body["sequential_image_generation_options"] == {"max_images": 2}


def test_an_edit_above_the_models_reference_count_is_refused(sim: str) -> None:
    references = tuple(f"https://example.com/{i}.png" for i in range(11))
    with pytest.raises(InvalidRequest) as info:
        _generate(sim, _request(SEEDREAM_40, operation="edit", images=references))
    assert info.value.param == "image"
    assert _calls(sim) == []


def test_a_url_reference_reaches_the_upstream_as_is(sim: str) -> None:
    _generate(sim, _request(SEEDREAM_50, image="https://example.com/cat.png"))
    body = _calls(sim)[0]["json"]
    assert (body["model"], body["image"]) == ("seedream-5-0-260128", "https://example.com/cat.png")


def test_a_broken_reference_is_the_upstreams_validation_error(sim: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        _generate(sim, _request(SEEDREAM_45, image="data:image/png;base64,not-base64!"))
    assert info.value.param == "image"
    assert "not valid base64" in info.value.message


def test_output_format_png_where_the_catalog_allows_it(sim: str) -> None:
    model = dataclasses.replace(
        SEEDREAM_50,
        params=SEEDREAM_50.params | {"output_format"},
        options={"response_format": "b64_json"},
    )
    (image,) = _generate(sim, _request(model, output_format="png")).images
    assert _open(image.data).format == "PNG"
    assert _calls(sim)[0]["json"]["output_format"] == "png"


def test_moderation_codes() -> None:
    for code in (
        "InputTextSensitiveContentDetected",
        "OutputImageSensitiveContentDetected",
        "InputImageSensitiveContentDetected",
        "SensitiveContentDetected.Violence",
        "content_filter",
    ):
        assert is_moderation_code(code)
    for code in ("InvalidParameter", "RateLimitExceeded.EndpointRPMExceeded", "", None):
        assert not is_moderation_code(code)


# -- the simulator's protocol -------------------------------------------------------------


def _error(response: requests.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "param", "type"}
    assert body["error"]["message"].endswith(f"Request id: {response.headers['x-request-id']}")
    return body["error"]


def test_sim_auth_is_a_bearer_key(sim: str) -> None:
    body = {"model": "seedream-4-0-250828", "prompt": "x"}
    for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": SIM_KEY}):
        response = _post(sim, body, headers)
        assert response.status_code == 401
        err = _error(response)
        assert (err["code"], err["type"]) == ("AuthenticationError", "Unauthorized")
    assert _post(sim, body).status_code == 200


def test_sim_answers_in_arks_shape_with_a_request_id(sim: str) -> None:
    response = _post(sim, {"model": "seedream-4-0-250828", "prompt": "x", "size": "2K"})
    assert response.status_code == 200
    assert response.headers["x-request-id"].startswith("021")
    body = response.json()
    assert set(body) == {"model", "created", "data", "usage"}
    assert body["model"] == "seedream-4-0-250828"
    (item,) = body["data"]
    assert set(item) == {"url", "size"}
    assert item["size"] == "2048x2048"
    assert body["usage"] == {
        "generated_images": 1,
        "output_tokens": 2048 * 2048 // 256,
        "total_tokens": 2048 * 2048 // 256,
    }


@pytest.mark.parametrize(
    ("model", "size", "produced"),
    [
        ("seedream-4-0-250828", "1280x720", "1280x720"),
        ("seedream-4-0-250828", "1279x720", None),
        ("seedream-4-0-250828", "4096x4096", "4096x4096"),
        ("seedream-4-0-250828", "4097x4096", None),
        ("seedream-4-0-250828", "4096x256", "4096x256"),  # ratio 16
        ("seedream-4-0-250828", "4352x256", None),  # ratio 17, area in band
        ("seedream-4-0-250828", "256x4096", "256x4096"),
        ("seedream-4-0-250828", "1K", "1024x1024"),
        ("seedream-4-0-250828", "3K", None),
        ("seedream-4-0-250828", "2048X2048", None),
        ("seedream-4-0-250828", "2048x", None),
        ("seedream-4-5-251128", "1280x720", None),
        ("seedream-4-5-251128", "2560x1440", "2560x1440"),
        ("seedream-5-0-260128", "4096x4096", None),  # above 10.4M pixels
        ("seedream-5-0-260128", "3K", "3072x3072"),
    ],
)
def test_sim_validates_size_per_model(
    sim: str, model: str, size: str, produced: str | None
) -> None:
    response = _post(sim, {"model": model, "prompt": "x", "size": size, "watermark": False})
    if produced is None:
        assert response.status_code == 400
        err = _error(response)
        assert (err["code"], err["param"], err["type"]) == (
            "InvalidParameter",
            "size",
            "BadRequest",
        )
    else:
        assert response.status_code == 200, response.text
        (item,) = response.json()["data"]
        assert item["size"] == produced
        picture = _open(requests.get(item["url"], timeout=10).content)
        assert f"{picture.width}x{picture.height}" == produced


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"prompt": "x", "n": 2}, 400, "InvalidParameter", "n"),
        ({"prompt": "x", "quality": "hd"}, 400, "InvalidParameter", "quality"),
        ({"model": None, "prompt": "x"}, 400, "MissingParameter", "model"),
        ({"prompt": ""}, 400, "MissingParameter", "prompt"),
        ({"model": "seedream-9", "prompt": "x"}, 404, "InvalidEndpointOrModel.NotFound", "model"),
        ({"prompt": "x", "response_format": "png"}, 400, "InvalidParameter", "response_format"),
        ({"prompt": "x", "seed": 2147483648}, 400, "InvalidParameter", "seed"),
        ({"prompt": "x", "seed": "1"}, 400, "InvalidParameter", "seed"),
        ({"prompt": "x", "watermark": "no"}, 400, "InvalidParameter", "watermark"),
        ({"prompt": "x", "sequential_image_generation": "on"}, 400, "InvalidParameter", "sequential_image_generation"),
        ({"prompt": "x", "sequential_image_generation": "auto", "sequential_image_generation_options": {"max_images": 16}}, 400, "InvalidParameter", "sequential_image_generation_options.max_images"),
        ({"prompt": "x", "guidance_scale": 5.0}, 400, "InvalidParameter", "guidance_scale"),
        ({"prompt": "x", "stream": True}, 400, "InvalidParameter", "stream"),
        ({"prompt": "x", "tools": [{"type": "web_search"}]}, 400, "InvalidParameter", "tools"),
        ({"prompt": "x", "output_format": "webp"}, 400, "InvalidParameter", "output_format"),
        ({"prompt": "x", "image": "ftp://example.com/a.png"}, 400, "InvalidParameter", "image"),
        ({"prompt": "x", "image": []}, 400, "InvalidParameter", "image"),
        ({"prompt": "x", "image": ["https://example.com/a.png"] * 11}, 400, "InvalidParameter", "image"),
    ],
)  # fmt: skip
def test_sim_validation_errors(sim: str, body: dict, status: int, code: str, param: str) -> None:
    response = _post(sim, {"model": "seedream-4-0-250828", **body})
    assert response.status_code == status
    err = _error(response)
    assert (err["code"], err["param"]) == (code, param)
    assert _calls(sim)[-1]["status"] == status


@pytest.mark.parametrize(
    ("reference", "ok"),
    [
        (_data_url(), True),
        (_data_url(fmt="JPEG", label="jpeg"), True),
        (_data_url(fmt="JPEG", label="png"), False),  # declared png, is jpeg
        (_data_url(label="PNG"), False),  # the format must be lower-case
        (_data_url(size=(10, 10)), False),  # sides must be > 14 px
        (_data_url(size=(400, 100)), False),  # ratio above 3
        ("data:image/png;base64,aGVsbG8=", False),  # not an image
    ],
)
def test_sim_checks_reference_images(sim: str, reference: str, ok: bool) -> None:
    response = _post(sim, {"model": "seedream-4-5-251128", "prompt": "x", "image": reference})
    if ok:
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 400
        assert _error(response)["param"] == "image"


def test_sim_counts_references_against_the_15_images(sim: str) -> None:
    body = {
        "model": "seedream-4-5-251128",
        "prompt": "x",
        "image": ["https://example.com/a.png", "https://example.com/b.png"],
        "sequential_image_generation": "auto",
        "sequential_image_generation_options": {"max_images": 14},
    }
    response = _post(sim, body)
    assert response.status_code == 400
    assert _error(response)["param"] == "sequential_image_generation_options.max_images"
    body["sequential_image_generation_options"] = {"max_images": 13}
    assert len(_post(sim, body).json()["data"]) == 13


def test_sim_accepts_the_sdks_nulls(sim: str) -> None:
    body = {
        "model": "seedream-4-0-250828",
        "prompt": "x",
        "image": None,
        "response_format": None,
        "size": None,
        "seed": None,
        "guidance_scale": None,
        "watermark": None,
        "optimize_prompt": None,
        "optimize_prompt_options": None,
        "sequential_image_generation": None,
        "sequential_image_generation_options": None,
        "tools": None,
        "output_format": None,
        "layer_decomposition": None,
        "stream": None,
    }
    response = _post(sim, body)
    assert response.status_code == 200, response.text
    assert response.json()["data"][0]["size"] == "2048x2048"


def test_sim_batch_modes(sim: str) -> None:
    auto = {
        "model": "seedream-4-0-250828",
        "prompt": "x",
        "size": "1280x720",
        "sequential_image_generation": "auto",
        "sequential_image_generation_options": {"max_images": 4},
    }
    assert len(_post(sim, auto).json()["data"]) == 4
    assert len(_post(sim, {**auto, "sequential_image_generation": "disabled"}).json()["data"]) == 1
    _config(sim, drop_images=1)
    assert len(_post(sim, auto).json()["data"]) == 3
    # disabled means exactly one image, so nothing can be dropped from it
    assert len(_post(sim, {**auto, "sequential_image_generation": "disabled"}).json()["data"]) == 1


def test_sim_moderation(sim: str) -> None:
    single = {"model": "seedream-4-0-250828", "prompt": "a forbidden thing", "size": "1280x720"}
    response = _post(sim, single)
    assert response.status_code == 400
    assert _error(response)["code"] == "InputTextSensitiveContentDetected"
    batch = {
        **single,
        "sequential_image_generation": "auto",
        "sequential_image_generation_options": {"max_images": 3},
    }
    response = _post(sim, batch)
    assert response.status_code == 200
    body = response.json()
    first, *rest = body["data"]
    assert set(first) == {"error"}
    assert first["error"]["code"] == "OutputImageSensitiveContentDetected"
    assert [set(item) for item in rest] == [{"url", "size"}] * 2
    assert body["usage"]["generated_images"] == 2
    # a word merely containing it is not moderated
    assert _post(sim, {**single, "prompt": "unforbiddenly"}).status_code == 200


def test_sim_injected_failures_have_arks_bodies(sim: str) -> None:
    """Faults named by the request's own prompt: the simulator is shared by the session,
    so a global ``fail_next`` could be used up by another test's leftover job."""
    limited = {"model": "seedream-4-0-250828", "prompt": fault(429, 1, retry_after=2),
               "size": "1280x720"}  # fmt: skip
    # a request with a bad key is answered 401 and does not use up the fault
    assert _post(sim, limited, {"Authorization": "Bearer wrong"}).status_code == 401
    response = _post(sim, limited)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "2"
    err = _error(response)
    assert (err["code"], err["type"]) == (
        "RateLimitExceeded.EndpointRPMExceeded",
        "TooManyRequests",
    )
    assert _post(sim, limited).status_code == 200
    broken = {**limited, "prompt": fault(500, 1)}
    response = _post(sim, broken)
    assert response.status_code == 500
    assert "Retry-After" not in response.headers
    assert (_error(response)["code"], _error(response)["type"]) == (
        "InternalServiceError",
        "InternalServerError",
    )
    body = {**limited, "prompt": "x"}
    _config(sim, failure_rate=1.0)
    assert _post(sim, body).status_code == 500


def test_sim_watermark_seed_and_output_format(sim: str) -> None:
    base = {"model": "seedream-5-0-260128", "prompt": "x", "size": "2560x1440", "seed": 5}

    def picture(**extra) -> Image.Image:
        body = {**base, "response_format": "b64_json", **extra}
        (item,) = _post(sim, body).json()["data"]
        assert set(item) == {"b64_json", "size"}
        return _open(base64.b64decode(item["b64_json"]))

    stamped = picture()  # watermark defaults to true
    assert stamped.format == "JPEG"
    corner, centre = stamped.getpixel((2560 - 20, 1440 - 20)), stamped.getpixel((100, 100))
    assert corner != centre
    plain = picture(watermark=False, output_format="png")
    assert plain.format == "PNG"
    assert plain.getpixel((2560 - 20, 1440 - 20)) == plain.getpixel((100, 100))
    assert plain.getpixel((100, 100)) == picture(watermark=False, output_format="png").getpixel(
        (100, 100)
    )  # same seed, same colour
    # 4.0 ignores output_format and answers JPEG
    old = picture(model="seedream-4-0-250828", output_format="png")
    assert old.format == "JPEG"


def test_sim_result_urls_expire_after_result_ttl(sim: str) -> None:
    _config(sim, result_ttl=0.3)
    (item,) = _post(sim, {"model": "seedream-4-0-250828", "prompt": "x"}).json()["data"]
    assert requests.get(item["url"], timeout=10).status_code == 200
    time.sleep(0.5)
    gone = requests.get(item["url"], timeout=10)
    assert gone.status_code == 404
    assert "NoSuchKey" in gone.text
    assert requests.get(f"{sim}/files/nothing.jpeg", timeout=10).status_code == 404


def test_sim_control_endpoints(sim: str) -> None:
    assert requests.get(f"{sim}/_sim/health", timeout=5).json() == {"ok": True, "provider": "ark"}
    _config(sim, latency=0.01, drop_images=2)
    config = requests.get(f"{sim}/_sim/config", timeout=5).json()
    assert (config["latency"], config["drop_images"], config["api_key"]) == (0.01, 2, SIM_KEY)
    bad = requests.post(f"{sim}/_sim/config", json={"nope": 1}, timeout=5)
    assert bad.status_code == 400
    _post(sim, {"model": "seedream-4-0-250828", "prompt": "x", "size": "1280x720"})
    (call,) = _calls(sim)
    assert call["json"]["prompt"] == "x" and call["status"] == 200
    assert "Authorization" not in call["headers"]
    assert requests.delete(f"{sim}/_sim/requests", timeout=5).json()["cleared"] == 1
    assert _calls(sim) == []
    requests.post(f"{sim}/_sim/reset", timeout=5).raise_for_status()
    config = requests.get(f"{sim}/_sim/config", timeout=5).json()
    assert (config["latency"], config["drop_images"]) == (0.0, 0)


def test_sim_non_json_body_is_a_400(sim: str) -> None:
    response = requests.post(
        f"{sim}{API_PATH}/images/generations",
        data=b"{not json",
        headers={**AUTH, "Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 400
    assert _error(response)["code"] == "InvalidParameter"
    assert _calls(sim)[0]["raw_body"] == "{not json"
