"""OpenAI clients' semantics on every model (issue 14, items 5 and 6), end to end.

* GPT image models answer ``b64_json`` when no ``response_format`` is given, as
  OpenAI does, with OpenAI's top-level ``quality``, ``background`` and ``usage``;
  ``url`` stays available on request.
* ``user``, ``quality`` and ``style`` are accepted by every model and mapped or
  ignored, which the ``x-imagegate-mapped-params`` / ``x-imagegate-ignored-params``
  headers say; strict mode (setting or key flag) refuses them as before; fields
  whose loss would change the images are refused whatever the mode.
* Every answer validates against the ImagesResponse schema of OpenAI's published
  OpenAPI document (the gateway's additions are extra fields).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from typing import Any

import jsonschema
import openai
import pytest
import requests
from openai import OpenAI
from PIL import Image

from shared.jobs import JobStore
from shared.redis_client import connect
from tests.conftest import cli, create_key
from tests.support.openai_schema import openai_schema
from tests.support.sim import sent_with, tagged


@pytest.fixture(scope="module")
def images_response_schema() -> dict[str, Any]:
    """OpenAI's ImagesResponse, with its $refs resolvable (extra fields allowed, as there;
    ``size`` any WxH: see tests/support/openai_schema.py)."""
    return openai_schema("ImagesResponse")


def _check_openai_shape(body: dict[str, Any], schema: dict[str, Any]) -> None:
    jsonschema.validate(body, schema)


def _raw(client: OpenAI, **kw: Any) -> tuple[dict[str, Any], Any]:
    raw = client.images.with_raw_response.generate(**kw)
    return raw.http_response.json(), raw.headers


# -- item 5: GPT-image semantics -------------------------------------------------------------


@pytest.mark.parametrize("model", ["gpt-image-1", "gpt-image-1-mini", "gpt-image-2"])
def test_gpt_image_models_answer_b64_json_by_default(
    client: OpenAI, sim: str, model: str, images_response_schema: dict[str, Any]
) -> None:
    prompt = tagged("a lighthouse")
    result = client.images.generate(model=model, prompt=prompt)
    image = result.data[0]
    assert image.url is None
    png = base64.b64decode(image.b64_json)
    assert Image.open(io.BytesIO(png)).size == (1024, 1024)
    (sent,) = sent_with(sim, prompt)
    assert sent["json"]["model"] == model
    assert "response_format" not in sent["json"]  # OpenAI refuses it for GPT image models
    # OpenAI's top-level fields, as the upstream reported them.
    assert result.size == "1024x1024"
    assert result.output_format == "png"
    assert result.quality == "medium"  # the simulator resolves `auto` to medium
    assert result.background == "opaque"
    assert result.usage is not None and result.usage.total_tokens > 0
    body = result.model_dump(exclude_none=True)
    body["data"][0]["b64_json"] = image.b64_json
    _check_openai_shape(body, images_response_schema)


def test_gpt_image_2_takes_free_sizes(
    client: OpenAI, sim: str, images_response_schema: dict[str, Any]
) -> None:
    prompt = tagged()
    raw = client.images.with_raw_response.generate(
        model="gpt-image-2", prompt=prompt, size="1536x864"
    )
    result = raw.parse()
    assert result.size == "1536x864"
    # Outside the published response enum, which predates gpt-image-2's free sizes: the
    # gateway answers the size it made (tests/support/openai_schema.py says why).
    _check_openai_shape(raw.http_response.json(), images_response_schema)
    assert Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json))).size == (1536, 864)
    (sent,) = sent_with(sim, prompt)
    assert sent["json"]["size"] == "1536x864"


def test_gpt_image_url_stays_available_on_request(
    client: OpenAI, sim: str, images_response_schema: dict[str, Any]
) -> None:
    body, _ = _raw(client, model="gpt-image-1", prompt=tagged(), response_format="url")
    _check_openai_shape(body, images_response_schema)
    (item,) = body["data"]
    assert "b64_json" not in item
    fetched = requests.get(item["url"], timeout=10)
    assert fetched.status_code == 200
    assert Image.open(io.BytesIO(fetched.content)).format == "PNG"
    assert body["quality"] == "medium" and body["usage"]["total_tokens"] > 0


def test_the_default_response_format_is_the_models_and_listed(
    client: OpenAI, sim: str, gateway: str, api_key: str, images_response_schema: dict[str, Any]
) -> None:
    models = requests.get(
        f"{gateway}/v1/models", headers={"Authorization": f"Bearer {api_key}"}, timeout=10
    ).json()["data"]
    by_id = {m["id"]: m for m in models}
    gpt = ("gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5", "gpt-image-2")
    for model in (*gpt, "gpt-image-2-2026-04-21"):
        assert by_id[model]["default_response_format"] == "b64_json", model
    for model in ("dall-e-3", "local/testcard", "image-turbo"):
        if model in by_id and not by_id[model].get("virtual"):
            assert by_id[model]["default_response_format"] == "url", model
        body, _ = _raw(client, model=model, prompt=tagged())
        assert "url" in body["data"][0] and "b64_json" not in body["data"][0], model
        if model != "image-turbo":  # a GPT candidate behind it reports its usage
            assert "usage" not in body and "quality" not in body
        _check_openai_shape(body, images_response_schema)


# -- item 6: OpenAI clients' parameters on every model --------------------------------------


def test_dall_e_3_parameters_work_on_a_flux_model(
    client: OpenAI, simulators: dict[str, str], images_response_schema: dict[str, Any]
) -> None:
    prompt = tagged("a fox")
    body, headers = _raw(
        client,
        model="black-forest-labs/flux-2-pro",
        prompt=prompt,
        quality="hd",
        style="vivid",
        user="u1",
    )
    assert body["data"][0]["url"]
    _check_openai_shape(body, images_response_schema)
    assert headers["x-imagegate-ignored-params"] == "user, quality, style"
    assert "x-imagegate-mapped-params" not in headers
    (sent,) = sent_with(simulators["bfl"], prompt)
    assert not {"quality", "style", "user"} & set(sent["json"])


def test_user_is_recorded_on_the_job_where_the_upstream_lacks_it(
    client: OpenAI, redis_server
) -> None:
    _, headers = _raw(client, model="black-forest-labs/flux-2-pro", prompt=tagged(), user="u-42")
    job = JobStore(connect(redis_server.url)).get(headers["x-job-id"])
    assert job is not None and job.meta["user"] == "u-42"
    assert "user" not in job.request  # not sent to an upstream without it


@pytest.mark.parametrize(
    ("model", "asked", "sent", "header"),
    [
        ("gpt-image-1", "hd", "high", "quality=hd->high"),
        ("gpt-image-1", "standard", "medium", "quality=standard->medium"),
        ("dall-e-3", "high", "hd", "quality=high->hd"),
        ("dall-e-3", "low", "standard", "quality=low->standard"),
    ],
)
def test_quality_is_mapped_to_the_models_own_level(
    client: OpenAI, sim: str, model: str, asked: str, sent: str, header: str | None
) -> None:
    prompt = tagged()
    _, headers = _raw(client, model=model, prompt=prompt, quality=asked)
    assert headers.get("x-imagegate-mapped-params") == header
    (request,) = sent_with(sim, prompt)
    assert request["json"]["quality"] == sent


def test_style_without_a_knob_is_ignored_and_said(client: OpenAI, sim: str) -> None:
    prompt = tagged()
    _, headers = _raw(client, model="dall-e-2", prompt=prompt, style="natural", quality="auto")
    assert headers["x-imagegate-ignored-params"] == "quality, style"
    (request,) = sent_with(sim, prompt)
    assert "style" not in request["json"] and "quality" not in request["json"]


def test_a_virtual_model_says_what_its_serving_model_ignored(client: OpenAI) -> None:
    # No candidate of image-turbo has a style knob: each route drops it and says so.
    body, headers = _raw(client, model="image-turbo", prompt=tagged(), style="vivid")
    assert body["served_by"]
    assert "style" in headers["x-imagegate-ignored-params"].split(", ")


def test_async_answer_carries_the_headers_too(gateway: str, api_key: str) -> None:
    resp = requests.post(
        f"{gateway}/v1/images/generations",
        json={"model": "local/testcard", "prompt": "x", "style": "vivid", "quality": "hd"},
        headers={"Authorization": f"Bearer {api_key}", "Prefer": "respond-async"},
        timeout=30,
    )
    assert resp.status_code == 202, resp.text
    # local/testcard has quality and style knobs of its own, so nothing changes.
    assert "x-imagegate-ignored-params" not in resp.headers
    resp = requests.post(
        f"{gateway}/v1/images/generations",
        json={"model": "zhipu/z-image-turbo", "prompt": "x", "style": "vivid"},
        headers={"Authorization": f"Bearer {api_key}", "Prefer": "respond-async"},
        timeout=30,
    )
    assert resp.status_code == 202, resp.text
    assert resp.headers["x-imagegate-ignored-params"] == "style"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "black-forest-labs/flux-2-pro", "background": "transparent"}, "background"),
        ({"model": "dall-e-3", "output_format": "webp"}, "output_format"),
        ({"model": "dall-e-3", "output_compression": 50}, "output_compression"),
        ({"model": "flux-dev", "moderation": "low"}, "moderation"),
    ],
)
def test_fields_whose_loss_changes_the_images_are_still_refused(
    client: OpenAI, body: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(prompt="x", **body, user="u1", quality="high")
    assert info.value.body["param"] == param
    assert info.value.body["code"] == "unsupported_parameter"


# -- strict mode -----------------------------------------------------------------------------

# What the gateway answered before tuning fields were fitted; strict mode keeps it.
STRICT_REFUSALS = [
    ({"model": "dall-e-2", "prompt": "x", "style": "vivid"}, "style", "unsupported_parameter"),
    ({"model": "dall-e-3", "prompt": "x", "quality": "low"}, "quality", "invalid_value"),
    ({"model": "black-forest-labs/flux-2-pro", "prompt": "x", "user": "u1"}, "user",
     "unsupported_parameter"),
    ({"model": "image", "prompt": "x", "style": "vivid", "quality": "low"}, "quality",
     "unsupported_parameter"),
]  # fmt: skip


def _post(gateway: str, key: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(
        f"{gateway}/v1/images/generations",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


@pytest.fixture(scope="module")
def strict_key(stack_env: dict[str, str]) -> str:
    made = create_key(stack_env, "strict-params")
    assert "on" in cli(stack_env, "keys", "strict-params", made["id"], "on")
    return made["key"]


@pytest.fixture(scope="module")
def strict_gateway(start_gateway: Callable[..., str], workers: list) -> str:
    return start_gateway("web-strict", IMAGEGATE_STRICT_PARAMS="1")


@pytest.mark.parametrize(("body", "param", "code"), STRICT_REFUSALS)
def test_a_strict_key_gets_the_old_refusals(
    gateway: str, api_key: str, strict_key: str, body: dict[str, Any], param: str, code: str
) -> None:
    resp = _post(gateway, strict_key, body)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert (error["param"], error["code"]) == (param, code)
    assert _post(gateway, api_key, body).status_code == 200  # the same body, without strict


@pytest.mark.parametrize(("body", "param", "code"), STRICT_REFUSALS[:3])
def test_the_strict_setting_refuses_for_every_key(
    strict_gateway: str, gateway: str, api_key: str, body: dict[str, Any], param: str, code: str
) -> None:
    resp = _post(strict_gateway, api_key, body)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert (error["param"], error["code"]) == (param, code)
    assert _post(gateway, api_key, body).status_code == 200  # the same body, without strict


def test_strict_key_flag_can_be_turned_off(stack_env: dict[str, str], gateway: str) -> None:
    made = create_key(stack_env, "strict-toggle")
    body = {"model": "dall-e-2", "prompt": "x", "style": "vivid"}
    cli(stack_env, "keys", "strict-params", made["id"], "on")
    assert _post(gateway, made["key"], body).status_code == 400
    assert "off" in cli(stack_env, "keys", "strict-params", made["id"], "off")
    assert _post(gateway, made["key"], body).status_code == 200
