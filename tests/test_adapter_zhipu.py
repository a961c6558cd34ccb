"""The Zhipu adapter against the Zhipu simulator (a real subprocess speaking the protocol).

The catalog's ``zhipu/glm-image`` is used with the options it needs for the
async API (``mode = "async"``, a short ``poll_interval``) and a ``quality``
choice; a CogView-4 model is built from it for the synchronous API.
"""

from __future__ import annotations

import dataclasses
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from PIL import Image

from shared.catalog import Model, load_catalog
from shared.errors import DeadlineExceeded, InvalidRequest, ServerError, UpstreamError
from shared.sizing import Size, rule_from_spec
from tests.conftest import SIM_KEY, start_simulator
from workers.adapters.base import CallContext, ImageRequest, ImageResult
from workers.adapters.zhipu import ZhipuAdapter, parse_zhipu_error
from workers.http import UpstreamHTTP

CATALOG = load_catalog()
FAMILY = CATALOG.families["zhipu"]
BASE_PATH = urlsplit(FAMILY.base_url).path  # /api/paas/v4
SUBMIT_SYNC = f"{BASE_PATH}/images/generations"
SUBMIT_ASYNC = f"{BASE_PATH}/async/images/generations"
POLL = f"{BASE_PATH}/async-result/"

GLM: Model = dataclasses.replace(
    CATALOG.models["zhipu/glm-image"],
    params=frozenset({"quality", "user"}),
    choices={"quality": ("auto", "hd")},
    options={"mode": "async", "poll_interval": 0.05},
)
COGVIEW: Model = dataclasses.replace(
    GLM,
    id="zhipu/cogview-4",
    upstream="cogview-4-250304",
    size_rule=rule_from_spec(
        {"kind": "range_multiple", "min": 512, "max": 2048, "multiple": 16, "max_pixels": 2097152}
    ),
    default_size=Size(1024, 1024),
    max_n=4,
    choices={"quality": ("auto", "hd", "standard")},
    options={},
)

ADAPTER = ZhipuAdapter()


@pytest.fixture(scope="module")
def sim_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_simulator(Path(tmp_path_factory.mktemp("zhipu-sim")), "zhipu")
    yield url
    proc.stop()


@pytest.fixture()
def sim(sim_url: str) -> str:
    requests.post(f"{sim_url}/_sim/reset", timeout=5).raise_for_status()
    return sim_url


def _config(sim: str, **config: Any) -> None:
    requests.post(f"{sim}/_sim/config", json=config, timeout=5).raise_for_status()


def _calls(sim: str, path: str | None = None) -> list[dict[str, Any]]:
    calls = requests.get(f"{sim}/_sim/requests", timeout=5).json()
    return [c for c in calls if path is None or c["path"].startswith(path)]


def budget_for(sim: str, least: float) -> float:
    """A deadline budget of at least ``least`` seconds, longer on a machine too loaded
    for it: ten round trips to the simulator, as measured now."""
    started = time.monotonic()
    requests.get(f"{sim}/_sim/config", timeout=10).raise_for_status()
    return max(least, 10 * (time.monotonic() - started))


def _ctx(sim: str, *, budget: float = 20.0, retries: int = 2, key: str = SIM_KEY) -> CallContext:
    deadline = time.time() + budget
    http = UpstreamHTTP(
        session=requests.Session(),
        deadline=deadline,
        provider="zhipu",
        max_retries=retries,
        backoff_base=0.05,
    )
    return CallContext(
        family=FAMILY, base_url=sim + BASE_PATH, api_key=key, http=http, deadline=deadline
    )


def _request(model: Model = GLM, *, n: int = 1, size: tuple[int, int] = (1280, 1280), **kw: Any):
    return ImageRequest(
        prompt=kw.pop("prompt", "a red fox in the snow"),
        model=model,
        n=n,
        width=size[0],
        height=size[1],
        **kw,
    )


def _dimensions(ctx: CallContext, result: ImageResult) -> list[tuple[int, int]]:
    sizes = []
    for image in result.images:
        assert image.url and image.data is None
        data, content_type = ctx.http.download(image.url, max_bytes=50_000_000)
        assert content_type == "image/png"
        with Image.open(io.BytesIO(data)) as img:
            sizes.append(img.size)
    return sizes


