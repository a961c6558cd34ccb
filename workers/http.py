"""The one HTTP helper every adapter uses to talk to its upstream.

It owns what adapters must not each reinvent:

* **Deadlines.** Every call is bounded by the job's deadline: each attempt's
  read timeout is the time left, and no retry starts that could not finish in
  time. Past the deadline it raises :class:`shared.errors.DeadlineExceeded`.
* **Retries** (tenacity) on connection faults, timeouts and 408/429/5xx, with
  exponential backoff and jitter, honouring ``Retry-After`` (seconds or an
  HTTP date) when the upstream sends one.
* **Error translation**, once: the upstream's final answer becomes an
  :class:`InvalidRequest` (the upstream rejected the request's content, e.g.
  moderation) or an :class:`UpstreamError` (everything that is not the
  client's fault), carrying the upstream's request id.
* **Wall-clock limits**: a socket timeout bounds each read, not the exchange,
  so a peer trickling its head or body a byte at a time would hold a thread
  for hours. :func:`wall_clock` arms one watchdog thread that shuts the
  exchange's sockets down at its limit (the attempt's timeout or the job's
  deadline, whichever is first); the blocked read then fails at once and the
  exchange ends as a :class:`requests.ReadTimeout`. Sessions take part once
  :func:`watch` has hooked their connection pools; :class:`UpstreamHTTP` does
  that for the session it is given, so every adapter, download and reference
  image fetch is covered, and webhook deliveries use the same two functions.
* **Bounded bytes**: answers and downloads are streamed with a size cap, so an
  endless body cannot fill a worker's memory.
* **Guarded downloads**: result files and reference images are fetched through
  ``fetch_session`` (SSRF-guarded by :mod:`shared.netguard`), and a redirect is
  followed only as a new URL the guard checks again, at most
  :data:`MAX_REDIRECTS` times. Calls to URLs an upstream's answer named
  (polling URLs) take ``guarded=True`` and go the same way.
* **One session per thread**: requests sessions are not thread-safe, so a
  fan-out thread calls through :meth:`UpstreamHTTP.own_sessions`.

Adapters pass a small ``ErrorParser`` that pulls (message, code) out of their
upstream's error body. Whatever the upstream said is stripped of the credential
the gateway sent it before it goes anywhere (client, job record, log): real
providers echo keys in their errors ("Incorrect API key provided: sk-...").
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import email.utils
import heapq
import itertools
import json
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from shared import metrics, tracing
from shared.errors import (
    DeadlineExceeded,
    InvalidRequest,
    UpstreamError,
    content_policy_violation,
)
from shared.netguard import UnsafeDestination, guard_policy, safe_session


@dataclass(frozen=True)
class UpstreamFault:
    """What an adapter's error parser reads out of an upstream error body."""

    message: str
    code: str | None = None
    param: str | None = None
    moderated: bool = False  # the upstream refused the content (prompt or output)


# Error codes by which OpenAI-style upstreams say "moderation refused this".
MODERATION_CODES = frozenset({"content_policy_violation", "moderation_blocked", "content_filter"})


ErrorParser = Callable[[requests.Response], UpstreamFault]

RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 3  # hops a download follows, each through the guard
CONNECT_TIMEOUT = 5.0
# A JSON answer may carry several base64 images (Seedream: up to 15 at 16 MP).
MAX_RESPONSE_BYTES = 512 * 1024 * 1024
_MIN_USEFUL_SECONDS = 0.05


# Request headers that carry an upstream credential, and what replaces it in text.
CREDENTIAL_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "x-key", "x-api-key", "api-key", "x-goog-api-key"}
)
REDACTED = "[redacted]"
_MIN_SECRET_LENGTH = 8  # shorter fragments ("Bearer", "Key") are not secrets


def credentials_sent(headers: Mapping[str, str] | None) -> list[str]:
    """The secrets in a request's credential headers, longest first.

    ``Authorization: Bearer <key>`` yields the key (and the whole value); a
    fal-style ``Key <id>:<secret>`` also yields the id and the secret, since an
    upstream may echo either part.
    """
    found: set[str] = set()
    for name, value in (headers or {}).items():
        if name.lower() not in CREDENTIAL_HEADERS or not isinstance(value, str):
            continue
        value = value.strip()
        _, _, token = value.partition(" ")
        for candidate in (value, token.strip(), *token.strip().split(":")):
            if len(candidate) >= _MIN_SECRET_LENGTH:
                found.add(candidate)
    return sorted(found, key=len, reverse=True)


