"""Job records against a real redis-server: atomic claims, fencing, notifications."""

from __future__ import annotations

import threading
import time

import pytest

from api.waiter import CompletionHub
from shared.errors import UpstreamError
from shared.jobs import DONE_CHANNEL, JobStatus, JobStore, StoredImage
from shared.redis_client import connect
from tests.support.jobs import make_job


def _url(redis_server) -> str:
    """A database of the test Redis that no running worker's reaper looks at: the queued
    jobs these tests leave behind must not be sent to the live stack's queues."""
    return redis_server.url.rsplit("/", 1)[0] + "/8"


@pytest.fixture()
def store(redis_server) -> JobStore:
    return JobStore(connect(_url(redis_server)), retention_seconds=600)


IMG = StoredImage(key="k/0.png", width=8, height=8, content_type="image/png")


def test_create_and_read_back(store: JobStore) -> None:
    job = make_job(store)
    got = store.get(job.id)
    assert got is not None and got.status == JobStatus.QUEUED and got.request == job.request
    assert store.get("imgjob_missing") is None


def test_a_newer_claim_fences_out_the_older_attempt(store: JobStore) -> None:
    job = make_job(store)
    first = store.claim(job.id, worker="a")
    # A duplicate while worker a is alive (its heartbeat is fresh) does not take the job...
    assert store.claim(job.id, worker="b").outcome == "busy"
    # ...once worker a stopped beating, it does.
    later = time.time() + store.liveness.stale_after + 1
    second = store.claim(job.id, worker="b", now=later)
    assert (first.outcome, first.attempt) == ("run", 1)
    assert (second.outcome, second.attempt) == ("run", 2)
    assert store.succeed(job.id, first.attempt, [IMG]) is False
    assert store.succeed(job.id, second.attempt, [IMG]) is True
    assert store.get(job.id).images == (IMG,)
    # Once terminal, nothing changes it and nobody runs it again.
    assert store.fail(job.id, second.attempt, UpstreamError("late")) is False
    assert store.claim(job.id).outcome == "terminal"
    assert store.get(job.id).status == JobStatus.SUCCEEDED


def test_claim_after_the_deadline_times_the_job_out(store: JobStore) -> None:
    job = make_job(store, budget=0.0)
    assert store.claim(job.id).outcome == "expired"
    done = store.get(job.id)
    assert done.status == JobStatus.TIMED_OUT
    assert done.error["status"] == 504 and done.error["extra"]["job_id"] == job.id


def test_expire_if_overdue_only_after_the_deadline(store: JobStore) -> None:
    job = make_job(store, budget=0.3)
    claim = store.claim(job.id)
    assert store.expire_if_overdue(job.id) is False
    time.sleep(0.35)
    assert store.expire_if_overdue(job.id) is True
    assert store.succeed(job.id, claim.attempt, [IMG]) is False  # the late run can't write


def test_failure_keeps_the_error_envelope(store: JobStore) -> None:
    job = make_job(store)
    claim = store.claim(job.id)
    err = UpstreamError("boom", upstream_request_id="req_1")
    assert store.fail(job.id, claim.attempt, err)
    done = store.get(job.id)
    assert done.status == JobStatus.FAILED
    assert done.error["status"] == 502 and done.error["headers"]["x-upstream-request-id"] == "req_1"


def test_terminal_transitions_are_published(store: JobStore, redis_server) -> None:
    pubsub = connect(_url(redis_server)).pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(DONE_CHANNEL)
    job = make_job(store)
    store.succeed(job.id, store.claim(job.id).attempt, [IMG])
    deadline = time.time() + 5
    seen = []
    while time.time() < deadline and job.id not in seen:
        msg = pubsub.get_message(timeout=0.5)
        if msg:
            seen.append(msg["data"])
    assert job.id in seen


