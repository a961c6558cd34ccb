"""The SQL system of record (shared/db.py, shared/sink.py, shared/history.py) against a
real redis-server and both databases: SQLite in a file and PostgreSQL (a database of
the test's own on the machine's server, 127.0.0.1:5432, created and dropped here).

What must hold: the sink moves each ledger entry to SQL exactly once, deleting it from
Redis only after its transaction committed; a sink that dies between the two inserts
nothing twice when it runs again; while SQL is down the entries wait in Redis; usage,
ledger and ``verify`` answer the same before, during and after the move.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from click.testing import CliRunner

from shared import db
from shared.billing import LEDGER, PENDING, Accounts
from shared.catalog import Catalog, parse_catalog
from shared.cli import main as cli_main
from shared.errors import UpstreamError
from shared.history import History
from shared.jobs import Job, JobStore, StoredImage, new_job_id
from shared.keys import ApiKey, KeyStore
from shared.redis_client import connect
from shared.sink import AUDIT, AUDIT_SUNK, Sink, record_audit
from tests.support.pg import own_database

PRICE = 10_000
IMG = StoredImage(key="k/0.png", width=8, height=8, content_type="image/png")
CATALOG: Catalog = parse_catalog(
    {
        "families": {"local": {}},
        "models": [
            {
                "id": "m",
                "family": "local",
                "price": "0.010",
                "size_rule": {"kind": "max_side", "min": 16, "max": 64},
                "default_size": "32x32",
                "max_n": 10,
            }
        ],
        "tiers": {"open": {}},
    }
)
MODEL = CATALOG.models["m"]
TIER = CATALOG.tier("open")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[sa.Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('sql')}/records.sqlite3"
        engine = db.ensure_schema(url, migrate=True)
        yield engine
        engine.dispose()
        return
    with own_database() as url:
        engine = db.ensure_schema(url, migrate=True)
        yield engine
        engine.dispose()


@pytest.fixture()
def client(redis_server) -> redis.Redis:
    client = connect(redis_server.url.rsplit("/", 1)[0] + "/12")
    client.flushdb()
    return client


@pytest.fixture()
def accounts(client: redis.Redis) -> Accounts:
    return Accounts(client, CATALOG)


@pytest.fixture()
def store(client: redis.Redis) -> JobStore:
    return JobStore(client, retention_seconds=600)


def _key(accounts: Accounts, start: int = 1_000_000) -> ApiKey:
    key = ApiKey(id="key_" + secrets.token_hex(6), name="sink", created=0)
    accounts.set_balance(key.id, start)
    return key


def _job(accounts: Accounts, store: JobStore, key: ApiKey, n: int) -> Job:
    now = time.time()
    job = Job(
        id=new_job_id(),
        key_id=key.id,
        model=MODEL.id,
        family="local",
        queue="local",
        request={"prompt": "x", "n": n, "size": "32x32", "user": "alice"},
        created=now,
        deadline=now + 60,
    )
    accounts.admit(
        key,
        TIER,
        MODEL,
        n,
        job_key=store.record_key(job.id),
        job_id=job.id,
        spec_json=store.spec_json(job),
        deadline=job.deadline,
        ttl=600,
        now=now,
    )
    return job


def _traffic(accounts: Accounts, store: JobStore, key: ApiKey) -> list[Job]:
    """A top-up, a job delivering 2 of 3, one failing, one still running."""
    accounts.top_up(key.id, 500_000)
    done, failed, running = (_job(accounts, store, key, n) for n in (3, 2, 1))
    # a record field added later (an end user) is kept in job_usage.extra
    accounts._redis.hset(store.record_key(done.id), "user", "end-user-7")
    assert store.succeed(done.id, store.claim(done.id).attempt, [IMG, IMG])
    assert store.fail(failed.id, store.claim(failed.id).attempt, UpstreamError("boom"))
    return [done, failed, running]


def _rows(engine: sa.Engine, table: sa.Table, key_id: str) -> list:
    with engine.connect() as conn:
        return conn.execute(sa.select(table).where(table.c.key_id == key_id)).all()


def _answers(history: History, key_id: str) -> tuple:
    ledger = [{k: v for k, v in e.items() if k != "ts"} for e in history.ledger(key_id, 50)]
    return history.usage(key_id), ledger, history.verify([key_id])


def test_entries_move_once_and_every_answer_stays_the_same(
    engine: sa.Engine, client: redis.Redis, accounts: Accounts, store: JobStore
) -> None:
    key = _key(accounts)
    done, failed, running = _traffic(accounts, store, key)
    history = History(client, engine)
    before = _answers(history, key.id)
    usage, ledger, differences = before
    assert [(u.model, u.images, u.amount_micros) for u in usage] == [("m", 2, 2 * PRICE)]
    assert [e["kind"] for e in ledger] == [
        "adjust", "topup", "reserve", "reserve", "reserve",
        "settle", "refund", "settle", "refund",
    ]  # fmt: skip
    assert differences == []
    entries = client.xlen(LEDGER.format(key.id))

    assert Sink(client, engine).run_once() == entries
    assert client.xlen(LEDGER.format(key.id)) == 0 and not client.sismember(PENDING, key.id)
    assert len(_rows(engine, db.ledger_entries, key.id)) == entries
    assert _answers(history, key.id) == before

    usage_rows = {r.job_id: r for r in _rows(engine, db.job_usage, key.id)}
    assert set(usage_rows) == {done.id, failed.id}  # the running job has not settled
    ok = usage_rows[done.id]
    assert (ok.status, ok.n, ok.images, ok.spent, ok.refunded) == (
        "succeeded", 3, 2, 2 * PRICE, PRICE,
    )  # fmt: skip
    assert ok.extra["user"] == "end-user-7" and ok.finished >= ok.created
    assert (ok.size, ok.end_user, ok.error_code) == ("32x32", "alice", None)
    bad = usage_rows[failed.id]
    assert (bad.status, bad.images, bad.spent, bad.refunded) == ("failed", 0, 0, 2 * PRICE)
    assert bad.error_code == "upstream_error"

    # the running job settles later: only its new entries move
    assert store.succeed(running.id, store.claim(running.id).attempt, [IMG])
    assert Sink(client, engine).run_once() == 1
    assert len(_rows(engine, db.ledger_entries, key.id)) == entries + 1
    assert history.verify([key.id]) == []
    assert [(u.images, u.amount_micros) for u in history.usage(key.id)] == [(3, 3 * PRICE)]


def test_a_sink_killed_between_commit_and_delete_inserts_nothing_twice(
    engine: sa.Engine, client: redis.Redis, accounts: Accounts, store: JobStore
) -> None:
    key = _key(accounts)
    _traffic(accounts, store, key)
    history = History(client, engine)
    before = _answers(history, key.id)
    sink = Sink(client, engine, batch=4)
    stream = LEDGER.format(key.id)
    # committed to SQL, then "killed" before the delete: every entry is in both places
    sink._commit(key.id, client.xrange(stream, count=4))
    assert client.xlen(stream) == len(before[1])
    assert _answers(history, key.id) == before  # counted once, not twice
    # commit the rest too, twice over (two sinks at once), still nothing deleted
    sink._commit(key.id, client.xrange(stream))
    sink._commit(key.id, client.xrange(stream))
    assert len(_rows(engine, db.ledger_entries, key.id)) == len(before[1])
    assert _answers(history, key.id) == before
    # the restarted sink replays them all: nothing inserted, all deleted, in batches of 4
    assert sink.run_once() == len(before[1])
    assert len(_rows(engine, db.ledger_entries, key.id)) == len(before[1])
    assert client.xlen(stream) == 0
    assert _answers(history, key.id) == before


def test_streams_written_before_the_sink_existed_are_adopted(
    engine: sa.Engine, client: redis.Redis
) -> None:
    """A ledger stream nobody named in the pending set (an older gateway's) is moved too."""
    stream = LEDGER.format("key_old")
    client.xadd(
        stream, {"kind": "topup", "job": "", "model": "", "images": 0, "amount": 5, "ts": 1}
    )
    # a settle entry from before entries carried their usage day
    old = {"kind": "settle", "job": "imgjob_old", "model": "m", "images": 1, "amount": -5}
    client.xadd(stream, {**old, "ts": 86400 * 3 + 5})
    sink = Sink(client, engine)
    assert sink.run_once() == 0  # not pending: not seen
    assert sink.adopt_streams() == 1
    assert sink.run_once() == 2 and client.xlen(stream) == 0
    [usage] = History(client, engine).usage("key_old")
    assert (usage.day, usage.model, usage.images, usage.amount_micros) == ("1970-01-04", "m", 1, 5)
    assert sink.adopt_streams() == 0  # an empty stream is not pending again


def test_while_sql_is_unusable_entries_wait_in_redis(
    tmp_path: Path, client: redis.Redis, accounts: Accounts, store: JobStore
) -> None:
    key = _key(accounts)
    _traffic(accounts, store, key)
    stream = LEDGER.format(key.id)
    entries = client.xrange(stream)
    no_schema = db.engine_for(f"sqlite:///{tmp_path}/empty.sqlite3")  # never migrated
    with pytest.raises(sa.exc.OperationalError):
        Sink(client, no_schema).run_once()
    assert client.xrange(stream) == entries and client.sismember(PENDING, key.id)
    db.upgrade(no_schema)
    assert Sink(client, no_schema).run_once() == len(entries)


def test_verify_names_a_balance_changed_behind_the_ledgers_back(
    engine: sa.Engine, client: redis.Redis, accounts: Accounts, store: JobStore
) -> None:
    key, other = _key(accounts), _key(accounts, 5)
    _traffic(accounts, store, key)
    Sink(client, engine).run_once()
    client.incrby(f"ig:balance:{key.id}", 123)
    [difference] = History(client, engine).verify([key.id, other.id])
    assert difference.key_id == key.id
    assert difference.balance - difference.expected == 123
    assert difference.entries_redis == 0 and difference.entries_sql > 0


def test_fields_added_to_entries_later_are_kept_and_the_audit_trail_moves(
    engine: sa.Engine, client: redis.Redis, accounts: Accounts
) -> None:
    key = _key(accounts)
    client.xadd(
        LEDGER.format(key.id),
        {"kind": "topup", "job": "", "model": "", "images": 0, "amount": 7, "ts": time.time(),
         "price": "0.01", "margin": "0.002"},
    )  # fmt: skip
    client.incrby(f"ig:balance:{key.id}", 7)
    record_audit(client, key.id, "set-tier", tier="premium")
    assert Sink(client, engine).run_once() == 3
    [row] = [r for r in _rows(engine, db.ledger_entries, key.id) if r.kind == "topup"]
    assert row.extra == {"price": "0.01", "margin": "0.002"}
    history = History(client, engine)
    assert history.ledger(key.id)[-1]["margin"] == "0.002"
    assert history.verify([key.id]) == []
    [audit] = _rows(engine, db.key_audit, key.id)
    assert (audit.action, audit.detail) == ("set-tier", {"tier": "premium", "admin": "cli"})
    # the audit entries stay in Redis for the admin API's latest page; the cursor keeps a
    # second pass (or a replay from an older cursor) from copying them twice
    assert client.xlen(AUDIT) >= 1
    assert Sink(client, engine).run_once() == 0
    client.delete(AUDIT_SUNK)
    Sink(client, engine).run_once()
    assert len(_rows(engine, db.key_audit, key.id)) == 1


def test_migrations_run_twice_and_down_and_up_again(engine: sa.Engine) -> None:
    """Upgrading an up-to-date database changes nothing; the downgrade drops every table
    (the other tests here use keys of their own, so an empty schema afterwards is fine)."""
    tables = {"ledger_entries", "job_usage", "key_audit"}
    db.upgrade(engine)
    assert db.current_revision(engine) == "0001"
    assert tables <= set(sa.inspect(engine).get_table_names())
    db.downgrade(engine, "base")
    assert not tables & set(sa.inspect(engine).get_table_names())
    db.upgrade(engine)
    assert db.current_revision(engine) == "0001"
    assert tables <= set(sa.inspect(engine).get_table_names())


def test_the_cli_upgrades_and_verifies(
    engine: sa.Engine, client: redis.Redis, accounts: Accounts, store: JobStore
) -> None:
    """``imagegate db upgrade`` and ``imagegate ledger verify`` on the test's Redis and
    database: no difference, then the one made behind the ledger's back (exit 1)."""
    plaintext, key = KeyStore(client).create("cli", tier="open")
    accounts.set_balance(key.id, 1_000_000)
    _traffic(accounts, store, key)
    Sink(client, engine).run_once()
    url = engine.url.render_as_string(hide_password=False)
    redis_url = client.connection_pool.connection_kwargs
    env = {
        "IMAGEGATE_DATABASE_URL": url,
        "IMAGEGATE_REDIS_URL": f"redis://127.0.0.1:{redis_url['port']}/{redis_url['db']}",
    }
    runner = CliRunner()
    upgraded = runner.invoke(cli_main, ["db", "upgrade"], env=env)
    assert upgraded.exit_code == 0 and "at revision 0001" in upgraded.output, upgraded.output
    verified = runner.invoke(cli_main, ["ledger", "verify", key.id], env=env)
    assert verified.exit_code == 0 and "1 keys checked, 0 differ" in verified.output
    client.incrby(f"ig:balance:{key.id}", 123)
    differs = runner.invoke(cli_main, ["ledger", "verify", key.id], env=env)
    assert differs.exit_code == 1
    assert f"{key.id}\tbalance 1.470123\tledger 1.470000\tdifference 0.000123" in differs.output


def test_the_migrated_schema_is_the_one_the_code_declares(engine: sa.Engine) -> None:
    """A migration is a frozen copy of the tables of its day (shared/migrations); the code's
    tables (shared/db.py) must still be what the migrations build, or a change to one
    without a new migration would reach a database that lacks it."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    db.upgrade(engine)
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), db.metadata)
    assert differences == []
