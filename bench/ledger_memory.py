"""Redis memory per job and per ledger entry, and how long each stays (issue 18, item 4).

    .venv/bin/python -m bench.ledger_memory [--jobs 100000] [--keys 100]

Starts a private redis-server (no persistence) and a SQLite file in a temporary folder,
then runs ``--jobs`` billed jobs through the real scripts — admission (``admit.lua``),
claim, success of 1 of 2 images (``job_finish.lua``: a settle and a refund entry) —
spread over ``--keys`` API keys, in three phases:

1. no sink: what each job leaves in Redis (its record and its 3 ledger entries);
2. the sink drains every key (``shared.sink.Sink``, as the Procfile's ``sink`` line);
3. the job records expire (``IMAGEGATE_JOB_RETENTION_SECONDS``; here forced with a
   short retention): what is left per key once nothing is in flight.

Prints ``used_memory`` after each phase and the bytes per job / per entry.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from shared import db
from shared.billing import LEDGER, PENDING, Accounts
from shared.catalog import parse_catalog
from shared.jobs import Job, JobStore, StoredImage, new_job_id
from shared.keys import ApiKey
from shared.sink import Sink

CATALOG = parse_catalog(
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
        "tiers": {"open": {"requests_per_minute": 0}},
    }
)
IMG = StoredImage(key="k/0.png", width=32, height=32, content_type="image/png")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _used(client: redis.Redis) -> int:
    client.execute_command("MEMORY PURGE")
    return int(client.info("memory")["used_memory"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=100)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="imagegate-ledger-memory-"))
    port = _free_port()
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port, decode_responses=True)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        run(client, folder, args.jobs, args.keys)
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def run(client: redis.Redis, folder: Path, jobs: int, keys: int) -> None:
    accounts = Accounts(client, CATALOG)
    store = JobStore(client, retention_seconds=3600)
    model, tier = CATALOG.models["m"], CATALOG.tier("open")
    key_ids = [ApiKey(id="key_" + secrets.token_hex(6), name="m", created=0) for _ in range(keys)]
    for key in key_ids:
        accounts.top_up(key.id, 10**12)
    engine = db.ensure_schema(f"sqlite:///{folder}/records.sqlite3", migrate=True)
    sink = Sink(client, engine)
    sink.run_once()  # the top-ups: start from nothing in the streams
    base = _used(client)

    started = time.perf_counter()
    for i in range(jobs):
        key = key_ids[i % keys]
        now = time.time()
        job = Job(
            id=new_job_id(),
            key_id=key.id,
            model="m",
            family="local",
            queue="local",
            request={"prompt": f"job {i}", "n": 2},
            created=now,
            deadline=now + 60,
        )
        accounts.admit(
            key,
            tier,
            model,
            2,
            job_key=store.record_key(job.id),
            job_id=job.id,
            spec_json=store.spec_json(job),
            deadline=job.deadline,
            ttl=3600,
            now=now,
        )
        claim = store.claim(job.id, key_id=key.id)
        store.succeed(job.id, claim.attempt, [IMG], key_id=key.id)
    ran = time.perf_counter() - started
    entries = sum(client.xlen(LEDGER.format(k.id)) for k in key_ids)
    after_jobs = _used(client)
    sample = next(client.scan_iter("ig:job:*", count=1000))
    record_bytes = int(client.memory_usage(sample, samples=0))
    stream_bytes = sum(int(client.memory_usage(LEDGER.format(k.id), samples=0)) for k in key_ids)

    started = time.perf_counter()
    moved = 0
    while client.scard(PENDING):
        moved += sink.run_once()
    drained = time.perf_counter() - started
    after_sink = _used(client)
    empty_stream = int(client.memory_usage(LEDGER.format(key_ids[0].id), samples=0))

    for name in client.scan_iter("ig:job:*", count=1000):  # what the retention does
        client.delete(name)
    after_expiry = _used(client)

    per_job = (after_jobs - base) / jobs
    print(
        f"{jobs} jobs over {keys} keys in {ran:.1f} s; {entries} ledger entries "
        f"({entries / jobs:.0f} per job)"
    )
    print(
        f"used_memory: start {base:,} B; after the jobs {after_jobs:,} B "
        f"(+{per_job:,.0f} B per job); after the sink {after_sink:,} B; "
        f"after the records expire {after_expiry:,} B"
    )
    print(
        f"a job record: {record_bytes:,} B (MEMORY USAGE), kept for the job retention "
        f"(IMAGEGATE_JOB_RETENTION_SECONDS, default 86400 s)"
    )
    print(
        f"a ledger entry in a stream: {stream_bytes / entries:,.0f} B, kept until the "
        f"sink's next pass (here {moved} entries moved in {drained:.1f} s, "
        f"{moved / drained:,.0f}/s)"
    )
    print(
        f"per job once sunk: {(after_sink - base) / jobs:,.0f} B (its record); "
        f"per key once idle: an empty stream of {empty_stream} B"
    )
    print(f"left after the records expire: {after_expiry - base:+,} B for {keys} keys")


if __name__ == "__main__":
    main()
