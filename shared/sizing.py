"""Per-model image-size rules, applied before a request goes upstream.

Clients send ``size="WxH"`` (OpenAI style) and, for some models,
``aspect_ratio="W:H"``. Every model in the catalog names one *size rule*
(``size_rule = { kind = "...", ... }``) that turns what the client asked for
into what its upstream accepts. The guiding principle: the gateway never fails
a request it can serve faithfully. It clamps where the rule allows and rejects
(:class:`~shared.errors.InvalidRequest`, ``param="size"``) only what it cannot
honour.

Parsing
    :func:`parse_size` accepts exactly ``"<W>x<H>"`` with ASCII decimal digits,
    no sign, no spaces, no leading zeros, each side ``1..MAX_SIDE``.
    :func:`parse_aspect_ratio` accepts exactly ``"<W>:<H>"`` with both sides
    ``1..100``. ``"auto"`` is the caller's business.

Targets
    ``clamp(requested, aspect_ratio, default)`` starts from the client's size;
    without one, from ``default``'s pixel area at the client's aspect ratio;
    without either, from ``default``. When both a size and a ratio are given,
    the size wins for size-based rules and the ratio wins for the
    ``aspect_ratio`` rule. A given ``aspect_ratio`` is always validated.

Rule kinds (``RULES``; build them from catalog specs with :func:`rule_from_spec`)
    ``fixed``
        A closed list of sizes (dall-e, gpt-image). The nearest entry wins:
        closest aspect ratio first, then closest area, then list order.
    ``max_side``
        Each side in ``[min, max]`` (hunyuan-image-3, z-image-turbo). Scaled
        uniformly down (or up) into the box, so the aspect ratio is kept
        within rounding whenever it lies within ``max/min``. A more extreme
        ratio cannot be kept: the long side becomes ``max`` and the short
        side ``min``.
    ``area_band``
        Total area in ``[min_pixels, max_pixels]`` and ratio in
        ``[min_ratio, max_ratio]`` (seedream). The ratio is clamped into its
        range first, then the size is scaled uniformly into the band; integer
        rounding never leaves the band.
    ``range_multiple``
        Each side in ``[min, max]``, a multiple of ``multiple``, area at most
        ``max_pixels`` (glm-image, FLUX 1.1). Solved like ``max_side`` (uniform
        scaling, so the aspect ratio is kept whenever the box and the pixel cap
        allow it) and then snapped to multiples inside the limits.
    ``passthrough``
        Each side in ``[min, max]`` (and a multiple of ``multiple`` if given),
        otherwise the upstream answers 400 (flux-2-pro). A client's size is
        sent unchanged or rejected with ``code="size_out_of_range"``. Sizes the
        gateway derives itself (the model default, or the default area at the
        client's ``aspect_ratio``) are fitted into range like ``max_side``; a
        client ratio no size in range can have is rejected with
        ``param="aspect_ratio"``.
    ``aspect_ratio``
        The upstream takes an aspect-ratio enum instead of a size
        (flux.1-kontext-max). The answer is the listed ratio nearest to the
        client's ratio (or size, or the default size), in ``|log ratio|``.

All clamping results are integers; snapping to a grid of ``multiple`` picks
the grid point closest (in log space) to the ideal real-valued size that
satisfies every constraint, so the result always satisfies the rule and is
returned unchanged when clamped again.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, ClassVar, Protocol, Self

from shared.errors import InvalidRequest

__all__ = [
    "MAX_SIDE",
    "MAX_RATIO_TERM",
    "RULES",
    "AreaBandRule",
    "AspectRatioRule",
    "FixedRule",
    "MaxSideRule",
    "PassthroughRule",
    "RangeMultipleRule",
    "Size",
    "SizeDecision",
    "SizeRule",
    "parse_aspect_ratio",
    "parse_size",
    "rule_from_spec",
]

MAX_SIDE = 16384
"""Any side above this in a client request is rejected by :func:`parse_size`."""

MAX_RATIO_TERM = 100
"""Each term of an ``aspect_ratio`` ("W:H") must be in ``1..MAX_RATIO_TERM``."""

_MAX_TEXT = 32  # longer size / ratio strings are rejected before any int() call
_SIZE_RE = re.compile(r"(0|[1-9][0-9]*)x(0|[1-9][0-9]*)")
_RATIO_RE = re.compile(r"(0|[1-9][0-9]*):(0|[1-9][0-9]*)")
_SNAP_WINDOW = 3  # grid steps searched either side of the ideal height


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, order=True)
class Size:
    """A width and height in pixels, both positive integers."""

    width: int
    height: int

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Size.{name} must be a positive int, got {value!r}")

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass(frozen=True)
class SizeDecision:
    """What to send upstream.

    ``size`` is the width/height (``None`` for ratio-only models);
    ``aspect_ratio`` is the ratio enum value such as ``"16:9"`` (only for
    ``aspect_ratio`` rules).
    """

    size: Size | None
    aspect_ratio: str | None = None


# --------------------------------------------------------------------------- parsing


def _quote(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")


def parse_size(text: str) -> Size:
    """Parse a client's ``"WxH"``; :class:`InvalidRequest` (``param="size"``) if malformed."""
    if not isinstance(text, str):
        raise InvalidRequest(
            f"Invalid size {text!r}: expected a string 'WIDTHxHEIGHT' such as '1024x1024'.",
            param="size",
            code="invalid_size",
        )
    match = _SIZE_RE.fullmatch(text) if len(text) <= _MAX_TEXT else None
    if match is None:
        raise InvalidRequest(
            f"Invalid size {_quote(text)}: expected 'WIDTHxHEIGHT' with whole numbers "
            f"written in plain decimal digits, such as '1024x1024'.",
            param="size",
            code="invalid_size",
        )
    width, height = int(match.group(1)), int(match.group(2))
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise InvalidRequest(
            f"Invalid size {_quote(text)}: width and height must each be between 1 and "
            f"{MAX_SIDE} pixels.",
            param="size",
            code="invalid_size",
        )
    return Size(width, height)


