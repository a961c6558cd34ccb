"""Redis Sentinel: one ``sentinel://`` URL for the state, the broker and the CLI, and a failover
under load that costs requests a quick 503 and nothing else.

A real topology on loopback: a primary, a replica and three sentinels (quorum 2)
from the same ``redis-server`` binary (``--sentinel``), the web front-end and a
``local`` worker started with ``IMAGEGATE_REDIS_URL=sentinel://…`` only.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
import requests
from kombu import Connection

from shared.broker import SentinelTransport, transport_for
from shared.redis_client import SentinelURL, connect, is_sentinel
from tests.conftest import create_key, start_worker
from tests.support.processes import Process, RedisServer, free_port

MASTER = "imagegate"


# -- the URL ------------------------------------------------------------------------------


def test_a_sentinel_url_names_every_sentinel_the_master_the_db_and_the_passwords() -> None:
    spec = SentinelURL.parse(
        "sentinel://:s%40cret@s1:26380;sentinel://s2;sentinel://s3:26381/main/3?sentinel_password=sp"
    )
    assert spec.sentinels == (("s1", 26380), ("s2", 26379), ("s3", 26381))
    assert (spec.master, spec.db) == ("main", 3)
    assert (spec.password, spec.sentinel_password) == ("s@cret", "sp")
    assert SentinelURL.parse("sentinel://a:1/m").db == 0
    assert is_sentinel("SENTINEL://a/m") and not is_sentinel("redis://a/0")
    assert transport_for("sentinel://a/m") == "shared.broker:SentinelTransport"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("sentinel://s1:26379", "master group"),
        ("sentinel://s1:26379/m/x", "number"),
        ("sentinel://s1/m/0;sentinel://s2/n/0", "once"),
        ("sentinel://s1/m;redis://s2", "sentinel://host:port"),
    ],
)
def test_a_sentinel_url_that_cannot_work_is_refused_with_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        SentinelURL.parse(url)


# -- the topology -------------------------------------------------------------------------


class Topology:
    """A primary, its replica and three sentinels on loopback."""

    def __init__(self, run_dir: Path) -> None:
        self.primary = RedisServer(run_dir)
        self.replica = RedisServer(run_dir)
        self.replica.process.argv += ["--replicaof", "127.0.0.1", str(self.primary.port)]
        self.sentinels: list[Process] = []
        self.sentinel_ports: list[int] = []
        for _ in range(3):
            port = free_port()
            conf = run_dir / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {run_dir}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER} 1000\n"
                f"sentinel failover-timeout {MASTER} 4000\n"
            )
            self.sentinel_ports.append(port)
            self.sentinels.append(
                Process(
                    f"sentinel-{port}", ["redis-server", str(conf), "--sentinel"], log_dir=run_dir
                )
            )

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{p}" for p in self.sentinel_ports) + f"/{MASTER}/0"

    def start(self) -> Topology:
        self.primary.start()
        self.replica.start()
        replica = redis.Redis(port=self.replica.port)
        for proc, port in zip(self.sentinels, self.sentinel_ports, strict=True):
            proc.start()
            proc.wait_until(lambda p=port: redis.Redis(port=p).ping())
        sentinel = redis.Redis(port=self.sentinel_ports[0], decode_responses=True)

        def settled() -> bool:
            link = replica.info("replication").get("master_link_status") == "up"
            others = sentinel.sentinel_master(MASTER).get("num-other-sentinels", 0)
            return link and others >= 2

        self.sentinels[0].wait_until(settled, timeout=30)
        return self

    def primary_port(self) -> int:
        sentinel = redis.Redis(port=self.sentinel_ports[0], decode_responses=True)
        return int(sentinel.sentinel_get_master_addr_by_name(MASTER)[1])

    def stop(self) -> None:
        for proc in [*self.sentinels, self.replica.process, self.primary.process]:
            proc.stop()


@pytest.fixture()
def topology(run_dir: Path, request: pytest.FixtureRequest) -> Iterator[Topology]:
    """A fresh topology per test: a failover leaves the survivor without a replica."""
    directory = run_dir / f"sentinel-{request.node.name[:40]}"
    directory.mkdir(exist_ok=True)
    top = Topology(directory).start()
    yield top
    top.stop()


def _fail_over(top: Topology) -> float:
    """SIGKILL the current primary; the seconds until the sentinels name the replica."""
    old = top.primary_port()
    dying = top.primary if top.primary.port == old else top.replica
    started = time.monotonic()
    dying.process.signal(signal.SIGKILL)
    deadline = started + 60
    while top.primary_port() == old:
        assert time.monotonic() < deadline, "the sentinels never promoted the replica"
        time.sleep(0.1)
    return time.monotonic() - started


# -- clients ------------------------------------------------------------------------------


def test_clients_and_the_broker_follow_the_primary_through_a_failover(topology: Topology) -> None:
    client = connect(topology.url)
    client.set("before", "kept")
    assert client.info("server")["tcp_port"] == topology.primary_port()
    with Connection(topology.url, transport=SentinelTransport) as conn:
        queue = conn.SimpleQueue("sentinel-test")
        queue.put({"n": 1})
        message = queue.get(timeout=5)
        message.ack()
        assert message.payload == {"n": 1}
        queue.close()
    topology.replica.process.wait_until(
        lambda: redis.Redis(port=topology.replica.port).get("before") == b"kept"
    )

    took = _fail_over(topology)
    print(f"sentinels promoted the replica {took:.1f} s after the primary died")

    def answers() -> bool:
        try:
            return client.get("before") == "kept"
        except redis.ConnectionError:
            return False

    Process.wait_until(topology.sentinels[0], answers, timeout=30)
    assert client.info("server")["tcp_port"] == topology.primary_port()
    client.set("after", "written to the new primary")
    with Connection(topology.url, transport=SentinelTransport) as conn:
        queue = conn.SimpleQueue("sentinel-test")
        queue.put({"n": 2})
        message = queue.get(timeout=5)
        message.ack()
        assert message.payload == {"n": 2}
        queue.close()


def test_the_gateway_on_sentinel_answers_200_or_a_quick_503_through_a_failover(
    topology: Topology, run_dir: Path, stack_env: dict[str, str], start_gateway
) -> None:
    env = {**stack_env, "IMAGEGATE_REDIS_URL": topology.url}
    worker = start_worker(run_dir, env, "local", name="worker-local-sentinel")
    try:
        gateway = start_gateway("web-sentinel", IMAGEGATE_REDIS_URL=topology.url)
        key = create_key(env, "sentinel")["key"]
        session = requests.Session()

        def generate(_: int) -> tuple[int, str | None, float]:
            started = time.monotonic()
            r = session.post(
                f"{gateway}/v1/images/generations",
                headers={"Authorization": f"Bearer {key}"},
                json={"model": "local/testcard", "prompt": "a fox", "size": "256x256"},
                timeout=150,
            )
            return r.status_code, r.headers.get("Retry-After"), time.monotonic() - started

        assert generate(0)[0] == 200
        with ThreadPoolExecutor(8) as pool:
            during = pool.map(generate, range(400))
            time.sleep(0.5)
            _fail_over(topology)
            results = list(during)
        statuses = [status for status, _, _ in results]
        times = sorted(t for _, _, t in results)
        print(
            f"through the failover: {statuses.count(200)} × 200, {statuses.count(503)} × 503, "
            f"others {[s for s in statuses if s not in (200, 503)]}, "
            f"answer times p50 {times[len(times) // 2]:.2f} s, p99 {times[int(len(times) * 0.99)]:.2f} s, "
            f"max {times[-1]:.1f} s; slow ones: {[(s, round(t, 1)) for s, _, t in results if t > 2]}"
        )
        assert set(statuses) <= {200, 503}, statuses
        assert all(retry for status, retry, _ in results if status == 503)
        # Once the sentinels have named the new primary, the same processes serve again.
        Process.wait_until(worker, lambda: generate(0)[0] == 200, timeout=60)
    finally:
        worker.stop()


# -- a silent Redis host ------------------------------------------------------------------


class SilenceableProxy:
    """A TCP relay to Redis that can go silent: connections stay open, nothing comes back,
    and new connections are accepted by the kernel but never served — a host whose
    network dropped without a reset."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.silent = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while True:
            conn, _ = self.listener.accept()
            while self.silent.is_set():  # what arrives now waits in the backlog, unserved
                time.sleep(0.05)
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                while self.silent.is_set():
                    time.sleep(0.05)
                dst.sendall(data)
        except OSError:
            pass


