"""Heartbeats, takeover and the reaper's decisions, against a real redis-server.

Times are passed explicitly (``now=``), so nothing here sleeps, except the
test of the reaper thread's pause, which needs a real Redis outage, and the
clock-skew tests at the end, which run real heartbeat and reaper threads on
"hosts" whose ``time.time()`` is 30 s off and use Redis' clock as the others do.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


def _url(redis_server, db: int = 11) -> str:
    """A database of the test Redis that no running worker's reaper looks at, emptied:
    ``reap_once`` and the reaper threads act on every due job in it, so a job another
    test left there would be theirs too."""
    url = redis_server.url.rsplit("/", 1)[0] + f"/{db}"
    connect(url).flushdb()
    return url


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


def test_a_job_sent_max_sends_times_waits_for_its_deadline_even_if_looked_at_early(
    store: JobStore,
) -> None:
    """The reaper's own cap: a queued job already sent ``max_sends`` times in this spell is
    not sent again, whatever brought its watch time forward; it waits for its deadline."""
    job = make_job(store, budget=300)
    for _ in range(LIVE.max_sends):
        assert store.mark_sent(job.id, now=job.created)
    t = job.created + 1
    store._redis.zadd(WATCH, {job.id: t - 0.5})  # looked at early (e.g. a stale entry)
    assert store.reap(job.id, now=t) == "wait"
    assert watch_time(store, job.id) == pytest.approx(job.deadline)


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


def test_a_heartbeat_for_an_attempt_that_lost_the_job_keeps_nothing_alive(
    store: JobStore,
) -> None:
    """A worker still beating for attempt 1 after the job was taken over and claimed again
    (attempt 3) must not push the new run's watch time: only the holder's beat counts."""
    job = make_job(store, budget=300)
    old = store.claim(job.id, worker="a", now=job.created)
    t = job.created + LIVE.stale_after + 1
    assert store.reap(job.id, now=t) == "takeover"
    new = store.claim(job.id, worker="b", now=t)
    assert new.attempt > old.attempt
    watched = watch_time(store, job.id)
    assert store.beat({job.id: old.attempt}, now=t + 1) == 0
    assert watch_time(store, job.id) == pytest.approx(watched)
    assert store.beat({job.id: new.attempt}, now=t + 1) == 1


def test_a_send_is_counted_only_for_a_queued_job(store: JobStore) -> None:
    """``mark_sent`` after the job was claimed (the send raced its own run) changes nothing:
    the running job keeps its heartbeat watch time and its send count."""
    job = make_job(store, budget=300)
    store.claim(job.id, worker="a", now=job.created)
    watched = watch_time(store, job.id)
    assert store.mark_sent(job.id, now=job.created + 1) is False
    assert watch_time(store, job.id) == pytest.approx(watched)
    assert store._redis.hget(store.record_key(job.id), "sends") in (None, "0")


def test_a_job_record_lives_its_budget_plus_the_retention(store: JobStore) -> None:
    job = make_job(store, budget=300)
    assert 600 + 300 - 5 <= store._redis.ttl(store.record_key(job.id)) <= 600 + 300


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


def test_a_job_the_reaper_sends_is_counted_as_sent(store: JobStore) -> None:
    """After its send, the job waits ``resend_after`` for the worker (not the enqueue grace
    again), and the send counts towards ``max_sends``."""
    job = make_job(store, budget=300)
    store._redis.zadd(WATCH, {job.id: time.time() - 1})
    before = store.clock()
    assert reap_once(store, load_catalog(), lambda *a: None) == {"requeue": 1}
    assert store._redis.hget(store.record_key(job.id), "sends") == "1"
    assert watch_time(store, job.id) >= before + LIVE.resend_after


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
    # the balance the test set, then the job
    assert [e["kind"] for e in entries] == ["adjust", "reserve", "settle", "refund"]
    assert sum(int(e["amount"]) for e in entries if e["kind"] in ("reserve", "refund")) == 0
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
        reaper = threads.HeartbeatAndReaper(
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
        worker = threads.HeartbeatAndReaper(
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


def test_an_older_attempt_ending_late_does_not_untrack_the_newer_one() -> None:
    """Attempts 1 and 2 of one job in one process (a takeover landed here), 1 ends last:
    the heartbeat must go on for attempt 2 until 2 itself ends."""
    running = Running()
    first, second = running.track("j", 1), running.track("j", 2)
    first.__enter__()
    second.__enter__()
    assert running.snapshot() == {"j": 2}
    first.__exit__(None, None, None)
    assert running.snapshot() == {"j": 2}
    second.__exit__(None, None, None)
    assert running.snapshot() == {}


# -- one clock: a host whose clock is off cannot cause (or prevent) a takeover ----------------

SKEW = 30.0  # seconds a host's clock is off, as in issue 21 (a worker 20-30 s behind)


class HostClocks:
    """``time.time()`` per simulated host: each thread runs as one host, named by the
    thread's name, whose clock is off by its skew (others read the true time)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._true = time.time
        self.skew: dict[str, float] = {}
        monkeypatch.setattr(time, "time", self.time)

    def time(self) -> float:
        return self._true() + self.skew.get(threading.current_thread().name, 0.0)

    @contextmanager
    def on(self, skew: float) -> Iterator[None]:
        """Run the block (in this thread) as a host whose clock is ``skew`` seconds off."""
        name = threading.current_thread().name
        self.skew[name] = skew
        try:
            yield
        finally:
            del self.skew[name]


