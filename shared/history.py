"""History read from SQL, merged with the entries Redis holds that the sink has not moved.

:class:`History` answers ``/v1/usage``, ``imagegate keys usage [--ledger]`` and
``imagegate ledger verify``. Nothing is missing from an answer and nothing is counted
twice, without pausing the sink or the traffic:

1. One Redis transaction reads a *snapshot* of the key: its balance, every entry still
   in its stream (``R``, the ones not yet deleted by the sink) and the stream's last id
   ``L``. Balance and entries change together in Redis (one script), so they agree.
2. SQL gives the entries with ids up to ``L`` that are not in ``R``. An entry is deleted
   from Redis only after its SQL transaction committed, so every entry up to ``L``
   missing from ``R`` is in SQL by then; entries written after the snapshot (ids after
   ``L``) are left out on both sides. Rows before the first id of ``R`` are summed by
   SQL; the few between ``R``'s first id and ``L`` come back as rows and are compared
   with ``R`` by id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from shared.billing import BALANCE, LEDGER, MONEY_KINDS, UsageRow, usage_rows
from shared.db import ledger_entries as t
from shared.sink import split_id

Id = tuple[int, int]


@dataclass(frozen=True)
class Snapshot:
    balance: int
    entries: list[dict[str, str]]  # the stream's entries, oldest first, with their "id"
    last: Id | None  # the stream's last id; None: no entry was ever written

    @property
    def first(self) -> Id | None:
        return split_id(self.entries[0]["id"]) if self.entries else None


@dataclass(frozen=True)
class Difference:
    key_id: str
    balance: int  # in Redis
    opening: int  # the balance before the first entry (0: keys start empty)
    ledger: int  # the sum of the entries that move money, SQL and Redis together
    entries_sql: int
    entries_redis: int

    @property
    def expected(self) -> int:
        return self.opening + self.ledger


def _upto(last: Id) -> Any:
    return sa.or_(
        t.c.entry_ms < last[0], sa.and_(t.c.entry_ms == last[0], t.c.entry_seq <= last[1])
    )


def _before(first: Id) -> Any:
    return sa.or_(
        t.c.entry_ms < first[0], sa.and_(t.c.entry_ms == first[0], t.c.entry_seq < first[1])
    )


def _as_entry(row: Any) -> dict[str, str]:
    entry = {
        "id": row.entry_id,
        "kind": row.kind,
        "job": row.job_id,
        "model": row.model,
        "images": str(row.images),
        "amount": str(row.amount),
        "ts": repr(row.ts),
    }
    if row.day:
        entry["day"] = row.day
    if row.cost is not None:
        entry["cost"] = str(row.cost)
    entry.update({k: str(v) for k, v in (row.extra or {}).items() if k not in entry})
    return entry


class History:
    """``engine``: the database, or a function that gives it when first needed (the web
    migrates a new SQLite file on its first question, not at every app built in tests)."""

    def __init__(self, client: redis.Redis, engine: Engine | Callable[[], Engine]) -> None:
        self._redis = client
        self._source = engine

    @cached_property
    def _engine(self) -> Engine:
        return self._source if isinstance(self._source, Engine) else self._source()

    def snapshot(self, key_id: str) -> Snapshot:
        stream = LEDGER.format(key_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.get(BALANCE.format(key_id))
        pipe.xrange(stream)
        pipe.xinfo_stream(stream)
        balance, entries, info = pipe.execute(raise_on_error=False)
        last = None
        if not isinstance(info, Exception):
            last = split_id(info["last-generated-id"])
        elif "no such key" not in str(info).lower():
            raise info
        return Snapshot(int(balance or 0), [{"id": i, **f} for i, f in entries], last)

    def _merged(self, conn: Any, key_id: str, snap: Snapshot, *where: Any) -> tuple[Any, list]:
        """(the condition for SQL's own rows, the entries to add to them): see above."""
        cond = [t.c.key_id == key_id, *where]
        if snap.last is None:
            return sa.and_(*cond), []
        cond.append(_upto(snap.last))
        if snap.first is None:
            return sa.and_(*cond), []
        in_redis = {e["id"] for e in snap.entries}
        between = conn.execute(sa.select(t).where(*cond, sa.not_(_before(snap.first)))).all()
        extra = [_as_entry(r) for r in between if r.entry_id not in in_redis]
        return sa.and_(*cond, _before(snap.first)), extra + snap.entries

    def usage(self, key_id: str) -> list[UsageRow]:
        """Images delivered and spend by day and model, all of history."""
        snap = self.snapshot(key_id)
        with self._engine.connect() as conn:
            cond, more = self._merged(conn, key_id, snap)
            rows = conn.execute(
                sa.select(
                    t.c.day,
                    t.c.model,
                    sa.func.sum(t.c.images),
                    sa.func.sum(t.c.amount),
                    sa.func.sum(t.c.cost),
                )
                .where(cond, t.c.kind == "settle")
                .group_by(t.c.day, t.c.model)
            ).all()
        totals: dict[tuple[str, str], list[int]] = {}
        for day, model, images, amount, cost in rows:
            totals[(day or "", model)] = [int(images or 0), -int(amount or 0), int(cost or 0)]
        for row in usage_rows(more):
            total = totals.setdefault((row.day, row.model), [0, 0, 0])
            total[0] += row.images
            total[1] += row.amount_micros
            total[2] += row.cost_micros
        return [UsageRow(d, m, *v) for (d, m), v in sorted(totals.items())]

    def ledger(self, key_id: str, count: int = 100) -> list[dict[str, str]]:
        """The latest ``count`` entries, oldest first (SQL's and those still in Redis)."""
        snap = self.snapshot(key_id)
        with self._engine.connect() as conn:
            cond, more = self._merged(conn, key_id, snap)
            rows = conn.execute(
                sa.select(t)
                .where(cond)
                .order_by(t.c.entry_ms.desc(), t.c.entry_seq.desc())
                .limit(count)
            ).all()
        entries = {e["id"]: e for e in [*(_as_entry(r) for r in rows), *more]}
        ordered = sorted(entries.values(), key=lambda e: split_id(e["id"]))
        return ordered[-count:] if count else []

    def entries(
        self, key_id: str, since_ms: int | None = None, until_ms: int | None = None
    ) -> Iterator[dict[str, str]]:
        """Every entry of the key, oldest first, with ids between ``since_ms`` and
        ``until_ms`` (milliseconds, inclusive; None: no bound): SQL's, streamed in
        batches, then those still in Redis (see the module docstring)."""
        snap = self.snapshot(key_id)
        bounds = []
        if since_ms is not None:
            bounds.append(t.c.entry_ms >= since_ms)
        if until_ms is not None:
            bounds.append(t.c.entry_ms <= until_ms)
        with self._engine.connect() as conn:
            cond, more = self._merged(conn, key_id, snap)
            result = conn.execution_options(yield_per=1000).execute(
                sa.select(t).where(cond, *bounds).order_by(t.c.entry_ms, t.c.entry_seq)
            )
            for row in result:
                yield _as_entry(row)
        for entry in sorted(more, key=lambda e: split_id(e["id"])):
            ms = split_id(entry["id"])[0]
            if (since_ms is None or ms >= since_ms) and (until_ms is None or ms <= until_ms):
                yield entry

    def verify(self, key_ids: Iterable[str]) -> list[Difference]:
        """Each key's balance against its ledger: opening (0) + the money entries in SQL
        and not yet moved. Returns the keys where they differ."""
        differences = []
        for key_id in key_ids:
            snap = self.snapshot(key_id)
            with self._engine.connect() as conn:
                cond, more = self._merged(conn, key_id, snap)
                total, count = conn.execute(
                    sa.select(sa.func.sum(t.c.amount), sa.func.count()).where(
                        cond, t.c.kind.in_(sorted(MONEY_KINDS))
                    )
                ).one()
            ledger = int(total or 0) + sum(
                int(e.get("amount") or 0) for e in more if e.get("kind") in MONEY_KINDS
            )
            if snap.balance != ledger:
                differences.append(
                    Difference(key_id, snap.balance, 0, ledger, int(count), len(snap.entries))
                )
        return differences
