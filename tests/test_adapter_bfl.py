"""The Black Forest Labs family: its simulator's protocol, the adapter against the
simulator over real HTTP, and the whole stack (openai client -> gunicorn -> a bfl
Celery worker -> simulator)."""

from __future__ import annotations

import base64
import dataclasses
import io
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import requests
from openai import OpenAI
from PIL import Image

from shared.catalog import Catalog, load_catalog
from shared.errors import DeadlineExceeded, InvalidRequest, UpstreamError
from shared.jobs import Job
from tests.conftest import SIM_KEY
from workers.adapters import ADAPTERS
from workers.adapters.base import CallContext, ImageRequest
from workers.adapters.bfl import BflAdapter, key_may_go_to, reference_image, schema_for
from workers.http import UpstreamHTTP
from workers.pipeline import build_request

FLUX2 = "black-forest-labs/flux-2-pro"
KONTEXT = "black-forest-labs/flux.1-kontext-max"
PRO11 = "flux-1.1-pro"
CATALOG: Catalog = load_catalog()
FAST = BflAdapter(first_poll_delay=0.02, poll_backoff=1.5, max_poll_interval=0.1)


def _png(width: int = 40, height: int = 30, colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, "PNG")
    return out.getvalue()


@pytest.fixture()
def bfl(simulators: dict[str, str]) -> Iterator[str]:
    url = simulators["bfl"]
    requests.post(f"{url}/_sim/reset", timeout=5).raise_for_status()
    yield url
    requests.post(f"{url}/_sim/reset", timeout=5)


def _config(sim: str, **config: Any) -> None:
    requests.post(f"{sim}/_sim/config", json=config, timeout=5).raise_for_status()


def _log(sim: str) -> list[dict[str, Any]]:
    return requests.get(f"{sim}/_sim/requests", timeout=5).json()


def _submits(sim: str) -> list[dict[str, Any]]:
    return [r for r in _log(sim) if r["method"] == "POST"]


def _request(model_id: str, **fields: Any) -> ImageRequest:
    """The adapter's request as the pipeline builds it (size clamped by the model's rule)."""
    job = Job(
        id="imgjob_test",
        key_id="k",
        model=model_id,
        family="bfl",
        queue="bfl",
        request={"prompt": "a red fox in snow", "n": 1, **fields},
        created=time.time(),
        deadline=time.time() + 60,
    )
    return build_request(job, CATALOG.model(model_id))


def budget_for(sim: str, least: float) -> float:
    """A deadline budget of at least ``least`` seconds, longer on a machine too loaded
    for it: ten round trips to the simulator, as measured now."""
    started = time.monotonic()
    requests.get(f"{sim}/_sim/config", timeout=10).raise_for_status()
    return max(least, 10 * (time.monotonic() - started))


def _ctx(sim: str, budget: float = 20.0, key: str = SIM_KEY) -> CallContext:
    deadline = time.time() + budget
    http = UpstreamHTTP(
        session=requests.Session(),
        deadline=deadline,
        provider="bfl",
        max_retries=2,
        backoff_base=0.05,
    )
    return CallContext(CATALOG.families["bfl"], sim, key, http, deadline)


def _fetch(ctx: CallContext, url: str) -> Image.Image:
    data, _ = ctx.http.download(url, max_bytes=50_000_000)
    return Image.open(io.BytesIO(data))


# -- the simulator's protocol -----------------------------------------------------------


def _submit(sim: str, endpoint: str, body: dict[str, Any], key: str | None = SIM_KEY):
    headers = {"x-key": key} if key is not None else {}
    return requests.post(f"{sim}/v1/{endpoint}", json=body, headers=headers, timeout=10)


def _poll_until_done(url: str) -> dict[str, Any]:
    for _ in range(50):
        body = requests.get(url, timeout=5).json()
        if body["status"] != "Pending":
            return body
        time.sleep(0.02)
    raise AssertionError("task never finished")


def test_sim_submit_poll_and_download(bfl: str) -> None:
    r = _submit(bfl, "flux-pro-1.1", {"prompt": "x", "width": 512, "height": 384, "seed": 3})
    assert r.status_code == 200
    task = r.json()
    assert set(task) == {"id", "polling_url", "cost", "input_mp", "output_mp"}
    assert task["polling_url"].startswith(f"{bfl}/sim-region-1/v1/get_result?id=")
    assert task["output_mp"] == 0.2 and task["cost"] == 4.0 and task["input_mp"] == 0
    first = requests.get(task["polling_url"], timeout=5).json()  # poll_steps=1: one Pending
    assert first["status"] == "Pending" and first["result"] is None
    done = _poll_until_done(task["polling_url"])
    assert done["status"] == "Ready" and done["result"]["seed"] == 3
    got = requests.get(done["result"]["sample"], timeout=5)
    assert got.headers["Content-Type"] == "image/jpeg"  # FLUX1.1 [pro]'s default format
    assert Image.open(io.BytesIO(got.content)).size == (512, 384)


