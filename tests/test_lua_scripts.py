"""The Lua scripts in ``shared/lua/`` keep their conventions (see :mod:`shared.lua`).

Checked on every file, so a new script is covered as soon as it exists:

* its header declares its KEYS and its named ARGV, and the script uses exactly
  the arguments it declares and no KEYS index beyond them;
* it compiles on a real Redis (``SCRIPT LOAD`` of the text Redis runs, includes
  inlined); a piece compiles alone and uses no KEYS or ARGV;
* every key it touches comes from KEYS: the scripts run a scenario that takes
  each of them through its branches while a ``MONITOR`` connection records what
  Redis executes; each command a script issued is asked for its keys
  (``COMMAND GETKEYS``) and they must be among the keys of the ``EVALSHA`` that
  ran it;
* the job record's field names they use are the documented ones
  (:mod:`shared.jobrecord`), and their terminal statuses are :data:`shared.jobs.TERMINAL`.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

from api.parse_limit import ParseLimit
from shared import jobrecord, lua
from shared.balance_changes import BalanceChanges
from shared.billing import LEDGER, PENDING, Accounts, Idempotency
from shared.capacity import Capacity
from shared.catalog import Catalog, parse_catalog
from shared.errors import Conflict, InsufficientBalance, RateLimited, UpstreamError
from shared.health import BreakerPolicy, Breakers
from shared.jobs import (
    TERMINAL,
    WEBHOOKS_DUE,
    Job,
    JobStatus,
    JobStore,
    Liveness,
    StoredImage,
    new_job_id,
)
from shared.keys import ApiKey
from shared.presence import Presence
from shared.redis_client import connect
from shared.retention import INDEX, ImageRetention
from shared.storage import LocalStorage, StorageConfig
from workers.webhook_pump import inflight_key, pump_once

SCRIPTS = lua.script_names()
PIECES = lua.piece_names()
STATUSES = {s.value for s in JobStatus}

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
        "tiers": {
            "t": {
                "requests_per_minute": 50,
                "limits": [{"models": ["m"], "per_minute": 20, "per_day": 100}],
                "free_images": {"per_day": 1},
                "per_user": {"per_minute": 5, "per_day": 10},
            }
        },
    }
)


def _url(redis_server) -> str:
    """A database of the test Redis that no running worker's reaper looks at."""
    return redis_server.url.rsplit("/", 1)[0] + "/12"


def _file(name: str) -> str:
    return lua._text(name)


def _code(text: str) -> str:
    """The text without its comments."""
    return re.sub(r"--[^\n]*", "", text)


def test_the_scripts_and_pieces_are_found() -> None:
    assert {"admit", "job_claim", "job_finish", "job_reap"} <= set(SCRIPTS)
    assert "_settle.lua" in PIECES


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_script_declares_its_keys_and_arguments_and_uses_only_those(name: str) -> None:
    text = _file(f"{name}.lua")
    head = lua.header(name)
    assert head.keys >= 1 and head.args, f"{name}.lua: no KEYS or ARGV in its header"
    assert re.search(r"^-- Returns ", text.split("\n\n", 1)[0], re.MULTILINE), (
        f"{name}.lua: the header does not say what it returns"
    )
    code = _code(text)
    assert "local a = cjson.decode(ARGV[1])" in code
    assert set(re.findall(r"ARGV\[(\w+)\]", code)) == {"1"}, "arguments are named, in ARGV[1]"
    used = set(re.findall(r"\ba\.(\w+)", code))
    assert used == head.args, f"{name}.lua uses {sorted(used)}, declares {sorted(head.args)}"
    for index in re.findall(r"KEYS\[([^\]]+)\]", code):
        if index.isdigit():
            assert 1 <= int(index) <= head.keys, f"{name}.lua: KEYS[{index}] is not declared"
        else:
            assert head.more_keys, f"{name}.lua: KEYS[{index}] but no 'KEYS[n..]' declared"


@pytest.mark.parametrize("piece", PIECES)
def test_a_piece_takes_everything_as_parameters(piece: str) -> None:
    code = _code(_file(piece))
    assert "KEYS" not in code and "ARGV" not in code, f"{piece} reads KEYS/ARGV"
    top_level = [
        line for line in code.splitlines() if line.strip() and not line.startswith((" ", "end"))
    ]
    for line in top_level:
        assert line.startswith("local "), f"{piece}: '{line}' is not a local declaration"


def test_an_include_is_inlined_once_and_an_unknown_one_is_not_silently_dropped() -> None:
    finish = lua.source("job_finish")
    assert finish.count("local function settle(") == 1
    assert "-- #include" not in finish
    for name in SCRIPTS:
        for piece in re.findall(r"^-- #include (\S+)", _file(f"{name}.lua"), re.MULTILINE):
            assert piece in PIECES, f"{name}.lua includes {piece}, which does not exist"


