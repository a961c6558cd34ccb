"""Edits through virtual models (issue 14): routing keeps the candidates that take the
edit's input images (``max_reference_images``) and its mask, and the job runs the edit
on the one it picked, through that model's own upstream form."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import fakeredis
import openai
import pytest
import requests
from openai import OpenAI
from PIL import Image

from api.routing import Inputs, plan
from api.schemas import EditRequest
from shared.errors import InvalidRequest
from shared.health import BreakerPolicy, Breakers
from shared.settings import Settings
from tests.support.sim import sent_with, tagged

OVERLAY = str(Path(__file__).parent / "data" / "test_models.toml")


def png(width: int, height: int, alpha: bool = False) -> bytes:
    out = io.BytesIO()
    Image.new("RGBA" if alpha else "RGB", (width, height)).save(out, format="PNG")
    return out.getvalue()


def _plan(virtual: str, inputs: Inputs, **fields: object) -> list[str]:
    settings = Settings.from_env(
        {
            "IMAGEGATE_CATALOG_OVERLAYS": OVERLAY,
            "OPENAI_API_KEY": "configured",
            "BFL_API_KEY": "configured",
            "STABILITY_API_KEY": "configured",
            "FAL_KEY": "configured",
            "ARK_API_KEY": "configured",
            "REPLICATE_API_TOKEN": "configured",
        }
    )
    catalog = settings.load_catalog()
    breakers = Breakers(fakeredis.FakeRedis(decode_responses=True), BreakerPolicy())
    routes = plan(
        EditRequest(prompt="x", **fields), catalog.virtual[virtual], catalog=catalog,
        settings=settings, breakers=breakers, inputs=inputs,
    )  # fmt: skip
    return sorted(route.model.id for route in routes)


@pytest.mark.fast
def test_routing_keeps_the_candidates_that_take_the_inputs() -> None:
    # test/max-side edits nothing; local/testcard takes 16 images and a mask.
    assert _plan("test/virtual", Inputs(images=1)) == ["local/testcard"]
    # image-pro: gpt-image-1.5 (16 + mask), flux.1-kontext-max (4), stable-image-ultra (1).
    assert "stability/stable-image-ultra" in _plan("image-pro", Inputs(images=1))
    assert _plan("image-pro", Inputs(images=3)) == [
        "black-forest-labs/flux.1-kontext-max",
        "gpt-image-1.5",
    ]
    assert _plan("image-pro", Inputs(images=1, mask=True)) == ["gpt-image-1.5"]
    with pytest.raises(InvalidRequest) as caught:
        _plan("image-pro", Inputs(images=17))
    assert caught.value.param == "image" and "image-pro" in caught.value.message


def test_sdk_edit_through_a_virtual_model_runs_on_a_candidate_that_edits(
    client: OpenAI, gateway: str, api_key: str
) -> None:
    raw = client.images.with_raw_response.edit(
        model="test/virtual",
        image=[("a.png", png(40, 40), "image/png"), ("b.png", png(20, 20), "image/png")],
        mask=("m.png", png(40, 40, alpha=True), "image/png"),
        prompt="both",
        size="256x256",
        response_format="b64_json",
    )
    body = raw.http_response.json()
    assert (body["model"], body["served_by"]) == ("test/virtual", "local/testcard")
    card = Image.open(io.BytesIO(base64.b64decode(body["data"][0]["b64_json"])))
    assert card.size == (256, 256)
    job = requests.get(
        f"{gateway}/v1/images/generations/{raw.headers['x-job-id']}",
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=10,
    ).json()
    assert (job["status"], job["served_by"]) == ("succeeded", "local/testcard")


def test_a_masked_edit_through_image_pro_reaches_openai_edits(client: OpenAI, sim: str) -> None:
    prompt = tagged("repaint the left half")
    result = client.images.edit(
        model="image-pro",
        image=("a.png", png(64, 64), "image/png"),
        mask=("m.png", png(64, 64, alpha=True), "image/png"),
        prompt=prompt,
        size="1024x1024",
    )
    assert result.model_extra["served_by"] == "gpt-image-1.5"
    assert result.data[0].url  # a virtual model answers url by default
    (sent,) = sent_with(sim, prompt)
    assert sent["path"] == "/v1/images/edits"
    assert [f["part"] for f in sent["json"]["files"]][-1] == "mask"
    assert len(sent["json"]["files"]) == 2
    assert (sent["json"]["model"], sent["json"]["quality"]) == ("gpt-image-1.5", "high")


def test_no_candidate_takes_the_inputs_is_a_400_naming_them(client: OpenAI) -> None:
    # `image`: Seedream, FLUX.2 [pro] and flux-dev take references, none a mask.
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(
            model="image",
            image=("a.png", png(64, 64), "image/png"),
            mask=("m.png", png(64, 64, alpha=True), "image/png"),
            prompt="no mask here",
        )
    assert (caught.value.body["param"], caught.value.body["code"]) == (
        "mask",
        "unsupported_parameter",
    )
    assert "'image'" in caught.value.body["message"]