# -- success --------------------------------------------------------------------------


def test_glm_image_async_success_sends_the_zhipu_fields(sim: str) -> None:
    _config(sim, poll_steps=2)
    ctx = _ctx(sim)
    result = ADAPTER.generate(_request(size=(1568, 1056), quality="hd", user="customer-42"), ctx)
    assert len(result.images) == 1
    assert _dimensions(ctx, result) == [(1568, 1056)]

    [submit] = _calls(sim, SUBMIT_ASYNC)
    assert submit["status"] == 200 and submit["auth_present"]
    assert submit["json"] == {
        "model": "glm-image",
        "prompt": "a red fox in the snow",
        "size": "1568x1056",
        "quality": "hd",
        "user_id": "customer-42",
    }
    polls = _calls(sim, POLL)
    assert len(polls) == 3  # PROCESSING, PROCESSING, SUCCESS
    assert all(p["method"] == "GET" and p["status"] == 200 for p in polls)
    assert len({p["path"] for p in polls}) == 1
    assert _calls(sim, SUBMIT_SYNC) == []
    # The task's request_id (the submission's id at the simulator) is the upstream id.
    assert result.upstream_request_id == submit["id"]


def test_polls_are_spaced_by_the_poll_interval(sim: str) -> None:
    _config(sim, poll_steps=3)
    model = dataclasses.replace(GLM, options={"mode": "async", "poll_interval": 0.2})
    ADAPTER.generate(_request(model), _ctx(sim))
    times = [c["time"] for c in _calls(sim)]  # submission, then 4 polls
    assert len(times) == 5
    assert all(later - earlier >= 0.15 for earlier, later in zip(times, times[1:], strict=False))


def test_cogview_sync_success_and_quality_mapping(sim: str) -> None:
    ctx = _ctx(sim)
    result = ADAPTER.generate(_request(COGVIEW, size=(768, 1344), quality="standard"), ctx)
    assert _dimensions(ctx, result) == [(768, 1344)]
    [call] = _calls(sim)
    assert call["path"] == SUBMIT_SYNC and call["method"] == "POST"
    assert call["json"] == {
        "model": "cogview-4-250304",
        "prompt": "a red fox in the snow",
        "size": "768x1344",
        "quality": "standard",
    }
    assert result.upstream_request_id == call["id"]


def test_quality_auto_and_no_user_send_nothing_extra(sim: str) -> None:
    ADAPTER.generate(_request(COGVIEW, size=(1024, 1024), quality="auto"), _ctx(sim))
    assert _calls(sim)[0]["json"] == {
        "model": "cogview-4-250304",
        "prompt": "a red fox in the snow",
        "size": "1024x1024",
    }


def test_watermark_option_from_the_catalog_is_sent(sim: str) -> None:
    model = dataclasses.replace(COGVIEW, options={"watermark_enabled": False})
    ADAPTER.generate(_request(model, size=(1024, 1024)), _ctx(sim))
    assert _calls(sim)[0]["json"]["watermark_enabled"] is False


def test_n_greater_than_one_fans_out(sim: str) -> None:
    ctx = _ctx(sim)
    result = ADAPTER.generate(_request(n=3, size=(1024, 1024)), ctx)
    assert len(result.images) == 3
    assert len({image.url for image in result.images}) == 3
    submits = _calls(sim, SUBMIT_ASYNC)
    assert len(submits) == 3 and all(s["status"] == 200 for s in submits)
    assert all(s["json"]["size"] == "1024x1024" for s in submits)
    assert _dimensions(ctx, result) == [(1024, 1024)] * 3


def test_sync_fan_out(sim: str) -> None:
    result = ADAPTER.generate(_request(COGVIEW, n=2, size=(512, 512)), _ctx(sim))
    assert len(result.images) == 2
    assert len(_calls(sim, SUBMIT_SYNC)) == 2


