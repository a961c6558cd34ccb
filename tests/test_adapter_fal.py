"""The fal adapter against the fal queue simulator (a real subprocess over HTTP),
and the simulator's own queue state machine."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from PIL import Image

from shared.catalog import Model, load_catalog
from shared.errors import DeadlineExceeded, InvalidRequest, UpstreamError
from tests.conftest import SIM_KEY, start_simulator
from tests.support.peers import SlowPeer
from workers.adapters import fal
from workers.adapters.base import CallContext, ImageRequest, ImageResult
from workers.http import UpstreamHTTP

CATALOG = load_catalog()
FAMILY = CATALOG.families["fal"]
ZIMAGE = CATALOG.models["zhipu/z-image-turbo"]
HUNYUAN = CATALOG.models["tencent/hunyuan-image-3"]
# An image-to-image app of the same model, to exercise the `image` field.
ZIMAGE_I2I = dataclasses.replace(
    ZIMAGE,
    id="test/z-image-turbo-i2i",
    upstream="fal-ai/z-image/turbo/image-to-image",
    params=ZIMAGE.params | {"image"},
    options=MappingProxyType({"image_field": "image_url", "input": {"strength": 0.7}}),
)
AUTH = {"Authorization": f"Key {SIM_KEY}"}
MAX_BYTES = 20 * 1024 * 1024


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_simulator(Path(tmp_path_factory.mktemp("fal-sim")), "fal")
    yield url
    proc.stop()


@pytest.fixture(autouse=True)
def _reset(sim: str, monkeypatch: pytest.MonkeyPatch) -> None:
    requests.post(f"{sim}/_sim/reset", timeout=5).raise_for_status()
    monkeypatch.setattr(fal, "POLL_INTERVAL", 0.05)
    monkeypatch.setattr(fal, "MAX_POLL_INTERVAL", 0.1)


def budget_for(sim: str, least: float) -> float:
    """A deadline budget of at least ``least`` seconds, longer on a machine too loaded
    for it: ten round trips to the simulator, as measured now."""
    started = time.monotonic()
    requests.get(f"{sim}/_sim/config", timeout=10).raise_for_status()
    return max(least, 10 * (time.monotonic() - started))


def _ctx(sim: str, *, budget: float = 20.0, key: str | None = SIM_KEY) -> CallContext:
    deadline = time.time() + budget
    return CallContext(
        family=FAMILY,
        base_url=sim + urlsplit(FAMILY.base_url).path.rstrip("/"),
        api_key=key,
        http=UpstreamHTTP(
            session=requests.Session(),
            deadline=deadline,
            provider="fal",
            max_retries=2,
            backoff_base=0.05,
        ),
        deadline=deadline,
    )


def _request(model: Model = ZIMAGE, **fields: Any) -> ImageRequest:
    values: dict[str, Any] = {
        "prompt": "a lighthouse at dusk",
        "model": model,
        "n": 1,
        "width": 1024,
        "height": 768,
    }
    values.update(fields)
    return ImageRequest(**values)


def _generate(sim: str, request: ImageRequest, **ctx: Any) -> ImageResult:
    return fal.FalAdapter().generate(request, _ctx(sim, **ctx))


def _config(sim: str, **changes: Any) -> None:
    requests.post(f"{sim}/_sim/config", json=changes, timeout=5).raise_for_status()


def _calls(sim: str, kind: str | None = None) -> list[dict[str, Any]]:
    calls = requests.get(f"{sim}/_sim/requests", timeout=5).json()
    return [c for c in calls if kind is None or c["kind"] == kind]


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _download(sim: str, url: str) -> Image.Image:
    data, _ = _ctx(sim).http.download(url, max_bytes=MAX_BYTES)
    return _open(data)


# -- success ------------------------------------------------------------------------


def test_n1_sends_fal_input_polls_returned_urls_and_yields_a_real_image(sim: str) -> None:
    result = _generate(sim, _request(seed=7, output_format="png"))

    assert len(result.images) == 1
    image = result.images[0]
    assert image.data is None and image.url and image.url.startswith(f"{sim}/files/")
    picture = _download(sim, image.url)
    assert (picture.format, picture.size) == ("PNG", (1024, 768))

    [submit] = _calls(sim, "submit")
    assert submit["path"] == "/fal-ai/z-image/turbo"
    assert submit["status"] == 200
    assert submit["json"] == {
        "prompt": "a lighthouse at dusk",
        "num_images": 1,
        "image_size": {"width": 1024, "height": 768},
        "seed": 7,
        "output_format": "png",
        "enable_safety_checker": True,
        "sync_mode": False,
    }
    assert 15 <= int(submit["headers"]["X-Fal-Request-Timeout"]) <= 20
    rid = submit["id"]
    assert result.upstream_request_id == rid
    # The queue URLs the simulator returned leave the subpath out, like fal's.
    polls = _calls(sim, "status")
    assert polls and {p["path"] for p in polls} == {f"/fal-ai/z-image/requests/{rid}/status"}
    assert [p["status"] for p in polls][-1] == 200
    assert [c["path"] for c in _calls(sim, "result")] == [f"/fal-ai/z-image/requests/{rid}"]
    assert _calls(sim, "cancel") == []


def test_hunyuan_jpeg_at_its_app_path(sim: str) -> None:
    result = _generate(sim, _request(HUNYUAN, width=1536, height=1024, output_format="jpeg"))
    picture = _download(sim, result.images[0].url)
    assert (picture.format, picture.size) == ("JPEG", (1536, 1024))
    [submit] = _calls(sim, "submit")
    assert submit["path"] == "/fal-ai/hunyuan-image/v3/text-to-image"
    assert submit["json"]["output_format"] == "jpeg"
    assert "seed" not in submit["json"]
    assert {p["path"] for p in _calls(sim, "status")} == {
        f"/fal-ai/hunyuan-image/requests/{submit['id']}/status"
    }


def test_polls_until_completed_through_queue_and_progress(sim: str) -> None:
    _config(sim, poll_steps=3)
    result = _generate(sim, _request())
    assert len(result.images) == 1
    assert [p["status"] for p in _calls(sim, "status")] == [202, 202, 202, 200]


def test_aspect_ratio_models_get_the_fal_preset(sim: str) -> None:
    result = _generate(sim, _request(width=None, height=None, aspect_ratio="16:9"))
    assert _calls(sim, "submit")[0]["json"]["image_size"] == "landscape_16_9"
    assert _download(sim, result.images[0].url).size == (1024, 576)


def test_n3_is_one_native_batch(sim: str) -> None:
    result = _generate(sim, _request(n=3, width=512, height=512))
    [submit] = _calls(sim, "submit")
    assert submit["json"]["num_images"] == 3
    assert len(result.images) == 3
    colours = {_download(sim, img.url).convert("RGB").getpixel((0, 0)) for img in result.images}
    assert len(colours) == 3


def test_fixed_model_inputs_from_options_are_sent(sim: str) -> None:
    model = dataclasses.replace(
        ZIMAGE, options=MappingProxyType({"input": {"num_inference_steps": 4}})
    )
    _generate(sim, _request(model))
    assert _calls(sim, "submit")[0]["json"]["num_inference_steps"] == 4


# -- partial results and moderation -----------------------------------------------------


def test_fewer_images_than_asked_is_a_partial_success(sim: str) -> None:
    _config(sim, drop_images=1)
    result = _generate(sim, _request(n=3, width=256, height=256))
    assert len(result.images) == 2
    assert _calls(sim, "submit")[0]["json"]["num_images"] == 3


def test_an_nsfw_flagged_image_is_dropped(sim: str) -> None:
    result = _generate(sim, _request(prompt="a risque scene", n=2, width=256, height=256))
    assert len(result.images) == 1
    kept = _download(sim, result.images[0].url).convert("RGB").getpixel((0, 0))
    assert kept != (0, 0, 0)  # the simulator blacks out the flagged one


def test_every_image_flagged_is_a_content_policy_violation(sim: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        _generate(sim, _request(prompt="something forbidden", n=2))
    assert info.value.code == "content_policy_violation"
    rid = _calls(sim, "submit")[0]["id"]
    assert info.value.headers["x-upstream-request-id"] == rid


# -- transport faults --------------------------------------------------------------------


def test_5xx_is_retried_then_succeeds(sim: str) -> None:
    _config(sim, fail_next=2, fail_status=500)
    result = _generate(sim, _request())
    assert len(result.images) == 1
    assert [c["status"] for c in _calls(sim, "submit")] == [500, 500, 200]


def test_5xx_exhausted_is_an_upstream_error_with_the_request_id(sim: str) -> None:
    _config(sim, fail_next=10, fail_status=503)
    with pytest.raises(UpstreamError) as info:
        _generate(sim, _request())
    submits = _calls(sim, "submit")
    assert [c["status"] for c in submits] == [503, 503, 503]
    assert info.value.code == "runner_scheduling_failure"
    assert info.value.headers["x-upstream-request-id"] == submits[-1]["id"]
    assert _calls(sim, "status") == [] and _calls(sim, "cancel") == []


def test_429_retry_after_is_honoured(sim: str) -> None:
    _config(sim, fail_next=1, fail_status=429, retry_after=0.6)
    result = _generate(sim, _request())
    assert len(result.images) == 1
    first, second = _calls(sim, "submit")
    assert (first["status"], second["status"]) == (429, 200)
    assert second["time"] - first["time"] >= 0.55


def test_wrong_key_is_upstream_auth_failed(sim: str) -> None:
    with pytest.raises(UpstreamError) as info:
        _generate(sim, _request(), key="not-the-key")
    assert info.value.code == "upstream_auth_failed"
    assert [c["status"] for c in _calls(sim, "submit")] == [401]


def test_malformed_json_output_is_an_upstream_error(sim: str) -> None:
    with pytest.raises(UpstreamError) as info:
        _generate(sim, _request(prompt="a garbled answer"))
    assert info.value.code == "upstream_malformed_response"


def test_a_failed_run_is_an_upstream_error_fetched_once(sim: str) -> None:
    with pytest.raises(UpstreamError) as info:
        _generate(sim, _request(prompt="make it crash"))
    assert info.value.code == "runner_server_error"
    results = _calls(sim, "result")
    assert [r["status"] for r in results] == [500]  # a failed run is not retried
    assert info.value.headers["x-upstream-request-id"] == _calls(sim, "submit")[0]["id"]
    assert _calls(sim, "cancel") == []


# -- validation -------------------------------------------------------------------------


def test_upstream_validation_error_is_invalid_request_with_message_and_param(sim: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        _generate(sim, _request(seed=-5))
    err = info.value
    assert "greater than or equal to 0" in err.message
    assert err.param == "seed"
    assert err.code != "content_policy_violation"
    assert [r["status"] for r in _calls(sim, "result")] == [422]


def test_upstream_field_names_map_back_to_client_params(sim: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        _generate(sim, _request(ZIMAGE_I2I, image="not a url"))
    assert info.value.param == "image"
    assert "valid URL" in info.value.message


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"quality": "hd"}, "quality"),
        ({"style": "vivid"}, "style"),
        ({"background": "transparent"}, "background"),
        ({"user": "u-1"}, "user"),
        ({"extra": {"output_compression": 50}}, "output_compression"),
        ({"extra": {"moderation": "low"}}, "moderation"),
        ({"model": HUNYUAN, "image": "https://example.com/ref.png"}, "image"),
        ({"width": None, "height": None, "aspect_ratio": "2:1"}, "aspect_ratio"),
        ({"output_format": "webp"}, "output_format"),
        ({"n": 5}, "n"),
    ],
)
def test_unsupported_parameters_are_rejected_by_name(
    sim: str, fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        _generate(sim, _request(**fields))
    assert info.value.param == param
    assert _calls(sim) == []  # nothing reached fal


def test_reference_image_reaches_fal_as_image_url(sim: str) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, "PNG")
    data_url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    result = _generate(sim, _request(ZIMAGE_I2I, image=data_url))
    assert len(result.images) == 1
    [submit] = _calls(sim, "submit")
    assert submit["path"] == "/fal-ai/z-image/turbo/image-to-image"
    assert submit["json"]["image_url"] == data_url
    assert submit["json"]["strength"] == 0.7
    # The subpath is not part of the queue URLs.
    assert _calls(sim, "status")[0]["path"].startswith("/fal-ai/z-image/requests/")


def test_data_uri_images_are_decoded_and_flags_align_by_index() -> None:
    png = io.BytesIO()
    Image.new("RGB", (4, 2), (1, 2, 3)).save(png, "PNG")
    data_url = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
    payload = {
        "images": [{"url": "https://cdn.example/a.png"}, {"url": data_url}],
        "has_nsfw_concepts": [True],  # shorter than images: the rest count as clean
        "prompt": "an expanded prompt",
    }
    result = fal._result(payload, "rid-1", "a prompt")
    [image] = result.images
    assert _open(image.data).size == (4, 2)
    assert image.revised_prompt == "an expanded prompt"
    with pytest.raises(UpstreamError):
        fal._result({"images": [{"url": "data:image/png;base64,@@@"}]}, "rid-1", "p")


@pytest.mark.parametrize(
    ("status", "kind", "code"),
    [
        ({"error": "Invalid status code: 422"}, InvalidRequest, "upstream_rejected"),
        ({"error": "x", "error_type": "content_policy_violation"}, InvalidRequest,
         "content_policy_violation"),
        ({"error": "boom", "error_type": "runner_disconnected"}, UpstreamError,
         "runner_disconnected"),
        ({"status": "FAILED"}, UpstreamError, "upstream_failed"),
    ],
)  # fmt: skip
def test_a_failed_run_whose_result_says_nothing_is_judged_by_its_status(
    status: dict[str, Any], kind: type[Exception], code: str
) -> None:
    err = fal._run_failure(status, "rid-2")
    assert type(err) is kind and err.code == code
    assert err.headers["x-upstream-request-id"] == "rid-2"


# -- the key goes only to fal's own site -----------------------------------------------------


def test_queue_urls_on_another_host_never_get_the_key(sim: str) -> None:
    """A submission answer naming another host (here "localhost", a loopback name that is
    not the base URL's) for its status/response/cancel URLs: the key is not sent there;
    the documented URLs on fal's own origin are used instead."""
    thief = SlowPeer("error").start()
    try:
        elsewhere = f"http://localhost:{thief.port}/steal"
        ctx = _ctx(sim)

        def point_elsewhere(response: requests.Response, *args: Any, **kwargs: Any) -> None:
            if response.request.method == "POST" and response.ok:
                body = response.json()
                for name in ("status_url", "response_url", "cancel_url"):
                    body[name] = f"{elsewhere}/{name}"
                response._content = json.dumps(body).encode()

        ctx.http.session.hooks["response"].append(point_elsewhere)
        result = fal.FalAdapter().generate(_request(), ctx)
    finally:
        thief.stop()
    assert thief.requests == []
    assert len(result.images) == 1
    rid = _calls(sim, "submit")[0]["id"]
    assert {p["path"] for p in _calls(sim, "status")} == {f"/fal-ai/z-image/requests/{rid}/status"}


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://queue.fal.run/fal-ai/x/requests/1/status", True),
        ("https://queue.fal.run:443/fal-ai/x/requests/1", True),
        ("https://QUEUE.fal.run/x", True),
        ("http://queue.fal.run/x", False),  # the key in clear text
        ("https://queue.fal.run:8443/x", False),
        ("https://rest.fal.run/x", False),
        ("https://queue.fal.run.example.com/x", False),
        ("https://example.com/?https://queue.fal.run", False),
        ("https://user@example.com:443@queue.fal.run/x", True),  # its host is queue.fal.run
        ("https://queue.fal.run:bad/x", False),
        ("ftp://queue.fal.run/x", False),
        ("/relative", False),
    ],
)
def test_same_origin(url: str, ok: bool) -> None:
    assert fal.same_origin(url, "https://queue.fal.run") is ok