def test_no_script_builds_a_key_name() -> None:
    """A static look at every call: its first argument (a key, for every command these
    scripts use but TIME and PUBLISH) is never a literal nor a concatenation."""
    for name in SCRIPTS:
        code = _code(lua.source(name))
        for command, first in re.findall(r"redis\.p?call\('(\w+)',\s*([^,)]+)", code):
            assert not first.startswith(("'", '"')), f"{name}.lua: {command} {first}"
            assert ".." not in first, f"{name}.lua: {command} {first} builds a name"


def test_the_terminal_statuses_are_the_ones_python_knows() -> None:
    table = re.search(r"local TERMINAL = \{([^}]*)\}", _file("_terminal.lua")).group(1)
    assert set(re.findall(r"(\w+) = true", table)) == {s.value for s in TERMINAL}


def test_scripts_use_only_documented_job_record_fields() -> None:
    """Every literal the job scripts pass to a hash command on a job record (``k.job``,
    KEYS[1], or each KEYS[i] of job_beat) is a field of :mod:`shared.jobrecord`, or a status
    written into one. (No other hash these scripts touch is addressed that way.)"""
    seen: set[str] = set()
    job_files = [f"{s}.lua" for s in SCRIPTS if s.startswith("job_") or s == "admit"]
    for name in [*job_files, *PIECES]:
        for command, key, rest in re.findall(
            r"redis\.call\('(H[A-Z]+)',\s*([^,]+),([^)]*)\)", _code(_file(name))
        ):
            if key.strip() not in ("k.job", "KEYS[1]", "KEYS[i]"):
                continue
            literals = set(re.findall(r"'([^']*)'", rest))
            seen |= literals
            unknown = literals - jobrecord.FIELDS - STATUSES
            assert not unknown, f"{name}: {command} names {sorted(unknown)}"
    assert {"status", "attempt", "settled", "webhook_url", "takeovers"} <= seen


def test_the_loader_refuses_arguments_the_header_does_not_declare(redis_server) -> None:
    script = lua.register(connect(_url(redis_server)), "job_due")
    with pytest.raises(TypeError, match="takes"):
        script(["ig:jobs:watch"], now="", limit=1, extra=1)
    with pytest.raises(TypeError, match="takes"):
        script(["ig:jobs:watch"], now="")
    with pytest.raises(TypeError, match="keys"):
        script(["ig:jobs:watch", "another"], now="", limit=1)


@pytest.mark.parametrize("name", [*SCRIPTS, *PIECES])
def test_it_compiles(redis_server, name: str) -> None:
    text = _file(name) if name.endswith(".lua") else lua.source(name)
    client = connect(_url(redis_server))
    assert client.script_load(text) == hashlib.sha1(text.encode()).hexdigest()


# -- every key a script touches comes from its KEYS ---------------------------------------


@dataclass
class Run:
    """One EVALSHA seen by MONITOR, and the commands the script issued."""

    sha: str
    keys: list[str]
    commands: list[list[str]]


_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "a": "\a", "b": "\b", '"': '"', "\\": "\\"}


def _unquote(text: str) -> str:
    """Undo the quoting of a MONITOR argument (Redis' sdscatrepr)."""
    return re.sub(
        r"\\(x[0-9a-fA-F]{2}|.)",
        lambda m: chr(int(m.group(1)[1:], 16)) if m.group(1)[0] == "x" and len(m.group(1)) == 3
        else _ESCAPES.get(m.group(1), m.group(1)),
        text,
    )  # fmt: skip


class Recorder:
    """A MONITOR connection; :meth:`runs` reads what it saw until now, in one database."""

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=30)
        self._db = int(url.rsplit("/", 1)[1])
        self._monitor = self._client.monitor()
        self._monitor.__enter__()

    def runs(self) -> list[Run]:
        marker = "end-of-scenario-" + secrets.token_hex(4)
        self._client.echo(marker)
        runs: list[Run] = []
        while True:
            line = self._monitor.connection.read_response()
            line = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
            match = re.match(r"[\d.]+ \[(\d+) ([^\]]*)\] (.*)", line)
            if match is None or int(match.group(1)) != self._db:
                continue
            args = [_unquote(a) for a in _QUOTED.findall(match.group(3))]
            if match.group(2) == "lua":
                runs[-1].commands.append(args)
            elif args[0].upper() == "EVALSHA":
                runs.append(Run(args[1], args[3 : 3 + int(args[2])], []))
            elif args[0].upper() == "ECHO" and args[1] == marker:
                return runs

    def close(self) -> None:
        self._monitor.__exit__()
        self._client.close()


@pytest.fixture()
def recorder(redis_server) -> Iterator[Recorder]:
    rec = Recorder(_url(redis_server))
    yield rec
    rec.close()