def redis_time(store: JobStore) -> float:
    seconds, micros = store._redis.time()
    return seconds + micros / 1_000_000


@pytest.fixture()
def skew_store(redis_server) -> JobStore:
    """A database of its own: the reaper threads below act on every due job in it."""
    client = connect(_url(redis_server, 10))
    return JobStore(client, retention_seconds=600, liveness=LIVE)


@pytest.mark.parametrize("skew", [-SKEW, SKEW], ids=["behind", "ahead"])
def test_a_skewed_hosts_watch_times_are_redis_time(
    skew_store: JobStore, monkeypatch: pytest.MonkeyPatch, skew: float
) -> None:
    """Claim, heartbeat, handoff and send, made on a host whose clock is 30 s off, write
    watch times in Redis' clock: the job is not due early, nor late."""
    store = skew_store
    clocks = HostClocks(monkeypatch)
    job = make_job(store, budget=300)  # admitted by a web host with a true clock

    def watched_in() -> float:
        return watch_time(store, job.id) - redis_time(store)

    with clocks.on(skew):
        claim = store.claim(job.id, worker="skewed")
        assert claim.should_run
        assert watched_in() == pytest.approx(LIVE.stale_after, abs=2)
        assert store.beat({job.id: claim.attempt}) == 1
        assert watched_in() == pytest.approx(LIVE.stale_after, abs=2)
        assert store.handoff(job.id, claim.attempt, 1, {"model": "a", "code": "x"})
        assert watched_in() == pytest.approx(LIVE.enqueue_grace, abs=2)
        assert store.mark_sent(job.id)
        assert watched_in() == pytest.approx(LIVE.resend_after, abs=2)
        # Its own reaper finds nothing to do either.
        assert job.id not in store.due()
        assert store.reap(job.id) == "fresh"


@pytest.mark.parametrize("skew", [-SKEW, SKEW], ids=["behind", "ahead"])
def test_a_skewed_worker_gets_its_jobs_deadline_in_its_own_clock(
    skew_store: JobStore, monkeypatch: pytest.MonkeyPatch, skew: float
) -> None:
    """A worker 30 s ahead does not find a job with 20 s left expired, and one 30 s behind
    does not run it 30 s past its deadline: the claim is judged on Redis' clock and hands
    the worker the deadline in its own clock (what its HTTP calls are bounded by)."""
    store = skew_store
    clocks = HostClocks(monkeypatch)
    job = make_job(store, budget=20)
    with clocks.on(skew):
        claim = store.claim(job.id, worker="skewed")
        assert claim.should_run, claim.outcome
        assert claim.job.deadline - time.time() == pytest.approx(20, abs=2)
        # Nor does the web host's "is it overdue?" on a skewed clock end it early.
        assert store.expire_if_overdue(job.id) is False
    assert store.get(job.id).deadline == pytest.approx(job.deadline, abs=2)