def test_sim_validation_errors_are_fastapi_422s(bfl: str) -> None:
    r = _submit(bfl, "flux-pro-1.1", {"prompt": "x", "width": 500, "colour": "red"})
    assert r.status_code == 422
    issues = {tuple(i["loc"]): i for i in r.json()["detail"]}
    assert issues[("body", "width")]["type"] == "multiple_of"
    assert issues[("body", "width")]["msg"] == "Input should be a multiple of 32"
    assert issues[("body", "colour")]["type"] == "extra_forbidden"
    r = _submit(bfl, "flux-kontext-max", {"prompt": "x", "aspect_ratio": "4:1"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "aspect_ratio"]
    # BFL takes a URL or raw base64, not a data: URL.
    data_url = "data:image/png;base64," + base64.b64encode(_png()).decode()
    r = _submit(bfl, "flux-2-pro", {"prompt": "x", "input_image": data_url})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "input_image"]
    assert _submit(bfl, "flux-2-pro", {"width": 512}).json()["detail"][0]["type"] == "missing"


def test_sim_key_and_unknown_endpoint(bfl: str) -> None:
    assert _submit(bfl, "flux-2-pro", {"prompt": "x"}, key=None).status_code == 403
    r = _submit(bfl, "flux-2-pro", {"prompt": "x"}, key="wrong")
    assert r.status_code == 403 and r.json() == {"detail": "Invalid API key"}
    assert _submit(bfl, "flux-9-ultra", {"prompt": "x"}).status_code == 404


def test_sim_results_expire_and_are_signed(bfl: str) -> None:
    ttl = budget_for(bfl, 0.3)  # long enough for the calls below on this machine
    _config(bfl, result_ttl=ttl, poll_steps=0)
    task = _submit(bfl, "flux-2-pro", {"prompt": "x", "width": 64, "height": 64}).json()
    sample = _poll_until_done(task["polling_url"])["result"]["sample"]
    assert requests.get(sample.replace("sig=", "sig=0"), timeout=5).status_code == 403
    assert requests.get(sample, timeout=5).status_code == 200
    time.sleep(ttl + 0.1)
    assert requests.get(sample, timeout=5).status_code == 404


def test_sim_concurrency_limit_is_a_429_with_the_documented_body(bfl: str) -> None:
    for _ in range(6):
        assert _submit(bfl, "flux-kontext-max", {"prompt": "x"}).status_code == 200
    r = _submit(bfl, "flux-kontext-max", {"prompt": "x"})
    assert r.status_code == 429
    assert r.json() == {
        "error": "rate_limit_exceeded",
        "message": "Too many concurrent requests",
        "retry_after": 5,
    }
    assert _submit(bfl, "flux-kontext-pro", {"prompt": "x"}).status_code == 200  # own limit


def test_sim_unknown_task(bfl: str) -> None:
    body = requests.get(f"{bfl}/v1/get_result", params={"id": "nope"}, timeout=5).json()
    assert body["status"] == "Task not found"


# -- the adapter against the simulator ----------------------------------------------------


def test_flux2_sends_width_height_seed_format_and_polls_the_returned_url(bfl: str) -> None:
    request = _request(FLUX2, size="1000x600", seed=42, output_format="png")
    ctx = _ctx(bfl)
    result = FAST.generate(request, ctx)
    assert len(result.images) == 1 and result.images[0].data is None
    [submit] = _submits(bfl)
    assert submit["path"] == "/v1/flux-2-pro" and submit["key_present"]
    assert submit["json"] == {
        "prompt": "a red fox in snow",
        "width": 1000,
        "height": 600,
        "seed": 42,
        "output_format": "png",
        "safety_tolerance": 2,
    }
    polls = [r for r in _log(bfl) if r["method"] == "GET" and "get_result" in r["path"]]
    assert polls and all(p["path"] == "/sim-region-1/v1/get_result" for p in polls)
    assert all(p["key_present"] for p in polls)  # same host as the submit
    image = _fetch(ctx, result.images[0].url)
    assert image.size == (1000, 600) and image.format == "PNG"
    assert result.upstream_request_id == polls[0]["query"].removeprefix("id=")