# -- deadline and result lifetime ---------------------------------------------------------


def test_deadline_cancels_the_request_and_raises(sim: str) -> None:
    budget = budget_for(sim, 1.0)
    _config(sim, latency=5 * budget)
    with pytest.raises(DeadlineExceeded):
        _generate(sim, _request(), budget=budget)
    [submit] = _calls(sim, "submit")
    [cancel] = _calls(sim, "cancel")
    assert cancel["method"] == "PUT"
    assert cancel["path"] == f"/fal-ai/z-image/requests/{submit['id']}/cancel"
    assert cancel["status"] == 202
    assert _calls(sim, "result") == []
    status = requests.get(f"{sim}{cancel['path'][: -len('/cancel')]}/status", headers=AUTH)
    assert status.json()["status"] == "COMPLETED"
    assert status.json()["error_type"] == "client_cancelled"


def test_expired_result_url_fails_the_download(sim: str) -> None:
    _config(sim, result_ttl=0.3)
    result = _generate(sim, _request(width=256, height=256))
    time.sleep(0.5)
    with pytest.raises(UpstreamError) as info:
        _ctx(sim).http.download(result.images[0].url, max_bytes=MAX_BYTES)
    assert "404" in info.value.message


# -- the simulator's protocol ---------------------------------------------------------------


