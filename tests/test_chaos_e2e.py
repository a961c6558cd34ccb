"""Chaos: a batch of paid jobs while workers are SIGKILLed at random, Redis restarts once,
the ledger sink is SIGKILLed at random, PostgreSQL restarts once and the upstreams fail
some calls. Afterwards every job must have ended, every success must be downloadable,
every key's money must add up with no job charged twice, and ``imagegate ledger verify``
must find every balance equal to its ledger in SQL once the sink has moved everything.

Its own stack (redis-server with AOF, a private PostgreSQL cluster, OpenAI and BFL
simulators, two workers per upstream family, the sink, gunicorn with two processes), so
the chaos touches no other test.
Prints what happened; asserts only outcomes, never timings.

Then hostile peers under load (issue 20), on a stack of their own too: a trickling
upstream, a trickling webhook receiver and a huge webhook answer while other tenants
keep submitting; their webhooks must arrive on time (bounds taken from a calm run of the
same load on this machine, plus one hostile attempt), the trickled jobs must end by their
deadline and the trickled family's threads must be free again.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from PIL import Image

from shared.billing import PENDING, Accounts
from shared.db import engine_for
from shared.history import History
from shared.jobs import TERMINAL, JobStore
from shared.redis_client import connect
from shared.settings import Settings
from tests.conftest import SIM_KEY, cli, create_key, start_simulator, start_worker
from tests.support.peers import SlowPeer
from tests.support.pg import PrivateCluster
from tests.support.processes import BIN, Process, RedisServer

MODELS = ["dall-e-2", "black-forest-labs/flux-2-pro", "local/testcard"]
KEYS = 3
JOBS = 60
START_BALANCE = 5_000_000  # micro-units, "5.00"
SEED = 20261121


class Chaos:
    def __init__(self, run_dir: Path, env: dict[str, str], redis: RedisServer) -> None:
        self.run_dir = run_dir
        self.env = env
        self.redis = redis
        self.workers: dict[str, tuple[str, Process]] = {}
        self.kills = 0
        self.restarts = 0
        self.url = ""
        self.sink: Process | None = None
        self.sink_kills = 0
        self.pg: PrivateCluster | None = None
        self.pg_restarts = 0

    def start_worker(self, name: str, queue: str) -> None:
        self.workers[name] = (queue, start_worker(self.run_dir, self.env, queue, name=name))

    def kill_random_worker(self, rng: random.Random) -> None:
        name = rng.choice(sorted(n for n, (q, _) in self.workers.items() if q != "webhooks"))
        queue, proc = self.workers[name]
        proc.signal(signal.SIGKILL)
        proc.proc.wait(10)
        self.kills += 1
        self.start_worker(name, queue)

    def restart_redis(self) -> None:
        self.redis.stop()
        time.sleep(2)
        self.redis.start()
        self.restarts += 1

    def start_sink(self) -> None:
        self.sink = Process(
            "chaos-sink", [str(BIN / "imagegate"), "sink"], env=self.env, log_dir=self.run_dir
        ).start()

    def kill_sink(self) -> None:
        assert self.sink is not None
        self.sink.signal(signal.SIGKILL)
        self.sink.proc.wait(10)
        self.sink_kills += 1
        self.start_sink()

    def restart_postgres(self) -> None:
        assert self.pg is not None
        self.pg.stop("immediate")  # as a crash: no checkpoint, connections cut
        time.sleep(1)
        self.pg.start()
        self.pg_restarts += 1


@pytest.fixture(scope="module")
def chaos(run_dir: Path, stack_env: dict[str, str], start_gateway) -> Iterator[Chaos]:
    redis = RedisServer(run_dir, appendonly=True).start()
    pg = PrivateCluster().start()
    openai_proc, openai_sim = start_simulator(run_dir, "openai", name="chaos-simulator-openai")
    bfl_proc, bfl_sim = start_simulator(run_dir, "bfl", name="chaos-simulator-bfl")
    # Upstream faults: 5xx from one, 429 with Retry-After from the other, both slow.
    requests.post(
        f"{openai_sim}/_sim/config",
        json={"latency": 1.0, "failure_rate": 0.25, "fail_status": 503},
        timeout=5,
    ).raise_for_status()
    requests.post(
        f"{bfl_sim}/_sim/config",
        json={"latency": 0.5, "failure_rate": 0.2, "fail_status": 429, "retry_after": 0.5},
        timeout=5,
    ).raise_for_status()
    env = {
        **stack_env,
        "IMAGEGATE_REDIS_URL": redis.url,
        "IMAGEGATE_BASE_URL_OPENAI": f"{openai_sim}/v1",
        "IMAGEGATE_BASE_URL_BFL": bfl_sim,
        "IMAGEGATE_SYNC_BUDGET_SECONDS": "40",
        "IMAGEGATE_ASYNC_BUDGET_SECONDS": "60",
        "IMAGEGATE_UPSTREAM_MAX_RETRIES": "2",
        "IMAGEGATE_DATABASE_URL": f"{pg.server}/postgres",
        "IMAGEGATE_SINK_INTERVAL_SECONDS": "0.2",
        "IMAGEGATE_SINK_BATCH": "7",  # many small transactions: kills land between them
    }
    c = Chaos(run_dir, env, redis)
    c.pg = pg
    c.start_sink()
    for family in ("openai", "bfl"):
        c.start_worker(f"chaos-{family}-1", family)
        c.start_worker(f"chaos-{family}-2", family)
    c.start_worker("chaos-local-1", "local")
    c.url = start_gateway("web-chaos", **env)
    yield c
    for _, proc in c.workers.values():
        proc.stop()
    for proc in (openai_proc, bfl_proc, c.sink):
        proc.stop()
    redis.stop()
    pg.remove()


def _submit(chaos: Chaos, key: str, body: dict, asynchronous: bool) -> tuple[int, str | None]:
    headers = {"Authorization": f"Bearer {key}"}
    if asynchronous:
        headers["Prefer"] = "respond-async"
    try:
        r = requests.post(
            f"{chaos.url}/v1/images/generations", json=body, headers=headers, timeout=90
        )
    except requests.RequestException:
        return -1, None
    job_id = r.headers.get("x-job-id") or (r.json().get("id") if r.status_code == 202 else None)
    return r.status_code, job_id


def test_chaos_nothing_lost_nothing_charged_twice(chaos: Chaos) -> None:
    rng = random.Random(SEED)
    keys = [
        create_key(chaos.env, f"chaos-{i}", tier="test-billing", balance="5.00")
        for i in range(KEYS)
    ]
    plan = [
        (
            rng.choice(keys),
            {"model": rng.choice(MODELS), "prompt": f"chaos {i}", "n": rng.randint(1, 2)},
            rng.random() < 0.6,  # async or sync
        )
        for i in range(JOBS)
    ]

    stop = threading.Event()

    def havoc() -> None:
        start = time.monotonic()
        restarted = pg_restarted = False
        while not stop.wait(rng.uniform(2.0, 4.0)):
            chaos.kill_random_worker(rng)
            chaos.kill_sink()
            if not restarted and time.monotonic() - start > 8:
                chaos.restart_redis()
                restarted = True
            elif not pg_restarted and time.monotonic() - start > 12:
                chaos.restart_postgres()
                pg_restarted = True

    monkey = threading.Thread(target=havoc, daemon=True)
    monkey.start()
    statuses: Counter[int] = Counter()
    try:
        with ThreadPoolExecutor(max_workers=12) as pool:
            futures = []
            for key, body, asynchronous in plan:
                futures.append(pool.submit(_submit, chaos, key["key"], body, asynchronous))
                time.sleep(0.3)  # a steady stream over ~20 s, through the chaos
            results = [f.result() for f in futures]
    finally:
        stop.set()
        monkey.join(30)
    for status, _ in results:
        statuses[status] += 1

    # The ledger is the truth of what was admitted (and charged): every reserve is a job.
    # Read from SQL merged with what the sink has not moved yet.
    client = connect(chaos.env["IMAGEGATE_REDIS_URL"])
    accounts = Accounts(client, Settings.from_env(chaos.env).load_catalog())
    history = History(client, engine_for(chaos.env["IMAGEGATE_DATABASE_URL"]))
    jobs = JobStore(client)
    admitted: dict[str, str] = {}
    for key in keys:
        for entry in history.ledger(key["id"], 10_000):
            if entry["kind"] == "reserve":
                admitted[entry["job"]] = key["key"]

    # Every job reaches a terminal status (the reaper ends even lost ones by their deadline).
    end = time.monotonic() + 120
    pending = set(admitted)
    while pending and time.monotonic() < end:
        pending = {j for j in pending if (jobs.status(j) or "missing") not in TERMINAL}
        time.sleep(0.5)
    outcome = Counter(str(jobs.status(j)) for j in admitted)

    # Every succeeded job's images can be downloaded, through the API's fresh URLs.
    images = 0
    for job_id, api_key in admitted.items():
        if jobs.status(job_id) != "succeeded":
            continue
        r = requests.get(
            f"{chaos.url}/v1/images/generations/{job_id}",
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        for item in r.json()["result"]["data"]:
            got = requests.get(item["url"], timeout=10)
            assert got.status_code == 200, item["url"]
            Image.open(io.BytesIO(got.content)).verify()
            images += 1

    # Money: balance = start - settled charges; one reserve and one settle per job.
    twice = 0
    for key in keys:
        entries = history.ledger(key["id"], 10_000)
        per_job: dict[str, Counter[str]] = {}
        for e in entries:
            if e.get("job"):
                per_job.setdefault(e["job"], Counter())[e["kind"]] += 1
        twice += sum(1 for c in per_job.values() if c["reserve"] > 1 or c["settle"] > 1)
        for job_id, kinds in per_job.items():
            assert kinds["reserve"] == 1 and kinds["settle"] == 1, (job_id, kinds)
        settled = sum(-int(e["amount"]) for e in entries if e["kind"] == "settle")
        assert accounts.balance(key["id"]) == START_BALANCE - settled, key["id"]
    takeovers = sum(int(client.hget(f"ig:job:{j}", "takeovers") or 0) for j in admitted)

    # The sink (killed many times, its database restarted) moves everything, once; then
    # every balance in Redis equals its ledger in SQL alone.
    end = time.monotonic() + 60
    while client.scard(PENDING) and time.monotonic() < end:
        time.sleep(0.5)
    assert client.scard(PENDING) == 0, "the sink did not move every entry"
    verified = cli(chaos.env, "ledger", "verify", *(k["id"] for k in keys))
    assert f"{KEYS} keys checked, 0 differ" in verified, verified

    print(
        f"\nchaos: {JOBS} requests -> HTTP {dict(sorted(statuses.items()))}; "
        f"{len(admitted)} admitted -> {dict(sorted(outcome.items()))}; "
        f"{images} images downloaded; {chaos.kills} workers killed, {takeovers} takeovers, "
        f"{chaos.restarts} Redis restart; sink killed {chaos.sink_kills} times, "
        f"{chaos.pg_restarts} PostgreSQL restart; jobs charged twice: {twice}"
    )
    assert not pending, f"jobs never finished: {sorted(pending)}"
    assert outcome["succeeded"] > 0
    assert twice == 0
    # No request is answered with a 500: faults end as 502/503/504 (or a dropped connection
    # while Redis restarts, reported as -1).
    assert statuses[500] == 0, statuses


# -- hostile peers under load ----------------------------------------------------------------
#
# Issue 20: one tenant's trickling upstream, trickling webhook receiver or huge webhook answer
# must not hold what every tenant shares. Its own Redis, workers (4 threads each, as the
# Procfile pools them) and gateway; the session's OpenAI simulator serves the other tenants
# and a second one, answering 16 bytes a second, is the hostile upstream of a family of its own.

HOSTILE_BUDGET = 6.0  # IMAGEGATE_ASYNC_BUDGET_SECONDS of this stack: the trickled jobs' deadline
ATTEMPT_TIMEOUT = 1.0  # IMAGEGATE_WEBHOOK_TIMEOUT_SECONDS of the test stack (tests/conftest.py)
MARGIN = 3.0  # scheduling slack on a loaded machine: the bound matters, not its precision
TRICKLY_OVERLAY = """
[families.trickly]
queue = "trickly"
adapter = "openai"
base_url = "https://trickly.example/v1"
key_env = "TRICKLY_API_KEY"

