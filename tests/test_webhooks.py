"""Webhook delivery in-process against real Redis and a real receiver on loopback:
a retry keeps its job record alive, a message whose lease was handed on does
nothing (so a delivery never runs twice at once), the receiver's ``Retry-After``
postpones the next attempt and ``410 Gone`` ends deliveries for the job; the
signature verifies with the Standard Webhooks library, the schedule's last retry
is the last, a delivered webhook is not sent again, and an attempt ends by its
timeout in wall-clock time."""

from __future__ import annotations

import email.utils
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from celery import Celery
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from shared.errors import InvalidRequest
from shared.jobs import WEBHOOKS_DUE, Job, new_job_id
from shared.keys import KeyStore
from shared.settings import Settings
from tests.support.peers import SlowPeer
from workers.context import WorkerContext, build_context
from workers.webhook_pump import inflight_key, pump_once
from workers.webhooks import deliver


@pytest.fixture()
def ctx(redis_server, tmp_path: Path) -> WorkerContext:
    # A database of its own: the stack's webhook pumps (db 0) must not take these jobs.
    url = redis_server.url.rsplit("/", 1)[0] + "/7"
    settings = Settings.from_env(
        {
            "IMAGEGATE_REDIS_URL": url,
            "IMAGEGATE_STORAGE_DIR": str(tmp_path),
            "IMAGEGATE_JOB_RETENTION_SECONDS": "2",
            "IMAGEGATE_WEBHOOK_RETRY_SCHEDULE": "30",
            "IMAGEGATE_WEBHOOK_TIMEOUT_SECONDS": "1",
            "IMAGEGATE_ALLOW_HTTP_CALLBACKS": "1",
            "IMAGEGATE_ALLOWED_INTERNAL_HOSTS": "127.0.0.1",
        }
    )
    context = build_context(settings)
    context.redis.flushdb()
    return context


@pytest.fixture()
def peer() -> Iterator[SlowPeer]:
    started = SlowPeer("ok").start()
    yield started
    started.stop()


def _ended_job(ctx: WorkerContext, url: str, key_id: str | None = None) -> Job:
    """A failed job of a real API key, with a webhook due now (as a terminal job has)."""
    if key_id is None:
        key_id = KeyStore(ctx.redis).create("hooks", tier="internal")[1].id
    now = time.time()
    job = ctx.jobs.create(
        Job(
            id=new_job_id(),
            key_id=key_id,
            model="local/testcard",
            family="local",
            queue="local",
            request={"prompt": "x", "n": 1},
            created=now,
            deadline=now,
        )
    )
    ctx.redis.hset(ctx.jobs.record_key(job.id), "webhook_url", url)
    assert ctx.jobs.fail(job.id, None, InvalidRequest("no"))
    assert ctx.redis.zscore(WEBHOOKS_DUE, job.id) is not None
    return job


def _deliver(ctx: WorkerContext, job_id: str, lease: str | None = None) -> str:
    return deliver(
        job_id,
        settings=ctx.settings,
        client=ctx.redis,
        jobs=ctx.jobs,
        storage=ctx.storage,
        **({"lease": lease} if lease is not None else {}),
    )


def test_a_retry_due_after_the_retention_keeps_the_job_record(
    ctx: WorkerContext, peer: SlowPeer
) -> None:
    peer.mode = "error"
    job = _ended_job(ctx, peer.url("/hook"))
    assert _deliver(ctx, job.id) == "retrying"
    # Retention is 2 s, the retry is due in 30 s: the record must still be there then.
    assert ctx.redis.ttl(ctx.jobs.record_key(job.id)) >= 30
    state = ctx.jobs.get(job.id).webhook
    assert state["state"] == "retrying" and state["next_attempt"] > time.time() + 25


def test_the_state_of_an_expired_record_is_not_written_back(
    ctx: WorkerContext, peer: SlowPeer
) -> None:
    job = _ended_job(ctx, peer.url("/hook"))
    ctx.redis.delete(ctx.jobs.record_key(job.id))
    ctx.jobs.set_webhook_state(job.id, {"state": "failed", "attempts": []}, keep_until=1e10)
    assert not ctx.redis.exists(ctx.jobs.record_key(job.id))  # no record without a TTL


