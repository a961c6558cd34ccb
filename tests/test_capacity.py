"""Per-family capacity leases in Redis: caps, rotation, expiry, release, skip and blocking
acquisition (fakeredis and a real redis-server), and the cap under 50 concurrent
acquirers (real redis-server)."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
import redis

from shared.capacity import Capacity, Lease
from shared.redis_client import connect

T0 = 1_700_000_000.0


@pytest.fixture(params=["fakeredis", "redis-server"])
def client(request: pytest.FixtureRequest) -> Iterator[redis.Redis]:
    if request.param == "fakeredis":
        yield fakeredis.FakeRedis(decode_responses=True)
    else:
        yield connect(request.getfixturevalue("redis_server").url)


@pytest.fixture()
def capacity(client: redis.Redis) -> Capacity:
    return Capacity(client)


@pytest.fixture()
def family() -> str:
    return f"fam-{uuid.uuid4().hex[:8]}"


def take(
    capacity: Capacity, family: str, n: int, keys: int, per_key: int, **kw: Any
) -> list[Lease]:
    leases = [capacity.acquire(family, keys, per_key, ttl=60, now=T0, **kw) for _ in range(n)]
    assert all(lease is not None for lease in leases)
    return leases  # type: ignore[return-value]


def test_never_more_than_per_key_per_key(capacity: Capacity, family: str) -> None:
    leases = take(capacity, family, 4, keys=2, per_key=2)
    assert Counter(lease.key_index for lease in leases) == {0: 2, 1: 2}
    assert capacity.acquire(family, 2, 2, ttl=60, now=T0) is None
    assert capacity.active(family, 2, now=T0) == [2, 2]
    lease = leases[0]
    assert lease.family == family and lease.expires_at == T0 + 60
    assert len({lease.token for lease in leases}) == 4


def test_rotation_spreads_consecutive_short_jobs(capacity: Capacity, family: str) -> None:
    seen = []
    for _ in range(7):
        lease = capacity.acquire(family, 3, 24, ttl=60, now=T0)
        seen.append(lease.key_index)
        capacity.release(lease)  # every key is idle again at each acquire
    assert seen == [0, 1, 2, 0, 1, 2, 0]


def test_the_least_busy_key_wins_over_rotation(capacity: Capacity, family: str) -> None:
    take(capacity, family, 2, keys=2, per_key=5, skip={1})  # key 0 holds 2
    picks = [capacity.acquire(family, 2, 5, ttl=60, now=T0).key_index for _ in range(4)]
    assert picks == [1, 1, 0, 1]  # 2:0 -> 1, 2:1 -> 1, tie 2:2 rotates to 0, 3:2 -> 1
    assert capacity.active(family, 2, now=T0) == [3, 3]


def test_expired_leases_are_reclaimed(capacity: Capacity, family: str) -> None:
    assert capacity.acquire(family, 1, 1, ttl=10, now=T0) is not None
    assert capacity.acquire(family, 1, 1, ttl=10, now=T0 + 9.9) is None
    assert capacity.active(family, 1, now=T0 + 9.9) == [1]
    assert capacity.active(family, 1, now=T0 + 10) == [0]
    assert capacity.acquire(family, 1, 1, ttl=10, now=T0 + 10) is not None


def test_release_frees_exactly_that_lease(capacity: Capacity, family: str) -> None:
    first, second = take(capacity, family, 2, keys=1, per_key=2)
    assert capacity.acquire(family, 1, 2, ttl=60, now=T0) is None
    capacity.release(first)
    capacity.release(first)  # twice is harmless
    assert capacity.active(family, 1, now=T0) == [1]
    assert capacity.acquire(family, 1, 2, ttl=60, now=T0) is not None
    assert capacity.acquire(family, 1, 2, ttl=60, now=T0) is None


def test_skip_avoids_keys(capacity: Capacity, family: str) -> None:
    picks = {
        capacity.acquire(family, 3, 2, ttl=60, now=T0, skip={0, 1}).key_index for _ in range(2)
    }
    assert picks == {2}
    assert capacity.acquire(family, 3, 2, ttl=60, now=T0, skip={0, 1}) is None  # key 2 is full
    assert capacity.acquire(family, 3, 2, ttl=60, now=T0, skip={0}).key_index == 1
    assert capacity.acquire(family, 3, 0, ttl=60, now=T0, skip=[0, 1, 2]) is None
    assert capacity.active(family, 3, now=T0) == [0, 1, 2]


def test_per_key_zero_is_unlimited_but_still_rotates(capacity: Capacity, family: str) -> None:
    leases = take(capacity, family, 100, keys=2, per_key=0)
    assert Counter(lease.key_index for lease in leases) == {0: 50, 1: 50}
    assert capacity.active(family, 2, now=T0) == [50, 50]


def test_families_do_not_share_capacity(capacity: Capacity, family: str) -> None:
    take(capacity, family, 1, keys=1, per_key=1)
    assert capacity.acquire(family + "-other", 1, 1, ttl=60, now=T0) is not None
    assert capacity.acquire(family, 1, 1, ttl=60, now=T0) is None


def test_extend_keeps_a_long_job_s_slot(capacity: Capacity, family: str) -> None:
    lease = capacity.acquire(family, 1, 1, ttl=10, now=T0)
    renewed = capacity.extend(lease, 10, now=T0 + 5)
    assert renewed == Lease(family, 0, lease.token, T0 + 15)
    assert capacity.acquire(family, 1, 1, ttl=10, now=T0 + 12) is None
    assert capacity.acquire(family, 1, 1, ttl=10, now=T0 + 15) is not None


def test_extend_of_an_expired_lease_does_not_resurrect_it(capacity: Capacity, family: str) -> None:
    lease = capacity.acquire(family, 1, 1, ttl=10, now=T0)
    assert capacity.extend(lease, 10, now=T0 + 10) is None
    assert capacity.active(family, 1, now=T0 + 10) == [0]
    capacity.release(lease)
    assert capacity.extend(lease, 10, now=T0 + 1) is None


@pytest.mark.parametrize("kwargs", [{"keys": 0}, {"ttl": 0}])
def test_rejects_nonsense(capacity: Capacity, family: str, kwargs: dict[str, float]) -> None:
    args = {"keys": 1, "ttl": 10.0, **kwargs}
    with pytest.raises(ValueError):
        capacity.acquire(family, args["keys"], 1, ttl=args["ttl"])


def test_acquire_blocking_waits_for_a_release(capacity: Capacity, family: str) -> None:
    held = capacity.acquire(family, 1, 1, ttl=60)
    timer = threading.Timer(0.3, capacity.release, args=(held,))
    start = time.monotonic()
    timer.start()
    try:
        lease = capacity.acquire_blocking(family, 1, 1, ttl=60, deadline=time.time() + 5, poll=0.02)
    finally:
        timer.cancel()
    waited = time.monotonic() - start
    assert lease is not None and lease.token != held.token
    assert 0.25 <= waited < 2.0
    assert capacity.active(family, 1) == [1]


def test_acquire_blocking_gives_up_at_the_deadline(capacity: Capacity, family: str) -> None:
    capacity.acquire(family, 1, 1, ttl=60)
    start = time.monotonic()
    assert (
        capacity.acquire_blocking(family, 1, 1, ttl=60, deadline=time.time() + 0.3, poll=0.05)
        is None
    )
    assert 0.25 <= time.monotonic() - start < 1.5
    assert capacity.active(family, 1) == [1]


def test_acquire_blocking_returns_at_once_when_there_is_room(
    capacity: Capacity, family: str
) -> None:
    start = time.monotonic()
    lease = capacity.acquire_blocking(family, 2, 1, ttl=60, deadline=time.time() + 5, skip={0})
    assert lease is not None and lease.key_index == 1
    assert time.monotonic() - start < 0.1


def test_cap_holds_under_fifty_concurrent_acquirers(redis_server) -> None:
    family = f"fam-{uuid.uuid4().hex[:8]}"
    keys, per_key = 3, 5
    barrier = threading.Barrier(50)
    got: list[Lease | None] = []
    lock = threading.Lock()

    def worker() -> None:
        capacity = Capacity(connect(redis_server.url))  # one pool each, like separate processes
        barrier.wait()
        lease = capacity.acquire(family, keys, per_key, ttl=60)
        with lock:
            got.append(lease)

    threads = [threading.Thread(target=worker) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    leases = [lease for lease in got if lease is not None]
    assert len(got) == 50
    assert Counter(lease.key_index for lease in leases) == {0: per_key, 1: per_key, 2: per_key}
    assert Capacity(connect(redis_server.url)).active(family, keys) == [per_key] * keys


def test_cap_holds_while_fifty_workers_churn(redis_server) -> None:
    """Acquire, hold briefly, release, repeat: sampled occupancy never exceeds the cap."""
    family = f"fam-{uuid.uuid4().hex[:8]}"
    keys, per_key = 2, 3
    observer = Capacity(connect(redis_server.url))
    stop = threading.Event()
    peak = [0] * keys
    served: Counter[int] = Counter()
    lock = threading.Lock()

    def worker() -> None:
        capacity = Capacity(connect(redis_server.url))
        for _ in range(6):
            lease = capacity.acquire_blocking(
                family, keys, per_key, ttl=30, deadline=time.time() + 10, poll=0.005
            )
            assert lease is not None
            with lock:
                served[lease.key_index] += 1
            time.sleep(0.005)
            capacity.release(lease)

    def watch() -> None:
        while not stop.is_set():
            for i, n in enumerate(observer.active(family, keys)):
                peak[i] = max(peak[i], n)

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=worker) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    stop.set()
    watcher.join()
    assert sum(served.values()) == 300
    assert peak == [per_key] * keys  # reached the cap on every key, never above it
    assert observer.active(family, keys) == [0] * keys