def redact(text: str, secrets: list[str]) -> str:
    """``text`` with every secret of ``secrets`` replaced by ``[redacted]``."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def default_error_parser(response: requests.Response) -> UpstreamFault:
    """Understands OpenAI-style ``{"error": {...}}`` and FastAPI-style ``{"detail": ...}``."""
    try:
        body = response.json()
    except ValueError:
        return UpstreamFault(response.text[:300] or response.reason or "no details")
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            code = str(err["code"]) if err.get("code") else None
            return UpstreamFault(
                str(err.get("message") or err),
                code,
                str(err["param"]) if err.get("param") else None,
                moderated=code in MODERATION_CODES,
            )
        if isinstance(err, str):
            return UpstreamFault(err)
        detail = body.get("detail")
        if detail is not None:
            return UpstreamFault(detail if isinstance(detail, str) else json.dumps(detail)[:300])
    return UpstreamFault(json.dumps(body)[:300])


class RetryableStatus(Exception):
    """An upstream answer worth another attempt (kept for the final translation)."""

    def __init__(self, response: requests.Response) -> None:
        super().__init__(f"upstream answered {response.status_code}")
        self.response = response


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


# -- wall-clock limits -------------------------------------------------------------


class _Exchange:
    """The connections one :func:`wall_clock` block uses, and its limit (monotonic)."""

    __slots__ = ("closed", "expired", "conns", "limit", "lock")

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.conns: list[Any] = []
        self.expired = False
        self.closed = False
        self.lock = threading.Lock()

    def add(self, conn: Any) -> None:
        with self.lock:
            if not self.closed:
                self.conns.append(conn)
        if self.expired:  # a connection taken after the limit: cut it too
            self.cut()

    def cut(self) -> bool:
        """Shut down every socket of the exchange; False once it has ended."""
        with self.lock:
            if self.closed:
                return False
            self.expired = True
            for conn in self.conns:
                sock = getattr(conn, "sock", None)
                if sock is None:
                    continue
                with contextlib.suppress(OSError):
                    # The plain socket's shutdown, also for TLS sockets: it unblocks a
                    # read in another thread without touching the TLS state.
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
            return True

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.conns.clear()


class _Watchdog:
    """One daemon thread that cuts exchanges at their limit.

    An exchange past its limit is cut again every :data:`_RECUT_SECONDS` until
    it ends, so a connection still connecting at the limit is cut once it has
    a socket. Ended exchanges are dropped lazily (and the heap compacted when
    they are most of it).
    """

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Exchange]] = []
        self._ended = 0
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, exchange: _Exchange) -> None:
        with self._cond:
            heapq.heappush(self._heap, (exchange.limit, next(self._order), exchange))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="http-watchdog", daemon=True)
                self._thread.start()
            elif self._heap[0][2] is exchange:
                self._cond.notify()

    def ended(self, exchange: _Exchange) -> None:
        exchange.close()
        with self._cond:
            self._ended += 1
            if self._ended > 1024 and self._ended * 2 > len(self._heap):
                self._heap = [entry for entry in self._heap if not entry[2].closed]
                heapq.heapify(self._heap)
                self._ended = 0

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    wait = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(wait)
                _, _, exchange = heapq.heappop(self._heap)
            if exchange.cut():
                with self._cond:
                    again = time.monotonic() + _RECUT_SECONDS
                    heapq.heappush(self._heap, (again, next(self._order), exchange))
            else:
                with self._cond:
                    self._ended = max(0, self._ended - 1)


_RECUT_SECONDS = 0.25
_WATCHDOG = _Watchdog()
_CURRENT: contextvars.ContextVar[_Exchange | None] = contextvars.ContextVar(
    "imagegate_http_exchange", default=None
)


@contextlib.contextmanager
def wall_clock(deadline: float) -> Iterator[None]:
    """Bound the HTTP exchanges made inside the block by ``deadline`` (unix time).

    Connections of :func:`watch`-ed sessions used inside the block are shut
    down when the deadline passes, whatever the peer is doing (trickling a
    head, a body, or nothing). A cut block raises :class:`requests.ReadTimeout`,
    also when it ended without an exception: what a cut connection yields
    looks complete to http.client (a head cut short ends like an empty line,
    a body without a length like the end of the body) but is not. Other
    exceptions pass unchanged.
    """
    exchange = _Exchange(time.monotonic() + max(0.0, deadline - time.time()))
    token = _CURRENT.set(exchange)
    _WATCHDOG.arm(exchange)
    try:
        yield
    except (requests.RequestException, OSError, ValueError) as exc:
        if exchange.expired and not isinstance(exc, requests.Timeout):
            raise requests.ReadTimeout(_CUT) from exc
        raise
    finally:
        _CURRENT.reset(token)
        _WATCHDOG.ended(exchange)
    if exchange.expired:
        raise requests.ReadTimeout(_CUT)


_CUT = "the exchange reached its wall-clock limit"


class _WatchedPoolMixin:
    """Registers each connection a request uses with the current :func:`wall_clock`."""

    def _make_request(self, conn: Any, *args: Any, **kwargs: Any) -> Any:
        exchange = _CURRENT.get()
        if exchange is not None:
            exchange.add(conn)
        return super()._make_request(conn, *args, **kwargs)  # type: ignore[misc]


class _WatchedHTTPConnectionPool(_WatchedPoolMixin, HTTPConnectionPool):
    pass


class _WatchedHTTPSConnectionPool(_WatchedPoolMixin, HTTPSConnectionPool):
    pass


_WATCHED_POOLS = {"http": _WatchedHTTPConnectionPool, "https": _WatchedHTTPSConnectionPool}


def watch(session: requests.Session) -> requests.Session:
    """Let :func:`wall_clock` cut the connections of ``session`` (idempotent, cheap)."""
    for adapter in session.adapters.values():
        if not isinstance(adapter, HTTPAdapter):
            continue
        manager = adapter.poolmanager
        if manager.pool_classes_by_scheme is not _WATCHED_POOLS:
            manager.clear()  # pools made before were not watched
            manager.pool_classes_by_scheme = _WATCHED_POOLS
    return session


@dataclass
class UpstreamHTTP:
    session: requests.Session
    deadline: float
    provider: str
    max_retries: int = 3
    attempt_timeout: float = 90.0
    error_parser: ErrorParser = default_error_parser
    backoff_base: float = 0.5
    backoff_cap: float = 8.0
    # Downloads (result files, reference images) go through this session when set:
    # an SSRF-guarded one (shared.netguard.safe_session), since their URLs come from
    # an upstream's answer or a client, not from our configuration.
    fetch_session: requests.Session | None = None
    # Told of every request sent (method, URL without query, status or error, duration):
    # the job's timeline (shared.jobevents). Must not raise.
    on_attempt: Callable[[dict[str, Any]], None] | None = None
    # Labels of the exchanges in shared.metrics; ``metered=False``: not an upstream (a
    # client's reference image URL), not counted.
    model: str = ""
    metered: bool = True

    def __post_init__(self) -> None:
        watch(self.session)
        if self.fetch_session is not None:
            watch(self.fetch_session)

    def remaining(self) -> float:
        return self.deadline - time.time()

    def check_deadline(self) -> None:
        if self.remaining() <= _MIN_USEFUL_SECONDS:
            raise DeadlineExceeded(f"deadline reached while calling {self.provider}")

    # -- requests -----------------------------------------------------------------

    def request(
        self,
        method: str,
        url: str,
        *,
        json_body: Any = None,
        data: Any = None,
        files: Any = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        retry: bool = True,
        guarded: bool = False,
    ) -> requests.Response:
        """One logical call with retries; returns a 2xx response or raises.

        ``guarded``: the URL came from an upstream's answer (a polling URL), not
        from our configuration, so it goes through ``fetch_session`` and the
        SSRF guard like a result download; a refused address is a 502 ``unsafe_url``.
        """
        session = self._session(guarded)
        try:
            for attempt in self._retrying(retry=retry):
                with attempt:
                    return self._attempt(
                        session, method, url, json_body, data, files, headers, params
                    )
        except UnsafeDestination as exc:
            raise self._unsafe(exc) from exc
        except RetryableStatus as exc:
            raise self._translate(exc.response) from None
        except requests.Timeout as exc:
            if self.remaining() < 1.0:  # the read timeout was the deadline itself
                raise DeadlineExceeded(f"deadline reached waiting for {self.provider}") from exc
            raise UpstreamError(
                f"{self.provider} did not answer in time.", code="upstream_timeout"
            ) from exc
        except requests.RequestException as exc:
            self.check_deadline()
            raise UpstreamError(
                f"Could not reach {self.provider}: {type(exc).__name__}.",
                code="upstream_unreachable",
            ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def pause(self, seconds: float) -> None:
        """Sleep before the next poll, but never past the deadline."""
        self.check_deadline()
        time.sleep(max(0.0, min(seconds, self.remaining() - _MIN_USEFUL_SECONDS)))
        self.check_deadline()

    def best_effort(
        self, method: str, url: str, *, timeout: float = 3.0, guarded: bool = False, **kw: Any
    ) -> bool:
        """One attempt that ignores the deadline and swallows errors (e.g. cancel upstream).

        ``guarded`` as for :meth:`request`; a refused address is just a failure."""
        try:
            with wall_clock(time.time() + timeout):
                response = self._session(guarded).request(
                    method, url, timeout=timeout, allow_redirects=False, **kw
                )
            return response.ok
        except (requests.RequestException, UnsafeDestination):
            return False

    @contextlib.contextmanager
    def own_sessions(self) -> Iterator[UpstreamHTTP]:
        """This helper with sessions of its own, configured alike, closed at the end.

        requests sessions are not thread-safe: each thread of a fan-out
        (:func:`workers.fanout.fan_out`) calls through its own.
        """
        session = session_like(self.session)
        fetch = session_like(self.fetch_session) if self.fetch_session is not None else None
        try:
            yield dataclasses.replace(self, session=session, fetch_session=fetch)
        finally:
            session.close()
            if fetch is not None:
                fetch.close()

    def json(self, response: requests.Response) -> Any:
        """The response's JSON body, or an UpstreamError if it has none."""
        try:
            return response.json()
        except ValueError as exc:
            raise UpstreamError(
                f"{self.provider} returned a malformed JSON body.",
                code="upstream_malformed_response",
                upstream_request_id=request_id_of(response),
            ) from exc

    def download(
        self, url: str, *, max_bytes: int, headers: Mapping[str, str] | None = None
    ) -> tuple[bytes, str]:
        """GET a result file, streamed, bounded in size and by the deadline."""
        try:
            for attempt in self._retrying(retry=True):
                with attempt:
                    return self._download_once(url, max_bytes, headers)
        except RetryableStatus as exc:
            raise self._translate(exc.response, download=True) from None
        except requests.RequestException as exc:
            self.check_deadline()
            raise UpstreamError(
                f"Could not download the image from {self.provider}: {type(exc).__name__}.",
                code="upstream_download_failed",
            ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    # -- internals ------------------------------------------------------------------

    def _retrying(self, *, retry: bool) -> Retrying:
        return Retrying(
            stop=stop_after_attempt(1 + (self.max_retries if retry else 0)),
            wait=self._wait,
            retry=retry_if_exception(_is_retryable),
            sleep=self._sleep,
            reraise=True,
        )

    def _timeout(self) -> tuple[float, float]:
        self.check_deadline()
        read = min(self.attempt_timeout, self.remaining())
        return (min(CONNECT_TIMEOUT, read), read)

    def _attempt_limit(self) -> float:
        """When the current attempt must end (unix time): its timeout or the deadline."""
        return min(self.deadline, time.time() + self.attempt_timeout)

    def _session(self, guarded: bool) -> requests.Session:
        return (self.fetch_session or self.session) if guarded else self.session

    def _unsafe(self, exc: UnsafeDestination) -> UpstreamError:
        return UpstreamError(f"Refused to fetch {self.provider} URL: {exc}", code="unsafe_url")

    def _attempt(
        self, session, method, url, json_body, data, files, headers, params
    ) -> requests.Response:
        timeout = self._timeout()
        started = time.perf_counter()
        wall_started = time.time()
        status: int | None = None
        try:
            with tracing.span(
                f"upstream {method}",
                **{"http.request.method": method, "server.address": urlsplit(url).hostname,
                   "imagegate.family": self.provider},
            ) as span:  # fmt: skip
                response = self._exchange(
                    session, method, url, json_body, data, files, headers, params, timeout
                )
                status = response.status_code
                if span is not None:
                    span.set_attribute("http.response.status_code", status)
        except Exception as exc:
            self._tell(method, url, wall_started, error=type(exc).__name__)
            raise
        finally:
            if self.metered:
                metrics.UPSTREAM_REQUESTS.labels(
                    self.provider, self.model, metrics.status_class(status)
                ).inc()
                metrics.UPSTREAM_DURATION.labels(self.provider, self.model).observe(
                    time.perf_counter() - started
                )
        self._tell(method, url, wall_started, status=response.status_code)
        if response.status_code in RETRY_STATUSES:
            raise RetryableStatus(response)
        if not 200 <= response.status_code < 300:
            raise self._translate(response)
        return response

    def _exchange(
        self, session, method, url, json_body, data, files, headers, params, timeout
    ) -> requests.Response:
        with wall_clock(self._attempt_limit()):
            response = session.request(
                method,
                url,
                json=json_body,
                data=data,
                files=files,
                headers=dict(headers or {}),
                params=params,
                timeout=timeout,
                allow_redirects=False,
                stream=True,
            )
            self._read_body(response)
        return response

    def _tell(self, method: str, url: str, started: float, **outcome: Any) -> None:
        if self.on_attempt is None:
            return
        self.on_attempt(
            {
                "at": started,
                "method": method,
                "url": url.split("?", 1)[0][:200],
                **outcome,
                "duration_ms": int((time.time() - started) * 1000),
            }
        )

    def _read_body(self, response: requests.Response) -> None:
        """Read the whole body, bounded by the deadline and in size.

        requests' read timeout is per socket read, so an upstream that trickles
        a byte every few seconds would hold the worker far past the job's
        deadline; the caller's :func:`wall_clock` cuts the connection then.
        """
        chunks: list[bytes] = []
        total = 0
        try:
            for chunk in response.iter_content(chunk_size=64 * 1024):
                total += len(chunk)
                if total > MAX_RESPONSE_BYTES:
                    raise UpstreamError(
                        f"The response from {self.provider} is larger than "
                        f"{MAX_RESPONSE_BYTES} bytes.",
                        code="upstream_response_too_large",
                    )
                chunks.append(chunk)
                self.check_deadline()
        finally:
            response.close()
        response._content = b"".join(chunks)  # what .json() / .content then read
        response._content_consumed = True

    def _download_once(self, url: str, max_bytes: int, headers) -> tuple[bytes, str]:
        timeout = self._timeout()
        try:
            with wall_clock(self._attempt_limit()):
                return self._stream(url, max_bytes, headers, timeout)
        except UnsafeDestination as exc:
            raise self._unsafe(exc) from exc

    def _stream(
        self, url: str, max_bytes: int, headers, timeout: tuple[float, float]
    ) -> tuple[bytes, str]:
        """GET ``url`` through the fetch session, following at most
        :data:`MAX_REDIRECTS` redirects, each checked by that session's guard
        like the first URL (headers are not sent on to another host)."""
        session = self.fetch_session or self.session
        sent_headers = dict(headers or {})
        for _ in range(MAX_REDIRECTS + 1):
            with session.get(
                url, headers=sent_headers, timeout=timeout, stream=True, allow_redirects=False
            ) as response:
                location = response.headers.get("Location")
                if response.status_code in _REDIRECTS and location:
                    target = urljoin(url, location)
                    if urlsplit(target).netloc != urlsplit(url).netloc:
                        sent_headers = {}
                    url = target
                    continue
                return self._read_download(response, max_bytes)
        raise UpstreamError(
            f"The image from {self.provider} redirected more than {MAX_REDIRECTS} times.",
            code="upstream_too_many_redirects",
        )

    def _read_download(self, response: requests.Response, max_bytes: int) -> tuple[bytes, str]:
        if response.status_code in RETRY_STATUSES:
            raise RetryableStatus(response)
        if response.status_code != 200:
            raise self._translate(response, download=True)
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            raise UpstreamError(
                f"The image from {self.provider} is larger than {max_bytes} bytes.",
                code="upstream_image_too_large",
            )
        chunks: list[bytes] = []
        total = 0
        for chunk in response.iter_content(chunk_size=64 * 1024):
            total += len(chunk)
            if total > max_bytes:
                raise UpstreamError(
                    f"The image from {self.provider} is larger than {max_bytes} bytes.",
                    code="upstream_image_too_large",
                )
            chunks.append(chunk)
            self.check_deadline()
        return b"".join(chunks), response.headers.get("Content-Type", "")

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hinted = None
        if isinstance(exc, RetryableStatus):
            hinted = parse_retry_after(exc.response.headers.get("Retry-After"))
        backoff = min(self.backoff_cap, self.backoff_base * 2 ** (state.attempt_number - 1))
        delay = hinted if hinted is not None else backoff * (0.5 + random.random() / 2)
        if delay >= self.remaining() - _MIN_USEFUL_SECONDS:
            # Waiting would overrun the deadline: give up now with the last answer.
            raise exc if exc is not None else DeadlineExceeded("deadline reached")
        return delay

    def _sleep(self, seconds: float) -> None:
        if self.metered:
            metrics.UPSTREAM_RETRIES.labels(self.provider, self.model).inc()
        time.sleep(seconds)

    def _translate(self, response: requests.Response, *, download: bool = False) -> Exception:
        fault = self._redacted(self.error_parser(response), response)
        message, code = fault.message, fault.code
        status = response.status_code
        rid = request_id_of(response)
        what = "image download" if download else "request"
        if fault.moderated and not download:
            return content_policy_violation(
                f"{self.provider} refused the content: {message}", upstream_request_id=rid
            )
        if status in (400, 422) and not download:
            return InvalidRequest(
                f"{self.provider} rejected the request: {message}",
                param=fault.param,
                code=code or "upstream_rejected",
                headers={"x-upstream-request-id": rid} if rid else None,
            )
        if status in (401, 403) and not download:
            return UpstreamError(
                f"{self.provider} rejected the gateway's credentials ({status}).",
                code="upstream_auth_failed",
                upstream_request_id=rid,
            )
        if status == 429:
            return UpstreamError(
                f"{self.provider} is rate-limiting the gateway; try again later.",
                code="upstream_rate_limited",
                upstream_request_id=rid,
            )
        return UpstreamError(
            f"{self.provider} failed the {what} with HTTP {status}: {message}",
            code=code if code and not download else "upstream_error",
            upstream_request_id=rid,
        )

    @staticmethod
    def _redacted(fault: UpstreamFault, response: requests.Response) -> UpstreamFault:
        """``fault`` without the credentials the request sent (an upstream may echo them)."""
        sent = credentials_sent(response.request.headers if response.request else None)
        if not sent:
            return fault
        return dataclasses.replace(
            fault,
            message=redact(fault.message, sent),
            code=redact(fault.code, sent) if fault.code else fault.code,
            param=redact(fault.param, sent) if fault.param else fault.param,
        )


def session_like(session: requests.Session) -> requests.Session:
    """A new session configured like ``session``: an SSRF-guarded one under the same
    policy, else the same headers, proxies, TLS settings and connection pool sizes."""
    policy = guard_policy(session)
    if policy is not None:
        return safe_session(policy)
    copy = requests.Session()
    copy.headers.clear()
    copy.headers.update(session.headers)
    copy.trust_env = session.trust_env
    copy.verify = session.verify
    copy.cert = session.cert
    copy.proxies = dict(session.proxies)
    for prefix, adapter in session.adapters.items():
        if isinstance(adapter, HTTPAdapter):
            copy.mount(
                prefix,
                HTTPAdapter(
                    pool_connections=adapter._pool_connections,
                    pool_maxsize=adapter._pool_maxsize,
                    max_retries=adapter.max_retries,
                ),
            )
    return copy


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, (RetryableStatus, requests.ConnectionError, requests.Timeout))


def request_id_of(response: requests.Response) -> str | None:
    for name in ("x-request-id", "x-fal-request-id", "request-id", "x-amzn-requestid"):
        if value := response.headers.get(name):
            return value[:200]
    return None