def _scenario(client: redis.Redis) -> None:
    """Takes every script through its branches (admission refused and accepted, claims,
    heartbeats, handoff, sends, reaps, ends, webhook state; capacity leases; breakers;
    webhook takes and claims; the parse budget; presence announcements; the image
    retention index)."""
    live = Liveness(stale_after=10.0, enqueue_grace=5.0, resend_after=30.0, late=2.0)
    store = JobStore(client, retention_seconds=600, liveness=live)
    # every window, free image and spending counter goes back for images not delivered
    accounts = Accounts(client, CATALOG, return_failed_images=True)
    key = ApiKey(id="key_lua_" + secrets.token_hex(6), name="lua", created=0, tier="t")
    broke = ApiKey(id="key_lua_" + secrets.token_hex(6), name="broke", created=0, tier="t")
    capped = ApiKey(
        id="key_lua_" + secrets.token_hex(6), name="capped", created=0, budget_day_micros=1
    )
    tier, model = CATALOG.tier("t"), CATALOG.models["m"]
    accounts.set_balance(key.id, 10**9)

    def admit(api_key: ApiKey, n: int = 1, idem: Idempotency | None = None, **kw) -> Job:
        now = time.time()
        job = Job(new_job_id(), api_key.id, "m", "local", "local", {"n": n}, now, now + 30)
        accounts.admit(
            api_key, tier, model, n, job_key=store.record_key(job.id), job_id=job.id,
            spec_json=store.spec_json(job), deadline=job.deadline, ttl=600, now=now,
            idempotency=idem, watch=store.watch_entry(job), **kw,
        )  # fmt: skip
        return job

    idem = Idempotency(f"ig:idem:{key.id}:x", "value", 60)
    hooked = admit(key, 2, idem, webhook_url="http://127.0.0.1:9/hook")
    admit(key, 1, idem)  # a duplicate
    assert accounts.release_idempotency(idem)
    with pytest.raises(InsufficientBalance):
        admit(broke, 2)  # one free image, one that the balance does not cover
    accounts.set_balance(capped.id, 10**9)
    admit(capped, 1)  # its free image of the day
    with pytest.raises(InsufficientBalance):
        admit(capped, 1)  # beyond its spending cap of the day
    # an operator's balance changes: applied, replayed, refused below zero
    changes = BalanceChanges(client, idempotency_ttl=60)
    assert changes.apply(broke.id, 5, kind="topup", reason="r", admin="adm", body=b"1",
                         idempotency_key="i").balance_micros == 5  # fmt: skip
    assert changes.apply(broke.id, 5, kind="topup", reason="r", admin="adm", body=b"1",
                         idempotency_key="i").replayed  # fmt: skip
    with pytest.raises(Conflict):
        changes.apply(broke.id, -6, kind="adjust", reason="r", admin="adm", body=b"2")
    with pytest.raises(RateLimited):
        admit(broke, 1, user="u")  # the free image of the day, then a full user window
        admit(broke, 5, user="u")
    assert store.cancel(admit(key, 2, user="u").id)  # the end user's usage is counted
    image = StoredImage(key="k/0.png", width=8, height=8, content_type="image/png")

    # claim, beat, handoff, sent, succeed (settles one of two, webhook due)
    claim = store.claim(hooked.id, worker="w")
    assert claim.should_run and store.claim(hooked.id).outcome == "busy"
    assert store.beat({hooked.id: claim.attempt}) == 1
    assert store.handoff(hooked.id, claim.attempt, 1, {"model": "m", "why": "test"})
    assert store.mark_sent(hooked.id)
    claim = store.claim(hooked.id, worker="w")
    assert store.succeed(hooked.id, claim.attempt, [image])
    assert store.claim(hooked.id).outcome == "terminal"
    store.set_webhook_state(hooked.id, {"state": "pending"}, keep_until=store.clock() + 60)

    # reaps: fresh, requeue, wait, takeover, expired; a claim that expires; fail, cancel
    reaped = admit(key)
    assert store.reap(reaped.id) == "fresh"
    later = time.time() + 6
    assert store.reap(reaped.id, now=later) == "requeue"
    assert reaped.id in store.due(now=later + 6)
    claim = store.claim(reaped.id)
    assert store.reap(reaped.id, now=later + 11) == "takeover"
    assert store.reap(reaped.id, now=time.time() + 60) == "expired"
    assert store.reap(reaped.id, now=time.time() + 120) in {"terminal", "fresh"}
    assert store.claim(admit(key).id, now=time.time() + 60).outcome == "expired"
    failed = admit(key)
    assert store.fail(failed.id, store.claim(failed.id).attempt, UpstreamError("x"))
    assert store.cancel(admit(key).id)
    assert store.expire_if_overdue(admit(key).id) is False
    assert store.claim("imgjob_missing").outcome == "missing"

    capacity = Capacity(client)
    family = "lua_" + secrets.token_hex(4)
    lease = capacity.acquire(family, 3, 1, ttl=30, skip=[0])
    assert lease is not None and lease.key_index == 1
    assert capacity.extend(lease, 30) is not None
    breakers = Breakers(client, BreakerPolicy(failure_threshold=1, cooldown=1))
    breaker = "lua:" + secrets.token_hex(4)
    assert breakers.allow(breaker)
    breakers.record_failure(breaker)
    assert not breakers.allow(breaker)
    assert breakers.allow(breaker, now=time.time() + 2)

    # webhooks: the pump takes a due id (and defers one of a key at its cap), the
    # delivery's message claims its lease (and a stale message does not)
    _webhooks(client, store, hooked.id, key.id)
    # the parse budget: charged, then refused
    limit = ParseLimit(client, rate=1000.0, burst=1000)
    subject = "lua_" + secrets.token_hex(4)
    limit.charge(subject, 800)
    with pytest.raises(RateLimited):
        limit.charge(subject, 800)
    # presence: a worker announces two families; one is live, then none once it ran out
    presence = Presence(client)
    one, two = "lua_" + secrets.token_hex(4), "lua_" + secrets.token_hex(4)
    presence.announce("w:1", [one, two], ttl=30)
    assert presence.live([one, two, "lua_nobody"]) == {one: 1, two: 1, "lua_nobody": 0}
    assert presence.live([one], now=time.time() + 60) == {one: 0}
    # image retention: a folder noted, due only once its retention has passed
    retention = ImageRetention(client, LocalStorage(StorageConfig(local_dir="unused")), 60)
    folder = "lua/" + secrets.token_hex(4)
    due = retention.track(folder)
    assert folder not in retention.due(limit=1000)
    assert folder in retention.due(limit=1000, now=due + 1)
    client.zrem(INDEX, folder)
    # the sink forgets entries SQL committed (shared/sink.py), here without SQL
    ack = lua.register(client, "ledger_sink_ack")
    stream = LEDGER.format(key.id)
    ids = [entry_id for entry_id, _ in client.xrange(stream)]
    assert ack([stream, PENDING], ids=ids[:1], key_id=key.id) == [1, len(ids) - 1]
    assert ack([stream, PENDING], ids=ids, key_id=key.id) == [len(ids) - 1, 0]
    assert not client.sismember(PENDING, key.id)