@pytest.mark.parametrize("model", [GLM, COGVIEW], ids=["async", "sync"])
def test_one_failed_image_of_n_leaves_the_others(sim: str, model: Model) -> None:
    _config(sim, fail_next=1, fail_status=400)  # a 400 is not retried: exactly one image lost
    result = ADAPTER.generate(_request(model, n=3, size=(1024, 1024)), _ctx(sim))
    assert len(result.images) == 2
    path = SUBMIT_ASYNC if model is GLM else SUBMIT_SYNC
    assert sorted(c["status"] for c in _calls(sim, path)) == [200, 200, 400]


# -- retries and upstream failures ------------------------------------------------------


def test_5xx_is_retried_then_succeeds(sim: str) -> None:
    _config(sim, fail_next=2, fail_status=500)
    result = ADAPTER.generate(_request(), _ctx(sim))
    assert len(result.images) == 1
    assert [c["status"] for c in _calls(sim, SUBMIT_ASYNC)] == [500, 500, 200]


def test_5xx_exhausted_is_an_upstream_error_with_the_request_id(sim: str) -> None:
    _config(sim, fail_next=10, fail_status=503)
    with pytest.raises(UpstreamError) as info:
        ADAPTER.generate(_request(COGVIEW, size=(1024, 1024)), _ctx(sim, retries=2))
    calls = _calls(sim, SUBMIT_SYNC)
    assert [c["status"] for c in calls] == [503, 503, 503]
    assert info.value.status == 502
    assert info.value.headers["x-upstream-request-id"] == calls[-1]["id"]
    assert "Zhipu code 500" in info.value.message


def test_429_retry_after_is_honoured(sim: str) -> None:
    _config(sim, fail_next=1, fail_status=429, retry_after=1)
    result = ADAPTER.generate(_request(), _ctx(sim))
    assert len(result.images) == 1
    first, second = _calls(sim, SUBMIT_ASYNC)
    assert (first["status"], second["status"]) == (429, 200)
    assert second["time"] - first["time"] >= 0.9


def test_429_exhausted_is_rate_limited(sim: str) -> None:
    _config(sim, fail_next=10, fail_status=429, retry_after=0)
    with pytest.raises(UpstreamError) as info:
        ADAPTER.generate(_request(), _ctx(sim, retries=1))
    assert info.value.code == "upstream_rate_limited"
    assert len(_calls(sim, SUBMIT_ASYNC)) == 2


def test_wrong_key_is_upstream_auth_failed(sim: str) -> None:
    with pytest.raises(UpstreamError) as info:
        ADAPTER.generate(_request(), _ctx(sim, key="not-the-key"))
    assert info.value.code == "upstream_auth_failed"
    assert [c["status"] for c in _calls(sim)] == [401]  # not retried


def test_unknown_upstream_model_is_the_catalogs_fault(sim: str) -> None:
    model = dataclasses.replace(COGVIEW, upstream="cogview-99")
    with pytest.raises(UpstreamError) as info:
        ADAPTER.generate(_request(model, size=(1024, 1024)), _ctx(sim))
    assert info.value.code == "upstream_model_not_found"
    assert "1211" in info.value.message
    assert info.value.headers["x-upstream-request-id"] == _calls(sim)[0]["id"]


def test_async_mode_on_a_sync_only_model_is_the_catalogs_fault(sim: str) -> None:
    model = dataclasses.replace(COGVIEW, options={"mode": "async", "poll_interval": 0.05})
    with pytest.raises(UpstreamError) as info:
        ADAPTER.generate(_request(model, size=(1024, 1024)), _ctx(sim))
    assert info.value.code == "upstream_model_not_found"


def test_an_unknown_mode_is_a_server_error_before_any_call(sim: str) -> None:
    model = dataclasses.replace(GLM, options={"mode": "batch"})
    with pytest.raises(ServerError) as info:
        ADAPTER.generate(_request(model), _ctx(sim))
    assert info.value.code == "catalog_misconfigured"
    assert _calls(sim) == []


