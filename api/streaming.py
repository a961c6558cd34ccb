"""``stream=true``: a job's answer as Server-Sent Events, in OpenAI's event shapes.

Used by ``POST /v1/images/generations`` (events ``image_generation.*``) through
:func:`api.generations.stream_answer`, which the edits endpoint can call with
``StreamOptions(kind="image_edit")`` (events ``image_edit.*``). What a streaming
client receives, in order:

1. The response head at once: ``200``, ``Content-Type: text/event-stream``,
   ``x-job-id`` and the other headers of a synchronous answer. Everything that
   refuses a request before its job is admitted and queued (400, 401, 402, 403,
   409, 413, 429, 503) is still an ordinary JSON error with its status code,
   as OpenAI answers a refused streaming request.
2. ``event: <kind>.partial_image`` for each partial image the upstream streams
   (OpenAI GPT image models with ``partial_images`` 1-3), relayed as it arrives
   (:mod:`shared.progress`): OpenAI's fields (``b64_json``, ``created_at``,
   ``size``, ``quality``, ``background``, ``output_format``,
   ``partial_image_index``). Other models send none. A partial lost on the way
   is not resent (fire-and-forget); the completed image always comes.
3. When the job succeeds, one ``event: <kind>.completed`` per image, in order,
   each with the image as ``b64_json`` (whatever ``response_format`` says: OpenAI's
   stream events always carry base64), ``created_at`` (when the job ended), and
   ``size``, ``quality``, ``background``, ``output_format``, ``usage``. The values
   are the upstream's where it reported them; where OpenAI's schema allows only
   some values, another is sent as ``auto`` (a 512x512 image has ``size: "auto"``;
   a model that reports no quality has ``quality: "auto"``), and a model that
   reports no usage has zero ``usage`` (the gateway bills by its own price list,
   not by tokens).
4. When the job fails, times out or is canceled: one ``event: error`` whose data
   is ``{"type": "error", "error": {...}}``, the ``error`` object being exactly the
   body of the JSON error the synchronous request would have got (``message``,
   ``type``, ``param``, ``code`` ...) and always the ``job_id`` -- the OpenAI SDKs raise an
   ``APIError`` from it; ``status_code`` is the HTTP status that answer would
   have had. The budget is the synchronous one
   (``IMAGEGATE_SYNC_BUDGET_SECONDS``); what would have been a 504 is an
   ``error`` event with ``type: "timeout_error"``, ``code: "timeout"`` and the
   job id; the status line, sent long before, stays ``200``.
5. ``: keep-alive`` comment lines every ``IMAGEGATE_STREAM_KEEPALIVE_SECONDS``
   (15) while no event is due, so proxies that cut idle connections after
   60-100 s do not cut a long generation. SSE clients ignore comments.

The stream then ends. Billing is that of a synchronous request: the job was
charged at admission and is settled when it ends, whether or not the client is
still reading. A client that goes away mid-stream costs the job nothing: it runs
on, is billed once, and can be fetched with ``GET /v1/images/generations/{id}``.

Cost to the web process: a streaming request is a parked greenlet, woken by the
process's one notification connection (:class:`api.waiter.CompletionHub`) for
its job's end or partials, or by its keep-alive timer; like a waiting
synchronous request it holds no Redis connection and no thread of its own.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from flask import Response

from api.services import Services
from api.waiter import Waiter
from shared.errors import GatewayError, ServerError
from shared.jobs import Job
from shared.progress import PartialImage
from shared.results import Base64Image, dumps

log = logging.getLogger(__name__)

KINDS = ("image_generation", "image_edit")

# The values OpenAI's stream-event schema allows; another value is sent as "auto".
_SIZES = frozenset({"1024x1024", "1024x1536", "1536x1024", "auto"})
_QUALITIES = frozenset({"low", "medium", "high", "auto"})
_BACKGROUNDS = frozenset({"transparent", "opaque", "auto"})
_FORMATS = frozenset({"png", "webp", "jpeg"})
_ZERO_USAGE = {
    "total_tokens": 0,
    "input_tokens": 0,
    "output_tokens": 0,
    "input_tokens_details": {"text_tokens": 0, "image_tokens": 0},
}

KEEP_ALIVE = b": keep-alive\n\n"

Settle = Callable[[Job | None, str], Job]
"""(the record a wait ended with, job id) -> the succeeded job, or raises the
GatewayError the synchronous answer would be (api.generations)."""


def stream_response(
    waiter: Waiter,
    deadline: float,
    svc: Services,
    settle: Settle,
    *,
    kind: str = "image_generation",
    headers: dict[str, str] | None = None,
    read_first: bool = True,
) -> Response:
    """The SSE response streaming ``waiter``'s job until it ends or ``deadline``
    (unix time, this host's clock) passes; closes ``waiter`` when the stream ends,
    also when the client goes away.

    ``waiter`` should come from ``hub.expect(job_id, progress=True)`` before the
    job was enqueued; ``read_first=False`` then skips the first read, as for a
    synchronous wait.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown stream kind {kind!r}")
    events = _EventStream(_events(waiter, deadline, svc, settle, kind, read_first), waiter)
    response = Response(events, status=200, mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    response.headers["x-job-id"] = waiter.job_id
    response.headers.update(headers or {})
    return response


class _EventStream:
    """The response body: the events, and a ``close`` the WSGI server calls when the
    response ends (done, or the client went away), also if it never began."""

    def __init__(self, events: Iterator[bytes], waiter: Waiter) -> None:
        self._events = events
        self._waiter = waiter

    def __iter__(self) -> Iterator[bytes]:
        return self._events

    def close(self) -> None:
        self._events.close()
        self._waiter.close()


def _events(
    waiter: Waiter, deadline: float, svc: Services, settle: Settle, kind: str, read_first: bool
) -> Iterator[bytes]:
    keepalive = svc.settings.stream_keepalive_seconds
    try:
        done = yield from _until_done(waiter, deadline, keepalive, kind, read_first)
        yield from _partials(waiter, kind)
        try:
            job = settle(done, waiter.job_id)
        except GatewayError as error:
            error.extra.setdefault("job_id", waiter.job_id)  # no header to carry it now
            yield error_event(error)
            return
        for index, image in enumerate(job.images):
            try:
                data = svc.storage.get(image.key)
            except Exception:  # noqa: BLE001 - storage failing after success: say so
                log.exception("job %s: could not read image %s to stream it", job.id, image.key)
                yield error_event(
                    ServerError(
                        f"The gateway could not read image {index} of job {job.id}; fetch it "
                        f"with GET /v1/images/generations/{job.id}.",
                        extra={"job_id": job.id},
                    )
                )
                return
            yield completed_event(job, index, data, kind)
    finally:
        waiter.close()


def _until_done(
    waiter: Waiter, deadline: float, keepalive: float, kind: str, read_first: bool
) -> Iterator[bytes]:
    """Relay partials and keep-alives until the job is terminal (its record) or the
    deadline passes (the last record read, or None)."""
    job: Job | None = None
    read = read_first or not waiter.notices
    poll = waiter.poll_interval
    next_beat = time.monotonic() + keepalive
    next_read = time.monotonic() + poll
    while True:
        for event in _partials(waiter, kind):
            yield event
            next_beat = time.monotonic() + keepalive
        if read or time.monotonic() >= next_read:
            next_read = time.monotonic() + poll
            try:
                job = waiter.read()
            except redis.RedisError as exc:  # the job survives a Redis restart: keep waiting
                log.warning("streaming job %s: Redis unavailable (%s)", waiter.job_id, exc)
            else:
                if job is None or job.terminal:
                    return job
        remaining = deadline - time.time()
        if remaining <= 0:
            return job
        now = time.monotonic()
        if now >= next_beat:
            yield KEEP_ALIVE
            next_beat = now + keepalive
        read = waiter.pause(min(remaining, next_beat - now, next_read - now))


def _partials(waiter: Waiter, kind: str) -> Iterator[bytes]:
    for partial in waiter.take_partials():
        yield partial_event(partial, kind)


def sse(event: str, data: bytes) -> bytes:
    """One Server-Sent Event; ``data`` is one line of JSON."""
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


def partial_event(partial: PartialImage, kind: str = "image_generation") -> bytes:
    """``<kind>.partial_image`` with the upstream's fields (missing ones as ``auto``)."""
    body = {
        "type": f"{kind}.partial_image",
        "b64_json": partial.b64_json,
        "created_at": partial.created_at or int(time.time()),
        "size": _allowed(partial.size, _SIZES),
        "quality": _allowed(partial.quality, _QUALITIES),
        "background": _allowed(partial.background, _BACKGROUNDS),
        "output_format": partial.output_format if partial.output_format in _FORMATS else "png",
        "partial_image_index": partial.partial_image_index,
    }
    return sse(body["type"], json.dumps(body, separators=(",", ":")).encode())


def completed_event(job: Job, index: int, data: bytes, kind: str = "image_generation") -> bytes:
    """``<kind>.completed`` for image ``index`` of a succeeded job, its bytes ``data``."""
    image = job.images[index]
    reported: dict[str, Any] = job.images[0].reported or {}
    fmt = image.content_type.rsplit("/", 1)[-1]
    usage = reported.get("usage")
    body: dict[str, Any] = {
        "type": f"{kind}.completed",
        "b64_json": Base64Image(data),
        "created_at": int(job.finished or time.time()),
        "size": _allowed(f"{image.width}x{image.height}", _SIZES),
        "quality": _allowed(reported.get("quality"), _QUALITIES),
        "background": _allowed(reported.get("background"), _BACKGROUNDS),
        "output_format": fmt if fmt in _FORMATS else "png",
        "usage": usage if isinstance(usage, dict) else _ZERO_USAGE,
    }
    if image.revised_prompt:
        body["revised_prompt"] = image.revised_prompt
    return sse(body["type"], dumps(body))


def error_event(error: GatewayError) -> bytes:
    """``error``: the JSON error body the synchronous request would have got, typed."""
    body = {"type": "error", **error.envelope(), "status_code": error.status}
    return sse("error", dumps(body))


def _allowed(value: Any, allowed: frozenset[str]) -> str:
    return value if isinstance(value, str) and value in allowed else "auto"
