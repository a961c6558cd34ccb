"""Fixtures that start the real stack: redis-server, the upstream simulator,
Celery worker processes (one per provider family) and gunicorn, and a key
made with the admin CLI. Everything runs on free ports of this machine and
is stopped at the end; nothing touches data the tests did not create.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from openai import OpenAI

from shared.catalog import load_catalog
from simulators import PROVIDERS
from tests.support.processes import BIN, Process, RedisServer, free_port, http_ok

SIM_KEY = "sim-upstream-key"

# The real-browser fixtures (`browser`, `tab`): Debian's Chromium driven by Playwright.
pytest_plugins = ["tests.support.browser"]


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def redis_server(run_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(run_dir).start()
    yield server
    server.stop()


def start_simulator(
    run_dir: Path, provider: str, *extra: str, name: str | None = None
) -> tuple[Process, str]:
    """``python -m simulators <provider>`` on a free port; returns the process and its URL.

    Another simulator of the same provider (a test's own, next to the session's) needs
    its own ``name``; even under one name, the URL is read from this start's own line
    of the log, never from a predecessor's that the log file still holds."""
    proc = Process(
        name or f"simulator-{provider}",
        [str(BIN / "python"), "-m", "simulators", provider, "--port", "0", "--api-key", SIM_KEY,
         *extra],
        log_dir=run_dir,
    )  # fmt: skip
    before = len(re.findall(r"SIMULATOR READY (\S+)", proc.log()))
    proc.start()
    found: dict[str, str] = {}

    def ready() -> bool:
        urls = re.findall(r"SIMULATOR READY (\S+)", proc.log())[before:]
        if urls:
            found["url"] = urls[0]
        return bool(urls)

    proc.wait_until(ready)
    return proc, found["url"]


def simulated_providers() -> list[str]:
    """Providers whose simulator module exists (each upstream protocol has one)."""
    return [p for p, module in PROVIDERS.items() if importlib.util.find_spec(module) is not None]


@pytest.fixture(scope="session")
def simulators(run_dir: Path) -> Iterator[dict[str, str]]:
    """Every upstream simulator, by provider name -> base URL."""
    started = {p: start_simulator(run_dir, p) for p in simulated_providers()}
    yield {p: url for p, (_, url) in started.items()}
    for proc, _ in started.values():
        proc.stop()


@pytest.fixture(scope="session")
def simulator(simulators: dict[str, str]) -> str:
    return simulators["openai"]


@pytest.fixture()
def sim(simulator: str) -> Iterator[str]:
    """The simulator, reset to its start-up config with an empty request log."""
    requests.post(f"{simulator}/_sim/reset", timeout=5).raise_for_status()
    yield simulator
    requests.post(f"{simulator}/_sim/reset", timeout=5)


def available_families() -> list[str]:
    catalog = load_catalog()
    return [f.name for f in catalog.families.values() if f.available]


@pytest.fixture(scope="session")
def stack_env(
    run_dir: Path, redis_server: RedisServer, simulators: dict[str, str]
) -> dict[str, str]:
    # Every family with a simulator points at it, with the same key, keeping the path
    # of the catalog's base URL (e.g. https://api.openai.com/v1 -> <simulator>/v1).
    upstreams: dict[str, str] = {}
    for family in load_catalog().families.values():
        if family.name in simulators:
            path = urlsplit(family.base_url).path.rstrip("/")
            upstreams[f"IMAGEGATE_BASE_URL_{family.name.upper()}"] = simulators[family.name] + path
            if family.key_env:
                upstreams[family.key_env] = SIM_KEY
    return {
        "IMAGEGATE_REDIS_URL": redis_server.url,
        "IMAGEGATE_STORAGE_DIR": str(run_dir / "images"),
        "IMAGEGATE_DATABASE_URL": f"sqlite:///{run_dir}/records.sqlite3",
        # This session's processes only (the default is one directory per user and host).
        "IMAGEGATE_METRICS_DIR": str(run_dir / "metrics"),
        **upstreams,
        "IMAGEGATE_UPSTREAM_MAX_RETRIES": "2",
        "IMAGEGATE_CATALOG_OVERLAYS": str(Path(__file__).parent / "data" / "test_models.toml"),
        "IMAGEGATE_LOG_LEVEL": "INFO",
        # tests/data/test_models.toml's config-only OpenAI-compatible family.
        "IMAGEGATE_BASE_URL_COMPAT": f"{simulators['openai']}/v1",
        "COMPAT_API_KEY": SIM_KEY,
        "IMAGEGATE_BASE_URL_CAPPED": f"{simulators['openai']}/v1",
        "CAPPED_API_KEY": SIM_KEY,
        # Short breaker settings so the routing tests can watch one open and recover.
        "IMAGEGATE_BREAKER_FAILURES": "3",
        "IMAGEGATE_BREAKER_COOLDOWN_SECONDS": "3",
        # Webhook receivers of the tests listen on loopback over plain http.
        "IMAGEGATE_ALLOW_HTTP_CALLBACKS": "1",
        "IMAGEGATE_ALLOWED_INTERNAL_HOSTS": "127.0.0.1",
        "IMAGEGATE_WEBHOOK_RETRY_SCHEDULE": "0.5,0.5,0.5",
        "IMAGEGATE_WEBHOOK_TIMEOUT_SECONDS": "1",
        # At most 2 of one key's deliveries in flight: the webhooks worker runs 4 threads.
        "IMAGEGATE_WEBHOOK_CONCURRENCY_PER_KEY": "2",
        # Liveness on a test scale: a killed worker's job is taken over within seconds.
        "IMAGEGATE_JOB_STALE_SECONDS": "5",
        "IMAGEGATE_HEARTBEAT_SECONDS": "0.5",
        "IMAGEGATE_REAPER_INTERVAL_SECONDS": "0.5",
        "IMAGEGATE_ENQUEUE_GRACE_SECONDS": "3",
        # The fuzzers send many wrong admin keys from 127.0.0.1; test_admin_e2e.py starts a
        # gateway of its own with a limit.
        "IMAGEGATE_ADMIN_AUTH_FAILURES_PER_MINUTE": "0",
    }


