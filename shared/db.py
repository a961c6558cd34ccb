"""The SQL system of record: ledger entries, per-job usage and the keys' audit trail.

Redis keeps the hot state (balances, admission, jobs in flight); history lives here,
moved from Redis by the sink (:mod:`shared.sink`) exactly once. SQLAlchemy Core, no
ORM: three tables, written with ``INSERT ... ON CONFLICT DO NOTHING`` on their natural
unique ids, so replaying the same entries inserts nothing twice. The schema is made
by Alembic migrations (``shared/migrations/``), run by ``imagegate db upgrade`` and, when
``IMAGEGATE_DATABASE_MIGRATE`` is on, at the start of each process that uses the
database.

``IMAGEGATE_DATABASE_URL`` picks the database: SQLite in a file by default
(``sqlite:///var/imagegate.sqlite3``, relative to the working directory), PostgreSQL
in production (``postgresql+psycopg://user:password@host/db``, psycopg 3).

Tables and columns (money in integer micro-units, times in unix seconds):

``ledger_entries``: one row per ledger stream entry (``ig:ledger:<key id>``)
    key_id, entry_id   the API key and the Redis stream id of the entry: primary key
    entry_ms,          the stream id's two numbers (milliseconds, sequence): the
    entry_seq          entries' order, which the text of the id does not sort by
    kind               reserve | settle | refund | topup | adjust
    job_id, model      the job and model charged for ('' for top-ups)
    images, amount     images concerned; signed micro-units (see shared.billing)
    ts, day            when it was written; the usage day (settle/refund)
    cost               settle entries: what the upstream charged for the job (micro-units;
                       null: not known), beside ``amount``, what the client paid
    extra              JSON object of every other field of the entry (fields added to
                       entries later land here without a migration)
    sunk_at            when the sink committed it
``job_usage``: one row per billed job that ended, from its record when it settled
    job_id             primary key
    key_id, model, serving, status, n, images, unit_price, charged, spent, refunded,
    day, created, started, finished, worker, takeovers
    error_code         the error's code when the job did not succeed
    size, end_user     the request's ``size`` and OpenAI's ``user`` field, if given
    extra              JSON object of the record's other small fields (not its spec,
                       result or error payloads)
``key_audit``: one row per operator action on a key (``ig:audit`` stream)
    entry_id           the Redis stream id: primary key
    key_id, action, ts  (key_id: the action's target, a key id or an admin key id)
    detail             JSON object of what changed, with ``admin`` (the admin key id, or
                       ``cli``) and the admin API's ``request_id``
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

metadata = sa.MetaData()

JsonColumn = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

ledger_entries = sa.Table(
    "ledger_entries",
    metadata,
    sa.Column("key_id", sa.String(64), primary_key=True),
    sa.Column("entry_id", sa.String(48), primary_key=True),
    sa.Column("entry_ms", sa.BigInteger, nullable=False),
    sa.Column("entry_seq", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("job_id", sa.String(64), nullable=False, server_default=""),
    sa.Column("model", sa.String(128), nullable=False, server_default=""),
    sa.Column("images", sa.Integer, nullable=False, server_default="0"),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("day", sa.String(10)),
    sa.Column("cost", sa.BigInteger),
    sa.Column("extra", JsonColumn),
    sa.Column("sunk_at", sa.Float, nullable=False),
    sa.Index("ix_ledger_entries_key_kind_day", "key_id", "kind", "day"),
    sa.Index("ix_ledger_entries_key_order", "key_id", "entry_ms", "entry_seq"),
    sa.Index("ix_ledger_entries_job_id", "job_id"),
)

job_usage = sa.Table(
    "job_usage",
    metadata,
    sa.Column("job_id", sa.String(64), primary_key=True),
    sa.Column("key_id", sa.String(64), nullable=False),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("serving", sa.String(128)),
    sa.Column("status", sa.String(16)),
    sa.Column("error_code", sa.String(64)),
    sa.Column("size", sa.String(32)),
    sa.Column("end_user", sa.String(255)),
    sa.Column("n", sa.Integer),
    sa.Column("images", sa.Integer),
    sa.Column("unit_price", sa.BigInteger),
    sa.Column("charged", sa.BigInteger),
    sa.Column("spent", sa.BigInteger),
    sa.Column("refunded", sa.BigInteger),
    sa.Column("day", sa.String(10)),
    sa.Column("created", sa.Float),
    sa.Column("started", sa.Float),
    sa.Column("finished", sa.Float),
    sa.Column("worker", sa.String(255)),
    sa.Column("takeovers", sa.Integer),
    sa.Column("extra", JsonColumn),
    sa.Index("ix_job_usage_key_day", "key_id", "day"),
)

key_audit = sa.Table(
    "key_audit",
    metadata,
    sa.Column("entry_id", sa.String(48), primary_key=True),
    sa.Column("key_id", sa.String(64), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("detail", JsonColumn),
    sa.Index("ix_key_audit_key_id", "key_id"),
)


def _insert_sqlite(table: sa.Table) -> Any:
    return sqlite.insert(table).on_conflict_do_nothing()


def _insert_postgresql(table: sa.Table) -> Any:
    return postgresql.insert(table).on_conflict_do_nothing()


# INSERT ... ON CONFLICT DO NOTHING, by dialect name.
_INSERT_IGNORING_DUPLICATES: dict[str, Callable[[sa.Table], Any]] = {
    "sqlite": _insert_sqlite,
    "postgresql": _insert_postgresql,
}


def insert_new(conn: Connection, table: sa.Table, rows: list[dict[str, Any]]) -> int:
    """Insert the rows whose primary key is not there yet; the others are left alone.
    Returns how many were inserted."""
    if not rows:
        return 0
    dialect = conn.dialect.name
    try:
        statement = _INSERT_IGNORING_DUPLICATES[dialect](table)
    except KeyError:
        raise ValueError(f"unsupported database {dialect!r}: SQLite or PostgreSQL") from None
    return conn.execute(statement, rows).rowcount


def _sqlite_file(url: sa.URL) -> Path | None:
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    return Path(database)


def _sqlite_wal(dbapi_connection: Any, _record: Any) -> None:
    """Write-ahead log: the web's reads do not wait for the sink's writes. Synchronous
    stays FULL: a committed entry is deleted from Redis, so the commit must be on disk."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


