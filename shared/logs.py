"""Logging of every process: text for people at a terminal, or one JSON object per line.

``IMAGEGATE_LOG_FORMAT=json`` makes the web (gunicorn's own lines included), the workers
and the CLI write one JSON object per line (python-json-logger's ``JsonFormatter``):
``time``, ``level``, ``logger``, ``message``, ``role``, and where they apply
``request_id``, ``key_id``, ``job_id``, ``model``, ``family``, ``attempt``,
``outcome`` and ``duration_s``. The fields of the request or job a line is about come
from :func:`log_context` (a ``contextvars`` context: per thread, per greenlet), so a line
needs no arguments to carry them.

Nothing secret goes out (:class:`Redact`, on every line of both formats): bearer tokens,
our API keys (``ig-...``), upstream key shapes (``sk-...``, ``r8_...``), webhook secrets,
and the query of every URL (a signed file URL's signature is a credential) are cut.
Prompts are not logged; with ``IMAGEGATE_LOG_PROMPTS`` the worker's "running" line
(INFO then, DEBUG otherwise) carries the job's prompt as a field.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import sys
from collections.abc import Iterator
from types import MappingProxyType
from typing import Any

from pythonjsonlogger.json import JsonFormatter

CONTEXT_FIELDS = ("request_id", "key_id", "job_id", "model", "family", "attempt")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_context: contextvars.ContextVar[MappingProxyType[str, Any]] = contextvars.ContextVar(
    "imagegate_log_context", default=MappingProxyType({})
)


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Lines logged inside carry these fields (empty values are left out)."""
    token = bind(**fields)
    try:
        yield
    finally:
        _context.reset(token)


def bind(**fields: Any) -> contextvars.Token:
    """Add fields to the current context; undo with ``unbind(token)`` (the web's request
    hooks, which have no ``with`` block around the request)."""
    kept = {k: v for k, v in fields.items() if v is not None and v != ""}
    return _context.set(MappingProxyType({**_context.get(), **kept}))


def unbind(token: contextvars.Token) -> None:
    _context.reset(token)


class ContextFilter(logging.Filter):
    """Puts the context's fields on each record (a field the call passed wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


_SECRETS = [
    (re.compile(r"(?i)\b(bearer|token)\s+[A-Za-z0-9._~+/=:-]{8,}"), r"\1 [redacted]"),
    (re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)[^\"',}]+"), r"\1[redacted]"),
    (re.compile(r"\big-[A-Za-z0-9_-]{8,}"), "ig-[redacted]"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), "sk-[redacted]"),
    (re.compile(r"\br8_[A-Za-z0-9]{8,}"), "r8_[redacted]"),
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=]{8,}"), "whsec_[redacted]"),
    (re.compile(r"((?:https?|s3)://[^\s?#\"'<>]+)\?[^\s#\"'<>]*"), r"\1?[query]"),
]


def redact(text: str) -> str:
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class Redact(logging.Filter):
    """Cuts credentials and URL queries out of the message (arguments merged in first)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        return True


def json_formatter(role: str = "") -> logging.Formatter:
    return JsonFormatter(
        "{asctime}{levelname}{name}{message}",
        style="{",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        static_fields={"role": role} if role else None,
    )


def formatter(log_format: str, role: str = "") -> logging.Formatter:
    return json_formatter(role) if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def handler(log_format: str, role: str = "", stream: Any = None) -> logging.Handler:
    out = logging.StreamHandler(stream or sys.stderr)
    out.setFormatter(formatter(log_format, role))
    out.addFilter(ContextFilter())
    out.addFilter(Redact())
    return out


def configure(settings: Any, role: str, *, replace: bool = False) -> None:
    """The root logger of a process: our handler, at ``IMAGEGATE_LOG_LEVEL``.

    Leaves a root that already has handlers alone unless ``replace`` (a test runner's
    capture, like ``logging.basicConfig`` does)."""
    root = logging.getLogger()
    if root.handlers and not replace:
        return
    root.handlers[:] = [handler(settings.log_format, role)]
    root.setLevel(settings.log_level)
    if settings.log_format == "json":
        logging.captureWarnings(True)  # warnings become lines too, not bare stderr text


# -- gunicorn ---------------------------------------------------------------------------------
ACCESS_JSON_FORMAT = '"%(m)s %(U)s %(H)s" %(s)s'  # the message; the fields come apart


class AccessFields(logging.Filter):
    """gunicorn's access line as fields: method, path (no query), status, bytes,
    duration and request id, read from the atoms gunicorn passes as the line's args."""

    ATOMS = {
        "method": "m",
        "path": "U",
        "status": "s",
        "bytes": "b",
        "duration_ms": "M",
        "request_id": "{x-request-id}o",
    }

    def filter(self, record: logging.LogRecord) -> bool:
        atoms = record.args
        if isinstance(atoms, dict) or hasattr(atoms, "__getitem__"):
            for field, atom in self.ATOMS.items():
                try:
                    value = atoms[atom]  # type: ignore[index]
                except (KeyError, TypeError, IndexError):
                    continue
                if value not in (None, "-"):
                    setattr(record, field, value)
        return True


def gunicorn_logconfig(level: str) -> dict[str, Any]:
    """gunicorn's ``logconfig_dict`` for JSON lines (its own error and access logs and
    the app's loggers, all to stdout)."""
    filters = ["context", "redact"]
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "context": {"()": "shared.logs.ContextFilter"},
            "redact": {"()": "shared.logs.Redact"},
            "access": {"()": "shared.logs.AccessFields"},
        },
        "formatters": {"json": {"()": "shared.logs.json_formatter", "role": "web"}},
        "handlers": {
            "json": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "filters": filters,
                "stream": "ext://sys.stdout",
            },
            "access": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "filters": ["access", *filters],
                "stream": "ext://sys.stdout",
            },
        },
        "root": {"level": level, "handlers": ["json"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": ["json"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["access"], "propagate": False},
        },
    }
