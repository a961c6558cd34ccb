"""Each size rule, observed where it matters: the size the upstream simulator received."""

from __future__ import annotations

import math

import openai
import pytest
from openai import OpenAI

from tests.support.sim import sent_with, tagged


def _received(sim: str, prompt: str) -> list[dict]:
    """The bodies the simulator received for ``prompt`` (a :func:`tagged` one: this test's)."""
    return [r["json"] for r in sent_with(sim, prompt) if r["path"].endswith("/images/generations")]


def _wh(size: str) -> tuple[int, int]:
    w, h = size.split("x")
    return int(w), int(h)


def test_fixed_list_maps_to_nearest_allowed_size(client: OpenAI, sim: str) -> None:
    prompt = tagged("tall")
    r = client.images.generate(model="dall-e-3", prompt=prompt, size="600x1100")
    assert _received(sim, prompt)[0]["size"] == "1024x1792"
    assert r.size == "1024x1792"


def test_max_side_scales_down_keeping_aspect(client: OpenAI, sim: str) -> None:
    prompt = tagged("wide")
    r = client.images.generate(model="test/max-side", prompt=prompt, size="3000x1500")
    assert _received(sim, prompt)[0]["size"] == "1536x768"
    assert r.size == "1536x768"


def test_max_side_scales_up_small_requests(client: OpenAI, sim: str) -> None:
    prompt = tagged("tiny")
    client.images.generate(model="test/max-side", prompt=prompt, size="128x64")
    w, h = _wh(_received(sim, prompt)[0]["size"])
    assert min(w, h) >= 256 and max(w, h) <= 1536
    assert abs(w / h - 2.0) < 0.05


@pytest.mark.parametrize("size", ["1024x1024", "5000x5000", "4000x1000"])
def test_area_band_fits_the_pixel_band_keeping_aspect(client: OpenAI, sim: str, size: str) -> None:
    prompt = tagged("band")
    r = client.images.generate(model="test/area-band", prompt=prompt, size=size)
    w, h = _wh(_received(sim, prompt)[0]["size"])
    assert 3686400 <= w * h <= 10404496
    rw, rh = _wh(size)
    assert math.isclose(w / h, rw / rh, rel_tol=0.01)
    assert r.size == f"{w}x{h}"


def test_range_multiple_rounds_to_multiples_inside_range(client: OpenAI, sim: str) -> None:
    prompt = tagged("glm")
    client.images.generate(model="test/range-multiple", prompt=prompt, size="1030x2500")
    w, h = _wh(_received(sim, prompt)[0]["size"])
    assert w % 32 == 0 and h % 32 == 0
    assert 1024 <= w <= 2048 and 1024 <= h <= 2048
    assert w * h <= 4194304


def test_passthrough_passes_valid_sizes_unchanged(client: OpenAI, sim: str) -> None:
    prompt = tagged("ok")
    client.images.generate(model="test/passthrough", prompt=prompt, size="512x768")
    assert _received(sim, prompt)[0]["size"] == "512x768"


def test_passthrough_rejects_out_of_range_without_calling_upstream(
    client: OpenAI, sim: str
) -> None:
    prompt = tagged("big")
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model="test/passthrough", prompt=prompt, size="2000x1000")
    assert info.value.body["param"] == "size"
    assert _received(sim, prompt) == []


def test_aspect_ratio_rule_sends_the_nearest_ratio_instead_of_a_size(
    client: OpenAI, sim: str
) -> None:
    prompt = tagged("cinema")
    r = client.images.generate(model="test/aspect", prompt=prompt, size="1920x1080")
    sent = _received(sim, prompt)[0]
    assert sent["aspect_ratio"] == "16:9"
    assert "size" not in sent
    w, h = _wh(r.size)
    assert math.isclose(w / h, 16 / 9, rel_tol=0.03)


def test_explicit_aspect_ratio_extension_is_honoured(client: OpenAI, sim: str) -> None:
    prompt = tagged("portrait")
    client.images.generate(model="test/aspect", prompt=prompt, extra_body={"aspect_ratio": "3:4"})
    assert _received(sim, prompt)[0]["aspect_ratio"] == "3:4"
