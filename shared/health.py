"""Circuit breakers shared by every web and worker process, kept in Redis.

One breaker per name — a real model (``"model:flux-schnell"``) or an upstream
key (``"key:bfl:0"``). The caller asks :meth:`Breakers.allow` before an
upstream call and reports the outcome it attributes to the upstream with
:meth:`Breakers.record_success` / :meth:`Breakers.record_failure` (a request
the upstream refused on its merits, e.g. a content-policy 400, is neither).

States, derived from the stored fields and ``now``::

    CLOSED     no ``opened_at``: every call is allowed
    OPEN       now < opened_at + cooldown: no call is allowed
    HALF_OPEN  cool-down over: exactly one caller at a time gets a trial call

* ``failure_threshold`` failures within the last ``window`` seconds (a sliding
  window) open the breaker.
* In HALF_OPEN, :meth:`~Breakers.allow` hands out one trial token, stored as
  ``trial_until`` = now + ``trial_ttl`` (default: the cool-down); others get
  False until the trial reports back or its token runs out, so a trial whose
  worker died does not block the breaker for ever.
* A success closes the breaker (failures and trial forgotten). A failure while
  HALF_OPEN opens it again with a new ``opened_at``. A failure while OPEN
  (a call let through before the breaker opened) is only counted.

Keys::

    ig:cb:<name>            hash: opened_at, trial_until (unix seconds, as given by callers)
    ig:cb:<name>:failures   zset: one member per failure, score = its time; expires after `window`

Every transition is one Lua script (``shared/lua/breaker_*.lua``) or one
multi-key DEL, so any number of
processes see one state and exactly one of them wins a half-open trial. Time
is the callers' ``now`` (default ``time.time()``), not Redis's clock, so the
tests can drive it; the only real-time expiry is the failures' garbage
collection.

Why not pybreaker (1.4.1, which has a ``CircuitRedisStorage``):

* its storage decodes replies itself (``state_bytes.decode("utf-8")``) and
  raises ``AttributeError`` on the ``decode_responses=True`` clients that
  :func:`shared.redis_client.connect` makes;
* its half-open transition is a plain GET then SET guarded only by a
  process-local ``threading.RLock``: every process that sees the cool-down
  over runs its own trial call, N workers make N trials against a down
  upstream;
* ``CircuitBreaker.call`` holds that lock for the whole wrapped call, which
  would serialise every threaded worker's 60-second image job through one
  breaker, and its call-wrapping API cannot express "this exception was the
  client's fault" after the fact;
* it counts consecutive failures with no time window, on the wall clock only,
  with ``opened_at`` in whole seconds.

What it would save is ~60 lines; the scripts ``shared/lua/breaker_*.lua`` are that.
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum

import redis

from shared import lua
from shared.settings import Settings

_DEFAULTS = Settings()  # the documented defaults only: reads no environment

_STATE = "ig:cb:{}"
_FAILURES = "ig:cb:{}:failures"


@dataclass(frozen=True)
class BreakerPolicy:
    # Defaults are the settings' (IMAGEGATE_BREAKER_*), written once there.
    failure_threshold: int = _DEFAULTS.breaker_failures  # failures in `window` that open it
    window: float = _DEFAULTS.breaker_window_seconds  # seconds
    cooldown: float = _DEFAULTS.breaker_cooldown_seconds  # seconds open before half-open
    trial_ttl: float | None = None  # how long a half-open trial holds its token; None = cooldown

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if self.window <= 0 or self.cooldown <= 0:
            raise ValueError("window and cooldown must be positive")
        if self.trial_ttl is not None and self.trial_ttl <= 0:
            raise ValueError("trial_ttl must be positive")

    @property
    def trial_seconds(self) -> float:
        return self.cooldown if self.trial_ttl is None else self.trial_ttl


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerStatus:
    name: str
    state: BreakerState
    failures: int  # within the window
    opened_at: float | None
    retry_at: float | None  # OPEN: end of the cool-down; HALF_OPEN: when the trial token frees

    @property
    def trial_running(self) -> bool:
        return self.state is BreakerState.HALF_OPEN and self.retry_at is not None


def _num(value: str | None) -> float | None:
    return float(value) if value else None


class Breakers:
    def __init__(self, client: redis.Redis, policy: BreakerPolicy | None = None) -> None:
        self._redis = client
        self.policy = policy or BreakerPolicy()
        self._allow = lua.register(client, "breaker_allow")
        self._failure = lua.register(client, "breaker_failure")

    @staticmethod
    def keys(name: str) -> list[str]:
        if not name:
            raise ValueError("a breaker needs a name")
        return [_STATE.format(name), _FAILURES.format(name)]

    def _status(
        self,
        name: str,
        now: float,
        failures: int,
        opened_at: float | None,
        trial_until: float | None,
    ) -> BreakerStatus:
        if opened_at is None:
            return BreakerStatus(name, BreakerState.CLOSED, failures, None, None)
        cooldown_over = opened_at + self.policy.cooldown
        if now < cooldown_over:
            return BreakerStatus(name, BreakerState.OPEN, failures, opened_at, cooldown_over)
        trial = trial_until if trial_until is not None and now < trial_until else None
        return BreakerStatus(name, BreakerState.HALF_OPEN, failures, opened_at, trial)

    def status(self, name: str, now: float | None = None) -> BreakerStatus:
        now = time.time() if now is None else now
        state, failures = self.keys(name)
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.hmget(state, "opened_at", "trial_until")
            pipe.zcount(failures, f"({now - self.policy.window!r}", "+inf")
            (opened_at, trial_until), count = pipe.execute()
        return self._status(name, now, int(count), _num(opened_at), _num(trial_until))

    def allow(self, name: str, now: float | None = None) -> bool:
        """May the caller make an upstream call now? In HALF_OPEN this takes the one trial."""
        now = time.time() if now is None else now
        trial_until = now + self.policy.trial_seconds
        state = self.keys(name)[0]
        return bool(
            self._allow(
                [state],
                now=repr(now),
                cooldown=repr(self.policy.cooldown),
                trial_until=repr(trial_until),
            )
        )

    def would_allow(self, name: str, now: float | None = None) -> bool:
        """Read-only: would :meth:`allow` say yes now? (CLOSED, or HALF_OPEN with no trial
        running.) For ranking candidates without taking a trial token."""
        status = self.status(name, now)
        return status.state is BreakerState.CLOSED or (
            status.state is BreakerState.HALF_OPEN and not status.trial_running
        )

    def record_success(self, *names: str) -> None:
        """The upstream answered: close the breakers, forget failures and any trial."""
        self._redis.delete(*(k for name in names for k in self.keys(name)))

    def record_failure(self, name: str, now: float | None = None) -> BreakerStatus:
        now = time.time() if now is None else now
        policy = self.policy
        failures, opened_at, trial_until = self._failure(
            self.keys(name),
            now=repr(now),
            since=repr(now - policy.window),
            member=f"{now!r}:{secrets.token_hex(6)}",
            window_ms=max(1, math.ceil(policy.window * 1000)),
            threshold=policy.failure_threshold,
            cooldown=repr(policy.cooldown),
        )
        return self._status(name, now, int(failures), _num(opened_at), _num(trial_until))

    def reset(self, name: str) -> None:
        """Operator action: back to CLOSED with no history."""
        self._redis.delete(*self.keys(name))


def policy_from(settings: Settings) -> BreakerPolicy:
    """The breaker policy of a deployment (IMAGEGATE_BREAKER_* settings)."""
    return BreakerPolicy(
        failure_threshold=settings.breaker_failures,
        window=settings.breaker_window_seconds,
        cooldown=settings.breaker_cooldown_seconds,
    )