def test_a_silent_redis_host_costs_requests_a_503_in_seconds_not_a_hang(
    redis_server: RedisServer, start_gateway
) -> None:
    proxy = SilenceableProxy(redis_server.port)
    # One web process, so that none is still starting (and reading Redis) when it goes silent.
    gateway = start_gateway(
        "web-silent-redis", IMAGEGATE_REDIS_URL=proxy.url, IMAGEGATE_WEB_PROCESSES="1"
    )
    assert requests.get(f"{gateway}/healthz", timeout=10).ok
    proxy.silent.set()
    try:

        def generate(_: int) -> tuple[int, str | None, float]:
            started = time.monotonic()
            # 20 s: the old settings (10 s reads, three retries of 5 s connects) took ~27 s.
            r = requests.post(
                f"{gateway}/v1/images/generations",
                headers={"Authorization": "Bearer ig-anything"},
                json={"model": "local/testcard", "prompt": "a fox"},
                timeout=20,
            )
            return r.status_code, r.headers.get("Retry-After"), time.monotonic() - started

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(generate, range(8)))
        print(f"silent Redis: answers after {sorted(round(t, 1) for *_, t in results)} s")
        assert {status for status, *_ in results} == {503}
        assert all(retry for _, retry, _ in results)
    finally:
        proxy.silent.clear()
    Process.wait_until(redis_server.process, lambda: requests.get(f"{gateway}/healthz").ok)
