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
* a short timeout, so a receiver that never answers holds one pool thread
  for that long at most.

2xx is success; 410 disables the endpoint for this job; anything else is
retried on the configured schedule (honouring ``Retry-After``), and every
attempt is recorded on the job.
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

from shared.jobs import WEBHOOKS_DUE, Job, JobStore
from shared.keys import KeyStore
from shared.netguard import UnsafeDestination, policy_for, safe_session
from shared.results import dumps, job_object
from shared.settings import Settings
from shared.storage import ImageStorage
from workers.http import parse_retry_after

log = logging.getLogger(__name__)

USER_AGENT = "imagegate-webhooks/0.1"


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
) -> str:
    """One delivery attempt; returns the webhook state afterwards.

    Safe to run for a duplicated message: a finished delivery is not repeated
    and a retry is not made before its due time.
    """
    job = jobs.get(job_id)
    if job is None or not job.webhook_url or not job.terminal:
        client.zrem(WEBHOOKS_DUE, job_id)
        return "skipped"
    state: dict[str, Any] = dict(job.webhook or {"state": "pending", "attempts": []})
    if state.get("state") in ("delivered", "failed", "disabled"):
        client.zrem(WEBHOOKS_DUE, job_id)
        return str(state["state"])
    if state.get("state") == "retrying" and float(state.get("next_attempt", 0)) > time.time() + 1:
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
    try:
        with safe_session(policy_for(settings)) as session:
            timeout = settings.webhook_timeout_seconds
            response = session.post(
                job.webhook_url,
                data=body,
                headers=headers,
                timeout=(min(5.0, timeout), timeout),
                allow_redirects=False,
            )
        record["status"] = response.status_code
        ok = 200 <= response.status_code < 300
        if response.status_code in (429, 502, 503, 504):
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if response.status_code == 410:
            state["state"] = "disabled"
            final = True
    except UnsafeDestination as exc:
        ok, final = False, True
        record["error"] = f"refused: {exc}"
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
            state["next_attempt"] = time.time() + delay
            client.zadd(WEBHOOKS_DUE, {job.id: state["next_attempt"]})
    jobs.set_webhook_state(job.id, state)
    if state["state"] != "retrying":
        client.zrem(WEBHOOKS_DUE, job.id)
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
