"""Limits a request can meet, free images, budgets and end users (shared.billing), against
a real redis-server: the admission script and the settlement of the job scripts.

What must hold (issue 17, items 4-7): a request larger than a window's whole limit is a
400 naming the limit and the largest n, never a 429; per-minute windows slide (no double
burst at a minute boundary); a tier's free images are used before the balance; a key's
spending caps per UTC day and month refuse with 402; OpenAI's ``user`` is recorded and
counted in the tier's per-end-user windows. Each of a budget, a free allowance and a
sliding window admits exactly its quota out of 500 concurrent requests.

Times are passed in (``now=``): noon UTC of a fixed day far in the future, so no window
ends while a test runs, whatever the machine's load or the hour.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from shared import billing
from shared.billing import FREE, LEDGER, SPEND, USER_USAGE, Accounts, window_used, windows_for
from shared.catalog import Catalog, CatalogError, parse_catalog
from shared.errors import (
    DAILY_BUDGET_EXCEEDED,
    MONTHLY_BUDGET_EXCEEDED,
    N_EXCEEDS_IMAGES_PER_DAY,
    N_EXCEEDS_IMAGES_PER_MINUTE,
    N_EXCEEDS_USER_IMAGES_PER_MINUTE,
    GatewayError,
    InsufficientBalance,
    InvalidRequest,
    RateLimited,
    UpstreamError,
)
from shared.jobs import Job, JobStore, StoredImage, new_job_id
from shared.keys import ApiKey, KeyStore
from shared.redis_client import connect

NOON = 4_102_488_000.0  # 2100-01-01T12:00:00Z
DAY = "2100-01-01"
PRICE = 10_000  # micro-units per image of the model "m"
QUOTA = 37  # what each concurrency test's limit admits
IMG = StoredImage(key="k/0.png", width=8, height=8, content_type="image/png")

MODEL_ENTRY = {
    "family": "local",
    "price": "0.010",
    "size_rule": {"kind": "max_side", "min": 16, "max": 64},
    "default_size": "32x32",
    "max_n": 10,
}
CATALOG: Catalog = parse_catalog(
    {
        "families": {"local": {}},
        "models": [{**MODEL_ENTRY, "id": id_} for id_ in ("m", "other")],
        "tiers": {
            "small": {
                "requests_per_minute": 0,
                "limits": [{"models": ["m"], "per_minute": 2, "per_day": 3}],
            },
            "sliding": {
                "requests_per_minute": 0,
                "limits": [{"models": ["m"], "per_minute": QUOTA}],
            },
            "free": {
                "requests_per_minute": 0,
                "limits": [{"models": ["m", "other"]}],
                "free_images": {"per_day": QUOTA, "models": ["m"]},
            },
            "open": {"requests_per_minute": 0, "all_models": True},
            "users": {
                "requests_per_minute": 0,
                "all_models": True,
                "per_user": {"per_minute": 2, "per_day": 3},
            },
        },
    }
)
MODEL = CATALOG.models["m"]


@pytest.fixture(scope="module")
def client(redis_server) -> redis.Redis:
    """A database of the test Redis that no running worker's reaper looks at."""
    return connect(redis_server.url.rsplit("/", 1)[0] + "/10", max_connections=200)


@pytest.fixture()
def key(client: redis.Redis) -> Iterator[ApiKey]:
    api_key = ApiKey(id="key_lim_" + secrets.token_hex(6), name="limits", created=0)
    yield api_key
    leftovers = list(client.scan_iter(f"ig:*{api_key.id}*"))
    if leftovers:
        client.delete(*leftovers)


def _admit(
    accounts: Accounts,
    key: ApiKey,
    tier: str,
    n: int,
    now: float = NOON,
    *,
    model: str = "m",
    user: str | None = None,
) -> tuple[str, int]:
    """Admit ``n`` images as the API does: (job id, images of it that were free)."""
    job = Job(
        id=new_job_id(),
        key_id=key.id,
        model=model,
        family="local",
        queue="local",
        request={"prompt": "x", "n": n},
        created=now,
        deadline=now + 30,
    )
    job_id = job.id
    admission = accounts.admit(
        key,
        CATALOG.tier(tier),
        CATALOG.models[model],
        n,
        job_key=JobStore.record_key(job_id),
        job_id=job_id,
        spec_json=JobStore.spec_json(job),
        deadline=now + 30,
        ttl=600,
        now=now,
        user=user,
    )
    return job_id, admission.free_images


