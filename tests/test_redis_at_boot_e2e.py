"""A web server started while Redis is away (a restart, a failover) waits for it and serves
once it is back, instead of shutting down.

gunicorn's master shuts the whole server down when a worker fails while it
boots; a worker used to fail when it could not read the URL-signing secret from
Redis. Now it waits for Redis.
"""

from __future__ import annotations

from pathlib import Path

import requests

from tests.support.processes import BIN, Process, RedisServer, free_port, http_ok


def test_a_web_server_started_before_redis_serves_once_redis_is_up(run_dir: Path) -> None:
    redis_server = RedisServer(run_dir)  # its port is chosen; it is not started yet
    port = free_port()
    env = {
        "IMAGEGATE_REDIS_URL": redis_server.url,
        "IMAGEGATE_STORAGE_DIR": str(run_dir / "images-boot"),
        "PORT": str(port),
        "IMAGEGATE_HOST": "127.0.0.1",
        "IMAGEGATE_WEB_PROCESSES": "1",
        "IMAGEGATE_SIGNING_SECRET": None,  # read from Redis, which is not there yet
    }
    web = Process(
        f"web-before-redis-{port}",
        [str(BIN / "gunicorn"), "-c", "api/gunicorn_conf.py", "api.wsgi:app"],
        env=env,
        log_dir=run_dir,
    ).start()
    try:
        web.wait_until(lambda: "waiting for Redis" in web.log(), timeout=60)
        assert web.running(), web.log()[-2000:]
        redis_server.start()
        web.wait_until(http_ok(f"http://127.0.0.1:{port}/healthz"), timeout=60)
        assert web.running()
        assert requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).status_code == 401
    finally:
        web.stop()
        redis_server.stop()