def parse_aspect_ratio(text: str) -> tuple[int, int]:
    """Parse ``"W:H"`` (both ``1..100``); :class:`InvalidRequest` (``param="aspect_ratio"``)."""
    match = _RATIO_RE.fullmatch(text) if isinstance(text, str) and len(text) <= _MAX_TEXT else None
    if match is None:
        shown = _quote(text) if isinstance(text, str) else repr(text)
        raise InvalidRequest(
            f"Invalid aspect_ratio {shown}: expected 'W:H' with whole numbers such as '16:9'.",
            param="aspect_ratio",
            code="invalid_aspect_ratio",
        )
    width, height = int(match.group(1)), int(match.group(2))
    if not (1 <= width <= MAX_RATIO_TERM and 1 <= height <= MAX_RATIO_TERM):
        raise InvalidRequest(
            f"Invalid aspect_ratio {_quote(text)}: both terms must be between 1 and "
            f"{MAX_RATIO_TERM}.",
            param="aspect_ratio",
            code="invalid_aspect_ratio",
        )
    return width, height


# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class _Target:
    """What the client wants: a ratio and an area, and the exact size if there is one."""

    ratio: Fraction  # width / height
    area: int
    exact: Size | None
    source: str  # "size" | "aspect_ratio" | "default"

    def ideal(self) -> tuple[float, float]:
        if self.exact is not None:
            return float(self.exact.width), float(self.exact.height)
        r = float(self.ratio)
        return math.sqrt(self.area * r), math.sqrt(self.area / r)


def _target(requested: Size | None, aspect_ratio: str | None, default: Size) -> _Target:
    ratio = parse_aspect_ratio(aspect_ratio) if aspect_ratio is not None else None
    if requested is not None:
        return _Target(
            Fraction(requested.width, requested.height), requested.pixels, requested, "size"
        )
    if ratio is not None:
        return _Target(Fraction(*ratio), default.pixels, None, "aspect_ratio")
    return _Target(Fraction(default.width, default.height), default.pixels, default, "default")


