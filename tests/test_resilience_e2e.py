"""Killing processes and restarting Redis under live jobs: nothing lost, nothing charged twice.

This module runs its own stack — a redis-server with AOF on (as docs/running/redis.md
tells operators to run it), an OpenAI-protocol simulator, two ``openai``
workers, a ``local`` worker and a gunicorn front-end — so it can kill and
restart any of them without touching the other tests' processes.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from shared.billing import Accounts
from shared.jobs import JobStatus, JobStore, Liveness
from shared.keys import KeyStore
from shared.redis_client import connect
from shared.settings import Settings
from tests.conftest import create_key, start_simulator, start_worker
from tests.support.jobs import admit_job
from tests.support.processes import Process, RedisServer

MODEL = "dall-e-2"  # served by the openai family (the simulator), priced
PRICE = 16_000  # micro-units per image of MODEL at 256x256 (see shared/catalog.toml)


class Stack:
    def __init__(self, run_dir: Path, env: dict[str, str], redis: RedisServer, sim: str) -> None:
        self.run_dir = run_dir
        self.env = env
        self.redis = redis
        self.sim = sim
        self.workers: dict[str, Process] = {}
        self.url = ""

    def start_worker(self, name: str, queue: str = "openai") -> Process:
        self.workers[name] = start_worker(self.run_dir, self.env, queue, name=name)
        return self.workers[name]

    def worker_running(self, job_id: str, timeout: float = 20.0) -> Process:
        """The worker process whose claim the job is running under."""
        client = connect(self.env["IMAGEGATE_REDIS_URL"])
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            fields = client.hgetall(f"ig:job:{job_id}")
            if fields.get("status") == "running" and fields.get("worker"):
                name = fields["worker"].split("@", 1)[0]
                return self.workers[name]
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} did not start running: {fields}")

    def jobs(self) -> JobStore:
        return JobStore(connect(self.env["IMAGEGATE_REDIS_URL"]))

    def accounts(self) -> Accounts:
        return Accounts(
            connect(self.env["IMAGEGATE_REDIS_URL"]), Settings.from_env(self.env).load_catalog()
        )

    def latency(self, seconds: float) -> None:
        requests.post(f"{self.sim}/_sim/config", json={"latency": seconds}, timeout=5)

    def submit(self, key: str, prompt: str = "x", **headers: str) -> str:
        r = requests.post(
            f"{self.url}/v1/images/generations",
            json={"model": MODEL, "prompt": prompt, "size": "256x256"},
            headers={"Authorization": f"Bearer {key}", "Prefer": "respond-async", **headers},
            timeout=30,
        )
        assert r.status_code == 202, r.text
        return r.json()["id"]

    def wait_terminal(self, key: str, job_id: str, timeout: float = 60.0) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            r = requests.get(
                f"{self.url}/v1/images/generations/{job_id}",
                headers={"Authorization": f"Bearer {key}"},
                timeout=10,
            )
            if r.status_code == 200 and r.json()["status"] not in ("queued", "running"):
                return r.json()
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} not finished after {timeout}s")

    def charged_once(self, key_id: str, job_id: str) -> list[str]:
        """The job's ledger entries (kinds); asserts one reserve and one settle."""
        kinds = [e["kind"] for e in self.accounts().ledger(key_id, 1000) if e.get("job") == job_id]
        assert kinds.count("reserve") == 1 and kinds.count("settle") == 1, kinds
        return kinds


@pytest.fixture(scope="module")
def stack(run_dir: Path, stack_env: dict[str, str], start_gateway) -> Iterator[Stack]:
    redis = RedisServer(run_dir, appendonly=True).start()
    sim_proc, sim = start_simulator(run_dir, "openai", name="resilience-simulator-openai")
    env = {
        **stack_env,
        "IMAGEGATE_REDIS_URL": redis.url,
        "IMAGEGATE_BASE_URL_OPENAI": f"{sim}/v1",
        "IMAGEGATE_UPSTREAM_MAX_RETRIES": "5",
    }
    s = Stack(run_dir, env, redis, sim)
    s.start_worker("resil-openai-a")
    s.start_worker("resil-openai-b")
    s.start_worker("resil-local", "local")
    s.url = start_gateway("web-resil", **env)
    yield s
    for proc in s.workers.values():
        proc.stop()
    sim_proc.stop()
    redis.stop()


