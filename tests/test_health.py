"""Circuit breakers in Redis: the state machine with explicit clocks (fakeredis and a real
redis-server), and exactly one half-open trial among concurrent callers (real redis-server)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import fakeredis
import pytest
import redis

from shared.health import BreakerPolicy, Breakers, BreakerState
from shared.redis_client import connect

POLICY = BreakerPolicy(failure_threshold=3, window=60.0, cooldown=30.0)
T0 = 1_700_000_000.0


@pytest.fixture(params=["fakeredis", "redis-server"])
def client(request: pytest.FixtureRequest) -> Iterator[redis.Redis]:
    if request.param == "fakeredis":
        yield fakeredis.FakeRedis(decode_responses=True)
    else:
        yield connect(request.getfixturevalue("redis_server").url)


@pytest.fixture()
def breakers(client: redis.Redis) -> Breakers:
    return Breakers(client, POLICY)


@pytest.fixture()
def name() -> str:
    return f"model:test-{uuid.uuid4().hex[:8]}"


def trip(breakers: Breakers, name: str, at: float = T0) -> None:
    for _ in range(POLICY.failure_threshold):
        breakers.record_failure(name, now=at)


def test_opens_at_the_threshold(breakers: Breakers, name: str) -> None:
    assert breakers.allow(name, now=T0)
    first = breakers.record_failure(name, now=T0)
    second = breakers.record_failure(name, now=T0 + 1)
    assert (first.state, first.failures) == (BreakerState.CLOSED, 1)
    assert (second.state, second.failures) == (BreakerState.CLOSED, 2)
    assert breakers.allow(name, now=T0 + 1)

    third = breakers.record_failure(name, now=T0 + 2)
    assert third.state is BreakerState.OPEN and third.failures == 3
    assert third.opened_at == T0 + 2 and third.retry_at == T0 + 32
    assert breakers.status(name, now=T0 + 2) == third
    assert not breakers.allow(name, now=T0 + 2)


def test_stays_open_during_the_cooldown(breakers: Breakers, name: str) -> None:
    trip(breakers, name)
    for t in (T0, T0 + 15, T0 + 29.999):
        assert breakers.status(name, now=t).state is BreakerState.OPEN
        assert not breakers.would_allow(name, now=t)
        assert not breakers.allow(name, now=t)
    # A late failure (from a call let through before the breaker opened) does not
    # push the end of the cool-down back.
    late = breakers.record_failure(name, now=T0 + 10)
    assert late.state is BreakerState.OPEN and late.opened_at == T0 and late.retry_at == T0 + 30


def test_half_open_lets_exactly_one_trial_through(breakers: Breakers, name: str) -> None:
    trip(breakers, name)
    t = T0 + 30
    status = breakers.status(name, now=t)
    assert status.state is BreakerState.HALF_OPEN and not status.trial_running
    assert breakers.would_allow(name, now=t)
    assert breakers.would_allow(name, now=t)  # read-only: takes no token

    assert breakers.allow(name, now=t)
    assert not breakers.allow(name, now=t)
    assert not breakers.allow(name, now=t + 5)
    assert not breakers.would_allow(name, now=t + 5)
    running = breakers.status(name, now=t + 5)
    assert running.state is BreakerState.HALF_OPEN and running.trial_running
    assert running.retry_at == t + POLICY.cooldown  # the trial token lasts a cool-down


def test_a_trial_that_never_reports_frees_its_token_after_trial_ttl(
    client: redis.Redis, name: str
) -> None:
    breakers = Breakers(client, BreakerPolicy(failure_threshold=1, cooldown=30.0, trial_ttl=5.0))
    breakers.record_failure(name, now=T0)
    assert breakers.allow(name, now=T0 + 30)
    assert not breakers.allow(name, now=T0 + 34.9)
    assert breakers.allow(name, now=T0 + 35)  # the first trial's worker died: a new trial
    assert not breakers.allow(name, now=T0 + 35)


def test_success_closes_and_forgets(breakers: Breakers, name: str) -> None:
    trip(breakers, name)
    assert breakers.allow(name, now=T0 + 30)
    breakers.record_success(name)
    closed = breakers.status(name, now=T0 + 31)
    assert closed.state is BreakerState.CLOSED and closed.failures == 0
    assert closed.opened_at is None and closed.retry_at is None
    assert breakers.allow(name, now=T0 + 31) and breakers.allow(name, now=T0 + 31)
    # Old failures are gone: it takes a full threshold again to open.
    breakers.record_failure(name, now=T0 + 32)
    assert breakers.record_failure(name, now=T0 + 33).state is BreakerState.CLOSED
    assert breakers.record_failure(name, now=T0 + 34).state is BreakerState.OPEN


def test_failure_in_half_open_reopens_with_a_new_cooldown(breakers: Breakers, name: str) -> None:
    trip(breakers, name)
    assert breakers.allow(name, now=T0 + 30)
    reopened = breakers.record_failure(name, now=T0 + 31)
    assert reopened.state is BreakerState.OPEN
    assert reopened.opened_at == T0 + 31 and reopened.retry_at == T0 + 61
    assert not breakers.allow(name, now=T0 + 60.9)
    assert breakers.allow(name, now=T0 + 61)  # the next trial, not blocked by the old token
    assert not breakers.allow(name, now=T0 + 61)


def test_the_window_forgets_old_failures(breakers: Breakers, name: str) -> None:
    breakers.record_failure(name, now=T0)
    breakers.record_failure(name, now=T0 + 30)
    assert breakers.status(name, now=T0 + 59).failures == 2
    assert breakers.status(name, now=T0 + 60).failures == 1  # the first one is 60 s old
    third = breakers.record_failure(name, now=T0 + 61)
    assert third.state is BreakerState.CLOSED and third.failures == 2
    fourth = breakers.record_failure(name, now=T0 + 62)
    assert fourth.state is BreakerState.OPEN and fourth.failures == 3


def test_breakers_are_independent_and_live_under_ig_cb(
    breakers: Breakers, client: redis.Redis, name: str
) -> None:
    other = name.replace("model:", "key:bfl:")
    trip(breakers, name)
    assert breakers.status(other, now=T0).state is BreakerState.CLOSED
    assert breakers.allow(other, now=T0)
    assert client.hget(f"ig:cb:{name}", "opened_at") is not None
    assert client.zcard(f"ig:cb:{name}:failures") == 3
    assert not client.exists(f"ig:cb:{other}")


def test_reset_closes(breakers: Breakers, name: str) -> None:
    trip(breakers, name)
    breakers.reset(name)
    assert breakers.status(name, now=T0).state is BreakerState.CLOSED
    assert breakers.allow(name, now=T0)
    assert breakers.record_failure(name, now=T0).failures == 1


def test_state_is_shared_between_instances(client: redis.Redis, name: str) -> None:
    a, b = Breakers(client, POLICY), Breakers(client, POLICY)
    trip(a, name)
    assert not b.allow(name, now=T0 + 1)
    assert b.allow(name, now=T0 + 30)
    assert not a.allow(name, now=T0 + 30)


@pytest.mark.parametrize(
    "kwargs",
    [{"failure_threshold": 0}, {"window": 0}, {"cooldown": -1}, {"trial_ttl": 0}],
)
def test_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BreakerPolicy(**kwargs)


def test_one_half_open_trial_among_twenty_concurrent_callers(redis_server, name: str) -> None:
    # Each thread has its own connection pool and Breakers, like separate worker processes.
    callers = [Breakers(connect(redis_server.url), POLICY) for _ in range(20)]
    trip(callers[0], name)
    t = T0 + 30
    barrier = threading.Barrier(len(callers))
    results: list[bool] = []
    lock = threading.Lock()

    def call(breakers: Breakers) -> None:
        barrier.wait()
        allowed = breakers.allow(name, now=t)
        with lock:
            results.append(allowed)

    threads = [threading.Thread(target=call, args=(b,)) for b in callers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(results) == 20
    assert results.count(True) == 1
