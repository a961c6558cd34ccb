"""Heartbeats, takeover and the reaper's decisions, against a real redis-server.

Times are passed explicitly (``now=``), so nothing here sleeps, except the
test of the reaper thread's pause, which needs a real Redis outage.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.billing import LEDGER, Accounts
from shared.catalog import load_catalog
from shared.jobs import WATCH, JobStatus, JobStore, Liveness, StoredImage
from shared.keys import KeyStore
from shared.redis_client import connect
from tests.support.jobs import admit_job, make_job
from tests.support.processes import RedisServer
from workers import liveness as threads
from workers.liveness import Running, reap_once

LIVE = Liveness(stale_after=10.0, enqueue_grace=5.0, resend_after=30.0, late=2.0, max_sends=2)
IMG = StoredImage(key="k/0.png", width=8, height=8, content_type="image/png")


def _url(redis_server) -> str:
    """A database of the test Redis that no running worker's reaper looks at."""
    return redis_server.url.rsplit("/", 1)[0] + "/7"


@pytest.fixture()
def store(redis_server) -> JobStore:
    return JobStore(connect(_url(redis_server)), retention_seconds=600, liveness=LIVE)


def watch_time(store: JobStore, job_id: str) -> float | None:
    return store._redis.zscore(WATCH, job_id)


def test_a_new_job_is_watched_until_its_enqueue_grace(store: JobStore) -> None:
    job = make_job(store)
    assert watch_time(store, job.id) == pytest.approx(job.created + LIVE.enqueue_grace)
    assert job.id not in store.due(now=job.created + 1)
    assert job.id in store.due(now=job.created + LIVE.enqueue_grace + 0.1)


def test_an_unsent_job_is_sent_by_the_reaper(store: JobStore) -> None:
    job = make_job(store)
    assert store.reap(job.id, now=job.created + 1) == "fresh"
    t = job.created + LIVE.enqueue_grace + 0.1
    assert store.reap(job.id, now=t) == "requeue"
    # The action moved its watch time, so a second reaper at the same moment does nothing.
    assert store.reap(job.id, now=t) == "fresh"


def test_a_sent_job_is_sent_once_more_then_waits_for_its_deadline(store: JobStore) -> None:
    job = make_job(store, budget=300)
    assert store.mark_sent(job.id, now=job.created)
    assert watch_time(store, job.id) == pytest.approx(job.created + LIVE.resend_after)
    t = job.created + LIVE.resend_after + 0.1
    assert store.reap(job.id, now=t) == "requeue"  # the first message may have been lost
    store.mark_sent(job.id, now=t)
    assert watch_time(store, job.id) == pytest.approx(job.deadline)
    assert store.reap(job.id, now=job.deadline - 1) == "fresh"


def test_a_sent_job_past_its_deadline_is_timed_out_and_refunded(store: JobStore) -> None:
    job = make_job(store, budget=20)
    store.mark_sent(job.id, now=job.created)
    store.mark_sent(job.id, now=job.created)  # second send: now it waits for the deadline
    assert store.reap(job.id, now=job.deadline + 0.1) == "expired"
    done = store.get(job.id)
    assert done.status == JobStatus.TIMED_OUT and done.error["status"] == 504
    assert watch_time(store, job.id) is None


def test_heartbeats_keep_a_running_job_from_being_taken_over(store: JobStore) -> None:
    job = make_job(store, budget=300)
    claim = store.claim(job.id, worker="a", now=job.created)
    assert watch_time(store, job.id) == pytest.approx(job.created + LIVE.stale_after)
    t = job.created + LIVE.stale_after - 1
    assert store.beat({job.id: claim.attempt}, now=t) == 1
    assert store.reap(job.id, now=job.created + LIVE.stale_after + 1) == "fresh"
    # A duplicate message for it is skipped, not run.
    assert store.claim(job.id, worker="b", now=t + 1).outcome == "busy"