@pytest.fixture()
def key(stack: Stack) -> dict[str, str]:
    stack.latency(0)
    return create_key(stack.env, "resilience", tier="test-billing", balance="1.00")


def _replace(stack: Stack, dead: Process) -> None:
    name = dead.name
    dead.proc.wait(30)
    stack.start_worker(name)


def test_a_job_whose_worker_is_killed_is_taken_over_and_charged_once(stack: Stack, key) -> None:
    stack.latency(3)
    job_id = stack.submit(key["key"])
    victim = stack.worker_running(job_id)
    victim.signal(signal.SIGKILL)
    killed_at = time.time()
    try:
        done = stack.wait_terminal(key["key"], job_id)
        assert done["status"] == "succeeded", done
        assert requests.get(done["result"]["data"][0]["url"], timeout=10).ok
        fields = connect(stack.env["IMAGEGATE_REDIS_URL"]).hgetall(f"ig:job:{job_id}")
        assert fields["takeovers"] == "1"
        assert fields["worker"].split("@")[0] != victim.name
        print(f"taken over and restarted {float(fields['started']) - killed_at:.1f}s after kill")
        assert stack.charged_once(key["id"], job_id) == ["reserve", "settle"]
        assert stack.accounts().balance(key["id"]) == 1_000_000 - PRICE
    finally:
        _replace(stack, victim)


def test_sigterm_lets_a_running_job_finish(stack: Stack, key) -> None:
    stack.latency(2)
    job_id = stack.submit(key["key"])
    worker = stack.worker_running(job_id)
    worker.signal(signal.SIGTERM)  # Celery's warm shutdown: finish what runs, take nothing new
    try:
        assert worker.proc.wait(30) == 0
        done = stack.wait_terminal(key["key"], job_id)
        assert done["status"] == "succeeded"
        assert stack.jobs().get(job_id).attempt == 1  # the same run finished it
        stack.charged_once(key["id"], job_id)
    finally:
        _replace(stack, worker)


def test_a_job_admitted_but_never_sent_is_sent_by_the_reaper(stack: Stack, key) -> None:
    """A web process that dies between admission and enqueueing loses nothing."""
    client = connect(stack.env["IMAGEGATE_REDIS_URL"])
    catalog = Settings.from_env(stack.env).load_catalog()
    jobs = JobStore(client, liveness=Liveness(enqueue_grace=1.0))
    api_key = KeyStore(client).get(key["id"])
    accounts = Accounts(client, catalog)
    job = admit_job(
        accounts, jobs, catalog, api_key, MODEL, budget=60, prompt="orphan", size="256x256"
    )
    # ...and no task is ever sent.
    done = stack.wait_terminal(key["key"], job.id)
    assert done["status"] == "succeeded"
    stack.charged_once(key["id"], job.id)


