"""Many hosts, for real: the gateway spread over network namespaces, configured only as the
docs say (docs/running/scaling.md, docs/running/redis.md), through worker-host crashes, a
cut network, a Redis failover and a silent Redis host.

Hosts (``tests/support/netns.py``), each with its own address and hostname:

* ``redis1`` — the Redis primary (password, AOF) and a sentinel;
* ``redis2`` — its replica and a sentinel;
* ``state`` — the S3 server that checks signatures (s3rver), the OpenAI simulator
  and the third sentinel;
* ``web`` — the Procfile's ``web`` line (gunicorn);
* ``w1``, ``w2`` — the Procfile's ``worker_openai`` line each (``imagegate-worker``);
* this test process, on the bridge, is the client.

Every process gets ``IMAGEGATE_REDIS_URL=sentinel://…`` (the three sentinels),
S3 storage, the upstream's URL and key, and the test scale of the liveness
settings. After each scenario: every job a client was told about ends, the key
is charged once per delivered image (balance and usage agree with what the
clients received), and every image a client received still has the bytes it
had when it was delivered.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import pytest
import redis
import requests
from redis.sentinel import Sentinel

from shared.settings import Settings
from tests.support import netns
from tests.support.processes import BIN, Process
from tests.support.s3rver import (
    _LAUNCHER,
    ACCESS_KEY_ID,
    SECRET_ACCESS_KEY,
    ensure_installed,
    node_binary,
)

pytestmark = pytest.mark.multihost

PASSWORD = "multihost-secret"
MASTER = "imagegate"
BUCKET = "imagegate-multihost"
SIM_KEY = "sim-upstream-key"
MODEL, SIZE = "dall-e-2", "256x256"
# what one image costs the client: the catalog's price of that size (shared.pricing)
PRICE = Decimal(Settings.from_env({}).load_catalog().model(MODEL).unit_price({"size": SIZE})) / (
    10**6
)
LATENCY = 2.0  # the upstream's answer time
REPO = Path(__file__).resolve().parents[1]


def procfile(line: str) -> list[str]:
    """The Procfile's command for ``line``, as shipped (shell defaults expanded)."""
    for row in (REPO / "Procfile").read_text().splitlines():
        name, _, command = row.partition(":")
        if name.strip() == line:
            command = command.replace("${IMAGEGATE_WEBHOOK_CONCURRENCY:-16}", "16")
            argv = shlex.split(command)
            return [str(BIN / argv[0]), *argv[1:]]
    raise AssertionError(f"no {line} line in the Procfile")


@dataclass
class Delivered:
    job_id: str
    status: int
    urls: list[str] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)


