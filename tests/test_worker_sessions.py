"""HTTP sessions are lent per job and kept for the next one, whatever the pool.

Celery's gevent pool runs each task in a new greenlet: sessions kept per
thread (greenlet-local under gevent) were new for every job, so every upstream
call opened a new connection. Lent per job, a session (and its keep-alive
connections) serves the jobs that follow, and two jobs running at once never
share one. Inside a job, each thread of a fan-out (n images as n upstream
calls) calls through sessions of its own.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import requests

from shared.catalog import load_catalog
from shared.jobs import Job
from shared.netguard import NetPolicy, policy_with_hosts_of, safe_session
from shared.settings import Settings
from tests.conftest import SIM_KEY
from tests.support.processes import REPO
from workers.adapters import ADAPTERS
from workers.adapters.base import CallContext
from workers.context import WorkerContext, job_sessions, result_session
from workers.http import UpstreamHTTP
from workers.pipeline import build_request


class _Ctx:
    """The two session methods of WorkerContext, without Redis."""

    settings = Settings.from_env({})
    session = WorkerContext.session
    client_session = WorkerContext.client_session


def test_a_job_after_another_borrows_the_same_sessions() -> None:
    ctx = _Ctx()
    with job_sessions():
        first = (ctx.session(), ctx.client_session(), result_session(NetPolicy()))
        assert ctx.session() is first[0]  # the same within the job
    with job_sessions():
        again = (ctx.session(), ctx.client_session(), result_session(NetPolicy()))
    assert all(a is b for a, b in zip(first, again, strict=True))


def test_jobs_running_at_once_never_share_a_session() -> None:
    ctx = _Ctx()
    inside = threading.Barrier(8)
    seen: list[object] = []

    def job() -> None:
        with job_sessions():
            session = ctx.session()
            inside.wait(10)  # all eight hold their sessions at the same time
            seen.append(session)

    threads = [threading.Thread(target=job) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(seen) == 8 and len({id(s) for s in seen}) == 8


GEVENT_JOBS = """
from gevent import monkey

monkey.patch_all()
import gevent

from shared.settings import Settings
from workers.context import WorkerContext, job_sessions


class Ctx:
    settings = Settings.from_env({})
    session = WorkerContext.session


seen = []


def job():
    with job_sessions():
        seen.append(id(Ctx().session()))


for _ in range(3):  # one job after another, each in a new greenlet, as the gevent pool runs them
    gevent.spawn(job).join()
print(len(seen), len(set(seen)))
"""


def test_under_gevent_each_new_greenlet_reuses_the_last_jobs_sessions() -> None:
    """Monkey-patched, as ``celery worker --pool gevent`` runs (threading.local is then
    greenlet-local, which made every job's sessions new)."""
    out = subprocess.run(
        [sys.executable, "-c", GEVENT_JOBS],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert out == ["3", "1"]


# -- fan-out threads --------------------------------------------------------------------

CATALOG = load_catalog()


@pytest.fixture()
def session_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[object, set[int]]]:
    """Every requests session that makes a call, and the threads it made them on."""
    seen: dict[object, set[int]] = {}
    lock = threading.Lock()
    real = requests.Session.request

    def request(self: requests.Session, *args: object, **kwargs: object) -> requests.Response:
        with lock:  # the session itself is kept as the key, so its id is never reused
            seen.setdefault(self, set()).add(threading.get_ident())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(requests.Session, "request", request)
    yield seen


# family -> a catalog model of it that makes one image per upstream call (fanned out)
FANNED_OUT = {
    "bfl": "black-forest-labs/flux-2-pro",
    "replicate": "imagen-3",
    "stability": "stability/stable-image-core",
    "zhipu": "zhipu/glm-image",
}


@pytest.mark.parametrize("family", sorted(FANNED_OUT))
def test_each_fan_out_thread_calls_through_sessions_of_its_own(
    family: str, simulators: dict[str, str], session_threads: dict[object, set[int]]
) -> None:
    sim = simulators[family]
    requests.post(f"{sim}/_sim/reset", timeout=5).raise_for_status()
    model = CATALOG.model(FANNED_OUT[family])
    fam = CATALOG.family_of(model)
    base = sim + urlsplit(fam.base_url).path.rstrip("/")
    now = time.time()
    job = Job(
        id="imgjob_sessions",
        key_id="k",
        model=model.id,
        family=fam.name,
        queue=fam.queue,
        request={"prompt": "a red fox in snow", "n": 3},
        created=now,
        deadline=now + 30,
    )
    http = UpstreamHTTP(
        session=requests.Session(),
        fetch_session=safe_session(policy_with_hosts_of(NetPolicy(), base)),
        deadline=now + 30,
        provider=fam.name,
        max_retries=0,
    )
    adapter = ADAPTERS[fam.adapter]
    if family == "bfl":
        adapter = type(adapter)(first_poll_delay=0.02, max_poll_interval=0.1)
    ctx = CallContext(fam, base, SIM_KEY, http, now + 30)
    result = adapter.generate(build_request(job, model), ctx)

    assert len(result.images) == 3
    threads = set().union(*session_threads.values()) - {threading.get_ident()}
    assert len(threads) == 3  # the three images ran on three threads (besides the test's)
    shared = [s for s, t in session_threads.items() if len(t) > 1]
    assert not shared, f"sessions used by more than one thread: {shared}"
    assert http.session not in session_threads and http.fetch_session not in session_threads