def _spread(a: Fraction, b: Fraction) -> Fraction:
    """``exp(|log a - log b|)``, exactly: 1 when equal, grows as they drift apart."""
    q = a / b
    return q if q >= 1 else 1 / q


def _ceil_to(value: float, multiple: int) -> int:
    return math.ceil(value / multiple) * multiple


def _floor_to(value: float, multiple: int) -> int:
    return math.floor(value / multiple) * multiple


def _snap(
    wf: float,
    hf: float,
    multiple: int,
    h_bounds: tuple[int, int],
    w_bounds: Callable[[int], tuple[int, int]],
) -> Size | None:
    """The feasible grid point nearest to the real-valued ideal ``(wf, hf)``.

    Heights are multiples of ``multiple`` in ``h_bounds``; for a height ``h``
    the feasible widths are the multiples in ``w_bounds(h)`` (both ends are
    multiples); the two grid widths around ``wf`` (clamped into that range) are
    tried for each height. Distance is the larger log deviation of either side,
    then the aspect-ratio deviation, then the size itself (for determinism).
    Heights near the ideal are tried first; the window widens (up to the whole
    range) only while none of them works.
    """
    k_lo = -(-h_bounds[0] // multiple)
    k_hi = h_bounds[1] // multiple
    if k_lo > k_hi:
        return None
    k_mid = min(max(round(hf / multiple), k_lo), k_hi)
    w_near = {_floor_to(wf, multiple), _ceil_to(wf, multiple)}  # the grid widths around wf

    def best_of(ks: range) -> Size | None:
        best: tuple[tuple[float, float, int, int], Size] | None = None
        for k in ks:
            h = k * multiple
            a, b = w_bounds(h)
            if a > b:
                continue
            dh = math.log(h / hf)
            for w in {min(max(w, a), b) for w in w_near}:
                dw = math.log(w / wf)
                key = (max(abs(dw), abs(dh)), abs(dw - dh), w, h)
                if best is None or key < best[0]:
                    best = (key, Size(w, h))
        return best[1] if best is not None else None

    window = _SNAP_WINDOW
    while True:
        first, last = max(k_lo, k_mid - window), min(k_hi, k_mid + window)
        found = best_of(range(first, last + 1))
        if found is not None or (first == k_lo and last == k_hi):
            return found
        window *= 4


@dataclass(frozen=True)
class _Box:
    """Sides in ``[lo, hi]`` (multiples of ``multiple``), area at most ``max_pixels``."""

    lo: int
    hi: int
    multiple: int
    max_pixels: int | None

    def contains(self, size: Size) -> bool:
        m = self.multiple
        return all(self.lo <= s <= self.hi and s % m == 0 for s in (size.width, size.height)) and (
            self.max_pixels is None or size.pixels <= self.max_pixels
        )

    def max_ratio(self) -> Fraction:
        """The most extreme long/short ratio that fits."""
        ratio = Fraction(self.hi, self.lo)
        if self.max_pixels is not None:
            ratio = min(ratio, Fraction(self.max_pixels, self.lo * self.lo))
        return ratio

    def _long_cap(self) -> int:
        if self.max_pixels is None:
            return self.hi
        return min(self.hi, _floor_to(self.max_pixels // self.lo, self.multiple))

    def _w_bounds(self, h: int) -> tuple[int, int]:
        if self.max_pixels is None:
            return self.lo, self.hi
        return self.lo, min(self.hi, _floor_to(self.max_pixels // h, self.multiple))

    def fit(self, target: _Target) -> Size:
        """Scale ``target`` uniformly into the box, then snap it to the grid."""
        if target.exact is not None and self.contains(target.exact):
            return target.exact
        wf, hf = target.ideal()
        if max(target.ratio, 1 / target.ratio) <= self.max_ratio():
            long_side, short_side = max(wf, hf), min(wf, hf)
            upper = self.hi / long_side
            if self.max_pixels is not None:
                upper = min(upper, math.sqrt(self.max_pixels / (wf * hf)))
            scale = min(max(1.0, self.lo / short_side), upper)
            ideal_w, ideal_h = wf * scale, hf * scale
        else:  # too extreme: longest side allowed against the shortest side allowed
            long_cap = float(self._long_cap())
            ideal_w, ideal_h = (long_cap, self.lo) if wf >= hf else (self.lo, long_cap)
        size = _snap(ideal_w, ideal_h, self.multiple, (self.lo, self._long_cap()), self._w_bounds)
        if size is None:  # cannot happen: _make_box checks that (lo, lo) fits
            raise RuntimeError(f"no size fits {self}")
        return size


def _make_box(rule: str, lo: int, hi: int, multiple: int, max_pixels: int | None = None) -> _Box:
    """The grid-aligned box of a rule; ValueError if it holds no size at all."""
    box = _Box(_ceil_to(lo, multiple), _floor_to(hi, multiple), multiple, max_pixels)
    if box.lo > box.hi:
        raise ValueError(
            f"size rule '{rule}': no multiple of {multiple} lies between {lo} and {hi}"
        )
    if max_pixels is not None and box.lo * box.lo > max_pixels:
        raise ValueError(
            f"size rule '{rule}': max_pixels={max_pixels} is below the smallest allowed "
            f"size {box.lo}x{box.lo}"
        )
    return box


# --------------------------------------------------------------------------- spec parsing


def _check_keys(kind: str, spec: Mapping[str, Any], required: set[str], optional: set[str]) -> None:
    keys = set(spec) - {"kind"}
    missing = required - keys
    if missing:
        raise ValueError(f"size rule '{kind}' is missing {sorted(missing)}")
    unknown = keys - required - optional
    if unknown:
        allowed = sorted(required | optional)
        raise ValueError(
            f"size rule '{kind}' has unknown keys {sorted(unknown)}; allowed: {allowed}"
        )


def _int_param(kind: str, name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"size rule '{kind}': {name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"size rule '{kind}': {name} must be >= {minimum}, got {value}")
    return value


def _positive_number(kind: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"size rule '{kind}': {name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"size rule '{kind}': {name} must be a positive number, got {value!r}")
    return float(value)


def _check_side_range(kind: str, lo: int, hi: int, multiple: int | None) -> None:
    _int_param(kind, "min", lo)
    _int_param(kind, "max", hi)
    if multiple is not None:
        _int_param(kind, "multiple", multiple)
    if lo > hi:
        raise ValueError(f"size rule '{kind}': min={lo} is greater than max={hi}")


# --------------------------------------------------------------------------- rules


class SizeRule(Protocol):
    """A model's size constraint. Implementations are frozen dataclasses."""

    kind: ClassVar[str]

    def clamp(
        self, requested: Size | None, aspect_ratio: str | None, default: Size
    ) -> SizeDecision:
        """What to send upstream for this request (see the module docstring)."""
        ...

    def describe(self) -> dict[str, Any]:
        """A JSON-safe summary for ``GET /v1/models``, including ``"kind"``."""
        ...


class _SpecRule(SizeRule, Protocol):
    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Self: ...


@dataclass(frozen=True)
class FixedRule:
    """Only the listed sizes; anything else maps to the nearest one."""

    kind: ClassVar[str] = "fixed"
    sizes: tuple[Size, ...]

    def __post_init__(self) -> None:
        if not self.sizes:
            raise ValueError("size rule 'fixed': sizes must not be empty")
        if not all(isinstance(s, Size) for s in self.sizes):
            raise ValueError("size rule 'fixed': sizes must be Size values")
        if len(set(self.sizes)) != len(self.sizes):
            raise ValueError("size rule 'fixed': sizes contains duplicates")

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Self:
        _check_keys(cls.kind, spec, {"sizes"}, set())
        raw = spec["sizes"]
        if isinstance(raw, str) or not isinstance(raw, list | tuple):
            raise ValueError("size rule 'fixed': sizes must be a list of 'WxH' strings")
        sizes = []
        for item in raw:
            try:
                sizes.append(parse_size(item))
            except InvalidRequest as exc:
                raise ValueError(f"size rule 'fixed': {exc.message}") from None
        return cls(tuple(sizes))

    def nearest(self, ratio: Fraction, area: int) -> Size:
        def key(item: tuple[int, Size]) -> tuple[Fraction, Fraction, int]:
            index, size = item
            return (
                _spread(Fraction(size.width, size.height), ratio),
                _spread(Fraction(size.pixels), Fraction(area)),
                index,
            )

        return min(enumerate(self.sizes), key=key)[1]

    def clamp(
        self, requested: Size | None, aspect_ratio: str | None, default: Size
    ) -> SizeDecision:
        target = _target(requested, aspect_ratio, default)
        return SizeDecision(self.nearest(target.ratio, target.area))

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "sizes": [str(s) for s in self.sizes]}


@dataclass(frozen=True)
class MaxSideRule:
    """Each side in ``[min, max]``; scaled uniformly into range (aspect kept when it fits)."""

    kind: ClassVar[str] = "max_side"
    min_side: int
    max_side: int
    multiple: int = 1
    _box: _Box = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_side_range(self.kind, self.min_side, self.max_side, self.multiple)
        box = _make_box(self.kind, self.min_side, self.max_side, self.multiple)
        object.__setattr__(self, "_box", box)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Self:
        _check_keys(cls.kind, spec, {"min", "max"}, {"multiple"})
        return cls(spec["min"], spec["max"], spec.get("multiple", 1))

    def clamp(
        self, requested: Size | None, aspect_ratio: str | None, default: Size
    ) -> SizeDecision:
        return SizeDecision(self._box.fit(_target(requested, aspect_ratio, default)))

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "min": self.min_side, "max": self.max_side}
        if self.multiple != 1:
            out["multiple"] = self.multiple
        return out


@dataclass(frozen=True)
class RangeMultipleRule:
    """Each side in ``[min, max]`` and a multiple of ``multiple``; area <= ``max_pixels``.

    Solved with uniform scaling like :class:`MaxSideRule` (rather than clamping
    each side on its own, which would turn e.g. 4096x2048 into a square), then
    snapped to the grid without leaving any limit.
    """

    kind: ClassVar[str] = "range_multiple"
    min_side: int
    max_side: int
    multiple: int = 1
    max_pixels: int | None = None
    _box: _Box = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_side_range(self.kind, self.min_side, self.max_side, self.multiple)
        if self.max_pixels is not None:
            _int_param(self.kind, "max_pixels", self.max_pixels)
        box = _make_box(self.kind, self.min_side, self.max_side, self.multiple, self.max_pixels)
        object.__setattr__(self, "_box", box)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Self:
        _check_keys(cls.kind, spec, {"min", "max"}, {"multiple", "max_pixels"})
        return cls(spec["min"], spec["max"], spec.get("multiple", 1), spec.get("max_pixels"))

    def clamp(
        self, requested: Size | None, aspect_ratio: str | None, default: Size
    ) -> SizeDecision:
        return SizeDecision(self._box.fit(_target(requested, aspect_ratio, default)))

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "min": self.min_side, "max": self.max_side}
        if self.multiple != 1:
            out["multiple"] = self.multiple
        if self.max_pixels is not None:
            out["max_pixels"] = self.max_pixels
        return out


@dataclass(frozen=True)
class AreaBandRule:
    """Area in ``[min_pixels, max_pixels]``, width/height in ``[min_ratio, max_ratio]``."""

    kind: ClassVar[str] = "area_band"
    min_pixels: int
    max_pixels: int
    min_ratio: float = 1 / 16
    max_ratio: float = 16.0
    multiple: int = 1

    def __post_init__(self) -> None:
        kind = self.kind
        _int_param(kind, "min_pixels", self.min_pixels)
        _int_param(kind, "max_pixels", self.max_pixels)
        _int_param(kind, "multiple", self.multiple)
        object.__setattr__(self, "min_ratio", _positive_number(kind, "min_ratio", self.min_ratio))
        object.__setattr__(self, "max_ratio", _positive_number(kind, "max_ratio", self.max_ratio))
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"size rule '{kind}': min_pixels is greater than max_pixels")
        if not self.min_ratio <= 1 <= self.max_ratio:
            raise ValueError(f"size rule '{kind}': need min_ratio <= 1 <= max_ratio")
        # A square on the grid must fit, so every request has an answer.
        side = _ceil_to(math.isqrt(self.min_pixels - 1) + 1, self.multiple)
        if side * side > self.max_pixels:
            raise ValueError(
                f"size rule '{kind}': no {self.multiple}-aligned square has an area between "
                f"{self.min_pixels} and {self.max_pixels}"
            )

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Self:
        _check_keys(
            cls.kind, spec, {"min_pixels", "max_pixels"}, {"min_ratio", "max_ratio", "multiple"}
        )
        return cls(
            spec["min_pixels"],
            spec["max_pixels"],
            spec.get("min_ratio", 1 / 16),
            spec.get("max_ratio", 16.0),
            spec.get("multiple", 1),
        )

    def contains(self, size: Size) -> bool:
        w, h, m = size.width, size.height, self.multiple
        return (
            w % m == 0
            and h % m == 0
            and self.min_pixels <= w * h <= self.max_pixels
            and self.min_ratio * h <= w <= self.max_ratio * h
        )

    def _w_bounds(self, h: int) -> tuple[int, int]:
        lo = max(-(-self.min_pixels // h), math.ceil(self.min_ratio * h))
        hi = min(self.max_pixels // h, math.floor(self.max_ratio * h))
        return _ceil_to(max(lo, 1), self.multiple), _floor_to(hi, self.multiple)

    def clamp(
        self, requested: Size | None, aspect_ratio: str | None, default: Size
    ) -> SizeDecision:
        target = _target(requested, aspect_ratio, default)
        if target.exact is not None and self.contains(target.exact):
            return SizeDecision(target.exact)
        wf, hf = target.ideal()
        ratio = min(max(wf / hf, self.min_ratio), self.max_ratio)
        area = min(max(wf * hf, float(self.min_pixels)), float(self.max_pixels))
        ideal_w, ideal_h = math.sqrt(area * ratio), math.sqrt(area / ratio)
        h_max = _ceil_to(math.sqrt(self.max_pixels / self.min_ratio), self.multiple)
        size = _snap(ideal_w, ideal_h, self.multiple, (self.multiple, h_max), self._w_bounds)
        if size is None:  # cannot happen: __post_init__ checks that a square fits
            raise RuntimeError(f"no size fits {self}")
        return SizeDecision(size)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "min_ratio": self.min_ratio,
            "max_ratio": self.max_ratio,
        }
        if self.multiple != 1:
            out["multiple"] = self.multiple
        return out


@dataclass(frozen=True)
class PassthroughRule:
    """Client sizes in range go through unchanged; others are rejected, not clamped."""

    kind: ClassVar[str] = "passthrough"
    min_side: int
    max_side: int
    multiple: int | None = None
    _box: _Box = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_side_range(self.kind, self.min_side, self.max_side, self.multiple)
        box = _make_box(self.kind, self.min_side, self.max_side, self.multiple or 1)
        object.__setattr__(self, "_box", box)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Self:
        _check_keys(cls.kind, spec, {"min", "max"}, {"multiple"})
        return cls(spec["min"], spec["max"], spec.get("multiple"))

    def _limits(self) -> str:
        text = f"each side must be between {self.min_side} and {self.max_side} pixels"
        return text + (f" and a multiple of {self.multiple}" if self.multiple else "")

    def clamp(
        self, requested: Size | None, aspect_ratio: str | None, default: Size
    ) -> SizeDecision:
        target = _target(requested, aspect_ratio, default)
        if requested is not None:  # the client's own size: unchanged or rejected
            if not self._box.contains(requested):
                raise InvalidRequest(
                    f"size {requested} is not supported by this model: {self._limits()}.",
                    param="size",
                    code="size_out_of_range",
                )
            return SizeDecision(requested)
        if target.source == "aspect_ratio" and _spread(target.ratio, Fraction(1)) > (
            self._box.max_ratio()
        ):
            raise InvalidRequest(
                f"aspect_ratio {aspect_ratio} is not supported by this model: {self._limits()}, "
                f"so the longer side can be at most {float(self._box.max_ratio()):g} times "
                "the shorter one.",
                param="aspect_ratio",
                code="aspect_ratio_out_of_range",
            )
        return SizeDecision(self._box.fit(target))

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "min": self.min_side, "max": self.max_side}
        if self.multiple is not None:
            out["multiple"] = self.multiple
        return out


@dataclass(frozen=True)
class AspectRatioRule:
    """The upstream takes an aspect-ratio enum; sizes map to the nearest listed ratio."""

    kind: ClassVar[str] = "aspect_ratio"
    ratios: tuple[str, ...]
    _parsed: tuple[Fraction, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.ratios:
            raise ValueError("size rule 'aspect_ratio': ratios must not be empty")
        parsed = []
        for text in self.ratios:
            try:
                parsed.append(Fraction(*parse_aspect_ratio(text)))
            except InvalidRequest as exc:
                raise ValueError(f"size rule 'aspect_ratio': {exc.message}") from None
        if len(set(parsed)) != len(parsed):
            raise ValueError("size rule 'aspect_ratio': ratios lists the same ratio twice")
        object.__setattr__(self, "_parsed", tuple(parsed))

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Self:
        _check_keys(cls.kind, spec, {"ratios"}, set())
        raw = spec["ratios"]
        if isinstance(raw, str) or not isinstance(raw, list | tuple):
            raise ValueError("size rule 'aspect_ratio': ratios must be a list of 'W:H' strings")
        return cls(tuple(raw))

    def nearest(self, ratio: Fraction) -> str:
        index = min(range(len(self.ratios)), key=lambda i: (_spread(self._parsed[i], ratio), i))
        return self.ratios[index]

    def clamp(
        self, requested: Size | None, aspect_ratio: str | None, default: Size
    ) -> SizeDecision:
        if aspect_ratio is not None:  # an explicit ratio wins over a size here
            ratio = Fraction(*parse_aspect_ratio(aspect_ratio))
        else:
            ratio = _target(requested, None, default).ratio
        return SizeDecision(None, self.nearest(ratio))

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "ratios": list(self.ratios)}


RULES: dict[str, type[_SpecRule]] = {
    cls.kind: cls
    for cls in (
        FixedRule,
        MaxSideRule,
        AreaBandRule,
        RangeMultipleRule,
        PassthroughRule,
        AspectRatioRule,
    )
}
"""Rule classes by ``kind``, as written in the catalog."""


def rule_from_spec(spec: Mapping[str, Any]) -> SizeRule:
    """Build a rule from a catalog spec such as ``{"kind": "max_side", "min": 256, "max": 1536}``.

    Raises ValueError (a catalog error, not a client error) for an unknown kind
    or missing, unknown or invalid parameters.
    """
    if not isinstance(spec, Mapping):
        raise ValueError(f"size rule must be a table with a 'kind', got {spec!r}")
    kind = spec.get("kind")
    cls = RULES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown size rule kind {kind!r}; known kinds: {sorted(RULES)}")
    return cls.from_spec(spec)
