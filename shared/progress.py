"""Partial images of a streaming job, from the worker that makes them to the web
process that streams them (``stream=true``, :mod:`api.streaming`).

The transport is Redis pub/sub, one channel per job (:func:`channel`,
``imagegate:progress:<job id>``):

* **Worker side.** When the job's client streams, the pipeline gives the adapter
  a :class:`PartialSink` (``CallContext.progress``). The adapter asks its
  upstream for at most :attr:`PartialSink.partial_images` partial images and
  hands each one to :meth:`PartialSink.publish` as it arrives.
* **Web side.** The web process streaming the job subscribes to its channel on
  the process's one notification connection (:class:`api.waiter.CompletionHub`)
  before the job is enqueued, and unsubscribes when the stream ends; so only
  that process receives the job's partials, and a streaming request holds no
  Redis connection of its own.
* **Message.** One JSON text per partial image (the gateway's Redis clients
  decode replies as text): :class:`PartialImage`'s fields, the image still in
  base64 as the upstream sent it, so neither side decodes or re-encodes it.

What it does not do, on purpose:

* **Fire-and-forget.** Nothing is stored: Redis keeps no backlog, so its memory
  does not grow with partial images whoever listens. A partial published while
  the web process is reconnecting (or after its client left) is lost. That is
  acceptable: partial images are previews; the completed image is read from the
  job record, as for every other answer.
* **Bounded.** A partial image above ``max_bytes`` (decoded) is not published
  (``IMAGEGATE_STREAM_PARTIAL_IMAGE_MAX_BYTES``), so one message is bounded, and
  at most ``partial_images`` (0-3, OpenAI's range) are published per image.
* **Never fails the job.** A publish that Redis refuses is logged and dropped.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis

log = logging.getLogger(__name__)

PREFIX = "imagegate:progress:"
MAX_PARTIAL_IMAGES = 3  # OpenAI's `partial_images` range is 0-3


def channel(job_id: str) -> str:
    """The pub/sub channel of ``job_id``'s partial images."""
    return PREFIX + job_id


def job_of(name: str) -> str | None:
    """The job id of a progress channel's name, or None for another channel."""
    return name[len(PREFIX) :] if name.startswith(PREFIX) else None


def decoded_size(b64: str) -> int:
    """The byte length of the data a base64 text holds (without decoding it)."""
    return len(b64) * 3 // 4 - b64[-2:].count("=")


@dataclass(frozen=True)
class PartialImage:
    """One partial image, as published. ``image_index``: which of the job's ``n``
    images it previews; ``partial_image_index``: 0-based, per image, in order.
    The other fields are OpenAI's event fields as the upstream gave them (None:
    it did not say)."""

    b64_json: str
    partial_image_index: int
    image_index: int = 0
    size: str | None = None
    quality: str | None = None
    background: str | None = None
    output_format: str | None = None
    created_at: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> PartialImage | None:
        """The partial image a message holds; None for a malformed message."""
        try:
            data: Any = json.loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        b64, index = data.get("b64_json"), data.get("partial_image_index")
        if not isinstance(b64, str) or not b64 or type(index) is not int:
            return None
        image_index = data.get("image_index", 0)

        def text_or_none(name: str) -> str | None:
            value = data.get(name)
            return value if isinstance(value, str) else None

        created = data.get("created_at")
        return cls(
            b64_json=b64,
            partial_image_index=index,
            image_index=image_index if type(image_index) is int else 0,
            size=text_or_none("size"),
            quality=text_or_none("quality"),
            background=text_or_none("background"),
            output_format=text_or_none("output_format"),
            created_at=created if type(created) is int else None,
        )


class PartialSink:
    """Where an adapter hands the partial images of one job (thread-safe)."""

    def __init__(
        self, client: redis.Redis, job_id: str, *, partial_images: int, max_bytes: int
    ) -> None:
        self._redis = client
        self.job_id = job_id
        self.partial_images = max(0, min(MAX_PARTIAL_IMAGES, partial_images))
        """How many partial images per image the client asked for (0: none)."""
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._sent: dict[int, int] = {}  # image index -> partials published

    def publish(self, partial: PartialImage) -> bool:
        """Publish one partial image; False if it was dropped (over a bound, or
        Redis refused it)."""
        size = decoded_size(partial.b64_json)
        if size > self._max_bytes:
            log.info(
                "job %s: partial image of %d bytes not relayed (limit %d)",
                self.job_id,
                size,
                self._max_bytes,
            )
            return False
        with self._lock:
            sent = self._sent.get(partial.image_index, 0)
            if sent >= self.partial_images:
                return False
            self._sent[partial.image_index] = sent + 1
        if partial.created_at is None:
            partial = PartialImage(**{**asdict(partial), "created_at": int(time.time())})
        try:
            self._redis.publish(channel(self.job_id), partial.to_json())
        except redis.RedisError as exc:
            log.warning("job %s: partial image not relayed: %s", self.job_id, exc)
            return False
        return True
