"""A taken-over job runs ahead of new work (issue 21 item 6).

A job whose worker stopped beating is taken over by a reaper, which sends its task
again. Sent like new work, it went to the back of its queue, and its client (who
had already waited through the lost run) waited again behind everything queued
since. The reaper now puts it at the front (``shared.broker.push_front``: kombu's
consumers ``BRPOP`` the end that ``RPUSH`` writes), so the next free worker takes it.

The end-to-end test runs a real Celery worker with one slot, busy with a slow job,
``N`` new jobs queued behind it, and a job whose worker is "dead" (claimed, never
beating): the busy worker's own reaper takes that job over, and it is claimed
before every one of the ``N``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from api.queue import TaskQueue
from shared import jobrecord
from shared.broker import push_front, task_message
from shared.jobs import GENERATE_TASK, Job, JobStatus, JobStore, liveness_from, new_job_id
from shared.redis_client import connect
from shared.results import job_object
from shared.settings import Settings
from shared.storage import storage_for
from tests.conftest import SIM_KEY, procfile_pool, start_simulator
from tests.support.processes import BIN, Process, RedisServer

N = 4  # new jobs queued behind the busy one
LATENCY = 2.0  # seconds each upstream call takes
STALE = 1.0  # a running job without a heartbeat this long is taken over


def test_a_message_pushed_to_the_front_is_consumed_first(redis_server) -> None:
    """What kombu's Redis consumer does (``BRPOP``) takes the pushed-to-front message
    before messages published the ordinary way (``LPUSH``), oldest first after it."""
    client = connect(redis_server.url.rsplit("/", 1)[0] + "/11")
    queue = "prio-" + new_job_id()
    for name in ("first", "second"):
        client.lpush(queue, task_message(GENERATE_TASK, [name], queue))
    push_front(client, GENERATE_TASK, ["taken-over"], queue)
    order = [json.loads(client.brpop([queue], timeout=1)[1]) for _ in range(3)]
    assert [m["headers"]["argsrepr"] for m in order] == [
        "['taken-over']",
        "['first']",
        "['second']",
    ]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    run_dir = tmp_path_factory.mktemp("takeover-priority")
    redis_server = RedisServer(run_dir).start()
    sim_proc, sim = start_simulator(run_dir, "openai", name="simulator-openai-priority")
    env = {
        "IMAGEGATE_REDIS_URL": redis_server.url,
        "IMAGEGATE_STORAGE_DIR": str(run_dir / "images"),
        "IMAGEGATE_BASE_URL_OPENAI": f"{sim}/v1",
        "OPENAI_API_KEY": SIM_KEY,
        "IMAGEGATE_UPSTREAM_MAX_RETRIES": "0",
        "IMAGEGATE_JOB_STALE_SECONDS": str(STALE),
        "IMAGEGATE_HEARTBEAT_SECONDS": "0.2",
        "IMAGEGATE_REAPER_INTERVAL_SECONDS": "0.2",
        # New jobs wait in the queue for a long time here, as they should: not resent.
        "IMAGEGATE_ENQUEUE_GRACE_SECONDS": "120",
        "IMAGEGATE_RESEND_AFTER_SECONDS": "120",
    }
    requests.post(f"{sim}/_sim/config", json={"latency": LATENCY}, timeout=5).raise_for_status()
    worker = Process(
        "worker-priority",
        [
            str(BIN / "celery"), "-A", "workers.celery_app", "worker", "-Q", "openai",
            "-n", "priority@%h", "--pool", procfile_pool("openai"), "--concurrency", "1",
            "--without-gossip", "--without-mingle", "-l", "INFO",
        ],
        env=env,
        log_dir=run_dir,
    ).start()  # fmt: skip
    try:
        worker.wait_until(lambda: " ready." in worker.log(), timeout=60)
        # The reaper judges heartbeats only after STALE seconds connected.
        time.sleep(STALE + 0.5)
        yield {**env, "worker_log": str(worker.log_path)}
    finally:
        worker.stop()
        sim_proc.stop()
        redis_server.stop()


def _job(store: JobStore) -> Job:
    now = store.clock()
    return store.create(
        Job(
            id=new_job_id(),
            key_id="key_priority",
            model="dall-e-2",
            family="openai",
            queue="openai",
            request={"prompt": "a lighthouse", "n": 1, "size": "256x256"},
            created=now,
            deadline=now + 120,
        )
    )


def _wait(store: JobStore, job_ids: list[str], timeout: float) -> list[Job]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        jobs = [store.get(i) for i in job_ids]
        if all(j is not None and j.terminal for j in jobs):
            return jobs  # type: ignore[return-value]
        time.sleep(0.2)
    raise AssertionError(f"not finished: {[(j.id, j.status) for j in jobs if j]}")


def test_a_taken_over_job_is_claimed_before_new_work(stack: dict[str, str]) -> None:
    settings = Settings.from_env({k: v for k, v in stack.items() if k.startswith(("I", "O"))})
    client = connect(settings.redis_url)
    store = JobStore(client, retention_seconds=600, liveness=liveness_from(settings))
    queue = TaskQueue(settings, client)

    busy = _job(store)
    queue.enqueue(busy)
    end = time.monotonic() + 30
    while store.status(busy.id) != JobStatus.RUNNING:
        assert time.monotonic() < end, "the worker never took the first job"
        time.sleep(0.05)
    new = [_job(store) for _ in range(N)]
    for job in new:
        queue.enqueue(job)
    # A job whose worker died mid-run: claimed, then never a heartbeat.
    orphan = _job(store)
    assert store.claim(orphan.id, worker="dead@host").should_run

    done = _wait(store, [busy.id, orphan.id, *(j.id for j in new)], timeout=LATENCY * (N + 2) + 60)
    assert all(j.status == JobStatus.SUCCEEDED for j in done), [j.status for j in done]
    by_id = {j.id: j for j in done}
    assert by_id[orphan.id].started < min(by_id[j.id].started for j in new), (
        "the taken-over job waited behind new work: "
        f"{by_id[orphan.id].started} vs {sorted(by_id[j.id].started for j in new)}"
    )
    record = client.hgetall(store.record_key(orphan.id))
    assert record[jobrecord.TAKEOVERS] == "1"
    assert int(record[jobrecord.ATTEMPT]) == 3  # the dead run's claim, the takeover, the rerun
    assert "takeover -> queue openai" in Path(stack["worker_log"]).read_text()
    # ... and it shows on the job object clients read (GET and webhook payloads).
    storage = storage_for(settings, client)
    shown = job_object(by_id[orphan.id], storage, base_url="http://127.0.0.1", ttl=60)
    assert (shown["attempt"], shown["takeovers"]) == (3, 1)
    fresh = job_object(by_id[new[0].id], storage, base_url="http://127.0.0.1", ttl=60)
    assert (fresh["attempt"], fresh["takeovers"]) == (1, 0)
