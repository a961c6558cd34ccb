"""Shared, greenlet/thread-safe state for the upstream simulators.

Every simulator app owns one :class:`SimState`: the fault-injection config
(:class:`SimConfig`, changeable at runtime through ``POST /_sim/config``), a
bounded log of the requests it received (``GET /_sim/requests``) and a bounded
in-memory store of the files it serves.

A plain :class:`threading.Lock` guards everything; under ``gevent`` (the CLI
calls ``gevent.monkey.patch_all()``) it becomes a greenlet lock. The lock is
only held for dictionary/list updates, never while sleeping or encoding.
"""

from __future__ import annotations

import math
import random
import re
import threading
import time
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

DEFAULT_MAX_REQUESTS = 1000
DEFAULT_MAX_FILES = 2000
DEFAULT_MAX_FAULT_TOKENS = 1000

# Per-request fault injection, named in the request itself (its ``X-Sim-Fault``
# header or its prompt, see ``simulators.base``):
# ``sim-fault=<status>x<times>[,retry-after=<seconds>]@<token>``. The first <times>
# requests that carry the same <token> fail with <status>; later ones do not. Only
# requests that name it are affected, so tests sharing a simulator cannot use up
# each other's failures (as they can with the global ``fail_next``).
FAULT_DIRECTIVE = re.compile(
    r"sim-fault=(?P<status>[45]\d\d)x(?P<times>\d{1,4})"
    r"(?:,retry-after=(?P<retry_after>\d{1,4}(?:\.\d{1,3})?))?@(?P<token>[\w-]{1,64})"
)


# Well-separated colours for simulated images, one per image index.
PALETTE: tuple[tuple[int, int, int], ...] = tuple(
    (
        int(127.5 + 127.5 * math.cos(2 * math.pi * k / 16)),
        int(127.5 + 127.5 * math.cos(2 * math.pi * (k / 16 + 1 / 3))),
        int(127.5 + 127.5 * math.cos(2 * math.pi * (k / 16 + 2 / 3))),
    )
    for k in range(16)
)


