"""``stream=true`` on POST /v1/images/generations through the live stack (gunicorn,
Celery workers, Redis, the OpenAI simulator), driven by the official ``openai``
SDK and, where the bytes on the wire matter (keep-alive comments, a client that
hangs up), by a raw HTTP client. Every event is checked against OpenAI's
published schema of its stream events.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import jsonschema
import openai
import pytest
import requests
from openai import OpenAI
from PIL import Image

from api.waiter import CompletionHub
from shared import progress
from shared.billing import Accounts
from shared.jobs import JobStore
from shared.redis_client import connect
from shared.settings import Settings
from tests.conftest import create_key
from tests.support.jobs import make_job
from tests.support.openai_schema import openai_schema
from tests.support.sim import fault, sent_with, tagged

GPT_PRICE = 167_000  # gpt-image-1 with no quality: charged as high (0.167), micro-units


@pytest.fixture(scope="module")
def schemas() -> dict[str, dict[str, Any]]:
    """OpenAI's stream-event and error schemas, with their $refs resolvable."""
    return {name: openai_schema(name) for name in ("ImageGenStreamEvent", "ErrorResponse")}


def _check_event(event: dict[str, Any], schemas: dict[str, dict[str, Any]]) -> None:
    schema = schemas["ErrorResponse"] if event.get("type") == "error" else schemas[
        "ImageGenStreamEvent"
    ]  # fmt: skip
    jsonschema.validate(event, schema)
    if event["type"] != "error":  # anyOf of two: the type must pick the right one
        props = schemas["ImageGenStreamEvent"]["components"]["schemas"]
        name = {
            "image_generation.partial_image": "ImageGenPartialImageEvent",
            "image_generation.completed": "ImageGenCompletedEvent",
        }[event["type"]]
        jsonschema.validate(event, {**props[name], "components": schemas["ErrorResponse"][
            "components"
        ]})  # fmt: skip


