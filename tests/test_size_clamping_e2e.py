"""Each size rule, observed where it matters: the size the upstream simulator received."""

from __future__ import annotations

import math

import openai
import pytest
import requests
from openai import OpenAI


def _received(sim: str) -> list[dict]:
    return [
        r["json"]
        for r in requests.get(f"{sim}/_sim/requests", timeout=5).json()
        if r["path"].endswith("/images/generations")
    ]


def _wh(size: str) -> tuple[int, int]:
    w, h = size.split("x")
    return int(w), int(h)


def test_fixed_list_maps_to_nearest_allowed_size(client: OpenAI, sim: str) -> None:
    r = client.images.generate(model="dall-e-3", prompt="tall", size="600x1100")
    assert _received(sim)[0]["size"] == "1024x1792"
    assert r.size == "1024x1792"


def test_max_side_scales_down_keeping_aspect(client: OpenAI, sim: str) -> None:
    r = client.images.generate(model="test/max-side", prompt="wide", size="3000x1500")
    assert _received(sim)[0]["size"] == "1536x768"
    assert r.size == "1536x768"


def test_max_side_scales_up_small_requests(client: OpenAI, sim: str) -> None:
    client.images.generate(model="test/max-side", prompt="tiny", size="128x64")
    w, h = _wh(_received(sim)[0]["size"])
    assert min(w, h) >= 256 and max(w, h) <= 1536
    assert abs(w / h - 2.0) < 0.05


@pytest.mark.parametrize("size", ["1024x1024", "5000x5000", "4000x1000"])
def test_area_band_fits_the_pixel_band_keeping_aspect(client: OpenAI, sim: str, size: str) -> None:
    r = client.images.generate(model="test/area-band", prompt="band", size=size)
    w, h = _wh(_received(sim)[0]["size"])
    assert 3686400 <= w * h <= 10404496
    rw, rh = _wh(size)
    assert math.isclose(w / h, rw / rh, rel_tol=0.01)
    assert r.size == f"{w}x{h}"


def test_range_multiple_rounds_to_multiples_inside_range(client: OpenAI, sim: str) -> None:
    client.images.generate(model="test/range-multiple", prompt="glm", size="1030x2500")
    w, h = _wh(_received(sim)[0]["size"])
    assert w % 32 == 0 and h % 32 == 0
    assert 1024 <= w <= 2048 and 1024 <= h <= 2048
    assert w * h <= 4194304


def test_passthrough_passes_valid_sizes_unchanged(client: OpenAI, sim: str) -> None:
    client.images.generate(model="test/passthrough", prompt="ok", size="512x768")
    assert _received(sim)[0]["size"] == "512x768"


def test_passthrough_rejects_out_of_range_without_calling_upstream(
    client: OpenAI, sim: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model="test/passthrough", prompt="big", size="2000x1000")
    assert info.value.body["param"] == "size"
    assert _received(sim) == []


def test_aspect_ratio_rule_sends_the_nearest_ratio_instead_of_a_size(
    client: OpenAI, sim: str
) -> None:
    r = client.images.generate(model="test/aspect", prompt="cinema", size="1920x1080")
    sent = _received(sim)[0]
    assert sent["aspect_ratio"] == "16:9"
    assert "size" not in sent
    w, h = _wh(r.size)
    assert math.isclose(w / h, 16 / 9, rel_tol=0.03)


def test_explicit_aspect_ratio_extension_is_honoured(client: OpenAI, sim: str) -> None:
    client.images.generate(
        model="test/aspect", prompt="portrait", extra_body={"aspect_ratio": "3:4"}
    )
    assert _received(sim)[0]["aspect_ratio"] == "3:4"