@pytest.mark.parametrize("skew", [-SKEW, SKEW], ids=["behind", "ahead"])
def test_a_skewed_web_host_neither_shortens_nor_stretches_a_jobs_budget(
    skew_store: JobStore, monkeypatch: pytest.MonkeyPatch, skew: float
) -> None:
    """Admission on a web host 30 s off stores the deadline and the first watch time as
    distances from Redis' clock: the job has its 20 s budget wherever it runs."""
    store = skew_store
    client = store._redis
    catalog = load_catalog()
    accounts = Accounts(client, catalog)
    _, key = KeyStore(client).create("skew", tier="internal")
    accounts.set_balance(key.id, 10_000_000)
    model = next(m for m in catalog.models.values() if m.price_micros > 0)
    clocks = HostClocks(monkeypatch)
    with clocks.on(skew):
        job = admit_job(accounts, store, catalog, key, model.id, budget=20.0)
    now = redis_time(store)
    record = store.get(job.id)
    assert record.deadline - now == pytest.approx(20, abs=2)
    assert record.created - now == pytest.approx(0, abs=2)
    assert watch_time(store, job.id) - now == pytest.approx(LIVE.enqueue_grace, abs=2)
    assert store.claim(job.id, worker="true-clock").should_run


@pytest.mark.parametrize(
    ("worker_skew", "reaper_skew"),
    [(-SKEW, 0.0), (SKEW, 0.0), (0.0, SKEW), (0.0, -SKEW)],
    ids=["worker-behind", "worker-ahead", "reaper-ahead", "reaper-behind"],
)
def test_clock_skew_neither_takes_over_a_live_job_nor_spares_a_dead_one(
    skew_store: JobStore, monkeypatch: pytest.MonkeyPatch, worker_skew: float, reaper_skew: float
) -> None:
    """Real heartbeat and reaper threads, one host's clock 30 s off. While the worker beats,
    its job is never taken over; once it stops, the job is taken over about ``stale_after``
    later — not at once, not 30 s late."""
    stale = 1.5
    live = Liveness(stale_after=stale, enqueue_grace=5.0, resend_after=30.0, late=2.0)
    store = JobStore(skew_store._redis, retention_seconds=600, liveness=live)
    clocks = HostClocks(monkeypatch)
    clocks.skew["job-heartbeat"] = worker_skew  # the worker host beats
    clocks.skew["job-reaper"] = reaper_skew  # the other host reaps
    sent: list[str] = []
    running = Running()
    reaper = threads.HeartbeatAndReaper(
        store,
        load_catalog(),
        lambda job_id, queue: sent.append(job_id),
        heartbeat_seconds=3600,  # reaps only
        reaper_interval_seconds=0.1,
        running=Running(),
    ).start()
    worker = threads.HeartbeatAndReaper(
        store,
        load_catalog(),
        lambda *a: None,
        heartbeat_seconds=0.2,
        reaper_interval_seconds=3600,  # beats only
        running=running,
    ).start()
    try:
        # The reaper is past its start-up pause once it sends a job that is due at any clock.
        marker = make_job(store, budget=300)
        store._redis.zadd(WATCH, {marker.id: 0})
        assert _wait_for(lambda: marker.id in sent, timeout=stale + 10)

        job = make_job(store, budget=300)
        with clocks.on(worker_skew):
            run = store.claim(job.id, worker="worker-host")
        assert run.should_run
        with running.track(job.id, run.attempt):
            time.sleep(3 * stale)  # some 30 reaper passes
            record = store._redis.hgetall(store.record_key(job.id))
            assert job.id not in sent
            assert (record["status"], record["attempt"]) == ("running", str(run.attempt))
            assert "takeovers" not in record
        # The worker stopped beating for it (as if it had died).
        stopped = time.monotonic()
        assert _wait_for(lambda: job.id in sent, timeout=stale + 6)
        assert time.monotonic() - stopped > 0.5
        assert store._redis.hget(store.record_key(job.id), "takeovers") == "1"
    finally:
        reaper.stop()
        worker.stop()