def _submit(sim: str, body: Any, path: str = "fal-ai/z-image/turbo", **headers: str):
    return requests.post(f"{sim}/{path}", json=body, headers={**AUTH, **headers}, timeout=5)


def test_sim_queue_state_machine(sim: str) -> None:
    _config(sim, poll_steps=2)
    answer = _submit(sim, {"prompt": "a cat", "image_size": "square"})
    assert answer.status_code == 200
    job = answer.json()
    rid = job["request_id"]
    assert answer.headers["x-fal-request-id"] == rid
    assert job["status"] == "IN_QUEUE" and job["queue_position"] == 0
    base = f"{sim}/fal-ai/z-image/requests/{rid}"
    assert (job["status_url"], job["response_url"], job["cancel_url"]) == (
        f"{base}/status",
        base,
        f"{base}/cancel",
    )

    early = requests.get(job["response_url"], headers=AUTH, timeout=5)
    assert early.status_code == 400 and "in progress" in early.json()["detail"]

    seen = []
    for _ in range(3):
        r = requests.get(job["status_url"], params={"logs": 1}, headers=AUTH, timeout=5)
        assert r.headers["x-fal-request-id"] == rid
        seen.append((r.status_code, r.json()["status"]))
    assert seen == [(202, "IN_QUEUE"), (202, "IN_PROGRESS"), (200, "COMPLETED")]

    output = requests.get(job["response_url"], headers=AUTH, timeout=5).json()
    assert output["prompt"] == "a cat" and output["has_nsfw_concepts"] == [False]
    [item] = output["images"]
    assert (item["width"], item["height"], item["content_type"]) == (512, 512, "image/png")
    assert _open(requests.get(item["url"], timeout=5).content).size == (512, 512)

    again = requests.put(job["cancel_url"], headers=AUTH, timeout=5)
    assert (again.status_code, again.json()) == (400, {"status": "ALREADY_COMPLETED"})
    missing = requests.put(f"{sim}/fal-ai/z-image/requests/nope/cancel", headers=AUTH, timeout=5)
    assert (missing.status_code, missing.json()) == (404, {"status": "NOT_FOUND"})