@cache
def engine_for(url: str) -> Engine:
    """One engine (and its pool) per URL per process. A SQLite file's folder is made."""
    parsed = sa.make_url(url)
    path = _sqlite_file(parsed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A writer waits for the other's transaction instead of failing at once.
        engine = sa.create_engine(parsed, connect_args={"timeout": 30})
        sa.event.listen(engine, "connect", _sqlite_wal)
        return engine
    return sa.create_engine(parsed, pool_pre_ping=True)


@contextmanager
def _migration_lock(engine: Engine):
    """Several processes starting at once run the migrations one after the other."""
    path = _sqlite_file(engine.url)
    if path is None:
        yield  # PostgreSQL: env.py takes an advisory lock in the migration transaction
        return
    with open(f"{path}.migrate.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "shared:migrations")
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run the migrations up to ``revision`` (``imagegate db upgrade``)."""
    from alembic import command

    with _migration_lock(engine):
        command.upgrade(alembic_config(engine), revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Undo the migrations down to ``revision`` (``base``: no table left)."""
    from alembic import command

    with _migration_lock(engine):
        command.downgrade(alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def extra_json(fields: Mapping[str, str], known: Iterable[str]) -> dict[str, str] | None:
    """The fields not in ``known``, for a JSON ``extra`` column (None when there are none)."""
    known = set(known)
    rest = {k: v for k, v in fields.items() if k not in known}
    return rest or None


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def ensure_schema(url: str, migrate: bool) -> Engine:
    """The engine for ``url``, migrated first when ``migrate`` is on."""
    engine = engine_for(url)
    if migrate:
        upgrade(engine)
    return engine