def test_a_bad_poll_interval_is_a_server_error_before_any_call(sim: str) -> None:
    model = dataclasses.replace(GLM, options={"mode": "async", "poll_interval": "fast"})
    with pytest.raises(ServerError) as info:
        ADAPTER.generate(_request(model), _ctx(sim))
    assert info.value.code == "catalog_misconfigured"
    assert _calls(sim) == []


@pytest.mark.parametrize("model", [GLM, COGVIEW], ids=["async", "sync"])
def test_malformed_json_is_an_upstream_error(sim: str, model: Model) -> None:
    with pytest.raises(UpstreamError) as info:
        ADAPTER.generate(_request(model, size=(1024, 1024), prompt="garbled fox"), _ctx(sim))
    assert info.value.code == "upstream_malformed_response"


def test_an_answer_without_an_image_is_an_upstream_error(sim: str) -> None:
    _config(sim, drop_images=1)
    with pytest.raises(UpstreamError) as info:
        ADAPTER.generate(_request(COGVIEW, size=(1024, 1024)), _ctx(sim))
    assert info.value.code == "upstream_no_image"


def test_a_failed_task_is_an_upstream_error(sim: str) -> None:
    with pytest.raises(UpstreamError) as info:
        ADAPTER.generate(_request(prompt="a doomed fox"), _ctx(sim))
    assert info.value.code == "upstream_task_failed"
    assert info.value.headers["x-upstream-request-id"] == _calls(sim, SUBMIT_ASYNC)[0]["id"]


# -- the client's faults ------------------------------------------------------------------


def test_upstream_validation_error_is_invalid_request_with_zhipus_message(sim: str) -> None:
    # 1000 is not a multiple of 16: the simulator (like Zhipu) answers 400 code 1214.
    with pytest.raises(InvalidRequest) as info:
        ADAPTER.generate(_request(COGVIEW, size=(1000, 1000)), _ctx(sim))
    assert info.value.code == "upstream_invalid_parameter"
    assert "size 参数非法" in info.value.message and "1214" in info.value.message
    assert [c["status"] for c in _calls(sim)] == [400]