def test_kontext_gets_the_nearest_aspect_ratio_and_a_data_url_as_raw_base64(bfl: str) -> None:
    raw = _png()
    data_url = "data:image/png;base64," + base64.b64encode(raw).decode()
    request = _request(KONTEXT, size="1792x1024", image=data_url)
    assert request.width is None and request.aspect_ratio == "16:9"  # the size rule's work
    ctx = _ctx(bfl)
    result = FAST.generate(request, ctx)
    sent = _submits(bfl)[0]["json"]
    assert "width" not in sent and "height" not in sent
    assert sent["aspect_ratio"] == "16:9"
    assert base64.b64decode(sent["input_image"]) == raw
    image = _fetch(ctx, result.images[0].url)
    assert abs(image.width / image.height - 16 / 9) < 0.02


def test_a_reference_url_is_passed_on_as_is(bfl: str) -> None:
    url = "https://images.example.com/ref.png?x=1"
    FAST.generate(_request(FLUX2, image=url), _ctx(bfl))
    assert _submits(bfl)[0]["json"]["input_image"] == url


def test_an_edit_sends_its_images_as_input_image_2_and_on(bfl: str) -> None:
    raws = [_png(colour=(10 * i, 0, 0)) for i in range(3)]
    urls = tuple("data:image/png;base64," + base64.b64encode(raw).decode() for raw in raws)
    request = dataclasses.replace(_request(FLUX2, operation="edit"), images=urls, image=urls[0])
    FAST.generate(request, _ctx(bfl))
    sent = _submits(bfl)[0]
    assert sent["status"] == 200
    names = ["input_image", "input_image_2", "input_image_3"]
    assert [base64.b64decode(sent["json"][name]) for name in names] == raws
    assert "input_image_4" not in sent["json"]


def test_more_images_than_the_schema_takes_is_a_400_naming_image() -> None:
    urls = tuple(f"https://images.example.com/{i}.png" for i in range(5))
    request = dataclasses.replace(_request(KONTEXT), images=urls, image=urls[0])
    with pytest.raises(InvalidRequest) as caught:
        FAST.generate(request, _ctx("http://127.0.0.1:9"))
    assert caught.value.param == "image"


def test_flux_11_pro_gets_its_clamped_multiple_of_32_size(bfl: str) -> None:
    request = _request(PRO11, size="1792x1024")
    ctx = _ctx(bfl)
    result = FAST.generate(request, ctx)
    sent = _submits(bfl)[0]["json"]
    assert (sent["width"], sent["height"]) == (request.width, request.height)
    assert sent["width"] % 32 == 0 and sent["height"] % 32 == 0 and sent["width"] <= 1440
    assert _fetch(ctx, result.images[0].url).size == (request.width, request.height)


def test_n_images_are_n_concurrent_tasks_with_distinct_seeds(bfl: str) -> None:
    latency = 1.0
    _config(bfl, latency=latency)
    ctx = _ctx(bfl)
    result = FAST.generate(_request(FLUX2, n=3, seed=7), ctx)
    assert len(result.images) == 3
    assert len({image.url for image in result.images}) == 3
    submits = _submits(bfl)
    assert sorted(s["json"]["seed"] for s in submits) == [7, 8, 9]
    # Concurrently: all three were submitted before the first could be ready. One
    # after the other, each submit would wait for the task before it (>= latency).
    times = [s["time"] for s in submits]
    assert max(times) - min(times) < latency
    assert len(result.upstream_request_id.split(",")) == 3
    colours = {_fetch(ctx, image.url).getpixel((-1, -1)) for image in result.images}
    assert len(colours) == 3


def test_a_failed_task_of_several_loses_only_its_image(bfl: str) -> None:
    _config(bfl, drop_images=1)  # the next task ends "Content Moderated"
    result = FAST.generate(_request(FLUX2, n=3), _ctx(bfl))
    assert len(result.images) == 2
    assert len(_submits(bfl)) == 3


@pytest.mark.parametrize(
    ("prompt", "error", "code"),
    [
        ("something forbidden", InvalidRequest, "content_policy_violation"),
        ("sim:content-moderated", InvalidRequest, "content_policy_violation"),
        ("sim:error", UpstreamError, "upstream_task_failed"),
        ("sim:lost", UpstreamError, "upstream_task_lost"),
    ],
)
def test_terminal_task_states(bfl: str, prompt: str, error: type, code: str) -> None:
    with pytest.raises(error) as info:
        FAST.generate(_request(FLUX2, prompt=prompt, n=2), _ctx(bfl))
    assert info.value.code == code
    assert info.value.headers["x-upstream-request-id"]  # the BFL task id


