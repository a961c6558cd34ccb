"""Money through a job's life, below the HTTP layer, against a real redis-server: what
admission reserves, what the job's one terminal transition settles and refunds, the
usage it counts, and the Idempotency-Key a request keeps or releases.

The live-stack tests (``tests/test_accounts_e2e.py``) show the same through the API;
these run in a second and are what ``scripts/mutants.py`` runs for the money scripts
(``shared/lua/admit.lua``, ``_settle.lua``, ``release_idempotency.lua``).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import pytest
import redis

from shared.billing import (
    LEDGER,
    PENDING,
    Accounts,
    Idempotency,
    parse_money,
    window_used,
    windows_for,
)
from shared.catalog import Catalog, parse_catalog
from shared.jobs import Job, JobStore, StoredImage, new_job_id
from shared.keys import ApiKey
from shared.redis_client import connect

PRICE = 10_000  # micro-units per image of the model "m"
START = 1_000_000
IMG = StoredImage(key="k/0.png", width=8, height=8, content_type="image/png")

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
            "limited": {
                "requests_per_minute": 100,
                "limits": [{"models": ["m"], "per_minute": 50, "per_day": 500}],
            },
        },
    }
)
MODEL = CATALOG.models["m"]
TIER = CATALOG.tier("limited")


@pytest.fixture()
def client(redis_server) -> redis.Redis:
    """An emptied database of the test Redis that no running worker's reaper looks at."""
    client = connect(redis_server.url.rsplit("/", 1)[0] + "/13")
    client.flushdb()
    return client


@pytest.fixture()
def accounts(client: redis.Redis) -> Accounts:
    return Accounts(client, CATALOG)


@pytest.fixture()
def store(client: redis.Redis) -> JobStore:
    return JobStore(client, retention_seconds=600)


def _key(accounts: Accounts, *, unlimited: bool = False) -> ApiKey:
    key = ApiKey(id="key_" + secrets.token_hex(6), name="settle", created=0, unlimited=unlimited)
    if not unlimited:
        accounts.set_balance(key.id, START)
    return key


def _admit(
    accounts: Accounts,
    store: JobStore,
    key: ApiKey,
    n: int,
    *,
    idempotency: Idempotency | None = None,
) -> tuple[Job, int | None, str | None]:
    """Admit ``n`` images of "m" as the API does: (job, balance after, duplicate_of)."""
    now = time.time()
    job = Job(
        id=new_job_id(),
        key_id=key.id,
        model=MODEL.id,
        family="local",
        queue="local",
        request={"prompt": "x", "n": n},
        created=now,
        deadline=now + 60,
    )
    admission = accounts.admit(
        key,
        TIER,
        MODEL,
        n,
        job_key=store.record_key(job.id),
        job_id=job.id,
        spec_json=store.spec_json(job),
        deadline=job.deadline,
        ttl=600,
        now=now,
        idempotency=idempotency,
    )
    return job, admission.balance_micros, admission.duplicate_of


def _ledger(client: redis.Redis, key: ApiKey) -> list[tuple[str, int, int]]:
    """(kind, images, amount) of each ledger entry, oldest first."""
    return [
        (f["kind"], int(f["images"]), int(f["amount"]))
        for _, f in client.xrange(LEDGER.format(key.id))
    ]


def test_a_job_delivering_k_of_n_images_pays_for_k_gets_the_rest_back_and_counts_k(
    client: redis.Redis, accounts: Accounts, store: JobStore
) -> None:
    key = _key(accounts)
    job, balance, _ = _admit(accounts, store, key, 3)
    assert balance == START - 3 * PRICE
    claim = store.claim(job.id)
    assert store.succeed(job.id, claim.attempt, [IMG, IMG])
    assert _ledger(client, key)[-3:] == [
        ("reserve", 3, -3 * PRICE),
        ("settle", 2, -2 * PRICE),
        ("refund", 1, PRICE),
    ]
    assert accounts.balance(key.id) == START - 2 * PRICE
    [row] = accounts.usage(key.id)
    assert (row.model, row.images, row.amount_micros) == ("m", 2, 2 * PRICE)


def test_more_images_than_asked_are_paid_and_counted_as_asked(
    client: redis.Redis, accounts: Accounts, store: JobStore
) -> None:
    key = _key(accounts)
    job, _, _ = _admit(accounts, store, key, 2)
    claim = store.claim(job.id)
    assert store.succeed(job.id, claim.attempt, [IMG, IMG, IMG])
    assert _ledger(client, key)[-1] == ("settle", 2, -2 * PRICE)
    assert accounts.balance(key.id) == START - 2 * PRICE
    [row] = accounts.usage(key.id)
    assert (row.images, row.amount_micros) == (2, 2 * PRICE)


def test_a_failed_job_is_refunded_in_full_once_whatever_ends_it_later(
    client: redis.Redis, accounts: Accounts, store: JobStore
) -> None:
    key = _key(accounts)
    job, _, _ = _admit(accounts, store, key, 2)
    claim = store.claim(job.id)
    assert store.cancel(job.id)
    # A late success of the run, a second cancel, the overdue check: none ends it again.
    assert not store.succeed(job.id, claim.attempt, [IMG])
    assert not store.cancel(job.id)
    assert not store.expire_if_overdue(job.id, now=job.deadline + 1)
    kinds = [kind for kind, _, _ in _ledger(client, key)]
    assert kinds == ["adjust", "reserve", "settle", "refund"]  # the balance set, then the job
    assert accounts.balance(key.id) == START


