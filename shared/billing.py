"""Limits, balances and the usage ledger, kept exact in Redis.

Money is integer micro-units of currency (1 unit = 1,000,000), never floats.

**Admission** (:meth:`Accounts.admit`) is one Lua script, ``shared/lua/admit.lua``,
that, atomically: checks every rate-limit window of the request (per-model
images per minute and per UTC day, account calls per minute), checks the
balance, and only if all pass increments the windows, deducts ``price x n``,
creates the job record (its fields: :func:`shared.jobrecord.new_record`) and
appends a ``reserve`` entry to the ledger. Because it is a single
script, any number of web processes admit exactly as many images as the
limits and the balance allow, and a refused request changes nothing.
The job's times are re-based on Redis' clock there: ``created`` is Redis'
``TIME`` and the deadline and first watch time keep their distance from the
web host's ``now``, so a web host whose clock is off neither shortens nor
lengthens a job's budget as the workers and reapers see it. (The rate-limit
windows and the usage day still follow the web host's clock.)

**Settlement** happens inside the job's terminal transition (the job scripts
in ``shared/lua/`` include ``_settle.lua``): the cost of images not
delivered is refunded, a failed or timed-out job is refunded in full, and the
ledger gets ``settle``/``refund`` entries. A job becomes terminal exactly
once, so a redelivered task can neither charge nor refund twice.

**Windows**: a per-minute limit is a *sliding* window: a sorted set with one
member per image (``<job id>:<i>``) scored with when it was admitted; a request
fits if the images of the last 60 seconds plus its own are at most the limit, so
no two bursts meet at a minute boundary (a fixed window let a client send twice
the limit across one). It holds at most ``limit`` members and expires 61 s after
the last one, and is exact as only the script changes it. Per-day limits count
the UTC day in a counter that expires with it. A request that asks for more
images than a window's whole limit could never be admitted: it gets 400 (code
:data:`shared.errors.N_EXCEEDS_IMAGES_PER_MINUTE` and the like, ``max_n`` the
largest n allowed), never a 429. The ``limits`` library was considered: its
Redis storage takes a ``cost`` but checks and consumes one window at a time, so
a request that passes the minute window and fails the day window would still
have consumed the minute; nor can it deduct a balance in the same atomic step.
One script does all of it.

**Free images**: a tier's ``free_images`` (images per UTC day, for some or all
of its models) are used before the balance in the same script: the job is
charged ``unit_price`` only for its images beyond the free ones left today.

**Budgets**: a key may carry a spending cap per UTC day and per UTC month
(``imagegate keys budget``); the script counts every charge in a counter per
period (expiring with it) and refuses with 402 (``daily_budget_exceeded`` /
``monthly_budget_exceeded``) a request that would go beyond a cap.

**End users**: OpenAI's ``user`` is kept on the job record, in its ledger
entries and in a usage hash per key and UTC day (``ig:usage-user:<key id>:<day>``,
kept :data:`USER_USAGE_DAYS` days, at most :data:`USER_USAGE_MOST` users a day,
the rest under ``*``), so usage can be grouped by it while a client sending a new
``user`` with every request cannot grow Redis without bound; a tier's
``per_user`` limits are windows keyed by a hash of it (so bounded in length) that
expire like the others.

**What settlement gives back** for images not delivered (the record's ``returns``,
see ``_settle.lua``): always the free images and the spending counters (as the
money is refunded); the rate-limit windows only if
``IMAGEGATE_LIMITS_RETURN_FAILED_IMAGES`` is on — by default an image that
failed still counts in the windows, as the upstream's capacity was used.

Keys::

    ig:balance:<key id>                      integer micro-units
    ig:rl:<key id>:<model | *>:m             sliding window (zset of admitted images)
    ig:rl:<key id>:<model>:d:<YYYYMMDD>       day window counters
    ig:rl:<key id>:u:<user hash>:<m | d:..>  per-end-user windows
    ig:free:<key id>:<YYYYMMDD>              free images used that UTC day
    ig:spend:<key id>:<d:YYYYMMDD | m:YYYYMM>  micro-units charged that period
    ig:ledger:<key id>                       stream: kind, job, model, images, amount, free,
                                             user, ts (settle/refund: + day; settle: + cost,
                                             serving), not yet in SQL
    ig:ledger:pending                        set of key ids whose stream has entries
    ig:usage-user:<key id>:<YYYY-MM-DD>      hash "<user>|<images|amount>" -> total

The ledger stream holds only the entries the sink (:mod:`shared.sink`) has not
yet moved to the SQL system of record; history (usage by day, past entries) is
read from SQL merged with these (:mod:`shared.history`). Entry kinds and their
effect on the balance: ``reserve`` (-cost, at admission), ``refund`` (+ what was
not delivered), ``topup`` (+), ``adjust`` (+/- when an operator sets a balance);
``settle`` (-spent) records what a job cost and moves no money itself.
"""

