"""Edits on Stability, Replicate and fal (issue 14): each adapter sends the edit's
images and OpenAI's mask in its upstream's own form, against the session's
simulators, which check those fields as the real upstreams do; and one edit on
``stability/inpaint`` through the whole stack."""

from __future__ import annotations

import base64
import dataclasses
import io
import time
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest
import requests
from openai import OpenAI
from PIL import Image

from shared.catalog import load_catalog
from shared.errors import InvalidRequest, UpstreamError
from shared.sizing import parse_size
from shared.uploads import data_url
from tests.conftest import SIM_KEY
from tests.support.sim import sent_with, tagged
from workers.adapters import adapter_for
from workers.adapters import replicate as replicate_adapter
from workers.adapters.base import CallContext, ImageRequest, ImageResult
from workers.adapters.masks import painted_mask
from workers.http import UpstreamHTTP

CATALOG = load_catalog()


def png(size: tuple[int, int], colour: tuple[int, ...] = (200, 30, 30), mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, colour).save(out, format="PNG")
    return out.getvalue()


def openai_mask(size: tuple[int, int]) -> bytes:
    """OpenAI's mask: opaque, but for a fully transparent left half (the area to edit)."""
    image = Image.new("RGBA", size, (0, 0, 0, 255))
    image.paste((0, 0, 0, 0), (0, 0, size[0] // 2, size[1]))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _ctx(family: str, simulators: dict[str, str]) -> CallContext:
    fam = CATALOG.families[family]
    deadline = time.time() + 30
    http = UpstreamHTTP(
        session=requests.Session(), deadline=deadline, provider=family, max_retries=0
    )
    base = simulators[family] + urlsplit(fam.base_url).path.rstrip("/")
    return CallContext(fam, base, SIM_KEY, http, deadline, client_http=http)


def _edit(
    model_id: str, prompt: str, images: list[bytes], mask: bytes | None = None, **options: Any
) -> ImageRequest:
    model = CATALOG.models[model_id]
    if options:
        model = dataclasses.replace(model, options=MappingProxyType({**model.options, **options}))
    decision = model.size_rule.clamp(parse_size("1024x1024"), None, model.default_size)
    refs = tuple(data_url(image, "image/png") for image in images)
    return ImageRequest(
        prompt=prompt, model=model, n=1,
        width=decision.size.width if decision.size else None,
        height=decision.size.height if decision.size else None,
        aspect_ratio=decision.aspect_ratio, operation="edit", images=refs, image=refs[0],
        mask=data_url(mask, "image/png") if mask is not None else None,
    )  # fmt: skip


def _run(request: ImageRequest, simulators: dict[str, str]) -> ImageResult:
    family = CATALOG.families[request.model.family]
    adapter = adapter_for(family.adapter, request.operation)
    assert adapter is not None
    return adapter.generate(request, _ctx(family.name, simulators))


def _decoded(url: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(url.partition(",")[2])))


@pytest.mark.fast
def test_openai_mask_is_painted_white_where_to_edit() -> None:
    ctx = CallContext(CATALOG.families["local"], "", None, None, 0.0)  # type: ignore[arg-type]
    white = Image.open(io.BytesIO(painted_mask(data_url(openai_mask((8, 4)), "image/png"), ctx)))
    assert white.mode == "L" and white.size == (8, 4)
    assert (white.getpixel((0, 0)), white.getpixel((7, 3))) == (255, 0)
    black = painted_mask(data_url(openai_mask((8, 4)), "image/png"), ctx, paint="black")
    assert Image.open(io.BytesIO(black)).getpixel((0, 0)) == 0
    with pytest.raises(InvalidRequest) as caught:
        painted_mask(data_url(b"not a png", "image/png"), ctx)
    assert caught.value.param == "mask"


# -- Stability: /v2beta/stable-image/edit/inpaint ------------------------------------------


def test_stability_inpaints_with_the_mask_as_a_file_part(simulators: dict[str, str]) -> None:
    prompt = tagged("a red door")
    result = _run(
        _edit("stability/inpaint", prompt, [png((320, 192))], openai_mask((320, 192))), simulators
    )
    image = Image.open(io.BytesIO(result.images[0].data or b""))
    assert image.size == (320, 192)  # inpainting keeps the image's size
    (sent,) = sent_with(simulators["stability"], prompt)
    assert sent["path"] == "/v2beta/stable-image/edit/inpaint"
    assert set(sent["files"]) == {"image", "mask"}
    assert not {"aspect_ratio", "strength", "mode"} & set(sent["form"])


def test_stability_inpainting_without_a_mask_needs_transparency(
    simulators: dict[str, str],
) -> None:
    # As OpenAI's dall-e-2: the image's own transparent pixels are the mask.
    transparent = png((128, 128), (10, 10, 10, 0), mode="RGBA")
    assert _run(_edit("stability/inpaint", tagged(), [transparent]), simulators).images
    with pytest.raises(InvalidRequest) as caught:  # Stability's own 400, naming the part
        _run(_edit("stability/inpaint", tagged(), [png((128, 128))]), simulators)
    assert caught.value.param == "mask"


def test_stability_refuses_a_mask_elsewhere_and_an_inpaint_without_image(
    simulators: dict[str, str],
) -> None:
    prompt = tagged()
    request = _edit("stability/stable-image-ultra", prompt, [png((128, 128))], png((128, 128)))
    with pytest.raises(InvalidRequest) as caught:
        _run(request, simulators)
    assert caught.value.param == "mask"
    generation = dataclasses.replace(
        _edit("stability/inpaint", prompt, [png((64, 64))]),
        operation="generate", images=(), image=None,
    )  # fmt: skip
    with pytest.raises(InvalidRequest) as caught:
        _run(generation, simulators)
    assert caught.value.param == "image"
    assert sent_with(simulators["stability"], prompt) == []


# -- Replicate: sdxl's image + mask inputs -------------------------------------------------


def test_replicate_sdxl_inpaints_with_a_painted_mask(
    simulators: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replicate_adapter, "POLL_INTERVAL", 0.05)
    prompt = tagged("a red door")
    result = _run(_edit("sdxl", prompt, [png((64, 64))], openai_mask((64, 64))), simulators)
    assert result.images[0].url
    (sent,) = sent_with(simulators["replicate"], prompt)
    sent_input = sent["json"]["input"]
    assert sent_input["image"].startswith("data:image/png;base64,")
    mask = _decoded(sent_input["mask"])  # Replicate's convention: white = repaint
    assert (mask.getpixel((0, 0)), mask.getpixel((63, 63))) == (255, 0)


def test_replicate_fails_a_mask_that_is_not_the_images_size(
    simulators: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replicate_adapter, "POLL_INTERVAL", 0.05)
    with pytest.raises(UpstreamError) as caught:  # the prediction fails, as sdxl's code does
        _run(_edit("sdxl", tagged(), [png((64, 64))], openai_mask((32, 32))), simulators)
    assert "size" in caught.value.message
    with pytest.raises(InvalidRequest) as refused:  # flux-dev has no mask input
        _run(_edit("flux-dev", tagged(), [png((64, 64))], openai_mask((64, 64))), simulators)
    assert refused.value.param == "mask"


# -- fal: the image-to-image app, image_url(s), mask_url -----------------------------------


def test_fal_edit_goes_to_the_image_to_image_app(simulators: dict[str, str]) -> None:
    prompt = tagged("a red door")
    result = _run(_edit("zhipu/z-image-turbo", prompt, [png((64, 64))]), simulators)
    assert result.images
    submits = [e for e in sent_with(simulators["fal"], prompt) if e.get("kind") == "submit"]
    (sent,) = submits
    assert sent["path"] == "/fal-ai/z-image/turbo/image-to-image"
    assert sent["json"]["image_url"].startswith("data:image/png;base64,")


def test_fal_fill_inpaints_with_mask_url_and_the_images_size(
    simulators: dict[str, str],
) -> None:
    prompt = tagged("a red door")
    fill = "black-forest-labs/flux.1-fill-pro"
    result = _run(_edit(fill, prompt, [png((320, 192))], openai_mask((320, 192))), simulators)
    assert result.images
    (sent,) = [e for e in sent_with(simulators["fal"], prompt) if e.get("kind") == "submit"]
    assert sent["path"] == "/fal-ai/flux-pro/v1/fill"
    assert "image_size" not in sent["json"]  # the output keeps the image's size
    mask = _decoded(sent["json"]["mask_url"])
    assert (mask.getpixel((0, 0)), mask.getpixel((319, 191))) == (255, 0)
    with pytest.raises(InvalidRequest) as caught:  # fal's 422 on mask_url names the mask
        _run(_edit(fill, tagged(), [png((320, 192))], openai_mask((64, 64))), simulators)
    assert caught.value.param == "mask"


def test_fal_refuses_a_mask_where_the_app_has_none_and_lists_several_images(
    simulators: dict[str, str],
) -> None:
    prompt = tagged()
    with pytest.raises(InvalidRequest) as caught:  # no mask input on z-image
        _run(
            _edit("zhipu/z-image-turbo", prompt, [png((64, 64))], openai_mask((64, 64))), simulators
        )
    assert caught.value.param == "mask"
    assert sent_with(simulators["fal"], prompt) == []
    # An app whose field is a list gets every image in order (z-image's app then refuses
    # the unknown field with a 422, after it was sent).
    request = _edit(
        "zhipu/z-image-turbo", prompt, [png((64, 64)), png((32, 32))], image_field="image_urls"
    )
    with pytest.raises(InvalidRequest):
        _run(request, simulators)
    (sent,) = [e for e in sent_with(simulators["fal"], prompt) if e.get("kind") == "submit"]
    assert [len(url) > 30 for url in sent["json"]["image_urls"]] == [True, True]


# -- through the stack ---------------------------------------------------------------------


def test_sdk_inpaints_on_stability(client: OpenAI) -> None:
    prompt = tagged("a red door")
    result = client.images.edit(
        model="stability/inpaint",
        image=("door.png", png((320, 192)), "image/png"),
        mask=("mask.png", openai_mask((320, 192)), "image/png"),
        prompt=prompt,
        response_format="b64_json",
    )
    image = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json or "")))
    assert image.size == (320, 192)
    assert result.size == "320x192"


def test_an_edits_only_model_refuses_generations_and_says_so(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(model="stability/inpaint", prompt="a red door")
    assert (caught.value.body["param"], caught.value.body["code"]) == ("model", "invalid_value")
    listed = {m.id: m.model_extra for m in client.models.list().data}
    assert listed["stability/inpaint"]["generations"] is False
    assert listed["stability/inpaint"]["mask"] is True
    assert listed["dall-e-2"]["generations"] is True