def test_an_unlimited_key_is_neither_charged_nor_refunded(
    client: redis.Redis, accounts: Accounts, store: JobStore
) -> None:
    key = _key(accounts, unlimited=True)
    job, balance, _ = _admit(accounts, store, key, 2)
    assert balance is None
    assert accounts.balance(key.id) == 0
    claim = store.claim(job.id)
    assert store.succeed(job.id, claim.attempt, [IMG])  # one of two: the other "refunded"
    assert accounts.balance(key.id) == 0  # no money appears from the refund either
    [row] = accounts.usage(key.id)
    assert row.images == 1  # usage is still counted


def test_window_counters_expire_when_their_window_ends(
    client: redis.Redis, accounts: Accounts, store: JobStore
) -> None:
    key = _key(accounts)
    before = time.time()
    _admit(accounts, store, key, 1)
    windows = windows_for(key, TIER, MODEL, 1, before)
    assert len(windows) == 3  # images per minute, per day; account calls per minute
    for window in windows:
        assert window_used(client, window, time.time()) == 1
        ttl = client.ttl(window.key)
        assert 0 < ttl <= window.reset_at - before + 2, (window.name, ttl)


def test_an_idempotency_key_makes_the_second_admission_a_duplicate_charged_nothing(
    client: redis.Redis, accounts: Accounts, store: JobStore
) -> None:
    key = _key(accounts)
    idem = Idempotency(redis_key=f"ig:idem:{key.id}:order-1", value="job-1|hash", ttl=600)
    _, first_balance, first_dup = _admit(accounts, store, key, 1, idempotency=idem)
    assert first_dup is None and first_balance == START - PRICE
    _, second_balance, second_dup = _admit(accounts, store, key, 1, idempotency=idem)
    assert second_dup == "job-1|hash" and second_balance is None
    assert accounts.balance(key.id) == START - PRICE
    assert 0 < client.ttl(idem.redis_key) <= 600


def test_releasing_an_idempotency_key_leaves_another_requests_value_alone(
    client: redis.Redis, accounts: Accounts, store: JobStore
) -> None:
    key = _key(accounts)
    idem = Idempotency(redis_key=f"ig:idem:{key.id}:order-2", value="job-2|hash", ttl=600)
    _admit(accounts, store, key, 1, idempotency=idem)
    other = Idempotency(redis_key=idem.redis_key, value="job-3|hash", ttl=600)
    assert accounts.release_idempotency(other) is False
    assert client.get(idem.redis_key) == "job-2|hash"
    assert accounts.release_idempotency(idem) is True
    assert client.get(idem.redis_key) is None


@pytest.mark.parametrize("text", ["1000000000.000001", "1000000001", "-1000000001", "1e30"])
def test_amounts_beyond_a_billion_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="at most"):
        parse_money(text)


def test_an_amount_of_a_billion_is_accepted() -> None:
    assert parse_money("1000000000") == 1_000_000_000 * 1_000_000
    assert parse_money("-1000000000") == -1_000_000_000 * 1_000_000


@pytest.fixture(autouse=True)
def _no_leftovers(client: redis.Redis) -> Iterator[None]:
    yield
    client.flushdb()


def test_the_price_of_the_request_is_charged_and_the_upstream_cost_recorded_beside_it(
    client: redis.Redis, accounts: Accounts, store: JobStore
) -> None:
    """Admission charges the request's own price (by quality and size, worked out by the
    API); the job's end records what the upstream charged in the ledger and the usage."""
    key = _key(accounts)
    now = time.time()
    job = Job(
        id=new_job_id(), key_id=key.id, model="m", family="local", queue="local",
        request={"prompt": "x", "n": 3}, created=now, deadline=now + 60,
    )  # fmt: skip
    accounts.admit(
        key, TIER, MODEL, 3, job_key=store.record_key(job.id), job_id=job.id,
        spec_json=store.spec_json(job), deadline=job.deadline, ttl=600, now=now,
        unit_price=25_000,
    )  # fmt: skip
    assert accounts.balance(key.id) == START - 75_000
    stored = store.get(job.id)
    assert stored is not None and (stored.unit_price, stored.charge) == (25_000, 75_000)
    claim = store.claim(job.id)
    assert store.succeed(job.id, claim.attempt, [IMG, IMG], cost=(36_000, "upstream"))
    settle = [f for _, f in client.xrange(LEDGER.format(key.id)) if f["kind"] == "settle"]
    assert [(f["amount"], f["cost"], f["serving"]) for f in settle] == [("-50000", "36000", "m")]
    [row] = accounts.usage(key.id)
    assert (row.amount_micros, row.cost_micros, row.margin_micros) == (50_000, 36_000, 14_000)
    done = store.get(job.id)
    assert done is not None and (done.charge, done.cost) == (50_000, 36_000)


def test_settling_names_the_key_for_the_sink(
    client: redis.Redis, accounts: Accounts, store: JobStore
) -> None:
    """The entries a settlement writes are moved to SQL only if the key is pending."""
    key = _key(accounts)
    job, _, _ = _admit(accounts, store, key, 1)
    client.srem(PENDING, key.id)  # as if the sink had moved the admission's entries
    assert store.succeed(job.id, store.claim(job.id).attempt, [IMG])
    assert client.sismember(PENDING, key.id)
