"""Start-up refuses local storage that the web and the workers do not share
(shared/storage_marker.py): in process on a real Redis, then with real processes and
two storage directories."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from shared.redis_client import connect
from shared.settings import Settings
from shared.storage_marker import MARKER_FILE, REDIS_KEY, StorageNotShared, check_local_storage
from tests.support.processes import BIN, Process, RedisServer, free_port, http_ok


@pytest.fixture()
def client(redis_server) -> Iterator[redis.Redis]:
    """A database no running process of the test stack uses, without a token."""
    client = connect(redis_server.url.rsplit("/", 1)[0] + "/9")
    client.delete(REDIS_KEY)
    yield client
    client.delete(REDIS_KEY)


def _local(directory: Path) -> Settings:
    return Settings.from_env({"IMAGEGATE_STORAGE_DIR": str(directory)})


def test_processes_sharing_a_directory_start(client: redis.Redis, tmp_path: Path) -> None:
    shared = tmp_path / "images"
    check_local_storage(_local(shared), client, role="web")  # the first: sets both up
    token = client.get(REDIS_KEY)
    assert token and (shared / MARKER_FILE).read_text().strip() == token
    check_local_storage(_local(shared), client, role="worker")
    check_local_storage(_local(shared), client, role="worker")
    assert client.get(REDIS_KEY) == token


@pytest.mark.parametrize("other_has_a_marker", [False, True])
def test_a_directory_of_its_own_is_refused_naming_the_setting(
    client: redis.Redis, tmp_path: Path, other_has_a_marker: bool
) -> None:
    check_local_storage(_local(tmp_path / "web-host"), client, role="web")
    elsewhere = tmp_path / "worker-host"
    if other_has_a_marker:  # e.g. the directory of another deployment
        elsewhere.mkdir()
        (elsewhere / MARKER_FILE).write_text("another-token\n")
    with pytest.raises(StorageNotShared) as info:
        check_local_storage(_local(elsewhere), client, role="worker")
    message = str(info.value)
    assert f"IMAGEGATE_STORAGE_DIR={elsewhere}" in message
    assert "worker process refused to start" in message and REDIS_KEY in message


def test_a_token_lost_by_redis_comes_back_from_the_shared_directory(
    client: redis.Redis, tmp_path: Path
) -> None:
    shared = tmp_path / "images"
    check_local_storage(_local(shared), client, role="web")
    token = client.get(REDIS_KEY)
    client.delete(REDIS_KEY)  # Redis restarted without its data
    check_local_storage(_local(shared), client, role="worker")
    assert client.get(REDIS_KEY) == token
    with pytest.raises(StorageNotShared):
        check_local_storage(_local(tmp_path / "elsewhere"), client, role="worker")


def test_first_starts_at_once_on_one_directory_agree(client: redis.Redis, tmp_path: Path) -> None:
    shared = tmp_path / "images"
    failures: list[BaseException] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        try:
            check_local_storage(_local(shared), client, role="worker")
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            failures.append(exc)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert (shared / MARKER_FILE).read_text().strip() == client.get(REDIS_KEY)
    assert [p.name for p in shared.iterdir()] == [MARKER_FILE]  # no temporary file left


def test_s3_storage_is_not_checked(tmp_path: Path) -> None:
    settings = Settings.from_env({"IMAGEGATE_STORAGE": "s3", "IMAGEGATE_S3_BUCKET": "b"})
    check_local_storage(settings, connect("redis://127.0.0.1:1/0"), role="web")  # no Redis


def test_redis_away_at_start_is_waited_for_then_named(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        check_local_storage(
            _local(tmp_path), connect("redis://127.0.0.1:1/0"), role="web", wait_seconds=0.5
        )
    assert time.monotonic() - started >= 0.3


# -- real processes -------------------------------------------------------------------------


def _env(redis_server: RedisServer, storage: Path, port: int | None = None) -> dict[str, str]:
    env = {
        "IMAGEGATE_REDIS_URL": redis_server.url,
        "IMAGEGATE_STORAGE_DIR": str(storage),
        "IMAGEGATE_HOST": "127.0.0.1",
        "IMAGEGATE_WEB_PROCESSES": "1",
    }
    if port is not None:
        env["PORT"] = str(port)
    return env


def _web(run_dir: Path, env: dict[str, str], name: str) -> Process:
    argv = [str(BIN / "gunicorn"), "-c", "api/gunicorn_conf.py", "api.wsgi:app"]
    return Process(name, argv, env=env, log_dir=run_dir).start()


def _worker(run_dir: Path, env: dict[str, str], name: str) -> Process:
    argv = [
        str(BIN / "celery"), "-A", "workers.celery_app", "worker", "-Q", "local",
        "-n", f"{name}@%h", "--pool", "threads", "--concurrency", "1",
        "--without-gossip", "--without-mingle", "-l", "INFO",
    ]  # fmt: skip
    return Process(name, argv, env=env, log_dir=run_dir).start()


def _exits(proc: Process, timeout: float = 60) -> int:
    assert proc.proc is not None
    try:
        return proc.proc.wait(timeout)
    finally:
        proc.stop()


def test_a_worker_with_another_directory_than_the_web_refuses_to_start(tmp_path: Path) -> None:
    redis_server = RedisServer(tmp_path).start()
    procs: list[Process] = []
    try:
        port = free_port()
        web = _web(tmp_path, _env(redis_server, tmp_path / "web-host", port), "web-marker")
        procs.append(web)
        web.wait_until(http_ok(f"http://127.0.0.1:{port}/healthz"), timeout=60)

        stray = _worker(tmp_path, _env(redis_server, tmp_path / "worker-host"), "stray")
        procs.append(stray)
        assert _exits(stray) != 0
        assert f"IMAGEGATE_STORAGE_DIR={tmp_path / 'worker-host'}" in stray.log()

        good = _worker(tmp_path, _env(redis_server, tmp_path / "web-host"), "good")
        procs.append(good)
        good.wait_until(lambda: " ready." in good.log(), timeout=60)
    finally:
        for proc in procs:
            proc.stop()
        redis_server.stop()


def test_a_web_with_another_directory_than_the_workers_refuses_to_start(tmp_path: Path) -> None:
    redis_server = RedisServer(tmp_path).start()
    procs: list[Process] = []
    try:
        worker = _worker(tmp_path, _env(redis_server, tmp_path / "worker-host"), "first")
        procs.append(worker)
        worker.wait_until(lambda: " ready." in worker.log(), timeout=60)

        port = free_port()
        web = _web(tmp_path, _env(redis_server, tmp_path / "web-host", port), "web-stray")
        procs.append(web)
        assert _exits(web) != 0
        assert f"IMAGEGATE_STORAGE_DIR={tmp_path / 'web-host'}" in web.log()
        assert "web process refused to start" in web.log()
    finally:
        for proc in procs:
            proc.stop()
        redis_server.stop()