from __future__ import annotations

import calendar
import hashlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import redis

from shared import errors, jobrecord, lua, metrics
from shared.catalog import MICROS_PER_UNIT, Catalog, Model, Tier
from shared.errors import InsufficientBalance, InvalidRequest, PermissionDenied, RateLimited
from shared.keys import ApiKey

BALANCE = "ig:balance:{}"
LEDGER = "ig:ledger:{}"
PENDING = "ig:ledger:pending"  # key ids whose ledger stream has entries the sink must move
# Entry kinds that move the balance (``settle`` only records a job's cost).
MONEY_KINDS = frozenset({"reserve", "refund", "topup", "adjust"})


# Largest amount one command takes: balances are 64-bit counts of micro-units in
# Redis (INCRBY), about 9.2e12 units; a larger one failed half-way (a key created
# without its balance, a traceback).
MAX_AMOUNT = Decimal(1_000_000_000)


def parse_money(text: str) -> int:
    """``"1.50"`` -> 1_500_000 micro-units; ValueError for anything else."""
    try:
        value = Decimal(text.strip())
    except (InvalidOperation, AttributeError) as exc:
        raise ValueError(f"{text!r} is not an amount of money") from exc
    if not value.is_finite():
        raise ValueError(f"{text!r} is not an amount of money")
    if abs(value) > MAX_AMOUNT:
        raise ValueError(f"{text!r}: at most {MAX_AMOUNT} per amount")
    micros = value * MICROS_PER_UNIT
    if micros != micros.to_integral_value():
        raise ValueError(f"{text!r}: at most 6 decimals")
    return int(micros)


def format_money(micros: int) -> str:
    return f"{Decimal(micros) / MICROS_PER_UNIT:.6f}"


def format_duration(seconds: float) -> str:
    """OpenAI's style for ``x-ratelimit-reset-*``: ``250ms``, ``37s``, ``1m30s``, ``5h2m0s``."""
    if seconds < 1:
        return f"{max(0, int(seconds * 1000))}ms"
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


MINUTE = 60  # seconds of a sliding per-minute window
USER_USAGE = "ig:usage-user:{}:{}"  # key id, YYYY-MM-DD
USER_USAGE_DAYS = 35  # days a day's usage by end user is kept
USER_USAGE_MOST = 10_000  # end users a day's usage hash names; the rest count under "*"
SPEND = "ig:spend:{}:{}"  # key id, "d:YYYYMMDD" | "m:YYYYMM"
FREE = "ig:free:{}:{}"  # key id, YYYYMMDD


