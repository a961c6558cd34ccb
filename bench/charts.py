"""PNG charts of a scenario's latency distribution.

matplotlib draws them when it is installed (``pip install matplotlib``);
otherwise a plain histogram is drawn with Pillow, which the gateway already
depends on, so a chart is always written.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:  # pragma: no cover - depends on the environment
    plt = None

Series = tuple[str, Sequence[float]]  # (label, values)


def histogram(
    path: Path,
    title: str,
    xlabel: str,
    series: Sequence[Series],
    *,
    marks: dict[str, float] | None = None,
    timeline: tuple[str, Sequence[float], Sequence[float]] | None = None,
) -> Path:
    """One histogram per series (overlaid), vertical lines at ``marks`` (label -> x).

    ``timeline`` = (ylabel, xs, ys) adds a second panel below (e.g. RSS over time).
    """
    series = [(label, list(values)) for label, values in series if values]
    if plt is None:
        return _pillow_histogram(path, title, xlabel, series, marks or {})
    rows = 2 if timeline else 1
    fig, axes = plt.subplots(rows, 1, figsize=(8, 4.5 * rows), squeeze=False)
    ax = axes[0][0]
    every = [v for _, values in series for v in values]
    lo, hi = (min(every), max(every)) if every else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    bins = [lo + (hi - lo) * i / 60 for i in range(61)]
    for label, values in series:
        ax.hist(values, bins=bins, alpha=0.6 if len(series) > 1 else 0.9, label=label)
    for label, x in (marks or {}).items():
        if x is not None and math.isfinite(x):
            ax.axvline(x, linestyle="--", linewidth=1, color="black")
            ax.annotate(
                label, (x, 1), xycoords=("data", "axes fraction"), rotation=90,
                va="top", ha="right", fontsize=8,
            )  # fmt: skip
    ax.set_title(title, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("requests")
    if len(series) > 1:
        ax.legend(fontsize=8)
    if timeline:
        ylabel, xs, ys = timeline
        tax = axes[1][0]
        tax.plot(list(xs), list(ys))
        tax.set_xlabel("seconds since the scenario started")
        tax.set_ylabel(ylabel)
        tax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def bars(path: Path, title: str, ylabel: str, values: dict[str, float]) -> Path:
    """A bar chart (e.g. images per second per configuration)."""
    if plt is None:
        series = [(k, [v]) for k, v in values.items()]
        return _pillow_histogram(path, title, ylabel, series, {})
    fig, ax = plt.subplots(figsize=(8, 4.5))
    labels = list(values)
    ax.bar(labels, [values[k] for k in labels])
    for i, k in enumerate(labels):
        ax.annotate(f"{values[k]:.0f}", (i, values[k]), ha="center", va="bottom", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _pillow_histogram(
    path: Path, title: str, xlabel: str, series: Sequence[Series], marks: dict[str, float]
) -> Path:
    from PIL import Image, ImageDraw

    width, height, margin = 800, 450, 50
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.multiline_text((margin, 10), title, fill="black")
    top = 20 + 12 * (title.count("\n") + 1)  # the plot starts below the title
    draw.text((margin, height - 20), xlabel, fill="black")
    every = [v for _, values in series for v in values]
    if every:
        lo, hi = min(every), max(every)
        hi = hi if hi > lo else lo + 1.0
        nbins = 60
        colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
        counts_by_series = []
        for _, values in series:
            counts = [0] * nbins
            for v in values:
                counts[min(nbins - 1, int((v - lo) / (hi - lo) * nbins))] += 1
            counts_by_series.append(counts)
        peak = max(max(c) for c in counts_by_series) or 1
        span_x, span_y = width - 2 * margin, height - margin - top
        bar = span_x / nbins
        for idx, counts in enumerate(counts_by_series):
            colour = colours[idx % len(colours)]
            for i, count in enumerate(counts):
                if count:
                    x0 = margin + i * bar
                    y0 = height - margin - span_y * count / peak
                    draw.rectangle([x0, y0, x0 + bar - 1, height - margin], outline=colour)
        for label, x in marks.items():
            if x is not None and lo <= x <= hi:
                px = margin + (x - lo) / (hi - lo) * span_x
                draw.line([px, top, px, height - margin], fill="black")
                draw.text((px + 2, top), label, fill="black")
        draw.text((margin, height - margin + 5), f"{lo:.1f}", fill="black")
        draw.text((width - margin - 40, height - margin + 5), f"{hi:.1f}", fill="black")
    image.save(path, "PNG")
    return path
