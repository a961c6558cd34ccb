"""Webhook delivery, following the Standard Webhooks specification (v1, HMAC-SHA256).

When a job with a ``webhook_url`` ends, its terminal transition puts its id in
the ``ig:webhooks:due`` sorted set (score: when the next delivery is due).
The pump (:mod:`workers.webhook_pump`) moves due ids onto the ``webhooks``
queue; :func:`deliver` makes one attempt:

* body: the job object, exactly what ``GET /v1/images/generations/{id}`` shows;
* headers ``webhook-id`` (``msg_<job id>``, stable across retries, so receivers
  can deduplicate), ``webhook-timestamp`` (this attempt, unix seconds) and
  ``webhook-signature`` = ``v1,`` + base64(HMAC-SHA256(secret, "id.timestamp.body"))
  with the API key's ``whsec_`` secret;
* through the SSRF guard (:mod:`shared.netguard`): the address is checked at
  delivery time and the connection goes to the checked address, no redirects;
* a short timeout that bounds the whole attempt in wall-clock time
  (:func:`workers.http.wall_clock`), whatever the receiver does: never
  answering, trickling its head, trickling its body. Only the status line and
  headers are read; the body of the answer is never read, so a huge answer
  costs nothing. A receiver holds one pool thread for that long at most, and
  at most ``IMAGEGATE_WEBHOOK_CONCURRENCY_PER_KEY`` of one API key's
  deliveries are in flight at once (see :mod:`workers.webhook_pump`).

2xx is success; 410 disables the endpoint for this job; anything else is
retried on the configured schedule (honouring ``Retry-After``), and every
attempt is recorded on the job. While a retry is pending the job record is
kept until :data:`KEEP_AFTER_ATTEMPT` after it, even past the job retention,
so no scheduled retry is lost to an expired record and its final state can
still be read.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
from typing import Any

import redis
import requests

from shared import lua, metrics, tracing
from shared.jobs import WEBHOOKS_DUE, Job, JobStore, redis_clock
from shared.keys import KeyStore
from shared.netguard import UnsafeDestination, policy_for, safe_session
from shared.results import dumps, job_object
from shared.settings import Settings
from shared.storage import ImageStorage
from workers.http import parse_retry_after, wall_clock, watch
from workers.webhook_pump import inflight_key

log = logging.getLogger(__name__)

USER_AGENT = "imagegate-webhooks/0.1"
# A job record outlives a pending retry by this much, so its outcome can be read.
KEEP_AFTER_ATTEMPT = 3600.0
# The lease of a running attempt outlasts its timeout by this much (payload, Redis).
_ATTEMPT_LEASE_MARGIN = 30.0


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


def deliver(
    job_id: str,
    *,
    settings: Settings,
    client: redis.Redis,
    jobs: JobStore,
    storage: ImageStorage,
    lease: str | None = None,
) -> str:
    """One delivery attempt; returns the webhook state afterwards.

    Safe to run for a duplicated message: a finished delivery is not repeated,
    a retry is not made before its due time, and a message whose ``lease``
    (the pump's token) is no longer the id's lease does nothing (returns
    ``"not_owner"``): it waited in the queue so long that the pump sent the
    delivery again.
    """
    job = jobs.get(job_id)
    if job is None or not job.webhook_url or not job.terminal:
        if job is None:
            log.warning("webhook for job %s: the job record is gone; delivery dropped", job_id)
        client.zrem(WEBHOOKS_DUE, job_id)
        return "skipped"
    inflight = inflight_key(job.key_id)
    if lease is not None:
        renewed = repr(
            redis_clock(client) + settings.webhook_timeout_seconds + _ATTEMPT_LEASE_MARGIN
        )
        claim = lua.register(client, "webhook_claim")
        if not claim([WEBHOOKS_DUE, inflight], job_id=job_id, token=lease, renewed=renewed):
            return "not_owner"
    state = dict(job.webhook or {"state": "pending", "attempts": []})
    try:
        with tracing.span(
            "webhook delivery",
            parent=tracing.context_from(job.meta.get("trace")),
            **{"imagegate.job_id": job.id},
        ):
            return _attempt(
                job, state=state, settings=settings, client=client, jobs=jobs, storage=storage
            )
    finally:
        client.zrem(inflight, job_id)


def _attempt(
    job: Job,
    *,
    state: dict[str, Any],
    settings: Settings,
    client: redis.Redis,
    jobs: JobStore,
    storage: ImageStorage,
) -> str:
    job_id = job.id
    if state.get("state") in ("delivered", "failed", "disabled"):
        client.zrem(WEBHOOKS_DUE, job_id)
        return str(state["state"])
    next_attempt = float(state.get("next_attempt", 0))
    if state.get("state") == "retrying" and next_attempt > redis_clock(client) + 1:
        client.zadd(WEBHOOKS_DUE, {job_id: next_attempt})  # the claim moved it: put it back
        return "not_due"
    attempts: list[dict[str, Any]] = list(state.get("attempts", []))
    number = len(attempts) + 1

    body = dumps(_payload(job, settings, storage))
    msg_id = f"msg_{job.id}"
    timestamp = int(time.time())
    secret = KeyStore(client).webhook_secret(job.key_id)
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }
    started = time.monotonic()
    record: dict[str, Any] = {"attempt": number, "at": timestamp}
    retry_after = None
    final = False
    timeout = settings.webhook_timeout_seconds
    try:
        with (
            safe_session(policy_for(settings)) as session,
            wall_clock(time.time() + timeout),
        ):
            watch(session)
            response = session.post(
                job.webhook_url,
                data=body,
                headers=headers,
                timeout=(min(5.0, timeout), timeout),
                allow_redirects=False,
                stream=True,  # the status and headers are the answer; the body is not read
            )
            response.close()
        record["status"] = response.status_code
        ok = 200 <= response.status_code < 300
        if response.status_code in (429, 502, 503, 504):
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if response.status_code == 410:
            state["state"] = "disabled"
            final = True
    except UnsafeDestination as exc:
        ok, final = False, True
        record["error"] = str(exc)  # "refused: <why>"
        state["state"] = "failed"
    except requests.RequestException as exc:
        ok = False
        record["error"] = type(exc).__name__
    record["duration_ms"] = int((time.monotonic() - started) * 1000)
    attempts.append(record)
    state["attempts"] = attempts

    if ok:
        state["state"] = "delivered"
    elif not final:
        schedule = settings.webhook_retry_schedule
        if number > len(schedule):
            state["state"] = "failed"
        else:
            delay = max(schedule[number - 1], retry_after or 0.0)
            state["state"] = "retrying"
            state["next_attempt"] = redis_clock(client) + delay  # the pump's clock
            client.zadd(WEBHOOKS_DUE, {job.id: state["next_attempt"]})
    keep_until = None
    if state["state"] == "retrying":
        keep_until = float(state["next_attempt"]) + timeout + KEEP_AFTER_ATTEMPT
    jobs.set_webhook_state(job.id, state, keep_until=keep_until)
    if state["state"] != "retrying":
        client.zrem(WEBHOOKS_DUE, job.id)
    metrics.WEBHOOK_DELIVERIES.labels(state["state"]).inc()  # one per attempt made
    log.info(
        "webhook for job %s attempt %d: %s -> %s",
        job.id,
        number,
        record.get("status", record.get("error")),
        state["state"],
    )
    return str(state["state"])


def _payload(job: Job, settings: Settings, storage: ImageStorage) -> dict[str, Any]:
    base_url = settings.public_base_url or str(job.meta.get("base_url", ""))
    return job_object(job, storage, base_url=base_url, ttl=settings.url_ttl_seconds)
