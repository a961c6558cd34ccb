"""A private imagegate stack for one benchmark run, on free ports of this machine.

    redis-server                      own instance, no persistence
    python -m bench.simulator         the project's OpenAI simulator (chosen latency, images)
    every line of the Procfile        as shipped (default): web, worker_openai, the other
                                      families' workers (idle here, but they count in memory)
    or, tuned (``--tuned``):
    celery ... worker -Q openai  x N  the pool under test (threads or gevent, concurrency C)
    gunicorn api.wsgi:app             M gevent processes (api/gunicorn_conf.py)
    imagegate keys create ...         an internal key with an unlimited balance

The gateway sees two models, defined in a catalog overlay and served by the
simulator's ``compat-any`` model (any WxH) through the ``openai`` family:
``bench/url`` asks the upstream for a URL (the worker then downloads the
image) and ``bench/b64`` asks for base64 in the JSON body.

Use it as a context manager; every process is stopped (process groups,
SIGTERM then SIGKILL) however the block ends::

    with Stack(StackConfig(), run_dir) as stack:
        stack.base_url, stack.api_key, stack.set_latency(0.0), stack.measure.memory()
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

from bench.procs import Group
from tests.support.processes import BIN, REPO, Process, free_port

SIM_KEY = "bench-upstream-key"
MODEL_URL = "bench/url"
MODEL_B64 = "bench/b64"

OVERLAY = """\
# imagegate benchmark models: the simulator's compat-any model (any WxH) via the openai family.
[[models]]
id = "bench/url"
family = "openai"
upstream = "compat-any"
price = "0.001"
size_rule = { kind = "passthrough", min = 16, max = 4096 }
default_size = "512x512"
max_n = 4
max_prompt_length = 4000
response_formats = ["url", "b64_json"]
options = { response_format = "url" }

[[models]]
id = "bench/b64"
family = "openai"
upstream = "compat-any"
price = "0.001"
size_rule = { kind = "passthrough", min = 16, max = 4096 }
default_size = "1024x1024"
max_n = 4
max_prompt_length = 4000
response_formats = ["url", "b64_json"]
options = { response_format = "b64_json" }
"""


@dataclass(frozen=True)
class StackConfig:
    """What runs. The defaults are the Procfile as shipped: every line of it, nothing tuned.

    ``procfile=False`` (``--tuned``) starts only the web and ``worker_openai``
    processes with the numbers given here (the earlier reference stack: 2 web
    processes, 2 workers x 500 threads). In Procfile mode a number set here
    (non-zero) is passed the way an operator would (the setting variables,
    more copies of the worker line), and ``describe`` says so.
    """

    procfile: bool = True
    web_processes: int = 0  # 0: as shipped (api/gunicorn_conf.py: one per core)
    web_connections: int = 0  # 0: as shipped (gevent worker_connections 2000)
    worker_processes: int = 0  # openai worker processes; 0: as shipped (workers/launch.py)
    worker_pool: str = "threads"  # celery --pool: threads | gevent (tuned stack only)
    worker_concurrency: int = 0  # per worker process; 0: planned (workers/pool.py)
    upstream_latency: float = 0.0
    images: str = "noise"  # simulator images: noise (photo-sized) | solid (tiny)
    prewarm: str = "256x256,512x512,1024x1024"  # sizes the simulator renders before serving
    log_level: str = "INFO"

    def describe(self) -> str:
        web = self.web_processes or os.cpu_count()
        conc = self.worker_concurrency or "planned"
        procs = self.worker_processes or "as planned"
        if self.procfile:
            tuned = [
                f"{k}={v}"
                for k, v in (
                    ("web processes", self.web_processes),
                    ("web connections", self.web_connections),
                    ("IMAGEGATE_WORKER_PROCESSES", self.worker_processes),
                    ("worker concurrency", self.worker_concurrency),
                )
                if v
            ]
            return (
                "Procfile as shipped"
                + (f" with {', '.join(tuned)}" if tuned else "")
                + (
                    f": {web} web (gunicorn gevent) + worker_openai ({procs} processes, "
                    f"the Procfile's pool x {conc}) + the other lines"
                )
            )
        return (
            f"tuned: {web} web (gunicorn gevent) + {self.worker_processes} worker "
            f"(celery {self.worker_pool} x{conc})"
        )


TUNED = StackConfig(procfile=False, web_processes=2, web_connections=2000, worker_processes=2,
                    worker_concurrency=500)  # fmt: skip


def procfile() -> dict[str, str]:
    """The Procfile's processes: name -> command line (run by a shell, as honcho does)."""
    lines = (REPO / "Procfile").read_text().splitlines()
    out = {}
    for line in lines:
        if line.strip() and not line.lstrip().startswith("#"):
            name, command = line.split(":", 1)
            out[name.strip()] = command.strip()
    return out


