"""Keep Python's full garbage collections short in long-running processes.

A gateway process imports a lot (Flask, Celery, kombu, boto3, pydantic, the
catalog) and keeps all of it for its whole life. Python's full (generation 2)
collection walks every one of those objects each time: under load the
benchmark saw a worker pause ~40 ms (up to 48) four times in 15 s, stalling
every request of that process — most of the overhead scenario's p99.

:func:`freeze_startup_objects` collects once and moves everything alive into
the permanent generation (``gc.freeze``), so later full collections only walk
what requests allocate. It is called once a process is ready to serve: by
gunicorn after a web worker has loaded the app, by Celery when a worker is
ready. Objects created later are collected as usual.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def freeze_startup_objects() -> int:
    """Collect, then exempt every object alive now from future collections; returns how many."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.debug("gc: %d startup objects frozen", frozen)
    return frozen