def test_a_job_whose_worker_stopped_beating_is_taken_over_and_fenced(store: JobStore) -> None:
    job = make_job(store, budget=300)
    lost = store.claim(job.id, worker="dead", now=job.created)
    t = job.created + LIVE.stale_after + 0.1
    assert store.reap(job.id, now=t) == "takeover"
    assert store.get(job.id).status == JobStatus.QUEUED
    # The lost run can neither beat nor write any more, even before the new run claims.
    assert store.beat({job.id: lost.attempt}, now=t) == 0
    assert store.succeed(job.id, lost.attempt, [IMG]) is False
    new = store.claim(job.id, worker="alive", now=t + 0.5)
    assert new.should_run and new.attempt == lost.attempt + 2
    assert store.succeed(job.id, new.attempt, [IMG]) is True
    assert store._redis.hget(store.record_key(job.id), "takeovers") == "1"


def test_a_run_that_lost_its_job_cannot_hand_it_to_the_next_candidate(store: JobStore) -> None:
    """Virtual models: only the attempt holding the fence moves the job to its next route."""
    job = make_job(store, budget=300)
    lost = store.claim(job.id, worker="dead", now=job.created)
    t = job.created + LIVE.stale_after + 0.1
    assert store.reap(job.id, now=t) == "takeover"
    owner = store.claim(job.id, worker="alive", now=t + 0.5)
    assert owner.should_run and owner.attempt > lost.attempt
    before = store._redis.hgetall(store.record_key(job.id))
    watched = watch_time(store, job.id)

    assert store.handoff(job.id, lost.attempt, 1, {"model": "a", "code": "x"}) is False
    assert store._redis.hgetall(store.record_key(job.id)) == before
    assert watch_time(store, job.id) == watched
    still = store.get(job.id)
    assert (still.status, still.candidate, still.fallbacks) == (JobStatus.RUNNING, 0, ())

    assert store.handoff(job.id, owner.attempt, 1, {"model": "a", "code": "x"}) is True
    moved = store.get(job.id)
    assert (moved.status, moved.candidate) == (JobStatus.QUEUED, 1)
    assert moved.fallbacks == ({"model": "a", "code": "x"},)


def test_a_running_job_is_capped_just_past_its_deadline(store: JobStore) -> None:
    job = make_job(store, budget=5)
    claim = store.claim(job.id, worker="a", now=job.created)
    store.beat({job.id: claim.attempt}, now=job.created + 4)
    assert watch_time(store, job.id) == pytest.approx(job.deadline + LIVE.late)
    assert store.reap(job.id, now=job.deadline + LIVE.late + 0.1) == "expired"
    assert store.get(job.id).status == JobStatus.TIMED_OUT


def test_terminal_jobs_leave_the_watch_list(store: JobStore) -> None:
    ok = make_job(store)
    claim = store.claim(ok.id)
    store.succeed(ok.id, claim.attempt, [IMG])
    canceled = make_job(store)
    store.cancel(canceled.id)
    assert watch_time(store, ok.id) is None and watch_time(store, canceled.id) is None


def test_reap_once_sends_each_due_job_once_to_its_queue(store: JobStore, redis_server) -> None:
    catalog = load_catalog()
    unsent = make_job(store)
    running = make_job(store)
    store.claim(running.id, worker="dead", now=running.created)
    # Make both due now.
    store._redis.zadd(WATCH, {unsent.id: time.time() - 1, running.id: time.time() - 1})
    sent: list[tuple[str, str]] = []
    counts = reap_once(store, catalog, lambda job_id, queue: sent.append((job_id, queue)))
    assert counts == {"requeue": 1, "takeover": 1}
    assert sorted(sent) == sorted([(unsent.id, "local"), (running.id, "local")])
    assert reap_once(store, catalog, lambda *a: sent.append(a)) == {}
    assert len(sent) == 2