[[models]]
id = "trickly/model"
family = "trickly"
upstream = "compat-any"
price = "0"
size_rule = { kind = "max_side", min = 64, max = 1024 }
default_size = "256x256"
max_n = 1
max_prompt_length = 4000
options = { response_format = "b64_json" }
"""


class HostileStack:
    def __init__(self, url: str, env: dict[str, str], trickly_sim: str) -> None:
        self.url = url
        self.env = env
        self.trickly_sim = trickly_sim

    def submit(self, key: str, body: dict) -> tuple[str, float]:
        """Submit asynchronously; (job id, when on the monotonic clock)."""
        sent = time.monotonic()
        r = requests.post(
            f"{self.url}/v1/images/generations",
            json=body,
            headers={"Authorization": f"Bearer {key}", "Prefer": "respond-async"},
            timeout=30,
        )
        assert r.status_code == 202, r.text
        return r.json()["id"], sent

    def job(self, key: str, job_id: str) -> dict:
        return requests.get(
            f"{self.url}/v1/images/generations/{job_id}",
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        ).json()


@pytest.fixture(scope="module")
def hostile(
    run_dir: Path,
    stack_env: dict[str, str],
    start_gateway,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[HostileStack]:
    redis = RedisServer(run_dir).start()
    trickly_proc, trickly_sim = start_simulator(run_dir, "openai", name="trickly-simulator")
    requests.post(f"{trickly_sim}/_sim/config", json={"trickle": 1.0}, timeout=5).raise_for_status()
    overlay = tmp_path_factory.mktemp("trickly") / "trickly.toml"
    overlay.write_text(TRICKLY_OVERLAY)
    env = {
        **stack_env,
        "IMAGEGATE_REDIS_URL": redis.url,
        "IMAGEGATE_CATALOG_OVERLAYS": os.pathsep.join(
            [stack_env["IMAGEGATE_CATALOG_OVERLAYS"], str(overlay)]
        ),
        "IMAGEGATE_BASE_URL_TRICKLY": f"{trickly_sim}/v1",
        "TRICKLY_API_KEY": SIM_KEY,
        "IMAGEGATE_ASYNC_BUDGET_SECONDS": str(HOSTILE_BUDGET),
    }
    queues = ["openai", "local", "trickly", "webhooks"]
    with ThreadPoolExecutor(max_workers=len(queues)) as pool:
        procs = list(pool.map(lambda q: start_worker(run_dir, env, q, name=f"hostile-{q}"), queues))
    try:
        yield HostileStack(start_gateway("web-hostile", **env), env, trickly_sim)
    finally:
        for proc in procs:
            proc.stop()
        trickly_proc.stop()
        redis.stop()


def _hook_arrivals(peer: SlowPeer) -> dict[str, float]:
    """Job id -> when its first delivery reached ``peer`` (monotonic clock)."""
    seen: dict[str, float] = {}
    for raw, when in zip(list(peer.requests), list(peer.arrived), strict=True):
        payload = json.loads(raw.partition(b"\r\n\r\n")[2])
        assert payload["status"] == "succeeded", json.dumps(payload)[:2000]
        seen.setdefault(payload["id"], when)
    return seen


def _tenant_load(
    stack: HostileStack, keys: list[str], hook: SlowPeer, seconds: float, tag: str
) -> dict[str, float]:
    """Other tenants' steady stream of jobs (testcard and dall-e-2 on the healthy simulator,
    each with a webhook to ``hook``) for ``seconds``; job id -> when it was submitted."""
    submitted: dict[str, float] = {}
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        model, size = [("local/testcard", "32x32"), ("dall-e-2", "256x256")][i % 2]
        body = {
            "model": model,
            "prompt": f"{tag} {i}",
            "size": size,
            "webhook_url": hook.url(f"/{tag}/{i}"),
        }
        job_id, sent = stack.submit(keys[i % len(keys)], body)
        submitted[job_id] = sent
        i += 1
        time.sleep(0.25)
    return submitted


def _delivery_delays(hook: SlowPeer, submitted: dict[str, float]) -> list[float]:
    """Seconds from each submission to its webhook (fails if one is missing after a wait)."""
    end = time.monotonic() + 30
    arrivals = _hook_arrivals(hook)
    while set(submitted) - set(arrivals) and time.monotonic() < end:
        time.sleep(0.1)
        arrivals = _hook_arrivals(hook)
    missing = set(submitted) - set(arrivals)
    assert not missing, f"webhooks never delivered: {sorted(missing)}"
    return [arrivals[j] - submitted[j] for j in submitted]


def test_hostile_peers_under_load_do_not_hold_other_tenants(hostile: HostileStack) -> None:
    """A trickling upstream (8 jobs on a family whose answers come 16 bytes a second), a
    receiver trickling its answer's head and one sending a 200 MiB answer (webhooks of two
    keys) while three other tenants submit a job every 0.25 s: the others' webhooks arrive
    no later than in a calm run of the same load plus one webhook attempt of the hostile
    receivers (plus scheduling margin), the trickled jobs end by their deadline, and the
    trickled family's worker threads are free again at once."""
    env = hostile.env
    tenants = [create_key(env, f"tenant-{i}")["key"] for i in range(3)]
    upstream_abuser = create_key(env, "trickled-upstream")["key"]
    hook_abusers = [create_key(env, f"hostile-hooks-{i}")["key"] for i in range(2)]
    good = SlowPeer("ok").start()
    slow = SlowPeer("trickle_headers", interval=0.2).start()
    huge = SlowPeer("huge_body", declared=200 * 1024 * 1024).start()
    try:
        # A calm run of the tenants' load: what "on time" means on this machine right now.
        calm = _delivery_delays(good, _tenant_load(hostile, tenants, good, 3.0, "calm"))
        calm_worst = max(calm)

        trickled = [
            hostile.submit(upstream_abuser, {"model": "trickly/model", "prompt": f"trickle {i}"})
            for i in range(8)
        ]
        abusive_hooks = []
        for i in range(6):
            abusive_hooks.append(
                hostile.submit(
                    hook_abusers[0],
                    {
                        "model": "local/testcard",
                        "prompt": f"slow hook {i}",
                        "size": "32x32",
                        "webhook_url": slow.url(f"/slow/{i}"),
                    },
                )  # fmt: skip
            )
            abusive_hooks.append(
                hostile.submit(
                    hook_abusers[1],
                    {
                        "model": "local/testcard",
                        "prompt": f"huge hook {i}",
                        "size": "32x32",
                        "webhook_url": huge.url(f"/huge/{i}"),
                    },
                )  # fmt: skip
            )
        end = time.monotonic() + 10
        while len(slow.requests) < 2 and time.monotonic() < end:
            time.sleep(0.05)
        assert len(slow.requests) >= 2, "the trickling receiver was never called"

        under_load = _delivery_delays(good, _tenant_load(hostile, tenants, good, 8.0, "load"))
        worst = max(under_load)

        # The trickled jobs ended by their deadline (times on the job record, Redis' clock),
        # whatever the upstream keeps doing.
        store = JobStore(connect(env["IMAGEGATE_REDIS_URL"]))
        ends = {}
        for job_id, _ in trickled:
            until = time.monotonic() + 20
            job = hostile.job(upstream_abuser, job_id)
            while job["status"] not in TERMINAL and time.monotonic() < until:
                time.sleep(0.1)
                job = hostile.job(upstream_abuser, job_id)
            assert job["status"] in ("timed_out", "failed"), job
            record = store.get(job_id)
            assert record is not None and record.finished is not None, job_id
            ends[job_id] = record.finished - record.created
        # Their threads are free: with the upstream healthy again, a job on the same family
        # is served at once (threads still reading a trickle would hold all four for hours).
        requests.post(
            f"{hostile.trickly_sim}/_sim/config", json={"trickle": 0}, timeout=5
        ).raise_for_status()
        probe_id, probe_sent = hostile.submit(
            tenants[0], {"model": "trickly/model", "prompt": "after the trickle"}
        )
        probe = hostile.job(tenants[0], probe_id)
        while probe["status"] not in TERMINAL and time.monotonic() - probe_sent < 15:
            time.sleep(0.1)
            probe = hostile.job(tenants[0], probe_id)
        probe_took = time.monotonic() - probe_sent

        # Every hostile delivery attempt ended by its timeout; the huge answers were not read.
        attempts = [
            a
            for job_id, _ in abusive_hooks
            for key in hook_abusers
            for a in (hostile.job(key, job_id).get("webhook") or {}).get("attempts", [])
        ]
        longest_attempt = max(a["duration_ms"] for a in attempts) / 1000
        huge_read = max(huge.sent, default=0)
    finally:
        for peer in (good, slow, huge):
            peer.stop()

    print(
        f"\nhostile peers under load: tenants' webhooks {len(calm)} calm (worst {calm_worst:.2f} s),"
        f" {len(under_load)} under load (worst {worst:.2f} s, median"
        f" {sorted(under_load)[len(under_load) // 2]:.2f} s); trickled jobs ended after"
        f" {min(ends.values()):.1f}-{max(ends.values()):.1f} s (budget {HOSTILE_BUDGET} s); probe"
        f" on the trickled family {probe['status']} in {probe_took:.2f} s; {len(attempts)}"
        f" hostile attempts, longest {longest_attempt:.2f} s; slow receiver held at most"
        f" {slow.max_open} at once; huge answer: {huge_read // 1024} KiB sent of 200 MiB"
    )
    assert worst <= calm_worst + ATTEMPT_TIMEOUT + MARGIN, (worst, calm_worst)
    assert max(ends.values()) <= HOSTILE_BUDGET + MARGIN, ends
    assert probe["status"] == "succeeded", probe
    assert probe_took <= MARGIN, probe_took
    assert longest_attempt <= ATTEMPT_TIMEOUT + MARGIN
    assert slow.max_open <= 2  # IMAGEGATE_WEBHOOK_CONCURRENCY_PER_KEY of the test stack
    assert huge_read < 200 * 1024 * 1024 // 4