def test_jobs_outlive_a_killed_web_front_end(stack: Stack, key, start_gateway) -> None:
    doomed_url = start_gateway("web-resil-doomed", **stack.env, IMAGEGATE_WEB_PROCESSES="1")
    stack.latency(2)
    idem = {"Idempotency-Key": "web-death-1"}
    body = {"model": MODEL, "prompt": "outlive", "size": "256x256"}
    failed: dict = {}

    def call() -> None:
        try:
            requests.post(
                f"{doomed_url}/v1/images/generations",
                json=body,
                headers={"Authorization": f"Bearer {key['key']}", **idem},
                timeout=30,
            )
        except requests.RequestException as exc:
            failed["error"] = exc

    caller = threading.Thread(target=call)
    caller.start()
    client = connect(stack.env["IMAGEGATE_REDIS_URL"])
    end = time.monotonic() + 20
    reserved: list[str] = []
    while not reserved and time.monotonic() < end:
        reserved = [e["job"] for e in stack.accounts().ledger(key["id"]) if e["kind"] == "reserve"]
        time.sleep(0.05)
    assert reserved, "the request was never admitted"
    job_id = reserved[0]
    # Kill gunicorn (master and worker) while the request waits.
    port = doomed_url.rsplit(":", 1)[1]
    doomed = next(p for p in _gateways(start_gateway) if p.name.endswith(port))
    doomed.signal(signal.SIGKILL)
    caller.join(30)
    assert "error" in failed  # the client lost its connection
    # The job finishes anyway; the client finds it by id, or by retrying with its key.
    done = stack.wait_terminal(key["key"], job_id)
    assert done["status"] == "succeeded"
    again = requests.post(
        f"{stack.url}/v1/images/generations",
        json=body,  # the same bytes as the first try
        headers={"Authorization": f"Bearer {key['key']}", **idem},
        timeout=30,
    )
    assert again.status_code == 200 and again.headers["x-job-id"] == job_id
    assert again.json()["data"][0]["url"]
    stack.charged_once(key["id"], job_id)
    assert client.hget(f"ig:job:{job_id}", "status") == JobStatus.SUCCEEDED


def _gateways(start_gateway) -> list[Process]:
    """The gunicorn processes the start_gateway fixture started (its closure's list)."""
    cells = [c.cell_contents for c in start_gateway.__closure__ or ()]
    return next(c for c in cells if isinstance(c, list))


def test_a_redis_restart_loses_no_job_and_workers_consume_again(stack: Stack, key) -> None:
    stack.latency(3)
    before = [stack.submit(key["key"], prompt=f"before restart {i}") for i in range(4)]
    stack.worker_running(before[0])
    openai_workers = [p for n, p in stack.workers.items() if n.startswith("resil-openai")]
    connected = {p.name: p.log().count("Connected to") for p in openai_workers}
    stack.redis.stop()  # SIGTERM: Redis writes its AOF and exits
    try:
        # During the outage: a clear 503 with Retry-After, quickly, never a hang or a trace.
        r = requests.post(
            f"{stack.url}/v1/images/generations",
            json={"model": MODEL, "prompt": "during", "size": "256x256"},
            headers={"Authorization": f"Bearer {key['key']}"},
            timeout=30,
        )
        assert r.status_code == 503, r.text
        assert r.headers["Retry-After"] and r.json()["error"]["type"] == "service_unavailable"
        r = requests.get(
            f"{stack.url}/v1/images/generations/{before[0]}",
            headers={"Authorization": f"Bearer {key['key']}"},
            timeout=30,
        )
        assert r.status_code == 503 and "Traceback" not in r.text
        time.sleep(2)
    finally:
        stack.redis.start()  # same port, same AOF directory
    for job_id in before:
        done = stack.wait_terminal(key["key"], job_id, timeout=90)
        assert done["status"] == "succeeded", done
        stack.charged_once(key["id"], job_id)
    # Every worker reconnects by itself (Celery backs off up to several seconds)...
    for proc in openai_workers:
        proc.wait_until(lambda p=proc: p.log().count("Connected to") > connected[p.name], 60)
    # ...and consumes again after the reconnect (the known Celery failure is a
    # worker that stays connected but never receives another message): keep more jobs
    # in flight than one worker takes, and require each openai worker to run some.
    stack.latency(1)
    after = [stack.submit(key["key"], prompt=f"after restart {i}") for i in range(8)]
    for job_id in after:
        assert stack.wait_terminal(key["key"], job_id, timeout=90)["status"] == "succeeded"
    ran_by = {_worker_of(stack, j) for j in after}
    assert {"resil-openai-a", "resil-openai-b"} <= ran_by, ran_by
    balance = stack.accounts().balance(key["id"])
    assert balance == 1_000_000 - PRICE * (len(before) + len(after))


def _worker_of(stack: Stack, job_id: str) -> str:
    worker = connect(stack.env["IMAGEGATE_REDIS_URL"]).hget(f"ig:job:{job_id}", "worker")
    return (worker or "").split("@", 1)[0]
