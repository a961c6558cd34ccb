"""Hostile webhook receivers against the live stack: each delivery attempt ends by
its timeout in wall-clock time whatever the receiver does, the receiver's answer is
not read into memory, and one key's slow receiver does not hold another key's
deliveries (the stack runs webhook attempts of 1 s, 4 delivery threads and at
most 2 deliveries in flight per API key; see tests/conftest.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests

from tests.conftest import create_key
from tests.support.peers import SlowPeer

ATTEMPT_TIMEOUT = 1.0  # IMAGEGATE_WEBHOOK_TIMEOUT_SECONDS of the test stack
MARGIN = 3.0  # generous: the bound is what matters, not its precision


@pytest.fixture()
def peers() -> Iterator[list[SlowPeer]]:
    started: list[SlowPeer] = []
    yield started
    for peer in started:
        peer.stop()


def _peer(peers: list[SlowPeer], mode: str, **kw) -> SlowPeer:
    peer = SlowPeer(mode, **kw).start()
    peers.append(peer)
    return peer


def _submit(gateway: str, key: str, hook: str, prompt: str = "hook") -> str:
    resp = requests.post(
        f"{gateway}/v1/images/generations",
        json={"model": "local/testcard", "prompt": prompt, "size": "32x32", "webhook_url": hook},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def _webhook(gateway: str, key: str, job_id: str, *, until, timeout: float = 15.0) -> dict:
    """The job's webhook state once ``until(state)`` holds (fails after ``timeout``)."""
    end = time.monotonic() + timeout
    state: dict = {}
    while time.monotonic() < end:
        job = requests.get(
            f"{gateway}/v1/images/generations/{job_id}",
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        ).json()
        state = job.get("webhook") or {}
        if until(state):
            return state
        time.sleep(0.1)
    raise AssertionError(f"webhook of {job_id} never got there: {state}")


def _attempted(state: dict) -> bool:
    return bool(state.get("attempts"))


def test_a_receiver_trickling_its_answer_body_does_not_hold_the_attempt(
    gateway: str, api_key: str, peers: list[SlowPeer]
) -> None:
    peer = _peer(peers, "trickle_body", interval=0.5, declared=1000)
    job_id = _submit(gateway, api_key, peer.url("/hook"))
    state = _webhook(gateway, api_key, job_id, until=_attempted)
    [first] = state["attempts"][:1]
    assert first["duration_ms"] <= (ATTEMPT_TIMEOUT + MARGIN) * 1000
    assert first.get("status") == 200  # the receiver said 200: delivered
    assert state["state"] == "delivered"


def test_a_receiver_trickling_its_answer_head_is_cut_at_the_timeout(
    gateway: str, api_key: str, peers: list[SlowPeer]
) -> None:
    peer = _peer(peers, "trickle_headers", interval=0.2)
    job_id = _submit(gateway, api_key, peer.url("/hook"))
    state = _webhook(gateway, api_key, job_id, until=lambda s: s.get("state") == "failed")
    assert len(state["attempts"]) == 4  # the first and the schedule's three retries
    for attempt in state["attempts"]:
        assert attempt["error"] == "ReadTimeout"
        assert attempt["duration_ms"] <= (ATTEMPT_TIMEOUT + MARGIN) * 1000


def test_a_huge_answer_is_not_read(gateway: str, api_key: str, peers: list[SlowPeer]) -> None:
    declared = 200 * 1024 * 1024
    peer = _peer(peers, "huge_body", declared=declared)
    job_id = _submit(gateway, api_key, peer.url("/hook"))
    state = _webhook(gateway, api_key, job_id, until=_attempted)
    assert state["attempts"][0]["status"] == 200
    # Kernel buffers on loopback hold a few MiB; the webhook worker read none of it.
    time.sleep(0.5)
    assert max(peer.sent) < declared // 4


def test_one_keys_slow_receiver_does_not_delay_another_keys_webhook(
    gateway: str, stack_env: dict[str, str], peers: list[SlowPeer]
) -> None:
    slow_key = create_key(stack_env, "slow-receiver")["key"]
    other_key = create_key(stack_env, "other-tenant")["key"]
    slow = _peer(peers, "trickle_headers", interval=0.2)
    good = _peer(peers, "ok")
    for i in range(20):
        _submit(gateway, slow_key, slow.url(f"/h{i}"), f"slow {i}")
    end = time.monotonic() + 15
    while len(slow.requests) < 2 and time.monotonic() < end:
        time.sleep(0.05)
    assert len(slow.requests) >= 2, "the slow receiver was never called"
    started = time.monotonic()
    mine = _submit(gateway, other_key, good.url("/hook"), "on time")
    state = _webhook(gateway, other_key, mine, until=lambda s: s.get("state") == "delivered")
    waited = time.monotonic() - started
    # 20 deliveries of 1 s each on 4 threads would hold the pool 5 s per round of
    # attempts; with at most 2 of them in flight, 2 threads stay free for everybody else.
    assert waited <= ATTEMPT_TIMEOUT + MARGIN - 1.0, (waited, state)
    assert slow.max_open <= 2
