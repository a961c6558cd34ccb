"""Metrics against what happened: a known scenario on a stack of its own, then one scrape.

Its own Redis, OpenAI simulator, metrics directory, gunicorn (two processes: the
scrape must merge both) and Celery workers (openai, webhooks), so the counters
start at zero and nothing else adds to them. The scenario:

* 3 synchronous successes;
* 1 upstream failure (500 on every attempt: 1 call + 2 retries);
* 1 asynchronous success whose webhook receiver answers 500, then 204 (one retry);
* 1 synchronous timeout (the upstream answers after the budget);
* 1 takeover: the worker running an asynchronous job is SIGKILLed; a new worker's
  reaper takes it over and it succeeds.

Then ``GET /metrics`` must show exactly those jobs, outcomes, upstream calls,
retries, takeovers, webhook attempts, images, money and HTTP answers, and no job
still counted as running (the killed process's live gauge is gone).
"""

from __future__ import annotations

import http.server
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from shared.jobs import JobStore
from shared.redis_client import connect
from shared.settings import Settings
from tests.conftest import create_key, start_simulator, start_worker
from tests.support.processes import Process, RedisServer
from tests.support.sim import fault, sent_with

MODEL = "dall-e-2"
BUDGET = 6  # seconds: the synchronous budget of this stack
PROMPT = "zebra-quartz-lantern"  # must never reach a log line