def _end(store: JobStore, job_id: str, delivered: int) -> None:
    """The job ends with ``delivered`` images (0: it failed)."""
    claim = store.claim(job_id)
    if delivered:
        assert store.succeed(job_id, claim.attempt, [IMG] * delivered)
    else:
        assert store.fail(job_id, claim.attempt, UpstreamError("down"))


# -- a request larger than a whole window: 400, never 429 ----------------------------------


@pytest.mark.parametrize(
    ("tier", "n", "code", "max_n", "user"),
    [
        ("small", 3, N_EXCEEDS_IMAGES_PER_MINUTE, 2, None),
        ("users", 3, N_EXCEEDS_USER_IMAGES_PER_MINUTE, 2, "alice"),
    ],
)
def test_more_images_than_a_whole_window_is_a_400_naming_the_largest_n(
    client: redis.Redis, key: ApiKey, tier: str, n: int, code: str, max_n: int, user: str | None
) -> None:
    accounts = Accounts(client, CATALOG)
    accounts.set_balance(key.id, 100 * PRICE)
    with pytest.raises(InvalidRequest) as refused:
        _admit(accounts, key, tier, n, user=user)
    error = refused.value
    assert (error.status, error.code, error.param) == (400, code, "n")
    assert error.extra["max_n"] == max_n
    assert f"n <= {max_n}" in error.message
    assert accounts.balance(key.id) == 100 * PRICE  # nothing was admitted
    # only the balance's own entry (set_balance writes an `adjust`), no reserve
    assert [f["kind"] for _, f in client.xrange(LEDGER.format(key.id))] == ["adjust"]
    _admit(accounts, key, tier, max_n, user=user)  # the largest n allowed is admitted


def test_the_day_limit_names_itself_when_it_is_the_smaller_one() -> None:
    catalog = parse_catalog(
        {
            "families": {"local": {}},
            "models": [{**MODEL_ENTRY, "id": "m"}],
            "tiers": {"t": {"limits": [{"models": ["m"], "per_minute": 9, "per_day": 4}]}},
        }
    )
    key = ApiKey(id="k", name="k", created=0)
    windows = windows_for(key, catalog.tier("t"), catalog.models["m"], 5, NOON)
    too_small = [w for w in windows if w.amount > w.limit]
    assert [(w.code, w.limit) for w in too_small] == [(N_EXCEEDS_IMAGES_PER_DAY, 4)]


# -- sliding per-minute windows ------------------------------------------------------------


def test_no_double_burst_across_a_minute_boundary(client: redis.Redis, key: ApiKey) -> None:
    """2 a minute: 2 images at 12:00:59 leave no room at 12:01:01 (a fixed window would
    have opened a new minute), and room again once those two are 60 s old."""
    accounts = Accounts(client, CATALOG)
    accounts.set_balance(key.id, 100 * PRICE)
    _admit(accounts, key, "small", 2, NOON + 59)
    with pytest.raises(RateLimited) as refused:
        _admit(accounts, key, "small", 1, NOON + 61)
    assert refused.value.extra["limit"] == "images per minute for m"
    # Retry-After says when the oldest image leaves the window: 12:01:59 -> 58 s.
    assert refused.value.headers["Retry-After"] == "58"
    _admit(accounts, key, "small", 1, NOON + 119.5)  # 60.5 s later: both left


def test_a_sliding_window_admits_exactly_its_limit_of_500_concurrent_requests(
    client: redis.Redis, key: ApiKey
) -> None:
    accounts = Accounts(client, CATALOG)
    accounts.set_balance(key.id, 1000 * PRICE)
    outcomes = _burst(lambda: _admit(accounts, key, "sliding", 1))
    assert outcomes.count("ok") == QUOTA, outcomes
    assert outcomes.count("RateLimited") == 500 - QUOTA
    [window] = windows_for(key, CATALOG.tier("sliding"), MODEL, 1, NOON)
    assert window_used(client, window, NOON) == QUOTA
    assert accounts.balance(key.id) == (1000 - QUOTA) * PRICE