class Cluster:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.lan = netns.Lan()
        names = ("redis1", "redis2", "state", "web", "w1", "w2")
        self.hosts = {name: self.lan.host(name) for name in names}
        self.redis: dict[str, Process] = {}
        self.workers: dict[str, list[Process]] = {}
        self.web_url = f"http://{self.hosts['web'].address}:8080"

    # -- state ---------------------------------------------------------------------------

    def start_state(self) -> None:
        r1, r2, state = self.hosts["redis1"], self.hosts["redis2"], self.hosts["state"]
        for host, replica_of in ((r1, None), (r2, r1)):
            data = self.run_dir / f"{host.name}-data"
            data.mkdir(exist_ok=True)
            argv = [
                "redis-server", "--bind", host.address, "--port", "6379",
                "--requirepass", PASSWORD, "--masterauth", PASSWORD,
                "--appendonly", "yes", "--dir", str(data), "--save", "",
                "--maxmemory-policy", "noeviction",
            ]  # fmt: skip
            if replica_of is not None:
                argv += ["--replicaof", replica_of.address, "6379"]
            self.redis[host.name] = host.process(
                "redis", argv, env={}, log_dir=self.run_dir
            ).start()
        for host in (r1, r2, state):
            conf = self.run_dir / f"sentinel-{host.name}.conf"
            conf.write_text(
                f"port 26379\nbind {host.address}\ndir {self.run_dir}\n"
                f"sentinel monitor {MASTER} {r1.address} 6379 2\n"
                f"sentinel auth-pass {MASTER} {PASSWORD}\n"
                f"sentinel down-after-milliseconds {MASTER} 1500\n"
                f"sentinel failover-timeout {MASTER} 5000\n"
            )
            host.process(
                "sentinel", ["redis-server", str(conf), "--sentinel"], env={}, log_dir=self.run_dir
            ).start()
        package = ensure_installed()
        s3_options = {
            "lib": str(package / "lib" / "s3rver.js"),
            "address": state.address,
            "port": 4569,
            "directory": str(self.run_dir / "s3"),
            "silent": True,
            "buckets": [BUCKET],
        }
        state.process(
            "s3rver",
            [node_binary(), "-e", _LAUNCHER, json.dumps(s3_options)],
            env={},
            log_dir=self.run_dir,
        ).start()
        state.process(
            "simulator",
            [
                str(BIN / "python"), "-m", "simulators", "openai", "--host", state.address,
                "--port", "8000", "--latency", str(LATENCY), "--api-key", SIM_KEY,
            ],
            env={},
            log_dir=self.run_dir,
        ).start()  # fmt: skip
        self.wait(lambda: self.primary().ping(), "Redis and its sentinels")
        self.wait(lambda: requests.get(f"http://{state.address}:4569/", timeout=1), "s3rver")
        self.wait(lambda: requests.get(f"http://{state.address}:8000/", timeout=1), "the simulator")

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        return [(self.hosts[h].address, 26379) for h in ("redis1", "redis2", "state")]

    @property
    def redis_url(self) -> str:
        parts = [f"sentinel://{host}:{port}" for host, port in self.sentinels]
        parts[0] = parts[0].replace("sentinel://", f"sentinel://:{PASSWORD}@")
        return ";".join(parts) + f"/{MASTER}/0"

    def primary(self) -> redis.Redis:
        sentinel = Sentinel(self.sentinels, socket_timeout=2)
        return sentinel.master_for(
            MASTER, password=PASSWORD, socket_timeout=2, decode_responses=True
        )

    def primary_host(self) -> str:
        sentinel = Sentinel(self.sentinels, socket_timeout=2)
        address = sentinel.discover_master(MASTER)[0]
        return next(name for name, host in self.hosts.items() if host.address == address)

    # -- the gateway ---------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        state = self.hosts["state"].address
        return {
            "IMAGEGATE_REDIS_URL": self.redis_url,
            "IMAGEGATE_STORAGE": "s3",
            "IMAGEGATE_S3_BUCKET": BUCKET,
            "IMAGEGATE_S3_ENDPOINT_URL": f"http://{state}:4569",
            "IMAGEGATE_S3_REGION": "us-east-1",
            "IMAGEGATE_S3_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "IMAGEGATE_S3_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "IMAGEGATE_BASE_URL_OPENAI": f"http://{state}:8000/v1",
            "OPENAI_API_KEY": SIM_KEY,
            # The simulator's result URLs point at its own (private) address.
            "IMAGEGATE_ALLOWED_INTERNAL_HOSTS": state,
            "IMAGEGATE_JOB_STALE_SECONDS": "5",
            "IMAGEGATE_HEARTBEAT_SECONDS": "0.5",
            "IMAGEGATE_REAPER_INTERVAL_SECONDS": "0.5",
            "IMAGEGATE_ENQUEUE_GRACE_SECONDS": "3",
            "IMAGEGATE_RESEND_AFTER_SECONDS": "10",
            "IMAGEGATE_LOG_LEVEL": "INFO",
        }

    def start_web(self) -> None:
        web = self.hosts["web"]
        env = {**self.env, "IMAGEGATE_HOST": web.address, "PORT": "8080"}
        proc = web.process("web", procfile("web"), env=env, log_dir=self.run_dir).start()
        proc.wait_until(lambda: requests.get(f"{self.web_url}/healthz", timeout=2).ok, 60)

    def start_worker(self, name: str, **extra_env: str) -> None:
        host = self.hosts[name]
        env = {**self.env, **extra_env}
        proc = host.process("worker", procfile("worker_openai"), env=env, log_dir=self.run_dir)
        before = proc.log().count(" ready.")
        proc.start()
        # The line runs two Celery processes; both say "ready".
        proc.wait_until(lambda: proc.log().count(" ready.") >= before + 2, timeout=90)
        self.workers.setdefault(name, []).append(proc)

    def wait(self, ready, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                result = ready()
                if isinstance(result, requests.Response) or result:  # any HTTP answer counts
                    return
            except (OSError, redis.RedisError, requests.RequestException):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not ready after {timeout:.0f} s")
            time.sleep(0.2)

    # -- clients -------------------------------------------------------------------------

    def create_key(self, balance: str = "100.00") -> str:
        argv = [str(BIN / "imagegate"), "keys", "create", "--name", "multihost", "--json",
                "--tier", "internal", "--balance", balance]  # fmt: skip
        env = {**os.environ, **self.env}
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        # Replication is asynchronous: a failover right after this would lose a key the
        # replica has not seen yet. Wait for a replica to have it (none: go on at once).
        self.primary().execute_command("WAIT", 1, 5000)
        return json.loads(result.stdout)["key"]

    def settle(self) -> None:
        """Each scenario starts from a whole cluster, whatever ran before it: both worker
        hosts running (a scenario that failed midway may have left one powered off), a
        replica in step with the primary and both worker hosts taking jobs again."""
        for name in ("w1", "w2"):
            procs = self.workers.get(name, [])
            if not any(p.proc is not None and p.proc.poll() is None for p in procs):
                self.workers.pop(name, None)
                self.start_worker(name)
        self.wait(lambda: self.primary().execute_command("WAIT", 1, 1000) >= 1, "a replica")
        key, seen = self.create_key(), set()

        def both_hosts_take_jobs() -> bool:
            for d in self.load(key, count=8, concurrency=8):
                if d.status == 200:
                    seen.add(self.primary().hget(f"ig:job:{d.job_id}", "worker"))
            return {name.rpartition("@")[2] for name in seen} >= {"w1", "w2"}

        self.wait(both_hosts_take_jobs, "both worker hosts taking jobs", timeout=120)

    def generate(self, key: str) -> Delivered:
        try:
            r = requests.post(
                f"{self.web_url}/v1/images/generations",
                headers={"Authorization": f"Bearer {key}"},
                json={"model": MODEL, "prompt": "a fox", "size": SIZE},
                timeout=150,
            )
        except requests.RequestException:
            return Delivered(job_id="", status=0)
        delivered = Delivered(job_id=r.headers.get("x-job-id", ""), status=r.status_code)
        if r.status_code == 200:
            for item in r.json()["data"]:
                image = requests.get(item["url"], timeout=30)
                assert image.status_code == 200, image.text[:300]
                delivered.urls.append(item["url"])
                delivered.digests.append(hashlib.sha256(image.content).hexdigest())
        return delivered

    def load(self, key: str, count: int, concurrency: int, during=None) -> list[Delivered]:
        with ThreadPoolExecutor(concurrency) as pool:
            futures = [pool.submit(self.generate, key) for _ in range(count)]
            if during is not None:
                during()
            return [f.result() for f in futures]

    def check(self, key: str, deliveries: list[Delivered], starting_balance: Decimal) -> None:
        """Every job ended, each delivered image was charged once, no image changed."""
        jobs = [d for d in deliveries if d.job_id]
        primary = self.primary()

        def ended() -> bool:
            states = {primary.hget(f"ig:job:{d.job_id}", "status") for d in jobs}
            return states <= {"succeeded", "failed", "timed_out", "canceled", None}

        self.wait(ended, "every job's end", timeout=120)
        usage = requests.get(
            f"{self.web_url}/v1/usage", headers={"Authorization": f"Bearer {key}"}, timeout=10
        ).json()
        images = sum(len(d.urls) for d in deliveries)
        assert sum(t["images"] for t in usage["totals"]) == images
        assert Decimal(usage["balance"]) == starting_balance - PRICE * images
        for d in deliveries:
            for url, digest in zip(d.urls, d.digests, strict=True):
                again = requests.get(url, timeout=30)
                assert again.status_code == 200
                assert hashlib.sha256(again.content).hexdigest() == digest, url

    def stop(self) -> None:
        self.lan.remove()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    why = netns.prerequisites()
    if why:
        pytest.fail(f"the multi-host tests need root and iproute2: {why}")
    c = Cluster(tmp_path_factory.mktemp("multihost"))
    try:
        c.start_state()
        c.start_web()
        c.start_worker("w1")
        c.start_worker("w2")
        yield c
    finally:
        c.stop()


def test_jobs_spread_over_both_worker_hosts(cluster: Cluster) -> None:
    cluster.settle()
    key = cluster.create_key()
    deliveries = cluster.load(key, count=40, concurrency=20)
    assert {d.status for d in deliveries} == {200}
    primary = cluster.primary()
    hosts = {primary.hget(f"ig:job:{d.job_id}", "worker").rpartition("@")[2] for d in deliveries}
    assert hosts == {"w1", "w2"}, hosts
    cluster.check(key, deliveries, Decimal("100.00"))


def test_a_worker_host_lost_mid_load_costs_no_job_and_no_double_charge(cluster: Cluster) -> None:
    cluster.settle()
    key = cluster.create_key()

    def power_loss() -> None:
        time.sleep(LATENCY / 2)
        cluster.hosts["w1"].kill_all()

    try:
        deliveries = cluster.load(key, count=30, concurrency=30, during=power_loss)
        assert {d.status for d in deliveries} == {200}
        cluster.check(key, deliveries, Decimal("100.00"))
    finally:
        cluster.workers.pop("w1", None)
        cluster.start_worker("w1")


def test_a_worker_host_cut_off_and_back_changes_no_delivered_image(cluster: Cluster) -> None:
    cluster.settle()
    key = cluster.create_key()
    w1 = cluster.hosts["w1"]
    cut_at: list[float] = []

    def unplug() -> None:
        time.sleep(LATENCY / 2)
        w1.cut()
        cut_at.append(time.monotonic())

    try:
        deliveries = cluster.load(key, count=30, concurrency=30, during=unplug)
    finally:
        if cut_at:  # the link stays down 30 s, long after its jobs were taken over
            time.sleep(max(0.0, cut_at[0] + 30 - time.monotonic()))
        w1.restore()
    assert {d.status for d in deliveries} == {200}
    # The cut-off runs come back and finish late; they must not touch what was delivered.
    time.sleep(LATENCY + 3)
    cluster.check(key, deliveries, Decimal("100.00"))


def test_the_redis_primary_killed_under_load_fails_over_to_the_replica(cluster: Cluster) -> None:
    cluster.settle()
    key = cluster.create_key()
    old = cluster.primary_host()

    def kill_primary() -> None:
        time.sleep(LATENCY / 2)
        cluster.redis[old].signal(9)

    deliveries = cluster.load(key, count=40, concurrency=20, during=kill_primary)
    statuses = [d.status for d in deliveries]
    print(f"through the failover: {statuses.count(200)} × 200, {statuses.count(503)} × 503")
    assert set(statuses) <= {200, 503}, statuses
    cluster.wait(lambda: cluster.primary_host() != old, "the sentinels' promotion")
    # The jobs that were only admitted (503 with a job id) and the delivered ones all end;
    # the old primary comes back as the new one's replica.
    cluster.check(key, deliveries, Decimal("100.00"))
    cluster.redis[old].start()
    assert cluster.load(key, count=4, concurrency=4)[0].status == 200


def test_a_silent_redis_host_costs_a_quick_503_then_fails_over(cluster: Cluster) -> None:
    cluster.settle()
    key = cluster.create_key()
    # Replication is asynchronous: cut only once a replica has everything so far (the key
    # included), or the new primary would rightly not know it.
    cluster.wait(lambda: cluster.primary().execute_command("WAIT", 1, 1000) >= 1, "a replica")
    silent = cluster.hosts[cluster.primary_host()]
    silent.cut()
    try:
        started = time.monotonic()
        first = cluster.generate(key)
        took = time.monotonic() - started
        print(f"silent Redis host: first answer {first.status} after {took:.1f} s")
        assert first.status in (503, 200)
        cluster.wait(lambda: cluster.primary_host() != silent.name, "a new primary")
        cluster.wait(lambda: cluster.generate(key).status == 200, "service", timeout=60)
    finally:
        silent.restore()


FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")


def test_a_worker_host_with_its_clock_30_s_behind_takes_over_nothing(cluster: Cluster) -> None:
    """Liveness, deadlines and admission read Redis' clock: a host's clock cannot make a
    live job look stale (an earlier version took over 17 live jobs of a host 20 s behind)."""
    cluster.settle()
    assert FAKETIME_LIB.exists(), "libfaketime is missing: scripts/test.sh installs `faketime`"
    for proc in cluster.workers.pop("w2", []):
        proc.stop()
    skewed = {
        "LD_PRELOAD": str(FAKETIME_LIB),
        "FAKETIME": "-30s",
        # The monotonic clock is shifted too, which changes nothing (only its differences
        # count). Leaving it alone (FAKETIME_DONT_FAKE_MONOTONIC=1) breaks every sleep: libfaketime
        # then shifts the absolute monotonic deadline of Python's clock_nanosleep and it fails
        # with EINVAL, which killed the worker at its first broker reconnect.
    }
    cluster.start_worker("w2", **skewed)
    try:
        key = cluster.create_key()
        deliveries = cluster.load(key, count=30, concurrency=30)
        assert {d.status for d in deliveries} == {200}
        primary = cluster.primary()
        records = [primary.hgetall(f"ig:job:{d.job_id}") for d in deliveries]
        assert {r["worker"].rpartition("@")[2] for r in records} == {"w1", "w2"}
        assert [r.get("takeovers", "0") for r in records] == ["0"] * len(records)
        assert {r.get("attempt") for r in records} == {"1"}
        cluster.check(key, deliveries, Decimal("100.00"))
    finally:
        for proc in cluster.workers.pop("w2", []):
            proc.stop()
        cluster.start_worker("w2")
