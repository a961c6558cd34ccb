"""HTTP sessions are lent per job and kept for the next one, whatever the pool.

Celery's gevent pool runs each task in a new greenlet: sessions kept per
thread (greenlet-local under gevent) were new for every job, so every upstream
call opened a new connection. Lent per job, a session (and its keep-alive
connections) serves the jobs that follow, and two jobs running at once never
share one.
"""

from __future__ import annotations

import subprocess
import sys
import threading

from shared.netguard import NetPolicy
from shared.settings import Settings
from tests.support.processes import REPO
from workers.context import WorkerContext, job_sessions, result_session


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