def procfile_pool(queue: str) -> str:
    """The Celery pool the Procfile ships for ``queue``'s worker line (threads if none)."""
    procfile = (Path(__file__).parents[1] / "Procfile").read_text()
    for line in procfile.splitlines():
        if f" -Q {queue} " in line and "--pool " in line:
            return line.split("--pool ", 1)[1].split()[0]
    return "threads"


def start_worker(
    run_dir: Path, env: dict[str, str], queue: str, name: str | None = None
) -> Process:
    """A Celery worker on ``queue`` with the pool the Procfile ships for it (gevent for
    upstream families), 4 jobs at once so that tests see queueing when they want to."""
    name = name or f"worker-{queue}"
    proc = Process(
        name,
        [
            str(BIN / "celery"), "-A", "workers.celery_app", "worker",
            "-Q", queue, "-n", f"{name}@%h", "--pool", procfile_pool(queue), "--concurrency", "4",
            "--without-gossip", "--without-mingle", "-l", "INFO",
        ],
        env=env,
        log_dir=run_dir,
    )  # fmt: skip
    before = proc.log().count(" ready.")  # a replacement appends to its predecessor's log
    proc.start()
    return proc.wait_until(lambda: proc.log().count(" ready.") > before, timeout=60)


@pytest.fixture(scope="session")
def workers(run_dir: Path, stack_env: dict[str, str]) -> Iterator[list[Process]]:
    queues = [*available_families(), "webhooks"]
    procs = [start_worker(run_dir, stack_env, q) for q in queues]
    yield procs
    for proc in procs:
        proc.stop()


@pytest.fixture(scope="session")
def start_gateway(run_dir: Path, stack_env: dict[str, str]) -> Iterator[Callable[..., str]]:
    """Start a gunicorn front-end with extra settings; returns its base URL."""
    started: list[Process] = []

    def start(name: str = "web", **overrides: str) -> str:
        port = free_port()
        env = {**stack_env, "PORT": str(port), "IMAGEGATE_HOST": "127.0.0.1",
               "IMAGEGATE_WEB_PROCESSES": "2"}  # fmt: skip
        env.update(overrides)
        proc = Process(
            f"{name}-{port}",
            [str(BIN / "gunicorn"), "-c", "api/gunicorn_conf.py", "api.wsgi:app"],
            env=env,
            log_dir=run_dir,
        ).start()
        started.append(proc)
        url = f"http://127.0.0.1:{port}"
        proc.wait_until(http_ok(f"{url}/healthz"), timeout=60)
        return url

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture(scope="session")
def gateway(start_gateway: Callable[..., str], workers: list[Process]) -> str:
    return start_gateway()


@pytest.fixture(scope="session")
def moto_endpoint(run_dir: Path) -> Iterator[str]:
    """An S3-compatible server (moto's server mode) on a free port."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = Process(
        "moto", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], log_dir=run_dir
    ).start()
    proc.wait_until(lambda: requests.get(f"{endpoint}/moto-api/", timeout=1).ok)
    yield endpoint
    proc.stop()


def cli(env: dict[str, str], *args: str) -> str:
    """Run the ``imagegate`` admin command against the stack's settings; its stdout."""
    return subprocess.run(
        [str(BIN / "imagegate"), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()


def create_key(
    env: dict[str, str], name: str = "tests", *, tier: str = "internal", balance: str = "unlimited"
) -> dict[str, str]:
    out = cli(env, "keys", "create", "--name", name, "--json", "--tier", tier, "--balance", balance)
    return json.loads(out)


@pytest.fixture(scope="session")
def api_key(stack_env: dict[str, str]) -> str:
    return create_key(stack_env)["key"]


@pytest.fixture()
def client(gateway: str, api_key: str) -> OpenAI:
    return OpenAI(api_key=api_key, base_url=f"{gateway}/v1", max_retries=0, timeout=60)