def _burst(one) -> list[str]:
    """500 calls of ``one`` from 64 threads at once: "ok" or the error class of each."""

    def attempt(_: int) -> str:
        try:
            one()
        except GatewayError as exc:
            return type(exc).__name__
        return "ok"

    with ThreadPoolExecutor(max_workers=64) as pool:
        return list(pool.map(attempt, range(500)))


# -- images of a job that did not deliver them, and the windows ------------------------------


@pytest.mark.parametrize("return_failed", [False, True])
def test_whether_a_failed_jobs_images_go_back_to_the_windows_is_the_setting(
    client: redis.Redis, key: ApiKey, return_failed: bool
) -> None:
    accounts = Accounts(client, CATALOG, return_failed_images=return_failed)
    store = JobStore(client, retention_seconds=600)
    accounts.set_balance(key.id, 100 * PRICE)
    job_id, _ = _admit(accounts, key, "small", 2, time_now := NOON)
    _end(store, job_id, delivered=0)
    windows = windows_for(key, CATALOG.tier("small"), MODEL, 1, time_now)
    used = {w.name: window_used(client, w, time_now) for w in windows}
    expected = 0 if return_failed else 2
    assert used == {"images per minute for m": expected, "images per day for m": expected}
    assert accounts.balance(key.id) == 100 * PRICE  # the money always comes back
    # One of two delivered: only the other one may go back.
    job_id, _ = _admit(accounts, key, "small", 1 if not return_failed else 2, time_now + 61)
    _end(store, job_id, delivered=1)
    used = {w.name: window_used(client, w, time_now + 61) for w in windows}
    assert used["images per minute for m"] == 1


# -- free images ---------------------------------------------------------------------------


def test_free_images_are_used_before_the_balance_and_only_for_their_models(
    client: redis.Redis, key: ApiKey
) -> None:
    accounts = Accounts(client, CATALOG)
    store = JobStore(client, retention_seconds=600)
    accounts.set_balance(key.id, 3 * PRICE)
    client.set(FREE.format(key.id, "21000101"), QUOTA - 2)  # 2 free images left today
    _, free = _admit(accounts, key, "free", 3)  # 2 free, 1 paid
    assert free == 2 and accounts.balance(key.id) == 2 * PRICE
    _, free = _admit(accounts, key, "free", 1, model="other")  # not a free model
    assert free == 0 and accounts.balance(key.id) == PRICE
    job_id, free = _admit(accounts, key, "free", 1)
    assert free == 0 and accounts.balance(key.id) == 0
    with pytest.raises(InsufficientBalance):
        _admit(accounts, key, "free", 1)
    _end(store, job_id, delivered=0)  # refunded: the paid image comes back
    assert accounts.balance(key.id) == PRICE
    status = accounts.free_status(ApiKey(id=key.id, name="", created=0, tier="free"), NOON)
    assert (status.per_day, status.remaining) == (QUOTA, 0)
    # The next UTC day has its free images again.
    _, free = _admit(accounts, key, "free", 2, NOON + 86_400)
    assert free == 2 and accounts.balance(key.id) == PRICE


def test_free_images_not_delivered_go_back_and_the_delivered_ones_are_free(
    client: redis.Redis, key: ApiKey
) -> None:
    accounts = Accounts(client, CATALOG)
    store = JobStore(client, retention_seconds=600)
    accounts.set_balance(key.id, 10 * PRICE)
    client.set(FREE.format(key.id, "21000101"), QUOTA - 2)
    job_id, free = _admit(accounts, key, "free", 4)  # 2 free + 2 paid
    assert free == 2 and accounts.balance(key.id) == 8 * PRICE
    _end(store, job_id, delivered=1)  # the one delivered was free: all money back
    assert accounts.balance(key.id) == 10 * PRICE
    assert int(client.get(FREE.format(key.id, "21000101"))) == QUOTA - 1
    kinds = [(f["kind"], f["amount"], f["free"] if "free" in f else "") for _, f in
             client.xrange(LEDGER.format(key.id))][1:]  # after set_balance's adjust  # fmt: skip
    assert kinds[0] == ("reserve", str(-2 * PRICE), "2")
    assert kinds[1][:2] == ("settle", "0") and kinds[2][:2] == ("refund", str(2 * PRICE))


