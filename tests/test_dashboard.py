"""The Grafana dashboard (dashboards/imagegate.json) queries only metrics that exist.

Every ``imagegate_*`` series a panel's PromQL names must be one the processes export
(shared/metrics.py's metrics, with their ``_total`` / ``_bucket`` / ``_count`` / ``_sum``
series) or the cluster collector reads from Redis, and every label it matches or groups
by must be one of those series' labels.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import fakeredis
import pytest
from prometheus_client.registry import REGISTRY

from shared import metrics
from shared.catalog import load_catalog

pytestmark = pytest.mark.fast

DASHBOARD = Path(__file__).parents[1] / "dashboards" / "imagegate.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
AGGREGATION_LABELS = {"le", "instance", "job"}


@functools.cache
def exported() -> dict[str, set[str]]:
    """Series name -> its label names."""
    families = [f for f in REGISTRY.collect() if f.name.startswith("imagegate_")]
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    families += list(metrics.ClusterCollector(client, load_catalog()).collect())
    series: dict[str, set[str]] = {}
    labels_of = {
        m._name: set(m._labelnames)  # noqa: SLF001 - the declared label names
        for m in vars(metrics).values()
        if hasattr(m, "_labelnames") and hasattr(m, "_name")
    }
    for family in families:
        # Declared labels (a collector's families keep theirs even without samples).
        labels = labels_of.get(family.name, set()) | set(getattr(family, "_labelnames", ()))
        for sample in family.samples:
            labels |= set(sample.labels)
        for suffix in SUFFIXES[family.type]:
            series[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return series


def expressions() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in board["panels"] for t in panel["targets"]]


def test_the_dashboard_covers_what_the_issue_asks_for() -> None:
    text = " ".join(expressions())
    for needed in (
        "imagegate_http_request_duration_seconds_bucket",  # latency per model
        "imagegate_jobs_finished_total",  # errors and throughput per model
        "imagegate_queue_depth",
        "imagegate_http_requests_in_progress",  # waiting requests
        "imagegate_breaker_state",
        "imagegate_money_settled_micros_total",
    ):
        assert needed in text


@pytest.mark.parametrize("expr", expressions())
def test_every_queried_metric_and_label_exists(expr: str) -> None:
    series = exported()
    names = set(re.findall(r"\bimagegate_[a-z_]+", expr))
    assert names
    for name in names:
        assert name in series, f"{name} is not exported"
    known = set().union(*(series[n] for n in names)) | AGGREGATION_LABELS
    for selector in re.findall(r"imagegate_[a-z_]+\{([^}]*)\}", expr):
        for label in re.findall(r"([a-z_]+)\s*(?:=~|!=|!~|=)", selector):
            assert label in known, f"{label} in {expr}"
    for grouping in re.findall(r"\bby \(([^)]*)\)", expr):
        for label in (part.strip() for part in grouping.split(",")):
            assert label in known, f"{label} in {expr}"
