"""Result URLs an upstream returns are fetched through the SSRF guard: the
upstream's own host (its configured base URL) is allowed, any other internal
address is refused, and redirects are followed only to where the guard allows.
The pipeline runs in-process against the OpenAI simulator (on loopback, so
nothing but the upstream's own host is allowed: no IMAGEGATE_ALLOWED_INTERNAL_HOSTS).

Polling URLs an upstream hands out (BFL's ``polling_url``, Replicate's
``urls.get``, fal's ``status_url``/``response_url``) follow the same policy:
they are the upstream's answer, not our configuration."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from shared.catalog import load_catalog
from shared.errors import UpstreamError
from shared.jobs import Job, JobStatus, new_job_id
from shared.netguard import NetPolicy, policy_with_hosts_of, safe_session
from shared.settings import Settings
from tests.conftest import SIM_KEY
from tests.support.peers import SlowPeer
from workers.adapters import ADAPTERS
from workers.adapters.base import CallContext
from workers.adapters.bfl import BflAdapter, Task, submit
from workers.context import WorkerContext, build_context
from workers.http import UpstreamHTTP
from workers.pipeline import build_request, run_job


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


# -- polling URLs -------------------------------------------------------------------------

CATALOG = load_catalog()


def _guarded_http(provider: str, policy: NetPolicy) -> UpstreamHTTP:
    return UpstreamHTTP(
        session=requests.Session(),
        fetch_session=safe_session(policy),
        deadline=time.time() + 20,
        provider=provider,
        max_retries=0,
    )


def _upstream(simulators: dict[str, str], family: str) -> str:
    sim = simulators[family]
    requests.post(f"{sim}/_sim/reset", timeout=5).raise_for_status()
    return sim


def test_a_bfl_polling_url_on_another_internal_host_is_refused(
    simulators: dict[str, str],
) -> None:
    base = _upstream(simulators, "bfl")
    # The pipeline's policy: the deployment's, plus the upstream's own host.
    http = _guarded_http("bfl", policy_with_hosts_of(NetPolicy(), base))
    adapter = BflAdapter(first_poll_delay=0.02, max_poll_interval=0.1)
    body = {"prompt": "a red fox", "width": 512, "height": 512}
    task = submit(http, f"{base}/v1/flux-2-pro", body, SIM_KEY, base)
    assert urlsplit(task.polling_url).hostname == "127.0.0.1"
    assert adapter.await_sample(http, task, SIM_KEY, base).startswith("http")  # its own host

    # A compromised upstream names another host of our network (here: "localhost").
    port = urlsplit(base).port
    elsewhere = task.polling_url.replace(f"127.0.0.1:{port}", f"localhost:{port}")
    with pytest.raises(UpstreamError) as info:
        adapter.await_sample(http, Task(task.id, elsewhere), SIM_KEY, base)
    assert info.value.code == "unsafe_url"


# family -> (a model, simulator config that makes it answer only after polls)
POLLED = {
    "replicate": ("imagen-3", {"poll_steps": 2}),
    "fal": ("zhipu/z-image-turbo", {"poll_steps": 2}),
}


@pytest.mark.parametrize("family", sorted(POLLED))
def test_polls_go_through_the_guard(family: str, simulators: dict[str, str]) -> None:
    sim = _upstream(simulators, family)
    model_id, config = POLLED[family]
    _sim_config(sim, **config)
    model = CATALOG.model(model_id)
    fam = CATALOG.family_of(model)
    base = sim + urlsplit(fam.base_url).path.rstrip("/")
    now = time.time()
    job = Job(
        id=new_job_id(),
        key_id="k",
        model=model.id,
        family=fam.name,
        queue=fam.queue,
        request={"prompt": "a red fox", "n": 1},
        created=now,
        deadline=now + 20,
    )

    def generate(policy: NetPolicy):
        http = _guarded_http(fam.name, policy)
        ctx = CallContext(fam, base, SIM_KEY, http, http.deadline)
        return ADAPTERS[fam.adapter].generate(build_request(job, model), ctx)

    # The upstream's own host is allowed, as for its result files ...
    assert len(generate(policy_with_hosts_of(NetPolicy(), base)).images) == 1
    # ... and a policy that does not allow it refuses the polls, so they are guarded.
    with pytest.raises(UpstreamError) as info:
        generate(NetPolicy(allow_http=True))
    assert info.value.code == "unsafe_url"
