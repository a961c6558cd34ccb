"""openai-node, the official Node SDK, drives edits (several images and a mask),
variations and streaming through the live stack (issue 14, item 7): a Node
application works against the gateway with only ``baseURL`` changed. What it
parsed is checked against OpenAI's published schema like the Python SDK's.

One Node process runs every scenario (tests/support/openai_node_client.mjs), so
the SDK is loaded once; the pinned SDK is installed with npm on the first run.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from PIL import Image

from tests.support import openai_node
from tests.support.openai_schema import openai_schema
from tests.support.sim import sent_with, tagged


def _png(path: Path, size: tuple[int, int], colour: tuple[int, ...], mode: str = "RGB") -> Path:
    Image.new(mode, size, colour).save(path, format="PNG")
    return path


@pytest.fixture(scope="module")
def outcomes(
    gateway: str, api_key: str, simulator: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("openai-node")
    images = [
        _png(folder / "red.png", (64, 48), (220, 20, 20)),
        _png(folder / "blue.png", (32, 32), (20, 20, 220)),
    ]
    mask = _png(folder / "mask.png", (64, 48), (0, 0, 0, 0), mode="RGBA")  # edit everywhere
    prompt = tagged("merge them")
    ran = openai_node.run(gateway, api_key, images=images, mask=mask, prompt=prompt)
    return {"prompt": prompt, **ran}


def _result(outcomes: dict[str, Any], scenario: str) -> Any:
    outcome = outcomes[scenario]
    assert "error" not in outcome, outcome
    return outcome["result"]


def _decoded(item: dict[str, Any]) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))


def test_node_edit_with_several_images_and_a_mask(outcomes: dict[str, Any]) -> None:
    result = _result(outcomes, "edit")
    jsonschema.validate(result, openai_schema("ImagesResponse"))
    assert len(result["data"]) == 2
    assert all(_decoded(item).size == (1024, 1024) for item in result["data"])


def test_node_edit_reaches_openai_edits_as_multipart(
    outcomes: dict[str, Any], simulator: str
) -> None:
    result = _result(outcomes, "edit_gpt")
    jsonschema.validate(result, openai_schema("ImagesResponse"))
    assert _decoded(result["data"][0]).format == "PNG"  # GPT image models: b64_json
    (sent,) = sent_with(simulator, outcomes["prompt"])
    assert sent["path"] == "/v1/images/edits"
    assert [f["part"] for f in sent["json"]["files"]] == ["image[]", "image[]", "mask"]
    assert sent["json"]["input_fidelity"] == "high"


def test_node_variation(outcomes: dict[str, Any]) -> None:
    result = _result(outcomes, "variation")
    jsonschema.validate(result, openai_schema("ImagesResponse"))
    (item,) = result["data"]
    assert _decoded(item).size == (256, 256)


def test_node_streams_a_generation_with_partial_images(outcomes: dict[str, Any]) -> None:
    events = _result(outcomes, "stream_generate")
    types = [event["type"] for event in events]
    assert types == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    for event in events:
        jsonschema.validate(event, openai_schema("ImageGenStreamEvent"))
    assert _decoded(events[-1]).size == (1024, 1024)


def test_node_streams_an_edit(outcomes: dict[str, Any]) -> None:
    events = _result(outcomes, "stream_edit")
    assert [event["type"] for event in events][-1] == "image_edit.completed"
    assert all(event["type"].startswith("image_edit.") for event in events)
    for event in events:
        jsonschema.validate(event, openai_schema("ImageEditStreamEvent"))


def test_node_sees_openai_errors(outcomes: dict[str, Any]) -> None:
    error = outcomes["bad_mask"]["error"]
    assert error["status"] == 400
    jsonschema.validate({"error": error["body"]}, openai_schema("ErrorResponse"))
    assert error["body"]["param"] == "mask"