def test_moderation_says_what_was_refused(bfl: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        FAST.generate(_request(FLUX2, prompt="forbidden"), _ctx(bfl))
    assert info.value.status == 400
    assert "Request Moderated" in info.value.message
    assert "Simulated input moderation" in info.value.message


def test_a_422_names_the_gateway_param_and_bfls_message(bfl: str) -> None:
    # A size no catalog rule would produce, to see BFL's own validation come back.
    request = _request(FLUX2)
    request = ImageRequest(**{**request.__dict__, "width": 32})
    with pytest.raises(InvalidRequest) as info:
        FAST.generate(request, _ctx(bfl))
    assert info.value.param == "size"
    assert "width: Input should be greater than or equal to 64" in info.value.message
    assert len(_submits(bfl)) == 1  # not retried


def test_insufficient_credits_is_an_upstream_error(bfl: str) -> None:
    _config(bfl, fail_next=1, fail_status=402)
    with pytest.raises(UpstreamError) as info:
        FAST.generate(_request(FLUX2), _ctx(bfl))
    assert info.value.status == 502
    assert info.value.code == "upstream_insufficient_credits"
    assert "Insufficient credits" in info.value.message


def test_the_concurrency_429_is_retried_after_retry_after(bfl: str) -> None:
    _config(bfl, fail_next=1, fail_status=429, retry_after=0.2)
    result = FAST.generate(_request(FLUX2), _ctx(bfl))
    assert len(result.images) == 1
    assert [s["status"] for s in _submits(bfl)] == [429, 200]


def test_a_persistent_429_ends_as_rate_limited(bfl: str) -> None:
    _config(bfl, fail_next=10, fail_status=429)
    with pytest.raises(UpstreamError) as info:
        FAST.generate(_request(FLUX2), _ctx(bfl))
    assert info.value.code == "upstream_rate_limited"
    assert len(_submits(bfl)) == 3  # 1 + max_retries


def test_a_rejected_key_is_an_upstream_auth_failure(bfl: str) -> None:
    with pytest.raises(UpstreamError) as info:
        FAST.generate(_request(FLUX2), _ctx(bfl, key="not-the-key"))
    assert info.value.code == "upstream_auth_failed"


def test_the_deadline_ends_polling_without_any_cancel_call(bfl: str) -> None:
    _config(bfl, latency=30)
    budget = budget_for(bfl, 1.0)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        FAST.generate(_request(FLUX2, n=2), _ctx(bfl, budget=budget))
    assert time.monotonic() - started < budget + 1.5
    log = _log(bfl)
    assert {r["method"] for r in log} == {"POST", "GET"}  # BFL has no cancel endpoint
    assert all(r["path"].endswith("/get_result") for r in log if r["method"] == "GET")


def test_an_expired_sample_url_cannot_be_downloaded_later(bfl: str) -> None:
    _config(bfl, result_ttl=0.3)
    ctx = _ctx(bfl)
    result = FAST.generate(_request(FLUX2), ctx)
    time.sleep(0.5)
    with pytest.raises(UpstreamError) as info:
        ctx.http.download(result.images[0].url, max_bytes=10_000_000)
    assert "404" in info.value.message


@pytest.mark.parametrize("field", ["quality", "style"])
def test_quality_and_style_are_not_bfl_parameters(bfl: str, field: str) -> None:
    request = ImageRequest(**{**_request(FLUX2).__dict__, field: "hd"})
    with pytest.raises(InvalidRequest) as info:
        FAST.generate(request, _ctx(bfl))
    assert info.value.param == field
    assert _log(bfl) == []  # rejected before any upstream call


def test_the_registry_serves_the_bfl_adapter() -> None:
    assert isinstance(ADAPTERS["bfl"], BflAdapter)


def test_every_bfl_catalog_model_maps_onto_a_known_schema() -> None:
    models = [m for m in CATALOG.models.values() if m.family == "bfl"]
    assert models
    for model in models:
        schema = schema_for(_request(model.id))
        assert not model.params & {"quality", "style"}, model.id
        assert ("image" in model.params) <= (schema.image_field is not None), model.id
        if schema.sizing == "aspect_ratio":
            assert model.size_rule.describe()["kind"] == "aspect_ratio", model.id


# -- pure helpers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "url", "allowed"),
    [
        ("https://api.bfl.ai", "https://api.bfl.ai/v1/get_result?id=1", True),
        ("https://api.bfl.ai", "https://api.us1.bfl.ai/v1/get_result?id=1", True),
        ("https://api.eu.bfl.ai", "https://api.eu1.bfl.ai/v1/get_result?id=1", True),
        ("https://api.bfl.ai", "https://bfl.ai.evil.example/v1/get_result", False),
        ("https://api.bfl.ai", "https://evilbfl.ai/v1/get_result", False),
        ("https://api.bfl.ai", "http://api.bfl.ai/v1/get_result", False),  # downgrade
        ("http://127.0.0.1:8080", "http://127.0.0.1:9090/v1/get_result", True),
        ("http://127.0.0.1:8080", "http://127.0.0.2/v1/get_result", False),
    ],
)
def test_the_key_only_goes_to_the_submit_hosts_site(base: str, url: str, allowed: bool) -> None:
    assert key_may_go_to(base, url) is allowed