def test_sim_latency_keeps_a_request_in_progress(sim: str) -> None:
    latency = budget_for(sim, 0.4)  # long enough to poll once in between on this machine
    _config(sim, latency=latency, poll_steps=0)
    job = _submit(sim, {"prompt": "a cat"}).json()
    first = requests.get(job["status_url"], headers=AUTH, timeout=5).json()
    assert first["status"] == "IN_QUEUE"
    time.sleep(latency + 0.05)
    assert requests.get(job["status_url"], headers=AUTH, timeout=5).json()["status"] == (
        "COMPLETED"
    )


def test_sim_auth(sim: str) -> None:
    body = {"prompt": "a cat"}
    r = requests.post(f"{sim}/fal-ai/z-image/turbo", json=body, timeout=5)
    assert r.status_code == 401 and r.json()["detail"]
    assert _submit(sim, body, Authorization=f"Bearer {SIM_KEY}").status_code == 401
    assert _submit(sim, body, Authorization="Key wrong").status_code == 401
    job = _submit(sim, body).json()
    assert requests.get(job["status_url"], timeout=5).status_code == 401


def test_sim_validates_input_when_the_request_runs(sim: str) -> None:
    _config(sim, poll_steps=0)
    job = _submit(sim, {"num_images": 9, "colour": "red", "image_size": {"width": 0}}).json()
    status = requests.get(job["status_url"], headers=AUTH, timeout=5).json()
    assert status["status"] == "COMPLETED" and status["error"] == "Invalid status code: 422"
    r = requests.get(job["response_url"], headers=AUTH, timeout=5)
    assert r.status_code == 422
    found = {(tuple(d["loc"]), d["type"]) for d in r.json()["detail"]}
    assert found == {
        (("body", "prompt"), "missing"),
        (("body", "num_images"), "less_than_equal"),
        (("body", "colour"), "extra_forbidden"),
        (("body", "image_size", "width"), "greater_than_equal"),
    }


