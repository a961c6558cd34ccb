"""CPU that Celery task events (what Flower reads) add per image, in the worker.

    python -m bench.task_events_cost [--jobs 5000] [--redis-url redis://...]

A worker with task events on sends three per job (``task-received``,
``task-started``, ``task-succeeded``) through the broker (kombu's fanout exchange:
a ``PUBLISH`` on Redis). This sends those three with the fields Celery's worker
fills for ``imagegate.generate``, through Celery's own event dispatcher on a Redis
broker, and prints the sender's CPU time (``time.process_time``) per job. Without
``--redis-url`` it starts a private ``redis-server`` on a free port.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import tempfile
import time
import uuid

from celery import Celery


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(url: str, jobs: int) -> float:
    app = Celery("imagegate-bench", broker=url)
    with app.connection_for_write() as conn:
        dispatcher = app.events.Dispatcher(conn, hostname="bench@host", enabled=True)

        def one_job() -> None:
            task = str(uuid.uuid4())
            dispatcher.send(
                "task-received",
                uuid=task,
                name="imagegate.generate",
                args="['imgjob_0123456789abcdef01234567', 'key_0123456789abcdef']",
                kwargs="{}",
                root_id=task,
                parent_id=None,
                retries=0,
                eta=None,
                expires=None,
            )
            dispatcher.send("task-started", uuid=task)
            dispatcher.send("task-succeeded", uuid=task, result="'succeeded'", runtime=1.2)

        one_job()
        started = time.process_time()
        for _ in range(jobs):
            one_job()
        cpu = time.process_time() - started
        dispatcher.close()
    return cpu / jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--redis-url")
    args = parser.parse_args()
    server = None
    url = args.redis_url
    if url is None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("no redis-server on PATH; pass --redis-url")
        port = free_port()
        work = tempfile.mkdtemp()
        server = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", work],
            stdout=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
        time.sleep(0.5)
    try:
        per_job = measure(url, args.jobs)
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
    print(f"task events CPU per image (3 events, sender side): {per_job * 1e6:.0f} us")


if __name__ == "__main__":
    main()