def test_reference_images() -> None:
    raw = _png()
    encoded = base64.b64encode(raw).decode()
    assert reference_image("https://x.example/a.png") == "https://x.example/a.png"
    assert reference_image(f"data:image/png;base64,{encoded}") == encoded
    assert reference_image("data:text/plain,hi%20there") == base64.b64encode(b"hi there").decode()
    with pytest.raises(InvalidRequest) as info:
        reference_image("data:image/png;base64,@@@")
    assert info.value.param == "image"


# -- the whole stack ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def bfl_stack(
    gateway: str, api_key: str, simulators: dict[str, str]
) -> Iterator[tuple[str, str, str]]:
    """The shared stack: its gateway, an internal key, and the bfl simulator."""
    yield gateway, api_key, simulators["bfl"]


@pytest.fixture()
def bfl_client(bfl_stack: tuple[str, str, str]) -> Iterator[tuple[OpenAI, str]]:
    url, key, sim = bfl_stack
    requests.post(f"{sim}/_sim/reset", timeout=5).raise_for_status()
    yield OpenAI(api_key=key, base_url=f"{url}/v1", max_retries=0, timeout=60), sim
    requests.post(f"{sim}/_sim/reset", timeout=5)


def test_e2e_kontext_size_becomes_a_ratio_and_the_image_is_ours(
    bfl_client: tuple[OpenAI, str],
) -> None:
    client, sim = bfl_client
    r = client.images.generate(model=KONTEXT, prompt="a harbour", size="1792x1024")
    assert _submits(sim)[0]["json"]["aspect_ratio"] == "16:9"
    url = r.data[0].url
    assert url and not url.startswith(sim)  # downloaded at once and served by the gateway
    image = Image.open(io.BytesIO(requests.get(url, timeout=10).content))
    assert f"{image.width}x{image.height}" == r.size


def test_e2e_two_images_in_base64(bfl_client: tuple[OpenAI, str]) -> None:
    client, sim = bfl_client
    r = client.images.generate(
        model=FLUX2, prompt="two foxes", n=2, size="768x512", response_format="b64_json"
    )
    sizes = {Image.open(io.BytesIO(base64.b64decode(d.b64_json))).size for d in r.data}
    assert len(r.data) == 2 and sizes == {(768, 512)}
    assert len(_submits(sim)) == 2


def test_e2e_partial_fan_out_returns_what_succeeded(bfl_client: tuple[OpenAI, str]) -> None:
    client, sim = bfl_client
    _config(sim, drop_images=1)
    r = client.images.generate(model=FLUX2, prompt="three foxes", n=3)
    assert len(r.data) == 2


def test_e2e_moderation_is_a_400(bfl_client: tuple[OpenAI, str]) -> None:
    client, _ = bfl_client
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model=PRO11, prompt="something forbidden")
    assert info.value.body["code"] == "content_policy_violation"


def test_e2e_quality_is_fitted_by_the_gateway_and_never_sent_to_bfl(
    bfl_client: tuple[OpenAI, str],
) -> None:
    """FLUX.2 has no quality setting: an OpenAI client's quality="hd" is accepted,
    left out of the BFL submission, and the response header says it was ignored."""
    client, sim = bfl_client
    raw = client.images.with_raw_response.generate(model=FLUX2, prompt="x", quality="hd")
    assert raw.parse().data[0].url
    assert "quality" in raw.headers.get("x-imagegate-ignored-params", "")
    (submit,) = _submits(sim)
    assert "quality" not in submit["json"]


def test_e2e_quality_is_refused_before_any_upstream_call_in_strict_mode(
    bfl_client: tuple[OpenAI, str], stack_env: dict[str, str]
) -> None:
    from tests.conftest import cli, create_key

    client, sim = bfl_client
    made = create_key(stack_env, "bfl-strict")
    cli(stack_env, "keys", "strict-params", made["id"], "on")
    strict = client.with_options(api_key=made["key"])
    with pytest.raises(openai.BadRequestError) as info:
        strict.images.generate(model=FLUX2, prompt="x", quality="hd")
    assert info.value.body["param"] == "quality"
    assert _log(sim) == []