def _webhooks(client: redis.Redis, store: JobStore, job_id: str, key_id: str) -> None:
    # the due set of this test's database; no pump runs on it
    client.zadd(WEBHOOKS_DUE, {job_id: 0, "imgjob_lua_other": 0})
    client.hset(store.record_key("imgjob_lua_other"), "key_id", key_id)

    class Sent:  # the Celery app's one method the pump calls
        def __init__(self) -> None:
            self.leases: list[str] = []

        def send_task(self, name: str, args: list[str], queue: str) -> None:
            self.leases.append(args[1])

    sent = Sent()
    assert pump_once(client, sent, per_key=1) == 1  # the other is deferred: one in flight
    assert len(sent.leases) == 1
    lease = float(sent.leases[0])
    taken = next(j for j in (job_id, "imgjob_lua_other") if client.zscore(WEBHOOKS_DUE, j) == lease)
    claim = lua.register(client, "webhook_claim")
    inflight = inflight_key(key_id)
    assert claim([WEBHOOKS_DUE, inflight], job_id=taken, token=sent.leases[0], renewed="1e10")
    assert not claim([WEBHOOKS_DUE, inflight], job_id=taken, token=sent.leases[0], renewed="1")
    client.zrem(WEBHOOKS_DUE, job_id, "imgjob_lua_other")
    client.delete(inflight, store.record_key("imgjob_lua_other"))


def test_every_key_a_script_touches_comes_from_its_keys(redis_server, recorder: Recorder) -> None:
    _scenario(connect(_url(redis_server)))
    runs = recorder.runs()
    probe = connect(_url(redis_server))
    touched = 0
    for run in runs:
        for command in run.commands:
            if len(command) == 1:
                continue  # TIME
            try:
                keys = probe.command_getkeys(*command)
            except redis.ResponseError as exc:
                assert "no key arguments" in str(exc), (command, exc)
                continue  # PUBLISH: a channel, no key
            touched += len(keys)
            assert set(keys) <= set(run.keys), (
                f"a script touched {sorted(set(keys) - set(run.keys))} outside its KEYS "
                f"{run.keys}: {command}"
            )
    assert touched > 50
    shas = {hashlib.sha1(lua.source(name).encode()).hexdigest(): name for name in SCRIPTS}
    ran = {shas.get(run.sha) for run in runs if run.commands}
    assert ran >= set(SCRIPTS), f"not exercised: {sorted(set(SCRIPTS) - ran)}"