def test_prompt_too_long_names_the_prompt(sim: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        ADAPTER.generate(_request(COGVIEW, size=(1024, 1024), prompt="x" * 4001), _ctx(sim))
    assert info.value.param == "prompt"
    assert "1261" in info.value.message


@pytest.mark.parametrize("model", [GLM, COGVIEW], ids=["async", "sync"])
def test_moderated_prompt_is_a_content_policy_violation(sim: str, model: Model) -> None:
    with pytest.raises(InvalidRequest) as info:
        ADAPTER.generate(_request(model, size=(1024, 1024), prompt="a forbidden fox"), _ctx(sim))
    assert info.value.code == "content_policy_violation"
    assert info.value.status == 400


def test_output_moderated_at_poll_time_is_a_content_policy_violation(sim: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        ADAPTER.generate(_request(prompt="an nsfw fox"), _ctx(sim))
    assert info.value.code == "content_policy_violation"
    assert info.value.headers["x-upstream-request-id"] == _calls(sim, SUBMIT_ASYNC)[0]["id"]
    assert len(_calls(sim, POLL)) >= 1


@pytest.mark.parametrize(
    ("model", "fields", "param"),
    [
        (GLM, {"style": "vivid"}, "style"),
        (GLM, {"seed": 7}, "seed"),
        (GLM, {"image": "https://example.com/ref.png"}, "image"),
        (GLM, {"background": "transparent"}, "background"),
        (GLM, {"extra": {"output_compression": 50}}, "output_compression"),
        (GLM, {"extra": {"moderation": "low"}}, "moderation"),
        (GLM, {"quality": "standard"}, "quality"),
        (GLM, {"quality": "high"}, "quality"),
        (COGVIEW, {"quality": "medium"}, "quality"),
        (GLM, {"user": "abc"}, "user"),
        (GLM, {"user": "u" * 129}, "user"),
    ],
)
def test_unsupported_parameters_are_rejected_by_name(
    sim: str, model: Model, fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        ADAPTER.generate(_request(model, size=(1024, 1024), **fields), _ctx(sim))
    assert info.value.param == param
    assert _calls(sim) == []  # rejected before anything reached Zhipu


def test_aspect_ratio_without_a_size_is_rejected(sim: str) -> None:
    request = dataclasses.replace(_request(), width=None, height=None, aspect_ratio="16:9")
    with pytest.raises(InvalidRequest) as info:
        ADAPTER.generate(request, _ctx(sim))
    assert info.value.param == "aspect_ratio"


def test_tolerated_values_pass_without_extra_fields(sim: str) -> None:
    request = _request(
        COGVIEW,
        size=(1024, 1024),
        background="opaque",
        output_format="jpeg",
        extra={"moderation": "auto"},
    )
    assert len(ADAPTER.generate(request, _ctx(sim)).images) == 1
    assert set(_calls(sim)[0]["json"]) == {"model", "prompt", "size"}


# -- deadlines and result URLs --------------------------------------------------------------


def test_deadline_while_the_task_keeps_processing(sim: str) -> None:
    _config(sim, poll_steps=100_000)
    with pytest.raises(DeadlineExceeded):
        ADAPTER.generate(_request(), _ctx(sim, budget=budget_for(sim, 1.0)))
    polls = _calls(sim, POLL)
    assert len(polls) >= 2
    # Zhipu has no cancel API: nothing but the submission and polls was sent.
    assert {c["method"] for c in _calls(sim)} == {"POST", "GET"}
    assert len(_calls(sim)) == len(polls) + 1


def test_deadline_while_the_sync_call_is_slow(sim: str) -> None:
    budget = budget_for(sim, 1.0)
    _config(sim, latency=5 * budget)
    with pytest.raises(DeadlineExceeded):
        ADAPTER.generate(_request(COGVIEW, size=(1024, 1024)), _ctx(sim, budget=budget))


def test_an_expired_result_url_fails_the_download(sim: str) -> None:
    ttl = budget_for(sim, 1.0)  # long enough to generate and download once on this machine
    _config(sim, result_ttl=ttl)
    ctx = _ctx(sim)
    result = ADAPTER.generate(_request(COGVIEW, size=(512, 512)), ctx)
    url = result.images[0].url
    assert url is not None
    data, _ = ctx.http.download(url, max_bytes=10_000_000)
    assert data.startswith(b"\x89PNG")
    time.sleep(ttl + 0.2)
    with pytest.raises(UpstreamError) as info:
        ctx.http.download(url, max_bytes=10_000_000)
    assert "404" in info.value.message


# -- the error parser on its own ------------------------------------------------------------


def _response(status: int, body: bytes) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = body
    response.headers["Content-Type"] = "application/json"
    return response


@pytest.mark.parametrize(
    ("status", "code", "gateway_code", "param", "moderated"),
    [
        (401, "1000", "upstream_auth_failed", None, False),
        (401, "1003", "upstream_auth_failed", None, False),
        (429, "1113", "upstream_account_in_arrears", None, False),
        (400, "1210", "upstream_invalid_parameter", None, False),
        (400, "1211", "upstream_model_not_found", None, False),
        (400, "1214", "upstream_invalid_parameter", None, False),
        (400, "1261", "string_above_max_length", "prompt", False),
        (400, "1301", "content_policy_violation", None, True),
        (429, "1302", "upstream_concurrency_limited", None, False),
        (429, "1303", "upstream_rate_limited", None, False),
        (429, "1305", "upstream_overloaded", None, False),
    ],
)
def test_business_codes(
    status: int, code: str, gateway_code: str, param: str | None, moderated: bool
) -> None:
    body = f'{{"error": {{"code": "{code}", "message": "msg {code}"}}}}'.encode()
    fault = parse_zhipu_error(_response(status, body))
    assert (fault.code, fault.param, fault.moderated) == (gateway_code, param, moderated)
    assert fault.message == f"msg {code} (Zhipu code {code})"


def test_parser_tolerates_other_shapes() -> None:
    flat = parse_zhipu_error(_response(400, b'{"code": 1214, "msg": "bad size", "success": false}'))
    assert (flat.code, flat.message) == ("upstream_invalid_parameter", "bad size (Zhipu code 1214)")
    unknown = parse_zhipu_error(_response(500, b'{"error": {"code": "9999", "message": "boom"}}'))
    assert (unknown.code, unknown.message) == (None, "boom (Zhipu code 9999)")
    text = parse_zhipu_error(_response(502, b"<html>bad gateway</html>"))
    assert text.code is None and "bad gateway" in text.message


# -- the simulator's protocol state machine -----------------------------------------------------

AUTH = {"Authorization": f"Bearer {SIM_KEY}"}


def _post(sim: str, path: str, body: Any, headers: dict[str, str] | None = None):
    return requests.post(
        f"{sim}{path}", json=body, headers=AUTH if headers is None else headers, timeout=10
    )


def test_sim_async_task_lifecycle(sim: str) -> None:
    _config(sim, poll_steps=2)
    submit = _post(sim, SUBMIT_ASYNC, {"model": "glm-image", "prompt": "fox"})
    assert submit.status_code == 200
    task = submit.json()
    assert task["task_status"] == "PROCESSING" and task["model"] == "glm-image"
    assert task["request_id"] == submit.headers["x-request-id"]
    statuses = []
    for _ in range(4):
        poll = requests.get(f"{sim}{POLL}{task['id']}", headers=AUTH, timeout=5)
        assert poll.status_code == 200 and poll.json()["id"] == task["id"]
        statuses.append(poll.json()["task_status"])
    assert statuses == ["PROCESSING", "PROCESSING", "SUCCESS", "SUCCESS"]
    done = poll.json()
    [image] = done["image_result"]
    png = requests.get(image["url"], timeout=5)
    with Image.open(io.BytesIO(png.content)) as img:
        assert img.size == (1280, 1280)  # glm-image's default size
    assert requests.get(f"{sim}{POLL}{task['id']}", timeout=5).status_code == 401


def test_sim_polls_and_unknown_tasks(sim: str) -> None:
    missing = requests.get(f"{sim}{POLL}no-such-task", headers=AUTH, timeout=5)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "1214"
    # fail_next counts submissions only: a poll does not use it up.
    task = _post(sim, SUBMIT_ASYNC, {"model": "glm-image", "prompt": "fox"}).json()
    _config(sim, fail_next=1, poll_steps=0)
    assert requests.get(f"{sim}{POLL}{task['id']}", headers=AUTH, timeout=5).status_code == 200
    failed = _post(sim, SUBMIT_ASYNC, {"model": "glm-image", "prompt": "fox"})
    assert failed.status_code == 500 and failed.json()["error"]["code"] == "500"


def test_sim_sync_answer_shape_and_default_size(sim: str) -> None:
    answer = _post(sim, SUBMIT_SYNC, {"model": "cogview-4", "prompt": "fox"})
    assert answer.status_code == 200
    payload = answer.json()
    assert set(payload) == {"created", "data", "content_filter"}
    assert payload["content_filter"] == [{"role": "assistant", "level": 3}]
    png = requests.get(payload["data"][0]["url"], timeout=5)
    with Image.open(io.BytesIO(png.content)) as img:
        assert img.size == (1024, 1024)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"model": "glm-image", "prompt": "x", "size": "1000x1024"}, "1214"),  # not /32
        ({"model": "glm-image", "prompt": "x", "size": "992x1024"}, "1214"),  # < 1024
        ({"model": "glm-image", "prompt": "x", "size": "2048x2080"}, "1214"),  # > 2048
        ({"model": "cogview-4", "prompt": "x", "size": "2048x2048"}, "1214"),  # > 2^21 px
        ({"model": "cogview-4", "prompt": "x", "size": "1000x1000"}, "1214"),  # not /16
        ({"model": "cogview-4", "prompt": "x", "size": "1024*1024"}, "1214"),
        ({"model": "glm-image", "prompt": "x", "quality": "standard"}, "1214"),
        ({"model": "cogview-4", "prompt": "x", "quality": "ultra"}, "1214"),
        ({"model": "glm-image", "prompt": "x", "user_id": "short"}, "1214"),
        ({"model": "glm-image", "prompt": "x", "watermark_enabled": "no"}, "1214"),
        ({"model": "glm-image", "prompt": "x", "n": 2}, "1210"),
        ({"model": "glm-image"}, "1214"),
        ({"prompt": "x"}, "1214"),
        ({"model": "dall-e-3", "prompt": "x"}, "1211"),
        ({"model": "glm-image", "prompt": "y" * 4001}, "1261"),
        ({"model": "glm-image", "prompt": "a forbidden fox"}, "1301"),
        (["not", "an", "object"], "1210"),
    ],
)
def test_sim_validation(sim: str, body: Any, code: str) -> None:
    answer = _post(sim, SUBMIT_SYNC, body)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == code
    assert answer.headers["x-request-id"]