@dataclass(frozen=True)
class Window:
    """One rate-limit window a request must fit in."""

    name: str  # what the client is told, e.g. "images per minute for dall-e-3"
    key: str
    limit: int
    amount: int
    reset_at: float  # unix time the window ends (a sliding one: when it is empty again)
    span: int = 0  # > 0: a sliding window of this many seconds; 0: a counter
    code: str = ""  # the 400's code for a request larger than the whole limit
    images: bool = True  # counts images (given back on failure if so set), not calls

    @property
    def ttl(self) -> int:
        if self.span:
            return self.span + 1
        return max(1, int(self.reset_at - time.time()) + 1)

    def argument(self, now: float) -> dict[str, int | str]:
        """Its entry of the admission script's ``windows``."""
        return {
            "limit": self.limit,
            "amount": self.amount,
            "ttl": self.ttl,
            "span": self.span,
            "since": repr(now - self.span),
        }


@dataclass(frozen=True)
class LimitStatus:
    """What goes into the x-ratelimit-* headers: the tightest window."""

    limit: int
    remaining: int
    reset_seconds: float

    def headers(self) -> dict[str, str]:
        return {
            "x-ratelimit-limit-requests": str(self.limit),
            "x-ratelimit-remaining-requests": str(max(0, self.remaining)),
            "x-ratelimit-reset-requests": format_duration(self.reset_seconds),
        }


def _day(now: float) -> str:
    return time.strftime("%Y%m%d", time.gmtime(now))


