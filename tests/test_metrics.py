"""Metrics and readiness without a stack: labels, the host directory merge, /metrics, /readyz.

The merge test runs real processes (the multiprocess files are per pid); the rest runs
in-process on fakeredis. The whole stack's numbers are checked in test_metrics_e2e.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import fakeredis
import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.services import EXTENSION
from shared import metrics
from shared.presence import Presence
from shared.settings import Settings
from shared.storage import StorageConfig

TEST_CATALOG = Path(__file__).parent / "data" / "test_models.toml"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.mark.fast
@pytest.mark.parametrize(
    ("code", "label"),
    [
        ("upstream_timeout", "upstream_timeout"),
        (None, ""),
        ("Bearer sk-secret-in-an-upstream-message", "other"),
        ("x" * 60, "other"),
    ],
)
def test_error_codes_become_bounded_labels(code: str | None, label: str) -> None:
    assert metrics.bounded(code) == label


@pytest.mark.fast
def test_distinct_codes_stop_at_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_SEEN_CODES", set())
    labels = {metrics.bounded(f"code_{i}") for i in range(metrics.MAX_CODES + 20)}
    assert len(labels) == metrics.MAX_CODES + 1  # the first MAX_CODES, then "other"
    assert "other" in labels


@pytest.mark.fast
@pytest.mark.parametrize(
    ("status", "label"), [(200, "2xx"), (404, "4xx"), (429, "429"), (503, "5xx"), (None, "error")]
)
def test_upstream_statuses_become_classes(status: int | None, label: str) -> None:
    assert metrics.status_class(status) == label


@pytest.fixture()
def app(tmp_path: Path) -> Flask:
    settings = Settings(
        storage=StorageConfig(local_dir=str(tmp_path / "images")),
        catalog_overlays=(str(TEST_CATALOG),),
        credentials={"OPENAI_API_KEY": "sk-test"},
    )
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    return create_app(settings, redis_client=client)


@pytest.mark.fast
def test_metrics_count_requests_and_read_the_cluster_from_redis(app: Flask) -> None:
    web = app.test_client()
    before = samples(web.get("/metrics").get_data(as_text=True))
    web.post("/v1/images/generations", json={"prompt": "x"})  # no key: 401
    redis = app.extensions[EXTENSION].redis
    redis.lpush("openai", "a", "b")  # two messages waiting in the openai queue
    answer = web.get("/metrics")
    assert answer.status_code == 200
    assert answer.content_type.startswith("text/plain; version=0.0.4")
    after = samples(answer.get_data(as_text=True))
    key = (
        "imagegate_http_requests_total",
        (
            ("method", "POST"),
            ("model", ""),
            ("route", "/v1/images/generations"),
            ("status", "401"),
        ),
    )
    assert after[key] - before.get(key, 0) == 1
    assert after[("imagegate_queue_depth", (("family", "openai"),))] == 2
    model_closed = (
        "imagegate_breaker_state",
        (("key", ""), ("model", "dall-e-2"), ("state", "closed")),
    )
    assert after[model_closed] == 1
    assert ("imagegate_workers_live", (("family", "openai"),)) in after


@pytest.mark.fast
def test_readyz_names_what_is_missing_until_a_worker_serves_each_keyed_family(
    app: Flask,
) -> None:
    web = app.test_client()
    answer = web.get("/readyz")
    assert answer.status_code == 503
    # This process holds only the openai key: that family needs a live worker.
    assert answer.json["missing"] == ["workers: no live worker for 'openai'"]
    Presence(app.extensions[EXTENSION].redis).announce("w1:1", ["openai"], ttl=30)
    answer = web.get("/readyz")
    assert answer.status_code == 200, answer.json
    assert web.get("/healthz").status_code == 200


@pytest.mark.fast
def test_readyz_says_when_storage_cannot_be_written(app: Flask, tmp_path: Path) -> None:
    Presence(app.extensions[EXTENSION].redis).announce("w1:1", ["openai"], ttl=30)
    (tmp_path / "images").mkdir(exist_ok=True)
    (tmp_path / "images" / "readyz").write_text("a file where the probe's directory goes")
    answer = app.test_client().get("/readyz")
    assert answer.status_code == 503
    assert answer.json["missing"][0].startswith("storage: not writable")


@pytest.mark.fast
def test_readyz_says_when_local_storage_is_nearly_full(tmp_path: Path) -> None:
    """Below the free space jobs need, /readyz says so before jobs fail with 503."""
    settings = Settings(
        storage=StorageConfig(local_dir=str(tmp_path / "images"), local_min_free_bytes=2**62),
        catalog_overlays=(str(TEST_CATALOG),),
        credentials={"OPENAI_API_KEY": "sk-test"},
    )
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    app = create_app(settings, redis_client=client)
    Presence(client).announce("w1:1", ["openai"], ttl=30)
    answer = app.test_client().get("/readyz")
    assert answer.status_code == 503
    [missing] = answer.json["missing"]
    assert missing.startswith("storage: ") and "free" in missing, missing


_CHILD = """
import sys
from shared import metrics
metrics.activate(sys.argv[1])
metrics.JOBS_FINISHED.labels("m", "f", "succeeded", "").inc(int(sys.argv[2]))
metrics.JOBS_RUNNING.labels("f").inc()
if sys.argv[3] == "stay":
    print("ready", flush=True)
    sys.stdin.read()
"""


def test_a_host_scrape_sums_every_process_and_forgets_dead_ones_live_gauges(
    tmp_path: Path,
) -> None:
    """Two processes count into one directory; one ends. Its counter stays in the sum
    (a host's counters never go down), its 'running' gauge does not."""
    path = str(tmp_path / "metrics")
    run = [sys.executable, "-c", _CHILD, path]
    stays = subprocess.Popen([*run, "2", "stay"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert stays.stdout is not None and stays.stdout.readline().strip() == b"ready"
        subprocess.run([*run, "3", "end"], check=True, timeout=30)
        merged = samples(metrics.exposition_of_directory(path))
        finished = (
            "imagegate_jobs_finished_total",
            (("code", ""), ("family", "f"), ("model", "m"), ("outcome", "succeeded")),
        )
        assert merged[finished] == 5
        assert merged[("imagegate_jobs_running", (("family", "f"),))] == 1
    finally:
        stays.communicate(b"", timeout=30)
    # Every process is gone: the next one to start empties the directory.
    subprocess.run([*run, "1", "end"], check=True, timeout=30)
    merged = samples(metrics.exposition_of_directory(path))
    assert merged[finished] == 1
    assert ("imagegate_jobs_running", (("family", "f"),)) not in merged


@pytest.mark.fast
def test_the_cost_benchmark_makes_the_calls_of_one_job() -> None:
    """bench/metrics_cost.py times these calls; they must stay valid metric calls."""
    from bench.metrics_cost import one_job

    one_job(metrics)