def test_sim_accepts_the_documented_sizes(sim: str) -> None:
    for model, size in [("glm-image", "2048x2048"), ("cogview-4", "1440x720")]:
        body = {"model": model, "prompt": "x", "size": size, "quality": "hd"}
        assert _post(sim, SUBMIT_SYNC, {**body, "user_id": "user-01"}).status_code == 200


def test_sim_async_is_glm_image_only(sim: str) -> None:
    answer = _post(sim, SUBMIT_ASYNC, {"model": "cogview-4", "prompt": "x"})
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "1211"


def test_sim_auth_errors(sim: str) -> None:
    missing = _post(sim, SUBMIT_SYNC, {"model": "glm-image", "prompt": "x"}, headers={})
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "1001"
    wrong = _post(
        sim, SUBMIT_SYNC, {"model": "glm-image", "prompt": "x"}, {"Authorization": "Bearer no"}
    )
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "1000"


def test_sim_invalid_json_body(sim: str) -> None:
    answer = requests.post(
        f"{sim}{SUBMIT_SYNC}",
        data=b"{nope",
        headers={**AUTH, "Content-Type": "application/json"},
        timeout=5,
    )
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "1210"
    assert _calls(sim)[0]["raw_body"] == "{nope"


def test_sim_injected_429_has_its_body_and_retry_after(sim: str) -> None:
    _config(sim, fail_next=1, fail_status=429, retry_after=2)
    answer = _post(sim, SUBMIT_SYNC, {"model": "glm-image", "prompt": "x"})
    assert answer.status_code == 429
    assert answer.json()["error"]["code"] == "1302"
    assert answer.headers["Retry-After"] == "2"
    assert _post(sim, SUBMIT_SYNC, {"model": "glm-image", "prompt": "x"}).status_code == 200


