"""What every upstream simulator is made of: one :class:`Simulator` subclass per provider.

A provider's module defines its error answer (a :class:`SimError` subclass
whose ``response()`` renders the upstream's error body) and a
:class:`Simulator` subclass whose methods serve its endpoints (marked with
:func:`route`) and which keeps its state machine (tasks, predictions, ...) as attributes and
methods; ``create_app(config)`` is ``TheSimulator(config).app``. The base
gives each of them, the same way:

* the Flask app, with the simulator's :class:`~simulators.state.SimState` in
  ``app.config["SIM_STATE"]`` and the control endpoints of
  :mod:`simulators.control` (``/_sim/config``, ``/_sim/requests``,
  ``/_sim/reset`` -- which also calls :meth:`Simulator.reset` -- and
  ``/_sim/health``);
* a request id per request (:meth:`Simulator.new_request_id`, in ``g.request_id``),
  sent back in the :attr:`Simulator.request_id_header` of every answer;
* error handling: a raised :class:`SimError` is its own answer; a routing or
  HTTP error (404, 405, ...) goes through :meth:`Simulator.http_error`, which
  each provider shapes like its upstream;
* the request log (:meth:`Simulator.record`, :meth:`Simulator.answer`);
* injected faults (:meth:`Simulator.inject_fault`), in this order: a fault
  the request names itself, then ``fail_next``, then ``failure_rate``; and
  for a synchronous generation, :meth:`Simulator.admit` (latency, key, fault).

Per-request faults: a request names a fault with the directive
``sim-fault=<status>x<times>[,retry-after=<seconds>]@<token>`` (see
:data:`simulators.state.FAULT_DIRECTIVE`), either in an ``X-Sim-Fault`` header
or anywhere in its prompt (the prompt is what a test can set through the
gateway, which does not forward its clients' headers). The first ``<times>``
requests that carry the token fail with ``<status>``, rendered as the
provider's injected failure of that status; later ones go through. Nothing
else is affected, so tests that share one simulator cannot use up each
other's failures as they can with the global ``fail_next`` -- which keeps
working, as does ``failure_rate``.

Shared pieces of the answers: :func:`retry_after_headers`,
:data:`CONTENT_TYPES`, :func:`word` (whole-word prompt conventions such as
:data:`FORBIDDEN_WORD`), :func:`credential` (an ``Authorization`` header's
token), and the image encoders :func:`encode`, :func:`solid_image` and
:func:`tag_file` (real PNG/JPEG/WebP files of the asked size, one solid
colour from :data:`simulators.state.PALETTE`).
"""

from __future__ import annotations

import functools
import io
import re
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from typing import Any, ClassVar

from flask import Flask, Response, g, jsonify, request
from PIL import Image
from werkzeug.exceptions import HTTPException

from simulators.control import register_control, request_entry
from simulators.state import SimConfig, SimState

FAULT_HEADER = "X-Sim-Fault"

CONTENT_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def word(text: str) -> re.Pattern[str]:
    """``text`` as a whole word, any case: how prompts name a simulated outcome."""
    return re.compile(rf"\b{re.escape(text)}\b", re.IGNORECASE)


FORBIDDEN_WORD = word("forbidden")  # every simulator's moderation trigger


class SimError(Exception):
    """An upstream's error answer: a status, extra headers, and a provider-shaped body.

    Subclasses set :attr:`status` and :attr:`headers` and implement :meth:`body`
    (or override :meth:`response` for a body that is not JSON).
    """

    status: int = 500
    headers: dict[str, str]

    def body(self) -> Any:
        raise NotImplementedError

    def response(self) -> Response:
        resp = jsonify(self.body())
        resp.status_code = self.status
        for name, value in self.headers.items():
            resp.headers[name] = value
        return resp


def retry_after_headers(config: SimConfig) -> dict[str, str]:
    """``{"Retry-After": ...}`` when the config sets ``retry_after`` (whole seconds as ints)."""
    if config.retry_after is None:
        return {}
    seconds = config.retry_after
    return {"Retry-After": str(int(seconds)) if float(seconds).is_integer() else str(seconds)}


def credential(schemes: tuple[str, ...] = ("bearer",)) -> str | None:
    """The token of the ``Authorization`` header if its scheme is one of ``schemes``."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() not in schemes or not token:
        return None
    return token


# -- images ------------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, quality: int = 85, **options: Any) -> bytes:
    """``image`` as a ``png``, ``jpeg`` (or ``jpg``) or ``webp`` file, quickly."""
    buf = io.BytesIO()
    if fmt == "png":
        image.save(buf, "PNG", compress_level=1, **options)
    elif fmt in ("jpeg", "jpg"):
        image.save(buf, "JPEG", quality=quality, **options)
    else:
        image.save(buf, "WEBP", quality=quality, method=0, **options)
    return buf.getvalue()


@functools.lru_cache(maxsize=256)
def solid_image(
    width: int, height: int, fmt: str, rgb: tuple[int, int, int], quality: int = 85
) -> bytes:
    """A ``width`` x ``height`` file of one colour (cached: the same answer costs nothing)."""
    return encode(Image.new("RGB", (width, height), rgb), fmt, quality)


def tag_file(data: bytes, fmt: str, file_id: str) -> bytes:
    """``data`` with ``file_id`` embedded as a comment, so every file's bytes are unique.

    PNG: a ``tEXt`` chunk after the IHDR chunk; JPEG: a COM segment after SOI;
    other formats are returned unchanged.
    """
    text = f"imagegate-simulator {file_id}".encode()
    if fmt == "png":
        # signature (8) + IHDR chunk (4 len + 4 type + 13 data + 4 crc) = 33 bytes
        chunk_data = b"Comment\x00" + text
        crc = zlib.crc32(b"tEXt" + chunk_data) & 0xFFFFFFFF
        chunk = struct.pack(">I", len(chunk_data)) + b"tEXt" + chunk_data + struct.pack(">I", crc)
        return data[:33] + chunk + data[33:]
    if fmt in ("jpeg", "jpg"):
        return data[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + data[2:]
    return data


# -- the base class ----------------------------------------------------------------------

_ROUTES = "_simulator_routes"


def route(method: str, rule: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Make a :class:`Simulator` method the view of ``method rule`` (Flask's rule syntax)."""

    def mark(view: Callable[..., Any]) -> Callable[..., Any]:
        view.__dict__.setdefault(_ROUTES, []).append((method, rule))
        return view

    return mark


