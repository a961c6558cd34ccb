"""The sink: moves ledger entries and audit entries from Redis to SQL, exactly once.

Every writer of a ledger entry (admission, settlement, top-ups, balance changes: all
in one atomic step with the money they record) also names the key in the pending set
``ig:ledger:pending``. The sink, for each pending key:

1. reads the oldest entries of ``ig:ledger:<key id>`` (``sink_batch`` at most) and, for
   ``settle`` entries, the small fields of the job's record (its per-job usage row);
2. inserts them in ONE SQL transaction with ``ON CONFLICT DO NOTHING`` on their ids
   (the stream id per key; the job id) and commits;
3. only then deletes those ids from the stream (``shared/lua/ledger_sink_ack.lua``),
   and takes the key out of the pending set when its stream is empty.

A sink killed anywhere leaves every entry either still in Redis (not committed, or
committed and not deleted: the next pass inserts nothing twice and deletes it) or in
SQL (committed and deleted). Nothing is trimmed, so nothing is lost while SQL is down:
the entries wait in Redis. Two sinks running at once do double work, never double rows.
The operators' audit trail (``ig:audit``: the admin API's writes and the CLI's, see
:func:`record_audit`) is copied the same way, behind a cursor, and stays in Redis for
the admin API (trimmed to its latest entries by :mod:`shared.adminkeys`).

It runs as its own process (``imagegate sink``, the Procfile's ``sink`` line), a plain
loop rather than a Celery task: it needs no message to keep it going and nothing to
schedule it, and one line to restart it is the whole of its deployment.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Mapping
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from shared import jobrecord as rec
from shared import lua
from shared.adminkeys import AuditLog
from shared.billing import LEDGER, PENDING
from shared.db import (
    engine_for,
    extra_json,
    insert_new,
    job_usage,
    key_audit,
    ledger_entries,
    upgrade,
)

log = logging.getLogger(__name__)

AUDIT = "ig:audit"  # stream: ts, admin, action, target, detail (JSON), request_id
AUDIT_SUNK = "ig:audit:sunk"  # the id of the last audit entry copied to SQL
LEDGER_FIELDS = ("kind", "job", "model", "images", "amount", "ts", "day", "cost")
# Record fields not copied into job_usage.extra: payloads, not usage.
_RECORD_PAYLOADS = frozenset({rec.SPEC, rec.RESULT, rec.ERROR, rec.WEBHOOK, rec.FALLBACKS})
_USAGE_COLUMNS = {
    rec.KEY_ID: "key_id",
    rec.MODEL: "model",
    rec.SERVING: "serving",
    rec.STATUS: "status",
    rec.N: "n",
    rec.UNIT_PRICE: "unit_price",
    rec.CHARGED: "charged",
    rec.SETTLED: "spent",
    rec.REFUNDED: "refunded",
    rec.DAY: "day",
    rec.CREATED: "created",
    rec.STARTED: "started",
    rec.FINISHED: "finished",
    rec.WORKER: "worker",
    rec.TAKEOVERS: "takeovers",
}
_INTS = {"n", "images", "unit_price", "charged", "spent", "refunded", "takeovers"}
_FLOATS = {"created", "started", "finished"}


def split_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def ledger_row(key_id: str, entry_id: str, fields: Mapping[str, str], now: float) -> dict:
    ms, seq = split_id(entry_id)
    ts = float(fields.get("ts") or ms / 1000)
    day = fields.get("day") or None
    if day is None and fields.get("kind") in ("settle", "refund"):
        day = time.strftime("%Y-%m-%d", time.gmtime(ts))  # entries from before `day` existed
    return {
        "key_id": key_id,
        "entry_id": entry_id,
        "entry_ms": ms,
        "entry_seq": seq,
        "kind": fields.get("kind", ""),
        "job_id": fields.get("job", ""),
        "model": fields.get("model", ""),
        "images": int(fields.get("images") or 0),
        "amount": int(fields.get("amount") or 0),
        "ts": ts,
        "day": day,
        "cost": int(fields["cost"]) if fields.get("cost") else None,
        "extra": extra_json(fields, LEDGER_FIELDS),
        "sunk_at": now,
    }


def _text(value: Any, limit: int) -> str | None:
    return str(value)[:limit] if isinstance(value, str | int) and value != "" else None


def _from_payloads(record: Mapping[str, str]) -> dict[str, str | None]:
    """The request's size and end user (its spec) and the error's code (its error)."""
    try:
        request = json.loads(record.get(rec.SPEC) or "{}").get("request") or {}
        error = json.loads(record.get(rec.ERROR) or "{}")
    except (ValueError, AttributeError):
        request, error = {}, {}
    request = request if isinstance(request, dict) else {}
    error = error if isinstance(error, dict) else {}
    return {
        "size": _text(request.get("size"), 32),
        "end_user": _text(request.get("user"), 255),
        "error_code": _text(error.get("code"), 64),
    }


def usage_row(key_id: str, entry: Mapping[str, str], record: Mapping[str, str]) -> dict:
    """The job_usage row of a settled job: from its record, or (record gone) its entry."""
    row: dict[str, Any] = dict.fromkeys([*_USAGE_COLUMNS.values(), "size", "end_user"])
    row["error_code"] = None
    row.update(job_id=entry["job"], key_id=key_id, model=entry.get("model", ""))
    row["images"] = int(entry.get("images") or 0)
    row["spent"] = -int(entry.get("amount") or 0)
    row["day"] = entry.get("day") or None
    for name, column in _USAGE_COLUMNS.items():
        value = record.get(name)
        if value in (None, ""):
            continue
        if column in _INTS:
            row[column] = int(value)
        elif column in _FLOATS:
            row[column] = float(value)
        else:
            row[column] = value
    row.update(_from_payloads(record))
    extra = {
        k: v for k, v in record.items() if k not in _USAGE_COLUMNS and k not in _RECORD_PAYLOADS
    }
    for name in (rec.JOB_ID, rec.BILLED, rec.UNLIMITED, rec.ATTEMPT, rec.DEADLINE):
        extra.pop(name, None)
    if record.get(rec.UNLIMITED) == "1":
        extra["unlimited"] = "1"
    row["extra"] = extra or None
    return row


class Sink:
    def __init__(self, client: redis.Redis, engine: Engine, *, batch: int = 1000) -> None:
        self._redis = client
        self._engine = engine
        self._batch = batch
        self._ack = lua.register(client, "ledger_sink_ack")

    def adopt_streams(self) -> int:
        """Name in the pending set every key with a ledger stream (at start: streams
        written before the pending set existed, or by a gateway older than the sink, are
        moved too). One SCAN of the keyspace; returns the streams found."""
        prefix = LEDGER.format("")
        found = 0
        for name in self._redis.scan_iter(match=LEDGER.format("*"), count=1000, _type="stream"):
            if self._redis.xlen(name):
                self._redis.sadd(PENDING, name[len(prefix) :])
                found += 1
        return found

    def run_once(self) -> int:
        """One pass over every pending key and the audit stream; entries moved."""
        moved = self._drain_audit()
        for key_id in list(self._redis.sscan_iter(PENDING, count=1000)):
            moved += self.drain_key(key_id)
        return moved

    def drain_key(self, key_id: str) -> int:
        moved = 0
        stream = LEDGER.format(key_id)
        while True:
            entries = self._redis.xrange(stream, count=self._batch)
            if entries:
                self._commit(key_id, entries)
            ids = [entry_id for entry_id, _ in entries]
            _deleted, left = self._ack([stream, PENDING], ids=ids, key_id=key_id)
            moved += len(entries)
            if len(entries) < self._batch or not left:
                return moved

    def _commit(self, key_id: str, entries: list[tuple[str, dict[str, str]]]) -> None:
        now = time.time()
        settles = [(i, f) for i, f in entries if f.get("kind") == "settle" and f.get("job")]
        pipe = self._redis.pipeline(transaction=False)
        for _, fields in settles:
            pipe.hgetall(rec.record_key(fields["job"]))
        records = pipe.execute() if settles else []
        usage = [usage_row(key_id, f, r) for (_, f), r in zip(settles, records, strict=True)]
        with self._engine.begin() as conn:
            insert_new(conn, ledger_entries, [ledger_row(key_id, i, f, now) for i, f in entries])
            insert_new(conn, job_usage, usage)

    def _drain_audit(self) -> int:
        """Copy the audit entries after the last one in SQL (``ig:audit:sunk``). They stay
        in Redis, where the admin API pages the latest of them (``shared.adminkeys``, which
        trims the stream to its last ``AUDIT_MAXLEN``); the cursor moves only after the
        commit, and a replay inserts nothing twice."""
        after = self._redis.get(AUDIT_SUNK) or "0-0"
        entries = self._redis.xrange(AUDIT, min=f"({after}", count=self._batch)
        if not entries:
            return 0
        rows = [
            {
                "entry_id": entry_id,
                "key_id": f.get("target") or f.get("key_id", ""),
                "action": f.get("action", ""),
                "ts": float(f.get("ts") or split_id(entry_id)[0] / 1000),
                "detail": {
                    **json.loads(f.get("detail") or "{}"),
                    **{k: f[k] for k in ("admin", "request_id") if f.get(k)},
                }
                or None,
            }
            for entry_id, f in entries
        ]
        with self._engine.begin() as conn:
            insert_new(conn, key_audit, rows)
        self._redis.set(AUDIT_SUNK, entries[-1][0])
        return len(entries)

    def run(self, interval: float, stop: threading.Event) -> None:
        """Move entries until ``stop`` is set; a failing Redis or database is retried."""
        while not stop.is_set():
            try:
                moved = self.run_once()
            except (redis.RedisError, sa.exc.SQLAlchemyError) as exc:
                log.warning("sink: %s; entries stay in Redis, trying again", exc)
                moved = 0
            if not moved:
                stop.wait(interval)


def record_audit(client: redis.Redis, key_id: str, action: str, **detail: Any) -> None:
    """Append an operator action on a key, made on the command line, to the audit stream
    (the admin API's :class:`shared.adminkeys.AuditLog`, as admin ``cli``); the sink
    copies it to SQL."""
    AuditLog(client).record("cli", action, key_id, detail, request_id="")


def serve(
    client: redis.Redis, database_url: str, *, migrate: bool, batch: int, interval: float
) -> None:
    """The ``imagegate sink`` process: runs until SIGTERM or SIGINT. A database or Redis
    that is away at start (a restart) is waited for, not a reason to exit: under honcho
    one line that exits stops the whole stack."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    engine = engine_for(database_url)
    log.info("sink: moving ledger entries from Redis to %s", engine.url.render_as_string())
    sink = Sink(client, engine, batch=batch)
    while not stop.is_set():
        try:
            if migrate:
                upgrade(engine)
            log.info("sink: %d ledger streams with entries", sink.adopt_streams())
            break
        except (redis.RedisError, sa.exc.SQLAlchemyError) as exc:
            log.warning("sink: %s; trying again", exc)
            stop.wait(interval)
    sink.run(interval, stop)
