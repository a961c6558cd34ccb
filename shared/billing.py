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

Windows are fixed (the current UTC minute and UTC day), counted in Redis
strings that expire with their window. The ``limits`` library was considered:
its Redis storage takes a ``cost`` but checks and consumes one window at a
time, so a request that passes the minute window and fails the day window
would still have consumed the minute; nor can it deduct a balance in the same
atomic step. One script does all of it.

Keys::

    ig:balance:<key id>                      integer micro-units
    ig:rl:<key id>:<model | *>:<m|d>:<bucket>  window counters
    ig:ledger:<key id>                       stream: kind, job, model, images, amount, ts
    ig:usage:<key id>                        hash "<day>|<model>|<images|amount>" -> total
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import redis

from shared import jobrecord, lua, metrics
from shared.catalog import MICROS_PER_UNIT, Catalog, Model, Tier
from shared.errors import InsufficientBalance, PermissionDenied, RateLimited
from shared.keys import ApiKey

BALANCE = "ig:balance:{}"
LEDGER = "ig:ledger:{}"
USAGE = "ig:usage:{}"
LEDGER_MAXLEN = 1_000_000  # per key; approximate trimming keeps the stream bounded


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


@dataclass(frozen=True)
class Window:
    """One rate-limit window a request must fit in."""

    name: str  # what the client is told, e.g. "images per minute for dall-e-3"
    key: str
    limit: int
    amount: int
    reset_at: float  # unix time the window ends

    @property
    def ttl(self) -> int:
        return max(1, int(self.reset_at - time.time()) + 1)


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