def _image(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def _post_stream(gateway: str, key: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(
        f"{gateway}/v1/images/generations",
        json={**body, "stream": True},
        headers={"Authorization": f"Bearer {key}"},
        stream=True,
        timeout=60,
    )


def _raw_events(response: requests.Response) -> Iterator[tuple[str, bytes]]:
    """("comment", text) and (event name, data) in the order they come."""
    buffer = b""
    for chunk in response.iter_content(chunk_size=None):
        buffer += chunk
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            if block.startswith(b":"):
                yield "comment", block
                continue
            name, data = "message", b""
            for line in block.split(b"\n"):
                if line.startswith(b"event: "):
                    name = line[7:].decode()
                elif line.startswith(b"data: "):
                    data = line[6:]
            yield name, data


def _wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _accounts(env: dict[str, str]) -> Accounts:
    settings = Settings.from_env(env)
    return Accounts(connect(settings.redis_url), settings.load_catalog())


@pytest.fixture()
def billed(gateway: str, stack_env: dict[str, str]) -> Callable[[str], tuple[str, str]]:
    """A key of its own with a balance of 1.00 (1,000,000 micro-units): (id, key)."""

    def make(name: str) -> tuple[str, str]:
        created = create_key(stack_env, name, tier="test-billing", balance="1.00")
        return created["id"], created["key"]

    return make


# -- what a streaming client receives ----------------------------------------------------


def test_gpt_model_relays_partial_images_as_they_come_then_the_image(
    client: OpenAI, sim: str, schemas: dict[str, dict[str, Any]]
) -> None:
    prompt = tagged("otter sim-pace=0.4")
    stream = client.images.generate(
        model="gpt-image-1", prompt=prompt, stream=True, partial_images=2, quality="low"
    )
    seen: list[tuple[float, dict[str, Any]]] = []
    for event in stream:
        seen.append((time.monotonic(), event.to_dict()))
    for _, event in seen:
        _check_event(event, schemas)
    kinds = [e["type"] for _, e in seen]
    assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [e["partial_image_index"] for _, e in seen[:2]] == [0, 1]
    # Relayed as they came: the first partial reached us well before the upstream finished.
    assert seen[2][0] - seen[0][0] > 0.5
    partial, completed = seen[0][1], seen[2][1]
    assert _image(partial["b64_json"]).size == (128, 128)  # the simulator's 1/8 preview
    assert _image(completed["b64_json"]).size == (1024, 1024)
    assert completed["size"] == "1024x1024" and completed["quality"] == "low"
    assert completed["output_format"] == "png" and completed["background"] == "opaque"
    assert completed["usage"]["output_tokens"] == 272  # OpenAI's low 1024x1024 count
    (upstream,) = sent_with(sim, prompt)
    assert upstream["json"]["stream"] is True and upstream["json"]["partial_images"] == 2


def test_a_model_without_partials_sends_one_completed_event_per_image(
    client: OpenAI, sim: str, schemas: dict[str, dict[str, Any]]
) -> None:
    prompt = tagged("two")
    events = [
        e.to_dict()
        for e in client.images.generate(
            model="dall-e-2", prompt=prompt, n=2, size="256x256", stream=True, partial_images=2
        )
    ]
    assert [e["type"] for e in events] == ["image_generation.completed"] * 2
    for event in events:
        _check_event(event, schemas)
        assert _image(event["b64_json"]).size == (256, 256)
        assert event["size"] == "auto"  # not a size OpenAI's event schema allows
        assert event["usage"]["total_tokens"] == 0  # dall-e reports no usage
    (upstream,) = sent_with(sim, prompt)
    assert "stream" not in upstream["json"] and "partial_images" not in upstream["json"]


def test_no_partial_images_asked_means_none_sent(
    client: OpenAI, sim: str, schemas: dict[str, dict[str, Any]]
) -> None:
    prompt = tagged("none")
    events = [e.to_dict() for e in client.images.generate(model="gpt-image-1", prompt=prompt,
                                                          stream=True)]  # fmt: skip
    assert [e["type"] for e in events] == ["image_generation.completed"]
    _check_event(events[0], schemas)
    (upstream,) = sent_with(sim, prompt)
    assert "stream" not in upstream["json"]


def test_an_upstream_failure_is_an_error_event_and_refunded(
    gateway: str,
    billed: Callable[[str], tuple[str, str]],
    stack_env: dict[str, str],
    schemas: dict[str, dict[str, Any]],
) -> None:
    key_id, key = billed("stream-failure")
    client = OpenAI(api_key=key, base_url=f"{gateway}/v1", max_retries=0, timeout=60)
    stream = client.images.generate(
        model="gpt-image-1", prompt=fault(500, 3), stream=True, partial_images=1
    )
    with pytest.raises(openai.APIError) as info:
        list(stream)
    assert info.value.body["type"] == "upstream_error"
    assert info.value.body["job_id"].startswith("imgjob_")
    # On the wire: 200, then one error event shaped like OpenAI's error body.
    response = _post_stream(gateway, key, {"model": "gpt-image-1", "prompt": fault(500, 3)})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = [(n, d) for n, d in _raw_events(response) if n != "comment"]
    assert [n for n, _ in events] == ["error"]
    body = json.loads(events[0][1])
    _check_event(body, schemas)
    assert body["status_code"] == 502 and body["error"]["job_id"] == response.headers["x-job-id"]
    assert _accounts(stack_env).balance(key_id) == 1_000_000  # both refunded in full


def test_a_failure_mid_stream_upstream_is_an_error_event(client: OpenAI) -> None:
    stream = client.images.generate(
        model="gpt-image-1", prompt=tagged("streamfail"), stream=True, partial_images=1
    )
    events = []
    with pytest.raises(openai.APIError) as info:
        for event in stream:
            events.append(event.type)
    assert events == ["image_generation.partial_image"]  # relayed before the failure
    assert info.value.body["type"] == "upstream_error"


def test_a_client_that_hangs_up_mid_stream_breaks_neither_job_nor_billing(
    gateway: str, billed: Callable[[str], tuple[str, str]], stack_env: dict[str, str]
) -> None:
    key_id, key = billed("stream-hangup")
    body = {"model": "gpt-image-1", "prompt": tagged("sim-pace=0.5"), "partial_images": 3}
    response = _post_stream(gateway, key, body)
    job_id = response.headers["x-job-id"]
    first = next(n for n, _ in _raw_events(response) if n != "comment")
    assert first == "image_generation.partial_image"
    response.close()  # gone, two seconds before the image is done
    deadline = time.monotonic() + 30
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = requests.get(
            f"{gateway}/v1/images/generations/{job_id}",
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        ).json()
        if job["status"] != "running" and job["status"] != "queued":
            break
        time.sleep(0.2)
    assert job["status"] == "succeeded"
    assert _image(job["result"]["data"][0]["b64_json"]).size == (1024, 1024)
    assert _accounts(stack_env).balance(key_id) == 1_000_000 - GPT_PRICE  # billed once
    kinds = [e["kind"] for e in _accounts(stack_env).ledger(key_id)]
    assert kinds[-2:] == ["reserve", "settle"] and "refund" not in kinds
    # Its web process let go of the job's progress channel.
    redis = connect(Settings.from_env(stack_env).redis_url)
    numsub = lambda: redis.pubsub_numsub(progress.channel(job_id))[0][1]  # noqa: E731
    _wait_until(lambda: numsub() == 0)
    # The web process is none the worse: the next request is answered.
    again = _post_stream(gateway, key, {"model": "local/testcard", "prompt": "x"})
    assert [n for n, _ in _raw_events(again) if n != "comment"] == ["image_generation.completed"]


def test_an_idempotent_retry_streams_the_same_job(gateway: str, api_key: str) -> None:
    key = tagged("idem")
    first, second = (
        requests.post(
            f"{gateway}/v1/images/generations",
            json={"model": "local/testcard", "prompt": "again", "stream": True},
            headers={"Authorization": f"Bearer {api_key}", "Idempotency-Key": key},
            stream=True,
            timeout=60,
        )
        for _ in range(2)
    )
    events = [[d for n, d in _raw_events(r) if n != "comment"] for r in (first, second)]
    assert first.headers["x-job-id"] == second.headers["x-job-id"]
    assert len(events[0]) == len(events[1]) == 1
    assert json.loads(events[0][0])["b64_json"] == json.loads(events[1][0])["b64_json"]


# -- keep-alive and the budget -----------------------------------------------------------


@pytest.fixture(scope="module")
def short_gateway(start_gateway, workers) -> str:
    """A front-end with a 0.3 s keep-alive and a 3 s budget."""
    return start_gateway(
        "web-stream", IMAGEGATE_STREAM_KEEPALIVE_SECONDS="0.3", IMAGEGATE_SYNC_BUDGET_SECONDS="3"
    )


def test_keep_alive_comments_while_the_upstream_is_slow(
    short_gateway: str, api_key: str, sim: str, schemas: dict[str, dict[str, Any]]
) -> None:
    requests.post(f"{sim}/_sim/config", json={"latency": 1.5}, timeout=5).raise_for_status()
    response = _post_stream(short_gateway, api_key, {"model": "dall-e-2", "prompt": "slow",
                                                     "size": "256x256"})  # fmt: skip
    events = list(_raw_events(response))
    names = [n for n, _ in events]
    assert names[-1] == "image_generation.completed"
    assert names.count("comment") >= 3  # 1.5 s of silence upstream, one every 0.3 s
    assert all(d == b": keep-alive" for n, d in events if n == "comment")
    _check_event(json.loads(events[-1][1]), schemas)


def test_the_budget_ends_a_stream_with_a_timeout_error_event(
    short_gateway: str, api_key: str, sim: str, schemas: dict[str, dict[str, Any]]
) -> None:
    requests.post(f"{sim}/_sim/config", json={"latency": 6}, timeout=5).raise_for_status()
    started = time.monotonic()
    response = _post_stream(short_gateway, api_key, {"model": "dall-e-2", "prompt": "late",
                                                     "size": "256x256"})  # fmt: skip
    events = [(n, d) for n, d in _raw_events(response) if n != "comment"]
    assert time.monotonic() - started < 5.5
    assert [n for n, _ in events] == ["error"]
    body = json.loads(events[0][1])
    _check_event(body, schemas)
    assert body["status_code"] == 504
    assert body["error"]["type"] == "timeout_error" and body["error"]["code"] == "timeout"
    assert body["error"]["job_id"] == response.headers["x-job-id"]


# -- the transport: worker -> web ---------------------------------------------------------


def test_partials_reach_only_their_jobs_streaming_waiters_and_stay_bounded(redis_server) -> None:
    # A database no live worker's reaper looks at: the jobs made here are never sent.
    client = connect(redis_server.url.rsplit("/", 1)[0] + "/8")
    store = JobStore(client, retention_seconds=600)
    hub = CompletionHub(client, store, poll_interval=30.0)
    job, other = make_job(store), make_job(store)
    streaming = hub.expect(job.id, progress=True)
    plain = hub.expect(job.id)
    elsewhere = hub.expect(other.id, progress=True)
    numsub = lambda: client.pubsub_numsub(progress.channel(job.id))[0][1]  # noqa: E731
    _wait_until(lambda: numsub() == 1)  # one subscription for the process, not per waiter

    def partial(index: int, image: int = 0, size: int = 100) -> progress.PartialImage:
        b64 = base64.b64encode(b"p" * size).decode()
        return progress.PartialImage(b64_json=b64, partial_image_index=index, image_index=image)

    sink = progress.PartialSink(client, job.id, partial_images=2, max_bytes=1000)
    assert not sink.publish(partial(0, size=1001))  # over the byte bound: not sent
    assert sink.publish(partial(0)) and sink.publish(partial(1))
    assert not sink.publish(partial(2))  # more than the client asked for
    assert sink.publish(partial(0, image=1))  # the next image has its own count
    _wait_until(lambda: len(streaming.partials or ()) == 3)
    taken = streaming.take_partials()
    assert [(p.image_index, p.partial_image_index) for p in taken] == [(0, 0), (0, 1), (1, 0)]
    assert all(p.created_at and base64.b64decode(p.b64_json) == b"p" * 100 for p in taken)
    assert plain.partials is None and not elsewhere.partials
    streaming.close()
    _wait_until(lambda: numsub() == 0)  # the last streaming waiter of the job let go
    plain.close()
    elsewhere.close()
    assert progress.PartialSink(client, job.id, partial_images=9, max_bytes=1).partial_images == 3


# -- refused before streaming: ordinary JSON errors ---------------------------------------


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        ({"stream": "yes"}, "stream", "invalid_value"),
        ({"stream": True, "partial_images": 4}, "partial_images", "invalid_value"),
        ({"stream": True, "webhook_url": "https://example.com/hook"}, "stream", "invalid_value"),
    ],
)
def test_bad_stream_requests_are_400_before_any_stream(
    gateway: str, api_key: str, extra: dict[str, Any], param: str, code: str
) -> None:
    response = requests.post(
        f"{gateway}/v1/images/generations",
        json={"model": "local/testcard", "prompt": "x", **extra},
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=30,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code)
