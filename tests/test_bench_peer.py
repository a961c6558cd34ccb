"""bench/peer.py: one image through a LiteLLM proxy in front of the project's simulator.

Opt-in (``IMAGEGATE_BENCH_PEER=1``): the first run pip-installs litellm[proxy]
into ``.bench-venvs/litellm`` (about a minute, hundreds of MB), which the
default suite should not pay for.
"""

from __future__ import annotations

import base64
import os
import re

import openai
import pytest
import requests

from bench.peer import LITELLM_VERSION, LiteLLMPeer
from tests.support.processes import BIN, Process

pytestmark = pytest.mark.skipif(
    os.environ.get("IMAGEGATE_BENCH_PEER") != "1",
    reason="set IMAGEGATE_BENCH_PEER=1 to run: it installs litellm[proxy] into .bench-venvs/",
)

SIM_KEY = "bench-peer-upstream-key"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def simulator(tmp_path_factory: pytest.TempPathFactory):
    log_dir = tmp_path_factory.mktemp("peer-sim")
    proc = Process(
        "simulator",
        [str(BIN / "python"), "-m", "bench.simulator", "--port", "0", "--api-key", SIM_KEY],
        log_dir=log_dir,
    ).start()
    try:
        proc.wait_until(lambda: "SIMULATOR READY" in proc.log(), timeout=30)
        url = re.search(r"SIMULATOR READY (\S+)", proc.log()).group(1)  # type: ignore[union-attr]
        yield url
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def peer(simulator: str, tmp_path_factory: pytest.TempPathFactory):
    # LiteLLMPeer installs litellm[proxy] into .bench-venvs/litellm the first time.
    with LiteLLMPeer(simulator, SIM_KEY, tmp_path_factory.mktemp("peer"), workers=1) as started:
        yield started


def _simulator_requests(simulator: str) -> list[dict]:
    return requests.get(f"{simulator}/_sim/requests", timeout=5).json()


def test_an_image_goes_through_litellm_to_the_simulator(simulator: str, peer: LiteLLMPeer):
    assert peer.version == LITELLM_VERSION
    assert peer.base_url.startswith("http://127.0.0.1:") and peer.base_url.endswith("/v1")
    assert set(peer.pids()) == {"litellm"} and peer.measure.pids("litellm")
    client = openai.OpenAI(base_url=peer.base_url, api_key=peer.api_key, max_retries=0)
    before = len(_simulator_requests(simulator))

    result = client.images.generate(
        model=peer.model, prompt="x", size="512x512", response_format="url"
    )

    url = result.data[0].url
    # LiteLLM passes the upstream's URL through: the image is the simulator's file.
    assert url and url.startswith(f"{simulator}/files/")
    data = requests.get(url, timeout=10).content
    assert data.startswith(PNG)
    assert b"imagegate-simulator img_" in data  # the simulator tags every file it renders
    sent = _simulator_requests(simulator)[before:]
    assert [r["json"] for r in sent] == [
        {"model": "compat-any", "prompt": "x", "response_format": "url", "size": "512x512"}
    ]


def test_b64_json_and_any_size_are_forwarded(simulator: str, peer: LiteLLMPeer):
    client = openai.OpenAI(base_url=peer.base_url, api_key=peer.api_key, max_retries=0)

    result = client.images.generate(
        model=peer.model,
        prompt="x",
        size="300x200",  # type: ignore[arg-type] - the simulator's compat-any takes any WxH
        response_format="b64_json",
    )

    data = base64.b64decode(result.data[0].b64_json or "")
    assert data.startswith(PNG) and b"imagegate-simulator img_" in data
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (300, 200)
    assert _simulator_requests(simulator)[-1]["json"]["size"] == "300x200"