class Receiver:
    """A webhook receiver that answers 500 to the first delivery, then 204."""

    def __init__(self) -> None:
        self.calls = 0
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.calls += 1
                self.send_response(500 if receiver.calls == 1 else 204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class Stack:
    def __init__(self, run_dir: Path, env: dict[str, str], url: str, sim: str) -> None:
        self.run_dir, self.env, self.url, self.sim = run_dir, env, url, sim
        self.workers: list[Process] = []
        self.logs: list[Path] = []  # the web's and the workers' (killed one included)

    def latency(self, seconds: float) -> None:
        requests.post(f"{self.sim}/_sim/config", json={"latency": seconds}, timeout=5)

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = requests.get(f"{self.url}/metrics", timeout=10).text
        samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return samples


def total(samples: dict, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(
        v
        for (n, lbls), v in samples.items()
        if n == name and all(dict(lbls).get(k) == want for k, want in labels.items())
    )


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    run_dir: Path,
    stack_env: dict[str, str],
    start_gateway,
) -> Iterator[Stack]:
    run_dir_of_session = run_dir  # where start_gateway keeps the web's log
    run_dir = tmp_path_factory.mktemp("metrics-e2e")
    redis = RedisServer(run_dir).start()
    sim_proc, sim = start_simulator(run_dir, "openai", name="metrics-simulator-openai")
    env = {
        **stack_env,
        "IMAGEGATE_REDIS_URL": redis.url,
        "IMAGEGATE_STORAGE_DIR": str(run_dir / "images"),
        "IMAGEGATE_BASE_URL_OPENAI": f"{sim}/v1",
        "IMAGEGATE_METRICS_DIR": str(run_dir / "metrics"),
        "IMAGEGATE_SYNC_BUDGET_SECONDS": str(BUDGET),
        "IMAGEGATE_LOG_FORMAT": "json",
    }
    workers = [start_worker(run_dir, env, q, name=f"metrics-{q}") for q in ("openai", "webhooks")]
    url = start_gateway("metrics-web", **env)  # two gunicorn processes
    s = Stack(run_dir, env, url, sim)
    s.workers = workers
    port = url.rsplit(":", 1)[1]
    s.logs = [p.log_path for p in workers] + [run_dir_of_session / f"metrics-web-{port}.log"]
    yield s
    for proc in s.workers:
        proc.stop()
    sim_proc.stop()
    redis.stop()


def _wait(what, timeout: float = 40.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if what():
            return
        time.sleep(0.1)
    raise AssertionError("timed out waiting")


def test_the_scraped_metrics_equal_what_happened(stack: Stack) -> None:
    key = create_key(stack.env, "metrics", tier="internal", balance="5.00")
    client = OpenAI(api_key=key["key"], base_url=f"{stack.url}/v1", max_retries=0, timeout=60)
    jobs = JobStore(connect(stack.env["IMAGEGATE_REDIS_URL"]))
    # the price of what these requests ask for (dall-e-2 is priced by size; shared.pricing)
    price = Settings.from_env(stack.env).load_catalog().model(MODEL).unit_price({"size": "256x256"})
    gen = f"{stack.url}/v1/images/generations"
    auth = {"Authorization": f"Bearer {key['key']}"}
    # Counters are the stack's since it started: what this test did is what they grew by
    # (the module's other tests may have run first).
    before = stack.scrape()

    for i in range(3):  # successes
        client.images.generate(model=MODEL, prompt=f"{PROMPT} {i}", size="256x256")
    failed = requests.post(
        gen, json={"model": MODEL, "prompt": fault(500, 3), "size": "256x256"}, headers=auth
    )
    assert failed.status_code == 502
    receiver = Receiver()  # success with a webhook retried once
    hooked = requests.post(
        gen,
        json={"model": MODEL, "prompt": "hook", "size": "256x256", "webhook_url": receiver.url},
        headers=auth,
    )
    assert hooked.status_code == 202
    _wait(lambda: receiver.calls >= 2)

    stack.latency(BUDGET + 4)  # timeout: the upstream answers after the budget
    late = requests.post(
        gen, json={"model": MODEL, "prompt": "late", "size": "256x256"}, headers=auth
    )
    assert late.status_code == 504
    late_id = late.json()["error"]["job_id"]
    _wait(lambda: jobs.status(late_id) == "timed_out")

    stack.latency(3)  # takeover: the worker dies while the upstream works
    taken = requests.post(
        gen,
        json={"model": MODEL, "prompt": "taken", "size": "256x256"},
        headers={**auth, "Prefer": "respond-async"},
    )
    assert taken.status_code == 202, taken.text
    taken_id = taken.json()["id"]
    # Killed once the upstream has the request: its claim and time in queue are counted.
    _wait(lambda: bool(sent_with(stack.sim, "taken")))
    killed = stack.workers[0]
    killed.signal(signal.SIGKILL)
    killed.proc.wait(10)
    stack.latency(0)
    stack.workers[0] = start_worker(stack.run_dir, stack.env, "openai", name="metrics-openai")
    _wait(lambda: jobs.status(taken_id) == "succeeded", timeout=60)

    m = stack.scrape()

    def grew(name: str, **labels: str) -> float:
        return total(m, name, **labels) - total(before, name, **labels)

    mine = {"model": MODEL, "family": "openai"}
    assert grew("imagegate_jobs_finished_total", outcome="succeeded", **mine) == 5
    assert grew("imagegate_jobs_finished_total", outcome="failed", **mine) == 1
    assert grew("imagegate_jobs_finished_total", outcome="timed_out", **mine) == 1
    assert grew("imagegate_jobs_finished_total") == 7
    assert grew("imagegate_job_takeovers_total", family="openai") == 1
    assert grew("imagegate_reaper_actions_total", action="takeover") == 1
    assert grew("imagegate_webhook_deliveries_total", outcome="retrying") == 1
    assert grew("imagegate_webhook_deliveries_total", outcome="delivered") == 1
    # Upstream: the failure's 3 calls (2 retries); the timed-out call got no answer.
    assert grew("imagegate_upstream_requests_total", status="5xx", family="openai") == 3
    assert grew("imagegate_upstream_retries_total", family="openai", model=MODEL) == 2
    assert grew("imagegate_upstream_requests_total", status="error") == 1
    assert grew("imagegate_upstream_requests_total", status="2xx", model=MODEL) == 5
    assert grew("imagegate_upstream_request_duration_seconds_count") == 9
    # Attempts that ran to their end (the killed one never did), and time in queue.
    assert grew("imagegate_job_run_seconds_count", **mine) == 7
    assert grew("imagegate_job_queue_seconds_count", family="openai") == 7
    assert grew("imagegate_images_stored_total", model=MODEL) == 5
    assert grew("imagegate_image_bytes_stored_total", model=MODEL) > 0
    # Money: 7 jobs reserved, 5 images paid, 2 jobs refunded.
    assert grew("imagegate_money_reserved_micros_total", model=MODEL) == 7 * price
    assert grew("imagegate_money_settled_micros_total", model=MODEL) == 5 * price
    assert grew("imagegate_money_refunded_micros_total", model=MODEL) == 2 * price
    # HTTP answers, merged over both gunicorn processes.
    route = {"route": "/v1/images/generations", "model": MODEL}
    assert grew("imagegate_http_requests_total", status="200", **route) == 3
    assert grew("imagegate_http_requests_total", status="202", **route) == 2
    assert grew("imagegate_http_requests_total", status="502", **route) == 1
    assert grew("imagegate_http_requests_total", status="504", **route) == 1
    assert grew("imagegate_http_request_duration_seconds_count", **route) == 7
    # Nothing running or waiting now; the killed worker's live gauge is gone.
    assert total(m, "imagegate_jobs_running", family="openai") == 0
    assert total(m, "imagegate_http_requests_in_progress", route="/v1/images/generations") == 0
    assert total(m, "imagegate_queue_depth", family="openai") == 0
    assert total(m, "imagegate_workers_live", family="openai") >= 1
    assert total(m, "imagegate_jobs_unfinished") == 0


def test_json_logs_carry_the_job_fields_and_no_secret(stack: Stack) -> None:
    key = create_key(stack.env, "logs", tier="internal", balance="unlimited")
    client = OpenAI(api_key=key["key"], base_url=f"{stack.url}/v1", max_retries=0, timeout=60)
    result = client.images.generate(
        model=MODEL, prompt=f"{PROMPT} logs", size="256x256", response_format="url"
    )
    signed = result.data[0].url
    assert signed and "?" in signed
    assert requests.get(signed, timeout=10).status_code == 200
    query = signed.split("?", 1)[1]

    def read_lines() -> list[str]:
        return [line for path in stack.logs for line in path.read_text().splitlines() if line]

    # gunicorn writes an access line after its answer has gone: wait for the image's
    deadline = time.monotonic() + 30
    lines = read_lines()
    while not any("/v1/files/" in line and '"gunicorn.access"' in line for line in lines):
        assert time.monotonic() < deadline, "no access line for the image's GET"
        time.sleep(0.2)
        lines = read_lines()
    records = []
    for line in lines:
        assert PROMPT not in line and key["key"] not in line and query not in line, line
        records.append(json.loads(line))  # every line of every process: one JSON object
    ended = [
        r
        for r in records
        if r.get("logger") == "workers.pipeline"
        and r.get("key_id") == key["id"]
        and r.get("outcome") == "succeeded"
    ]
    assert len(ended) == 1
    for field in ("job_id", "model", "family", "attempt", "duration_s"):
        assert ended[0][field], field
    assert ended[0]["role"] == "worker" and ended[0]["model"] == MODEL
    web = [r for r in records if r.get("logger") == "gunicorn.access" and r.get("request_id")]
    assert any(r["path"].startswith("/v1/files/") and r["status"] == "200" for r in web)
    queued = [r for r in records if r.get("key_id") == key["id"] and r.get("role") == "web"]
    assert queued and all(r["request_id"].startswith("req_") for r in queued)
