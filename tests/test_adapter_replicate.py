"""The Replicate adapter against the Replicate simulator (a real subprocess over HTTP),
and the simulator's own predictions state machine."""

from __future__ import annotations

import base64
import dataclasses
import io
import math
import re
import time
from collections.abc import Iterator
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from PIL import Image

from shared.catalog import Model, load_catalog
from shared.errors import (
    DeadlineExceeded,
    InvalidRequest,
    ServerError,
    UpstreamError,
)
from shared.sizing import parse_size
from tests.conftest import SIM_KEY, start_simulator
from workers.adapters import replicate as replicate_adapter
from workers.adapters.base import CallContext, ImageRequest, ImageResult
from workers.adapters.replicate import ReplicateAdapter
from workers.http import UpstreamHTTP

CATALOG = load_catalog()
FAMILY = CATALOG.families["replicate"]
BASE_PATH = urlsplit(FAMILY.base_url).path.rstrip("/")  # "/v1"
AUTH = {"Authorization": f"Bearer {SIM_KEY}"}
MAX_BYTES = 20_000_000

SDXL_VERSION = "7762fd07cf82c948538e41f63f77d685e02b063e37e496e96eefd46c929f9bdc"
# Every Replicate model of the shipped catalog; each runs against the simulator
# with its catalog entry exactly as shipped (upstream and options).
REPLICATE_MODELS = (
    "black-forest-labs/FLUX.1-schnell",
    "flux-dev",
    "flux-pro",
    "flux-schnell",
    "ideogram-v3",
    "imagen-3",
    "playground-v2.5",
    "sd-3.5-large",
    "sd-3.5-turbo",
    "sdxl",
)


# -- fixtures and helpers --------------------------------------------------------------


@pytest.fixture(scope="module")
def sim_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_simulator(tmp_path_factory.mktemp("replicate-sim"), "replicate")
    yield url
    proc.stop()