@dataclass
class SimConfig:
    """Fault-injection knobs shared by every simulated provider.

    ``latency``      seconds to sleep before answering a generation request.
    ``failure_rate`` probability (0..1) that a generation request fails.
    ``fail_status``  HTTP status of injected failures (default 500).
    ``retry_after``  if set, injected failures carry ``Retry-After: <seconds>``.
    ``fail_next``    the next N generation requests fail, whatever the rate.
    ``api_key``      the key clients must present; ``None`` accepts any key.
    ``drop_images``  answer with this many images fewer than asked (as when an
                     upstream's content filter drops some of a batch).
    ``result_ttl``   seconds a result URL stays downloadable (upstream URLs expire:
                     BFL ~10 min, Replicate 1 h, Ark 24 h); after it they answer 404.
    ``poll_steps``   for asynchronous protocols: how many status polls a task stays
                     pending/processing before it is ready (on top of ``latency``).
    ``trickle``      if > 0, every upstream response body (API answers and files) is
                     sent 16 bytes at a time with this many seconds between pieces,
                     as from an upstream whose connection stalls without closing.
    ``result_url_base`` if set, result URLs start with it instead of this simulator's
                     own URL, as from a compromised or spoofed upstream (OpenAI protocol).
    """

    latency: float = 0.0
    failure_rate: float = 0.0
    fail_status: int = 500
    retry_after: float | None = None
    fail_next: int = 0
    api_key: str | None = None
    drop_images: int = 0
    result_ttl: float = 600.0
    poll_steps: int = 1
    trickle: float = 0.0
    result_url_base: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def merged(self, changes: dict[str, Any]) -> SimConfig:
        """A validated copy with ``changes`` applied; raises ``ValueError``."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"Unknown config field(s): {', '.join(unknown)}")
        data = self.to_dict()
        data.update(changes)
        return SimConfig.validated(data)

    @staticmethod
    def validated(data: dict[str, Any]) -> SimConfig:
        def number(name: str, value: Any) -> float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"'{name}' must be a number")
            return float(value)

        def integer(name: str, value: Any) -> int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"'{name}' must be an integer")
            return value

        latency = number("latency", data["latency"])
        if latency < 0:
            raise ValueError("'latency' must be >= 0")
        failure_rate = number("failure_rate", data["failure_rate"])
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError("'failure_rate' must be between 0 and 1")
        fail_status = integer("fail_status", data["fail_status"])
        if not 400 <= fail_status <= 599:
            raise ValueError("'fail_status' must be an HTTP error status (400-599)")
        retry_after = data["retry_after"]
        if retry_after is not None:
            retry_after = number("retry_after", retry_after)
            if retry_after < 0:
                raise ValueError("'retry_after' must be >= 0")
        fail_next = integer("fail_next", data["fail_next"])
        if fail_next < 0:
            raise ValueError("'fail_next' must be >= 0")
        drop_images = integer("drop_images", data.get("drop_images", 0))
        if drop_images < 0:
            raise ValueError("'drop_images' must be >= 0")
        result_ttl = number("result_ttl", data.get("result_ttl", 600.0))
        if result_ttl <= 0:
            raise ValueError("'result_ttl' must be > 0")
        poll_steps = integer("poll_steps", data.get("poll_steps", 1))
        if poll_steps < 0:
            raise ValueError("'poll_steps' must be >= 0")
        trickle = number("trickle", data.get("trickle", 0.0))
        if trickle < 0:
            raise ValueError("'trickle' must be >= 0")
        api_key = data["api_key"]
        if api_key is not None and not isinstance(api_key, str):
            raise ValueError("'api_key' must be a string or null")
        result_url_base = data.get("result_url_base")
        if result_url_base is not None and not (
            isinstance(result_url_base, str) and result_url_base.endswith("/")
        ):
            raise ValueError("'result_url_base' must be a URL ending in '/' or null")
        return SimConfig(
            latency=latency,
            failure_rate=failure_rate,
            fail_status=fail_status,
            retry_after=retry_after,
            fail_next=fail_next,
            api_key=api_key or None,
            drop_images=drop_images,
            result_ttl=result_ttl,
            poll_steps=poll_steps,
            trickle=trickle,
            result_url_base=result_url_base,
        )


@dataclass(frozen=True)
class StoredFile:
    data: bytes
    content_type: str


class SimState:
    """Config, request log and file store of one simulator app."""

    def __init__(
        self,
        config: SimConfig,
        *,
        max_requests: int = DEFAULT_MAX_REQUESTS,
        max_files: int = DEFAULT_MAX_FILES,
    ) -> None:
        self._lock = threading.Lock()
        self._config = SimConfig.validated(config.to_dict())
        self._requests: deque[dict[str, Any]] = deque(maxlen=max_requests)
        self._files: OrderedDict[str, StoredFile] = OrderedDict()
        self._max_files = max_files
        self._random = random.Random()
        self._faults_used: OrderedDict[str, int] = OrderedDict()  # token -> failures so far

    # -- config -----------------------------------------------------------

    @property
    def config(self) -> SimConfig:
        with self._lock:
            return self._config

    def update_config(self, changes: dict[str, Any]) -> SimConfig:
        with self._lock:
            self._config = self._config.merged(changes)
            return self._config

    def should_fail(self) -> bool:
        """Decide (and consume ``fail_next``) whether this request fails."""
        with self._lock:
            cfg = self._config
            if cfg.fail_next > 0:
                self._config = SimConfig(**{**cfg.to_dict(), "fail_next": cfg.fail_next - 1})
                return True
            return cfg.failure_rate > 0 and self._random.random() < cfg.failure_rate

    def request_fault(self, text: str | None) -> SimConfig | None:
        """The config to fail this request with, if ``text`` names a fault still due.

        See :data:`FAULT_DIRECTIVE`. Counts one use of the fault's token when it fails.
        """
        match = FAULT_DIRECTIVE.search(text) if isinstance(text, str) else None
        if match is None:
            return None
        token = match["token"]
        with self._lock:
            used = self._faults_used.get(token, 0)
            if used >= int(match["times"]):
                return None
            self._faults_used[token] = used + 1
            self._faults_used.move_to_end(token)
            while len(self._faults_used) > DEFAULT_MAX_FAULT_TOKENS:
                self._faults_used.popitem(last=False)
            retry_after = match["retry_after"]
            return replace(
                self._config,
                fail_status=int(match["status"]),
                retry_after=float(retry_after) if retry_after is not None else None,
            )

    # -- request log --------------------------------------------------------

    def record_request(self, entry: dict[str, Any]) -> dict[str, Any]:
        entry.setdefault("time", time.time())
        with self._lock:
            self._requests.append(entry)
        return entry

    def set_request_status(self, entry: dict[str, Any], status: int) -> None:
        with self._lock:
            entry["status"] = status

    def requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(e) for e in self._requests]

    def clear_requests(self) -> int:
        with self._lock:
            n = len(self._requests)
            self._requests.clear()
            return n

    # -- file store ---------------------------------------------------------

    def put_file(self, name: str, data: bytes, content_type: str) -> None:
        with self._lock:
            self._files[name] = StoredFile(data, content_type)
            self._files.move_to_end(name)
            while len(self._files) > self._max_files:
                self._files.popitem(last=False)

    def get_file(self, name: str) -> StoredFile | None:
        with self._lock:
            return self._files.get(name)