def windows_for(key: ApiKey, tier: Tier, model: Model, n: int, now: float) -> list[Window]:
    minute = int(now // 60)
    day = time.strftime("%Y%m%d", time.gmtime(now))
    day_end = (int(now // 86400) + 1) * 86400
    limit = tier.limit_for(model.id)
    windows = []
    if limit.per_minute:
        windows.append(
            Window(
                f"images per minute for {model.id}",
                f"ig:rl:{key.id}:{model.id}:m:{minute}",
                limit.per_minute,
                n,
                (minute + 1) * 60,
            )
        )
    if limit.per_day:
        windows.append(
            Window(
                f"images per day for {model.id}",
                f"ig:rl:{key.id}:{model.id}:d:{day}",
                limit.per_day,
                n,
                day_end,
            )
        )
    if tier.requests_per_minute:
        windows.append(account_window(key, tier, now))
    return windows


def account_window(key: ApiKey, tier: Tier, now: float) -> Window:
    minute = int(now // 60)
    return Window(
        "requests per minute for this account",
        f"ig:rl:{key.id}:*:m:{minute}",
        tier.requests_per_minute,
        1,
        (minute + 1) * 60,
    )


def settle_keys(key_id: str) -> list[str]:
    """The balance, ledger and usage keys of a key id: KEYS[2..4] of the job scripts that
    settle a bill (``shared/lua/_settle.lua``)."""
    return [BALANCE.format(key_id), LEDGER.format(key_id), USAGE.format(key_id)]


@dataclass(frozen=True)
class Admission:
    balance_micros: int | None  # None for unlimited keys
    status: LimitStatus | None  # the tightest window after this request
    duplicate_of: str | None = None  # the idempotency key's stored value; nothing was admitted


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


class Accounts:
    def __init__(self, client: redis.Redis, catalog: Catalog) -> None:
        self._redis = client
        self._catalog = catalog
        self._admit = lua.register(client, "admit")
        self._release = lua.register(client, "release_idempotency")

    # -- admission --------------------------------------------------------------------

    def check_model(self, key: ApiKey, model: Model) -> Tier:
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
    ) -> Admission:
        """Admit the request or raise (see the module docstring).

        ``now`` is the web host's clock: it picks the rate-limit windows, and
        ``deadline`` and ``watch`` are taken as distances from it, re-based on
        Redis' clock in the record (``created`` there is Redis' ``TIME``).
        """
        windows = windows_for(key, tier, model, n, now)
        cost = model.price_micros * n
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
                unit_price=model.price_micros,
                charged=cost,
                day=time.strftime("%Y-%m-%d", time.gmtime(now)),
                unlimited=key.unlimited,
            ),
        )
        idem_key = idempotency.redis_key if idempotency else f"ig:idem:{key.id}:-"
        watch_key, watch_at = (watch[0], repr(watch[1])) if watch else (jobrecord.WATCH, "")
        keys = [job_key, BALANCE.format(key.id), LEDGER.format(key.id), idem_key, watch_key]
        reply = self._admit(
            keys + [w.key for w in windows],
            cost=cost,
            unlimited=key.unlimited,
            windows=[{"limit": w.limit, "amount": w.amount, "ttl": w.ttl} for w in windows],
            idempotency=idempotency.value if idempotency else "",
            idempotency_ttl=idempotency.ttl if idempotency else 0,
            record=record,
            now=repr(now),
            deadline=repr(deadline),
            watch_at=watch_at,
            ttl=ttl,
            ledger_maxlen=LEDGER_MAXLEN,
        )
        if reply[0] == "duplicate":
            return Admission(None, None, duplicate_of=str(reply[1]))
        if reply[0] == "limited":
            window = windows[int(reply[1]) - 1]
            used, pttl = int(reply[2]), int(reply[3])
            reset = pttl / 1000 if pttl > 0 else window.reset_at - now
            status = LimitStatus(window.limit, window.limit - used, reset)
            raise RateLimited(
                f"Rate limit reached: {window.name} is {window.limit} on tier '{tier.name}'; "
                f"{used} used, this request needs {window.amount}. "
                f"Try again in {format_duration(reset)}.",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(max(1, int(reset + 0.999))), **status.headers()},
                extra={"limit": window.name},
            )
        if reply[0] == "balance":
            balance = int(reply[1])
            raise InsufficientBalance(
                f"Insufficient balance: this request costs {format_money(cost)} "
                f"({n} x {format_money(model.price_micros)}), the balance is "
                f"{format_money(balance)}.",
            )
        balance = None if key.unlimited else int(reply[1])
        if not key.unlimited and cost:
            metrics.MONEY_RESERVED.labels(model.id).inc(cost)
        used = [int(v) for v in reply[2:]]
        status = None
        if windows:
            tightest = min(
                zip(windows, used, strict=True),
                key=lambda wu: (wu[0].limit - wu[1], wu[0].reset_at),
            )
            w, u = tightest
            status = LimitStatus(w.limit, w.limit - u, w.reset_at - now)
        return Admission(balance, status)

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
        used = int(self._redis.get(window.key) or 0)
        return LimitStatus(window.limit, window.limit - used, window.reset_at - now)

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
            maxlen=LEDGER_MAXLEN,
            approximate=True,
        )
        return int(pipe.execute()[0])

    def set_balance(self, key_id: str, micros: int) -> None:
        self._redis.set(BALANCE.format(key_id), micros)

    def ledger(self, key_id: str, count: int = 100) -> list[dict[str, str]]:
        entries = self._redis.xrevrange(LEDGER.format(key_id), count=count)
        return [{"id": entry_id, **fields} for entry_id, fields in reversed(entries)]

    def usage(self, key_id: str) -> list[UsageRow]:
        totals: dict[tuple[str, str], dict[str, int]] = {}
        for field_name, value in self._redis.hgetall(USAGE.format(key_id)).items():
            day, rest = field_name.split("|", 1)
            model, what = rest.rsplit("|", 1)
            totals.setdefault((day, model), {"images": 0, "amount": 0})[what] = int(value)
        return [
            UsageRow(day, model, t["images"], t["amount"])
            for (day, model), t in sorted(totals.items())
        ]
