"""Worker pools sized for waiting: the plan from the catalog, and the Procfile as shipped.

A generation job spends its life waiting on the upstream, so the pool of a
family's worker process must hold as many jobs as the upstream allows, not a
few per core (the Procfile once shipped 8 threads: the 9th client waited a
whole upstream round). The plan is checked as a function; the Procfile's own
``worker_openai`` line, started exactly as shipped, is checked to run many
slow jobs at once.
"""

from __future__ import annotations

import shlex
import threading
from pathlib import Path

import pytest
import requests
from openai import OpenAI

from shared.catalog import load_catalog
from shared.jobs import JobStore
from shared.redis_client import connect
from shared.settings import Settings
from tests.conftest import SIM_KEY, create_key, start_simulator
from tests.support.processes import BIN, REPO, Process, RedisServer, free_port, http_ok
from workers.pool import plan, queues_of, raise_file_limit


def settings_with(**env: str) -> Settings:
    return Settings.from_env(env)


# -- the plan ------------------------------------------------------------------------


def test_a_family_without_an_upstream_cap_gets_the_uncapped_pool() -> None:
    s = settings_with()
    p = plan(s, s.load_catalog(), ["openai"])
    assert p.concurrency == s.worker_uncapped_concurrency == 2000
    assert "no upstream cap" in p.describe()


def test_a_capped_family_gets_max_concurrent_times_its_keys() -> None:
    catalog = load_catalog()
    cap = catalog.families["bfl"].max_concurrent
    assert cap > 0
    one = settings_with(BFL_API_KEY="k1")
    three = settings_with(BFL_API_KEY="k1, k2,k3")
    assert plan(one, catalog, ["bfl"]).concurrency == cap
    assert plan(three, catalog, ["bfl"]).concurrency == 3 * cap
    # No key configured yet: one key's worth, not zero.
    assert plan(settings_with(), catalog, ["bfl"]).concurrency == cap


def test_the_catalog_can_size_a_cpu_bound_family_and_the_webhooks_pool_has_its_setting() -> None:
    s = settings_with(IMAGEGATE_WEBHOOK_CONCURRENCY="5")
    catalog = s.load_catalog()
    assert catalog.families["local"].worker_concurrency > 0
    local = plan(s, catalog, ["local"])
    assert local.concurrency == catalog.families["local"].worker_concurrency
    assert plan(s, catalog, ["webhooks"]).concurrency == 5


def test_several_queues_add_up_once_each() -> None:
    s = settings_with(IMAGEGATE_WORKER_UNCAPPED_CONCURRENCY="300", BFL_API_KEY="a,b")
    catalog = s.load_catalog()
    cap = catalog.families["bfl"].max_concurrent
    p = plan(s, catalog, queues_of("openai,bfl,openai"))
    assert [share.queue for share in p.shares] == ["openai", "bfl"]
    assert p.concurrency == 300 + 2 * cap


def test_an_explicit_concurrency_wins_over_the_plan() -> None:
    s = settings_with(IMAGEGATE_WORKER_CONCURRENCY="12")
    assert plan(s, s.load_catalog(), ["openai"]).concurrency == 12
    s = settings_with()
    assert plan(s, s.load_catalog(), ["openai"], override=7).concurrency == 7


@pytest.mark.parametrize("option,queues", [("a,b", ["a", "b"]), (["a", " b "], ["a", "b"]),
                                           (None, []), ("", [])])  # fmt: skip
def test_queues_option_forms(option: object, queues: list[str]) -> None:
    assert queues_of(option) == queues


def test_the_file_limit_is_raised_within_the_hard_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    got = raise_file_limit(min(soft + 1, hard) if hard != resource.RLIM_INFINITY else soft + 1)
    assert got >= min(soft + 1, hard if hard != resource.RLIM_INFINITY else soft + 1)
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == got


# -- the Procfile as shipped -----------------------------------------------------------


def procfile_line(name: str) -> list[str]:
    """A Procfile process's command as argv, with ``celery``/``gunicorn`` from our venv."""
    for line in (REPO / "Procfile").read_text().splitlines():
        if line.startswith(f"{name}:"):
            argv = shlex.split(line.split(":", 1)[1])
            assert "$" not in " ".join(argv), "the line must not need shell expansion"
            return [str(BIN / argv[0]), *argv[1:]]
    raise AssertionError(f"no {name} line in the Procfile")


def test_the_shipped_openai_worker_runs_many_slow_jobs_at_once(tmp_path: Path) -> None:
    """40 requests on a 3 s upstream all start before any finishes (8 threads would not)."""
    clients = 40
    redis_server = RedisServer(tmp_path).start()
    sim, sim_url = start_simulator(tmp_path, "openai")
    procs: list[Process] = [sim]
    try:
        port = free_port()
        env = {
            "IMAGEGATE_REDIS_URL": redis_server.url,
            "IMAGEGATE_STORAGE_DIR": str(tmp_path / "images"),
            "IMAGEGATE_BASE_URL_OPENAI": f"{sim_url}/v1",
            "OPENAI_API_KEY": SIM_KEY,
            "PORT": str(port),
            "IMAGEGATE_HOST": "127.0.0.1",
            "IMAGEGATE_WEB_PROCESSES": "1",
        }
        worker = Process("pool-worker-openai", procfile_line("worker_openai"), env=env,
                         log_dir=tmp_path).start()  # fmt: skip
        procs.append(worker)
        web = Process("pool-web", procfile_line("web"), env=env, log_dir=tmp_path).start()
        procs.append(web)
        worker.wait_until(lambda: " ready." in worker.log(), timeout=60)
        web.wait_until(http_ok(f"http://127.0.0.1:{port}/healthz"), timeout=60)
        assert "worker pool: 2000" in worker.log()
        key = create_key(env)["key"]
        requests.post(f"{sim_url}/_sim/config", json={"latency": 3.0}, timeout=5).raise_for_status()
        client = OpenAI(api_key=key, base_url=f"http://127.0.0.1:{port}/v1", max_retries=0,
                        timeout=120)  # fmt: skip
        results: list[object] = []

        def one() -> None:
            try:
                results.append(
                    client.images.generate(model="dall-e-2", prompt="a lighthouse", size="256x256")
                )
            except Exception as exc:  # noqa: BLE001 - reported below
                results.append(exc)

        threads = [threading.Thread(target=one) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        errors = [r for r in results if isinstance(r, Exception)]
        assert not errors, errors[:3]
        assert len(results) == clients

        jobs = JobStore(connect(redis_server.url), retention_seconds=3600)
        records = [jobs.get(job_id) for job_id in jobs_in(redis_server.url)]
        assert len(records) == clients
        first_finished = min(j.finished for j in records)
        started_late = [j.id for j in records if j.started > first_finished]
        assert not started_late, f"{len(started_late)} of {clients} jobs waited for a thread"
    finally:
        for proc in reversed(procs):
            proc.stop()
        redis_server.stop()


def jobs_in(redis_url: str) -> list[str]:
    """Ids of every job record in that Redis."""
    client = connect(redis_url)
    return [
        key.split(":")[-1]
        for key in client.scan_iter(match="ig:job:*", count=1000)
        if key.count(":") == 2
    ]
