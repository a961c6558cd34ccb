"""API keys: created by the admin CLI, stored in Redis only as SHA-256 hashes.

Layout::

    ig:apikey:<sha256 hex>   hash {id, name, created, revoked, tier, unlimited, webhook_secret,
                                   strict_params, budget_day, budget_month}
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
import secrets
import time
from dataclasses import dataclass

import redis

from shared.errors import AuthenticationFailed, NotFound

KEY_PREFIX = "ig-"
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
        fields = self._redis.hgetall(_RECORD.format(hash_key(plaintext)))
        if not fields:
            raise AuthenticationFailed("Incorrect API key provided.")
        key = _from_fields(fields)
        if key.revoked:
            raise AuthenticationFailed("This API key has been revoked.", code="revoked_api_key")
        return key

    def get(self, key_id: str) -> ApiKey:
        digest = self._redis.get(_BY_ID.format(key_id))
        fields = self._redis.hgetall(_RECORD.format(digest)) if digest else {}
        if not fields:
            raise NotFound(f"No API key with id '{key_id}'.")
        return _from_fields(fields)

    def list(self) -> list[ApiKey]:
        keys = []
        for key_id in sorted(self._redis.smembers(_IDS)):
            try:
                keys.append(self.get(key_id))
            except NotFound:
                continue
        return sorted(keys, key=lambda k: (k.created, k.id))

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
    )
