"""Fan-out for upstreams that make one image per task (BFL, Stability, some Replicate models).

``n > 1`` becomes n upstream tasks running concurrently. What succeeded is
returned; images that failed are simply missing, and the job's settlement
refunds them (the client is never charged for an image it did not get). If
none succeeded, the first failure is raised, so the job ends with the
upstream's own error.

requests sessions are not thread-safe, so each image made on a thread of its
own gets the job's :class:`UpstreamHTTP` with sessions of its own
(:meth:`UpstreamHTTP.own_sessions`); a single image runs on the caller's thread
with the job's sessions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from shared.errors import DeadlineExceeded
from workers.adapters.base import GeneratedImage
from workers.http import UpstreamHTTP

log = logging.getLogger(__name__)

MAX_PARALLEL = 8


def fan_out(
    n: int, http: UpstreamHTTP, make_one: Callable[[int, UpstreamHTTP], GeneratedImage]
) -> list[GeneratedImage]:
    """``make_one(index, http)`` for each of the n images, concurrently."""
    if n == 1:
        return [make_one(0, http)]

    def on_its_own(index: int) -> GeneratedImage:
        with http.own_sessions() as own:
            return make_one(index, own)

    results: list[GeneratedImage | None] = [None] * n
    errors: list[BaseException] = []
    with ThreadPoolExecutor(max_workers=min(n, MAX_PARALLEL), thread_name_prefix="fanout") as pool:
        futures = {pool.submit(on_its_own, i): i for i in range(n)}
        for future, index in futures.items():
            try:
                results[index] = future.result()
            except Exception as exc:  # noqa: BLE001 - kept and re-raised below if nothing worked
                errors.append(exc)
                log.warning("image %d of %d failed: %s", index + 1, n, exc)
    images = [r for r in results if r is not None]
    if not images:
        # A deadline beats other errors: the job is timed out, not failed.
        raise next((e for e in errors if isinstance(e, DeadlineExceeded)), errors[0])
    return images
