"""The web side's own task message is the one Celery's send_task would have pushed.

``api.queue.TaskQueue`` pushes :func:`shared.broker.task_message` straight onto
the queue's Redis list instead of going through kombu's producer. Celery's own
message for the same task, pushed by ``send_task`` onto a real redis-server, is
the reference: same fields, same body, same routing; only the ids differ. The
end-to-end suites then show workers running what the web side enqueues.
"""

from __future__ import annotations

import base64
import json

from api.queue import TaskQueue
from shared.broker import task_message
from shared.jobs import GENERATE_TASK
from shared.redis_client import connect
from shared.settings import Settings
from tests.support.processes import RedisServer


def celery_message(redis_url: str, queue: str, job_id: str) -> dict:
    queue_ = TaskQueue(Settings.from_env({"IMAGEGATE_REDIS_URL": redis_url}))
    client = connect(redis_url)
    client.delete(queue)
    queue_._celery.send_task(GENERATE_TASK, args=[job_id], queue=queue, routing_key=queue)
    (raw,) = client.lrange(queue, 0, -1)
    client.delete(queue)
    return json.loads(raw)


def ids_blanked(message: dict) -> dict:
    out = json.loads(json.dumps(message))
    for key in ("id", "root_id", "origin"):
        out["headers"][key] = "*"
    for key in ("correlation_id", "reply_to", "delivery_tag"):
        out["properties"][key] = "*"
    return out


def test_task_message_matches_what_send_task_pushes(redis_server: RedisServer) -> None:
    reference = celery_message(redis_server.url, "pubtest", "imgjob_abc")
    ours = json.loads(task_message(GENERATE_TASK, ["imgjob_abc"], "pubtest"))
    assert ids_blanked(ours) == ids_blanked(reference)
    assert base64.b64decode(ours["body"]) == base64.b64decode(reference["body"])
    assert (
        ours["headers"]["root_id"] == ours["headers"]["id"] == ours["properties"]["correlation_id"]
    )


def test_each_message_has_its_own_task_id_and_delivery_tag() -> None:
    a = json.loads(task_message(GENERATE_TASK, ["j1"], "q"))
    b = json.loads(task_message(GENERATE_TASK, ["j1"], "q"))
    assert a["headers"]["id"] != b["headers"]["id"]
    assert a["properties"]["delivery_tag"] != b["properties"]["delivery_tag"]


def test_enqueue_pushes_onto_the_jobs_family_queue(redis_server: RedisServer) -> None:
    client = connect(redis_server.url)
    client.delete("famq")
    queue = TaskQueue(Settings.from_env({"IMAGEGATE_REDIS_URL": redis_server.url}))
    queue.enqueue(_Job("imgjob_q1", "famq", "key_1"))  # type: ignore[arg-type]
    (raw,) = client.lrange("famq", 0, -1)
    message = json.loads(raw)
    assert message["headers"]["task"] == GENERATE_TASK
    assert json.loads(base64.b64decode(message["body"]))[0] == ["imgjob_q1", "key_1"]
    assert message["properties"]["delivery_info"]["routing_key"] == "famq"
    client.delete("famq")


class _Job:
    """The attributes of a job that enqueue reads."""

    def __init__(self, id: str, queue: str, key_id: str) -> None:
        self.id, self.queue, self.key_id = id, queue, key_id