class Stack:
    def __init__(self, config: StackConfig, run_dir: Path) -> None:
        self.config = config
        self.run_dir = run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.processes: list[Process] = []
        self.redis: Process | None = None
        self.simulator: Process | None = None
        self.web: Process | None = None
        self.workers: list[Process] = []  # the openai pool under load
        self.idle_workers: list[Process] = []  # the Procfile's other lines
        self.line_env: dict[str, str] = {}
        self.simulator_url = ""
        self.base_url = ""
        self.api_key = ""
        self.env: dict[str, str] = {}

    # -- life cycle ------------------------------------------------------------------

    def __enter__(self) -> Stack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Stack:
        cfg = self.config
        redis_port = free_port()
        redis_dir = self.run_dir / "redis"
        redis_dir.mkdir(exist_ok=True)
        self.redis = self._spawn(
            "redis",
            [
                "redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(redis_dir),
                "--maxmemory-policy", "noeviction", "--maxclients", "20000",
            ],
        )  # fmt: skip
        self.simulator = self._spawn(
            "simulator",
            [
                str(BIN / "python"), "-m", "bench.simulator", "--port", "0",
                "--latency", str(cfg.upstream_latency), "--api-key", SIM_KEY,
                "--images", cfg.images, "--backlog", "4096",
                *(["--prewarm", cfg.prewarm] if cfg.prewarm else []),
            ],
        )  # fmt: skip
        overlay = self.run_dir / "bench_models.toml"
        overlay.write_text(OVERLAY)
        self.redis.wait_until(lambda: _redis_ping(redis_port), timeout=20)
        found: dict[str, str] = {}

        def sim_ready() -> bool:
            match = re.search(r"SIMULATOR READY (\S+)", self.simulator.log())  # type: ignore[union-attr]
            if match:
                found["url"] = match.group(1)
            return bool(match)

        self.simulator.wait_until(sim_ready, timeout=30)
        self.simulator_url = found["url"]
        port = free_port()
        self.env = {
            "IMAGEGATE_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "IMAGEGATE_STORAGE_DIR": str(self.run_dir / "images"),
            "IMAGEGATE_DATABASE_URL": f"sqlite:///{self.run_dir}/records.sqlite3",
            "IMAGEGATE_CATALOG_OVERLAYS": str(overlay),
            "IMAGEGATE_BASE_URL_OPENAI": f"{self.simulator_url}/v1",
            "OPENAI_API_KEY": SIM_KEY,
            "IMAGEGATE_LOG_LEVEL": cfg.log_level,
            "PORT": str(port),
            "IMAGEGATE_HOST": "127.0.0.1",
            # The Procfile's commands (celery, gunicorn) from this virtualenv, as in
            # scripts/run-local.sh.
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        if cfg.web_processes:
            self.env["IMAGEGATE_WEB_PROCESSES"] = str(cfg.web_processes)
        if cfg.web_connections:
            self.env["IMAGEGATE_WEB_CONNECTIONS"] = str(cfg.web_connections)
        if cfg.procfile:
            self._start_procfile(cfg)
        else:
            self._start_tuned(cfg)
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.api_key = self._create_key()
        self.web.wait_until(
            lambda: requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok, timeout=60
        )
        # A worker is consuming once its BRPOP on the queue is parked in Redis
        # (whatever its log level says).
        consumers = self._expected_consumers()
        self.web.wait_until(lambda: _consumers(redis_port) >= consumers, timeout=90)
        return self

    def _expected_consumers(self) -> int:
        """Worker processes that will consume: as the launcher decides for each line."""
        if not self.config.procfile:
            return len(self.workers)
        from shared.settings import Settings
        from workers.launch import process_count, queues_in, why_idle

        settings = Settings.from_env({**os.environ, **self.line_env})
        total = 0
        for name, command in procfile().items():
            if name.startswith("worker"):
                queues = queues_in(command.split())
                if not why_idle(settings, queues):
                    total += process_count(settings, queues, os.cpu_count())
        return total

    def _start_procfile(self, cfg: StackConfig) -> None:
        """Every Procfile line, run by a shell as honcho runs it."""
        env = dict(self.env)
        if cfg.worker_concurrency:
            env["IMAGEGATE_WORKER_CONCURRENCY"] = str(cfg.worker_concurrency)
        if cfg.worker_processes:
            env["IMAGEGATE_WORKER_PROCESSES"] = str(cfg.worker_processes)
        self.line_env = env
        for name, command in procfile().items():
            proc = self._spawn(name, ["bash", "-c", f"exec {command}"], env=env)
            if name == "web":
                self.web = proc
            elif name == "worker_openai":
                self.workers.append(proc)
            else:
                self.idle_workers.append(proc)
        assert self.web is not None, "the Procfile has no web line"

    def _start_tuned(self, cfg: StackConfig) -> None:
        """The web process and N openai workers with the pool and concurrency given."""
        for i in range(cfg.worker_processes or 2):
            argv = [
                str(BIN / "celery"), "-A", "workers.celery_app", "worker",
                "-Q", "openai", "-n", f"bench-openai-{i}@%h",
                "--pool", cfg.worker_pool, "--concurrency", str(cfg.worker_concurrency or 500),
                "--without-gossip", "--without-mingle", "-l", cfg.log_level,
            ]  # fmt: skip
            self.workers.append(self._spawn(f"worker-{i}", argv, env=self.env))
        self.web = self._spawn(
            "web",
            [str(BIN / "gunicorn"), "-c", "api/gunicorn_conf.py", "api.wsgi:app"],
            env=self.env,
        )

    def stop(self) -> None:
        for proc in reversed(self.processes):
            try:
                proc.stop(timeout=15)
            except Exception:  # noqa: BLE001 - keep stopping the others
                pass
        images = self.run_dir / "images"
        shutil.rmtree(images, ignore_errors=True)

    # -- helpers -----------------------------------------------------------------------

    def set_latency(self, seconds: float) -> None:
        set_simulator_latency(self.simulator_url, seconds)

    @property
    def measure(self) -> Group:
        """The gateway's processes by component (web, workers, redis) plus the simulator."""
        assert self.web and self.redis and self.simulator
        return Group(
            {
                "web": [self.web.pid],
                "workers": [w.pid for w in self.workers],
                "idle_workers": [w.pid for w in self.idle_workers],
                "redis": [self.redis.pid],
                "simulator": [self.simulator.pid],
            }
        )

    def description(self) -> dict:
        return {**asdict(self.config), "summary": self.config.describe()}

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Process:
        proc = Process(name, argv, log_dir=self.run_dir, env=env).start()
        self.processes.append(proc)
        return proc

    def _create_key(self) -> str:
        out = subprocess.run(
            [
                str(BIN / "imagegate"), "keys", "create", "--name", "bench", "--json",
                "--tier", "internal", "--balance", "unlimited",
            ],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout  # fmt: skip
        return json.loads(out)["key"]


def set_simulator_latency(simulator_url: str, seconds: float) -> None:
    """Change the simulator's latency at run time (``POST /_sim/config``)."""
    response = requests.post(f"{simulator_url}/_sim/config", json={"latency": seconds}, timeout=10)
    response.raise_for_status()


def _redis_ping(port: int) -> bool:
    import redis

    return bool(redis.Redis(port=port, socket_timeout=1).ping())


def _consumers(port: int) -> int:
    """Redis clients blocked in BRPOP: Celery workers waiting on their queues."""
    import redis

    clients = redis.Redis(port=port, socket_timeout=1).client_list()
    return sum(1 for c in clients if c.get("cmd") == "brpop")