@pytest.fixture(autouse=True)
def sim(sim_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    requests.post(f"{sim_url}/_sim/reset", timeout=5).raise_for_status()
    monkeypatch.setattr(replicate_adapter, "POLL_INTERVAL", 0.05)
    return sim_url


def configure(sim: str, **changes: Any) -> None:
    requests.post(f"{sim}/_sim/config", json=changes, timeout=5).raise_for_status()


def calls(sim: str, method: str | None = None, suffix: str = "") -> list[dict[str, Any]]:
    entries = requests.get(f"{sim}/_sim/requests", timeout=5).json()
    return [
        e
        for e in entries
        if (method is None or e["method"] == method) and e["path"].endswith(suffix)
    ]


def creates(sim: str) -> list[dict[str, Any]]:
    return calls(sim, "POST", "/predictions")


def model(model_id: str, **options: Any) -> Model:
    """The catalog's model, with ``options`` changed for one test."""
    base = CATALOG.models[model_id]
    return dataclasses.replace(base, options=MappingProxyType({**base.options, **options}))


def image_request(
    model_id: str,
    *,
    n: int = 1,
    size: str | None = "1024x1024",
    aspect_ratio: str | None = None,
    prompt: str = "a lighthouse at dusk",
    model_obj: Model | None = None,
    **fields: Any,
) -> ImageRequest:
    """Like the pipeline's build_request: the size clamped by the model's catalog rule."""
    m = model_obj or model(model_id)
    decision = m.size_rule.clamp(parse_size(size) if size else None, aspect_ratio, m.default_size)
    return ImageRequest(
        prompt=prompt,
        model=m,
        n=n,
        width=decision.size.width if decision.size else None,
        height=decision.size.height if decision.size else None,
        aspect_ratio=decision.aspect_ratio,
        **fields,
    )


def budget_for(sim: str, least: float) -> float:
    """A deadline budget of at least ``least`` seconds, longer on a machine too loaded
    for it: ten round trips to the simulator, as measured now."""
    started = time.monotonic()
    requests.get(f"{sim}/_sim/config", timeout=10).raise_for_status()
    return max(least, 10 * (time.monotonic() - started))


def context(sim: str, *, budget: float = 10.0, key: str = SIM_KEY, retries: int = 2) -> CallContext:
    deadline = time.time() + budget
    http = UpstreamHTTP(
        session=requests.Session(),
        deadline=deadline,
        provider="replicate",
        max_retries=retries,
        backoff_base=0.05,
    )
    return CallContext(
        family=FAMILY, base_url=sim + BASE_PATH, api_key=key, http=http, deadline=deadline
    )


def generate(sim: str, request: ImageRequest, **ctx_kw: Any) -> tuple[ImageResult, CallContext]:
    ctx = context(sim, **ctx_kw)
    return ReplicateAdapter().generate(request, ctx), ctx


def fetch(ctx: CallContext, url: str) -> Image.Image:
    data, _ = ctx.http.download(url, max_bytes=MAX_BYTES)
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def prediction(sim: str, pred_id: str) -> dict[str, Any]:
    r = requests.get(f"{sim}/v1/predictions/{pred_id}", headers=AUTH, timeout=5)
    r.raise_for_status()
    return r.json()


# -- success -----------------------------------------------------------------------


def test_flux_schnell_n1_finishes_in_the_one_prefer_wait_call(sim: str) -> None:
    configure(sim, poll_steps=0)
    result, ctx = generate(sim, image_request("flux-schnell", size="1792x1024"))

    assert len(result.images) == 1
    image = fetch(ctx, result.images[0].url)
    assert (image.format, image.size) == ("WEBP", (1344, 768))  # 16:9 at ~1 MP
    [create] = calls(sim)  # no poll was needed
    assert create["method"] == "POST"
    assert create["path"] == "/v1/models/black-forest-labs/flux-schnell/predictions"
    assert create["status"] == 201
    assert create["json"] == {
        "input": {"prompt": "a lighthouse at dusk", "aspect_ratio": "16:9", "num_outputs": 1}
    }
    assert re.fullmatch(r"wait=([1-9]|[1-5][0-9]|60)", create["headers"]["Prefer"])
    assert int(create["headers"]["Prefer"].split("=")[1]) <= 9  # one second short of 10 s
    assert create["headers"]["Cancel-After"] in ("9s", "10s")  # the time left, rounded up
    assert create["auth_present"]
    assert prediction(sim, result.upstream_request_id)["status"] == "succeeded"


def test_a_slow_prediction_is_polled_until_it_succeeds(sim: str) -> None:
    configure(sim, poll_steps=2)
    result, ctx = generate(sim, image_request("flux-dev"))

    assert len(result.images) == 1
    assert fetch(ctx, result.images[0].url).size == (1024, 1024)
    polls = calls(sim, "GET")
    assert len(polls) == 3  # processing, processing, succeeded
    assert all(p["path"] == f"/v1/predictions/{result.upstream_request_id}" for p in polls)


def test_sdxl_is_a_version_with_width_and_height(sim: str) -> None:
    result, ctx = generate(sim, image_request("sdxl", n=2, size="1792x1024", seed=5))

    [create] = creates(sim)
    assert create["path"] == "/v1/predictions"
    assert create["json"] == {
        "version": SDXL_VERSION,
        "input": {
            "prompt": "a lighthouse at dusk",
            "width": 1536,
            "height": 880,
            "num_outputs": 2,
            "seed": 5,
        },
    }
    assert len(result.images) == 2
    for image in (fetch(ctx, i.url) for i in result.images):
        assert (image.format, image.size) == ("PNG", (1536, 880))


def test_flux_pro_sends_a_custom_size(sim: str) -> None:
    result, ctx = generate(sim, image_request("flux-pro", size="1792x1024"))

    [create] = creates(sim)
    assert create["json"]["input"] == {
        "prompt": "a lighthouse at dusk",
        "aspect_ratio": "custom",
        "width": 1440,
        "height": 832,
    }
    assert fetch(ctx, result.images[0].url).size == (1440, 832)


def test_output_format_jpeg_is_sent_as_jpg(sim: str) -> None:
    result, ctx = generate(sim, image_request("flux-schnell", output_format="jpeg"))

    assert creates(sim)[0]["json"]["input"]["output_format"] == "jpg"
    assert fetch(ctx, result.images[0].url).format == "JPEG"


@pytest.mark.parametrize("model_id", REPLICATE_MODELS)
def test_every_catalog_model_runs_against_the_simulator(sim: str, model_id: str) -> None:
    """The catalog entry, as shipped, speaks what the upstream accepts."""
    assert CATALOG.models[model_id].family == "replicate"
    result, ctx = generate(sim, image_request(model_id, size="1024x1792"))

    assert len(result.images) == 1
    image = fetch(ctx, result.images[0].url)
    assert image.height > image.width  # portrait asked, portrait made
    [create] = creates(sim)
    assert create["status"] == 201


def test_the_catalog_lists_exactly_these_replicate_models() -> None:
    listed = {m.id for m in CATALOG.models.values() if m.family == "replicate"}
    assert listed == set(REPLICATE_MODELS)


# -- n > 1 ---------------------------------------------------------------------------


def test_native_batch_is_one_prediction(sim: str) -> None:
    result, ctx = generate(sim, image_request("flux-dev", n=3, aspect_ratio="4:3"))

    [create] = creates(sim)
    assert create["json"]["input"]["num_outputs"] == 3
    assert create["json"]["input"]["aspect_ratio"] == "4:3"
    assert len({i.url for i in result.images}) == 3
    assert {fetch(ctx, i.url).size for i in result.images} == {(1152, 896)}


def test_models_without_a_count_field_fan_out(sim: str) -> None:
    result, _ = generate(sim, image_request("imagen-3", n=3, aspect_ratio="16:9"))

    posted = creates(sim)
    assert len(posted) == 3
    assert all(p["path"] == "/v1/models/google/imagen-3/predictions" for p in posted)
    assert all(p["json"] == {"input": {"prompt": "a lighthouse at dusk", "aspect_ratio": "16:9"}}
               for p in posted)  # fmt: skip
    assert len(result.images) == 3
    assert len(result.upstream_request_id.split(",")) == 3


def test_fan_out_gives_each_prediction_its_own_seed(sim: str) -> None:
    generate(sim, image_request("sd-3.5-large", n=2, seed=7))

    assert sorted(p["json"]["input"]["seed"] for p in creates(sim)) == [7, 8]


def test_n_above_the_count_limit_is_rejected_naming_n(sim: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        generate(sim, image_request("flux-schnell", n=5))
    assert info.value.param == "n"
    assert calls(sim) == []


# -- partial results ------------------------------------------------------------------


def test_a_batch_with_a_dropped_image_is_a_partial_result(sim: str) -> None:
    configure(sim, drop_images=1)
    result, _ = generate(sim, image_request("flux-schnell", n=3))

    assert len(result.images) == 2
    assert creates(sim)[0]["json"]["input"]["num_outputs"] == 3


def test_one_failed_prediction_of_a_fan_out_is_a_partial_result(sim: str) -> None:
    configure(sim, fail_next=1, fail_status=400)
    result, _ = generate(sim, image_request("imagen-3", n=3))

    assert len(result.images) == 2
    assert sorted(p["status"] for p in creates(sim)) == [201, 201, 400]


# -- failures -----------------------------------------------------------------------


def test_5xx_is_retried_then_succeeds(sim: str) -> None:
    configure(sim, fail_next=2)
    result, _ = generate(sim, image_request("flux-schnell"))

    assert len(result.images) == 1
    assert [p["status"] for p in creates(sim)] == [500, 500, 201]


def test_5xx_exhausted_is_an_upstream_error_with_the_request_id(sim: str) -> None:
    configure(sim, fail_next=10, fail_status=503)
    with pytest.raises(UpstreamError) as info:
        generate(sim, image_request("flux-schnell"))

    posted = creates(sim)
    assert [p["status"] for p in posted] == [503, 503, 503]
    assert info.value.headers["x-upstream-request-id"] == posted[-1]["id"]
    assert "503" in info.value.message


def test_429_retry_after_is_honoured(sim: str) -> None:
    configure(sim, fail_next=1, fail_status=429, retry_after=0.4)
    result, _ = generate(sim, image_request("flux-schnell"))

    assert len(result.images) == 1
    first, second = creates(sim)
    assert (first["status"], second["status"]) == (429, 201)
    assert second["time"] - first["time"] >= 0.35


def test_429_exhausted_is_upstream_rate_limited(sim: str) -> None:
    configure(sim, fail_next=5, fail_status=429)
    with pytest.raises(UpstreamError) as info:
        generate(sim, image_request("flux-schnell"), retries=1)
    assert info.value.code == "upstream_rate_limited"


def test_wrong_key_is_upstream_auth_failed(sim: str) -> None:
    with pytest.raises(UpstreamError) as info:
        generate(sim, image_request("flux-schnell"), key="r8_wrong")
    assert info.value.code == "upstream_auth_failed"
    assert [p["status"] for p in creates(sim)] == [401]


def test_upstream_validation_error_is_invalid_request_with_its_message(sim: str) -> None:
    request = dataclasses.replace(image_request("flux-dev"), aspect_ratio="7:3")
    with pytest.raises(InvalidRequest) as info:
        generate(sim, request)

    assert info.value.param == "aspect_ratio"
    assert "input.aspect_ratio must be one of the following" in info.value.message
    assert [p["status"] for p in creates(sim)] == [422]


def test_upstream_count_limit_maps_back_to_n(sim: str) -> None:
    m = model("sdxl", max_count=8)  # a catalog entry claiming more than sdxl takes
    with pytest.raises(InvalidRequest) as info:
        generate(sim, image_request("sdxl", n=6, model_obj=m))
    assert info.value.param == "n"
    assert "Must be less than or equal to 4" in info.value.message


@pytest.mark.parametrize(("model_id", "n"), [("flux-schnell", 2), ("imagen-3", 2)])
def test_moderation_is_content_policy_violation(sim: str, model_id: str, n: int) -> None:
    with pytest.raises(InvalidRequest) as info:
        generate(sim, image_request(model_id, n=n, prompt="something forbidden"))

    assert info.value.code == "content_policy_violation"
    pred_id = info.value.headers["x-upstream-request-id"]
    assert prediction(sim, pred_id)["status"] == "failed"


def test_a_failed_prediction_is_an_upstream_error(sim: str) -> None:
    request = dataclasses.replace(image_request("sdxl"), width=1001)  # not a multiple of 8
    with pytest.raises(UpstreamError) as info:
        generate(sim, request)

    assert info.value.code == "upstream_prediction_failed"
    assert "divisible by 8" in info.value.message
    assert prediction(sim, info.value.headers["x-upstream-request-id"])["status"] == "failed"


def test_the_deadline_cancels_the_prediction(sim: str) -> None:
    configure(sim, latency=30, poll_steps=0)
    budget = budget_for(sim, 3.5)
    ctx = context(sim, budget=budget)
    with pytest.raises(DeadlineExceeded):
        ReplicateAdapter().generate(image_request("flux-schnell"), ctx)

    [create] = creates(sim)
    # What the adapter saw left at the create lies between what the simulator saw
    # left when it arrived and the whole budget: hold one second short of it, and
    # let Replicate cancel by itself when it ends.
    left = ctx.deadline - create["time"]
    wait = int(create["headers"]["Prefer"].removeprefix("wait="))
    assert math.floor(left - 1) <= wait <= math.floor(budget - 1)
    cancel_after = int(create["headers"]["Cancel-After"].removesuffix("s"))
    assert math.ceil(left) <= cancel_after <= math.ceil(budget)
    [cancel] = calls(sim, "POST", "/cancel")
    assert cancel["status"] == 200
    pred_id = cancel["path"].split("/")[-2]
    assert prediction(sim, pred_id)["status"] == "canceled"
    assert len(calls(sim, "GET")) >= 1  # it polled before giving up


def test_an_expired_result_url_is_an_upstream_error(sim: str) -> None:
    ttl = budget_for(sim, 0.5)
    configure(sim, result_ttl=ttl)
    result, ctx = generate(sim, image_request("flux-schnell"))
    url = result.images[0].url
    assert fetch(ctx, url).size == (1024, 1024)  # fine at once

    time.sleep(ttl + 0.1)
    with pytest.raises(UpstreamError) as info:
        ctx.http.download(url, max_bytes=MAX_BYTES)
    assert "404" in info.value.message
    gone = prediction(sim, result.upstream_request_id)
    assert (gone["output"], gone["data_removed"]) == (None, True)


def test_a_malformed_json_body_is_an_upstream_error(sim: str) -> None:
    requests.post(f"{sim}/_sim/malformed", json={"next": 1}, timeout=5).raise_for_status()
    with pytest.raises(UpstreamError) as info:
        generate(sim, image_request("flux-schnell"))
    assert info.value.code == "upstream_malformed_response"


# -- parameters -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_id", "fields", "param"),
    [
        ("flux-schnell", {"quality": "hd"}, "quality"),
        ("flux-schnell", {"style": "vivid"}, "style"),
        ("imagen-3", {"seed": 3}, "seed"),
        ("sdxl", {"output_format": "png"}, "output_format"),
        ("flux-pro", {"image": "https://example.com/ref.png"}, "image"),
        ("flux-schnell", {"extra": {"output_compression": 50}}, "output_compression"),
    ],
)
def test_an_unsupported_parameter_is_rejected_by_name(
    sim: str, model_id: str, fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        generate(sim, image_request(model_id, **fields))
    assert info.value.param == param
    assert info.value.code == "unsupported_parameter"
    assert calls(sim) == []  # nothing reached the upstream


def test_flux1_schnell_ignores_the_openai_fields_its_catalog_entry_names(sim: str) -> None:
    generate(
        sim,
        image_request("black-forest-labs/FLUX.1-schnell", quality="hd", style="vivid", user="u1"),
    )
    sent = creates(sim)[0]["json"]["input"]
    assert set(sent) == {"prompt", "aspect_ratio", "num_outputs"}


@pytest.mark.parametrize(
    ("model_id", "field", "expected"),
    [
        ("flux-dev", "image", "https://example.com/ref.png"),
        ("sdxl", "image", "https://example.com/ref.png"),
        ("ideogram-v3", "style_reference_images", ["https://example.com/ref.png"]),
    ],
)
def test_the_reference_image_reaches_the_upstream(
    sim: str, model_id: str, field: str, expected: Any
) -> None:
    result, _ = generate(sim, image_request(model_id, image="https://example.com/ref.png"))
    assert creates(sim)[0]["json"]["input"][field] == expected
    assert len(result.images) == 1


def test_a_small_data_url_is_sent_and_a_large_one_refused(sim: str) -> None:
    small = "data:image/png;base64," + base64.b64encode(b"\x89PNG" + b"0" * 100).decode()
    generate(sim, image_request("flux-dev", image=small))
    assert creates(sim)[0]["json"]["input"]["image"] == small

    large = "data:image/png;base64," + "A" * (300 * 1024)
    with pytest.raises(InvalidRequest) as info:
        generate(sim, image_request("flux-dev", image=large))
    assert info.value.param == "image"
    assert len(creates(sim)) == 1


def test_bad_catalog_options_are_a_server_error(sim: str) -> None:
    m = model("flux-schnell", size_mode="pixels")
    with pytest.raises(ServerError) as info:
        generate(sim, image_request("flux-schnell", model_obj=m))
    assert info.value.code == "catalog_misconfigured"


def test_prediction_urls_off_the_base_origin_are_not_followed() -> None:
    ctx = context("http://127.0.0.1:9")
    runner = replicate_adapter._Runner(
        ctx, replicate_adapter._Target("x", None), replicate_adapter.ReplicateOptions()
    )
    own = {"urls": {"get": "http://127.0.0.1:9/v1/predictions/abc"}}
    foreign = {"urls": {"get": "https://evil.example/v1/predictions/abc"}}
    assert runner._own_url(own, "get", "/predictions/abc") == own["urls"]["get"]
    assert runner._own_url(foreign, "get", "/predictions/abc") == (
        "http://127.0.0.1:9/v1/predictions/abc"
    )


# -- the simulator's protocol ------------------------------------------------------------


def _create(
    sim: str, slug: str = "black-forest-labs/flux-schnell", headers: dict | None = None, **input_
) -> requests.Response:
    return requests.post(
        f"{sim}/v1/models/{slug}/predictions",
        json={"input": {"prompt": "a red kite", **input_}},
        headers={**AUTH, **(headers or {})},
        timeout=10,
    )


def test_sim_prediction_lifecycle(sim: str) -> None:
    configure(sim, poll_steps=1)
    created = _create(sim, num_outputs=2)
    assert created.status_code == 201
    body = created.json()
    assert body["status"] == "starting"
    assert body["version"] == "hidden"
    assert body["urls"]["get"] == f"{sim}/v1/predictions/{body['id']}"
    assert body["urls"]["cancel"] == body["urls"]["get"] + "/cancel"
    assert re.fullmatch(r"[0-9a-z]{26}", body["id"])
    assert created.headers["X-Request-Id"]

    seen = [requests.get(body["urls"]["get"], headers=AUTH, timeout=5).json() for _ in range(2)]
    assert [p["status"] for p in seen] == ["processing", "succeeded"]
    done = seen[-1]
    assert done["started_at"] and done["completed_at"] and done["metrics"]["predict_time"] >= 0
    assert len(done["output"]) == 2
    file = requests.get(done["output"][0], timeout=5)
    assert file.headers["Content-Type"] == "image/webp"
    assert Image.open(io.BytesIO(file.content)).size == (1024, 1024)


def test_sim_prefer_wait_returns_a_finished_prediction(sim: str) -> None:
    configure(sim, poll_steps=0, latency=0.2)
    started = time.monotonic()
    body = _create(sim, headers={"Prefer": "wait=5"}).json()
    assert body["status"] == "succeeded"
    assert time.monotonic() - started >= 0.2
    assert isinstance(body["output"], list)


def test_sim_single_output_models_answer_one_url(sim: str) -> None:
    configure(sim, poll_steps=0)
    body = _create(sim, "google/imagen-3", headers={"Prefer": "wait"}, aspect_ratio="9:16").json()
    assert isinstance(body["output"], str)
    image = Image.open(io.BytesIO(requests.get(body["output"], timeout=5).content))
    assert (image.format, image.size) == ("JPEG", (768, 1344))


def test_sim_cancel_and_cancel_after(sim: str) -> None:
    configure(sim, poll_steps=100)
    pred = _create(sim).json()
    canceled = requests.post(pred["urls"]["cancel"], headers=AUTH, timeout=5)
    assert (canceled.status_code, canceled.json()["status"]) == (200, "canceled")
    assert prediction(sim, pred["id"])["status"] == "canceled"  # terminal stays

    after = budget_for(sim, 0.3)  # long enough for the three calls below on this machine
    cancel_after = {"Cancel-After": f"{round(after * 1000)}ms"}
    never_started = _create(sim, headers=cancel_after).json()
    running = _create(sim, headers=cancel_after).json()
    assert never_started["deadline"] and running["status"] == "starting"
    assert prediction(sim, running["id"])["status"] == "processing"
    time.sleep(after + 0.05)
    assert prediction(sim, never_started["id"])["status"] == "aborted"
    assert prediction(sim, running["id"])["status"] == "canceled"


def test_sim_version_routes(sim: str) -> None:
    def post(version: str) -> requests.Response:
        return requests.post(
            f"{sim}/v1/predictions",
            json={"version": version, "input": {"prompt": "x"}},
            headers=AUTH,
            timeout=5,
        )

    assert post(SDXL_VERSION).status_code == 201
    assert post(f"stability-ai/sdxl:{SDXL_VERSION}").json()["version"] == SDXL_VERSION
    assert post("black-forest-labs/flux-schnell").status_code == 201  # official by name
    refused = post("stability-ai/sdxl")  # community models need a version
    assert refused.status_code == 422
    assert refused.json()["title"] == "Invalid version or not permitted"
    assert _create(sim, "stability-ai/sdxl").status_code == 404
    assert _create(sim, "nobody/nothing").json()["status"] == 404


def test_sim_validation_errors_are_rfc7807(sim: str) -> None:
    r = requests.post(
        f"{sim}/v1/models/black-forest-labs/flux-schnell/predictions",
        json={"input": {"num_outputs": 9, "aspect_ratio": "7:3", "colour": "red"}},
        headers=AUTH,
        timeout=5,
    )
    body = r.json()
    assert r.status_code == 422
    assert set(body) >= {"type", "title", "status", "detail", "instance"}
    assert (body["title"], body["status"]) == ("Input validation failed", 422)
    assert body["detail"].splitlines() == [
        "- input: prompt is required",
        '- input.num_outputs: Must be less than or equal to 4',
        "- input.aspect_ratio: input.aspect_ratio must be one of the following: "
        + ", ".join(f'"{r}"' for r in ("1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4",
                                         "3:4", "4:3", "9:16", "9:21")),
        "- input: Additional property colour is not allowed",
    ]  # fmt: skip
    assert [f["field"] for f in body["invalid_fields"]] == [
        "input",
        "input.num_outputs",
        "input.aspect_ratio",
        "input",
    ]
    bad_header = _create(sim, headers={"Prefer": "wait=61"})
    assert (bad_header.status_code, bad_header.json()["title"]) == (400, "Invalid Prefer header")
    assert _create(sim, headers={"Cancel-After": "soon"}).status_code == 400


def test_sim_auth_and_injected_errors(sim: str) -> None:
    missing = requests.get(f"{sim}/v1/predictions/abc", timeout=5)
    assert (missing.status_code, missing.json()["title"]) == (401, "Unauthenticated")
    token_scheme = requests.get(
        f"{sim}/v1/predictions", headers={"Authorization": f"Token {SIM_KEY}"}, timeout=5
    )
    assert token_scheme.status_code == 200

    configure(sim, fail_next=2, fail_status=429, retry_after=3)
    throttled = _create(sim)
    assert throttled.status_code == 429
    assert throttled.json() == {"detail": "Request was throttled. Your rate limit resets in ~30s."}
    assert throttled.headers["Retry-After"] == "3"
    configure(sim, fail_status=500)
    broken = _create(sim)
    assert (broken.status_code, broken.json()["title"]) == (500, "Internal Server Error")
    assert _create(sim).status_code == 201  # fail_next used up
    assert requests.get(f"{sim}/v1/predictions/nope", headers=AUTH, timeout=5).status_code == 404


def test_sim_drop_images_and_data_removal(sim: str) -> None:
    configure(sim, poll_steps=0, drop_images=4, result_ttl=0.3)
    all_dropped = _create(sim, headers={"Prefer": "wait=5"}, num_outputs=2).json()
    assert all_dropped["status"] == "failed" and "NSFW" in all_dropped["error"]

    configure(sim, drop_images=1)
    body = _create(sim, headers={"Prefer": "wait=5"}, num_outputs=3).json()
    assert len(body["output"]) == 2
    time.sleep(0.35)
    assert requests.get(body["output"][0], timeout=5).status_code == 404
    assert prediction(sim, body["id"])["data_removed"] is True


def test_sim_control_endpoints(sim: str) -> None:
    assert requests.get(f"{sim}/_sim/health", timeout=5).json() == {
        "ok": True,
        "provider": "replicate",
    }
    configure(sim, latency=0.01)
    config = requests.get(f"{sim}/_sim/config", timeout=5).json()
    assert config["latency"] == 0.01 and config["api_key"] == SIM_KEY
    assert requests.post(f"{sim}/_sim/config", json={"bogus": 1}, timeout=5).status_code == 400
    _create(sim)
    assert len(calls(sim)) == 1
    assert "Authorization" not in calls(sim)[0]["headers"]
    requests.delete(f"{sim}/_sim/requests", timeout=5).raise_for_status()
    assert calls(sim) == []
    secret = requests.get(f"{sim}/v1/webhooks/default/secret", headers=AUTH, timeout=5).json()
    assert secret["key"].startswith("whsec_")
    requests.post(f"{sim}/_sim/reset", timeout=5).raise_for_status()
    assert requests.get(f"{sim}/_sim/config", timeout=5).json()["latency"] == 0.0