def test_sim_output_moderation_and_failure_at_poll_time(sim: str) -> None:
    _config(sim, poll_steps=0)
    for prompt, code in [("an nsfw fox", "1301"), ("a doomed fox", "500")]:
        task = _post(sim, SUBMIT_ASYNC, {"model": "glm-image", "prompt": prompt}).json()
        poll = requests.get(f"{sim}{POLL}{task['id']}", headers=AUTH, timeout=5).json()
        assert poll["task_status"] == "FAIL" and poll["error"]["code"] == code
        assert "image_result" not in poll


def test_sim_control_endpoints(sim: str) -> None:
    assert requests.get(f"{sim}/_sim/health", timeout=5).json() == {
        "ok": True,
        "provider": "zhipu",
    }
    bad = requests.post(f"{sim}/_sim/config", json={"nope": 1}, timeout=5)
    assert bad.status_code == 400
    _config(sim, latency=0.01, drop_images=1)
    assert requests.get(f"{sim}/_sim/config", timeout=5).json()["drop_images"] == 1
    payload = _post(sim, SUBMIT_SYNC, {"model": "glm-image", "prompt": "x"}).json()
    assert payload["data"] == []
    assert len(_calls(sim)) == 1
    assert requests.delete(f"{sim}/_sim/requests", timeout=5).json()["cleared"] == 1
    reset = requests.post(f"{sim}/_sim/reset", timeout=5).json()
    assert reset["config"]["drop_images"] == 0 and reset["config"]["api_key"] == SIM_KEY