def test_sim_rejects_bodies_that_cannot_be_queued(sim: str) -> None:
    bad = requests.post(
        f"{sim}/fal-ai/z-image/turbo",
        data="{not json",
        headers={**AUTH, "Content-Type": "application/json"},
        timeout=5,
    )
    assert bad.status_code == 422 and bad.json()["detail"][0]["type"] == "json_invalid"
    assert _submit(sim, {"prompt": "x"}, path="fal-ai/no-such-app").status_code == 404
    timeout = _submit(sim, {"prompt": "x"}, **{"X-Fal-Request-Timeout": "1"})
    assert timeout.status_code == 400 and timeout.json()["error_type"] == "bad_request"


def test_sim_injected_failures_use_fal_bodies_and_only_hit_submissions(sim: str) -> None:
    job = _submit(sim, {"prompt": "a cat"}).json()
    _config(sim, fail_next=2, fail_status=503, retry_after=2)
    assert requests.get(job["status_url"], headers=AUTH, timeout=5).status_code == 202
    r = _submit(sim, {"prompt": "a cat"})
    assert r.status_code == 503
    assert r.json() == {
        "detail": "No runner could be allocated for the request",
        "error_type": "runner_scheduling_failure",
    }
    assert r.headers["X-Fal-Error-Type"] == "runner_scheduling_failure"
    assert r.headers["Retry-After"] == "2"
    assert r.headers["x-fal-request-id"]
    _config(sim, fail_status=429)
    limited = _submit(sim, {"prompt": "a cat"})
    assert limited.status_code == 429 and "Rate limit" in limited.json()["detail"]
    assert _submit(sim, {"prompt": "a cat"}).status_code == 200


