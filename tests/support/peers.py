"""Hostile HTTP peers on loopback, written on raw sockets so they can misbehave.

:class:`SlowPeer` reads each request (headers and a ``Content-Length`` body),
then answers in one of these ways, chosen by ``mode``:

* ``"trickle_body"``: ``200`` with ``Content-Length: <declared>``, then
  ``piece`` bytes of the body every ``interval`` seconds;
* ``"trickle_headers"``: the status line, then a header one byte every
  ``interval`` seconds, never finishing the head;
* ``"huge_body"``: ``200`` with ``Content-Length: <declared>``, then the body
  as fast as the reader takes it;
* ``"ok"``: ``204`` at once;
* ``"error"``: ``500`` at once;
* ``"answer"``: the status line ``answer`` with the headers ``answer_headers``
  and an empty body, at once (e.g. ``"503 Service Unavailable"`` with a
  ``Retry-After``, or ``"410 Gone"``);
* ``"redirect"``: ``302`` to ``location``.

It records every request it read (``requests``: the request head and body;
``arrived``: when each was read, on :func:`time.monotonic`) and, per
connection, how many body bytes it managed to send (``sent``), so a
test can tell whether the other side stopped reading, and the most
connections it held open at once (``max_open``).
"""

from __future__ import annotations

import select
import socket
import threading
import time
from dataclasses import dataclass, field

_CHUNK = b"\0" * (256 * 1024)


@dataclass
class SlowPeer:
    mode: str
    interval: float = 0.5
    declared: int = 1000
    piece: int = 1
    location: str = ""
    content_type: str = "application/json"
    answer: str = "503 Service Unavailable"
    answer_headers: dict[str, str] = field(default_factory=dict)
    requests: list[bytes] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)
    max_open: int = 0
    _open: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _sock: socket.socket | None = None
    _stopped: threading.Event = field(default_factory=threading.Event)

    def start(self) -> SlowPeer:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    @property
    def port(self) -> int:
        assert self._sock is not None
        return self._sock.getsockname()[1]

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self._stopped.set()
        if self._sock is not None:
            self._sock.close()

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._stopped.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with self._lock:
            index = len(self.sent)
            self.sent.append(0)
            self._open += 1
            self.max_open = max(self.max_open, self._open)
        try:
            with conn:
                request = _read_request(conn)
                with self._lock:
                    self.requests.append(request)
                    self.arrived.append(time.monotonic())
                getattr(self, f"_{self.mode}")(conn, index)
        except OSError:
            pass  # the other side gave up: what the tests want to see
        finally:
            with self._lock:
                self._open -= 1

    def _head(self, status: str = "200 OK") -> bytes:
        return (
            f"HTTP/1.1 {status}\r\nContent-Type: {self.content_type}\r\n"
            f"Content-Length: {self.declared}\r\n\r\n"
        ).encode()

    def _ok(self, conn: socket.socket, index: int) -> None:
        conn.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")

    def _redirect(self, conn: socket.socket, index: int) -> None:
        conn.sendall(
            f"HTTP/1.1 302 Found\r\nLocation: {self.location}\r\nContent-Length: 0\r\n\r\n".encode()
        )

    def _error(self, conn: socket.socket, index: int) -> None:
        conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")

    def _answer(self, conn: socket.socket, index: int) -> None:
        extra = "".join(f"{name}: {value}\r\n" for name, value in self.answer_headers.items())
        conn.sendall(f"HTTP/1.1 {self.answer}\r\n{extra}Content-Length: 0\r\n\r\n".encode())

    def _trickle_body(self, conn: socket.socket, index: int) -> None:
        conn.sendall(self._head())
        while self.sent[index] < self.declared:
            if self._stopped.wait(self.interval):
                return
            piece = b"x" * min(self.piece, self.declared - self.sent[index])
            conn.sendall(piece)
            self.sent[index] += len(piece)

    def _trickle_headers(self, conn: socket.socket, index: int) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        conn.settimeout(None)  # blocking, so that MSG_DONTWAIT alone decides
        while not self._stopped.is_set():
            # Sleep the interval, but wake at once when the other side closes, so that
            # ``max_open`` counts the connections the other side holds, not ones it has
            # already given up on.
            readable, _, _ = select.select([conn], [], [], self.interval)
            if readable:
                try:
                    if conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                        return  # the other side closed
                except BlockingIOError:
                    pass
                time.sleep(self.interval)  # it sent something more: keep the pace anyway
            conn.sendall(b"z")

    def _huge_body(self, conn: socket.socket, index: int) -> None:
        conn.sendall(self._head())
        left = self.declared
        while left > 0 and not self._stopped.is_set():
            piece = _CHUNK[: min(left, len(_CHUNK))]
            conn.sendall(piece)
            self.sent[index] += len(piece)
            left -= len(piece)
        time.sleep(0.5)  # let the reader finish before the connection closes


def _read_request(conn: socket.socket) -> bytes:
    conn.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        piece = conn.recv(65536)
        if not piece:
            return data
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        piece = conn.recv(65536)
        if not piece:
            break
        body += piece
    return head + b"\r\n\r\n" + body
