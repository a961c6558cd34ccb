"""An operator's top-ups and adjustments of a key's balance, with a reason, safe to retry.

One script (``shared/lua/balance_change.lua``) adds the amount, appends a ledger
entry (kind ``topup`` or ``adjust``, with ``reason`` and ``admin``: the admin key
that made it) and stores the request's ``Idempotency-Key``, so a retried request
changes nothing and is answered with the first one's outcome; the same key with
another body is a 409. An adjustment may not take a balance below zero.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import redis

from shared import lua
from shared.billing import BALANCE, LEDGER, PENDING, format_money
from shared.errors import Conflict

_IDEMPOTENCY = "ig:admin-idem:{}"


@dataclass(frozen=True)
class BalanceChange:
    balance_micros: int
    entry_id: str
    replayed: bool = False


class BalanceChanges:
    def __init__(self, client: redis.Redis, idempotency_ttl: int) -> None:
        self._script = lua.register(client, "balance_change")
        self._ttl = idempotency_ttl

    def apply(
        self,
        key_id: str,
        amount: int,
        *,
        kind: str,
        reason: str,
        admin: str,
        body: bytes,
        idempotency_key: str = "",
    ) -> BalanceChange:
        digest = hashlib.sha256(body).hexdigest()
        # Scoped to the key and the kind: a top-up's key never answers an adjustment.
        scoped = hashlib.sha256(f"{key_id}|{kind}|{idempotency_key}".encode()).hexdigest()
        reply = self._script(
            [BALANCE.format(key_id), LEDGER.format(key_id), _IDEMPOTENCY.format(scoped), PENDING],
            amount=str(amount),
            kind=kind,
            reason=reason,
            admin=admin,
            ts=repr(time.time()),
            request=digest,
            idempotency=idempotency_key,
            idempotency_ttl=self._ttl,
            floor=kind == "adjust",
            key_id=key_id,
        )
        if reply[0] == "duplicate":
            stored_digest, balance, entry_id = str(reply[1]).split("|", 2)
            if stored_digest != digest:
                raise Conflict(
                    "This Idempotency-Key was used with another request body.",
                    code="idempotency_key_reused",
                )
            return BalanceChange(int(balance), entry_id, replayed=True)
        if reply[0] == "negative":
            raise Conflict(
                "The adjustment would leave the balance below zero "
                f"(it is {format_money(int(reply[1]))}).",
                code="balance_would_be_negative",
            )
        return BalanceChange(int(reply[1]), str(reply[2]))