def test_sim_sync_mode_returns_data_uris(sim: str) -> None:
    _config(sim, poll_steps=0)
    body = {"prompt": "a cat", "image_size": "portrait_16_9", "output_format": "jpeg"}
    job = _submit(sim, {**body, "sync_mode": True}).json()
    output = requests.get(job["response_url"], headers=AUTH, timeout=5).json()
    url = output["images"][0]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    picture = _open(base64.b64decode(url.partition(",")[2]))
    assert (picture.format, picture.size) == ("JPEG", (576, 1024))


def test_sim_request_timeout_header_ends_a_slow_request(sim: str) -> None:
    _config(sim, latency=5, poll_steps=0)
    job = _submit(sim, {"prompt": "a cat"}, **{"X-Fal-Request-Timeout": "1.2"}).json()
    time.sleep(1.3)
    status = requests.get(job["status_url"], headers=AUTH, timeout=5).json()
    assert (status["status"], status["error_type"]) == ("COMPLETED", "request_timeout")
    assert requests.get(job["response_url"], headers=AUTH, timeout=5).status_code == 504


def test_sim_reset_restores_config_and_clears_the_log(sim: str) -> None:
    _config(sim, latency=3, fail_next=4)
    _submit(sim, {"prompt": "a cat"})
    assert _calls(sim)
    assert requests.post(f"{sim}/_sim/config", json={"nope": 1}, timeout=5).status_code == 400
    requests.post(f"{sim}/_sim/reset", timeout=5).raise_for_status()
    config = requests.get(f"{sim}/_sim/config", timeout=5).json()
    assert (config["latency"], config["fail_next"], config["api_key"]) == (0.0, 0, SIM_KEY)
    assert _calls(sim) == []
    assert requests.get(f"{sim}/_sim/health", timeout=5).json() == {"ok": True, "provider": "fal"}
