"""Tests for shared.sizing: parsing, the invariants of every size rule, catalog specs.

The rule tests are property-based: sizes are drawn over the whole range a
client may send (1..MAX_SIDE per side) and aspect ratios over 1..100 per term.
Expected values are computed here independently of the implementation (plain
floats and logs), so a wrong clamp shows up as a failed comparison.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from shared.errors import InvalidRequest
from shared.sizing import (
    MAX_SIDE,
    RULES,
    AreaBandRule,
    AspectRatioRule,
    FixedRule,
    MaxSideRule,
    PassthroughRule,
    RangeMultipleRule,
    Size,
    SizeDecision,
    SizeRule,
    parse_aspect_ratio,
    parse_size,
    rule_from_spec,
)

FAST = settings(max_examples=200, deadline=None)
EPS = 1e-9

sides = st.integers(1, MAX_SIDE)
sizes = st.builds(Size, sides, sides)
defaults = st.builds(Size, st.integers(64, 4096), st.integers(64, 4096))
ratio_pairs = st.tuples(st.integers(1, 100), st.integers(1, 100))
ratio_texts = ratio_pairs.map(lambda p: f"{p[0]}:{p[1]}")
# (requested size, aspect_ratio): every combination a request can bring
requests = st.tuples(st.none() | sizes, st.none() | ratio_texts)
multiples = st.sampled_from([1, 2, 8, 16, 32, 64])

# The shapes the shipped catalog uses.
HUNYUAN = {"kind": "max_side", "min": 256, "max": 1536}
SDXL = {"kind": "max_side", "min": 256, "max": 1536, "multiple": 8}
SEEDREAM_4 = {
    "kind": "area_band",
    "min_pixels": 3686400,
    "max_pixels": 16777216,
    "min_ratio": 0.0625,
    "max_ratio": 16,
}
SEEDREAM_5_LITE = {**SEEDREAM_4, "max_pixels": 10404496}
GLM = {"kind": "range_multiple", "min": 1024, "max": 2048, "multiple": 32, "max_pixels": 4194304}
FLUX_PRO = {"kind": "range_multiple", "min": 256, "max": 1440, "multiple": 32}
FLUX_2_PRO = {"kind": "passthrough", "min": 256, "max": 1536}
DALL_E_3 = {"kind": "fixed", "sizes": ["1024x1024", "1792x1024", "1024x1792"]}
DALL_E_2 = {"kind": "fixed", "sizes": ["256x256", "512x512", "1024x1024"]}
KONTEXT = {"kind": "aspect_ratio", "ratios": ["1:1", "16:9", "9:16", "4:3", "3:4"]}
IDEOGRAM = {
    "kind": "aspect_ratio",
    "ratios": ["1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "16:10", "10:16", "2:1", "1:3"],
}
CATALOG_SPECS = [
    HUNYUAN,
    SDXL,
    SEEDREAM_4,
    SEEDREAM_5_LITE,
    GLM,
    FLUX_PRO,
    FLUX_2_PRO,
    DALL_E_3,
    DALL_E_2,
    KONTEXT,
    IDEOGRAM,
]
D1024 = Size(1024, 1024)


def log_ratio(w: float, h: float) -> float:
    return math.log(w / h)


def ratio_of(text: str) -> float:
    a, b = text.split(":")
    return int(a) / int(b)


def clamp_size(rule: SizeRule, requested: Size | None, ratio: str | None, default: Size) -> Size:
    decision = rule.clamp(requested, ratio, default)
    assert isinstance(decision, SizeDecision)
    assert decision.aspect_ratio is None
    assert isinstance(decision.size, Size)
    return decision.size


def target_of(requested: Size | None, ratio: str | None, default: Size) -> tuple[float, float]:
    """The real-valued size a request asks for: its size, or the default area at its ratio."""
    if requested is not None:
        return float(requested.width), float(requested.height)
    if ratio is not None:
        r = ratio_of(ratio)
        return math.sqrt(default.pixels * r), math.sqrt(default.pixels / r)
    return float(default.width), float(default.height)


def target_spread(requested: Size | None, ratio: str | None, default: Size) -> float:
    """Long side over short side of the target, computed from exact integers."""
    if requested is not None:
        w, h = requested.width, requested.height
    elif ratio is not None:
        w, h = (int(t) for t in ratio.split(":"))
    else:
        w, h = default.width, default.height
    return max(w, h) / min(w, h)


def floor_dev(ideal: tuple[float, float], m: int) -> float:
    """How far (in log) rounding both ideal sides down to the grid moves a side."""
    return max(math.log(x / max(math.floor(x / m) * m, m)) for x in ideal)


# --------------------------------------------------------------------------- Size


def test_size_basics() -> None:
    size = Size(1792, 1024)
    assert str(size) == "1792x1024"
    assert size.pixels == 1792 * 1024
    assert Size(1, 2) < Size(2, 1) < Size(2, 2)
    assert {Size(3, 4), Size(3, 4)} == {Size(3, 4)}


@pytest.mark.parametrize("width,height", [(0, 1), (1, 0), (-5, 5), (True, 5), (1.5, 2), ("3", 4)])
def test_size_rejects_non_positive_ints(width: Any, height: Any) -> None:
    with pytest.raises(ValueError):
        Size(width, height)


# --------------------------------------------------------------------------- parse_size


@pytest.mark.parametrize(
    "text,expected",
    [
        ("512x512", Size(512, 512)),
        ("1x1", Size(1, 1)),
        ("1792x1024", Size(1792, 1024)),
        (f"{MAX_SIDE}x{MAX_SIDE}", Size(MAX_SIDE, MAX_SIDE)),
    ],
)
def test_parse_size_accepts(text: str, expected: Size) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "99999999x1",
        "-1x-1",
        "1e3x1e3",
        "512 x 512",
        "0x5",
        "5x0",
        "",
        "512x",
        "x512",
        "\u0661\u0662x12",  # Arabic-Indic digits
        "\uff15\uff11\uff12x512",  # full-width digits
        "+512x512",
        " 512x512",
        "512x512 ",
        "512x512\n",
        "512X512",
        "512*512",
        "512x512x512",
        "0512x512",
        "1_000x1000",
        "512.0x512",
        "16385x1",
        "1x16385",
        "auto",
        "9" * 5000 + "x1",
    ],
)
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_size(text)
    err = info.value
    assert (err.status, err.param, err.code) == (400, "size", "invalid_size")
    assert "size" in err.message and len(err.message) < 300


@pytest.mark.parametrize("value", [512, None, b"512x512", ["512x512"]])
def test_parse_size_rejects_non_strings(value: Any) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_size(value)
    assert info.value.param == "size"


@FAST
@given(sizes)
def test_parse_size_round_trips(size: Size) -> None:
    assert parse_size(str(size)) == size


@FAST
@given(st.text(alphabet="0123456789x+-e .:\u0661\uff11", max_size=14) | st.text(max_size=14))
def test_parse_size_accepts_only_canonical_text(text: str) -> None:
    try:
        size = parse_size(text)
    except InvalidRequest as err:
        assert err.param == "size"
    else:
        assert str(size) == text
        assert 1 <= size.width <= MAX_SIDE and 1 <= size.height <= MAX_SIDE


# --------------------------------------------------------------------------- parse_aspect_ratio


@pytest.mark.parametrize(
    "text,expected",
    [("16:9", (16, 9)), ("1:1", (1, 1)), ("100:1", (100, 1)), ("32:18", (32, 18))],
)
def test_parse_aspect_ratio_accepts(text: str, expected: tuple[int, int]) -> None:
    assert parse_aspect_ratio(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "16",
        "0:1",
        "1:0",
        "101:1",
        "1:101",
        "16/9",
        "16x9",
        "16:9:1",
        " 16:9",
        "16:9 ",
        "-16:9",
        "+16:9",
        "16.0:9",
        "016:9",
        "\uff11\uff16:9",
        "1e1:1",
    ],
)
def test_parse_aspect_ratio_rejects(text: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_aspect_ratio(text)
    err = info.value
    assert (err.status, err.param, err.code) == (400, "aspect_ratio", "invalid_aspect_ratio")


@FAST
@given(ratio_pairs)
def test_parse_aspect_ratio_round_trips(pair: tuple[int, int]) -> None:
    assert parse_aspect_ratio(f"{pair[0]}:{pair[1]}") == pair


@pytest.mark.parametrize("spec", [HUNYUAN, GLM, SEEDREAM_4, DALL_E_3, FLUX_2_PRO, KONTEXT])
def test_invalid_aspect_ratio_is_rejected_by_every_rule(spec: dict[str, Any]) -> None:
    rule = rule_from_spec(spec)
    for requested in (None, D1024):
        with pytest.raises(InvalidRequest) as info:
            rule.clamp(requested, "16/9", D1024)
        assert info.value.param == "aspect_ratio"


# --------------------------------------------------------------------------- request semantics


@FAST
@given(st.sampled_from([HUNYUAN, SDXL, SEEDREAM_4, GLM, FLUX_PRO, DALL_E_3]), sizes, ratio_texts)
def test_size_rules_prefer_the_requested_size_over_aspect_ratio(
    spec: dict[str, Any], requested: Size, ratio: str
) -> None:
    rule = rule_from_spec(spec)
    assert rule.clamp(requested, ratio, D1024) == rule.clamp(requested, None, D1024)


@FAST
@given(st.sampled_from([HUNYUAN, SDXL, SEEDREAM_4, GLM, FLUX_PRO, DALL_E_3]), defaults)
def test_without_size_or_ratio_the_default_is_clamped(spec: dict[str, Any], default: Size) -> None:
    rule = rule_from_spec(spec)
    assert rule.clamp(None, None, default) == rule.clamp(default, None, default)


@pytest.mark.parametrize("spec", CATALOG_SPECS)
def test_a_valid_default_survives_its_rule(spec: dict[str, Any]) -> None:
    rule = rule_from_spec(spec)
    default = {"area_band": Size(2048, 2048), "range_multiple": Size(1280, 1280)}.get(
        spec["kind"], D1024
    )
    decision = rule.clamp(None, None, default)
    if spec["kind"] == "aspect_ratio":
        assert decision == SizeDecision(None, "1:1")
    else:
        assert decision == SizeDecision(default, None)


# --------------------------------------------------------------------------- fixed


@st.composite
def fixed_rules(draw: st.DrawFn) -> FixedRule:
    if draw(st.booleans()):
        spec = draw(st.sampled_from([DALL_E_3, DALL_E_2]))
    else:
        listed = draw(st.lists(sizes, min_size=1, max_size=6, unique=True))
        spec = {"kind": "fixed", "sizes": [str(s) for s in listed]}
    rule = rule_from_spec(spec)
    assert isinstance(rule, FixedRule)
    return rule


@FAST
@given(fixed_rules(), requests, defaults)
@example(rule_from_spec(DALL_E_3), (Size(1920, 1080), None), D1024)
def test_fixed_returns_the_nearest_listed_size(
    rule: FixedRule, request: tuple[Size | None, str | None], default: Size
) -> None:
    requested, ratio = request
    out = clamp_size(rule, requested, ratio, default)
    assert out in rule.sizes
    tw, th = target_of(requested, ratio, default)

    def distance(s: Size) -> tuple[float, float]:
        return abs(log_ratio(s.width, s.height) - log_ratio(tw, th)), abs(
            math.log(s.pixels) - math.log(tw * th)
        )

    best = distance(out)
    for other in rule.sizes:
        d = distance(other)
        assert best[0] <= d[0] + EPS, f"{other} has a closer aspect ratio than {out}"
        if abs(best[0] - d[0]) <= EPS:
            assert best[1] <= d[1] + EPS, f"{other} has the same ratio and a closer area"


@FAST
@given(fixed_rules(), st.data())
def test_fixed_keeps_listed_sizes_and_is_idempotent(rule: FixedRule, data: st.DataObject) -> None:
    member = data.draw(st.sampled_from(rule.sizes))
    assert clamp_size(rule, member, None, D1024) == member
    other = data.draw(sizes)
    once = clamp_size(rule, other, None, D1024)
    assert clamp_size(rule, once, None, D1024) == once


@pytest.mark.parametrize(
    "requested,expected",
    [
        (Size(1920, 1080), Size(1792, 1024)),
        (Size(1080, 1920), Size(1024, 1792)),
        (Size(512, 512), Size(1024, 1024)),
        (Size(4096, 4000), Size(1024, 1024)),
        (Size(1024, 1365), Size(1024, 1792)),
        (Size(1350, 1000), Size(1792, 1024)),  # nearer 1:1 linearly, nearer 7:4 in log
    ],
)
def test_fixed_examples(requested: Size, expected: Size) -> None:
    assert clamp_size(rule_from_spec(DALL_E_3), requested, None, D1024) == expected


def test_fixed_uses_the_aspect_ratio_without_a_size() -> None:
    rule = rule_from_spec(DALL_E_3)
    assert clamp_size(rule, None, "16:9", D1024) == Size(1792, 1024)
    assert clamp_size(rule, None, "9:16", D1024) == Size(1024, 1792)
    # area decides between same-ratio entries: dall-e-2 is all squares
    small = rule_from_spec(DALL_E_2)
    assert clamp_size(small, None, "1:1", Size(500, 500)) == Size(512, 512)
    assert clamp_size(small, None, "3:1", Size(200, 200)) == Size(256, 256)


def test_fixed_ties_go_to_list_order() -> None:
    # 1024x1024 is exactly as far (in log ratio and area) from 2048x1024 as from 1024x2048
    first = rule_from_spec({"kind": "fixed", "sizes": ["2048x1024", "1024x2048"]})
    second = rule_from_spec({"kind": "fixed", "sizes": ["1024x2048", "2048x1024"]})
    assert clamp_size(first, D1024, None, D1024) == Size(2048, 1024)
    assert clamp_size(second, D1024, None, D1024) == Size(1024, 2048)


# --------------------------------------------------------------------------- max_side


@st.composite
def max_side_rules(draw: st.DrawFn) -> MaxSideRule:
    if draw(st.booleans()):
        spec = draw(st.sampled_from([HUNYUAN, SDXL, {"kind": "max_side", "min": 64, "max": 2048}]))
    else:
        m = draw(multiples)
        low_k = draw(st.integers(1, 64))
        span_k = draw(st.integers(0, 64))
        low = max(1, low_k * m - draw(st.integers(0, m - 1)))
        high = (low_k + span_k) * m + draw(st.integers(0, m - 1))
        spec = {"kind": "max_side", "min": low, "max": high, "multiple": m}
    rule = rule_from_spec(spec)
    assert isinstance(rule, MaxSideRule)
    return rule


def grid_bounds(low: int, high: int, m: int) -> tuple[int, int]:
    return -(-low // m) * m, high // m * m


@FAST
@given(max_side_rules(), requests, defaults)
@example(rule_from_spec(HUNYUAN), (Size(16384, 1), None), D1024)
@example(rule_from_spec(HUNYUAN), (Size(3072, 1536), None), D1024)
def test_max_side_invariants(
    rule: MaxSideRule, request: tuple[Size | None, str | None], default: Size
) -> None:
    requested, ratio = request
    m = rule.multiple
    lo, hi = grid_bounds(rule.min_side, rule.max_side, m)
    out = clamp_size(rule, requested, ratio, default)
    for side in (out.width, out.height):
        assert rule.min_side <= side <= rule.max_side and side % m == 0
    assert clamp_size(rule, out, None, default) == out  # idempotent

    tw, th = target_of(requested, ratio, default)
    long_side, short_side = max(tw, th), min(tw, th)
    if target_spread(requested, ratio, default) <= hi / lo:
        # uniform scale: down to fit max, up to fit min, otherwise 1
        scale = min(max(1.0, lo / short_side), hi / long_side)
        ideal = (tw * scale, th * scale)
        dev = max(abs(math.log(o / i)) for o, i in zip((out.width, out.height), ideal, strict=True))
        assert dev <= floor_dev(ideal, m) + EPS, (ideal, out)
    else:  # ratio beyond max/min: long side at max, short side at min
        expected = Size(hi, lo) if tw > th else Size(lo, hi)
        assert out == expected


@FAST
@given(max_side_rules(), sizes)
def test_max_side_keeps_sizes_already_in_range(rule: MaxSideRule, requested: Size) -> None:
    valid = all(
        rule.min_side <= s <= rule.max_side and s % rule.multiple == 0
        for s in (requested.width, requested.height)
    )
    out = clamp_size(rule, requested, None, D1024)
    assert (out == requested) == valid


@FAST
@given(sizes)
def test_max_side_scales_down_only_as_far_as_needed(requested: Size) -> None:
    rule = rule_from_spec(HUNYUAN)
    long_side = max(requested.width, requested.height)
    short_side = min(requested.width, requested.height)
    out = clamp_size(rule, requested, None, D1024)
    if long_side > 1536 and long_side / short_side <= 6:
        # the long side lands on 1536, give or take the short side's rounding (one pixel
        # of the short side is worth long/short pixels of the long one)
        out_long, out_short = max(out.width, out.height), min(out.width, out.height)
        assert 1536 * (1 - 1 / (out_short - 1)) <= out_long <= 1536
        # orientation never flips (a near-square may round to a square: 3071x3072 -> 1536²)
        assert not (out.width > out.height and requested.width < requested.height)
        assert not (out.width < out.height and requested.width > requested.height)
        if long_side % 1536 == 0 and short_side % (long_side // 1536) == 0:
            assert out_long == 1536  # exact scale factors give exact results


@pytest.mark.parametrize(
    "requested,ratio,expected",
    [
        (Size(3072, 1536), None, Size(1536, 768)),
        (Size(100, 50), None, Size(512, 256)),
        (Size(2000, 3000), None, Size(1024, 1536)),
        (Size(16384, 1), None, Size(1536, 256)),
        (Size(1, 16384), None, Size(256, 1536)),
        (None, "16:9", Size(1365, 768)),
        (None, "1:1", Size(1024, 1024)),
    ],
)
def test_max_side_examples(requested: Size | None, ratio: str | None, expected: Size) -> None:
    assert clamp_size(rule_from_spec(HUNYUAN), requested, ratio, D1024) == expected


def test_max_side_multiple() -> None:
    rule = rule_from_spec(SDXL)
    assert clamp_size(rule, Size(1920, 1080), None, D1024) == Size(1536, 864)
    assert clamp_size(rule, Size(1000, 1001), None, D1024) == Size(1000, 1000)


# --------------------------------------------------------------------------- area_band


@st.composite
def area_band_rules(draw: st.DrawFn) -> AreaBandRule:
    if draw(st.booleans()):
        spec = draw(st.sampled_from([SEEDREAM_4, SEEDREAM_5_LITE]))
    else:
        m = draw(st.sampled_from([1, 2, 8, 16, 64]))
        side = draw(st.integers(16, 2048))
        low = side * side
        aligned = -(-side // m) * m  # the smallest grid square with area >= low
        # at least two grid steps of slack per side, so the ratio can be kept
        high = (aligned + 2 * m) ** 2 + draw(st.integers(0, 8 * low))
        spec = {
            "kind": "area_band",
            "min_pixels": low,
            "max_pixels": high,
            "min_ratio": draw(st.sampled_from([1 / 16, 0.25, 1 / 3, 0.5, 1])),
            "max_ratio": draw(st.sampled_from([1, 2, 3, 4, 16])),
            "multiple": m,
        }
    rule = rule_from_spec(spec)
    assert isinstance(rule, AreaBandRule)
    return rule


@FAST
@given(area_band_rules(), requests, defaults)
@example(rule_from_spec(SEEDREAM_5_LITE), (Size(16384, 1), None), D1024)
@example(rule_from_spec(SEEDREAM_5_LITE), (Size(4096, 4096), None), D1024)
@example(rule_from_spec(SEEDREAM_4), (None, "100:1"), Size(2048, 2048))
def test_area_band_invariants(
    rule: AreaBandRule, request: tuple[Size | None, str | None], default: Size
) -> None:
    requested, ratio = request
    m = rule.multiple
    out = clamp_size(rule, requested, ratio, default)
    assert rule.min_pixels <= out.pixels <= rule.max_pixels
    assert rule.min_ratio * out.height <= out.width <= rule.max_ratio * out.height
    assert out.width % m == 0 and out.height % m == 0
    assert clamp_size(rule, out, None, default) == out  # idempotent

    # ratio clamped into range, area clamped into the band, both kept within rounding
    tw, th = target_of(requested, ratio, default)
    want_ratio = min(max(tw / th, rule.min_ratio), rule.max_ratio)
    want_area = min(max(tw * th, rule.min_pixels), rule.max_pixels)
    tolerance = 4 * m / min(out.width, out.height) + EPS
    assert abs(log_ratio(out.width, out.height) - math.log(want_ratio)) <= tolerance
    assert abs(math.log(out.pixels) - math.log(want_area)) <= tolerance


@FAST
@given(area_band_rules(), sizes)
def test_area_band_keeps_sizes_already_in_the_band(rule: AreaBandRule, requested: Size) -> None:
    w, h, m = requested.width, requested.height, rule.multiple
    valid = (
        rule.min_pixels <= w * h <= rule.max_pixels
        and rule.min_ratio <= w / h <= rule.max_ratio
        and w % m == 0
        and h % m == 0
    )
    out = clamp_size(rule, requested, None, Size(2048, 2048))
    if valid:
        assert out == requested
    else:
        assert out != requested


@pytest.mark.parametrize(
    "spec,requested,expected",
    [
        (SEEDREAM_4, Size(1024, 1024), Size(1920, 1920)),
        (SEEDREAM_4, Size(8192, 8192), Size(4096, 4096)),
        (SEEDREAM_4, Size(1280, 720), Size(2560, 1440)),
        (SEEDREAM_4, Size(16384, 1), Size(7680, 480)),
        (SEEDREAM_4, Size(2048, 2048), Size(2048, 2048)),
        (SEEDREAM_5_LITE, Size(4096, 4096), Size(3225, 3225)),
    ],
)
def test_area_band_examples(spec: dict[str, Any], requested: Size, expected: Size) -> None:
    assert clamp_size(rule_from_spec(spec), requested, None, Size(2048, 2048)) == expected


# --------------------------------------------------------------------------- range_multiple


@st.composite
def range_multiple_rules(draw: st.DrawFn) -> RangeMultipleRule:
    if draw(st.booleans()):
        spec = draw(st.sampled_from([GLM, FLUX_PRO]))
    else:
        m = draw(multiples)
        low_k = draw(st.integers(1, 48))
        high_k = low_k + draw(st.integers(0, 48))
        spec = {"kind": "range_multiple", "min": low_k * m, "max": high_k * m, "multiple": m}
        if draw(st.booleans()):
            low, high = low_k * m, high_k * m
            spec["max_pixels"] = draw(st.integers(low * low, high * high))
    rule = rule_from_spec(spec)
    assert isinstance(rule, RangeMultipleRule)
    return rule


@FAST
@given(range_multiple_rules(), requests, defaults)
@example(rule_from_spec(GLM), (Size(4096, 4096), None), D1024)
@example(rule_from_spec(GLM), (Size(16384, 1), None), D1024)
def test_range_multiple_invariants(
    rule: RangeMultipleRule, request: tuple[Size | None, str | None], default: Size
) -> None:
    requested, ratio = request
    m = rule.multiple
    cap = rule.max_pixels
    out = clamp_size(rule, requested, ratio, default)
    for side in (out.width, out.height):
        assert rule.min_side <= side <= rule.max_side and side % m == 0
    assert cap is None or out.pixels <= cap
    assert clamp_size(rule, out, None, default) == out  # idempotent

    lo, hi = rule.min_side, rule.max_side
    tw, th = target_of(requested, ratio, default)
    long_side, short_side = max(tw, th), min(tw, th)
    spread = target_spread(requested, ratio, default)
    fits = spread <= hi / lo and (cap is None or spread <= cap / lo**2)
    if fits:  # uniform scaling into the box and under the cap keeps the ratio
        upper = hi / long_side if cap is None else min(hi / long_side, math.sqrt(cap / (tw * th)))
        scale = min(max(1.0, lo / short_side), upper)
        ideal = (tw * scale, th * scale)
        dev = max(abs(math.log(o / i)) for o, i in zip((out.width, out.height), ideal, strict=True))
        assert dev <= floor_dev(ideal, m) + EPS, (ideal, out)
    else:  # too extreme: short side at min, long side as long as the limits allow
        assert min(out.width, out.height) == lo
        long_cap = hi if cap is None else min(hi, cap // lo // m * m)
        assert max(out.width, out.height) == long_cap
        if long_cap > lo:
            assert (out.width > out.height) == (tw > th)


@FAST
@given(range_multiple_rules(), sizes)
def test_range_multiple_keeps_valid_sizes(rule: RangeMultipleRule, requested: Size) -> None:
    valid = all(
        rule.min_side <= s <= rule.max_side and s % rule.multiple == 0
        for s in (requested.width, requested.height)
    ) and (rule.max_pixels is None or requested.pixels <= rule.max_pixels)
    out = clamp_size(rule, requested, None, D1024)
    assert (out == requested) == valid


@pytest.mark.parametrize(
    "requested,expected",
    [
        (Size(1920, 1080), Size(1920, 1088)),
        (Size(4096, 2048), Size(2048, 1024)),  # scaled, not clamped into a square
        (Size(4096, 4096), Size(2048, 2048)),
        (Size(512, 512), Size(1024, 1024)),
        (Size(800, 600), Size(1376, 1024)),
        (Size(16384, 1), Size(2048, 1024)),
        (Size(1280, 1280), Size(1280, 1280)),
    ],
)
def test_range_multiple_glm_examples(requested: Size, expected: Size) -> None:
    assert clamp_size(rule_from_spec(GLM), requested, None, Size(1280, 1280)) == expected


def test_range_multiple_pixel_cap_binds() -> None:
    rule = rule_from_spec({"kind": "range_multiple", "min": 512, "max": 2048, "multiple": 64,
                           "max_pixels": 1048576})  # fmt: skip
    out = clamp_size(rule, Size(2048, 2048), None, D1024)
    assert out == Size(1024, 1024)
    wide = clamp_size(rule, Size(2048, 1024), None, D1024)
    assert wide.pixels <= 1048576 and wide.width % 64 == 0 and wide.height % 64 == 0
    assert wide.width / wide.height == pytest.approx(2, rel=0.1)


# --------------------------------------------------------------------------- passthrough


@st.composite
def passthrough_rules(draw: st.DrawFn) -> PassthroughRule:
    if draw(st.booleans()):
        return rule_from_spec(FLUX_2_PRO)  # type: ignore[return-value]
    low = draw(st.integers(1, 2048))
    high = low + draw(st.integers(0, 4096))
    spec: dict[str, Any] = {"kind": "passthrough", "min": low, "max": high}
    if draw(st.booleans()):
        m = draw(st.sampled_from([2, 8, 16, 32, 64]))
        spec["multiple"] = m
        spec["max"] = max(high, -(-low // m) * m)
    rule = rule_from_spec(spec)
    assert isinstance(rule, PassthroughRule)
    return rule


@FAST
@given(passthrough_rules(), sizes, st.none() | ratio_texts)
@example(rule_from_spec(FLUX_2_PRO), Size(1536, 256), None)
@example(rule_from_spec(FLUX_2_PRO), Size(1537, 256), None)
def test_passthrough_sends_unchanged_or_rejects(
    rule: PassthroughRule, requested: Size, ratio: str | None
) -> None:
    m = rule.multiple or 1
    allowed = all(
        rule.min_side <= s <= rule.max_side and s % m == 0
        for s in (requested.width, requested.height)
    )
    try:
        decision = rule.clamp(requested, ratio, D1024)
    except InvalidRequest as err:
        assert not allowed
        assert (err.param, err.code) == ("size", "size_out_of_range")
        assert str(rule.min_side) in err.message and str(rule.max_side) in err.message
    else:
        assert allowed
        assert decision == SizeDecision(requested, None)


@FAST
@given(passthrough_rules(), ratio_texts, defaults)
def test_passthrough_fits_a_ratio_only_request_or_rejects_the_ratio(
    rule: PassthroughRule, ratio: str, default: Size
) -> None:
    m = rule.multiple or 1
    lo, hi = grid_bounds(rule.min_side, rule.max_side, m)
    r = ratio_of(ratio)
    try:
        out = clamp_size(rule, None, ratio, default)
    except InvalidRequest as err:
        assert (err.param, err.code) == ("aspect_ratio", "aspect_ratio_out_of_range")
        assert max(r, 1 / r) > hi / lo
    else:
        assert max(r, 1 / r) <= hi / lo
        for side in (out.width, out.height):
            assert rule.min_side <= side <= rule.max_side and side % m == 0
        tw, th = target_of(None, ratio, default)
        scale = min(max(1.0, lo / min(tw, th)), hi / max(tw, th))
        ideal = (tw * scale, th * scale)
        dev = max(abs(math.log(o / i)) for o, i in zip((out.width, out.height), ideal, strict=True))
        assert dev <= floor_dev(ideal, m) + EPS
        assert rule.clamp(out, None, default) == SizeDecision(out, None)


def test_passthrough_examples() -> None:
    rule = rule_from_spec(FLUX_2_PRO)
    assert clamp_size(rule, Size(1024, 768), None, D1024) == Size(1024, 768)
    assert clamp_size(rule, None, "16:9", D1024) == Size(1365, 768)
    assert clamp_size(rule, None, None, Size(4096, 4096)) == Size(1536, 1536)  # own default
    with pytest.raises(InvalidRequest, match="256 and 1536"):
        rule.clamp(Size(2048, 1024), None, D1024)
    with pytest.raises(InvalidRequest) as info:
        rule.clamp(None, "7:1", D1024)
    assert info.value.param == "aspect_ratio"
    strict = rule_from_spec({**FLUX_2_PRO, "multiple": 16})
    with pytest.raises(InvalidRequest, match="multiple of 16") as info:
        strict.clamp(Size(1000, 1000), None, D1024)
    assert info.value.param == "size"
    assert clamp_size(strict, Size(1008, 1008), None, D1024) == Size(1008, 1008)


# --------------------------------------------------------------------------- aspect_ratio


@st.composite
def aspect_rules(draw: st.DrawFn) -> AspectRatioRule:
    if draw(st.booleans()):
        spec = draw(st.sampled_from([KONTEXT, IDEOGRAM]))
    else:
        pairs = draw(st.lists(ratio_pairs, min_size=1, max_size=8, unique_by=lambda p: p[0] / p[1]))
        spec = {"kind": "aspect_ratio", "ratios": [f"{a}:{b}" for a, b in pairs]}
    rule = rule_from_spec(spec)
    assert isinstance(rule, AspectRatioRule)
    return rule


@FAST
@given(aspect_rules(), requests, defaults)
def test_aspect_ratio_picks_the_nearest_listed_ratio(
    rule: AspectRatioRule, request: tuple[Size | None, str | None], default: Size
) -> None:
    requested, ratio = request
    decision = rule.clamp(requested, ratio, default)
    assert decision.size is None
    assert decision.aspect_ratio in rule.ratios
    if ratio is not None:  # an explicit ratio wins over the size
        want = math.log(ratio_of(ratio))
    else:
        want = log_ratio(*target_of(requested, None, default))
    got = abs(math.log(ratio_of(decision.aspect_ratio)) - want)
    for other in rule.ratios:
        assert got <= abs(math.log(ratio_of(other)) - want) + EPS, other


@FAST
@given(aspect_rules(), st.data())
def test_aspect_ratio_keeps_listed_ratios(rule: AspectRatioRule, data: st.DataObject) -> None:
    listed = data.draw(st.sampled_from(rule.ratios))
    requested = data.draw(st.none() | sizes)
    assert rule.clamp(requested, listed, D1024) == SizeDecision(None, listed)


@pytest.mark.parametrize(
    "requested,ratio,expected",
    [
        (Size(1920, 1080), None, "16:9"),
        (Size(1024, 1365), None, "3:4"),
        (Size(1550, 1000), None, "16:9"),  # nearer 4:3 linearly, nearer 16:9 in log
        (None, "31:20", "16:9"),
        (Size(1080, 1920), None, "9:16"),
        (Size(1024, 1024), None, "1:1"),
        (Size(1600, 1200), None, "4:3"),
        (Size(16384, 1), None, "16:9"),
        (None, "32:18", "16:9"),
        (None, "21:9", "16:9"),
        (Size(1024, 1024), "16:9", "16:9"),
        (None, None, "1:1"),
    ],
)
def test_aspect_ratio_examples(requested: Size | None, ratio: str | None, expected: str) -> None:
    assert rule_from_spec(KONTEXT).clamp(requested, ratio, D1024) == SizeDecision(None, expected)


# --------------------------------------------------------------------------- specs


def test_rules_registry() -> None:
    assert set(RULES) == {
        "fixed",
        "max_side",
        "area_band",
        "range_multiple",
        "passthrough",
        "aspect_ratio",
    }
    for kind, cls in RULES.items():
        assert cls.kind == kind


@pytest.mark.parametrize("spec", CATALOG_SPECS)
def test_describe_round_trips(spec: dict[str, Any]) -> None:
    rule = rule_from_spec(spec)
    described = rule.describe()
    assert described["kind"] == spec["kind"]
    assert json.loads(json.dumps(described)) == described
    assert rule_from_spec(described) == rule
    assert described == spec


def test_describe_examples() -> None:
    assert rule_from_spec(HUNYUAN).describe() == {"kind": "max_side", "min": 256, "max": 1536}
    assert rule_from_spec(DALL_E_3).describe() == DALL_E_3
    assert rule_from_spec(KONTEXT).describe() == KONTEXT


@pytest.mark.parametrize(
    "spec,message",
    [
        ({"kind": "whatever"}, "unknown size rule kind"),
        ({"min": 1, "max": 2}, "unknown size rule kind"),
        ({"kind": 3}, "unknown size rule kind"),
        ("max_side", "must be a table"),
        ({"kind": "max_side", "min": 256}, "missing"),
        ({"kind": "max_side", "min": 256, "max": 1536, "maximum": 2}, "unknown keys"),
        ({"kind": "max_side", "min": "256", "max": 1536}, "integer"),
        ({"kind": "max_side", "min": True, "max": 1536}, "integer"),
        ({"kind": "max_side", "min": 256.0, "max": 1536}, "integer"),
        ({"kind": "max_side", "min": 0, "max": 1536}, ">= 1"),
        ({"kind": "max_side", "min": 1536, "max": 256}, "greater than"),
        ({"kind": "max_side", "min": 100, "max": 120, "multiple": 64}, "no multiple"),
        ({"kind": "max_side", "min": 256, "max": 1536, "multiple": 0}, ">= 1"),
        ({**GLM, "max_pixels": 1000}, "max_pixels"),
        ({"kind": "passthrough", "min": 300, "max": 200}, "greater than"),
        ({"kind": "fixed"}, "missing"),
        ({"kind": "fixed", "sizes": []}, "empty"),
        ({"kind": "fixed", "sizes": "1024x1024"}, "list"),
        ({"kind": "fixed", "sizes": ["1024x1024", "big"]}, "size"),
        ({"kind": "fixed", "sizes": ["1024x1024", "1024x1024"]}, "duplicates"),
        ({"kind": "aspect_ratio", "ratios": []}, "empty"),
        ({"kind": "aspect_ratio", "ratios": ["16:9", "wide"]}, "aspect_ratio"),
        ({"kind": "aspect_ratio", "ratios": ["16:9", "32:18"]}, "same ratio"),
        ({**SEEDREAM_4, "min_pixels": 20_000_000}, "greater than"),
        ({**SEEDREAM_4, "min_ratio": 2}, "min_ratio"),
        ({**SEEDREAM_4, "max_ratio": -1}, "positive"),
        ({**SEEDREAM_4, "max_ratio": "16"}, "number"),
        ({**SEEDREAM_4, "max_ratio": float("inf")}, "positive"),
        ({"kind": "area_band", "min_pixels": 101, "max_pixels": 120}, "square"),
        ({"kind": "area_band", "max_pixels": 120}, "missing"),
    ],
)
def test_rule_from_spec_errors(spec: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rule_from_spec(spec)


def test_rule_from_spec_builds_the_registered_class() -> None:
    assert isinstance(rule_from_spec(HUNYUAN), MaxSideRule)
    assert isinstance(rule_from_spec(SEEDREAM_4), AreaBandRule)
    assert isinstance(rule_from_spec(GLM), RangeMultipleRule)
    assert isinstance(rule_from_spec(FLUX_2_PRO), PassthroughRule)
    assert isinstance(rule_from_spec(DALL_E_3), FixedRule)
    assert isinstance(rule_from_spec(KONTEXT), AspectRatioRule)
    assert rule_from_spec({"kind": "max_side", "min": 256, "max": 1536, "multiple": 1}) == (
        rule_from_spec(HUNYUAN)
    )