def test_a_message_whose_lease_was_handed_on_does_nothing(
    ctx: WorkerContext, peer: SlowPeer
) -> None:
    job = _ended_job(ctx, peer.url("/hook"))
    app = Celery("webhook-lease-test")
    sent: list[str] = []
    app.send_task = lambda name, args, queue: sent.append(args[1])  # type: ignore[method-assign]
    assert pump_once(ctx.redis, app, lease_seconds=0.2, per_key=2) == 1
    time.sleep(0.3)  # the first message waited in the queue past its lease: sent again
    assert pump_once(ctx.redis, app, lease_seconds=0.2, per_key=2) == 1
    first, second = sent
    assert _deliver(ctx, job.id, first) == "not_owner"
    assert peer.requests == []
    assert _deliver(ctx, job.id, second) == "delivered"
    assert len(peer.requests) == 1
    assert ctx.redis.zscore(inflight_key(job.key_id), job.id) is None


def test_a_key_at_its_cap_is_deferred_not_blocking_others(ctx: WorkerContext, peer) -> None:
    first = _ended_job(ctx, peer.url("/a"))
    same_key = [first, *(_ended_job(ctx, peer.url("/a"), first.key_id) for _ in range(3))]
    other = _ended_job(ctx, peer.url("/b"))  # another key, due last
    app = Celery("webhook-cap-test")
    sent: list[str] = []
    app.send_task = lambda name, args, queue: sent.append(args[0])  # type: ignore[method-assign]
    pump_once(ctx.redis, app, per_key=2)
    assert other.id in sent
    assert len([j for j in sent if j != other.id]) == 2  # the key's cap
    deferred = [j.id for j in same_key if j.id not in sent]
    assert all(ctx.redis.zscore(WEBHOOKS_DUE, j) > time.time() for j in deferred)


@pytest.mark.parametrize(
    ("status", "retry_after"),
    [
        ("503 Service Unavailable", lambda: "600"),
        ("429 Too Many Requests", lambda: email.utils.formatdate(time.time() + 600, usegmt=True)),
    ],
    ids=["503-seconds", "429-http-date"],
)
def test_a_receivers_retry_after_beyond_the_schedule_postpones_the_next_attempt(
    ctx: WorkerContext, peer: SlowPeer, status: str, retry_after: Callable[[], str]
) -> None:
    """The schedule says 30 s; the receiver asks for 600 s: the retry waits 600 s."""
    peer.mode, peer.answer = "answer", status
    peer.answer_headers = {"Retry-After": retry_after()}
    job = _ended_job(ctx, peer.url("/hook"))
    before = time.time()
    assert _deliver(ctx, job.id) == "retrying"
    state = ctx.jobs.get(job.id).webhook
    assert state["next_attempt"] >= before + 598  # an HTTP date has whole seconds
    assert ctx.redis.zscore(WEBHOOKS_DUE, job.id) == pytest.approx(state["next_attempt"])
    assert state["attempts"][0]["status"] == int(status.split()[0])


def test_a_receivers_retry_after_shorter_than_the_schedule_does_not_hurry_the_retry(
    ctx: WorkerContext, peer: SlowPeer
) -> None:
    """Retry-After only ever lengthens the wait: the schedule's 30 s still hold."""
    peer.mode, peer.answer = "answer", "503 Service Unavailable"
    peer.answer_headers = {"Retry-After": "1"}
    job = _ended_job(ctx, peer.url("/hook"))
    before = time.time()
    assert _deliver(ctx, job.id) == "retrying"
    assert ctx.jobs.get(job.id).webhook["next_attempt"] >= before + 30


def test_410_gone_disables_the_webhook_and_nothing_is_sent_again(
    ctx: WorkerContext, peer: SlowPeer
) -> None:
    """410 is final: no retry is scheduled, and a duplicated message sends nothing."""
    peer.mode, peer.answer = "answer", "410 Gone"
    job = _ended_job(ctx, peer.url("/hook"))
    assert _deliver(ctx, job.id) == "disabled"
    state = ctx.jobs.get(job.id).webhook
    assert state["state"] == "disabled" and "next_attempt" not in state
    assert [a["status"] for a in state["attempts"]] == [410]
    assert ctx.redis.zscore(WEBHOOKS_DUE, job.id) is None
    assert _deliver(ctx, job.id) == "disabled"
    assert len(peer.requests) == 1


def test_a_claimed_delivery_that_is_not_due_keeps_its_schedule(
    ctx: WorkerContext, peer: SlowPeer
) -> None:
    job = _ended_job(ctx, peer.url("/hook"))
    later = time.time() + 600
    ctx.jobs.set_webhook_state(job.id, {"state": "retrying", "attempts": [], "next_attempt": later})
    lease = repr(time.time())
    ctx.redis.zadd(WEBHOOKS_DUE, {job.id: float(lease)})  # as if a pump had leased it
    assert _deliver(ctx, job.id, lease) == "not_due"
    assert ctx.redis.zscore(WEBHOOKS_DUE, job.id) == pytest.approx(later)
    assert peer.requests == []


