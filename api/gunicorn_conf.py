"""gunicorn settings for the web front-end.

gevent workers: a request that waits for its image is a parked greenlet, not
a thread, so each worker process holds up to ``worker_connections`` requests
at once for a few kB each (see docs/running/production.md, "Web server"). One process per core.

The values come from :class:`shared.settings.Settings` (``PORT``, ``IMAGEGATE_HOST``,
``IMAGEGATE_WEB_PROCESSES``, ``IMAGEGATE_WEB_CONNECTIONS``,
``IMAGEGATE_SYNC_BUDGET_SECONDS``), read here in the master: a setting or a
catalog that cannot be used (including a model's adapter ``options``, checked by
:func:`workers.adapters.validate_catalog` as the worker does) stops gunicorn
before it forks a worker.
"""

# gevent's patches first, in the master too: the catalog check below imports the adapters
# (requests, hence ssl), and ssl imported before the gevent worker patches it makes every
# TLS context a RecursionError (boto3's S3 client failed to build in the web). gunicorn's
# gevent worker patches again after the fork; patching twice is a no-op.
import sys  # noqa: I001
from pathlib import Path

from gevent import monkey

# In gunicorn's master (`gunicorn …` or `python -m gunicorn …`), not in a test that
# reads this file: patching a test runner's threads midway would break it.
_program = Path(sys.argv[0])
if "gunicorn" in (_program.name, _program.parent.name):
    monkey.patch_all()

import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import multiprocessing  # noqa: E402
import secrets  # noqa: E402

from gunicorn import util  # noqa: E402

from shared.catalog import CatalogError  # noqa: E402
from shared.memory_tuning import keep_large_buffers  # noqa: E402
from shared.settings import Settings, SettingsError  # noqa: E402
from workers.adapters import validate_catalog  # noqa: E402

keep_large_buffers()  # in the master: the web processes it forks inherit it

try:
    _settings = Settings.from_env()
    # Each model's adapter options, as the worker checks them at start: a broken entry
    # stops the deployment here rather than answering its requests with 500.
    validate_catalog(_settings.load_catalog())
except (SettingsError, CatalogError) as exc:
    sys.exit(f"imagegate: {exc}")  # the message, not a traceback of gunicorn's config loader
bind = f"{_settings.listen_host}:{_settings.listen_port}"
worker_class = "gevent"
workers = _settings.web_processes or multiprocessing.cpu_count()
worker_connections = _settings.web_connections
# A synchronous request may wait the whole budget; gunicorn's timeout is about
# a silent worker process, which gevent workers never are while waiting.
timeout = 30
graceful_timeout = int(_settings.sync_budget_seconds) + 5
keepalive = 5
accesslog = "-"
# The path without its query string: a signed file URL's signature is a credential
# (whoever has the URL has the image) and has no place in a log.
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(M)sms rid=%({x-request-id}o)s'
errorlog = "-"
if _settings.log_format == "json":  # one JSON object per line, gunicorn's own too
    from shared.logs import ACCESS_JSON_FORMAT, gunicorn_logconfig

    access_log_format = ACCESS_JSON_FORMAT
    logconfig_dict = gunicorn_logconfig(_settings.log_level)
    logging.captureWarnings(True)


_CODES = {414: "request_line_too_large", 431: "request_header_too_large"}


def _write_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's answer to a request it cannot parse, in the API's error envelope.

    A bad or oversized header, request line or chunk never reaches Flask; gunicorn
    answers it itself, by default with an HTML page. Clients of an OpenAI-compatible
    API expect ``{"error": {...}}`` whatever went wrong, and every response to carry
    ``x-request-id``.
    """
    error_type = "invalid_request_error" if status_int < 500 else "server_error"
    body = json.dumps(
        {
            "error": {
                "message": f"{reason}: {mesg}",
                "type": error_type,
                "param": None,
                "code": _CODES.get(status_int, "malformed_http_request"),
            }
        }
    ).encode("ascii")
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"x-request-id: req_{secrets.token_hex(12)}\r\n"
        "\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


# gunicorn's workers call util.write_error at the time of the error, so replacing it
# here (the config is loaded in the arbiter before it forks them) covers every worker.
util.write_error = _write_error


def post_fork(_server, _worker) -> None:
    """A new web process writes its metrics to the host's directory (shared/metrics.py),
    before it loads the app and counts anything."""
    from shared import metrics, tracing

    metrics.activate(_settings.metrics_dir)
    tracing.configure(_settings, "web")  # its exporter's thread belongs to this process


def post_worker_init(worker) -> None:
    """A web process has loaded the app: check that local storage is the directory the
    workers write to (:mod:`shared.storage_marker`; a failed boot stops the server), then
    keep its import-time objects out of full GCs."""
    from gunicorn.arbiter import Arbiter

    from shared.memory_tuning import freeze_startup_objects
    from shared.redis_client import connect
    from shared.storage_marker import StorageNotShared, check_local_storage

    client = connect(_settings.redis_url)
    try:
        # Redis away: wait (a failed boot would stop the server; a waiting worker is
        # restarted by the master's timeout until Redis is back).
        check_local_storage(_settings, client, role="web", wait_seconds=math.inf)
    except StorageNotShared as exc:
        worker.log.critical("imagegate: %s", exc)
        sys.exit(Arbiter.WORKER_BOOT_ERROR)  # the master stops: "Worker failed to boot"
    finally:
        client.close()
    freeze_startup_objects()


def on_starting(server) -> None:
    """Before any web process starts: run the SQL migrations once, when asked
    (``IMAGEGATE_DATABASE_MIGRATE``; shared/db.py), so the processes find the schema."""
    if _settings.database_migrate:
        from shared.db import ensure_schema

        ensure_schema(_settings.database_url, migrate=True)