def test_hub_wakes_a_waiter_on_completion_and_gives_up_at_its_deadline(
    store: JobStore, redis_server
) -> None:
    hub = CompletionHub(connect(_url(redis_server)), store, poll_interval=30.0)
    job = make_job(store)
    claim = store.claim(job.id)
    threading.Timer(0.3, lambda: store.succeed(job.id, claim.attempt, [IMG])).start()
    started = time.monotonic()
    assert hub.wait(job.id, time.time() + 20).status == JobStatus.SUCCEEDED
    # Woken by the notice, not by the 30 s poll.
    assert time.monotonic() - started < 20

    other = make_job(store)
    assert hub.wait(other.id, time.time() + 0.3).status == JobStatus.QUEUED


def test_a_waiter_registered_before_enqueueing_sees_a_notice_sent_before_it_waits(
    store: JobStore, redis_server
) -> None:
    hub = CompletionHub(connect(_url(redis_server)), store, poll_interval=30.0)
    hub.wait(make_job(store).id, time.time() + 0.2)  # starts the listener
    deadline = time.time() + 10
    while not hub._subscribed.is_set() and time.time() < deadline:
        time.sleep(0.01)
    job = make_job(store)
    with hub.expect(job.id) as waiter:
        store.succeed(job.id, store.claim(job.id).attempt, [IMG])  # done before the wait
        time.sleep(0.2)
        started = time.monotonic()
        done = waiter.wait(time.time() + 20, read_first=False)
    assert done is not None and done.status == JobStatus.SUCCEEDED
    # The notice woke it, not the 30 s poll.
    assert time.monotonic() - started < 20
    assert job.id not in hub._waiters  # closed: stops listening


def test_a_notice_lost_while_the_listener_was_away_is_caught_when_it_resubscribes(
    store: JobStore, redis_server
) -> None:
    client = connect(_url(redis_server))
    hub = CompletionHub(client, store, poll_interval=30.0)
    hub.wait(make_job(store).id, time.time() + 0.2)  # starts the listener
    deadline = time.time() + 10
    while not hub._subscribed.is_set() and time.time() < deadline:
        time.sleep(0.01)
    job = make_job(store)
    outcome: list = []
    with hub.expect(job.id) as waiter:
        waiting = threading.Thread(
            target=lambda: outcome.append(waiter.wait(time.time() + 20, read_first=False))
        )
        started = time.monotonic()
        waiting.start()
        time.sleep(0.2)
        # The job ends without a notice reaching the listener (as if published while
        # it was disconnected) ...
        client.hset(store.record_key(job.id), "status", JobStatus.SUCCEEDED.value)
        # ... and the listener's connection drops; redis-py reconnects and resubscribes.
        client.client_kill_filter(_type="pubsub")
        waiting.join(timeout=25)
    assert outcome and outcome[0] is not None and outcome[0].status == JobStatus.SUCCEEDED
    # Re-read once subscribed again, not at the 30 s poll or the 20 s deadline.
    assert time.monotonic() - started < 15


def test_a_job_is_counted_once_for_the_consoles_charts(store: JobStore) -> None:
    """shared.jobstats counts a job when it ends, once: a late second finish adds nothing."""
    from shared import jobstats

    def counts() -> tuple[int, int, int]:
        s = jobstats.series(store._redis, "day")["models"].get("local/testcard")
        return (sum(s["jobs"]), sum(s["errors"]), sum(s["images"])) if s else (0, 0, 0)

    before = counts()
    job = make_job(store)
    claim = store.claim(job.id)
    assert store.fail(job.id, claim.attempt, UpstreamError("boom"))
    assert store.fail(job.id, claim.attempt, UpstreamError("again")) is False
    ok = make_job(store)
    assert store.succeed(ok.id, store.claim(ok.id).attempt, [IMG, IMG])
    late = make_job(store, budget=-1)  # past its deadline: the reaper ends it (Redis' clock)
    store.mark_sent(late.id)
    store.mark_sent(late.id)
    assert store.reap(late.id) == "expired"
    after = counts()
    assert [a - b for a, b in zip(after, before, strict=True)] == [3, 2, 2]