@pytest.mark.parametrize("skew", [-30.0, 30.0], ids=["behind", "ahead"])
def test_due_times_and_leases_are_redis_time_whatever_the_hosts_clock(
    ctx: WorkerContext, peer: SlowPeer, monkeypatch: pytest.MonkeyPatch, skew: float
) -> None:
    """A pump and a delivering worker whose clock is 30 s off: a finished job's delivery
    is sent at once (not 30 s late), and its lease and its retry count from Redis' clock,
    so another pump neither takes it early nor leaves a lost one waiting."""
    peer.mode = "error"
    job = _ended_job(ctx, peer.url("/hook"))
    true_time = time.time

    def redis_now() -> float:
        seconds, micros = ctx.redis.time()
        return seconds + micros / 1_000_000

    monkeypatch.setattr(time, "time", lambda: true_time() + skew)
    app = Celery("webhook-skew-test")
    sent: list[str] = []
    app.send_task = lambda name, args, queue: sent.append(args[1])  # type: ignore[method-assign]
    assert pump_once(ctx.redis, app, lease_seconds=60, per_key=2) == 1
    assert float(sent[0]) - redis_now() == pytest.approx(60, abs=2)
    assert _deliver(ctx, job.id, sent[0]) == "retrying"
    assert ctx.redis.zscore(WEBHOOKS_DUE, job.id) - redis_now() == pytest.approx(30, abs=2)
    assert pump_once(ctx.redis, app, lease_seconds=60, per_key=2) == 0


def _request_parts(raw: bytes) -> tuple[dict[str, str], bytes]:
    """The headers (lower-case names) and body of a request a :class:`SlowPeer` read."""
    head, _, body = raw.partition(b"\r\n\r\n")
    headers = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers, body


def test_the_signature_verifies_with_standardwebhooks_for_that_body_only(
    ctx: WorkerContext, peer: SlowPeer
) -> None:
    job = _ended_job(ctx, peer.url("/hook"))
    assert _deliver(ctx, job.id) == "delivered"
    headers, body = _request_parts(peer.requests[0])
    secret = KeyStore(ctx.redis).webhook_secret(job.key_id)
    payload = Webhook(secret).verify(body, headers)
    assert payload["id"] == job.id and headers["webhook-id"] == f"msg_{job.id}"
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + b" ", headers)


def test_after_the_schedules_last_retry_the_delivery_has_failed(
    ctx: WorkerContext, peer: SlowPeer
) -> None:
    """The schedule of this context has one retry: the second failed attempt is the last."""
    peer.mode = "error"
    job = _ended_job(ctx, peer.url("/hook"))
    assert _deliver(ctx, job.id) == "retrying"
    state = ctx.jobs.get(job.id).webhook
    ctx.jobs.set_webhook_state(job.id, {**state, "next_attempt": 0})  # the retry is due now
    assert _deliver(ctx, job.id) == "failed"
    state = ctx.jobs.get(job.id).webhook
    assert [a["status"] for a in state["attempts"]] == [500, 500]
    assert ctx.redis.zscore(WEBHOOKS_DUE, job.id) is None
    assert len(peer.requests) == 2


def test_a_delivered_webhook_is_not_sent_again_by_a_duplicated_message(
    ctx: WorkerContext, peer: SlowPeer
) -> None:
    job = _ended_job(ctx, peer.url("/hook"))
    assert _deliver(ctx, job.id) == "delivered"
    assert _deliver(ctx, job.id) == "delivered"
    assert len(peer.requests) == 1


def test_an_attempt_ends_by_its_timeout_whatever_the_receiver_trickles(
    ctx: WorkerContext, peer: SlowPeer
) -> None:
    """The receiver sends its answer's head a byte every 0.2 s: no socket read ever waits
    the 1 s timeout, yet the attempt ends after about 1 s (wall-clock bound)."""
    peer.mode, peer.interval = "trickle_headers", 0.2
    job = _ended_job(ctx, peer.url("/hook"))
    outcome: list[str] = []
    worker = threading.Thread(target=lambda: outcome.append(_deliver(ctx, job.id)), daemon=True)
    started = time.monotonic()
    worker.start()
    worker.join(timeout=ctx.settings.webhook_timeout_seconds + 3)
    assert not worker.is_alive(), "the attempt outlived its timeout"
    assert time.monotonic() - started < ctx.settings.webhook_timeout_seconds + 3
    assert outcome == ["retrying"]
    [attempt] = ctx.jobs.get(job.id).webhook["attempts"]
    assert attempt["error"] == "ReadTimeout"
