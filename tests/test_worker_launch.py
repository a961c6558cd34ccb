"""``imagegate-worker``: the Procfile's worker lines, run as shipped.

A line whose families cannot be served here waits without a Celery worker;
a generation line runs two processes on a machine with two cores (one process
uses about one core, whatever its threads); signals reach every process, and
when one process ends the line ends, so the process manager restarts it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import redis

from shared.settings import Settings
from tests.support.processes import BIN, Process, RedisServer
from workers.launch import process_count, queues_in, why_idle, with_node_suffix


def celery_line(queue: str, *extra: str) -> list[str]:
    return [
        str(BIN / "imagegate-worker"), str(BIN / "celery"), "-A", "workers.celery_app", "worker",
        "-Q", queue, "-n", f"{queue}@%h", "--pool", "threads", "--without-gossip",
        "--without-mingle", "-l", "INFO", *extra,
    ]  # fmt: skip


# -- the decisions -------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv,queues",
    [
        (["celery", "worker", "-Q", "openai"], ["openai"]),
        (["celery", "worker", "-Qbfl,fal"], ["bfl", "fal"]),
        (["celery", "worker", "--queues=a,b", "-l", "INFO"], ["a", "b"]),
        (["celery", "worker", "--queues", "x"], ["x"]),
        (["celery", "worker"], []),
    ],
)
def test_queues_are_read_from_the_celery_command(argv: list[str], queues: list[str]) -> None:
    assert queues_in(argv) == queues


def test_copies_get_their_own_node_names() -> None:
    argv = ["celery", "worker", "-n", "openai@%h", "-l", "INFO"]
    assert with_node_suffix(argv, 0) == argv
    assert with_node_suffix(argv, 2)[3] == "openai-2@%h"
    assert with_node_suffix(["celery", "--hostname=a@b"], 1) == ["celery", "--hostname=a-1@b"]
    assert with_node_suffix(["celery", "worker"], 1)[-2:] == ["-n", "worker-1@%h"]


def test_two_processes_per_generation_line_one_for_webhooks_unless_set() -> None:
    s = Settings.from_env({})
    assert process_count(s, ["openai"], 2) == 2
    assert process_count(s, ["openai"], 16) == 2
    assert process_count(s, ["openai"], 1) == 1
    assert process_count(s, ["webhooks"], 8) == 1
    assert (
        process_count(Settings.from_env({"IMAGEGATE_WORKER_PROCESSES": "5"}), ["webhooks"], 2) == 5
    )


def test_a_line_is_idle_only_when_none_of_its_families_can_be_served() -> None:
    no_keys = Settings.from_env({})
    assert "BFL_API_KEY" in why_idle(no_keys, ["bfl"])
    assert why_idle(no_keys, ["local"]) == ""  # needs no key
    assert why_idle(no_keys, ["webhooks"]) == ""
    assert why_idle(no_keys, ["bfl", "local"]) == ""
    assert why_idle(Settings.from_env({"BFL_API_KEY": "k"}), ["bfl"]) == ""


# -- the processes -------------------------------------------------------------------


def brpop_clients(url: str) -> int:
    return sum(1 for c in redis.Redis.from_url(url).client_list() if c.get("cmd") == "brpop")


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


@pytest.fixture()
def own_redis(tmp_path: Path):
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def test_a_line_without_its_upstream_key_waits_without_a_worker(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    env = {"IMAGEGATE_REDIS_URL": own_redis.url, "BFL_API_KEY": ""}
    proc = Process("idle-bfl", celery_line("bfl"), env=env, log_dir=tmp_path).start()
    try:
        proc.wait_until(lambda: "nothing to run" in proc.log(), timeout=30)
        assert "BFL_API_KEY" in proc.log()
        proc.wait_until(
            lambda: Path(f"/proc/{proc.pid}/cmdline").read_bytes().startswith(b"sleep"), timeout=10
        )
        assert brpop_clients(own_redis.url) == 0
        assert proc.running()
    finally:
        proc.stop()


def test_a_generation_line_runs_two_consuming_processes_and_ends_with_either(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    env = {"IMAGEGATE_REDIS_URL": own_redis.url, "IMAGEGATE_WORKER_PROCESSES": "2"}
    proc = Process("two-local", celery_line("local"), env=env, log_dir=tmp_path).start()
    try:
        proc.wait_until(lambda: brpop_clients(own_redis.url) >= 2, timeout=90)
        assert proc.log().count(" ready.") == 2
        kids = children(proc.pid)
        assert len(kids) == 2
        os.kill(kids[0], signal.SIGKILL)  # one process dies: the whole line ends
        deadline = time.monotonic() + 90
        while proc.running() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not proc.running(), "the launcher must end when one of its processes does"
        assert not any(Path(f"/proc/{k}").exists() for k in kids[1:])
    finally:
        proc.stop()


def test_sigterm_reaches_every_process_of_a_line(tmp_path: Path, own_redis: RedisServer) -> None:
    env = {"IMAGEGATE_REDIS_URL": own_redis.url, "IMAGEGATE_WORKER_PROCESSES": "2"}
    proc = Process("term-local", celery_line("local"), env=env, log_dir=tmp_path).start()
    try:
        proc.wait_until(lambda: brpop_clients(own_redis.url) >= 2, timeout=90)
        kids = children(proc.pid)
        os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while proc.running() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not proc.running()
        assert proc.log().count("worker: Warm shutdown") == 2
        assert not any(Path(f"/proc/{k}").exists() for k in kids)
    finally:
        proc.stop()
