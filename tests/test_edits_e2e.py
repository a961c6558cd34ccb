"""Edits and variations end to end.

* The whole stack (the official ``openai`` SDK -> gunicorn -> a Celery worker ->
  storage) with ``local/testcard``, which needs no upstream key: several images
  and a mask, variations, what the worker received (drawn into the card), and
  the uploads deleted once the job ended. Answers are checked against OpenAI's
  published schema with ``jsonschema``.
* The OpenAI edits adapter (workers/adapters/openai_edits.py) over real HTTP
  against the edits simulator (simulators/openai_edits.py), served in a thread:
  the multipart parts OpenAI expects, for GPT image models and dall-e-2.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
import requests
from openai import OpenAI
from PIL import Image
from werkzeug.serving import make_server

from shared.catalog import load_catalog
from shared.errors import InvalidRequest
from shared.jobs import Job
from shared.progress import PartialImage, PartialSink
from shared.uploads import data_url
from simulators.openai_edits import create_app as edits_simulator
from simulators.openai_edits import register
from simulators.openai_images import OpenAISimulator
from simulators.state import SimConfig
from tests.conftest import SIM_KEY
from tests.support.openai_schema import openai_schema
from tests.support.sim import sent_with, tagged
from workers.adapters import adapter_for
from workers.adapters.base import CallContext
from workers.adapters.openai_edits import OpenAIEditsAdapter
from workers.http import UpstreamHTTP
from workers.pipeline import build_request

CATALOG = load_catalog()
TESTCARD = "local/testcard"
RED, BLUE = (220, 20, 20), (20, 20, 220)


def png(width: int, height: int, colour: tuple[int, ...] = RED, mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height), colour).save(out, format="PNG")
    return out.getvalue()


def mask_png(width: int, height: int) -> bytes:
    """Opaque but for a fully transparent left half: the area to edit."""
    image = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    image.paste((0, 0, 0, 0), (0, 0, width // 2, height))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def images_response_schema() -> dict[str, Any]:
    """OpenAI's ImagesResponse, with its $refs resolvable (extra fields allowed, as there;
    ``size`` any WxH: see tests/support/openai_schema.py)."""
    return openai_schema("ImagesResponse")


def _decoded(item: Any) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(item.b64_json)))


# -- the whole stack, local/testcard ------------------------------------------------------


def test_sdk_edit_with_several_images_and_a_mask(
    client: OpenAI, stack_env: dict[str, str], images_response_schema: dict[str, Any]
) -> None:
    raw = client.images.with_raw_response.edit(
        model=TESTCARD,
        image=[("red.png", png(64, 48, RED), "image/png"), ("blue.png", png(32, 32, BLUE),
               "image/png")],
        mask=("mask.png", mask_png(64, 48), "image/png"),
        prompt="put both into one picture",
        size="1024x1024",  # OpenAI's schema lists only the GPT sizes in `size`
        n=2,
        response_format="b64_json",
    )  # fmt: skip
    body = raw.http_response.json()
    jsonschema.validate(body, images_response_schema)
    result = raw.parse()
    assert len(result.data) == 2
    card = _decoded(result.data[0]).convert("RGB")
    assert card.size == (1024, 1024)
    # The inputs are drawn along the bottom, in order, in boxes of 1024 // 5 = 204 px
    # 12 px apart (never enlarged: a 64x48 image stays 64x48 at the box's corner).
    top = 1024 - 12 - 204
    assert card.getpixel((12 + 5, top + 5)) == RED
    assert card.getpixel((12 + 204 + 12 + 5, top + 5)) == BLUE
    # The mask's transparent (left) half is tinted: half-way to red, row by row (the
    # card's gradient is vertical), the right half is not.
    left, right = card.getpixel((20, 300)), card.getpixel((1000, 300))
    assert all(
        abs(lv - (rv + tv) / 2) <= 1 for lv, rv, tv in zip(left, right, (220, 30, 30), strict=True)
    )
    assert left != right
    _assert_uploads_deleted(stack_env, raw.headers["x-job-id"])


def _assert_uploads_deleted(stack_env: dict[str, str], job_id: str) -> None:
    uploads = Path(stack_env["IMAGEGATE_STORAGE_DIR"]) / "uploads"
    for _ in range(50):  # the worker deletes them right after recording the result
        if not list(uploads.rglob(f"{job_id}/*")):
            return
        time.sleep(0.1)
    raise AssertionError(f"uploads of {job_id} still stored: {list(uploads.rglob(f'{job_id}/*'))}")


def test_sdk_variation(
    client: OpenAI, stack_env: dict[str, str], images_response_schema: dict[str, Any]
) -> None:
    raw = client.images.with_raw_response.create_variation(
        model=TESTCARD, image=("in.png", png(40, 40, BLUE), "image/png"), n=2, size="1024x1024",
        response_format="b64_json",
    )  # fmt: skip
    jsonschema.validate(raw.http_response.json(), images_response_schema)
    result = raw.parse()
    assert len(result.data) == 2
    card = _decoded(result.data[1]).convert("RGB")
    assert card.size == (1024, 1024)
    # Drawn over the input: blue shows between the grid lines, below the text.
    assert card.getpixel((100, 1000)) == BLUE
    _assert_uploads_deleted(stack_env, raw.headers["x-job-id"])


def test_sdk_edit_url_answer_and_async_job(client: OpenAI, gateway: str, api_key: str) -> None:
    result = client.images.edit(
        model=TESTCARD, image=("a.png", png(30, 30), "image/png"), prompt="p", size="64x64"
    )
    fetched = requests.get(result.data[0].url, timeout=10)
    assert fetched.ok and Image.open(io.BytesIO(fetched.content)).size == (64, 64)
    files = {"image": ("a.png", png(30, 30), "image/png")}
    accepted = requests.post(
        f"{gateway}/v1/images/edits",
        data={"model": TESTCARD, "prompt": "p", "size": "64x64"},
        files=files,
        headers={"Authorization": f"Bearer {api_key}", "Prefer": "respond-async"},
        timeout=30,
    )
    assert accepted.status_code == 202
    location = accepted.headers["Location"]
    for _ in range(100):
        job = requests.get(
            f"{gateway}{location}", headers={"Authorization": f"Bearer {api_key}"}, timeout=10
        ).json()
        if job["status"] == "succeeded":
            break
        time.sleep(0.1)
    assert job["status"] == "succeeded", job


def test_sdk_json_edit_with_a_data_url(client: OpenAI) -> None:
    raw = client.post(
        "/images/edits",
        body={
            "model": TESTCARD,
            "prompt": "p",
            "size": "64x64",
            "response_format": "b64_json",
            "images": [{"image_url": data_url(png(20, 20), "image/png")}],
        },
        cast_to=openai.types.ImagesResponse,
    )
    assert _decoded(raw.data[0]).size == (64, 64)


def test_sdk_streamed_edit_sends_image_edit_events(client: OpenAI) -> None:
    schema = openai_schema("ImageEditStreamEvent")
    events = list(
        client.images.edit(
            model=TESTCARD,
            image=[("a.png", png(30, 30), "image/png"), ("b.png", png(20, 20, BLUE), "image/png")],
            prompt="streamed",
            size="1024x1024",
            n=2,
            stream=True,
        )
    )
    assert [event.type for event in events] == ["image_edit.completed"] * 2
    for event in events:
        jsonschema.validate(event.model_dump(exclude_none=True), schema)
        image = Image.open(io.BytesIO(base64.b64decode(event.b64_json)))
        assert image.size == (1024, 1024)


def test_json_edit_with_an_https_url_is_fetched_by_the_worker(client: OpenAI) -> None:
    # The gateway's own image URL (loopback, allowed in the test stack) as the input.
    made = client.images.generate(model=TESTCARD, prompt="source", size="64x64")
    source = Image.open(io.BytesIO(requests.get(made.data[0].url, timeout=10).content))
    edited = client.post(
        "/images/edits",
        body={"model": TESTCARD, "prompt": "p", "size": "1024x1024", "response_format":
              "b64_json", "images": [{"image_url": made.data[0].url}]},
        cast_to=openai.types.ImagesResponse,
    )  # fmt: skip
    card = _decoded(edited.data[0]).convert("RGB")
    # The 64x64 source sits in the first thumbnail box, at its corner.
    top = 1024 - 12 - 204
    assert card.getpixel((12 + 30, top + 30)) == source.convert("RGB").getpixel((30, 30))
    with pytest.raises(openai.BadRequestError) as caught:
        client.post(
            "/images/edits",
            body={"model": TESTCARD, "prompt": "p", "images": [{"image_url": "ftp://x/a.png"}]},
            cast_to=openai.types.ImagesResponse,
        )
    assert caught.value.body["param"] == "images[0]"


def test_sdk_edit_on_bfl_sends_input_image_and_input_image_2(
    client: OpenAI, simulators: dict[str, str]
) -> None:
    prompt = tagged("kontext edit")
    result = client.images.edit(
        model="black-forest-labs/flux.1-kontext-max",
        image=[("a.png", png(64, 64), "image/png"), ("b.png", png(48, 48, BLUE), "image/png")],
        prompt=prompt,
        size="1024x1024",
    )
    assert result.data[0].url
    sent = sent_with(simulators["bfl"], prompt)[0]["json"]
    assert sent["aspect_ratio"] == "1:1"
    decoded = [
        Image.open(io.BytesIO(base64.b64decode(sent[n]))) for n in ("input_image", "input_image_2")
    ]
    assert [image.size for image in decoded] == [(64, 64), (48, 48)]
    with pytest.raises(openai.BadRequestError) as caught:  # no mask on BFL
        client.images.edit(
            model="black-forest-labs/flux.1-kontext-max",
            image=("a.png", png(64, 64), "image/png"),
            mask=("m.png", mask_png(64, 64), "image/png"),
            prompt=prompt,
        )
    assert caught.value.body["param"] == "mask"


def test_sdk_edit_on_seedream_sends_an_image_list(
    client: OpenAI, simulators: dict[str, str]
) -> None:
    prompt = tagged("seedream edit")
    result = client.images.edit(
        model="bytedance/seedream-4.5",
        image=[("a.png", png(64, 48), "image/png"), ("b.png", png(48, 48, BLUE), "image/png")],
        prompt=prompt,
        size="2048x2048",
    )
    assert len(result.data) == 1
    sent = sent_with(simulators["ark"], prompt)[0]["json"]
    assert len(sent["image"]) == 2 and all(
        i.startswith("data:image/png;base64,") for i in sent["image"]
    )


def test_sdk_errors_name_the_part(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(
            model=TESTCARD,
            image=[("a.png", png(30, 30), "image/png"), ("b.png", b"not an image", "image/png")],
            prompt="p",
        )
    assert caught.value.body["param"] == "image[1]"
    # OpenAI's error envelope, the gateway's extras allowed
    jsonschema.validate(caught.value.response.json(), openai_schema("ErrorResponse"))
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(
            model=TESTCARD,
            image=("a.png", png(30, 30), "image/png"),
            mask=("m.png", mask_png(20, 20), "image/png"),
            prompt="p",
        )
    assert (caught.value.body["param"], caught.value.body["code"]) == ("mask", "invalid_mask")
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.create_variation(model="gpt-image-1", image=("a.png", png(8, 8), "image/png"))
    assert caught.value.body["param"] == "model"


# -- the OpenAI edits adapter against the edits simulator ---------------------------------


@pytest.fixture(scope="module")
def edits_sim() -> Iterator[str]:
    server = make_server("127.0.0.1", 0, edits_simulator(SimConfig(api_key=SIM_KEY)), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def _sim_log(sim: str) -> list[dict[str, Any]]:
    return requests.get(f"{sim}/_sim/requests", timeout=5).json()


def _call(sim: str, model_id: str, request: dict[str, Any], progress: PartialSink | None = None):
    model = CATALOG.model(model_id)
    job = Job(
        id="imgjob_test", key_id="k", model=model_id, family="openai", queue="openai",
        request={"n": 1, **request}, created=time.time(), deadline=time.time() + 30,
    )  # fmt: skip
    built = build_request(job, model)
    images = tuple(data_url(raw, "image/png") for raw in request.get("_images", ()))
    mask = data_url(request["_mask"], "image/png") if "_mask" in request else None
    built = dataclasses.replace(built, images=images, image=images[0], mask=mask)
    deadline = time.time() + 30
    http = UpstreamHTTP(
        session=requests.Session(), deadline=deadline, provider="openai", max_retries=0
    )
    ctx = CallContext(
        CATALOG.families["openai"], f"{sim}/v1", SIM_KEY, http, deadline, progress=progress
    )
    adapter = adapter_for("openai", built.operation)
    assert isinstance(adapter, OpenAIEditsAdapter)
    return adapter.generate(built, ctx)


def test_adapter_sends_gpt_image_edits_as_openai_multipart(edits_sim: str) -> None:
    requests.post(f"{edits_sim}/_sim/reset", timeout=5)
    result = _call(
        edits_sim,
        "gpt-image-1",
        {"operation": "edit", "prompt": "merge", "n": 2, "size": "1024x1536",
         "quality": "low", "input_fidelity": "high", "output_format": "webp",
         "_images": [png(64, 64), png(64, 64, BLUE)], "_mask": mask_png(64, 64)},
    )  # fmt: skip
    assert len(result.images) == 2
    assert Image.open(io.BytesIO(result.images[0].data)).size == (1024, 1536)
    assert result.reported["usage"]["total_tokens"] > 0
    sent = _sim_log(edits_sim)[-1]
    assert sent["path"] == "/v1/images/edits" and sent["status"] == 200
    body = sent["json"]
    assert [f["part"] for f in body["files"]] == ["image[]", "image[]", "mask"]
    assert (body["model"], body["n"], body["input_fidelity"]) == ("gpt-image-1", 2, "high")
    assert "response_format" not in body  # GPT image models always answer base64


class _Partials(PartialSink):
    """Records what the adapter publishes instead of sending it to Redis."""

    def __init__(self, partial_images: int) -> None:
        super().__init__(None, "imgjob_test", partial_images=partial_images, max_bytes=1 << 20)  # type: ignore[arg-type]
        self.seen: list[PartialImage] = []

    def publish(self, partial: PartialImage) -> bool:
        self.seen.append(partial)
        return True


def test_adapter_streams_a_gpt_image_edit_when_the_client_streams(edits_sim: str) -> None:
    sink = _Partials(partial_images=2)
    result = _call(
        edits_sim, "gpt-image-1",
        {"operation": "edit", "prompt": "merge", "_images": [png(64, 64)]},
        progress=sink,
    )  # fmt: skip
    assert len(result.images) == 1 and result.images[0].data
    assert len(sink.seen) == 2
    sent = _sim_log(edits_sim)[-1]["json"]
    assert (sent["stream"], sent["partial_images"]) == (True, 2)


def test_adapter_sends_a_dall_e_2_edit_and_variation(edits_sim: str) -> None:
    result = _call(
        edits_sim, "dall-e-2",
        {"operation": "edit", "prompt": "a hat", "size": "256x256", "_images": [png(64, 64)],
         "_mask": mask_png(64, 64)},
    )  # fmt: skip
    assert Image.open(io.BytesIO(result.images[0].data)).size == (256, 256)
    sent = _sim_log(edits_sim)[-1]["json"]
    assert [f["part"] for f in sent["files"]] == ["image", "mask"]
    assert sent["response_format"] == "b64_json"  # the catalog's option: no second download
    result = _call(
        edits_sim, "dall-e-2",
        {"operation": "variation", "prompt": "", "size": "512x512", "_images": [png(32, 32)]},
    )  # fmt: skip
    assert Image.open(io.BytesIO(result.images[0].data)).size == (512, 512)
    sent = _sim_log(edits_sim)[-1]
    assert sent["path"] == "/v1/images/variations" and "prompt" not in sent["json"]


def test_upstream_refusals_reach_the_client_as_400(edits_sim: str) -> None:
    # dall-e-2 takes square images only: the upstream's 400 names the image.
    with pytest.raises(InvalidRequest) as caught:
        _call(edits_sim, "dall-e-2",
              {"operation": "edit", "prompt": "p", "_images": [png(64, 32)]})  # fmt: skip
    assert caught.value.param == "image"


def test_register_adds_the_routes_to_a_plain_openai_simulator() -> None:
    # What simulators/openai_images.py can call to serve edits and variations itself.
    sim = OpenAISimulator(SimConfig(api_key=SIM_KEY))
    register(sim)
    client = sim.app.test_client()
    headers = {"Authorization": f"Bearer {SIM_KEY}"}
    data = {"model": "dall-e-2", "prompt": "p", "size": "256x256",
            "image": (io.BytesIO(png(32, 32)), "a.png")}  # fmt: skip
    assert client.post("/v1/images/edits", data=data, headers=headers).status_code == 200
    data = {"image": (io.BytesIO(png(32, 32)), "a.png"), "n": "2"}
    answer = client.post("/v1/images/variations", data=data, headers=headers)
    assert answer.status_code == 200 and len(answer.get_json()["data"]) == 2
