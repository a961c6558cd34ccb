"""shared.results.dumps: base64 images spliced into JSON as bytes, equal to a JSON encoder's."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.results import Base64Image, dumps

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(
    images=st.lists(st.binary(max_size=300), max_size=12),
    other=json_values,
    prompt=st.text(),
)
def test_dumps_is_json_with_every_image_as_its_base64_string(images, other, prompt) -> None:
    body = {
        "data": [{"b64_json": Base64Image(d), "revised_prompt": prompt} for d in images],
        "other": other,
    }
    decoded = json.loads(dumps(body))
    assert [item["b64_json"] for item in decoded["data"]] == [
        base64.b64encode(d).decode("ascii") for d in images
    ]
    assert [item["revised_prompt"] for item in decoded["data"]] == [prompt] * len(images)
    assert decoded["other"] == other


def test_a_prompt_that_looks_like_a_placeholder_is_left_alone() -> None:
    body = {"data": [{"b64_json": Base64Image(b"\x00\x01")}], "p": 'b64-0"', "q": "b64-"}
    decoded = json.loads(dumps(body))
    assert decoded == {"data": [{"b64_json": "AAE="}], "p": 'b64-0"', "q": "b64-"}


def test_other_objects_are_still_refused() -> None:
    with pytest.raises(TypeError):
        dumps({"x": object()})