def test_free_images_admit_exactly_their_number_of_500_concurrent_requests(
    client: redis.Redis, key: ApiKey
) -> None:
    accounts = Accounts(client, CATALOG)  # balance 0: only free images can be admitted
    outcomes = _burst(lambda: _admit(accounts, key, "free", 1))
    assert outcomes.count("ok") == QUOTA
    assert outcomes.count("InsufficientBalance") == 500 - QUOTA
    assert int(client.get(FREE.format(key.id, "21000101"))) == QUOTA
    assert accounts.balance(key.id) == 0


# -- budgets ---------------------------------------------------------------------------------


def test_a_daily_cap_refuses_with_402_and_a_refund_makes_room_again(
    client: redis.Redis, key: ApiKey
) -> None:
    capped = ApiKey(id=key.id, name="", created=0, budget_day_micros=3 * PRICE)
    accounts = Accounts(client, CATALOG)
    store = JobStore(client, retention_seconds=600)
    accounts.set_balance(key.id, 100 * PRICE)
    job_id, _ = _admit(accounts, capped, "open", 3)
    with pytest.raises(InsufficientBalance) as refused:
        _admit(accounts, capped, "open", 1)
    assert (refused.value.status, refused.value.code) == (402, DAILY_BUDGET_EXCEEDED)
    assert accounts.balance(key.id) == 97 * PRICE
    _end(store, job_id, delivered=2)  # one image refunded: one image of room
    _admit(accounts, capped, "open", 1)
    with pytest.raises(InsufficientBalance):
        _admit(accounts, capped, "open", 1)
    # The next UTC day starts from nothing spent.
    _admit(accounts, capped, "open", 3, NOON + 86_400)


def test_a_monthly_cap_counts_across_days(client: redis.Redis, key: ApiKey) -> None:
    capped = ApiKey(id=key.id, name="", created=0, budget_month_micros=2 * PRICE)
    accounts = Accounts(client, CATALOG)
    accounts.set_balance(key.id, 100 * PRICE)
    _admit(accounts, capped, "open", 2)
    with pytest.raises(InsufficientBalance) as refused:
        _admit(accounts, capped, "open", 1, NOON + 86_400)
    assert refused.value.code == MONTHLY_BUDGET_EXCEEDED
    month = SPEND.format(key.id, "m:210001")
    assert int(client.get(month)) == 2 * PRICE
    assert 0 < client.ttl(month) <= 31 * 86_400 + 2


def test_a_budget_admits_exactly_its_cap_of_500_concurrent_requests(
    client: redis.Redis, key: ApiKey
) -> None:
    capped = ApiKey(id=key.id, name="", created=0, budget_day_micros=QUOTA * PRICE)
    accounts = Accounts(client, CATALOG)
    accounts.set_balance(key.id, 1000 * PRICE)
    outcomes = _burst(lambda: _admit(accounts, capped, "open", 1))
    assert outcomes.count("ok") == QUOTA
    assert outcomes.count("InsufficientBalance") == 500 - QUOTA
    assert int(client.get(SPEND.format(key.id, "d:21000101"))) == QUOTA * PRICE
    assert accounts.balance(key.id) == (1000 - QUOTA) * PRICE


def test_the_key_store_keeps_the_caps(client: redis.Redis) -> None:
    store = KeyStore(client)
    _, created = store.create("budgeted", tier="open")
    key = store.set_budget(created.id, day_micros=5 * PRICE)
    assert (key.budget_day_micros, key.budget_month_micros) == (5 * PRICE, 0)
    key = store.set_budget(created.id, month_micros=50 * PRICE)
    assert (key.budget_day_micros, key.budget_month_micros) == (5 * PRICE, 50 * PRICE)
    assert store.set_budget(created.id, day_micros=0).budget_day_micros == 0
    with pytest.raises(ValueError):
        store.set_budget(created.id, day_micros=-1)


# -- end users -------------------------------------------------------------------------------


