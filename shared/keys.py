"""API keys: created by the admin CLI, stored in Redis only as SHA-256 hashes.

Layout::

    ig:apikey:<sha256 hex>   hash {id, name, created, revoked, tier, unlimited, webhook_secret,
                                   strict_params, budget_day, budget_month,
                                   metadata, allowed_models, expires}
    ig:apikey-id:<id>        string <sha256 hex>   (to revoke or show a key by id)
    ig:apikeys               set of ids

A key is ``ig-`` followed by 43 url-safe random characters (256 bits). The
plaintext is returned once by :meth:`KeyStore.create` and never stored; a
lookup hashes the presented key and reads the record, so no comparison of
secrets happens in Python at all.

Each key also has a webhook signing secret (``whsec_`` + base64 of 32 random
bytes, the Standard Webhooks form). Unlike the API key it must be kept in
clear to sign deliveries; the CLI shows and rotates it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field

import redis

from shared.errors import AuthenticationFailed, NotFound

KEY_PREFIX = "ig-"
ADMIN_KEY_PREFIX = "iga-"  # shared.adminkeys; never a customer key
_RECORD = "ig:apikey:{}"
_BY_ID = "ig:apikey-id:{}"
_IDS = "ig:apikeys"


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    created: int
    revoked: bool = False
    tier: str = ""
    unlimited: bool = False  # no balance: internal keys
    # Refuse tuning fields (user, quality, style) a model does not take instead of
    # mapping or ignoring them, as IMAGEGATE_STRICT_PARAMS does for every key.
    strict_params: bool = False
    # Spending caps in micro-units per UTC day and month (0 = none; shared.billing).
    budget_day_micros: int = 0
    budget_month_micros: int = 0
    metadata: dict[str, str] = field(default_factory=dict, hash=False)  # ApiKey stays hashable
    allowed_models: tuple[str, ...] = ()  # empty: every model of the tier
    expires: int = 0  # unix seconds; 0: never

    def expired(self, now: float | None = None) -> bool:
        return bool(self.expires) and self.expires <= (time.time() if now is None else now)

    def allows(self, model_id: str) -> bool:
        return not self.allowed_models or model_id in self.allowed_models


class KeyStore:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def create(self, name: str, *, tier: str, unlimited: bool = False) -> tuple[str, ApiKey]:
        name = name.strip()
        if not name or len(name) > 100:
            raise ValueError("a key name must be 1 to 100 characters")
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        digest = hash_key(plaintext)
        record = ApiKey(
            id="key_" + secrets.token_hex(8),
            name=name,
            created=int(time.time()),
            tier=tier,
            unlimited=unlimited,
        )
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(
            _RECORD.format(digest),
            mapping={
                "id": record.id,
                "name": record.name,
                "created": record.created,
                "revoked": 0,
                "tier": tier,
                "unlimited": int(unlimited),
                "webhook_secret": new_webhook_secret(),
            },
        )
        pipe.set(_BY_ID.format(record.id), digest)
        pipe.sadd(_IDS, record.id)
        pipe.execute()
        return plaintext, record

    def authenticate(self, plaintext: str | None) -> ApiKey:
        if not plaintext:
            raise AuthenticationFailed(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
                code="missing_api_key",
            )
        if plaintext.startswith(ADMIN_KEY_PREFIX):
            raise AuthenticationFailed(
                "An admin key cannot call the API; use a customer key (ig-...).",
                code="admin_key_not_allowed",
            )
        fields = self._redis.hgetall(_RECORD.format(hash_key(plaintext)))
        if not fields:
            raise AuthenticationFailed("Incorrect API key provided.")
        key = _from_fields(fields)
        if key.revoked:
            raise AuthenticationFailed("This API key has been revoked.", code="revoked_api_key")
        if key.expired():
            raise AuthenticationFailed("This API key has expired.", code="expired_api_key")
        return key

    def get(self, key_id: str) -> ApiKey:
        digest = self._redis.get(_BY_ID.format(key_id))
        fields = self._redis.hgetall(_RECORD.format(digest)) if digest else {}
        if not fields:
            raise NotFound(f"No API key with id '{key_id}'.")
        return _from_fields(fields)

    def list(self) -> list[ApiKey]:
        """Every key, oldest first (created, then id): a stable order to page through."""
        ids = sorted(self._redis.smembers(_IDS))
        pipe = self._redis.pipeline(transaction=False)
        for key_id in ids:
            pipe.get(_BY_ID.format(key_id))
        digests = pipe.execute()
        for digest in digests:
            pipe.hgetall(_RECORD.format(digest) if digest else _RECORD.format("-"))
        keys = [_from_fields(fields) for fields in pipe.execute() if fields]
        return sorted(keys, key=lambda k: (k.created, k.id))

    def update(
        self,
        key_id: str,
        *,
        name: str | None = None,
        tier: str | None = None,
        metadata: dict[str, str] | None = None,
        allowed_models: list[str] | None = None,
        expires: int | None = None,
    ) -> ApiKey:
        """Change what is given (None: unchanged); the caller has checked tier and models."""
        fields: dict[str, str | int] = {}
        if name is not None:
            name = name.strip()
            if not name or len(name) > 100:
                raise ValueError("a key name must be 1 to 100 characters")
            fields["name"] = name
        if tier is not None:
            fields["tier"] = tier
        if metadata is not None:
            fields["metadata"] = json.dumps(metadata, sort_keys=True)
        if allowed_models is not None:
            fields["allowed_models"] = json.dumps(sorted(set(allowed_models)))
        if expires is not None:
            fields["expires"] = int(expires)
        if not fields:
            return self.get(key_id)
        return self._update(key_id, **fields)

    def revoke(self, key_id: str) -> ApiKey:
        return self._update(key_id, revoked=1)

    def set_tier(self, key_id: str, tier: str) -> ApiKey:
        return self._update(key_id, tier=tier)

    def set_unlimited(self, key_id: str, unlimited: bool) -> ApiKey:
        return self._update(key_id, unlimited=int(unlimited))

    def set_strict_params(self, key_id: str, strict: bool) -> ApiKey:
        return self._update(key_id, strict_params=int(strict))

    def set_budget(
        self, key_id: str, *, day_micros: int | None = None, month_micros: int | None = None
    ) -> ApiKey:
        """Set the key's spending caps (micro-units; 0 = none; None = unchanged)."""
        fields = {
            name: value
            for name, value in (("budget_day", day_micros), ("budget_month", month_micros))
            if value is not None
        }
        if any(value < 0 for value in fields.values()):
            raise ValueError("a spending cap must be >= 0")
        return self._update(key_id, **fields) if fields else self.get(key_id)

    def webhook_secret(self, key_id: str) -> str:
        digest = self._digest(key_id)
        self._redis.hsetnx(_RECORD.format(digest), "webhook_secret", new_webhook_secret())
        return str(self._redis.hget(_RECORD.format(digest), "webhook_secret"))

    def rotate_webhook_secret(self, key_id: str) -> str:
        secret = new_webhook_secret()
        self._redis.hset(_RECORD.format(self._digest(key_id)), "webhook_secret", secret)
        return secret

    def _digest(self, key_id: str) -> str:
        digest = self._redis.get(_BY_ID.format(key_id))
        if not digest or not self._redis.exists(_RECORD.format(digest)):
            raise NotFound(f"No API key with id '{key_id}'.")
        return str(digest)

    def _update(self, key_id: str, **fields: str | int) -> ApiKey:
        self._redis.hset(_RECORD.format(self._digest(key_id)), mapping=fields)
        return self.get(key_id)


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def _from_fields(fields: dict[str, str]) -> ApiKey:
    return ApiKey(
        id=fields["id"],
        name=fields.get("name", ""),
        created=int(fields.get("created", 0)),
        revoked=fields.get("revoked", "0") == "1",
        tier=fields.get("tier", ""),
        unlimited=fields.get("unlimited", "0") == "1",
        strict_params=fields.get("strict_params", "0") == "1",
        budget_day_micros=int(fields.get("budget_day", 0)),
        budget_month_micros=int(fields.get("budget_month", 0)),
        metadata=json.loads(fields.get("metadata") or "{}"),
        allowed_models=tuple(json.loads(fields.get("allowed_models") or "[]")),
        expires=int(fields.get("expires") or 0),
    )
