"""The web role needs no upstream key (issue 21 item 5), end to end.

A web server started without ``OPENAI_API_KEY`` answers an OpenAI-family request
with 503 ``upstream_not_configured`` while no worker serves the family, 200 with
an image once a worker that has the key runs (it announces the family from its
heartbeat thread, see shared/presence.py), and 503 again once that worker has
stopped.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from shared.presence import CACHE_SECONDS
from tests.conftest import SIM_KEY, create_key, procfile_pool, start_simulator
from tests.support.processes import BIN, Process, RedisServer, free_port, http_ok


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    run_dir = tmp_path_factory.mktemp("presence")
    redis_server = RedisServer(run_dir).start()
    sim_proc, sim = start_simulator(run_dir, "openai", name="simulator-openai-presence")
    env = {
        "IMAGEGATE_REDIS_URL": redis_server.url,
        "IMAGEGATE_STORAGE_DIR": str(run_dir / "images"),
        "IMAGEGATE_BASE_URL_OPENAI": f"{sim}/v1",
        "OPENAI_API_KEY": None,  # unset: only the worker gets it
        "IMAGEGATE_JOB_STALE_SECONDS": "5",
        "IMAGEGATE_HEARTBEAT_SECONDS": "0.5",
        "IMAGEGATE_REAPER_INTERVAL_SECONDS": "0.5",
        "run_dir": str(run_dir),
    }
    try:
        yield env
    finally:
        sim_proc.stop()
        redis_server.stop()


def _env(stack: dict[str, str | None], **more: str | None) -> dict[str, str | None]:
    return {**{k: v for k, v in stack.items() if k != "run_dir"}, **more}


@pytest.fixture(scope="module")
def web(stack: dict[str, str]) -> Iterator[str]:
    port = free_port()
    proc = Process(
        f"web-presence-{port}",
        [str(BIN / "gunicorn"), "-c", "api/gunicorn_conf.py", "api.wsgi:app"],
        env=_env(stack, PORT=str(port), IMAGEGATE_HOST="127.0.0.1", IMAGEGATE_WEB_PROCESSES="1"),
        log_dir=Path(stack["run_dir"]),
    ).start()
    url = f"http://127.0.0.1:{port}"
    try:
        proc.wait_until(http_ok(f"{url}/healthz"), timeout=60)
        assert "OPENAI_API_KEY" not in proc.env
        yield url
    finally:
        proc.stop()


def _worker(stack: dict[str, str]) -> Process:
    proc = Process(
        "worker-presence",
        [
            str(BIN / "celery"), "-A", "workers.celery_app", "worker", "-Q", "openai",
            "-n", "presence@%h", "--pool", procfile_pool("openai"), "--concurrency", "2",
            "--without-gossip", "--without-mingle", "-l", "INFO",
        ],
        env=_env(stack, OPENAI_API_KEY=SIM_KEY),
        log_dir=Path(stack["run_dir"]),
    )  # fmt: skip
    before = proc.log().count(" ready.")
    proc.start()
    return proc.wait_until(lambda: proc.log().count(" ready.") > before, timeout=60)


def _generate(web: str, key: str, *, wait: bool = True) -> requests.Response:
    """``wait=False``: ``Prefer: respond-async``, answered at admission (202 or the refusal)."""
    return requests.post(
        f"{web}/v1/images/generations",
        json={"model": "dall-e-2", "prompt": "a lighthouse", "size": "256x256"},
        headers={
            "Authorization": f"Bearer {key}",
            **({} if wait else {"Prefer": "respond-async"}),
        },
        timeout=60,
    )


def _until(
    status: int, web: str, key: str, within: float, *, wait: bool = True
) -> requests.Response:
    end = time.monotonic() + within
    while True:
        response = _generate(web, key, wait=wait)
        if response.status_code == status or time.monotonic() > end:
            return response
        time.sleep(0.2)


def test_the_web_serves_a_family_whose_key_only_a_running_worker_has(
    stack: dict[str, str], web: str
) -> None:
    key = create_key({k: v for k, v in _env(stack).items() if v is not None})["key"]

    refused = _generate(web, key)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "upstream_not_configured"
    assert "OPENAI_API_KEY" in refused.json()["error"]["message"]

    worker = _worker(stack)
    try:
        served = _until(200, web, key, within=CACHE_SECONDS + 10)
        assert served.status_code == 200, served.text
        assert len(served.json()["data"]) == 1
    finally:
        worker.stop()

    # A clean stop withdraws at once; the web notices within its cache time. Asked without
    # waiting: a request the web admits while its cache still says "served" (when the
    # worker stopped faster than that) would wait for its whole budget, for no worker.
    again = _until(503, web, key, within=CACHE_SECONDS + 5, wait=False)
    assert again.status_code == 503, again.text
    assert again.json()["error"]["code"] == "upstream_not_configured"
