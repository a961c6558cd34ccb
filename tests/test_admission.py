"""The admission script (:meth:`shared.billing.Accounts.admit`) against a real redis-server.

What its docstring promises: every window of a request is checked (per-model
images per minute *and* per UTC day, account calls per minute) and so is the
balance, before anything is counted, so a refused request changes nothing —
no window counter, no balance, no ledger entry, no job record, no
Idempotency-Key.

Times are passed in (``now=``): noon UTC of a fixed day far in the future, so
no window ends while a test runs, whatever the machine's load or the hour.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
import redis

from shared.billing import BALANCE, LEDGER, Accounts, Idempotency, window_used, windows_for
from shared.catalog import Catalog, Tier, parse_catalog
from shared.errors import InsufficientBalance, RateLimited
from shared.jobs import JobStore
from shared.keys import ApiKey
from shared.redis_client import connect

NOON = 4_102_488_000.0  # 2100-01-01T12:00:00Z
MINUTE = 60.0
DAY = 86_400.0
PRICE = 10_000  # micro-units per image of the model "m"

CATALOG: Catalog = parse_catalog(
    {
        "families": {"local": {}},
        "models": [
            {
                "id": "m",
                "family": "local",
                "price": "0.010",
                "size_rule": {"kind": "max_side", "min": 16, "max": 64},
                "default_size": "32x32",
                "max_n": 10,
            }
        ],
        "tiers": {
            # The day binds before the minute does: 2 a minute, 3 a day.
            "day-bound": {
                "requests_per_minute": 0,
                "limits": [{"models": ["m"], "per_minute": 2, "per_day": 3}],
            },
            # Every kind of window at once, for the "refused changes nothing" tests.
            "all-windows": {
                "requests_per_minute": 5,
                "limits": [{"models": ["m"], "per_minute": 2, "per_day": 100}],
            },
        },
    }
)
MODEL = CATALOG.models["m"]


@pytest.fixture()
def client(redis_server) -> redis.Redis:
    """A database of the test Redis that no running worker's reaper looks at."""
    return connect(redis_server.url.rsplit("/", 1)[0] + "/9")


@pytest.fixture()
def accounts(client: redis.Redis) -> Accounts:
    return Accounts(client, CATALOG)


@pytest.fixture()
def key(client: redis.Redis) -> Iterator[ApiKey]:
    """A key of its own for each test (so no test sees another's windows), cleaned up after."""
    api_key = ApiKey(id="key_adm_" + secrets.token_hex(6), name="admission", created=0)
    yield api_key
    leftovers = list(client.scan_iter(f"ig:*{api_key.id}*"))
    if leftovers:
        client.delete(*leftovers)


def admit(
    accounts: Accounts,
    key: ApiKey,
    tier: str,
    n: int,
    now: float,
    *,
    job_id: str | None = None,
    idempotency: Idempotency | None = None,
) -> int | None:
    """Admit ``n`` images of "m" at ``now`` as the API does; the balance after it."""
    job_id = job_id or f"imgjob_{key.id}_{secrets.token_hex(4)}"
    admission = accounts.admit(
        key,
        CATALOG.tier(tier),
        MODEL,
        n,
        job_key=JobStore.record_key(job_id),
        job_id=job_id,
        spec_json="{}",
        deadline=now + 30,
        ttl=600,
        now=now,
        idempotency=idempotency,
    )
    return admission.balance_micros


def window_counts(client: redis.Redis, key: ApiKey, tier: Tier, now: float) -> dict[str, int]:
    """Window name -> what its counter holds at ``now`` (0 when the key does not exist)."""
    return {w.name: window_used(client, w, now) for w in windows_for(key, tier, MODEL, 1, now)}


