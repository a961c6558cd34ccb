"""Admin keys, the audit stream of admin writes, and the limit on failed admin sign-ins.

Admin keys are a kind of their own, never a customer key: they open only
``/admin/v1/*`` (:mod:`api.admin`), and a customer route refuses them
(:meth:`shared.keys.KeyStore.authenticate`). Created, listed and revoked by
the CLI (``imagegate admin-keys ...``); like API keys they are stored only as
SHA-256 hashes. Two scopes: ``read`` (every GET) and ``write`` (also every
change).

Layout::

    ig:adminkey:<sha256 hex>   hash {id, name, scope, created, revoked}
    ig:adminkey-id:<id>        string <sha256 hex>
    ig:adminkeys               set of ids
    ig:audit                   stream: ts, admin, action, target, detail (JSON), request_id
    ig:adminauth:fail:<addr>:<minute>   failed admin authentications of a client address

The audit stream is trimmed to about :data:`AUDIT_MAXLEN` entries (the SQL
sink keeps history); ``detail`` is cut to :data:`AUDIT_DETAIL_BYTES`.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis

from shared.errors import AuthenticationFailed, NotFound, PermissionDenied, RateLimited
from shared.keys import ADMIN_KEY_PREFIX, KEY_PREFIX, hash_key

_RECORD = "ig:adminkey:{}"
_BY_ID = "ig:adminkey-id:{}"
_IDS = "ig:adminkeys"
AUDIT = "ig:audit"
AUDIT_MAXLEN = 100_000
AUDIT_DETAIL_BYTES = 4096
_FAILURES = "ig:adminauth:fail:{}:{}"


class Scope(StrEnum):
    READ = "read"
    WRITE = "write"


@dataclass(frozen=True)
class AdminKey:
    id: str
    name: str
    scope: Scope
    created: int
    revoked: bool = False

    def require(self, scope: Scope) -> None:
        if scope is Scope.WRITE and self.scope is not Scope.WRITE:
            raise PermissionDenied(
                "This admin key is read-only; changes need a read-write admin key.",
                code="admin_scope_read_only",
            )


class AdminKeyStore:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    @property
    def client(self) -> redis.Redis:
        return self._redis

    def create(self, name: str, *, scope: Scope) -> tuple[str, AdminKey]:
        name = name.strip()
        if not name or len(name) > 100:
            raise ValueError("a key name must be 1 to 100 characters")
        plaintext = ADMIN_KEY_PREFIX + secrets.token_urlsafe(32)
        digest = hash_key(plaintext)
        record = AdminKey(
            id="adm_" + secrets.token_hex(8),
            name=name,
            scope=Scope(scope),
            created=int(time.time()),
        )
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(
            _RECORD.format(digest),
            mapping={
                "id": record.id,
                "name": record.name,
                "scope": record.scope.value,
                "created": record.created,
                "revoked": 0,
            },
        )
        pipe.set(_BY_ID.format(record.id), digest)
        pipe.sadd(_IDS, record.id)
        pipe.execute()
        return plaintext, record

    def authenticate(self, plaintext: str) -> AdminKey:
        if plaintext.startswith(KEY_PREFIX) and not plaintext.startswith(ADMIN_KEY_PREFIX):
            raise AuthenticationFailed(
                "A customer API key cannot use the admin API; use an admin key (iga-...).",
                code="not_an_admin_key",
            )
        if not plaintext.startswith(ADMIN_KEY_PREFIX):
            raise AuthenticationFailed("Incorrect admin key provided.")
        fields = self._redis.hgetall(_RECORD.format(hash_key(plaintext)))
        if not fields:
            raise AuthenticationFailed("Incorrect admin key provided.")
        key = _from_fields(fields)
        if key.revoked:
            raise AuthenticationFailed("This admin key has been revoked.", code="revoked_api_key")
        return key

    def get(self, key_id: str) -> AdminKey:
        digest = self._redis.get(_BY_ID.format(key_id))
        fields = self._redis.hgetall(_RECORD.format(digest)) if digest else {}
        if not fields:
            raise NotFound(f"No admin key with id '{key_id}'.")
        return _from_fields(fields)

    def list(self) -> list[AdminKey]:
        keys = []
        for key_id in sorted(self._redis.smembers(_IDS)):
            try:
                keys.append(self.get(key_id))
            except NotFound:
                continue
        return sorted(keys, key=lambda k: (k.created, k.id))

    def revoke(self, key_id: str) -> AdminKey:
        digest = self._redis.get(_BY_ID.format(key_id))
        if not digest or not self._redis.exists(_RECORD.format(digest)):
            raise NotFound(f"No admin key with id '{key_id}'.")
        self._redis.hset(_RECORD.format(digest), "revoked", 1)
        return self.get(key_id)


def _from_fields(fields: dict[str, str]) -> AdminKey:
    return AdminKey(
        id=fields["id"],
        name=fields.get("name", ""),
        scope=Scope(fields.get("scope", "read")),
        created=int(fields.get("created", 0)),
        revoked=fields.get("revoked", "0") == "1",
    )


# -- failed sign-ins --------------------------------------------------------------------


class AuthFailures:
    """A fixed one-minute window of failed admin authentications per client address.

    Once ``limit`` failures are counted, every admin request from that address
    gets 429 until the minute ends, right key or not: guessing gets no answer.
    """

    def __init__(self, client: redis.Redis, limit: int) -> None:
        self._redis = client
        self._limit = limit

    def _key(self, address: str, now: float) -> str:
        digest = hashlib.sha256(address.encode("utf-8", "replace")).hexdigest()[:32]
        return _FAILURES.format(digest, int(now // 60))

    def check(self, address: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if self._limit <= 0:
            return
        failures = int(self._redis.get(self._key(address, now)) or 0)
        if failures >= self._limit:
            retry = max(1, int(60 - now % 60 + 0.999))
            raise RateLimited(
                f"Too many failed admin authentications from this address; try again in {retry}s.",
                code="too_many_failed_authentications",
                headers={"Retry-After": str(retry)},
            )

    def record(self, address: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        key = self._key(address, now)
        pipe = self._redis.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, 120)
        pipe.execute()


# -- audit ------------------------------------------------------------------------------


class AuditLog:
    """Every admin write: who (admin key id), what, on what, when."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def record(
        self, admin: str, action: str, target: str, detail: dict[str, Any], request_id: str
    ) -> str:
        """``admin``: the admin key's id, or ``cli`` for the ``imagegate`` command."""
        text = json.dumps(detail, sort_keys=True, default=str)
        if len(text.encode()) > AUDIT_DETAIL_BYTES:
            text = json.dumps({"truncated": text[: AUDIT_DETAIL_BYTES // 2]})
        return str(
            self._redis.xadd(
                AUDIT,
                {
                    "ts": repr(time.time()),
                    "admin": admin,
                    "action": action,
                    "target": target,
                    "detail": text,
                    "request_id": request_id,
                },
                maxlen=AUDIT_MAXLEN,
                approximate=True,
            )
        )

    def page(self, *, before: str = "+", limit: int = 100) -> list[dict[str, Any]]:
        """Newest first, entries older than ``before`` (an entry id ``ms-seq``, exclusive)."""
        end = "+" if before == "+" else _previous_id(before)
        if end is None:
            return []
        entries = self._redis.xrevrange(AUDIT, max=end, min="-", count=limit)
        return [
            {
                "id": entry_id,
                "ts": float(fields.get("ts", 0)),
                "admin": fields.get("admin", ""),
                "action": fields.get("action", ""),
                "target": fields.get("target", ""),
                "detail": json.loads(fields.get("detail") or "{}"),
                "request_id": fields.get("request_id", ""),
            }
            for entry_id, fields in entries
        ]


def _previous_id(entry_id: str) -> str | None:
    """The stream id just before ``entry_id`` (None before ``0-0``): Redis refuses an
    exclusive bound at ``0-0``, so the bound is made inclusive here."""
    ms, _, seq = entry_id.partition("-")
    if int(seq) > 0:
        return f"{int(ms)}-{int(seq) - 1}"
    if int(ms) > 0:
        return f"{int(ms) - 1}-{2**64 - 1}"
    return None