class Simulator:
    """One simulated upstream: a Flask app, its state, and the shared plumbing.

    Subclasses set :attr:`provider`, mark their endpoints' methods with
    :func:`route`, implement :meth:`check_auth`, :meth:`failure` (the
    upstream's answer to an injected fault of a given status) and
    :meth:`http_error`, and may override :meth:`new_request_id`,
    :meth:`add_headers` and :meth:`reset`.
    """

    provider: ClassVar[str]
    request_id_header: ClassVar[str | None] = "x-request-id"  # None: the upstream sends none
    auth_header: ClassVar[str] = "Authorization"  # left out of the request log
    auth_logged_as: ClassVar[str] = "auth_present"  # whether it was sent, in the log

    def __init__(self, config: SimConfig | None = None) -> None:
        self.state = SimState(config or SimConfig())
        self.initial_config = self.state.config
        self.lock = threading.Lock()  # guards the provider's own state (tasks, ...)
        app = Flask(type(self).__module__)
        app.config["SIM_STATE"] = self.state
        app.json.sort_keys = False  # type: ignore[attr-defined]
        app.before_request(self._before_request)
        app.after_request(self._after_request)
        app.register_error_handler(SimError, lambda err: err.response())
        app.register_error_handler(HTTPException, self.http_error)
        self.app = app
        for name in dir(type(self)):
            for method, rule in getattr(getattr(type(self), name), _ROUTES, ()):
                app.add_url_rule(rule, name, getattr(self, name), methods=[method])
        register_control(app, self.state, self.initial_config, self.provider, on_reset=self.reset)

    # -- what providers define --------------------------------------------------------

    def failure(self, config: SimConfig) -> SimError:
        """The answer to an injected fault of ``config.fail_status`` (``retry_after`` too)."""
        raise NotImplementedError

    def http_error(self, err: HTTPException) -> Response:
        """The answer to a routing or HTTP error (unknown path, wrong method, ...)."""
        raise NotImplementedError

    def check_auth(self, config: SimConfig) -> None:
        """Raise the upstream's answer to a missing or wrong key (``config.api_key``)."""
        raise NotImplementedError

    def new_request_id(self) -> str:
        return uuid.uuid4().hex

    def add_headers(self, resp: Response) -> None:
        """Headers every answer carries besides the request id."""

    def reset(self) -> None:
        """What ``POST /_sim/reset`` forgets besides the config and the request log."""

    # -- shared plumbing --------------------------------------------------------------

    def _before_request(self) -> None:
        g.request_id = self.new_request_id()

    def _after_request(self, resp: Response) -> Response:
        if self.request_id_header is not None:
            resp.headers[self.request_id_header] = g.get("request_id") or self.new_request_id()
        self.add_headers(resp)
        return resp

    def record(self, **fields: Any) -> dict[str, Any]:
        """Log the current request (``fields`` add details such as ``json``); returns the entry."""
        entry = request_entry(
            g.request_id, auth_header=self.auth_header, present_as=self.auth_logged_as, **fields
        )
        return self.state.record_request(entry)

    def answer(self, entry: dict[str, Any], produce: Callable[[], Response]) -> Response:
        """``produce()``, or the error it raised, with its status written into ``entry``."""
        try:
            resp = produce()
        except SimError as err:
            resp = err.response()
        self.state.set_request_status(entry, resp.status_code)
        return resp

    def take_fault(self, prompt: Any = None) -> SimConfig | None:
        """The config to fail this request with, or None (consumes what it uses).

        A fault named in the ``X-Sim-Fault`` header or in ``prompt`` comes
        first; then ``fail_next``; then ``failure_rate``.
        """
        named = request.headers.get(FAULT_HEADER)
        fault = self.state.request_fault(named) if named else None
        if fault is None and isinstance(prompt, str):
            fault = self.state.request_fault(prompt)
        if fault is not None:
            return fault
        return self.state.config if self.state.should_fail() else None

    def inject_fault(self, prompt: Any = None) -> None:
        """Raise the provider's injected failure if this request is to fail."""
        fault = self.take_fault(prompt)
        if fault is not None:
            raise self.failure(fault)

    def admit(self, prompt: Any = None) -> SimConfig:
        """What a synchronous generation goes through first; returns the config it read.

        Sleep ``latency``, check the key, inject a fault -- in that order, so a
        request with a bad key uses up neither ``fail_next`` nor a named fault.
        """
        config = self.state.config
        if config.latency > 0:
            time.sleep(config.latency)
        self.check_auth(config)
        self.inject_fault(prompt)
        return config

    @classmethod
    def create_app(cls, config: SimConfig | None = None) -> Flask:
        return cls(config).app
