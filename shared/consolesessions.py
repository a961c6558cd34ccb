"""Server-side sessions of the operator console (``/console``, :mod:`api.console`).

Signing in with an admin key makes a session: a random token in an HttpOnly,
SameSite=Strict cookie (:data:`COOKIE`), and in Redis, under the token's SHA-256,
the admin key's id and the session's CSRF token. The admin key itself is never
kept (in Redis or in the browser): each request re-reads the admin key by id, so
revoking it ends its sessions. A session ends after ``idle`` seconds unused (the
TTL is renewed on each use) or when signed out::

    ig:console:session:<sha256 hex of the cookie>   hash {admin, csrf, created}  (TTL: idle)
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import redis

from shared.adminkeys import AdminKey, AdminKeyStore
from shared.errors import NotFound

COOKIE = "ig_console"
CSRF_HEADER = "X-CSRF-Token"
_SESSION = "ig:console:session:{}"
_TOKEN_MAX = 100  # a cookie longer than any token we make is not looked up


@dataclass(frozen=True)
class Session:
    admin: AdminKey
    csrf: str

    def csrf_ok(self, sent: str | None) -> bool:
        return bool(sent) and hmac.compare_digest(self.csrf, sent or "")


def _name(token: str) -> str:
    return _SESSION.format(hashlib.sha256(token.encode()).hexdigest())


class ConsoleSessions:
    def __init__(self, client: redis.Redis, idle: int) -> None:
        self._redis = client
        self._idle = idle

    def start(self, admin: AdminKey) -> tuple[str, Session]:
        """A new session for ``admin``: (the cookie's token, the session)."""
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        name = _name(token)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(name, mapping={"admin": admin.id, "csrf": csrf, "created": int(time.time())})
        pipe.expire(name, self._idle)
        pipe.execute()
        return token, Session(admin, csrf)

    def get(self, token: str | None) -> Session | None:
        """The live session of a cookie (its idle time starts again), or None."""
        if not token or len(token) > _TOKEN_MAX:
            return None
        name = _name(token)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(name)
        pipe.expire(name, self._idle)
        fields, _ = pipe.execute()
        if not fields.get("admin") or not fields.get("csrf"):
            return None
        try:
            admin = AdminKeyStore(self._redis).get(fields["admin"])
        except NotFound:
            admin = None
        if admin is None or admin.revoked:
            self._redis.delete(name)
            return None
        return Session(admin, fields["csrf"])

    def end(self, token: str | None) -> None:
        if token and len(token) <= _TOKEN_MAX:
            self._redis.delete(_name(token))