def test_end_users_are_limited_apart_and_usage_is_grouped_by_them(
    client: redis.Redis, key: ApiKey
) -> None:
    accounts = Accounts(client, CATALOG)
    store = JobStore(client, retention_seconds=600)
    accounts.set_balance(key.id, 100 * PRICE)
    alice, _ = _admit(accounts, key, "users", 2, user="alice")
    with pytest.raises(RateLimited) as refused:
        _admit(accounts, key, "users", 1, user="alice")
    assert refused.value.extra["limit"] == "images per minute for this end user"
    bob, _ = _admit(accounts, key, "users", 1, user="bob")
    anonymous, _ = _admit(accounts, key, "users", 2)  # no user: no per-user window
    assert client.hget(JobStore.record_key(alice), "user") == "alice"
    for job_id, delivered in ((alice, 2), (bob, 1), (anonymous, 2)):
        _end(store, job_id, delivered)
    rows = {(r.user, r.images, r.amount_micros) for r in accounts.usage_by_user(key.id, NOON)}
    assert rows == {("alice", 2, 2 * PRICE), ("bob", 1, PRICE)}
    assert sum(r.images for r in accounts.usage(key.id)) == 5  # the model rows stay whole
    entries = client.xrange(LEDGER.format(key.id))
    users = {f.get("user") for _, f in entries if f["kind"] != "adjust"}  # not set_balance's
    assert users == {"alice", "bob", ""}
    # The per-user windows are keyed by a bounded hash of the user and expire, and so
    # does the day's usage by user.
    for name in [*client.scan_iter(f"ig:rl:{key.id}:u:*"), USER_USAGE.format(key.id, DAY)]:
        assert len(name) < 100 and client.ttl(name) > 0


def test_a_days_usage_by_user_names_at_most_so_many_users(
    client: redis.Redis, key: ApiKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client sending a new ``user`` each time cannot grow Redis: past the day's
    USER_USAGE_MOST users, the others count under '*'."""
    monkeypatch.setattr(billing, "USER_USAGE_MOST", 2)
    accounts = Accounts(client, CATALOG)
    store = JobStore(client, retention_seconds=600)
    accounts.set_balance(key.id, 100 * PRICE)
    for user in ("u1", "u2", "u3", "u4", "u1"):
        job_id, _ = _admit(accounts, key, "open", 1, user=user)
        _end(store, job_id, 1)
    rows = {r.user: r.images for r in accounts.usage_by_user(key.id, NOON)}
    assert rows == {"u1": 2, "u2": 1, "*": 2}


# -- the catalog -------------------------------------------------------------------------------


@pytest.mark.fast
def test_the_shipped_free_tier_grants_seed_000s_free_turbo_images() -> None:
    from shared.catalog import load_catalog

    free = load_catalog().tier("free")
    assert free.free_images.per_day == 5 and free.free_images.covers("image-turbo")
    assert not free.free_images.covers("local/testcard")


@pytest.mark.fast
def test_free_images_of_a_model_outside_the_tier_are_refused() -> None:
    with pytest.raises(CatalogError, match="free_images"):
        parse_catalog(
            {
                "families": {"local": {}},
                "models": [{**MODEL_ENTRY, "id": "m"}],
                "tiers": {"t": {"limits": [], "free_images": {"per_day": 1, "models": ["m"]}}},
            }
        )


def test_the_cli_sets_and_shows_a_keys_caps(redis_server) -> None:
    from click.testing import CliRunner

    from shared.cli import main

    env = {"IMAGEGATE_REDIS_URL": redis_server.url}
    _, created = KeyStore(connect(redis_server.url)).create("cli-budget", tier="free")
    runner = CliRunner()
    out = runner.invoke(main, ["keys", "budget", created.id, "--day", "5.00"], env=env)
    assert out.exit_code == 0, out.output
    assert f"{created.id} day: cap 5.000000, spent 0.000000" in out.output
    assert f"{created.id} month: cap none" in out.output
    out = runner.invoke(main, ["keys", "budget", created.id, "--day", "none"], env=env)
    assert "day: cap none" in out.output
    out = runner.invoke(main, ["keys", "budget", created.id, "--month", "-1"], env=env)
    assert out.exit_code != 0
    out = runner.invoke(main, ["keys", "usage", created.id], env=env)
    assert "free images today: 5 of 5 left" in out.output  # the shipped free tier's