def test_a_request_refused_for_its_balance_uses_up_no_rate_limit_quota(
    client: redis.Redis, accounts: Accounts, key: ApiKey
) -> None:
    """A 402 counts in no window (minute, day, account) and writes nothing at all."""
    tier = CATALOG.tier("all-windows")
    accounts.set_balance(key.id, 2 * PRICE - 1)  # one image short of two
    idem = Idempotency(f"ig:idem:{key.id}:refused", "imgjob_refused|body", 600)
    with pytest.raises(InsufficientBalance):
        admit(accounts, key, "all-windows", 2, NOON, job_id="imgjob_refused", idempotency=idem)
    counts = window_counts(client, key, tier, NOON)
    assert len(counts) == 3  # minute, day and account windows all apply to this tier
    assert counts == dict.fromkeys(counts, 0)
    assert accounts.balance(key.id) == 2 * PRICE - 1
    # nothing but the entry of the balance the test set
    assert [f["kind"] for _, f in client.xrange(LEDGER.format(key.id))] == ["adjust"]
    assert not client.exists(JobStore.record_key("imgjob_refused"))
    assert client.get(idem.redis_key) is None
    # The whole minute's quota (2 images) is still there once the balance allows it.
    accounts.top_up(key.id, 1)
    assert admit(accounts, key, "all-windows", 2, NOON) == 0
    assert window_counts(client, key, tier, NOON) == {
        "images per minute for m": 2,
        "images per day for m": 2,
        "requests per minute for this account": 1,
    }


def test_a_request_refused_by_one_window_counts_in_none_and_charges_nothing(
    client: redis.Redis, accounts: Accounts, key: ApiKey
) -> None:
    """Refused by the day window after passing the minute's: the minute is not used up."""
    tier = CATALOG.tier("day-bound")
    accounts.set_balance(key.id, 10 * PRICE)
    admit(accounts, key, "day-bound", 2, NOON)
    admit(accounts, key, "day-bound", 1, NOON + MINUTE)
    later = NOON + 2 * MINUTE
    with pytest.raises(RateLimited) as refused:
        admit(accounts, key, "day-bound", 1, later)
    assert refused.value.extra["limit"] == "images per day for m"
    assert window_counts(client, key, tier, later)["images per minute for m"] == 0
    assert accounts.balance(key.id) == 7 * PRICE
    kinds = [f["kind"] for _, f in client.xrange(LEDGER.format(key.id))]
    assert kinds == ["adjust"] + ["reserve"] * 2  # the balance the test set, two admissions


def test_the_daily_limit_applies_even_when_every_minute_has_room(
    accounts: Accounts, key: ApiKey
) -> None:
    """per_day = 3 with per_minute = 2: the fourth image of the day is refused in a fresh
    minute, and the next UTC day has its full quota again."""
    accounts.set_balance(key.id, 10 * PRICE)
    assert admit(accounts, key, "day-bound", 2, NOON) == 8 * PRICE  # minute 1 is full
    assert admit(accounts, key, "day-bound", 1, NOON + MINUTE) == 7 * PRICE  # day now full
    with pytest.raises(RateLimited) as refused:
        admit(accounts, key, "day-bound", 1, NOON + 2 * MINUTE)
    assert refused.value.status == 429
    assert refused.value.extra["limit"] == "images per day for m"
    assert "Retry-After" in refused.value.headers
    # A request that fits neither would be named by the first window that refuses it.
    with pytest.raises(RateLimited):
        admit(accounts, key, "day-bound", 2, NOON + 3 * MINUTE)
    assert admit(accounts, key, "day-bound", 2, NOON + DAY) == 5 * PRICE


def test_the_minute_window_refuses_within_the_day_quota(
    client: redis.Redis, accounts: Accounts, key: ApiKey
) -> None:
    """per_minute = 2: a third image in the same minute is refused although the day has room."""
    accounts.set_balance(key.id, 10 * PRICE)
    admit(accounts, key, "day-bound", 2, NOON)
    with pytest.raises(RateLimited) as refused:
        admit(accounts, key, "day-bound", 1, NOON + 30)
    assert refused.value.extra["limit"] == "images per minute for m"
    assert int(client.get(BALANCE.format(key.id))) == 8 * PRICE