def test_billing_settles_once_when_a_reaper_and_a_worker_race(redis_server) -> None:
    """The overdue reap and a late worker's success: exactly one settles the job."""
    client = connect(_url(redis_server))
    store = JobStore(client, retention_seconds=600, liveness=LIVE)
    catalog = load_catalog()
    accounts = Accounts(client, catalog)
    _, key = KeyStore(client).create("liveness", tier="internal")
    accounts.set_balance(key.id, 10_000_000)
    model = next(m for m in catalog.models.values() if m.price_micros > 0)
    job = admit_job(accounts, store, catalog, key, model.id, budget=1.0, n=2)
    now = job.created
    job_id, key_id = job.id, key.id
    assert watch_time(store, job_id) == pytest.approx(now + LIVE.enqueue_grace)
    claim = store.claim(job_id)
    assert store.reap(job_id, now=job.deadline + LIVE.late + 1) == "expired"
    assert store.succeed(job_id, claim.attempt, [IMG]) is False
    entries = [fields for _, fields in client.xrange(LEDGER.format(key_id))]
    assert [e["kind"] for e in entries] == ["reserve", "settle", "refund"]
    assert sum(int(e["amount"]) for e in entries if e["kind"] != "settle") == 0
    assert accounts.balance(key.id) == 10_000_000


def _wait_for(what: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if what():
            return True
        time.sleep(0.05)
    return False


def test_after_a_redis_outage_the_reaper_leaves_a_live_workers_job_alone(
    tmp_path: Path,
) -> None:
    """Redis is away longer than ``stale_after``; when it is back, the worker running a job
    beats again within a moment. The reaper must give it that moment (``stale_after`` of
    continuous connection) instead of taking the job over at once for its old heartbeat."""
    stale = 2.0
    live = Liveness(stale_after=stale, enqueue_grace=5.0, resend_after=30.0, late=2.0)
    server = RedisServer(tmp_path, appendonly=True).start()  # the job survives the restart
    reaper = worker = None
    try:
        store = JobStore(connect(server.url), retention_seconds=600, liveness=live)
        sent: list[str] = []
        reaper = threads.Liveness(
            store,
            load_catalog(),
            lambda job_id, queue: sent.append(job_id),
            heartbeat_seconds=3600,  # runs nothing: only its reaper matters
            reaper_interval_seconds=0.05,
            running=Running(),
        ).start()

        def reaper_sends_an_unsent_job() -> str:
            unsent = make_job(store)
            store._redis.zadd(WATCH, {unsent.id: time.time() - 1})
            return unsent.id

        # The reaper is past its start-up pause once it acts on a due job.
        first = reaper_sends_an_unsent_job()
        assert _wait_for(lambda: first in sent, timeout=stale + 10)
        job = make_job(store, budget=300)
        run = store.claim(job.id, worker="elsewhere")
        server.stop()
        time.sleep(stale + 0.5)  # the job's heartbeat goes stale while nobody can beat
        server.start()
        assert watch_time(store, job.id) < time.time()  # stale by its heartbeat alone
        # The worker running it (another process) finds Redis again a little later.
        time.sleep(0.5)
        other = Running()
        worker = threads.Liveness(
            store,
            load_catalog(),
            lambda *a: None,
            heartbeat_seconds=0.2,
            reaper_interval_seconds=3600,  # beats only
            running=other,
        ).start()
        with other.track(job.id, run.attempt):
            # Once the reaper acts again (it sends a job due now), it has judged the job too.
            second = reaper_sends_an_unsent_job()
            assert _wait_for(lambda: second in sent, timeout=stale + 10)
            time.sleep(0.3)  # a few more reaper passes
            record = store._redis.hgetall(store.record_key(job.id))
        assert job.id not in sent
        assert (record["status"], record["attempt"]) == ("running", str(run.attempt))
        assert "takeovers" not in record
    finally:
        for thread_set in (reaper, worker):
            if thread_set is not None:
                thread_set.stop()
        server.stop()


def test_running_registry_tracks_only_the_current_attempt() -> None:
    running = Running()
    with running.track("j1", 1):
        with running.track("j2", 4):
            assert running.snapshot() == {"j1": 1, "j2": 4}
        assert running.snapshot() == {"j1": 1}
    assert running.snapshot() == {}
