"""Result URLs an upstream returns are fetched through the SSRF guard: the
upstream's own host (its configured base URL) is allowed, any other internal
address is refused, and redirects are followed only to where the guard allows.
The pipeline runs in-process against the OpenAI simulator (on loopback, so
nothing but the upstream's own host is allowed: no IMAGEGATE_ALLOWED_INTERNAL_HOSTS)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from shared.errors import UpstreamError
from shared.jobs import Job, JobStatus, new_job_id
from shared.netguard import NetPolicy, safe_session
from shared.settings import Settings
from tests.conftest import SIM_KEY
from tests.support.peers import SlowPeer
from workers.context import WorkerContext, build_context
from workers.http import UpstreamHTTP
from workers.pipeline import run_job


@pytest.fixture()
def ctx(redis_server, sim: str, tmp_path: Path) -> WorkerContext:
    settings = Settings.from_env(
        {
            "IMAGEGATE_REDIS_URL": redis_server.url.rsplit("/", 1)[0] + "/6",
            "IMAGEGATE_STORAGE_DIR": str(tmp_path),
            "IMAGEGATE_BASE_URL_OPENAI": f"{sim}/v1",
            "OPENAI_API_KEY": SIM_KEY,
            "IMAGEGATE_ALLOW_HTTP_CALLBACKS": "1",
            "IMAGEGATE_UPSTREAM_MAX_RETRIES": "0",
            "IMAGEGATE_CATALOG_OVERLAYS": str(Path(__file__).parent / "data" / "test_models.toml"),
        }
    )
    return build_context(settings)


def _run(ctx: WorkerContext) -> Job:
    now = time.time()
    job = ctx.jobs.create(
        Job(
            id=new_job_id(),
            key_id="key_test",
            model="test/area-band",  # a model whose upstream answers with URLs
            family="openai",
            queue="openai",
            request={"prompt": "x", "n": 1, "size": "2048x2048", "response_format": "url"},
            created=now,
            deadline=now + 20,
        )
    )
    run_job(job.id, ctx)
    return ctx.jobs.get(job.id)


def _sim_config(sim: str, **config) -> None:
    requests.post(f"{sim}/_sim/config", json=config, timeout=5).raise_for_status()


def test_results_on_the_upstreams_own_host_are_fetched(ctx: WorkerContext) -> None:
    assert _run(ctx).status == JobStatus.SUCCEEDED


def test_a_result_url_on_another_internal_host_is_refused(ctx: WorkerContext, sim: str) -> None:
    # A compromised upstream names another host of our network (here: "localhost").
    port = urlsplit(sim).port
    _sim_config(sim, result_url_base=f"http://localhost:{port}/")
    job = _run(ctx)
    assert job.status == JobStatus.FAILED
    assert job.error["code"] == "unsafe_url"


@pytest.fixture()
def redirector() -> Iterator[SlowPeer]:
    peer = SlowPeer("redirect").start()
    yield peer
    peer.stop()


def _http(policy: NetPolicy) -> UpstreamHTTP:
    return UpstreamHTTP(
        session=requests.Session(),
        fetch_session=safe_session(policy),
        deadline=time.time() + 10,
        provider="sim",
        max_retries=0,
    )


def test_redirects_are_followed_only_where_the_guard_allows(redirector: SlowPeer, sim: str) -> None:
    answer = requests.post(
        f"{sim}/v1/images/generations",
        json={"model": "dall-e-2", "prompt": "x", "size": "256x256", "response_format": "url"},
        headers={"Authorization": f"Bearer {SIM_KEY}"},
        timeout=10,
    ).json()
    file_url = answer["data"][0]["url"]  # http://127.0.0.1:<sim port>/files/...
    policy = NetPolicy(allow_http=True, allowed_hosts=frozenset({"127.0.0.1"}))
    redirector.location = file_url
    data, _ = _http(policy).download(redirector.url("/result.png"), max_bytes=10**7)
    assert data.startswith(b"\x89PNG")
    redirector.location = file_url.replace("127.0.0.1", "localhost")
    with pytest.raises(UpstreamError) as info:
        _http(policy).download(redirector.url("/result.png"), max_bytes=10**7)
    assert info.value.code == "unsafe_url"