def _day_end(now: float) -> int:
    return (int(now // 86400) + 1) * 86400


def _month_end(now: float) -> int:
    t = time.gmtime(now)
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return calendar.timegm((year, month, 1, 0, 0, 0, 0, 0, 0))


def user_tag(user: str) -> str:
    """The part of a per-end-user window's key that names the user: bounded in length."""
    return hashlib.sha256(user.encode("utf-8")).hexdigest()[:32]


def windows_for(
    key: ApiKey, tier: Tier, model: Model, n: int, now: float, user: str | None = None
) -> list[Window]:
    day = _day(now)
    limit = tier.limit_for(model.id)
    windows = []
    if limit.per_minute:
        windows.append(
            Window(
                f"images per minute for {model.id}",
                f"ig:rl:{key.id}:{model.id}:m",
                limit.per_minute,
                n,
                now + MINUTE,
                span=MINUTE,
                code=errors.N_EXCEEDS_IMAGES_PER_MINUTE,
            )
        )
    if limit.per_day:
        windows.append(
            Window(
                f"images per day for {model.id}",
                f"ig:rl:{key.id}:{model.id}:d:{day}",
                limit.per_day,
                n,
                _day_end(now),
                code=errors.N_EXCEEDS_IMAGES_PER_DAY,
            )
        )
    if user and tier.per_user.per_minute:
        windows.append(
            Window(
                "images per minute for this end user",
                f"ig:rl:{key.id}:u:{user_tag(user)}:m",
                tier.per_user.per_minute,
                n,
                now + MINUTE,
                span=MINUTE,
                code=errors.N_EXCEEDS_USER_IMAGES_PER_MINUTE,
            )
        )
    if user and tier.per_user.per_day:
        windows.append(
            Window(
                "images per day for this end user",
                f"ig:rl:{key.id}:u:{user_tag(user)}:d:{day}",
                tier.per_user.per_day,
                n,
                _day_end(now),
                code=errors.N_EXCEEDS_USER_IMAGES_PER_DAY,
            )
        )
    if tier.requests_per_minute:
        windows.append(account_window(key, tier, now))
    return windows


def account_window(key: ApiKey, tier: Tier, now: float) -> Window:
    return Window(
        "requests per minute for this account",
        f"ig:rl:{key.id}:*:m",
        tier.requests_per_minute,
        1,
        now + MINUTE,
        span=MINUTE,
        images=False,
    )


def window_used(client: redis.Redis, window: Window, now: float) -> int:
    """What a window holds at ``now``: images (or calls) counted in it."""
    if window.span:
        return int(client.zcount(window.key, f"({now - window.span!r}", "+inf"))
    return int(client.get(window.key) or 0)


def settle_keys(key_id: str) -> list[str]:
    """The balance and ledger keys of a key id and the sink's pending set: KEYS[2..4] of
    the job scripts that settle a bill (``shared/lua/_settle.lua``)."""
    return [BALANCE.format(key_id), LEDGER.format(key_id), PENDING]


@dataclass(frozen=True)
class Admission:
    balance_micros: int | None  # None for unlimited keys
    status: LimitStatus | None  # the tightest window after this request
    duplicate_of: str | None = None  # the idempotency key's stored value; nothing was admitted
    free_images: int = 0  # images of it taken from the tier's free images of the day
    charged_micros: int = 0  # what was deducted (the images beyond the free ones)


@dataclass(frozen=True)
class Idempotency:
    """An Idempotency-Key, scoped to one API key; ``value`` is stored (job id and body hash)."""

    redis_key: str
    value: str
    ttl: int


def idempotency_key(key_id: str, header: str) -> str:
    return f"ig:idem:{key_id}:" + hashlib.sha256(header.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class UsageRow:
    day: str
    model: str
    images: int
    amount_micros: int
    cost_micros: int = 0  # what the upstreams charged for them (where it was known)

    @property
    def margin_micros(self) -> int:
        return self.amount_micros - self.cost_micros


@dataclass(frozen=True)
class UserUsageRow:
    day: str
    user: str
    images: int
    amount_micros: int


@dataclass(frozen=True)
class FreeStatus:
    """A tier's free images of today: what is left of them and when they renew."""

    per_day: int
    used: int
    resets_at: int  # unix time of the next UTC midnight

    @property
    def remaining(self) -> int:
        return max(0, self.per_day - self.used)


@dataclass(frozen=True)
class BudgetStatus:
    """A key's spending cap of one UTC period and what it has spent in it."""

    period: str  # "day" | "month"
    cap_micros: int  # 0 = no cap
    spent_micros: int
    resets_at: int


_BUDGET_CODES = {"day": errors.DAILY_BUDGET_EXCEEDED, "month": errors.MONTHLY_BUDGET_EXCEEDED}


class Accounts:
    def __init__(
        self, client: redis.Redis, catalog: Catalog, *, return_failed_images: bool = False
    ) -> None:
        """``return_failed_images``: images not delivered go back to the rate-limit windows
        (``IMAGEGATE_LIMITS_RETURN_FAILED_IMAGES``); free images and spending always do."""
        self._redis = client
        self._catalog = catalog
        self._return_failed = return_failed_images
        self._admit = lua.register(client, "admit")
        self._release = lua.register(client, "release_idempotency")
        self._set_balance = lua.register(client, "balance_set")

    # -- admission --------------------------------------------------------------------

    def check_model(self, key: ApiKey, model: Model) -> Tier:
        if not key.allows(model.id):
            raise PermissionDenied(
                f"This API key may not use the model '{model.id}'. "
                f"It may use: {', '.join(key.allowed_models)}.",
                param="model",
                code="model_not_allowed_for_key",
            )
        tier = self._catalog.tier(key.tier)
        if not tier.allows(model.id):
            others = [t for t in self._catalog.tiers_allowing(model.id) if t != tier.name]
            raise PermissionDenied(
                f"Your tier '{tier.name}' does not include the model '{model.id}'. "
                + (f"Tiers that do: {', '.join(others)}." if others else "No tier includes it."),
                param="model",
                code="model_not_in_tier",
            )
        return tier

    def admit(
        self,
        key: ApiKey,
        tier: Tier,
        model: Model,
        n: int,
        *,
        job_key: str,
        job_id: str,
        spec_json: str,
        deadline: float,
        ttl: int,
        now: float,
        idempotency: Idempotency | None = None,
        webhook_url: str | None = None,
        watch: tuple[str, float] | None = None,
        user: str | None = None,
        unit_price: int | None = None,
    ) -> Admission:
        """Admit the request or raise (see the module docstring).

        ``unit_price`` is the price of one image of this request
        (:meth:`shared.catalog.Model.unit_price`: by quality, produced size, edit);
        None: the model's price at its defaults.

        ``now`` is the web host's clock: it picks the rate-limit windows, and
        ``deadline`` and ``watch`` are taken as distances from it, re-based on
        Redis' clock in the record (``created`` there is Redis' ``TIME``). ``user`` is
        the end user the client named (OpenAI's ``user``): recorded, and counted in the
        tier's ``per_user`` windows.
        """
        windows = windows_for(key, tier, model, n, now, user)
        for window in windows:
            if window.amount > window.limit:
                raise InvalidRequest(
                    f"This request asks for {n} images; {window.name} is {window.limit} on "
                    f"tier '{tier.name}', so no request of more than {window.limit} can be "
                    f"admitted. Ask for n <= {window.limit}.",
                    param="n",
                    code=window.code,
                    extra={"limit": window.name, "max_n": window.limit},
                )
        unit = model.price_micros if unit_price is None else unit_price
        cost = unit * n
        day = _day(now)
        free_key = FREE.format(key.id, day)
        spend_keys = [
            SPEND.format(key.id, f"d:{day}"),
            SPEND.format(key.id, "m:" + time.strftime("%Y%m", time.gmtime(now))),
        ]
        free_per_day = tier.free_images.per_day if tier.free_images.covers(model.id) else 0
        returns: list[tuple[str | int, ...]] = [(spend_keys[0], "money"), (spend_keys[1], "money")]
        if free_per_day:
            returns.append((free_key, "free"))
        if self._return_failed:
            returns += [(w.key, "log" if w.span else "count") for w in windows if w.images]
        usage_day = time.strftime("%Y-%m-%d", time.gmtime(now))
        if user:
            keep = _day_end(now) + USER_USAGE_DAYS * 86400 - int(now)
            returns.append((USER_USAGE.format(key.id, usage_day), "users", keep, USER_USAGE_MOST))
        record = jobrecord.new_record(
            job_id=job_id,
            key_id=key.id,
            spec_json=spec_json,
            created=now,  # both re-based on Redis' clock by the script
            deadline=deadline,
            webhook_url=webhook_url,
            bill=jobrecord.bill_fields(
                model=model.id,
                n=n,
                unit_price=unit,
                charged=cost,
                day=usage_day,
                unlimited=key.unlimited,
                user=user,
                returns=returns,
            ),
        )
        idem_key = idempotency.redis_key if idempotency else f"ig:idem:{key.id}:-"
        watch_key, watch_at = (watch[0], repr(watch[1])) if watch else (jobrecord.WATCH, "")
        keys = [job_key, BALANCE.format(key.id), LEDGER.format(key.id), idem_key, watch_key]
        keys += [free_key, *spend_keys, PENDING]
        reply = self._admit(
            keys + [w.key for w in windows],
            n=n,
            unit_price=unit,
            unlimited=key.unlimited,
            free_per_day=free_per_day,
            free_ttl=max(1, int(_day_end(now) - now) + 1),
            budgets=[
                {"cap": key.budget_day_micros, "ttl": max(1, int(_day_end(now) - now) + 1)},
                {"cap": key.budget_month_micros, "ttl": max(1, int(_month_end(now) - now) + 1)},
            ],
            windows=[w.argument(now) for w in windows],
            score=repr(now),
            idempotency=idempotency.value if idempotency else "",
            idempotency_ttl=idempotency.ttl if idempotency else 0,
            record=record,
            now=repr(now),
            deadline=repr(deadline),
            watch_at=watch_at,
            ttl=ttl,
            key_id=key.id,
        )
        if reply[0] == "duplicate":
            return Admission(None, None, duplicate_of=str(reply[1]))
        if reply[0] == "limited":
            window = windows[int(reply[1]) - 1]
            used, wait_ms = int(reply[2]), int(reply[3])
            reset = wait_ms / 1000 if wait_ms > 0 else window.reset_at - now
            status = LimitStatus(window.limit, window.limit - used, reset)
            raise RateLimited(
                f"Rate limit reached: {window.name} is {window.limit} on tier '{tier.name}'; "
                f"{used} used, this request needs {window.amount}. "
                f"Try again in {format_duration(reset)}.",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(max(1, int(reset + 0.999))), **status.headers()},
                extra={"limit": window.name},
            )
        if reply[0] == "budget":
            period, spent, charge = str(reply[1]), int(reply[2]), int(reply[3])
            cap = key.budget_day_micros if period == "day" else key.budget_month_micros
            raise InsufficientBalance(
                f"Spending cap reached: this key may spend {format_money(cap)} per UTC "
                f"{period}; {format_money(spent)} is spent and this request costs "
                f"{format_money(charge)}. It renews at the start of the next UTC {period}.",
                code=_BUDGET_CODES[period],
                extra={"budget": format_money(cap), "spent": format_money(spent)},
            )
        if reply[0] == "balance":
            balance, charge = int(reply[1]), int(reply[2])
            free = n - charge // unit if unit else n
            free_note = f", {free} of them free" if free else ""
            raise InsufficientBalance(
                f"Insufficient balance: this request costs {format_money(charge)} "
                f"({n} x {format_money(unit)}{free_note}), the balance is "
                f"{format_money(balance)}.",
            )
        balance = None if key.unlimited else int(reply[1])
        free_images, charged = int(reply[2]), int(reply[3])
        if not key.unlimited and charged:
            metrics.MONEY_RESERVED.labels(model.id).inc(charged)
        used = [int(v) for v in reply[4:]]
        status = None
        if windows:
            tightest = min(
                zip(windows, used, strict=True),
                key=lambda wu: (wu[0].limit - wu[1], wu[0].reset_at),
            )
            w, u = tightest
            status = LimitStatus(w.limit, w.limit - u, w.reset_at - now)
        return Admission(balance, status, free_images=free_images, charged_micros=charged)

    def release_idempotency(self, idempotency: Idempotency) -> bool:
        """Forget an ``Idempotency-Key`` if it still names this request's job.

        For a job that was admitted but never queued (and is refunded): a retry
        with the same key then starts afresh. Another job's key is left alone.
        """
        return bool(self._release([idempotency.redis_key], value=idempotency.value))

    def account_status(self, key: ApiKey, now: float | None = None) -> LimitStatus | None:
        """The account-level window, for the headers of requests that consume nothing."""
        now = time.time() if now is None else now
        tier = self._catalog.tiers.get(key.tier)
        if tier is None or not tier.requests_per_minute:
            return None
        window = account_window(key, tier, now)
        used = window_used(self._redis, window, now)
        return LimitStatus(window.limit, window.limit - used, window.reset_at - now)

    def free_status(self, key: ApiKey, now: float | None = None) -> FreeStatus | None:
        """What is left today of the key's tier's free images (None: the tier has none)."""
        now = time.time() if now is None else now
        tier = self._catalog.tiers.get(key.tier)
        if tier is None or not tier.free_images.per_day:
            return None
        used = int(self._redis.get(FREE.format(key.id, _day(now))) or 0)
        return FreeStatus(tier.free_images.per_day, used, _day_end(now))

    def budget_status(self, key: ApiKey, now: float | None = None) -> list[BudgetStatus]:
        """The key's spending of this UTC day and month, next to its caps."""
        now = time.time() if now is None else now
        day_key = SPEND.format(key.id, f"d:{_day(now)}")
        month_key = SPEND.format(key.id, "m:" + time.strftime("%Y%m", time.gmtime(now)))
        day, month = self._redis.mget([day_key, month_key])
        return [
            BudgetStatus("day", key.budget_day_micros, int(day or 0), _day_end(now)),
            BudgetStatus("month", key.budget_month_micros, int(month or 0), _month_end(now)),
        ]

    # -- balances, ledger and usage ----------------------------------------------------

    def balance(self, key_id: str) -> int:
        return int(self._redis.get(BALANCE.format(key_id)) or 0)

    def top_up(self, key_id: str, micros: int) -> int:
        if micros <= 0:
            raise ValueError("a top-up must be positive")
        pipe = self._redis.pipeline(transaction=True)
        pipe.incrby(BALANCE.format(key_id), micros)
        pipe.xadd(
            LEDGER.format(key_id),
            {
                "kind": "topup",
                "job": "",
                "model": "",
                "images": 0,
                "amount": micros,
                "ts": time.time(),
            },
        )
        pipe.sadd(PENDING, key_id)
        return int(pipe.execute()[0])

    def set_balance(self, key_id: str, micros: int) -> None:
        """Set the balance; an ``adjust`` entry records the difference."""
        self._set_balance(
            [BALANCE.format(key_id), LEDGER.format(key_id), PENDING],
            micros=str(micros),
            key_id=key_id,
            ts=repr(time.time()),
        )

    def ledger(self, key_id: str, count: int = 100) -> list[dict[str, str]]:
        """The latest entries not yet moved to SQL (all of them, when no sink runs);
        :class:`shared.history.History` merges them with SQL's."""
        entries = self._redis.xrevrange(LEDGER.format(key_id), count=count)
        return [{"id": entry_id, **fields} for entry_id, fields in reversed(entries)]

    def usage(self, key_id: str) -> list[UsageRow]:
        """Usage by day and model of the entries not yet moved to SQL (see :meth:`ledger`)."""
        entries = self._redis.xrange(LEDGER.format(key_id))
        return usage_rows({"id": i, **f} for i, f in entries)

    def usage_by_user(self, key_id: str, now: float | None = None) -> list[UserUsageRow]:
        """Images and spend by UTC day and end user (jobs sent with OpenAI's ``user``), of
        the last :data:`USER_USAGE_DAYS` days; ``*`` holds the users beyond the day's
        :data:`USER_USAGE_MOST`."""
        now = time.time() if now is None else now
        days = [
            time.strftime("%Y-%m-%d", time.gmtime(now - back * 86400))
            for back in range(USER_USAGE_DAYS, -1, -1)
        ]
        pipe = self._redis.pipeline(transaction=False)
        for day in days:
            pipe.hgetall(USER_USAGE.format(key_id, day))
        rows = []
        for day, fields in zip(days, pipe.execute(), strict=True):
            totals: dict[str, dict[str, int]] = {}
            for field_name, value in fields.items():
                user, what = field_name.rsplit("|", 1)
                totals.setdefault(user, {"images": 0, "amount": 0})[what] = int(value)
            rows += [
                UserUsageRow(day, user, t["images"], t["amount"])
                for user, t in sorted(totals.items())
            ]
        return rows


def usage_rows(entries: Iterable[Mapping[str, Any]]) -> list[UsageRow]:
    """Images delivered, what they were charged and what the upstreams charged for them
    (``cost``, where known), by day and model, from ``settle`` entries."""
    totals: dict[tuple[str, str], list[int]] = {}
    for entry in entries:
        if entry.get("kind") != "settle":
            continue
        day = entry.get("day") or time.strftime("%Y-%m-%d", time.gmtime(float(entry["ts"])))
        total = totals.setdefault((day, entry.get("model") or ""), [0, 0, 0])
        total[0] += int(entry.get("images") or 0)
        total[1] -= int(entry.get("amount") or 0)
        total[2] += int(entry.get("cost") or 0)
    return [UsageRow(day, model, *t) for (day, model), t in sorted(totals.items())]
