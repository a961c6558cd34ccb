"""The benchmark's smoke version, end to end: ``python -m bench.run --quick``.

It starts its own stack (redis-server, simulator, Celery workers, gunicorn)
on free ports, runs every scenario with tiny numbers and writes the results.
Only that it works is checked here, never how fast: timings on a shared CI
machine mean nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.run import SCENARIOS
from tests.support.processes import REPO

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def test_quick_benchmark_runs_every_scenario_and_writes_json_and_charts(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"

    doc = json.loads((out / "results.json").read_text())
    assert doc["quick"] is True
    assert set(doc["scenarios"]) == set(SCENARIOS)
    for name, result in doc["scenarios"].items():
        figures = result["figures"]
        assert figures["errors"] == 0, (name, result)
        if name == "scale-out":
            assert len(result["configs"]) >= 2
            assert all(_number(v) and v > 0 for v in figures["images_per_s"].values())
            continue
        load = result["load"]
        assert load["ok"] > 0 and load["errors"] == 0, (name, load)
        assert _number(load["images_per_s"]) and load["images_per_s"] > 0
        assert all(_number(load["latency_ms"][q]) for q in ("p50", "p95", "p99"))
        assert _number(result["resources"]["peak_rss_mib"]), (name, result["resources"])
    overhead, held, b64 = (doc["scenarios"][n]["figures"] for n in ("overhead", "held", "b64"))
    assert all(_number(overhead[k]) for k in ("added_p50_ms", "added_p99_ms", "peak_rss_mib"))
    assert all(_number(b64[k]) for k in ("added_p50_ms", "added_p99_ms", "peak_rss_mib"))
    assert _number(held["completion_s"]) and _number(held["peak_rss_mib"])
    assert b64["response_mib"] > 0.5  # photo-sized images really went through as base64

    for chart in ("overhead", "held", "throughput", "b64", "scale-out"):
        data = (out / f"{chart}.png").read_bytes()
        assert data.startswith(PNG_SIGNATURE), chart
    table = (out / "results.md").read_text()
    assert all(f"| {name} |" in table for name in SCENARIOS)
    assert "| overhead |" in proc.stdout  # the table is printed too
